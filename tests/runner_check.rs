//! The check engine against real local servers: HTTPS (tokio-rustls, certificates from a
//! test CA made with rcgen) and plain HTTP, on 127.0.0.1, each on its own port. Names
//! (`shop.test`, `api.test`, `evil.test`) reach them through the policy's `resolve` map,
//! so the host a check names is the host the allowedHosts rules see.
//!
//! Every server records each TCP connection it accepts and everything each request
//! carried (method, path and query, headers, body, and the client certificate of its
//! connection). "Nothing sent" is proven by a connection count of zero. No test asserts
//! on wall-clock time.

#[path = "runner_check/servers.rs"]
mod servers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use monivault::api::Duration as SpecDuration;
use monivault::api::monitor::{Assertions, Header, HttpMethod, MonitorSpec};
use monivault::api::monitor::{BasicAuth, BearerAuth, ClientCertificate, MonitorAuth};
use monivault::api::vault_item::{ItemType, OtpAlgorithm, OtpEncoding};
use monivault::crypto::Plaintext;
use monivault::runner::{
    CheckReport, CheckResult, ClientIdentity, MAX_BODY_BYTES, MAX_REDIRECTS,
    MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS, NetworkPolicy, OtpSeed, ResolvedItem,
    ResolvedItems, Trust, run_check,
};
use servers::{PKI, Reply, Seen, handler, http, https, ok, redirect, status};
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------------------
// Items, specs, policy

fn hosts(allowed: &[&str]) -> Vec<String> {
    allowed.iter().map(|h| h.to_string()).collect()
}

fn login(user: &str, password: &str, allowed: &[&str]) -> ResolvedItem {
    let mut item = ResolvedItem::new("login", ItemType::CredentialSet, hosts(allowed));
    item.username = Some(user.into());
    item.secret = Some(Plaintext::from(password));
    item
}

fn token(name: &str, value: &str, allowed: &[&str]) -> ResolvedItem {
    let mut item = ResolvedItem::new(name, ItemType::Secret, hosts(allowed));
    item.secret = Some(Plaintext::from(value));
    item
}

const OTP_SEED: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

fn otp(allowed: &[&str]) -> ResolvedItem {
    let mut item = ResolvedItem::new("otp", ItemType::OneTimePassword, hosts(allowed));
    item.otp = Some(otp_seed());
    item
}

fn otp_seed() -> OtpSeed {
    OtpSeed {
        seed: Plaintext::from(OTP_SEED),
        encoding: OtpEncoding::Base32,
        digits: 6,
        period: 30,
        algorithm: OtpAlgorithm::Sha1,
    }
}

fn client_cert(allowed: &[&str]) -> ResolvedItem {
    let mut item = ResolvedItem::new("cert", ItemType::CertificateArchive, hosts(allowed));
    item.client_identity = Some(ClientIdentity {
        private_key_pkcs8_der: Zeroizing::new(PKI.client_key.clone()),
        chain_der: PKI.client_chain.clone(),
    });
    item
}

fn items(list: Vec<ResolvedItem>) -> ResolvedItems {
    list.into_iter().collect()
}

fn with_basic(spec: &mut MonitorSpec, item: &str) {
    spec.auth = Some(MonitorAuth {
        basic: Some(BasicAuth {
            credential_set: item.into(),
        }),
        bearer: None,
    });
}

fn with_bearer(spec: &mut MonitorSpec, item: &str) {
    spec.auth = Some(MonitorAuth {
        basic: None,
        bearer: Some(BearerAuth {
            secret: item.into(),
        }),
    });
}

fn with_cert(spec: &mut MonitorSpec, item: &str) {
    spec.client_certificate = Some(ClientCertificate {
        certificate_archive: item.into(),
    });
}

fn with_header(spec: &mut MonitorSpec, name: &str, value: &str) {
    spec.headers.push(Header {
        name: name.into(),
        value: value.into(),
    });
}

fn following(mut spec: MonitorSpec) -> MonitorSpec {
    spec.follow_redirects = true;
    spec
}

/// Local mode: internal addresses allowed, the test names on 127.0.0.1.
fn local() -> NetworkPolicy {
    let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
    NetworkPolicy {
        allow_internal: true,
        blocked: vec![],
        resolve: HashMap::from(
            ["shop.test", "api.test", "evil.test"].map(|n| (n.to_owned(), vec![loopback])),
        ),
    }
}

/// The cluster default: no reaching inside.
fn closed() -> NetworkPolicy {
    NetworkPolicy {
        allow_internal: false,
        ..local()
    }
}

fn trust() -> Trust {
    Trust::Custom(vec![PKI.ca.clone()])
}

async fn check(spec: &MonitorSpec, items: &ResolvedItems) -> CheckReport {
    run_check(spec, items, &trust(), &local()).await
}

