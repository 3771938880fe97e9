//! The Helm chart on the real control plane, and the operator working with nothing but
//! the rights the chart gives its ServiceAccount.
//!
//! One scenario, in order, since the chart's cluster-scoped objects (the webhook
//! configurations `monivault`, the ClusterRoles) exist once per cluster:
//! 1. `helm template` is accepted by `kubectl apply --dry-run=server`, without a warning;
//! 2. `helm install` of an older chart (its CRDs carry a label the current chart dropped);
//! 3. `monivault run` outside the cluster, with the Deployment's own arguments and a token
//!    minted for the chart's ServiceAccount, reached through the `webhook.url` value: it
//!    takes the Lease, creates its Secrets, patches its caBundle, seals a plaintext,
//!    refuses mallory, rotates a data key and guards a delete, and no call is forbidden;
//! 4. `kubectl auth can-i --list` for the ServiceAccount equals the committed snapshot;
//! 5. `helm upgrade` to the current chart upgrades the CRDs and keeps the caBundle;
//! 6. `helm uninstall` keeps the CRDs and the vault items.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use monivault::api::Monitor;
use monivault::api::vault_item::VaultItem;
use monivault::api::vault_section::VaultSection;
use serde_json::{Value, json};
use support::{Cluster, Operator, cluster, eventually, stderr, stdout};

const RELEASE: &str = "monivault";
const SERVICE_ACCOUNT: &str = "monivault";
const CONFIGURATION: &str = "monivault";
/// The label the "older chart" puts on every CRD; the current chart has none.
const OLD_CHART_LABEL: &str = "monivault.io/e2e-old-chart";
/// What a refused API call leaves in the operator's log.
const FORBIDDEN_MARKS: [&str; 3] = ["forbidden", "Forbidden", "code: 403"];
const SNAPSHOT: &str = "tests/fixtures/chart/can-i.txt";
const BLESS_HINT: &str = "run `MONIVAULT_BLESS=1 cargo test --test e2e_chart` and review the diff";

fn root(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn helm(c: &Cluster, args: &[&str]) -> Output {
    let bin = root("target/tools/bin/helm");
    assert!(
        bin.exists(),
        "{} is missing: run tests/tools/build (tests/all does)",
        bin.display()
    );
    Command::new(bin)
        .args(args)
        .current_dir(root(""))
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        // Helm keeps caches and its registry config here; never the user's own.
        .env("HELM_CACHE_HOME", root("target/tools/helm/cache"))
        .env("HELM_CONFIG_HOME", root("target/tools/helm/config"))
        .env("HELM_DATA_HOME", root("target/tools/helm/data"))
        .output()
        .expect("run helm")
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// A free loopback port for the webhook server, which `webhook.url` must name up front.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The values of this test's release: the operator outside the cluster, acting on `app_ns`
/// only, its webhooks limited to `app_ns` on top of the chart's own exclusions.
fn values(app_ns: &str, port: u16) -> Vec<String> {
    vec![
        format!("webhook.url=https://127.0.0.1:{port}"),
        format!("watchNamespace={app_ns}"),
        "webhook.namespaceSelector.matchExpressions[0].key=kubernetes.io/metadata.name".to_owned(),
        "webhook.namespaceSelector.matchExpressions[0].operator=In".to_owned(),
        format!("webhook.namespaceSelector.matchExpressions[0].values[0]={app_ns}"),
        // An asked-for rotation starts at the next check: make that soon.
        "extraArgs[0]=--rotation-check-interval=1s".to_owned(),
    ]
}

fn set_args(values: &[String]) -> Vec<&str> {
    values.iter().flat_map(|v| ["--set", v.as_str()]).collect()
}

/// A copy of the chart whose CRD templates put [`OLD_CHART_LABEL`] on every CRD: the
/// "older release" that `helm upgrade` must bring up to date.
fn older_chart(dir: &Path) -> PathBuf {
    let copy = dir.join("monivault");
    let status = Command::new("cp")
        .arg("-r")
        .arg(root("charts/monivault"))
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let crds = copy.join("templates/crds");
    let mut changed = 0;
    for entry in std::fs::read_dir(&crds).expect("the chart's templates/crds") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read a CRD template");
        let marker = "\n  labels:\n";
        if let Some(at) = text.find(marker) {
            let mut text = text;
            text.insert_str(
                at + marker.len(),
                &format!("    {OLD_CHART_LABEL}: \"true\"\n"),
            );
            std::fs::write(&path, text).expect("write");
            changed += 1;
        }
    }
    assert_eq!(
        changed, 4,
        "every CRD template has a `labels:` block to extend"
    );
    copy
}

/// A kubeconfig that authenticates with `token` against the test's API server.
fn token_kubeconfig(c: &Cluster, token: &str, path: &Path) {
    let server = ok(
        "kubectl config view",
        c.kubectl(&[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]),
    );
    let ca = ok(
        "kubectl config view",
        c.kubectl(&[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ]),
    );
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "chart-sa", "user": {"token": token}}],
        "contexts": [{"name": "chart-sa", "context": {"cluster": "local", "user": "chart-sa"}}],
        "current-context": "chart-sa",
    });
    std::fs::write(path, serde_json::to_vec(&config).expect("json")).expect("write kubeconfig");
}

