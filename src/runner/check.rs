//! One check, end to end: plan, refuse what may not go out, send hop by hop, judge the
//! final response, scrub everything reported.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::error::Error as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::LOCATION;
use reqwest::{Client, Method};
use rustls::client::ClientConfig;
use url::{Host, Url};

use crate::api::monitor::MonitorSpec;

use super::assertions::evaluate;
use super::hosts::{UrlRefusal, host_allowed, host_name, join_url, origin_and_path, parse_url};
use super::items::ResolvedItems;
use super::network::{AddressRefused, NetworkPolicy, PolicyResolver, ResolveError, refusal};
use super::plan::{Plan, Refusal, UsedSecrets};
use super::redirect::{Chain, MAX_REDIRECTS, next_method};
use super::report::{CheckReport, CheckResult, Hop};
use super::scrub::Scrubber;
use super::tls::{Trust, config_for};

/// The most of a response body a check reads; the rest is never read. Assertions judge
/// this much.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The most headers a response may have over HTTP/1.1; a response with more fails the
/// check (`Http`). hyper's default, stated so that it cannot change unseen.
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// The most header bytes a response may have over HTTP/2 (names and values, plus 32 per
/// header, as RFC 9113 counts them); hyper's default, stated for the same reason. Over
/// HTTP/1.1, hyper reads at most about 400 KiB of head.
pub const MAX_RESPONSE_HEADER_BYTES: u32 = 16 * 1024;

/// The most of a body a report shows.
pub const BODY_EXCERPT_BYTES: usize = 1024;

const USER_AGENT: &str = concat!("monivault-runner/", env!("CARGO_PKG_VERSION"));

/// Runs one check of `spec` with `items` (already resolved), trusting `trust`, within
/// `net`. Everything in the report is scrubbed of every secret of `items`.
pub async fn run_check(
    spec: &MonitorSpec,
    items: &ResolvedItems,
    trust: &Trust,
    net: &NetworkPolicy,
) -> CheckReport {
    let mut secrets = UsedSecrets::from_items(items);
    let (report, body) = run(spec, items, trust, net, &mut secrets).await;
    // Built once, after the last TOTP code was made.
    let scrubber = secrets.scrubber();
    let mut report = report.scrubbed(&scrubber);
    report.body_excerpt = body.map(|body| scrubber.excerpt(&body, BODY_EXCERPT_BYTES));
    report
}

async fn run(
    spec: &MonitorSpec,
    items: &ResolvedItems,
    trust: &Trust,
    net: &NetworkPolicy,
    secrets: &mut UsedSecrets,
) -> (CheckReport, Option<Vec<u8>>) {
    let mut prepared = match prepare(spec, items, trust, net, secrets) {
        Ok(prepared) => prepared,
        Err(refusal) => return (CheckReport::refused(refusal.result, refusal.message), None),
    };
    let mut trail = Trail::default();
    let timeout = prepared.timeout;
    let outcome = tokio::time::timeout(timeout, follow(&mut prepared, &mut trail, secrets)).await;
    let mut report = CheckReport::refused(CheckResult::Timeout, String::new());
    let mut body = None;
    match outcome {
        Ok(Ok(last)) => {
            judge(&mut report, spec, &secrets.scrubber(), &last);
            body = Some(last.body);
        }
        Ok(Err(refusal)) => {
            report.result = refusal.result;
            report.message = refusal.message;
        }
        Err(_) => {
            trail.count_pending();
            report.message = format!(
                "no complete response within the timeout of {}",
                spec.timeout.as_str()
            );
        }
    }
    report.hops = trail.hops;
    report.items_sent = trail.items_sent;
    (report, body)
}

/// Fills `report` from the response the check ended on: the assertions, judged on the
/// scrubbed body, and the message.
fn judge(report: &mut CheckReport, spec: &MonitorSpec, scrubber: &Scrubber, last: &LastResponse) {
    // Judged scrubbed: an assertion on the raw body would tell, run by run, whether a
    // reflected secret contains a guess.
    let judged = scrubber.scrub_bytes(&last.body);
    let assertions = evaluate(
        spec.assertions.as_ref(),
        last.status,
        last.elapsed,
        judged.as_bytes(),
        last.truncated,
    );
    let failed: Vec<&str> = assertions
        .iter()
        .filter(|a| !a.passed)
        .map(|a| a.detail.as_str())
        .collect();
    if failed.is_empty() {
        report.result = CheckResult::Passed;
        report.message = format!(
            "HTTP {} in {} ms; every assertion held",
            last.status,
            last.elapsed.as_millis()
        );
    } else {
        report.result = CheckResult::AssertionFailed;
        report.message = format!("HTTP {}: {}", last.status, failed.join("; "));
    }
    report.status_code = Some(last.status);
    report.response_time = Some(last.elapsed);
    report.assertions = assertions;
}

