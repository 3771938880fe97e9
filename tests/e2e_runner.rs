//! The runner on the real control plane: monitors that run with their secrets against
//! local HTTPS servers the test starts, Test Now, and what never happens: a secret sent to
//! a host its item does not allow, a request from a monitor nobody allowed, a plaintext in a
//! status, an Event, the operator's log or etcd.
//!
//! Every test runs its own `monivault run` with its webhooks; its runner resolves the test
//! host names (`shop.test`, `api.test`, `evil.test`) to loopback, where the servers listen,
//! each on its own port, with certificates from a test CA that the monitors trust through
//! a `Certificate` item.

mod support;

#[path = "runner_check/servers.rs"]
mod servers;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use monivault::api::vault_item::{OtpAlgorithm, OtpEncoding};
use monivault::api::{Monitor, MonitorRun, MonitorState, RunPhase, VaultItem, VaultSection};
use monivault::crypto::Plaintext;
use monivault::runner::OtpSeed;
use serde_json::{Value, json};
use servers::{PKI, Reply, Seen, handler, http, https, ok, pem, redirect, status};
use support::{Cluster, Operator, cluster, eventually, stderr};

/// Every form a secret could leak in: as is, base64 (both alphabets, padded or not),
/// percent-encoded and JSON-escaped.
fn forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![
        secret.to_owned(),
        STANDARD.encode(secret),
        STANDARD_NO_PAD.encode(secret),
        URL_SAFE.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    ];
    let json = serde_json::to_string(secret).expect("json");
    forms.push(json.trim_matches('"').to_owned());
    forms.sort();
    forms.dedup();
    forms
}

/// A namespace with section `checkout` and the test CA as item `test-ca`, behind an
/// operator with its webhooks and runner.
struct World {
    c: &'static Cluster,
    ns: String,
    op: Operator,
    admin: Client,
}

impl World {
    async fn new(prefix: &str) -> World {
        let c = cluster();
        let admin = c.admin().await;
        let ns = c.temp_namespace(prefix).await;
        let store_ns = c.temp_namespace(&format!("{prefix}-store")).await;
        let op = Operator::start_with_webhooks(c, &store_ns, &ns);
        World::around(c, ns, op, admin).await
    }

    /// The section and the CA item in `ns`, behind the running `op`.
    async fn around(c: &'static Cluster, ns: String, op: Operator, admin: Client) -> World {
        let world = World { c, ns, op, admin };
        let sections: Api<VaultSection> = world.api();
        let section = serde_json::from_value(json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
            "metadata": {"name": "checkout"}, "spec": {"description": "e2e runner"},
        }))
        .expect("section");
        sections
            .create(&PostParams::default(), &section)
            .await
            .expect("create the section");
        world
            .item(json!({"metadata": {"name": "test-ca"},
                "spec": {"type": "Certificate", "section": "checkout",
                         "certificate": {"pem": pem(&PKI.ca)}}}))
            .await;
        world
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Creates an item as the admin, once the webhook is in the path (it seals plaintext).
    async fn item(&self, mut object: Value) {
        object["apiVersion"] = json!("monivault.io/v1alpha1");
        object["kind"] = json!("VaultItem");
        let item: VaultItem = serde_json::from_value(object).expect("item");
        let items: Api<VaultItem> = self.api();
        eventually("the webhook to admit an item", || {
            let (items, item) = (items.clone(), item.clone());
            async move { items.create(&PostParams::default(), &item).await.ok() }
        })
        .await;
        support::ready_condition(&items, &item.name_any(), "True").await;
    }

    /// Creates a monitor as the admin: every 10 s, trusting the test CA, with `spec`.
    async fn monitor(&self, name: &str, spec: Value) {
        let mut full = json!({"interval": "10s", "timeout": "5s",
                              "tls": {"caCertificate": "test-ca"}});
        for (key, value) in spec.as_object().expect("spec object") {
            full[key] = value.clone();
        }
        let monitor: Monitor = serde_json::from_value(json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
            "metadata": {"name": name}, "spec": full,
        }))
        .expect("monitor");
        self.api::<Monitor>()
            .create(&PostParams::default(), &monitor)
            .await
            .expect("create the monitor");
    }

    /// Waits until the monitor's state is `want` (a check runs every 10 s).
    async fn state(&self, name: &str, want: MonitorState) -> Monitor {
        let monitors: Api<Monitor> = self.api();
        eventually(&format!("monitor {name} to be {want:?}"), || async {
            let monitor = monitors.get(name).await.ok()?;
            (monitor.status.as_ref()?.state == Some(want)).then_some(monitor)
        })
        .await
    }

    /// Fails if any form of any secret is in a status of the namespace's monivault objects,
    /// its Events, the operator's log or etcd.
    async fn assert_no_leak(&self, secrets: &[&str]) {
        let mut texts = Vec::new();
        texts.extend(
            self.texts::<Monitor>(|m| serde_json::to_string(&m.status))
                .await,
        );
        texts.extend(
            self.texts::<MonitorRun>(|r| serde_json::to_string(&r.status))
                .await,
        );
        texts.extend(
            self.texts::<VaultItem>(|i| serde_json::to_string(&i.status))
                .await,
        );
        texts.extend(self.texts::<Event>(serde_json::to_string).await);
        texts.push(self.op.stderr());
        let dump = self.c.etcd_dump();
        for secret in secrets {
            for form in forms(secret) {
                for text in &texts {
                    assert!(!text.contains(&form), "a form of a secret leaked: {text}");
                }
                assert!(!dump.contains(&form), "a form of a secret is in etcd");
            }
        }
    }
}

