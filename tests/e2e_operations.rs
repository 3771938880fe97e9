//! Operations on the real control plane: one leader among replicas (a Lease), takeover
//! when the leader dies, exit when the lease is lost, and the operations endpoints
//! (`/healthz`, `/readyz`, `/metrics`) with metrics that hold no secret.

mod support;

use std::net::SocketAddr;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use monivault::api::vault_item::VaultItem;
use monivault::controller::leader::LEASE_NAME;
use monivault::crypto::{SealBinding, SealingPublicKey, seal};
use support::{
    Operator, cluster, credential_set, eventually, http_get, ready_condition, section_public_key,
};

/// A replica named `instance`, with a lease short enough for a test to see it change
/// hands: 3 s, renewed every second.
fn replica(store_ns: &str, ns: &str, instance: &str) -> Operator {
    Operator::start_with(
        cluster(),
        store_ns,
        ns,
        &[
            "--instance",
            instance,
            "--lease-duration-seconds",
            "3",
            "--lease-renew-seconds",
            "1",
        ],
    )
}

async fn lease_holder(admin: &Client, store_ns: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), store_ns);
    leases
        .get_opt(LEASE_NAME)
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn wait_for_holder(admin: &Client, store_ns: &str, instance: &str) {
    eventually(&format!("{instance} to hold the lease"), || async {
        (lease_holder(admin, store_ns).await.as_deref() == Some(instance)).then_some(())
    })
    .await;
}

async fn scrape(addr: SocketAddr) -> String {
    eventually("the metrics", || async {
        match http_get(addr, "/metrics").await? {
            (200, body) => Some(body),
            _ => None,
        }
    })
    .await
}

/// The value of one series (`name{labels}` exactly as exposed), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

async fn wait_for_sample(addr: SocketAddr, series: &str, want: impl Fn(f64) -> bool) -> f64 {
    eventually(&format!("{series} as expected"), || async {
        let value = sample(&scrape(addr).await, series)?;
        want(value).then_some(value)
    })
    .await
}

async fn sealed_password(key: &SealingPublicKey, ns: &str, item: &str, plaintext: &str) -> String {
    let binding = SealBinding {
        namespace: ns,
        section: "checkout",
        item_type: "CredentialSet",
        item,
        field: "password",
    };
    seal(key, &binding, plaintext.as_bytes()).expect("seal")
}