/// The operator container's arguments and environment from the rendered Deployment, with
/// the downward API's values filled in as the kubelet would.
fn deployment_command(manifest: &str, namespace: &str) -> (Vec<String>, Vec<(String, String)>) {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(manifest).expect("manifest is YAML");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else {
            match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => "monivault-e2e-0".to_owned(),
                Some("metadata.namespace") => namespace.to_owned(),
                other => panic!("env {name} comes from {other:?}, which this test cannot fill"),
            }
        };
        env.push((name, value));
    }
    let expand = |arg: &str| {
        env.iter().fold(arg.to_owned(), |arg, (k, v)| {
            arg.replace(&format!("$({k})"), v)
        })
    };
    let args = container["args"]
        .as_array()
        .expect("the container has args")
        .iter()
        .map(|a| expand(a.as_str().expect("string arg")))
        .collect();
    (args, env)
}

/// `--flag value` or `--flag=value` replaced, or added.
fn override_arg(args: &mut Vec<String>, flag: &str, value: &str) {
    let prefix = format!("{flag}=");
    if let Some(i) = args.iter().position(|a| a == flag) {
        args[i + 1] = value.to_owned();
    } else if let Some(i) = args.iter().position(|a| a.starts_with(&prefix)) {
        args[i] = format!("{prefix}{value}");
    } else {
        args.extend([flag.to_owned(), value.to_owned()]);
    }
}

fn can_i(c: &Cluster, ns: &str, args: &[&str]) -> bool {
    let sa = format!("system:serviceaccount:{ns}:{SERVICE_ACCOUNT}");
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.extend(["--as", &sa, "-n", ns]);
    let out = c.kubectl(&all);
    stdout(&out).trim() == "yes"
}

/// `kubectl auth can-i --list` for the ServiceAccount of the release in `ns`, acting in
/// `in_ns`, with the namespaces' names replaced so that the snapshot holds across runs.
fn rights_listing(c: &Cluster, ns: &str, app_ns: &str, in_ns: &str) -> String {
    let sa = format!("system:serviceaccount:{ns}:{SERVICE_ACCOUNT}");
    let out = ok(
        "kubectl auth can-i --list",
        c.kubectl(&["auth", "can-i", "--list", "--as", &sa, "-n", in_ns]),
    );
    out.replace(app_ns, "WATCH-NAMESPACE")
        .replace(ns, "RELEASE-NAMESPACE")
}

/// The operator run as the chart's ServiceAccount. If the test fails while it runs, the
/// calls it was forbidden are printed: a missing rule in the chart names itself.
struct ChartOperator(Operator);

