//! `kubectl monivault` on the real control plane: the binary run through a link named
//! `kubectl-monivault`, and once found by the real kubectl on the PATH.
//!
//! Users are the admin's client certificate with impersonation (`as:` in a kubeconfig
//! context of their own, whose namespace is the test's), so the plugin reads them exactly
//! as kubectl would: KUBECONFIG, `--context`, and the context's namespace when `-n` is
//! left out.

mod support;

#[path = "runner_check/servers.rs"]
mod servers;

use std::path::PathBuf;
use std::process::Output;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt as _};
use monivault::api::{Monitor, MonitorRun, VaultItem};
use monivault::crypto::{SealBinding, SealingPublicKey, seal};
use serde_json::{Value, json};
use servers::{PKI, handler, https, ok, pem, status};
use support::{
    Cluster, Operator, cluster, credential_set, eventually, ready_condition, section_public_key,
    stderr, stdout,
};

/// The users of these tests: each gets a kubeconfig context that impersonates them.
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// A namespace with section `checkout`, behind an operator with its webhooks, and a
/// kubeconfig with a context per user (plus `admin`), all defaulting to that namespace.
struct World {
    c: &'static Cluster,
    ns: String,
    store_ns: String,
    admin: Client,
    op: Operator,
    dir: tempfile::TempDir,
    public_key: SealingPublicKey,
}

impl World {
    /// With the operator's webhooks in the path, or without (then items carry values
    /// sealed here, and one sealed for another item can be stored to fail at ingest).
    async fn new(prefix: &str, webhooks: bool) -> World {
        let c = cluster();
        let admin = c.admin().await;
        let ns = c.temp_namespace(prefix).await;
        let store_ns = c.temp_namespace(&format!("{prefix}-store")).await;
        let op = if webhooks {
            Operator::start_with_webhooks(c, &store_ns, &ns)
        } else {
            Operator::start(c, &store_ns, &ns)
        };
        let public_key = section_public_key(&admin, &ns).await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_monivault"),
            dir.path().join("kubectl-monivault"),
        )
        .expect("link kubectl-monivault to the binary");
        let world = World {
            c,
            ns,
            store_ns,
            admin,
            op,
            dir,
            public_key,
        };
        world.write_kubeconfig();
        world
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The admin kubeconfig, plus a context per user that impersonates them; every
    /// context's namespace is the test's. JSON, which is YAML too.
    fn write_kubeconfig(&self) {
        let text = std::fs::read_to_string(self.c.var("KUBECONFIG")).expect("admin kubeconfig");
        let mut config: Value = serde_saphyr::from_str(&text).expect("kubeconfig parses");
        let admin_user = config["users"][0]["user"].clone();
        let cluster = config["clusters"][0]["name"].clone();
        let mut users = vec![json!({"name": "admin", "user": admin_user})];
        let mut contexts = vec![json!({"name": "admin",
            "context": {"cluster": cluster, "user": "admin", "namespace": self.ns}})];
        for user in USERS {
            let mut info = admin_user.clone();
            info["as"] = json!(user);
            users.push(json!({"name": user, "user": info}));
            contexts.push(json!({"name": user,
                "context": {"cluster": cluster, "user": user, "namespace": self.ns}}));
        }
        config["users"] = json!(users);
        config["contexts"] = json!(contexts);
        config["current-context"] = json!("admin");
        std::fs::write(
            self.kubeconfig(),
            serde_json::to_string(&config).expect("json"),
        )
        .expect("write kubeconfig");
    }

    /// `kubectl-monivault ARGS` (the link), with this world's kubeconfig.
    async fn plugin(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(self.dir.path().join("kubectl-monivault"))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("RUST_LOG", "warn")
            .env_remove("MONIVAULT_NAMESPACE")
            .output()
            .await
            .expect("run kubectl-monivault")
    }