fn basic_header(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn sent(report: &CheckReport) -> BTreeMap<&str, Vec<&str>> {
    report
        .items_sent
        .iter()
        .map(|(item, hosts)| (item.as_str(), hosts.iter().map(String::as_str).collect()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Each kind of secret reaches its server

#[tokio::test]
async fn basic_auth_reaches_the_server_and_a_wrong_password_fails_the_assertion() {
    let shop = https(handler(|seen| {
        if seen.header("authorization") == Some(&basic_header("bot", "pa ss:wörd")) {
            ok("welcome")
        } else {
            status(401)
        }
    }))
    .await;
    let mut spec = MonitorSpec::new(shop.url("https", "shop.test", "/account"));
    with_basic(&mut spec, "login");
    spec.assertions = Some(Assertions {
        body_contains: vec!["welcome".into()],
        ..Assertions::default()
    });

    let report = check(
        &spec,
        &items(vec![login("bot", "pa ss:wörd", &["shop.test"])]),
    )
    .await;
    assert_eq!(report.result, CheckResult::Passed, "{}", report.message);
    assert_eq!(report.status_code, Some(200));
    assert!(report.response_time.is_some());
    assert_eq!(
        sent(&report),
        BTreeMap::from([("login", vec!["shop.test"])])
    );

    let report = check(&spec, &items(vec![login("bot", "wrong", &["shop.test"])])).await;
    assert_eq!(report.result, CheckResult::AssertionFailed);
    assert_eq!(report.status_code, Some(401));
    assert!(!report.assertions[0].passed);
    assert_eq!(shop.seen().len(), 2);
}

#[tokio::test]
async fn a_bearer_token_reaches_the_server_and_a_wrong_one_fails_the_assertion() {
    let api = https(handler(|seen| match seen.header("authorization") {
        Some("Bearer tok+/=en") => ok("{}"),
        _ => status(401),
    }))
    .await;
    let mut spec = MonitorSpec::new(api.url("https", "api.test", "/v1/health"));
    with_bearer(&mut spec, "api-token");
    let report = check(
        &spec,
        &items(vec![token("api-token", "tok+/=en", &["api.test"])]),
    )
    .await;
    assert_eq!(report.result, CheckResult::Passed, "{}", report.message);

    let report = check(
        &spec,
        &items(vec![token("api-token", "other", &["api.test"])]),
    )
    .await;
    assert_eq!(report.result, CheckResult::AssertionFailed);
    assert_eq!(report.status_code, Some(401));
}

#[tokio::test]
async fn a_client_certificate_is_presented_from_memory() {
    let shop = https(handler(|seen| match &seen.client_cert {
        Some(_) => ok("hello client"),
        None => status(403),
    }))
    .await;
    let mut spec = MonitorSpec::new(shop.url("https", "shop.test", "/mtls"));
    with_cert(&mut spec, "cert");
    let report = check(&spec, &items(vec![client_cert(&["shop.test"])])).await;
    assert_eq!(report.result, CheckResult::Passed, "{}", report.message);
    let seen = shop.seen();
    assert_eq!(
        seen[0].client_cert.as_deref(),
        Some(PKI.client_chain[0].as_slice())
    );
    assert_eq!(sent(&report), BTreeMap::from([("cert", vec!["shop.test"])]));

    // Without the certificate the same server refuses.
    let report = check(
        &MonitorSpec::new(shop.url("https", "shop.test", "/mtls")),
        &items(vec![]),
    )
    .await;
    assert_eq!(report.result, CheckResult::AssertionFailed);
    assert_eq!(report.status_code, Some(403));
}

#[tokio::test]
async fn a_one_time_password_is_the_current_code() {
    let shop = https(handler(|seen| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        // The code of the step the server is in, or of the one before (sent just before a
        // step boundary).
        let valid: Vec<String> = [now, now.saturating_sub(30)]
            .iter()
            .map(|t| {
                monivault::runner::totp::code_at(&otp_seed(), *t)
                    .expect("code")
                    .to_string()
            })
            .collect();
        let body = String::from_utf8_lossy(&seen.body).into_owned();
        match body.strip_prefix("otp=") {
            Some(code) if valid.iter().any(|v| v == code) => ok("verified"),
            _ => status(401),
        }
    }))
    .await;
    let mut spec = MonitorSpec::new(shop.url("https", "shop.test", "/2fa"));
    spec.method = HttpMethod::Post;
    spec.body = Some("otp={{@VaultItem.otp.OneTimePassword}}".into());
    let report = check(&spec, &items(vec![otp(&["shop.test"])])).await;
    assert_eq!(report.result, CheckResult::Passed, "{}", report.message);
    assert_eq!(shop.seen()[0].method, "POST");
}

// ---------------------------------------------------------------------------------------
// Nothing a server echoes survives in the report

/// Every form of `secret` a report must not hold.
fn forms(secret: &str) -> Vec<String> {
    let strict: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let json = serde_json::to_string(secret).expect("json");
    vec![
        secret.to_owned(),
        strict.clone(),
        strict.replace("%20", "+"),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        json[1..json.len() - 1].to_owned(),
    ]
}

/// Every string in a report.
fn texts(report: &CheckReport) -> Vec<String> {
    let mut out = vec![format!("{:?}", report.result), report.message.clone()];
    out.extend(report.body_excerpt.clone());
    for a in &report.assertions {
        out.push(a.assertion.clone());
        out.push(a.detail.clone());
    }
    for h in &report.hops {
        out.push(h.url.clone());
        out.extend(h.items.iter().cloned());
    }
    for (item, hosts) in &report.items_sent {
        out.push(item.clone());
        out.extend(hosts.iter().cloned());
    }
    out
}

fn assert_clean(report: &CheckReport, secrets: &[&str]) {
    for text in texts(report) {
        for secret in secrets {
            for form in forms(secret) {
                assert!(
                    !text.contains(&form),
                    "a form of a secret ({form:?}) survived in {text:?}"
                );
            }
        }
    }
}

/// Reflects the request: path, every header (also base64-encoded) and the body, as JSON.
fn echo(seen: &Seen) -> Reply {
    let headers: BTreeMap<&str, String> = seen
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    let encoded: Vec<String> = seen
        .headers
        .iter()
        .map(|(_, v)| STANDARD.encode(v))
        .collect();
    // Path first, so it is inside the report's excerpt.
    let body = format!(
        "{{\"path\":{},\"body\":{},\"headers\":{},\"encoded\":{}}}",
        serde_json::to_string(&seen.path).expect("json"),
        serde_json::to_string(&String::from_utf8_lossy(&seen.body)).expect("json"),
        serde_json::to_string(&headers).expect("json"),
        serde_json::to_string(&encoded).expect("json"),
    );
    Reply::Respond {
        status: 500,
        headers: vec![],
        body: body.into_bytes(),
    }
}

#[tokio::test]
async fn an_echo_server_reflects_every_secret_and_the_report_holds_none() {
    let shop = https(handler(echo)).await;
    let password = "pä ss/w:rd+%&\"\\";
    let api_key = "k3y=+/?&\"x";
    let mut spec = MonitorSpec::new(shop.url(
        "https",
        "shop.test",
        "/echo/{{@VaultItem.api-key.Value}}?k={{@VaultItem.api-key.Value}}",
    ));
    spec.method = HttpMethod::Post;
    with_basic(&mut spec, "login");
    with_header(&mut spec, "X-API-Key", "{{@VaultItem.api-key.Value}}");
    with_header(&mut spec, "X-OTP", "{{@VaultItem.otp.OneTimePassword}}");
    spec.body = Some(
        r#"{"password":"{{@VaultItem.login.Password}}","key":"{{@VaultItem.api-key.Value}}"}"#
            .into(),
    );
    spec.assertions = Some(Assertions {
        body_contains: vec!["never there".into()],
        ..Assertions::default()
    });
    let items = items(vec![
        login("bot", password, &["shop.test"]),
        token("api-key", api_key, &["shop.test"]),
        otp(&["shop.test"]),
    ]);
    let report = check(&spec, &items).await;
    assert_eq!(
        report.result,
        CheckResult::AssertionFailed,
        "{}",
        report.message
    );

    // The server did get every secret, so the report had every chance to leak them.
    let seen = &shop.seen()[0];
    assert_eq!(seen.header("x-api-key"), Some(api_key));
    assert_eq!(
        seen.header("authorization"),
        Some(basic_header("bot", password).as_str())
    );
    let code = seen.header("x-otp").expect("otp header").to_owned();
    assert_eq!(code.len(), 6);

    let excerpt = report.body_excerpt.clone().expect("excerpt");
    assert!(excerpt.contains("*****"), "{excerpt}");
    let user_pass = format!("bot:{password}");
    let basic = basic_header("bot", password);
    assert_clean(&report, &[password, api_key, &code, &user_pass, &basic]);
    assert!(
        excerpt.contains("\"path\":\"/echo/*****?k=*****\""),
        "{excerpt}"
    );
}

#[tokio::test]
async fn assertions_on_a_reflected_secret_answer_no_guess_and_html_escaping_hides_nothing() {
    // A search page that reflects its query, HTML-escaped: the secret is on the page.
    let page = https(handler(|seen: &Seen| {
        let query = seen.path.split_once("q=").map_or("", |(_, q)| q);
        let decoded = percent_encoding::percent_decode_str(query).decode_utf8_lossy();
        let escaped = decoded
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;");
        ok(&format!("<p>No results for {escaped}</p>"))
    }))
    .await;
    let token = "tok_a<&'\"9";
    let mut spec =
        MonitorSpec::new(page.url("https", "shop.test", "/search?q={{@VaultItem.t.Value}}"));
    // A right guess of the first characters, and a wrong one: neither may be told apart.
    for guess in ["for tok_a", "for tok_b"] {
        spec.assertions = Some(Assertions {
            body_contains: vec![guess.into()],
            ..Assertions::default()
        });
        let report = check(&spec, &items(vec![token_item(token)])).await;
        assert_eq!(report.result, CheckResult::AssertionFailed, "{guess}");
        let excerpt = report.body_excerpt.clone().expect("excerpt");
        assert!(excerpt.contains("No results for *****"), "{excerpt}");
        assert_clean(&report, &[token, "tok_a&lt;&amp;&#39;&quot;9"]);
    }
}

fn token_item(value: &str) -> ResolvedItem {
    token("t", value, &["shop.test"])
}

#[tokio::test]
async fn an_error_about_a_url_never_quotes_the_secret_in_it() {
    let shop = https(handler(|_| Reply::HangUp)).await;
    let spec = MonitorSpec::new(shop.url(
        "https",
        "shop.test",
        "/t/{{@VaultItem.api-key.Value}}?k={{@VaultItem.api-key.Value}}",
    ));
    let report = check(
        &spec,
        &items(vec![token("api-key", "hunter2-token", &["shop.test"])]),
    )
    .await;
    assert_eq!(report.result, CheckResult::Http, "{}", report.message);
    assert_eq!(shop.connections(), 1);
    assert!(report.message.contains("/t/*****"), "{}", report.message);
    assert_eq!(
        report.hops[0].url,
        format!("https://shop.test:{}/t/*****", shop.port)
    );
    assert_clean(&report, &["hunter2-token"]);
}

// ---------------------------------------------------------------------------------------
// Secrets stay on their hosts across redirects

#[tokio::test]
async fn a_redirect_to_a_host_basic_auth_may_not_reach_is_blocked_and_that_host_gets_nothing() {
    let evil = https(handler(echo)).await;
    let to = evil.url("https", "evil.test", "/steal");
    let shop = https(handler(move |_| redirect(302, to.clone()))).await;
    let mut spec = following(MonitorSpec::new(shop.url("https", "shop.test", "/")));
    with_basic(&mut spec, "login");
    let report = check(&spec, &items(vec![login("bot", "pw", &["shop.test"])])).await;
    assert_eq!(
        report.result,
        CheckResult::RedirectBlocked {
            host: "evil.test".into()
        },
        "{}",
        report.message
    );
    assert_eq!(
        evil.connections(),
        0,
        "no connection at all to the blocked host"
    );
    assert_eq!(shop.seen().len(), 1);
    assert_eq!(report.hops.len(), 1);
    assert_eq!(report.hops[0].status, Some(302));
    assert_eq!(
        sent(&report),
        BTreeMap::from([("login", vec!["shop.test"])])
    );
}

#[tokio::test]
async fn a_custom_api_key_header_is_not_carried_to_a_host_its_item_does_not_allow() {
    let evil = https(handler(echo)).await;
    let to = evil.url("https", "evil.test", "/");
    let shop = https(handler(move |_| redirect(307, to.clone()))).await;
    let mut spec = following(MonitorSpec::new(shop.url("https", "shop.test", "/")));
    with_header(&mut spec, "X-API-Key", "{{@VaultItem.t.Value}}");
    let report = check(&spec, &items(vec![token("t", "k-123", &["shop.test"])])).await;
    assert_eq!(
        report.result,
        CheckResult::RedirectBlocked {
            host: "evil.test".into()
        }
    );
    assert_eq!(evil.connections(), 0);
    assert_eq!(shop.seen()[0].header("x-api-key"), Some("k-123"));
}

#[tokio::test]
async fn a_to_b_to_a_the_certificate_leaves_at_b_and_never_comes_back() {
    // B is allowed for the API key, not for the client certificate.
    let b_to_a = Arc::new(Mutex::new(String::new()));
    let api = https(handler({
        let b_to_a = b_to_a.clone();
        move |_| redirect(302, b_to_a.lock().expect("lock").clone())
    }))
    .await;
    let to_b = api.url("https", "api.test", "/hop");
    let shop = https(handler(move |seen| match seen.path.as_str() {
        "/start" => redirect(302, to_b.clone()),
        _ => ok("done"),
    }))
    .await;
    *b_to_a.lock().expect("lock") = shop.url("https", "shop.test", "/end");

    let mut spec = following(MonitorSpec::new(shop.url("https", "shop.test", "/start")));
    with_header(&mut spec, "X-API-Key", "{{@VaultItem.t.Value}}");
    with_cert(&mut spec, "cert");
    let items = items(vec![
        token("t", "k-123", &["shop.test", "api.test"]),
        client_cert(&["shop.test"]),
    ]);
    let report = check(&spec, &items).await;
    assert_eq!(report.result, CheckResult::Passed, "{}", report.message);

    let at_shop = shop.seen();
    let at_api = api.seen();
    assert_eq!(at_shop.len(), 2);
    assert_eq!(at_api.len(), 1);
    assert!(at_shop[0].client_cert.is_some(), "presented at A");
    assert_eq!(at_api[0].client_cert, None, "not presented at B");
    assert_eq!(
        at_api[0].header("x-api-key"),
        Some("k-123"),
        "B may have the key"
    );
    assert_eq!(at_shop[1].path, "/end");
    assert_eq!(
        at_shop[1].client_cert, None,
        "never again after leaving its hosts"
    );
    assert_eq!(at_shop[1].header("x-api-key"), Some("k-123"));
    assert_eq!(
        sent(&report),
        BTreeMap::from([
            ("cert", vec!["shop.test"]),
            ("t", vec!["api.test", "shop.test"])
        ])
    );
    let hop_items: Vec<BTreeSet<String>> = report.hops.iter().map(|h| h.items.clone()).collect();
    assert_eq!(
        hop_items[0],
        BTreeSet::from(["cert".to_owned(), "t".to_owned()])
    );
    assert_eq!(hop_items[2], BTreeSet::from(["t".to_owned()]));
}

#[tokio::test]
async fn a_to_b_is_blocked_when_b_is_allowed_for_one_carried_item_but_not_another() {
    let api = https(handler(echo)).await;
    let to_b = api.url("https", "api.test", "/hop");
    let shop = https(handler(move |_| redirect(302, to_b.clone()))).await;
    let mut spec = following(MonitorSpec::new(shop.url("https", "shop.test", "/start")));
    with_header(&mut spec, "X-API-Key", "{{@VaultItem.t.Value}}");
    with_basic(&mut spec, "login");
    let items = items(vec![
        token("t", "k-123", &["shop.test", "api.test"]),
        login("bot", "pw", &["shop.test"]),
    ]);
    let report = check(&spec, &items).await;
    assert_eq!(
        report.result,
        CheckResult::RedirectBlocked {
            host: "api.test".into()
        }
    );
    assert!(
        report.message.contains("vault item login"),
        "{}",
        report.message
    );
    assert_eq!(api.connections(), 0);
}

#[tokio::test]
async fn https_to_http_drops_every_secret_even_on_the_same_host() {
    let plain = http(handler(|_| ok("plain"))).await;
    let to = plain.url("http", "shop.test", "/plain");
    let shop = https(handler(move |_| redirect(302, to.clone()))).await;
    let mut spec = following(MonitorSpec::new(shop.url("https", "shop.test", "/")));
    with_basic(&mut spec, "login");
    with_header(&mut spec, "X-API-Key", "{{@VaultItem.t.Value}}");
    with_header(&mut spec, "X-Plain", "hello");
    let items = items(vec![
        login("bot", "pw", &["shop.test"]),
        token("t", "k-123", &["shop.test"]),
    ]);
    let report = check(&spec, &items).await;
    assert_eq!(report.result, CheckResult::Passed, "{}", report.message);

    let at_plain = plain.seen();
    assert_eq!(at_plain.len(), 1);
    assert_eq!(at_plain[0].header("authorization"), None);
    assert_eq!(at_plain[0].header("x-api-key"), None);
    assert_eq!(at_plain[0].header("x-plain"), Some("hello"));
    assert_eq!(
        sent(&report),
        BTreeMap::from([("login", vec!["shop.test"]), ("t", vec!["shop.test"])])
    );
    assert!(report.hops[1].items.is_empty());
}

#[tokio::test]
async fn a_location_that_echoes_a_secret_to_plain_http_is_not_followed() {
    let plain = http(handler(|_| ok("plain"))).await;
    let to = plain.url("http", "shop.test", "/?k=k-123");
    let shop = https(handler(move |_| redirect(302, to.clone()))).await;
    let spec = following(MonitorSpec::new(shop.url(
        "https",
        "shop.test",
        "/?k={{@VaultItem.t.Value}}",
    )));
    let report = check(&spec, &items(vec![token("t", "k-123", &["shop.test"])])).await;
    assert_eq!(
        report.result,
        CheckResult::RedirectBlocked {
            host: "shop.test".into()
        }
    );
    assert_eq!(plain.connections(), 0);
    assert_clean(&report, &["k-123"]);
}

#[tokio::test]
async fn an_allowed_at_evil_location_is_blocked_as_evil() {
    let evil = https(handler(echo)).await;
    let to = format!("https://shop.test@evil.test:{}/", evil.port);
    let shop = https(handler(move |_| redirect(302, to.clone()))).await;
    let mut spec = following(MonitorSpec::new(shop.url("https", "shop.test", "/")));
    with_basic(&mut spec, "login");
    let report = check(&spec, &items(vec![login("bot", "pw", &["shop.test"])])).await;
    assert_eq!(
        report.result,
        CheckResult::RedirectBlocked {
            host: "evil.test".into()
        }
    );
    assert_eq!(evil.connections(), 0);
}

#[tokio::test]
async fn follow_redirects_off_judges_the_first_3xx() {
    let evil = https(handler(echo)).await;
    let to = evil.url("https", "evil.test", "/");
    let shop = https(handler(move |_| redirect(302, to.clone()))).await;
    let mut spec = MonitorSpec::new(shop.url("https", "shop.test", "/"));
    with_basic(&mut spec, "login");
    let items = items(vec![login("bot", "pw", &["shop.test"])]);
    let report = check(&spec, &items).await;
    assert_eq!(report.result, CheckResult::AssertionFailed);
    assert_eq!(report.status_code, Some(302));
    spec.assertions = Some(Assertions {
        status_codes: vec![302],
        ..Assertions::default()
    });
    assert_eq!(check(&spec, &items).await.result, CheckResult::Passed);
    assert_eq!(evil.connections(), 0);
}

#[tokio::test]
async fn redirect_methods_303_turns_post_into_get_and_307_keeps_the_body() {
    let shop = https(handler(|seen| match seen.path.as_str() {
        "/see-other" => redirect(303, "/landing"),
        "/temporary" => redirect(307, "/landing"),
        _ => ok("landed"),
    }))
    .await;
    for (path, method, body) in [("/see-other", "GET", ""), ("/temporary", "POST", "a=1")] {
        let mut spec = following(MonitorSpec::new(shop.url("https", "shop.test", path)));
        spec.method = HttpMethod::Post;
        spec.body = Some("a=1".into());
        with_header(
            &mut spec,
            "Content-Type",
            "application/x-www-form-urlencoded",
        );
        let report = check(&spec, &items(vec![])).await;
        assert_eq!(report.result, CheckResult::Passed, "{}", report.message);
        let landing = shop.seen().pop().expect("landing");
        assert_eq!(landing.method, method, "{path}");
        assert_eq!(String::from_utf8_lossy(&landing.body), body, "{path}");
        assert_eq!(
            landing.header("content-type").is_some(),
            !body.is_empty(),
            "{path}"
        );
    }
}

#[tokio::test]
async fn redirect_loops_and_endless_chains_are_cut() {
    let shop = https(handler(|seen| match seen.path.as_str() {
        "/a" => redirect(302, "/b"),
        "/b" => redirect(302, "/a"),
        path => {
            let n: usize = path.trim_start_matches("/n").parse().unwrap_or(0);
            redirect(302, format!("/n{}", n + 1))
        }
    }))
    .await;
    let report = check(
        &following(MonitorSpec::new(shop.url("https", "shop.test", "/a"))),
        &items(vec![]),
    )
    .await;
    assert_eq!(
        report.result,
        CheckResult::RedirectLoop,
        "{}",
        report.message
    );
    assert_eq!(shop.seen().len(), 2);

    let before = shop.seen().len();
    let report = check(
        &following(MonitorSpec::new(shop.url("https", "shop.test", "/n0"))),
        &items(vec![]),
    )
    .await;
    assert_eq!(report.result, CheckResult::TooManyRedirects);
    assert_eq!(shop.seen().len() - before, MAX_REDIRECTS + 1);
    assert_eq!(report.hops.len(), MAX_REDIRECTS + 1);
}

// ---------------------------------------------------------------------------------------
// Refusals before any I/O

#[tokio::test]
async fn an_item_not_allowed_for_the_url_host_means_zero_connections() {
    let evil = https(handler(echo)).await;
    let mut spec = MonitorSpec::new(evil.url("https", "evil.test", "/"));
    with_bearer(&mut spec, "t");
    let report = check(&spec, &items(vec![token("t", "k-123", &["shop.test"])])).await;
    assert_eq!(
        report.result,
        CheckResult::HostNotAllowed {
            item: "t".into(),
            host: "evil.test".into()
        }
    );
    assert_eq!(evil.connections(), 0);
    assert!(report.hops.is_empty());
    assert!(report.items_sent.is_empty());
}

#[tokio::test]
async fn tricky_urls_are_judged_by_the_host_the_client_would_connect_to() {
    let shop = https(handler(|_| ok("shop"))).await;
    let evil = https(handler(echo)).await;
    let items = items(vec![token("t", "k-123", &["shop.test"])]);
    let run = |url: String| {
        let mut spec = MonitorSpec::new(url);
        with_bearer(&mut spec, "t");
        spec
    };
    // Backslash and userinfo: the host is evil.test whatever follows.
    for url in [
        format!("https://evil.test:{}\\@shop.test/", evil.port),
        format!("https://evil.test:{}\\.shop.test/", evil.port),
    ] {
        let report = check(&run(url.clone()), &items).await;
        assert_eq!(
            report.result.reason(),
            "HostNotAllowed",
            "{url}: {}",
            report.message
        );
    }
    let report = check(
        &run(format!("https://shop.test@evil.test:{}/", evil.port)),
        &items,
    )
    .await;
    assert_eq!(
        report.result.reason(),
        "InvalidRequest",
        "{}",
        report.message
    );
    assert!(report.message.contains("evil.test"), "{}", report.message);
    assert_eq!(evil.connections(), 0);
    assert_eq!(shop.connections(), 0);

    // Percent-encoded and Unicode dots are shop.test to the parser and to the client alike.
    for url in [
        format!("https://shop%2etest:{}/", shop.port),
        format!("https://shop。test:{}/", shop.port),
        format!("https://SHOP.test.:{}/", shop.port),
    ] {
        let report = check(&run(url.clone()), &items).await;
        assert_eq!(
            report.result,
            CheckResult::Passed,
            "{url}: {}",
            report.message
        );
    }
    assert_eq!(shop.seen().len(), 3);
    assert!(
        shop.seen()
            .iter()
            .all(|s| s.header("authorization") == Some("Bearer k-123"))
    );
    assert_eq!(evil.connections(), 0);
}

#[tokio::test]
async fn plain_http_with_a_secret_is_insecure_and_sends_nothing() {
    let plain = http(handler(|_| ok("plain"))).await;
    let mut spec = MonitorSpec::new(plain.url("http", "shop.test", "/"));
    with_basic(&mut spec, "login");
    let report = check(&spec, &items(vec![login("bot", "pw", &["shop.test"])])).await;
    assert_eq!(
        report.result,
        CheckResult::InsecureTransport {
            item: "login".into()
        }
    );
    assert_eq!(plain.connections(), 0);
    // Without secrets, plain http is fine.
    let report = check(
        &MonitorSpec::new(plain.url("http", "shop.test", "/")),
        &items(vec![]),
    )
    .await;
    assert_eq!(report.result, CheckResult::Passed, "{}", report.message);
}

#[tokio::test]
async fn inside_addresses_are_refused_unless_allowed() {
    let shop = https(handler(|_| ok("inside"))).await;
    let port = shop.port;
    for (url, host) in [
        (format!("https://127.0.0.1:{port}/"), "127.0.0.1".to_owned()),
        (format!("https://[::1]:{port}/"), "[::1]".to_owned()),
        (
            format!("https://[::ffff:127.0.0.1]:{port}/"),
            "[::ffff:7f00:1]".to_owned(),
        ),
        (
            "https://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254".to_owned(),
        ),
        (format!("https://shop.test:{port}/"), "shop.test".to_owned()),
    ] {
        let report = run_check(
            &MonitorSpec::new(url.clone()),
            &items(vec![]),
            &trust(),
            &closed(),
        )
        .await;
        assert_eq!(
            report.result,
            CheckResult::AddressNotAllowed { host },
            "{url}: {}",
            report.message
        );
    }
    assert_eq!(shop.connections(), 0);
    // Local mode reaches the same server.
    let report = check(
        &MonitorSpec::new(format!("https://127.0.0.1:{port}/")),
        &items(vec![]),
    )
    .await;
    assert_eq!(report.result, CheckResult::Passed, "{}", report.message);
}

// ---------------------------------------------------------------------------------------
// Transport

#[tokio::test]
async fn system_roots_do_not_trust_the_test_ca_and_nothing_skips_verification() {
    let shop = https(handler(|_| ok("shop"))).await;
    let mut spec = MonitorSpec::new(shop.url("https", "shop.test", "/"));
    with_bearer(&mut spec, "t");
    let items = items(vec![token("t", "k-123", &["shop.test"])]);
    let report = run_check(&spec, &items, &Trust::SystemRoots, &local()).await;
    assert_eq!(report.result, CheckResult::Tls, "{}", report.message);
    assert!(
        shop.seen().is_empty(),
        "no request over an untrusted connection"
    );
    assert!(report.items_sent.is_empty());
}

#[tokio::test]
async fn the_whole_check_has_one_timeout() {
    let shop = https(handler(|_| Reply::Never)).await;
    let mut spec = MonitorSpec::new(shop.url("https", "shop.test", "/slow"));
    spec.timeout = SpecDuration::new("300ms").expect("duration");
    let report = check(&spec, &items(vec![])).await;
    assert_eq!(report.result, CheckResult::Timeout, "{}", report.message);
    assert_eq!(report.hops.len(), 1);
    assert_eq!(report.hops[0].status, None);
}

#[tokio::test]
async fn a_huge_body_is_read_only_to_the_bound_and_the_excerpt_is_short() {
    let shop = https(handler(|_| {
        let mut body = vec![b'a'; 3 * 1024 * 1024];
        body.extend_from_slice(b"needle");
        Reply::Respond {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body,
        }
    }))
    .await;
    let mut spec = MonitorSpec::new(shop.url("https", "shop.test", "/big"));
    spec.assertions = Some(Assertions {
        body_contains: vec!["needle".into()],
        ..Assertions::default()
    });
    let report = check(&spec, &items(vec![])).await;
    assert_eq!(report.result, CheckResult::AssertionFailed);
    assert!(
        report.assertions[1].detail.contains("first 1 MiB"),
        "{}",
        report.assertions[1].detail
    );
    let excerpt = report.body_excerpt.expect("excerpt");
    assert_eq!(excerpt.len(), monivault::runner::BODY_EXCERPT_BYTES);
}

#[tokio::test]
async fn a_body_is_judged_up_to_exactly_the_bound() {
    let shop = https(handler(|seen| {
        // The needle ends at the last byte read, or one byte past it.
        let filler = match seen.path.as_str() {
            "/at" => MAX_BODY_BYTES - 6,
            _ => MAX_BODY_BYTES - 5,
        };
        let mut body = vec![b'a'; filler];
        body.extend_from_slice(b"needle");
        Reply::Respond {
            status: 200,
            headers: vec![],
            body,
        }
    }))
    .await;
    for (path, result) in [
        ("/at", CheckResult::Passed),
        ("/over", CheckResult::AssertionFailed),
    ] {
        let mut spec = MonitorSpec::new(shop.url("https", "shop.test", path));
        spec.assertions = Some(Assertions {
            body_contains: vec!["needle".into()],
            ..Assertions::default()
        });
        let report = check(&spec, &items(vec![])).await;
        assert_eq!(report.result, result, "{path}: {}", report.message);
    }
}

/// A response with `n` headers of `value_len` bytes each, besides the server's own.
fn with_headers(n: usize, value_len: usize) -> Reply {
    Reply::Respond {
        status: 200,
        headers: (0..n)
            .map(|i| (format!("x-h{i}"), "v".repeat(value_len)))
            .collect(),
        body: b"ok".to_vec(),
    }
}

#[tokio::test]
async fn response_headers_are_bounded_over_http1_and_http2() {
    // HTTP/1.1 (plain http): a count. The server adds date and content-length.
    let plain = http(handler(|seen| match seen.path.as_str() {
        "/at" => with_headers(MAX_RESPONSE_HEADERS - 2, 8),
        _ => with_headers(MAX_RESPONSE_HEADERS - 1, 8),
    }))
    .await;
    for (path, reason) in [("/at", "Passed"), ("/over", "Http")] {
        let spec = MonitorSpec::new(plain.url("http", "shop.test", path));
        let report = check(&spec, &items(vec![])).await;
        assert_eq!(report.result.reason(), reason, "{path}: {}", report.message);
    }
    // HTTP/2 (https, negotiated by ALPN): bytes, as RFC 9113 counts them.
    let limit = MAX_RESPONSE_HEADER_BYTES as usize;
    let shop = https(handler(move |seen| match seen.path.as_str() {
        "/under" => with_headers(1, limit - 1024),
        _ => with_headers(1, limit),
    }))
    .await;
    for (path, reason) in [("/under", "Passed"), ("/over", "Http")] {
        let spec = MonitorSpec::new(shop.url("https", "shop.test", path));
        let report = check(&spec, &items(vec![])).await;
        assert_eq!(report.result.reason(), reason, "{path}: {}", report.message);
    }
}

#[tokio::test]
async fn hostile_responses_never_panic() {
    let shop = https(handler(|seen| match seen.path.as_str() {
        "/binary" => Reply::Respond {
            status: 200,
            headers: vec![("content-encoding".into(), "gzip".into())],
            body: vec![0x1f, 0x8b, 0xff, 0x00, 0xfe],
        },
        "/no-location" => status(302),
        "/bad-location" => redirect(302, "javascript:alert(1)"),
        "/weird-status" => status(599),
        _ => Reply::HangUp,
    }))
    .await;
    let cases = [
        ("/binary", "Passed"),
        ("/no-location", "AssertionFailed"),
        ("/bad-location", "RedirectInvalid"),
        ("/weird-status", "AssertionFailed"),
        ("/hang-up", "Http"),
    ];
    for (path, reason) in cases {
        let spec = following(MonitorSpec::new(shop.url("https", "shop.test", path)));
        let report = check(&spec, &items(vec![])).await;
        assert_eq!(report.result.reason(), reason, "{path}: {}", report.message);
    }
    // Not decompressed: the excerpt is the raw bytes, read lossily.
    let report = check(
        &MonitorSpec::new(shop.url("https", "shop.test", "/binary")),
        &items(vec![]),
    )
    .await;
    assert!(report.body_excerpt.expect("excerpt").contains('\u{fffd}'));
}