impl Drop for ChartOperator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.0.stderr();
            let forbidden: Vec<_> = log
                .lines()
                .filter(|line| FORBIDDEN_MARKS.iter().any(|mark| line.contains(mark)))
                .collect();
            eprintln!(
                "the operator's forbidden calls ({}):\n{}",
                forbidden.len(),
                forbidden.join("\n")
            );
        }
    }
}

fn refused<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn grant(c: &Cluster, ns: &str, user: &str, cluster_role: &str) {
    let name = format!("{user}-{cluster_role}");
    ok(
        "grant",
        c.kubectl(&[
            "create",
            "rolebinding",
            &name,
            "-n",
            ns,
            "--clusterrole",
            cluster_role,
            "--user",
            user,
        ]),
    );
}

#[tokio::test]
async fn the_chart_installs_runs_with_least_privilege_upgrades_and_uninstalls() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("chart").await;
    let app_ns = c.temp_namespace("chart-app").await;
    let port = free_port();
    let values = values(&app_ns, port);
    let sets = set_args(&values);
    let scratch = tempfile::tempdir().expect("tempdir");

    // 1. What the chart renders, the API server accepts, without a warning.
    let mut template = vec!["template", RELEASE, "charts/monivault", "-n", &ns];
    template.extend(&sets);
    let rendered = ok("helm template", helm(c, &template));
    let dry_run = c.kubectl_stdin(
        &[
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &rendered,
    );
    let warnings = stderr(&dry_run);
    ok("kubectl apply --dry-run=server of the chart", dry_run);
    assert!(
        !warnings.contains("Warning"),
        "the API server warns about the chart:\n{warnings}"
    );

    // 2. Install an older chart. The CRDs already exist (the harness applied them): the
    // release takes them over, as a user's upgrade from a kubectl install would.
    let older = older_chart(scratch.path());
    let mut install = vec![
        "install",
        RELEASE,
        older.to_str().expect("utf-8 path"),
        "-n",
        &ns,
        "--take-ownership",
    ];
    install.extend(&sets);
    ok("helm install", helm(c, &install));
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let items_crd = crds.get("vaultitems.monivault.io").await.expect("the CRD");
    assert!(
        items_crd
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(OLD_CHART_LABEL),
        "the older chart's CRDs are installed"
    );

    // 3. The operator, as the chart's ServiceAccount.
    let token = ok(
        "kubectl create token",
        c.kubectl(&[
            "create",
            "token",
            SERVICE_ACCOUNT,
            "-n",
            &ns,
            "--duration",
            "2h",
        ]),
    );
    let kubeconfig = scratch.path().join("sa.kubeconfig");
    token_kubeconfig(c, token.trim(), &kubeconfig);
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path").to_owned();
    let manifest = ok(
        "helm get manifest",
        helm(c, &["get", "manifest", RELEASE, "-n", &ns]),
    );
    let (mut args, env) = deployment_command(&manifest, &ns);
    override_arg(&mut args, "--webhook-addr", &format!("127.0.0.1:{port}"));
    override_arg(&mut args, "--metrics-addr", "127.0.0.1:0");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let operator = ChartOperator(Operator::spawn(&args, &kubeconfig, &env));

    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    eventually("the operator to take the Lease", || async {
        let lease = leases.get("monivault-leader").await.ok()?;
        lease
            .spec?
            .holder_identity
            .filter(|h| h == "monivault-e2e-0")
    })
    .await;
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let ca_bundle = eventually("the operator to patch its caBundle", || async {
        let config = mutating.get(CONFIGURATION).await.ok()?;
        let webhooks = config.webhooks?;
        let bundles: Vec<_> = webhooks
            .iter()
            .map(|w| w.client_config.ca_bundle.clone())
            .collect();
        bundles
            .iter()
            .all(Option::is_some)
            .then(|| bundles[0].clone())
    })
    .await;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    eventually("the caBundle in the validating configuration", || async {
        let config = validating.get(CONFIGURATION).await.ok()?;
        config
            .webhooks?
            .iter()
            .all(|w| w.client_config.ca_bundle == ca_bundle)
            .then_some(())
    })
    .await;

    // A plaintext is sealed, and the item becomes Ready in the store the operator made.
    let sections: Api<VaultSection> = Api::namespaced(admin.clone(), &app_ns);
    let section: VaultSection = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
        "metadata": {"name": "checkout"}, "spec": {"description": "the shop"}
    }))
    .expect("section");
    sections
        .create(&PostParams::default(), &section)
        .await
        .expect("create the section");
    let password = support::secret("chart-password");
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &app_ns);
    let item: VaultItem = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "shop-login"},
        "spec": {
            "type": "CredentialSet", "section": "checkout",
            "allowedHosts": ["shop.example.com"],
            "credentialSet": {"username": "bot", "password": password},
        }
    }))
    .expect("item");
    // The API server picks the patched caBundle up from its informer a moment later.
    let created = eventually("the webhook to seal a plaintext item", || {
        let (items, item) = (items.clone(), item.clone());
        async move { items.create(&PostParams::default(), &item).await.ok() }
    })
    .await;
    let sealed = created
        .spec
        .sealed
        .as_ref()
        .and_then(|s| s.password.clone())
        .unwrap_or_default();
    assert!(
        sealed.starts_with("mv2.s."),
        "the webhook sealed the password"
    );
    let ready = support::ready_condition(&items, "shop-login", "True").await;
    let first_version = ready.status.and_then(|s| s.key_version);
    assert_eq!(first_version, Some(1));
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let stored = secrets
        .list(&ListParams::default())
        .await
        .expect("list the store");
    assert!(
        stored.items.len() >= 3,
        "root key, keyring and a record in the release namespace: {:?}",
        stored
            .items
            .iter()
            .map(|s| s.metadata.name.clone())
            .collect::<Vec<_>>()
    );

    // Mallory, with the chart's monivault-edit but no use, cannot steer a monitor that
    // carries the item; alice, with monivault-use too, can.
    grant(c, &app_ns, "mallory", "monivault-edit").await;
    grant(c, &app_ns, "alice", "monivault-edit").await;
    grant(c, &app_ns, "alice", "monivault-use").await;
    let monitor: Monitor = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "shop"},
        "spec": {
            "url": "https://shop.example.com/login", "interval": "5m", "paused": true,
            "auth": {"basic": {"credentialSet": "shop-login"}}
        }
    }))
    .expect("monitor");
    let as_mallory: Api<Monitor> = Api::namespaced(c.user("mallory", &[]).await, &app_ns);
    let (code, message) = refused(as_mallory.create(&PostParams::default(), &monitor).await);
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("shop-login"),
        "the refusal names the item: {message}"
    );
    let as_alice: Api<Monitor> = Api::namespaced(c.user("alice", &[]).await, &app_ns);
    as_alice
        .create(&PostParams::default(), &monitor)
        .await
        .expect("alice may create the monitor");

    // A data-key rotation, asked for with the same ServiceAccount's rights.
    let rotate = Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args([
            "rotate",
            "data-key",
            "--namespace",
            &ns,
            "--environment",
            &app_ns,
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("monivault rotate");
    ok("monivault rotate data-key as the ServiceAccount", rotate);
    let moved = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            if let Ok(item) = items.get("shop-login").await
                && item.status.and_then(|s| s.key_version) == Some(2)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        moved.is_ok(),
        "the item did not move to data key 2; the operator's log:\n{}",
        operator.0.stderr()
    );

    // The delete guard holds: the monitor still uses the item.
    let (code, message) = refused(items.delete("shop-login", &DeleteParams::default()).await);
    assert_eq!(code, 409, "{message}");
    assert!(
        message.contains("shop"),
        "the refusal names the monitor: {message}"
    );

    let log = operator.0.stderr();
    // Every refusal kube-rs logs says "forbidden" and carries "code: 403"; a bare "403"
    // would also match a port number.
    for forbidden in FORBIDDEN_MARKS {
        assert!(
            !log.contains(forbidden),
            "the operator met a call its ServiceAccount may not make ({forbidden}):\n{log}"
        );
    }
    assert!(
        !log.contains(&password),
        "the operator's log holds the plaintext"
    );

    // 4. The ServiceAccount's rights, exactly, and what it must never have.
    let listing = format!(
        "# in the release namespace\n{}\n# in the watched namespace\n{}\n# in any other namespace\n{}",
        rights_listing(c, &ns, &app_ns, &ns),
        rights_listing(c, &ns, &app_ns, &app_ns),
        rights_listing(c, &ns, &app_ns, "default"),
    );
    let snapshot = root(SNAPSHOT);
    if std::env::var_os("MONIVAULT_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(snapshot.parent().expect("parent")).expect("mkdir");
        std::fs::write(&snapshot, &listing).expect("write the snapshot");
    } else {
        let want = std::fs::read_to_string(&snapshot)
            .unwrap_or_else(|e| panic!("cannot read {SNAPSHOT} ({e}); {BLESS_HINT}"));
        assert!(
            want == listing,
            "the ServiceAccount's rights differ from {SNAPSHOT}; {BLESS_HINT}\n--- now:\n{listing}"
        );
    }
    for line in listing.lines().filter(|l| !l.starts_with('#')) {
        let verbs = line.rsplit_once('[').map(|(_, v)| v).unwrap_or_default();
        assert!(!verbs.contains('*'), "a wildcard verb: {line}");
    }
    assert!(
        !can_i(c, &app_ns, &["get", "secrets"]),
        "secrets of another namespace"
    );
    assert!(
        !can_i(c, &app_ns, &["list", "secrets"]),
        "secrets of another namespace"
    );
    assert!(
        !can_i(c, &ns, &["list", "secrets", "--all-namespaces"]),
        "secrets everywhere"
    );
    assert!(
        !can_i(
            c,
            &ns,
            &["patch", "mutatingwebhookconfigurations/someone-else"]
        ),
        "another webhook configuration"
    );
    assert!(
        !can_i(
            c,
            &ns,
            &["update", "validatingwebhookconfigurations/someone-else"]
        ),
        "another webhook configuration"
    );
    assert!(can_i(
        c,
        &ns,
        &["update", "mutatingwebhookconfigurations/monivault"]
    ));

    // 5. Upgrade to the current chart: the CRDs follow, the caBundle stays.
    drop(operator);
    let mut upgrade = vec!["upgrade", RELEASE, "charts/monivault", "-n", &ns];
    upgrade.extend(&sets);
    ok("helm upgrade", helm(c, &upgrade));
    let items_crd = crds.get("vaultitems.monivault.io").await.expect("the CRD");
    assert!(
        !items_crd
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(OLD_CHART_LABEL),
        "helm upgrade upgraded the CRDs"
    );
    let after = mutating
        .get(CONFIGURATION)
        .await
        .expect("the configuration");
    for webhook in after.webhooks.expect("webhooks") {
        assert_eq!(
            webhook.client_config.ca_bundle, ca_bundle,
            "helm upgrade kept the caBundle the operator patched in ({})",
            webhook.name
        );
    }

    // 6. Uninstall: the CRDs and every vault item stay.
    ok(
        "helm uninstall",
        helm(c, &["uninstall", RELEASE, "-n", &ns]),
    );
    crds.get("vaultitems.monivault.io")
        .await
        .expect("the CRDs outlive the release");
    items
        .get("shop-login")
        .await
        .expect("the vault items outlive the release");
    assert!(
        mutating
            .get_opt(CONFIGURATION)
            .await
            .expect("get")
            .is_none(),
        "the release's webhook configurations are gone"
    );
}
