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

        for name in plan.referenced() {
            let scrubber = secrets.item_scrubber(name);
            let echoed =
                scrubber.finds_secret_in(location) || scrubber.finds_secret_in(next.as_str());
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