impl World {
    /// `text` of every object of kind `K` in the namespace.
    async fn texts<K>(&self, text: impl Fn(&K) -> serde_json::Result<String>) -> Vec<String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        self.api::<K>()
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|object| text(object).expect("json"))
            .collect()
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn otp_seed(seed: &str) -> OtpSeed {
    OtpSeed {
        seed: Plaintext::from(seed),
        encoding: OtpEncoding::Base32,
        digits: 6,
        period: 30,
        algorithm: OtpAlgorithm::Sha1,
    }
}

/// The test client certificate and key as a PKCS#12 archive.
fn client_archive(password: &str) -> Vec<u8> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let chain = PrivateKeyChain::new(
        "client-key",
        PrivateKey::from_der(&PKI.client_key).expect("pkcs8"),
        [Certificate::from_der(&PKI.client_chain[0]).expect("der")],
    );
    let mut store = KeyStore::new();
    store.add_entry("client", KeyStoreEntry::PrivateKeyChain(chain));
    store.writer(password).write().expect("PKCS#12")
}

#[tokio::test]
async fn basic_bearer_mtls_and_totp_monitors_are_up_and_a_wrong_password_is_down() {
    let w = World::new("run-auth").await;
    let password = support::secret("run-Pa55");
    let wrong = support::secret("run-wrong");
    let token = support::secret("run-token");
    let archive_password = support::secret("run-p12");
    // The server closure outlives this frame.
    let seed: &'static str = support::base32_seed("run-otp-seed").leak();
    let expected_basic = basic("bot", &password);
    let expected_bearer = format!("Bearer {token}");
    let client_cert = PKI.client_chain[0].clone();
    let server = https(handler(move |seen: &Seen| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let fits = match seen.path.as_str() {
            "/basic" => seen.header("authorization") == Some(expected_basic.as_str()),
            "/bearer" => seen.header("authorization") == Some(expected_bearer.as_str()),
            "/mtls" => seen.client_cert.as_deref() == Some(client_cert.as_slice()),
            "/totp" => [now, now.saturating_sub(30)].iter().any(|at| {
                let code = monivault::runner::totp::code_at(&otp_seed(seed), *at).expect("code");
                seen.header("x-otp") == Some(code.as_str())
            }),
            _ => false,
        };
        if fits { ok("welcome") } else { status(401) }
    }))
    .await;
    let hosts = json!(["shop.test"]);
    w.item(
        json!({"metadata": {"name": "login"}, "spec": {"type": "CredentialSet",
        "section": "checkout", "allowedHosts": hosts,
        "credentialSet": {"username": "bot", "password": password}}}),
    )
    .await;
    w.item(
        json!({"metadata": {"name": "old-login"}, "spec": {"type": "CredentialSet",
        "section": "checkout", "allowedHosts": hosts,
        "credentialSet": {"username": "bot", "password": wrong}}}),
    )
    .await;
    w.item(
        json!({"metadata": {"name": "token"}, "spec": {"type": "Secret",
        "section": "checkout", "allowedHosts": hosts, "secret": {"value": token}}}),
    )
    .await;
    // The archive holds the client's key: stored as a secret, so the scans look for it.
    let archive = STANDARD.encode(client_archive(&archive_password));
    support::adopt("the client archive", archive.as_bytes());
    w.item(
        json!({"metadata": {"name": "client"}, "spec": {"type": "CertificateArchive",
        "section": "checkout", "allowedHosts": hosts,
        "certificateArchive": {"archive": archive,
                               "password": archive_password}}}),
    )
    .await;
    w.item(
        json!({"metadata": {"name": "otp"}, "spec": {"type": "OneTimePassword",
        "section": "checkout", "allowedHosts": hosts,
        "oneTimePassword": {"secret": seed, "encoding": "Base32"}}}),
    )
    .await;
    let url = |path: &str| server.url("https", "shop.test", path);
    w.monitor(
        "basic",
        json!({"url": url("/basic"), "auth": {"basic": {"credentialSet": "login"}}}),
    )
    .await;
    w.monitor(
        "wrong",
        json!({"url": url("/basic"), "auth": {"basic": {"credentialSet": "old-login"}}}),
    )
    .await;
    w.monitor(
        "bearer",
        json!({"url": url("/bearer"), "auth": {"bearer": {"secret": "token"}}}),
    )
    .await;
    w.monitor(
        "mtls",
        json!({"url": url("/mtls"), "clientCertificate": {"certificateArchive": "client"}}),
    )
    .await;
    w.monitor(
        "totp",
        json!({"url": url("/totp"),
        "headers": [{"name": "X-OTP", "value": "{{@VaultItem.otp.OneTimePassword}}"}]}),
    )
    .await;

    for name in ["basic", "bearer", "mtls", "totp"] {
        let up = w.state(name, MonitorState::Up).await;
        let status = up.status.expect("status");
        assert_eq!(status.status_code, Some(200), "{name}");
        assert!(
            status.last_run_at.is_some() && status.response_time.is_some(),
            "{name}"
        );
        assert_eq!(status.consecutive_failures, 0, "{name}");
    }
    let down = w.state("wrong", MonitorState::Down).await;
    let status = down.status.expect("status");
    assert_eq!(status.status_code, Some(401));
    assert!(status.consecutive_failures >= 1);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AssertionFailed")
    );
    w.assert_no_leak(&[&password, &wrong, &token, &archive_password, seed])
        .await;
}