    /// `kubectl monivault ARGS` through the real kubectl, which finds the link on the PATH.
    async fn kubectl_monivault(&self, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        tokio::process::Command::new(self.c.var("MONIVAULT_KUBECTL"))
            .arg("monivault")
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", self.kubeconfig())
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("run kubectl monivault")
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Creates an item as the admin once the webhook admits it (it seals plaintext).
    async fn item(&self, mut object: Value) -> String {
        object["apiVersion"] = json!("monivault.io/v1alpha1");
        object["kind"] = json!("VaultItem");
        let item: VaultItem = serde_json::from_value(object).expect("item");
        let items: Api<VaultItem> = self.api();
        eventually("the webhook to admit an item", || {
            let (items, item) = (items.clone(), item.clone());
            async move { items.create(&PostParams::default(), &item).await.ok() }
        })
        .await;
        item.name_any()
    }

    /// A Role for `user`: read items and monitors, run monitors, and `use` on the given
    /// resource names (`vaultitems` or `vaultsections`), if any.
    async fn grant(&self, user: &str, uses: Option<(&str, &[&str])>) {
        let mut rules = vec![PolicyRule {
            api_groups: Some(vec!["monivault.io".into()]),
            resources: Some(vec![
                "vaultitems".into(),
                "monitors".into(),
                "monitorruns".into(),
            ]),
            verbs: vec!["get".into(), "list".into(), "create".into()],
            ..Default::default()
        }];
        if let Some((resource, names)) = uses {
            rules.push(PolicyRule {
                api_groups: Some(vec!["monivault.io".into()]),
                resources: Some(vec![resource.into()]),
                resource_names: Some(names.iter().map(|n| n.to_string()).collect()),
                verbs: vec!["use".into()],
                ..Default::default()
            });
        }
        let meta = || ObjectMeta {
            name: Some(user.into()),
            ..Default::default()
        };
        self.api::<Role>()
            .create(
                &PostParams::default(),
                &Role {
                    metadata: meta(),
                    rules: Some(rules),
                },
            )
            .await
            .expect("role");
        self.api::<RoleBinding>()
            .create(
                &PostParams::default(),
                &RoleBinding {
                    metadata: meta(),
                    role_ref: RoleRef {
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        kind: "Role".into(),
                        name: user.into(),
                    },
                    subjects: Some(vec![Subject {
                        kind: "User".into(),
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        name: user.into(),
                        namespace: None,
                    }]),
                },
            )
            .await
            .expect("binding");
    }

    /// alice: use on section checkout; bob: use on `item` alone; carol: no use.
    async fn grant_everyone(&self, item: &str) {
        self.grant("alice", Some(("vaultsections", &["checkout"])))
            .await;
        self.grant("bob", Some(("vaultitems", &[item]))).await;
        self.grant("carol", None).await;
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Parses `-o json` output.
fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(out), stderr(out)))
}

