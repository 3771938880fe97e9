//! What one check tells its caller. Everything in a [`CheckReport`] is already scrubbed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::scrub::Scrubber;

/// How a check ended. [`CheckResult::reason`] is a short stable string for status and
/// metrics labels; the fields name what was refused, never a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// A response arrived and every assertion held.
    Passed,
    /// A response arrived and an assertion failed (see `assertions`).
    AssertionFailed,
    /// A placeholder in `field` does not parse.
    Template { field: String },
    /// The monitor names an item that was not resolved.
    ItemMissing { item: String },
    /// An item cannot be used where the monitor uses it (wrong type, missing value, a
    /// value a header cannot carry, a seed that does not decode, a key that does not load).
    ItemUnusable { item: String, reason: String },
    /// The request itself is malformed (`url`, a header name or value).
    InvalidRequest { field: String, reason: String },
    /// The check carries `item` to a plain `http://` URL.
    InsecureTransport { item: String },
    /// `item`'s `allowedHosts` does not include the URL's `host`.
    HostNotAllowed { item: String, host: String },
    /// `host` is, or resolves to, an address checks may not reach.
    AddressNotAllowed { host: String },
    /// A redirect to `host` was not followed: a carried item may not go there, the
    /// Location echoed a secret, or it carried userinfo. Nothing was sent to `host`.
    RedirectBlocked { host: String },
    /// A redirect Location that is not an http(s) URL.
    RedirectInvalid,
    /// More redirects than [`super::MAX_REDIRECTS`].
    TooManyRedirects,
    /// A redirect back to a URL already requested with the same method.
    RedirectLoop,
    /// The whole check took longer than its `timeout`.
    Timeout,
    /// No connection (refused, unreachable, DNS failure).
    Connect,
    /// The TLS handshake failed (untrusted certificate, wrong name, client certificate
    /// refused).
    Tls,
    /// The HTTP exchange failed after connecting.
    Http,
}

impl CheckResult {
    /// A short stable string for status and metrics, e.g. `RedirectBlocked`.
    pub fn reason(&self) -> &'static str {
        match self {
            CheckResult::Passed => "Passed",
            CheckResult::AssertionFailed => "AssertionFailed",
            CheckResult::Template { .. } => "Template",
            CheckResult::ItemMissing { .. } => "ItemMissing",
            CheckResult::ItemUnusable { .. } => "ItemUnusable",
            CheckResult::InvalidRequest { .. } => "InvalidRequest",
            CheckResult::InsecureTransport { .. } => "InsecureTransport",
            CheckResult::HostNotAllowed { .. } => "HostNotAllowed",
            CheckResult::AddressNotAllowed { .. } => "AddressNotAllowed",
            CheckResult::RedirectBlocked { .. } => "RedirectBlocked",
            CheckResult::RedirectInvalid => "RedirectInvalid",
            CheckResult::TooManyRedirects => "TooManyRedirects",
            CheckResult::RedirectLoop => "RedirectLoop",
            CheckResult::Timeout => "Timeout",
            CheckResult::Connect => "Connect",
            CheckResult::Tls => "Tls",
            CheckResult::Http => "Http",
        }
    }

    pub fn passed(&self) -> bool {
        *self == CheckResult::Passed
    }

    /// The same result with every string field scrubbed.
    pub(crate) fn scrubbed(self, scrubber: &Scrubber) -> Self {
        let s = |text: String| scrubber.scrub(&text);
        match self {
            CheckResult::Template { field } => CheckResult::Template { field: s(field) },
            CheckResult::ItemMissing { item } => CheckResult::ItemMissing { item: s(item) },
            CheckResult::ItemUnusable { item, reason } => CheckResult::ItemUnusable {
                item: s(item),
                reason: s(reason),
            },
            CheckResult::InvalidRequest { field, reason } => CheckResult::InvalidRequest {
                field: s(field),
                reason: s(reason),
            },
            CheckResult::InsecureTransport { item } => {
                CheckResult::InsecureTransport { item: s(item) }
            }
            CheckResult::HostNotAllowed { item, host } => CheckResult::HostNotAllowed {
                item: s(item),
                host: s(host),
            },
            CheckResult::AddressNotAllowed { host } => {
                CheckResult::AddressNotAllowed { host: s(host) }
            }
            CheckResult::RedirectBlocked { host } => CheckResult::RedirectBlocked { host: s(host) },
            other => other,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// One assertion and how it went. `detail` never holds the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssertionOutcome {
    /// `statusCodes`, `maxResponseTime`, `bodyContains[i]` or `bodyNotContains[i]`.
    pub assertion: String,
    pub passed: bool,
    pub detail: String,
}

/// One request of the chain, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// `scheme://host:port/path`, without query.
    pub url: String,
    pub method: String,
    /// The response status, if one arrived.
    pub status: Option<u16>,
    /// The items whose secrets this request carried (including a client certificate
    /// presented on its connection).
    pub items: BTreeSet<String>,
}

