//! The redirect rules, pure: which method a redirect leads to, and what the next hop may
//! carry. The engine follows redirects itself (the HTTP client's policy is `none`): the
//! client's own policy sees only URLs, strips only a few headers and never the client
//! certificate, so it cannot keep a secret pinned to its hosts.
//!
//! The rules, checked before a byte goes to the next host:
//! - a Location that holds any form of an item's secret, to plain http or to a host the
//!   item does not allow, is not followed;
//! - a hop to plain http drops every secret for the rest of the chain, even on the same
//!   host;
//! - a hop to a host that an item still carried (in headers, body or auth) does not allow
//!   is not followed;
//! - an item not carried to a host it does not allow (a client certificate, a body
//!   dropped by a 303) has left its hosts and never goes out again in this chain.

use std::collections::BTreeSet;

use reqwest::Method;
use url::Url;

use super::hosts::{host_allowed, host_name};
use super::plan::{Plan, Refusal, UsedSecrets};
use super::report::CheckResult;

/// Redirects followed at most, per check.
pub const MAX_REDIRECTS: usize = 10;

/// The method of the request that follows a `status` redirect of a `method` request, and
/// whether it keeps the body; `None` if `status` is not a redirect to follow.
pub fn next_method(status: u16, method: &Method) -> Option<(Method, bool)> {
    match status {
        301 | 302 if *method == Method::POST => Some((Method::GET, false)),
        301 | 302 => Some((method.clone(), true)),
        303 if *method == Method::HEAD => Some((Method::HEAD, false)),
        303 => Some((Method::GET, false)),
        307 | 308 => Some((method.clone(), true)),
        _ => None,
    }
}

/// What a chain of hops has given up so far.
#[derive(Debug, Default)]
pub struct Chain {
    dropped: BTreeSet<String>,
}

impl Chain {
    pub fn new() -> Self {
        Chain::default()
    }

    /// Items that never go out again in this chain.
    pub fn dropped(&self) -> &BTreeSet<String> {
        &self.dropped
    }

    /// Whether the client certificate goes out on a connection to `url`.
    pub fn presents_certificate(&self, plan: &Plan<'_>, url: &Url) -> bool {
        plan.certificate().is_some_and(|name| {
            !self.dropped.contains(name)
                && plan
                    .item(name)
                    .is_some_and(|item| host_allowed(&item.allowed_hosts, url))
        })
    }