/// The report of a check whose final response was `status` with `body`, judged and
/// scrubbed exactly as [`run_check`] does, without the network. For the fuzz targets
/// (`fuzz/`) and their corpus replay; not an API.
#[doc(hidden)]
pub fn report_for_response(
    spec: &MonitorSpec,
    scrubber: &Scrubber,
    status: u16,
    elapsed: Duration,
    body: Vec<u8>,
    truncated: bool,
) -> CheckReport {
    let last = LastResponse {
        status,
        elapsed,
        body,
        truncated,
    };
    let mut report = CheckReport::refused(CheckResult::Timeout, String::new());
    judge(&mut report, spec, scrubber, &last);
    let mut report = report.scrubbed(scrubber);
    report.body_excerpt = Some(scrubber.excerpt(&last.body, BODY_EXCERPT_BYTES));
    report
}

/// What the check has sent so far.
#[derive(Default)]
struct Trail {
    hops: Vec<Hop>,
    items_sent: BTreeMap<String, BTreeSet<String>>,
    /// The host and items of the request in flight, until it is known whether it left.
    pending: Option<(String, BTreeSet<String>)>,
}

impl Trail {
    /// The request in flight counts as sent: said of a response, of an error after the
    /// connection was made, and of a timeout (it may have left).
    fn count_pending(&mut self) {
        if let Some((host, items)) = self.pending.take() {
            for item in items {
                self.items_sent
                    .entry(item)
                    .or_default()
                    .insert(host.clone());
            }
        }
    }
}

/// The response a check judges.
struct LastResponse {
    status: u16,
    elapsed: Duration,
    body: Vec<u8>,
    truncated: bool,
}

struct Prepared<'a> {
    spec: &'a MonitorSpec,
    plan: Plan<'a>,
    net: &'a NetworkPolicy,
    first_url: Url,
    timeout: Duration,
    clients: Clients,
}

/// Everything before I/O: the plan, the first URL and its host, the TLS configurations.
fn prepare<'a>(
    spec: &'a MonitorSpec,
    items: &'a ResolvedItems,
    trust: &Trust,
    net: &'a NetworkPolicy,
    secrets: &mut UsedSecrets,
) -> Result<Prepared<'a>, Refusal> {
    let plan = Plan::new(spec, items)?;
    let timeout = spec.timeout.to_std().map_err(|e| {
        Refusal::new(
            CheckResult::InvalidRequest {
                field: "timeout".into(),
                reason: e.to_string(),
            },
            format!("timeout: {e}"),
        )
    })?;
    let url = plan.render_url(secrets)?;
    let url = parse_url(&url).map_err(|e| {
        Refusal::new(
            CheckResult::InvalidRequest {
                field: "url".into(),
                reason: e.to_string(),
            },
            format!("url {e}"),
        )
    })?;
    let host = host_name(&url);
    if url.scheme() == "http"
        && let Some(item) = plan.referenced().iter().next()
    {
        return Err(Refusal::new(
            CheckResult::InsecureTransport { item: item.clone() },
            format!(
                "url is plain http and the check carries vault item {item}: secrets only go over https"
            ),
        ));
    }
    for name in plan.referenced() {
        let allowed = plan
            .item(name)
            .is_some_and(|item| host_allowed(&item.allowed_hosts, &url));
        if !allowed {
            return Err(Refusal::new(
                CheckResult::HostNotAllowed {
                    item: name.clone(),
                    host: host.clone(),
                },
                format!(
                    "vault item {name} may not be sent to {host}: it is not in the item's allowedHosts"
                ),
            ));
        }
    }
    check_literal_address(net, &url)?;

    let plain_tls = config_for(trust, None).map_err(|e| {
        Refusal::new(
            CheckResult::InvalidRequest {
                field: "tls.caCertificate".into(),
                reason: e.to_string(),
            },
            format!("tls.caCertificate cannot be used: {e}"),
        )
    })?;
    let identity_tls = match plan.certificate() {
        Some(name) => {
            let identity = plan
                .item(name)
                .and_then(|item| item.client_identity.as_ref());
            Some(config_for(trust, identity).map_err(|e| {
                Refusal::new(
                    CheckResult::ItemUnusable {
                        item: name.to_owned(),
                        reason: e.to_string(),
                    },
                    format!("vault item {name} cannot be used as a client certificate: {e}"),
                )
            })?)
        }
        None => None,
    };
    let resolver = PolicyResolver::new(Arc::new(net.clone()));
    Ok(Prepared {
        spec,
        plan,
        net,
        first_url: url,
        timeout,
        clients: Clients {
            resolver,
            plain_tls,
            identity_tls,
            plain: None,
            identity: None,
        },
    })
}