const ITEM_RECONCILES: &str = "monivault_reconciles_total{kind=\"VaultItem\"}";
const SECTION_RECONCILES: &str = "monivault_reconciles_total{kind=\"VaultSection\"}";

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_follower_takes_over_when_it_dies() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ops-leader").await;
    let store_ns = c.temp_namespace("ops-store").await;

    // The first replica takes the free lease; the second finds it held.
    let mut alpha = replica(&store_ns, &ns, "replica-alpha");
    wait_for_holder(&admin, &store_ns, "replica-alpha").await;
    let mut beta = replica(&store_ns, &ns, "replica-beta");
    let (alpha_ops, beta_ops) = (alpha.ops_addr().await, beta.ops_addr().await);
    // Followers are ready too: they will serve the webhook.
    eventually("the follower to be ready", || async {
        (http_get(beta_ops, "/readyz").await?.0 == 200).then_some(())
    })
    .await;

    let public_key = section_public_key(&admin, &ns).await;
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    let first = sealed_password(
        &public_key,
        &ns,
        "first",
        &support::secret("leader-plaintext"),
    )
    .await;
    items
        .create(&PostParams::default(), &credential_set("first", &first))
        .await
        .expect("create item");
    ready_condition(&items, "first", "True").await;

    wait_for_sample(alpha_ops, ITEM_RECONCILES, |n| n >= 1.0).await;
    wait_for_sample(alpha_ops, "monivault_is_leader", |n| n == 1.0).await;
    let beta_metrics = scrape(beta_ops).await;
    assert_eq!(
        sample(&beta_metrics, ITEM_RECONCILES),
        Some(0.0),
        "{beta_metrics}"
    );
    assert_eq!(
        sample(&beta_metrics, SECTION_RECONCILES),
        Some(0.0),
        "{beta_metrics}"
    );
    assert_eq!(sample(&beta_metrics, "monivault_is_leader"), Some(0.0));
    assert!(
        !beta_metrics.contains("monivault_items"),
        "only the leader counts items"
    );
    assert_eq!(
        lease_holder(&admin, &store_ns).await.as_deref(),
        Some("replica-alpha")
    );

    // SIGKILL: alpha cannot release the lease; beta takes it once it expires.
    alpha.kill();
    wait_for_holder(&admin, &store_ns, "replica-beta").await;
    wait_for_sample(beta_ops, "monivault_is_leader", |n| n == 1.0).await;
    let second = sealed_password(
        &public_key,
        &ns,
        "second",
        &support::secret("takeover-plaintext"),
    )
    .await;
    items
        .create(&PostParams::default(), &credential_set("second", &second))
        .await
        .expect("create item");
    ready_condition(&items, "second", "True").await;
    wait_for_sample(beta_ops, ITEM_RECONCILES, |n| n >= 1.0).await;
    assert!(beta.is_running(), "the new leader died:\n{}", beta.stderr());
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_and_metrics_hold_no_secret() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ops-endpoints").await;
    let store_ns = c.temp_namespace("ops-store").await;
    // Key gauges are refreshed by the rotation check: check every 2 s here, so the new
    // environment shows within the wait.
    let mut operator = Operator::start_with(
        c,
        &store_ns,
        &ns,
        &[
            "--instance",
            "replica-solo",
            "--rotation-check-interval",
            "2s",
        ],
    );
    let ops = operator.ops_addr().await;

    assert_eq!(http_get(ops, "/healthz").await.map(|r| r.0), Some(200));
    eventually("readiness", || async {
        (http_get(ops, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(http_get(ops, "/nothing-here").await.map(|r| r.0), Some(404));

    let public_key = section_public_key(&admin, &ns).await;
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    let plaintext: &str = &support::secret("metrics-plaintext");
    let sealed = sealed_password(&public_key, &ns, "shop-login", plaintext).await;
    items
        .create(
            &PostParams::default(),
            &credential_set("shop-login", &sealed),
        )
        .await
        .expect("create item");
    // Sealed for another item: it stays not Ready.
    let misplaced = sealed_password(&public_key, &ns, "elsewhere", plaintext).await;
    items
        .create(
            &PostParams::default(),
            &credential_set("misplaced", &misplaced),
        )
        .await
        .expect("create item");
    ready_condition(&items, "shop-login", "True").await;
    ready_condition(&items, "misplaced", "False").await;

    wait_for_sample(ops, "monivault_items{state=\"Ready\"}", |n| n == 1.0).await;
    wait_for_sample(ops, "monivault_items{state=\"NotReady\"}", |n| n == 1.0).await;
    // One environment: one data key and one sealing key.
    wait_for_sample(ops, "monivault_key_versions_in_use{kind=\"data\"}", |n| {
        n == 1.0
    })
    .await;
    wait_for_sample(
        ops,
        "monivault_key_versions_in_use{kind=\"sealing\"}",
        |n| n == 1.0,
    )
    .await;
    let metrics = scrape(ops).await;
    for family in [
        "# TYPE monivault_reconciles counter",
        "# TYPE monivault_items gauge",
        "# TYPE monivault_ingests counter",
        "# TYPE monivault_is_leader gauge",
        "# TYPE monivault_key_versions_in_use gauge",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    assert!(
        sample(&metrics, ITEM_RECONCILES).is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, SECTION_RECONCILES).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "monivault_ingests_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "monivault_is_leader"), Some(1.0));

    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
    for secret in [plaintext, b64.as_str(), sealed.as_str(), misplaced.as_str()] {
        assert!(!metrics.contains(secret), "a secret is in the metrics");
    }
    // Item names are not labels either: cardinality stays bounded.
    assert!(!metrics.contains("shop-login"), "{metrics}");
    let logs = operator.stderr();
    assert!(
        !logs.contains(plaintext) && !logs.contains(&b64),
        "a secret is in the logs"
    );
    assert!(operator.is_running(), "the operator died:\n{logs}");
}

#[tokio::test]
async fn a_replica_that_loses_its_lease_exits() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ops-lost").await;
    let store_ns = c.temp_namespace("ops-store").await;
    let mut operator = replica(&store_ns, &ns, "replica-victim");
    wait_for_holder(&admin, &store_ns, "replica-victim").await;
    // Steal it only once the replica knows it holds it: a lease taken away mid-acquisition
    // was never held, and its loser rightly stays a follower.
    wait_for_sample(operator.ops_addr().await, "monivault_is_leader", |n| {
        n == 1.0
    })
    .await;

    // The admin hands the lease to someone else, for an hour.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &store_ns);
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let steal = serde_json::json!({
        "spec": {
            "holderIdentity": "replica-thief",
            "leaseDurationSeconds": 3600,
            "acquireTime": now,
            "renewTime": now,
        }
    });
    leases
        .patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&steal))
        .await
        .expect("steal the lease");

    let (status, stderr) = operator.exited().await;
    assert!(!status.success(), "exited with {status}:\n{stderr}");
    assert!(stderr.contains("lost the leader Lease"), "{stderr}");
    // It did not take the lease back on its way out.
    assert_eq!(
        lease_holder(&admin, &store_ns).await.as_deref(),
        Some("replica-thief")
    );
}

#[tokio::test]
async fn a_stopped_leader_releases_its_lease_and_exits_cleanly() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ops-stop").await;
    let store_ns = c.temp_namespace("ops-store").await;
    let mut leader = replica(&store_ns, &ns, "replica-stopping");
    wait_for_holder(&admin, &store_ns, "replica-stopping").await;
    // The controller is at work (a signal before its caches are ready would hit
    // kube-runtime's wait for them).
    section_public_key(&admin, &ns).await;

    // SIGTERM, as Kubernetes sends on a rollout.
    let pid = leader.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let (status, stderr) = leader.exited().await;
    assert!(status.success(), "exited with {status}:\n{stderr}");
    assert!(stderr.contains("left the leader election"), "{stderr}");
    assert_eq!(lease_holder(&admin, &store_ns).await, None);
}