/// Answers with every header and the body it got.
fn echo(seen: &Seen) -> Reply {
    let mut body = format!("{} {}\n", seen.method, seen.path);
    for (name, value) in &seen.headers {
        body.push_str(&format!("{name}: {value}\n"));
    }
    body.push_str(&String::from_utf8_lossy(&seen.body));
    Reply::Respond {
        status: 500,
        headers: vec![("x-echo".into(), "1".into())],
        body: body.into_bytes(),
    }
}

#[tokio::test]
async fn an_echo_server_gets_every_secret_and_no_status_event_or_log_line_holds_one() {
    let w = World::new("run-echo").await;
    let password = support::secret("run-echo Pa55+/=&\"%");
    let token = support::secret("run-echo-token");
    let server = https(handler(echo)).await;
    w.item(
        json!({"metadata": {"name": "login"}, "spec": {"type": "CredentialSet",
        "section": "checkout", "allowedHosts": ["shop.test"],
        "credentialSet": {"username": "bot", "password": password}}}),
    )
    .await;
    w.item(
        json!({"metadata": {"name": "token"}, "spec": {"type": "Secret",
        "section": "checkout", "allowedHosts": ["shop.test"], "secret": {"value": token}}}),
    )
    .await;
    let spec = json!({
        "url": format!("{}?key={{{{@VaultItem.token.Value}}}}", server.url("https", "shop.test", "/echo")),
        "method": "POST",
        "auth": {"basic": {"credentialSet": "login"}},
        "headers": [{"name": "X-Api-Key", "value": "{{@VaultItem.token.Value}}"}],
        "body": "{\"password\": \"{{@VaultItem.login.Password}}\"}",
    });
    w.monitor("echo", spec.clone()).await;
    w.state("echo", MonitorState::Down).await;
    assert!(
        server
            .seen()
            .iter()
            .any(|s| s.header("x-api-key") == Some(token.as_str())),
        "the secret did reach its host"
    );

    // Test Now of the same spec: its status carries the (scrubbed) start of the body.
    let runs: Api<MonitorRun> = w.api();
    let mut inline = spec;
    inline["tls"] = json!({"caCertificate": "test-ca"});
    let run: MonitorRun = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
        "metadata": {"name": "echo-now"}, "spec": {"monitor": inline},
    }))
    .expect("run");
    runs.create(&PostParams::default(), &run)
        .await
        .expect("create the run");
    let finished = eventually("the run to finish", || async {
        let run = runs.get("echo-now").await.ok()?;
        run.status.as_ref()?.phase.filter(|p| p.is_finished())?;
        Some(run)
    })
    .await;
    let result = finished.status.and_then(|s| s.result).expect("result");
    assert_eq!(result.status_code, Some(500));
    let excerpt = result.body_excerpt.expect("a body excerpt");
    assert!(excerpt.contains("x-api-key: *****"), "{excerpt}");
    w.assert_no_leak(&[&password, &token]).await;
}