/// An IP address written in the URL never reaches the resolver: check it here.
fn check_literal_address(net: &NetworkPolicy, url: &Url) -> Result<(), Refusal> {
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    match refusal(net, ip) {
        None => Ok(()),
        Some(class) => {
            let host = host_name(url);
            Err(Refusal::new(
                CheckResult::AddressNotAllowed { host: host.clone() },
                format!("{host} is {}: checks may not reach it", class.as_str()),
            ))
        }
    }
}

/// The HTTP clients of one check: one without a client identity, and one with it, each
/// with its own connection pool, so a certificate is never presented on a connection the
/// identity-less hops share.
struct Clients {
    resolver: PolicyResolver,
    plain_tls: ClientConfig,
    identity_tls: Option<ClientConfig>,
    plain: Option<Client>,
    identity: Option<Client>,
}

impl Clients {
    fn get(&mut self, with_identity: bool) -> Result<Client, Refusal> {
        let (slot, tls) = if with_identity {
            let tls = self.identity_tls.as_ref().ok_or_else(|| {
                Refusal::new(CheckResult::Tls, "no client identity is configured")
            })?;
            (&mut self.identity, tls)
        } else {
            (&mut self.plain, &self.plain_tls)
        };
        if let Some(client) = slot {
            return Ok(client.clone());
        }
        let client = Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .dns_resolver(self.resolver.clone())
            .redirect(reqwest::redirect::Policy::none())
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            .http2_max_header_list_size(MAX_RESPONSE_HEADER_BYTES)
            .no_proxy()
            .referer(false)
            .tcp_nodelay(true)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| {
                Refusal::new(
                    CheckResult::Http,
                    format!("cannot build the HTTP client: {e}"),
                )
            })?;
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// Sends hop after hop until a response to judge, or a refusal.
async fn follow(
    prepared: &mut Prepared<'_>,
    trail: &mut Trail,
    secrets: &mut UsedSecrets,
) -> Result<LastResponse, Refusal> {
    let plan = &prepared.plan;
    let mut url = prepared.first_url.clone();
    let mut method = plan.method();
    let mut send_body = plan.has_body();
    let mut chain = Chain::new();
    let mut visited: HashSet<(Method, String)> = HashSet::new();
    let mut redirects = 0;
    let started = Instant::now();
    loop {
        check_literal_address(prepared.net, &url)?;
        let present_certificate = chain.presents_certificate(plan, &url);
        let mut parts = plan.parts(chain.dropped(), send_body, secrets)?;
        if trail.hops.is_empty() {
            parts.items.extend(plan.url_items().iter().cloned());
        }
        if present_certificate && let Some(name) = plan.certificate() {
            parts.items.insert(name.to_owned());
        }
        let client = prepared.clients.get(present_certificate)?;
        let host = host_name(&url);
        visited.insert((method.clone(), url.as_str().to_owned()));
        trail.hops.push(Hop {
            url: origin_and_path(&url),
            method: method.to_string(),
            status: None,
            items: parts.items.clone(),
        });
        trail.pending = Some((host.clone(), parts.items));

        let mut request = client
            .request(method.clone(), url.clone())
            .headers(parts.headers);
        if let Some(body) = &parts.body {
            request = request.body(body.to_vec());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                if err.is_connect() {
                    trail.pending = None;
                } else {
                    trail.count_pending();
                }
                return Err(classify(&err, &url));
            }
        };
        trail.count_pending();
        let status = response.status().as_u16();
        if let Some(hop) = trail.hops.last_mut() {
            hop.status = Some(status);
        }

        let redirect = if prepared.spec.follow_redirects {
            next_method(status, &method).zip(response.headers().get(LOCATION).cloned())
        } else {
            None
        };
        let Some(((next_method, keeps_body), location)) = redirect else {
            let (body, truncated) = read_body(response, &method).await.map_err(|e| {
                Refusal::new(
                    CheckResult::Http,
                    format!(
                        "reading the response from {host} failed: {}",
                        chain_text(&e)
                    ),
                )
            })?;
            return Ok(LastResponse {
                status,
                elapsed: started.elapsed(),
                body,
                truncated,
            });
        };
        drop(response);

        redirects += 1;
        if redirects > MAX_REDIRECTS {
            return Err(Refusal::new(
                CheckResult::TooManyRedirects,
                format!("more than {MAX_REDIRECTS} redirects"),
            ));
        }
        let invalid = || {
            Refusal::new(
                CheckResult::RedirectInvalid,
                format!("{host} answered {status} with a Location that is not an http(s) URL"),
            )
        };
        let location = location.to_str().map_err(|_| invalid())?.to_owned();
        let next = match join_url(&url, &location) {
            Ok(next) => next,
            Err(UrlRefusal::Userinfo { host }) => {
                return Err(Refusal::new(
                    CheckResult::RedirectBlocked { host: host.clone() },
                    format!(
                        "a redirect to {host} was not followed: its Location carries a user name or password before the host"
                    ),
                ));
            }
            Err(_) => return Err(invalid()),
        };
        let keeps_body = send_body && keeps_body;
        chain.follow(plan, secrets, &next, &location, keeps_body)?;
        if visited.contains(&(next_method.clone(), next.as_str().to_owned())) {
            return Err(Refusal::new(
                CheckResult::RedirectLoop,
                format!(
                    "a redirect leads back to {} {}, already requested",
                    next_method,
                    origin_and_path(&next)
                ),
            ));
        }
        url = next;
        method = next_method;
        send_body = keeps_body;
    }
}