#[tokio::test]
async fn can_use_answers_through_the_section_or_the_item_and_status_shows_the_keys() {
    let w = World::new("plugin-can", false).await;
    let password = support::secret("plugin-password");
    let sealed_for = |item: &str| {
        let binding = SealBinding {
            namespace: &w.ns,
            section: "checkout",
            item_type: "CredentialSet",
            item,
            field: "password",
        };
        seal(&w.public_key, &binding, password.as_bytes()).expect("seal")
    };
    // `token` opens; `broken` carries a value sealed for another item, so it stays not
    // Ready (written past the webhook, which would refuse it).
    let items: Api<VaultItem> = w.api();
    for (name, sealed) in [
        ("token", sealed_for("token")),
        ("broken", sealed_for("someone-else")),
    ] {
        items
            .create(&PostParams::default(), &credential_set(name, &sealed))
            .await
            .expect("create the item");
    }
    ready_condition(&items, "token", "True").await;
    ready_condition(&items, "broken", "False").await;
    w.grant_everyone("token").await;

    // alice, through the section; the review is the webhook's SubjectAccessReview.
    let out = w
        .plugin(&["can-use", "token", "-n", &w.ns, "--as", "alice"])
        .await;
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(table.contains("alice"), "{table}");
    assert!(table.contains("yes"), "{table}");
    assert!(table.contains("vaultsections/checkout"), "{table}");

    // bob, through the item itself; machine-readable.
    let out = w
        .plugin(&["can-use", "token", "--as", "bob", "-o", "json"])
        .await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let answer = json_of(&out);
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["namespace"], json!(w.ns), "the context's namespace");
    assert_eq!(
        answer["through"],
        json!({"resource": "vaultitems", "name": "token"})
    );

    // carol may not: exit 1, and what to grant.
    let out = w
        .plugin(&["can-use", "token", "--as", "carol", "-o", "yaml"])
        .await;
    assert_eq!(code(&out), Some(1), "{}{}", stdout(&out), stderr(&out));
    let answer: Value = serde_saphyr::from_str(&stdout(&out)).expect("yaml");
    assert_eq!(answer["allowed"], false);
    assert!(answer.get("through").is_none(), "{answer}");
    assert!(
        stderr(&out).contains("vaultitems/token or vaultsections/checkout"),
        "{}",
        stderr(&out)
    );

    // Without --as: the caller (a SelfSubjectAccessReview), picked by --context.
    let out = w
        .plugin(&["can-use", "token", "--context", "alice", "-o", "json"])
        .await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(json_of(&out)["through"]["resource"], "vaultsections");
    let out = w.plugin(&["can-use", "token", "--context", "carol"]).await;
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));

    // No such item: exit 2, and what to do.
    let out = w
        .plugin(&["can-use", "no-such-item", "--as", "alice"])
        .await;
    assert_eq!(code(&out), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kubectl get vaultitems"),
        "{}",
        stderr(&out)
    );

    // Status: the key versions, and the item not Ready with its reason.
    let store = ["--operator-namespace", w.store_ns.as_str()];
    let mut args = vec!["status"];
    args.extend(store);
    let out = w.plugin(&args).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("ENVIRONMENT"), "{table}");
    assert!(table.contains(&w.ns), "{table}");
    assert!(table.contains("Items not Ready:"), "{table}");
    assert!(table.contains("broken"), "{table}");
    assert!(table.contains("SealedValueInvalid"), "{table}");
    assert!(!table.contains(&password), "no secret in the status");

    // Rotate the data key under the plugin's name; status sees the new version.
    let out = w
        .plugin(&[
            "rotate",
            "data-key",
            "--namespace",
            &w.store_ns,
            "--environment",
            &w.ns,
        ])
        .await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("data key version 2 is current"));
    let mut args = vec!["status", "-n", w.ns.as_str(), "-o", "json"];
    args.extend(store);
    let out = w.plugin(&args).await;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let status = json_of(&out);
    let env = &status["environments"][0];
    assert_eq!(env["namespace"], json!(w.ns));
    assert_eq!(env["dataKey"]["current"], 2);
    assert_eq!(env["sealingKey"]["current"], 1);
    assert!(
        env["dataKey"]["held"]
            .as_array()
            .is_some_and(|held| held.contains(&json!(2))),
        "{env}"
    );
    assert!(env["lastRotation"].is_string(), "{env}");
    assert!(env["reencryption"]["remaining"].is_u64(), "{env}");
    let not_ready = &env["itemsNotReady"];
    assert_eq!(not_ready.as_array().map(Vec::len), Some(1), "{env}");
    assert_eq!(not_ready[0]["name"], "broken");
    assert_eq!(not_ready[0]["reason"], "SealedValueInvalid");

    // A user without access to the store is told what it takes.
    let mut args = vec!["status", "--context", "carol"];
    args.extend(store);
    let out = w.plugin(&args).await;
    assert_eq!(code(&out), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!(
            "you need get on secrets in {}, which only operators have",
            w.store_ns
        )),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn test_now_through_kubectl_runs_for_a_user_with_use_and_is_refused_without() {
    let w = World::new("plugin-now", true).await;
    let token = support::secret("plugin-now-token");
    let fine = https(handler(|_| ok("fine"))).await;
    let broken = https(handler(|_| status(500))).await;
    w.item(
        json!({"metadata": {"name": "test-ca"}, "spec": {"type": "Certificate",
        "section": "checkout", "certificate": {"pem": pem(&PKI.ca)}}}),
    )
    .await;
    w.item(
        json!({"metadata": {"name": "token"}, "spec": {"type": "Secret",
        "section": "checkout", "allowedHosts": ["shop.test"], "secret": {"value": token}}}),
    )
    .await;
    let items: Api<VaultItem> = w.api();
    ready_condition(&items, "token", "True").await;
    let monitors: Api<Monitor> = w.api();
    for (name, server) in [("shop", &fine), ("shop-down", &broken)] {
        let monitor: Monitor = serde_json::from_value(json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
            "metadata": {"name": name},
            "spec": {"url": server.url("https", "shop.test", "/"), "paused": true,
                     "interval": "10s", "timeout": "5s",
                     "tls": {"caCertificate": "test-ca"},
                     "auth": {"bearer": {"secret": "token"}}},
        }))
        .expect("monitor");
        monitors
            .create(&PostParams::default(), &monitor)
            .await
            .expect("create the monitor");
    }
    w.grant_everyone("token").await;

    // carol lacks use: the webhook refuses her run, and she sees its message.
    let out = w
        .kubectl_monivault(&["test-now", "shop", "--context", "carol"])
        .await;
    assert_eq!(code(&out), Some(1), "{}{}", stdout(&out), stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains("may not use vault item(s)"), "{message}");
    assert!(message.contains("token"), "{message}");
    let runs: Api<MonitorRun> = w.api();
    assert!(
        runs.list(&Default::default())
            .await
            .expect("list runs")
            .items
            .is_empty(),
        "a refused run is not stored"
    );
    assert_eq!(fine.connections(), 0, "nothing was sent for carol");

    // alice may use the section: her run goes out and passes; kubectl found the plugin.
    let out = w
        .kubectl_monivault(&["test-now", "shop", "--context", "alice", "--timeout", "60s"])
        .await;
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("RUN"), "{table}");
    assert!(table.contains("Succeeded"), "{table}");
    assert!(table.contains("200"), "{table}");
    assert_eq!(fine.connections(), 1, "one run, one request");

    // A run that fails exits 1, with its (scrubbed) result as JSON.
    let out = w
        .plugin(&["test-now", "shop-down", "--context", "alice", "-o", "json"])
        .await;
    assert_eq!(code(&out), Some(1), "{}{}", stdout(&out), stderr(&out));
    let report = json_of(&out);
    assert_eq!(report["monitor"], "shop-down");
    assert_eq!(report["status"]["phase"], "Failed");
    assert_eq!(report["status"]["result"]["statusCode"], 500);
    assert_eq!(report["status"]["result"]["passed"], false);

    // No monitor of that name: exit 2, and what to do.
    let out = w.plugin(&["test-now", "nope", "--context", "alice"]).await;
    assert_eq!(code(&out), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("kubectl get monitors"),
        "{}",
        stderr(&out)
    );

    for out_text in [stdout(&out), stderr(&out), w.op.stderr()] {
        assert!(!out_text.contains(&token), "the token never shows");
    }
}