#[tokio::test]
async fn a_redirect_to_a_host_no_item_allows_sends_that_host_nothing() {
    let w = World::new("run-redirect").await;
    let password = support::secret("run-redirect-Pa55");
    let token = support::secret("run-redirect-token");
    let evil = https(handler(|_| ok("thanks"))).await;
    let to_evil = evil.url("https", "evil.test", "/collect");
    let shop = https(handler(move |_| redirect(302, to_evil.clone()))).await;
    // A plain-http server on an allowed name: an https→http hop drops every secret.
    let plain = http(handler(echo)).await;
    let to_plain = plain.url("http", "shop.test", "/plain");
    let downgrade = https(handler(move |_| redirect(302, to_plain.clone()))).await;
    w.item(
        json!({"metadata": {"name": "login"}, "spec": {"type": "CredentialSet",
        "section": "checkout", "allowedHosts": ["shop.test"],
        "credentialSet": {"username": "bot", "password": password}}}),
    )
    .await;
    w.item(
        json!({"metadata": {"name": "token"}, "spec": {"type": "Secret",
        "section": "checkout", "allowedHosts": ["shop.test"], "secret": {"value": token}}}),
    )
    .await;
    w.monitor(
        "redirected",
        json!({"url": shop.url("https", "shop.test", "/login"),
        "followRedirects": true, "auth": {"basic": {"credentialSet": "login"}},
        "headers": [{"name": "X-Api-Key", "value": "{{@VaultItem.token.Value}}"}]}),
    )
    .await;
    w.monitor(
        "downgraded",
        json!({"url": downgrade.url("https", "shop.test", "/login"),
        "followRedirects": true,
        "headers": [{"name": "X-Api-Key", "value": "{{@VaultItem.token.Value}}"}]}),
    )
    .await;

    let blocked = w.state("redirected", MonitorState::Down).await;
    let status = blocked.status.expect("status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "RedirectBlocked");
    assert!(status.message.unwrap_or_default().contains("evil.test"));
    assert_eq!(
        evil.connections(),
        0,
        "nothing at all reached the other host"
    );
    assert!(shop.connections() >= 1);

    eventually("the downgraded chain to reach the plain server", || async {
        (!plain.seen().is_empty()).then_some(())
    })
    .await;
    for seen in plain.seen() {
        let text = format!("{seen:?}");
        for form in forms(&token).iter().chain(forms(&password).iter()) {
            assert!(!text.contains(form), "a secret crossed https→http: {text}");
        }
        assert!(seen.header("x-api-key").is_none(), "{text}");
    }
    w.assert_no_leak(&[&password, &token]).await;
}

#[tokio::test]
async fn an_item_not_allowed_for_the_url_host_sends_no_request() {
    let w = World::new("run-host").await;
    let token = support::secret("run-host-token");
    let server = https(handler(|_| ok("hello"))).await;
    w.item(
        json!({"metadata": {"name": "token"}, "spec": {"type": "Secret",
        "section": "checkout", "allowedHosts": ["api.test"], "secret": {"value": token}}}),
    )
    .await;
    w.monitor(
        "elsewhere",
        json!({"url": server.url("https", "shop.test", "/"),
        "auth": {"bearer": {"secret": "token"}}}),
    )
    .await;
    let down = w.state("elsewhere", MonitorState::Down).await;
    let ready = down
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "HostNotAllowed");
    assert_eq!(server.connections(), 0);
    w.assert_no_leak(&[&token]).await;
}