/// At most [`MAX_BODY_BYTES`] of the body, and whether there was more. Nothing is
/// decompressed.
async fn read_body(
    mut response: reqwest::Response,
    method: &Method,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    if *method == Method::HEAD {
        return Ok((body, false));
    }
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The errors under a client error, outermost first. An `io::Error` shows its inner error
/// only through `get_ref` (its `source` skips a level), so the walk goes through it.
fn causes(err: &reqwest::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = err.source();
    while let Some(e) = next {
        out.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    out
}

/// The result an HTTP client error stands for, and a message from its whole chain.
fn classify(err: &reqwest::Error, url: &Url) -> Refusal {
    let causes = causes(err);
    for e in &causes {
        let refused = e
            .downcast_ref::<ResolveError>()
            .and_then(|r| match r {
                ResolveError::Refused(refused) => Some(refused),
                _ => None,
            })
            .or_else(|| e.downcast_ref::<AddressRefused>());
        if let Some(refused) = refused {
            return Refusal::new(
                CheckResult::AddressNotAllowed {
                    host: refused.host.clone(),
                },
                refused.to_string(),
            );
        }
    }
    let tls = causes
        .iter()
        .any(|e| e.downcast_ref::<rustls::Error>().is_some());
    let result = if tls {
        CheckResult::Tls
    } else if err.is_timeout() {
        CheckResult::Timeout
    } else if err.is_connect() {
        CheckResult::Connect
    } else {
        CheckResult::Http
    };
    Refusal::new(
        result,
        format!(
            "request to {} failed: {}",
            origin_and_path(url),
            chain_text(err)
        ),
    )
}

/// An error's causes, joined; the top level of a reqwest error (which quotes the whole
/// URL) is left out, and a cause shown again by its wrapper is shown once.
fn chain_text(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in causes(err) {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
    }
    if parts.is_empty() {
        parts.push(kind_text(err));
    }
    parts.join(": ")
}

/// What failed, when the error has no source to say it.
fn kind_text(err: &reqwest::Error) -> String {
    let text = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() {
        "the body could not be read"
    } else {
        "the HTTP exchange failed"
    };
    text.to_owned()
}