/// Everything one check produced, already scrubbed of every secret it used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub result: CheckResult,
    /// The status of the response the check judged.
    pub status_code: Option<u16>,
    /// From the first request to the end of the judged response's body, over every hop.
    pub response_time: Option<Duration>,
    /// For people.
    pub message: String,
    /// The start of the judged response's body: at most [`super::BODY_EXCERPT_BYTES`],
    /// scrubbed before it was cut.
    pub body_excerpt: Option<String>,
    /// One per assertion, in spec order; empty when no response was judged.
    pub assertions: Vec<AssertionOutcome>,
    /// Every request sent, in order.
    pub hops: Vec<Hop>,
    /// Item → the hosts its secrets went to.
    pub items_sent: BTreeMap<String, BTreeSet<String>>,
}

/// The longest `message` and assertion `detail` a report carries, in bytes. A hostile site
/// shapes them (a redirect's path, its host name), and they go into statuses and into
/// Events, whose API refuses a note over 1 KiB.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `text` cut to at most [`MAX_MESSAGE_BYTES`] on a character boundary, ending in `…` if
/// cut. Only ever applied to scrubbed text: a prefix of it cannot hold a secret either.
fn bounded(mut text: String) -> String {
    const MORE: &str = "…";
    if text.len() <= MAX_MESSAGE_BYTES {
        return text;
    }
    let mut end = MAX_MESSAGE_BYTES - MORE.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MORE);
    text
}

impl CheckReport {
    /// A check that ended before any request, for `result`.
    pub(crate) fn refused(result: CheckResult, message: String) -> Self {
        CheckReport {
            result,
            status_code: None,
            response_time: None,
            message,
            body_excerpt: None,
            assertions: Vec::new(),
            hops: Vec::new(),
            items_sent: BTreeMap::new(),
        }
    }

    /// Every string scrubbed; the message and details then cut to
    /// [`MAX_MESSAGE_BYTES`].
    pub(crate) fn scrubbed(self, scrubber: &Scrubber) -> Self {
        let s = |text: &str| scrubber.scrub(text);
        CheckReport {
            result: self.result.scrubbed(scrubber),
            status_code: self.status_code,
            response_time: self.response_time,
            message: bounded(s(&self.message)),
            body_excerpt: self.body_excerpt.map(|b| s(&b)),
            assertions: self
                .assertions
                .into_iter()
                .map(|a| AssertionOutcome {
                    assertion: s(&a.assertion),
                    passed: a.passed,
                    detail: bounded(s(&a.detail)),
                })
                .collect(),
            hops: self
                .hops
                .into_iter()
                .map(|h| Hop {
                    url: s(&h.url),
                    method: h.method,
                    status: h.status,
                    items: h.items.iter().map(|i| s(i)).collect(),
                })
                .collect(),
            items_sent: self
                .items_sent
                .into_iter()
                .map(|(item, hosts)| (s(&item), hosts.iter().map(|h| s(h)).collect()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_stable_names() {
        assert_eq!(
            CheckResult::RedirectBlocked {
                host: "b.test".into()
            }
            .reason(),
            "RedirectBlocked"
        );
    }

    #[test]
    fn messages_are_cut_after_scrubbing_on_a_character_boundary() {
        let mut b = Scrubber::builder();
        b.secret(b"hunter2");
        let scrubber = b.build();
        let at_limit = "é".repeat(MAX_MESSAGE_BYTES / 2);
        let report = |message: String| {
            let mut report = CheckReport::refused(CheckResult::Http, message.clone());
            report.assertions.push(AssertionOutcome {
                assertion: "bodyContains[0]".into(),
                passed: false,
                detail: message,
            });
            report.scrubbed(&scrubber)
        };
        let kept = report(at_limit.clone());
        assert_eq!(kept.message, at_limit);
        assert_eq!(kept.assertions[0].detail, at_limit);

        let cut = report(format!("{at_limit}a"));
        assert_eq!(cut.message.len(), MAX_MESSAGE_BYTES - 1, "é is 2 bytes");
        assert!(cut.message.ends_with("é…"), "{}", cut.message);

        // A secret across the cut: cut first, "hunter" would stay, unscrubbed.
        let across = format!("x{}hunter2{}", "é".repeat(507), "é".repeat(10));
        assert_eq!(across.find("hunter2"), Some(MAX_MESSAGE_BYTES - 9));
        let cut = report(across);
        for text in [&cut.message, &cut.assertions[0].detail] {
            assert!(text.len() <= MAX_MESSAGE_BYTES, "{}", text.len());
            assert!(text.ends_with('…'), "{text}");
            assert!(!text.contains("hunt"), "{text}");
        }
    }

    #[test]
    fn scrubbing_a_report_reaches_every_string() {
        let mut b = Scrubber::builder();
        b.secret(b"hunter2");
        let scrubber = b.build();
        let report = CheckReport {
            result: CheckResult::RedirectBlocked {
                host: "hunter2.evil.test".into(),
            },
            status_code: Some(302),
            response_time: None,
            message: "went to hunter2".into(),
            body_excerpt: Some("body hunter2".into()),
            assertions: vec![AssertionOutcome {
                assertion: "bodyContains[0]".into(),
                passed: false,
                detail: "hunter2".into(),
            }],
            hops: vec![Hop {
                url: "https://a.test:443/hunter2".into(),
                method: "GET".into(),
                status: Some(302),
                items: BTreeSet::new(),
            }],
            items_sent: BTreeMap::from([(
                "t".to_owned(),
                BTreeSet::from(["hunter2.test".to_owned()]),
            )]),
        }
        .scrubbed(&scrubber);
        assert!(!format!("{report:?}").contains("hunter2"), "{report:?}");
    }
}