#[tokio::test]
async fn a_monitor_written_past_the_webhook_sends_no_request_until_it_is_applied_again() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("run-bypass").await;
    let server = https(handler(|_| ok("hello"))).await;
    // Written before monivault's webhooks exist: no stamp.
    let monitors: Api<Monitor> = Api::namespaced(admin.clone(), &ns);
    let bypassed: Monitor = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "bypassed"},
        "spec": {"url": server.url("https", "shop.test", "/"), "interval": "10s",
                 "timeout": "5s", "tls": {"caCertificate": "test-ca"},
                 "auth": {"bearer": {"secret": "token"}}},
    }))
    .expect("monitor");
    monitors
        .create(&PostParams::default(), &bypassed)
        .await
        .expect("the API server stores it");
    let store_ns = c.temp_namespace("run-bypass-store").await;
    let op = Operator::start_with_webhooks(c, &store_ns, &ns);
    let w = World::around(c, ns, op, admin).await;
    let token = support::secret("run-bypass-token");
    w.item(
        json!({"metadata": {"name": "token"}, "spec": {"type": "Secret",
        "section": "checkout", "allowedHosts": ["shop.test"], "secret": {"value": token}}}),
    )
    .await;

    let refused = w.state("bypassed", MonitorState::NotAuthorized).await;
    let message = refused.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("apply it again"), "{message}");
    // Two more intervals: still nothing sent.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(server.connections(), 0, "no request without a stamp");

    // Someone allowed applies it again: it is stamped, and runs.
    monitors
        .patch(
            "bypassed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"timeout": "6s"}})),
        )
        .await
        .expect("the admin re-applies it");
    w.state("bypassed", MonitorState::Up).await;
    assert!(server.connections() >= 1);
    let events: Vec<Event> = w
        .api()
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("NotAuthorized")),
        "a NotAuthorized Event"
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("VaultItemsUsed")),
        "a VaultItemsUsed Event when items first go out under the new stamp"
    );
    w.assert_no_leak(&[&token]).await;
}

/// alice may edit monivault objects and use the items `token` and `test-ca`.
async fn grant_alice(w: &World) {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let role: Role = Role {
        metadata: kube::api::ObjectMeta {
            name: Some("alice".into()),
            ..Default::default()
        },
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["monivault.io".into()]),
                resources: Some(vec!["monitors".into(), "monitorruns".into()]),
                verbs: vec!["get".into(), "list".into(), "create".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec!["monivault.io".into()]),
                resources: Some(vec!["vaultitems".into()]),
                resource_names: Some(vec!["token".into(), "test-ca".into()]),
                verbs: vec!["use".into()],
                ..Default::default()
            },
        ]),
    };
    w.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("alice".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "alice".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            name: "alice".into(),
            namespace: None,
        }]),
    };
    w.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
}