/// A kubeconfig that acts as `user` (by impersonation, from the admin's credentials).
fn impersonating_kubeconfig(c: &support::Cluster, user: &str, path: &std::path::Path) {
    let text = std::fs::read_to_string(c.var("KUBECONFIG")).expect("read the kubeconfig");
    let mut config: serde_json::Value = serde_saphyr::from_str(&text).expect("kubeconfig YAML");
    for entry in config["users"].as_array_mut().expect("users") {
        entry["user"]["as"] = serde_json::Value::from(user);
    }
    std::fs::write(path, serde_json::to_vec(&config).expect("json")).expect("write");
}

/// An operator that may do everything it needs but list Monitors (the user `user`, by
/// impersonation): its monitor caches never fill until `grant_monitors` gives it the
/// rest. Returns the operator and the kubeconfig's directory, which must outlive it.
fn operator_that_cannot_list_monitors(
    c: &support::Cluster,
    user: &str,
    store_ns: &str,
    ns: &str,
) -> (Operator, tempfile::TempDir) {
    let rules = r#"[
        {"apiGroups": ["", "coordination.k8s.io", "events.k8s.io", "authorization.k8s.io",
                       "admissionregistration.k8s.io"],
         "resources": ["*"], "verbs": ["*"]},
        {"apiGroups": ["monivault.io"],
         "resources": ["vaultitems", "vaultitems/status", "vaultitems/finalizers",
                       "vaultsections", "vaultsections/status",
                       "monitorruns", "monitorruns/status"],
         "verbs": ["*"]}
    ]"#;
    cluster_role_for(c, user, user, rules);
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("stuck.kubeconfig");
    impersonating_kubeconfig(c, user, &kubeconfig);
    let operator = Operator::spawn(
        &[
            "run",
            "--namespace",
            store_ns,
            "--watch-namespace",
            ns,
            "--metrics-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
            "--instance",
            "replica-stuck",
            "--shutdown-timeout",
            "3s",
        ],
        kubeconfig.to_str().expect("utf-8"),
        &[],
    );
    (operator, dir)
}

