//! The runner: executes monitors with their secrets, and scrubs every trace of them.
//!
//! This part holds the check engine: [`run_check`] runs ONE HTTP(S) check of a
//! `MonitorSpec` with vault items its caller already resolved, and returns a scrubbed
//! [`CheckReport`]. Scheduling, stamp verification, reading items from the store and
//! writing status live beside it and call it.
//!
//! - [`plan`]: before any I/O, every placeholder parsed once and every item fit for its
//!   use; per hop, the headers, body and auth that may go out;
//! - [`hosts`]: the one URL parser (WHATWG) and `allowedHosts` matching by name;
//! - [`network`]: no reaching inside: refused addresses, a resolver that checks every
//!   address it hands the client;
//! - [`redirect`]: the engine's own redirect rules, hop by hop;
//! - [`tls`]: trust (system roots built once, or a private CA) and client identities;
//! - [`totp`]: one-time password codes;
//! - [`assertions`]: judging the final response;
//! - [`scrub`]: every form of every secret out of every string reported.
//!
//! What it must never do:
//! - write a plaintext anywhere (status, Event, log line, error): every string leaves
//!   through the [`Scrubber`], and the engine logs nothing;
//! - send a secret to a host outside the item's `allowedHosts`, over plain `http://`, or
//!   across a redirect to a host an item it carries does not allow;
//! - connect to loopback, link-local or cluster-internal addresses unless the policy allows
//!   internal targets;
//! - follow redirects by the HTTP library's policy, skip TLS verification, keep cookies or
//!   decompress bodies;
//! - panic on any response.

pub mod assertions;
pub mod check;
pub mod hosts;
pub mod items;
pub mod metrics;
pub mod network;
pub mod plan;
pub mod redirect;
pub mod report;
pub mod resolve;
pub mod runs;
pub mod schedule;
pub mod scrub;
pub mod service;
pub mod tls;
pub mod totp;

#[cfg(test)]
mod test_support;

pub use check::{
    BODY_EXCERPT_BYTES, MAX_BODY_BYTES, MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS, run_check,
};
pub use ipnet::IpNet;
pub use items::{ClientIdentity, OtpSeed, ResolvedItem, ResolvedItems};
pub use metrics::RunnerMetrics;
pub use network::NetworkPolicy;
pub use redirect::MAX_REDIRECTS;
pub use report::{AssertionOutcome, CheckReport, CheckResult, Hop};
pub use scrub::{MASK, Scrubber, ScrubberBuilder};
pub use service::{RunnerSettings, run};
pub use tls::{TlsSetupError, Trust};