#[tokio::test]
async fn test_now_by_an_allowed_user_returns_a_result() {
    let w = World::new("run-now").await;
    let token = support::secret("run-now-token");
    let server = https(handler(|_| ok("fine"))).await;
    w.item(
        json!({"metadata": {"name": "token"}, "spec": {"type": "Secret",
        "section": "checkout", "allowedHosts": ["shop.test"], "secret": {"value": token}}}),
    )
    .await;
    w.monitor(
        "shop",
        json!({"url": server.url("https", "shop.test", "/"), "paused": true,
        "auth": {"bearer": {"secret": "token"}}}),
    )
    .await;
    w.state("shop", MonitorState::Paused).await;
    assert_eq!(
        server.connections(),
        0,
        "a paused monitor runs nothing on schedule"
    );

    // alice may use the item and edit monitors: her Test Now runs, paused or not.
    grant_alice(&w).await;
    let alice: Api<MonitorRun> = Api::namespaced(w.c.user("alice", &[]).await, &w.ns);
    let run: MonitorRun = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
        "metadata": {"generateName": "shop-now-"}, "spec": {"monitorRef": {"name": "shop"}},
    }))
    .expect("run");
    let created = alice
        .create(&PostParams::default(), &run)
        .await
        .expect("alice may run it");
    let name = created.name_any();
    let runs: Api<MonitorRun> = w.api();
    let finished = eventually("the run to succeed", || async {
        let run = runs.get(&name).await.ok()?;
        (run.status.as_ref()?.phase == Some(RunPhase::Succeeded)).then_some(run)
    })
    .await;
    let status = finished.status.expect("status");
    let result = status.result.expect("result");
    assert!(result.passed);
    assert_eq!(result.status_code, Some(200));
    assert!(result.response_time.is_some());
    assert!(status.started_at.is_some() && status.finished_at.is_some());
    assert_eq!(server.connections(), 1, "one run, one request");
    w.assert_no_leak(&[&token]).await;
}

#[tokio::test]
async fn a_follower_resumes_the_schedule_when_the_leader_dies() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("run-failover").await;
    let store_ns = c.temp_namespace("run-failover-store").await;
    let lease = [
        "--lease-duration-seconds",
        "4",
        "--lease-renew-seconds",
        "1",
    ];
    let mut leader_args = vec!["--instance", "first"];
    leader_args.extend(lease);
    let first = Operator::start_with_webhooks_and(c, &store_ns, &ns, &leader_args);
    let w = World::around(c, ns.clone(), first, admin.clone()).await;
    let token = support::secret("run-failover-token");
    w.item(
        json!({"metadata": {"name": "token"}, "spec": {"type": "Secret",
        "section": "checkout", "allowedHosts": ["shop.test"], "secret": {"value": token}}}),
    )
    .await;
    let server = https(handler(|_| ok("up"))).await;
    w.monitor(
        "shop",
        json!({"url": server.url("https", "shop.test", "/"),
        "auth": {"bearer": {"secret": "token"}}}),
    )
    .await;
    w.state("shop", MonitorState::Up).await;

    let mut follower_args = vec!["--instance", "second"];
    follower_args.extend(lease);
    let _second = Operator::start_with(c, &store_ns, &ns, &follower_args);
    let mut w = w;
    w.op.kill();
    let before = server.connections();
    // The lease lapses within 4 s and the next instant of a 10 s schedule follows.
    eventually("the follower to run the monitor", || async {
        (server.connections() > before).then_some(())
    })
    .await;
    let out = c.kubectl(&[
        "get",
        "lease",
        "-n",
        &store_ns,
        "-o",
        "jsonpath={.items[*].spec.holderIdentity}",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("second"),
        "{}",
        stderr(&out)
    );
}