/// The rest: listing and watching Monitors.
fn grant_monitors(c: &support::Cluster, user: &str) {
    let rules = r#"[{"apiGroups": ["monivault.io"], "resources": ["monitors", "monitors/status"],
                     "verbs": ["*"]}]"#;
    cluster_role_for(c, &format!("{user}-monitors"), user, rules);
}

/// A ClusterRole `name` with `rules` (JSON), bound to `user`.
fn cluster_role_for(c: &support::Cluster, name: &str, user: &str, rules: &str) {
    let role = format!(
        r#"{{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {{"name": "{name}"}}, "rules": {rules}}}"#
    );
    let binding = format!(
        r#"{{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {{"name": "{name}"}},
            "roleRef": {{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "{name}"}},
            "subjects": [{{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "{user}"}}]}}"#
    );
    for object in [&role, &binding] {
        let out = c.kubectl_stdin(&["apply", "-f", "-"], object);
        assert!(out.status.success(), "{}", support::stderr(&out));
    }
}

#[tokio::test]
async fn sigterm_ends_the_operator_in_bounded_time_even_when_a_cache_never_fills() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ops-stuck").await;
    let store_ns = c.temp_namespace("ops-stuck-store").await;
    // kube-runtime's graceful shutdown waits for caches that never fill.
    let user = support::fresh("stuck-operator");
    let (mut operator, _dir) = operator_that_cannot_list_monitors(c, &user, &store_ns, &ns);
    wait_for_holder(&admin, &store_ns, "replica-stuck").await;
    eventually("the monitor cache to be refused", || async {
        operator.stderr().contains("monitors").then_some(())
    })
    .await;

    let pid = operator.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    // `exited` gives up after 30 s: far beyond the 3 s bound, and a hang fails here.
    let (status, stderr) = operator.exited().await;
    assert!(
        status.success() || stderr.contains("shutdown did not finish in time"),
        "exited with {status} for another reason:\n{stderr}"
    );
    let _ = c.kubectl(&["delete", "clusterrolebinding", &user, "--ignore-not-found"]);
    let _ = c.kubectl(&["delete", "clusterrole", &user, "--ignore-not-found"]);
}

/// The reconcile that hung in two demo re-runs: an item's reconcile waits for the monitor
/// cache's first list (usedBy comes from it). With that list failing on purpose, the
/// reconcile gives up after its bound and says so, and once the list works the item
/// becomes Ready: nothing waits forever.
#[tokio::test]
async fn an_item_waits_for_a_failing_monitor_list_only_for_a_bound_and_recovers() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ops-nolist").await;
    let store_ns = c.temp_namespace("ops-nolist-store").await;
    let user = support::fresh("nolist-operator");
    let (operator, _dir) = operator_that_cannot_list_monitors(c, &user, &store_ns, &ns);
    wait_for_holder(&admin, &store_ns, "replica-stuck").await;

    let public_key = section_public_key(&admin, &ns).await;
    let plaintext = support::secret("nolist-plaintext");
    let sealed = sealed_password(&public_key, &ns, "shop-login", &plaintext).await;
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(
            &PostParams::default(),
            &credential_set("shop-login", &sealed),
        )
        .await
        .expect("create the item");
    let gave_up = "the monitor cache has not finished its first list after 20s; retrying";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !operator.stderr().contains(gave_up) {
        assert!(
            std::time::Instant::now() < deadline,
            "the reconcile neither finished nor gave up; operator log:\n{}",
            operator.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let item = items.get("shop-login").await.expect("item");
    assert!(
        item.status.is_none_or(|s| s.secret.is_none()),
        "ingested without the monitor cache"
    );

    grant_monitors(c, &user);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let item = items.get("shop-login").await.expect("item");
        let ready = item.status.as_ref().and_then(|s| {
            monivault::api::condition::find_condition(
                &s.conditions,
                monivault::api::condition::READY,
            )
        });
        if ready.is_some_and(|r| r.status == "True") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the item never became Ready once Monitors could be listed; operator log:\n{}",
            operator.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    for name in [user.clone(), format!("{user}-monitors")] {
        let _ = c.kubectl(&[
            "delete",
            "clusterrolebinding,clusterrole",
            &name,
            "--ignore-not-found",
        ]);
    }
}