    /// Decides whether to follow a redirect to `next` (from the `location` header text),
    /// with the body kept or not; updates what the chain has dropped.
    pub fn follow(
        &mut self,
        plan: &Plan<'_>,
        secrets: &UsedSecrets,
        next: &Url,
        location: &str,
        send_body: bool,
    ) -> Result<(), Refusal> {
        let host = host_name(next);
        let plain = next.scheme() == "http";
        let allowed = |name: &str| {
            plan.item(name)
                .is_some_and(|item| host_allowed(&item.allowed_hosts, next))
        };
        let blocked = |why: String| {
            Refusal::new(
                CheckResult::RedirectBlocked { host: host.clone() },
                format!("a redirect to {host} was not followed: {why}"),
            )
        };

        // The Location as sent, and decoded up to three times: a login redirect re-encodes
        // the URL it came from.
        let mut spellings = vec![location.to_owned(), next.as_str().to_owned()];
        for _ in 0..3 {
            let last = spellings.last().cloned().unwrap_or_default();
            let decoded = percent_encoding::percent_decode_str(&last)
                .decode_utf8_lossy()
                .into_owned();
            if decoded == last {
                break;
            }
            spellings.push(decoded);
        }
        for name in plan.referenced() {
            let scrubber = secrets.item_scrubber(name);
            let echoed = spellings.iter().any(|s| scrubber.finds_secret_in(s));
            if echoed && plain {
                return Err(blocked(format!(
                    "its Location holds a secret of vault item {name}, and it leads to plain http"
                )));
            }
            if echoed && !allowed(name) {
                return Err(blocked(format!(
                    "its Location holds a secret of vault item {name}, whose allowedHosts do not include {host}"
                )));
            }
        }

        // An item the first URL carried may be anywhere in what the server sends back (a
        // `next=` parameter, re-encoded): it stays pinned to its hosts for the whole chain,
        // and never leads to plain http.
        for name in plan.url_items() {
            if plain {
                return Err(blocked(format!(
                    "the monitor's URL carried vault item {name}, and the redirect leads to plain http"
                )));
            }
            if !allowed(name) {
                return Err(blocked(format!(
                    "the monitor's URL carried vault item {name}, whose allowedHosts do not include {host}"
                )));
            }
        }

        if plain {
            self.dropped.extend(plan.referenced().iter().cloned());
        }

        let carried = plan.carried(&self.dropped, send_body);
        if let Some(name) = carried.iter().find(|name| !allowed(name)) {
            return Err(blocked(format!(
                "the request would carry vault item {name}, whose allowedHosts do not include {host}"
            )));
        }
        for name in plan.referenced() {
            if !carried.contains(name) && !allowed(name) {
                self.dropped.insert(name.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::monitor::MonitorSpec;
    use crate::runner::hosts::parse_url;
    use crate::runner::items::ResolvedItems;
    use crate::runner::test_support::*;

    fn url(text: &str) -> Url {
        parse_url(text).unwrap()
    }

    fn follow(
        chain: &mut Chain,
        plan: &Plan<'_>,
        items: &ResolvedItems,
        to: &str,
        send_body: bool,
    ) -> Result<(), Refusal> {
        let secrets = UsedSecrets::from_items(items);
        chain.follow(plan, &secrets, &url(to), to, send_body)
    }

    #[test]
    fn a_redirect_to_a_host_a_carried_item_does_not_allow_is_blocked() {
        let items: ResolvedItems = [secret("t", "tok", &["a.test"])].into_iter().collect();
        let mut spec = MonitorSpec::new("https://a.test/");
        spec.headers
            .push(header("X-API-Key", "{{@VaultItem.t.Value}}"));
        let plan = Plan::new(&spec, &items).unwrap();
        let mut chain = Chain::new();
        let r = follow(&mut chain, &plan, &items, "https://b.test/x", false).unwrap_err();
        assert_eq!(
            r.result,
            CheckResult::RedirectBlocked {
                host: "b.test".into()
            }
        );
        assert!(r.message.contains("vault item t"), "{}", r.message);
        // Same host, other path: fine.
        assert!(follow(&mut chain, &plan, &items, "https://a.test/y", false).is_ok());
    }

    #[test]
    fn a_certificate_that_left_its_hosts_is_never_presented_again() {
        let items: ResolvedItems = [
            secret("t", "tok", &["a.test", "b.test"]),
            certificate("cert", &["a.test"]),
        ]
        .into_iter()
        .collect();
        let mut spec = MonitorSpec::new("https://a.test/start");
        spec.headers
            .push(header("X-API-Key", "{{@VaultItem.t.Value}}"));
        client_certificate(&mut spec, "cert");
        let plan = Plan::new(&spec, &items).unwrap();
        let mut chain = Chain::new();
        assert!(chain.presents_certificate(&plan, &url("https://a.test/start")));
        follow(&mut chain, &plan, &items, "https://b.test/x", false).unwrap();
        assert!(!chain.presents_certificate(&plan, &url("https://b.test/x")));
        follow(&mut chain, &plan, &items, "https://a.test/end", false).unwrap();
        assert!(!chain.presents_certificate(&plan, &url("https://a.test/end")));
        assert_eq!(chain.dropped(), &BTreeSet::from(["cert".to_owned()]));
        assert_eq!(
            plan.carried(chain.dropped(), false),
            BTreeSet::from(["t".to_owned()])
        );
    }

    #[test]
    fn a_hop_to_plain_http_drops_every_secret_even_on_the_same_host() {
        let items: ResolvedItems = [
            secret("t", "tok", &["a.test"]),
            credential_set("login", "bot", "pw", &["a.test"]),
        ]
        .into_iter()
        .collect();
        let mut spec = MonitorSpec::new("https://a.test/");
        spec.headers
            .push(header("X-API-Key", "{{@VaultItem.t.Value}}"));
        basic(&mut spec, "login");
        let plan = Plan::new(&spec, &items).unwrap();
        let mut chain = Chain::new();
        follow(&mut chain, &plan, &items, "http://a.test/", false).unwrap();
        assert!(plan.carried(chain.dropped(), false).is_empty());
        // Later hops carry nothing, so even another host is no longer blocked.
        follow(&mut chain, &plan, &items, "https://b.test/", false).unwrap();
        assert!(plan.carried(chain.dropped(), false).is_empty());
        assert!(follow(&mut chain, &plan, &items, "https://a.test/", false).is_ok());
        assert!(plan.carried(chain.dropped(), false).is_empty());
    }

    #[test]
    fn a_location_that_echoes_a_secret_is_followed_only_where_the_item_may_go() {
        let items: ResolvedItems = [secret("t", "s3cr3t/tok", &["a.test"])]
            .into_iter()
            .collect();
        let spec = MonitorSpec::new("https://a.test/?k={{@VaultItem.t.Value}}");
        let plan = Plan::new(&spec, &items).unwrap();
        for to in [
            "https://b.test/?k=s3cr3t%2Ftok",
            "https://b.test/?k=s3cr3t/tok",
            "http://a.test/?k=s3cr3t%2ftok",
            "https://b.test/?k=czNjcjN0L3Rvaw",
        ] {
            let r = follow(&mut Chain::new(), &plan, &items, to, false).unwrap_err();
            assert_eq!(r.result.reason(), "RedirectBlocked", "{to}");
        }
        assert!(
            follow(
                &mut Chain::new(),
                &plan,
                &items,
                "https://a.test/?k=s3cr3t%2Ftok",
                false
            )
            .is_ok()
        );
        // An item the URL carried stays pinned even when the Location does not visibly
        // echo it (a server may re-encode it beyond recognition): b.test is refused.
        let r = follow(&mut Chain::new(), &plan, &items, "https://b.test/", false).unwrap_err();
        assert_eq!(r.result.reason(), "RedirectBlocked");
        // A Location that re-encoded the URL twice is still seen for what it holds.
        let r = follow(
            &mut Chain::new(),
            &plan,
            &items,
            "https://a.test/next?u=https%253A%252F%252Fa.test%252F%253Fk%253Ds3cr3t%25252Ftok",
            false,
        );
        assert!(r.is_ok(), "to its own host it may go");
    }

    #[test]
    fn a_body_dropped_by_a_303_no_longer_pins_the_chain() {
        let items: ResolvedItems = [secret("t", "tok", &["a.test"])].into_iter().collect();
        let mut spec = MonitorSpec::new("https://a.test/login");
        spec.method = crate::api::monitor::HttpMethod::Post;
        spec.body = Some("token={{@VaultItem.t.Value}}".into());
        let plan = Plan::new(&spec, &items).unwrap();
        // 307 keeps the body: blocked.
        let r = follow(&mut Chain::new(), &plan, &items, "https://b.test/", true).unwrap_err();
        assert_eq!(r.result.reason(), "RedirectBlocked");
        // 303 drops it: followed, and the item is gone for good.
        let mut chain = Chain::new();
        follow(&mut chain, &plan, &items, "https://b.test/", false).unwrap();
        assert!(chain.dropped().contains("t"));
    }

    #[test]
    fn methods_follow_the_fetch_rules() {
        let cases = [
            (301, Method::POST, Some((Method::GET, false))),
            (302, Method::POST, Some((Method::GET, false))),
            (301, Method::PUT, Some((Method::PUT, true))),
            (302, Method::GET, Some((Method::GET, true))),
            (303, Method::POST, Some((Method::GET, false))),
            (303, Method::PUT, Some((Method::GET, false))),
            (303, Method::HEAD, Some((Method::HEAD, false))),
            (307, Method::POST, Some((Method::POST, true))),
            (308, Method::PATCH, Some((Method::PATCH, true))),
            (300, Method::GET, None),
            (304, Method::GET, None),
            (305, Method::GET, None),
            (200, Method::GET, None),
        ];
        for (status, method, want) in cases {
            assert_eq!(next_method(status, &method), want, "{status} {method}");
        }
    }
}
