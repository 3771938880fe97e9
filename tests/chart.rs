//! The Helm chart `charts/monivault`, checked offline with the helm binary that
//! `tests/tools/build` makes (no cluster; `tests/e2e_chart.rs` installs it for real):
//!
//! - `helm lint` passes, and the schema refuses unknown keys and wrong types;
//! - the CRD templates are `crds/` exactly (`MONIVAULT_BLESS=1 cargo test --test chart`
//!   regenerates them), installed and kept as the values say;
//! - the webhooks are what `monivault webhooks` prints for the same settings, never cover
//!   kube-system or the release namespace, and never carry a caBundle;
//! - the operator's RBAC is exactly what the code calls, with no secrets outside the release
//!   namespace and no wildcard; the user ClusterRoles are `examples/rbac/`'s;
//! - no Helm hook and no `lookup` anywhere; every value is documented in the README.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const CHART: &str = "charts/monivault";
const CRDS_FILE: &str = "crds/monivault.yaml";
const CRD_TEMPLATES: &str = "charts/monivault/templates/crds";
const BLESS_HINT: &str = "run `MONIVAULT_BLESS=1 cargo test --test chart` and commit the result";
const RELEASE_NS: &str = "monivault-system";

fn root(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn helm(args: &[&str]) -> Output {
    let bin = root("target/tools/bin/helm");
    assert!(
        bin.exists(),
        "{} is missing: run tests/tools/build (tests/all does), which builds helm from its Go module",
        bin.display()
    );
    Command::new(bin)
        .args(args)
        .current_dir(root(""))
        // Helm keeps caches and its registry config here; never the user's own.
        .env("HELM_CACHE_HOME", root("target/tools/helm/cache"))
        .env("HELM_CONFIG_HOME", root("target/tools/helm/config"))
        .env("HELM_DATA_HOME", root("target/tools/helm/data"))
        .output()
        .expect("run helm")
}

/// `helm template` in `namespace` with these extra arguments (`--set ...`), as documents.
fn render_in(namespace: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "monivault", CHART, "-n", namespace];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm {}:\n{}",
        args.join(" "),
        text(&out.stderr)
    );
    serde_saphyr::from_str_multiple::<Value, Vec<_>>(&text(&out.stdout))
        .expect("helm template prints YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn render(extra: &[&str]) -> Vec<Value> {
    render_in(RELEASE_NS, extra)
}

/// What `helm template` says when it refuses these values.
fn refusal(extra: &[&str]) -> String {
    let mut args = vec!["template", "monivault", CHART, "-n", RELEASE_NS];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        !out.status.success(),
        "helm {} rendered, but should refuse",
        args.join(" ")
    );
    text(&out.stderr)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "one {kind} expected, found {}", found.len());
    found[0]
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Every webhook of both configurations, mutating first.
fn webhooks(docs: &[Value]) -> Vec<Value> {
    [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ]
    .iter()
    .flat_map(|kind| {
        one(docs, kind)["webhooks"]
            .as_array()
            .expect("webhooks")
            .clone()
    })
    .collect()
}

fn container(docs: &[Value]) -> Value {
    one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0].clone()
}

fn args(docs: &[Value]) -> Vec<String> {
    strings(&container(docs)["args"])
}

/// Configurations that between them turn every template and branch on.
const CONFIGURATIONS: &[&[&str]] = &[
    &[],
    &["--set", "watchNamespace=shop"],
    &["--set", "webhook.url=https://127.0.0.1:9443"],
    &[
        "--set",
        "tls.certManager.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "replicaCount=1",
    ],
    &[
        "--set",
        "tls.certManager.enabled=true",
        "--set",
        "tls.certManager.issuerRef.name=corp-ca",
        "--set",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
        "--set",
        "crds.install=false",
        "--set",
        "userRoles.create=false",
    ],
    &[
        "--set",
        "networkPolicy.enabled=true",
        "--set-json",
        r#"networkPolicy.webhookFrom=[{"ipBlock":{"cidr":"10.0.0.0/24"}}]"#,
        "--set-json",
        r#"webhook.matchConditions=[{"name":"not-system","expression":"!request.userInfo.username.startsWith('system:')"}]"#,
    ],
];

fn every_configuration() -> Vec<(String, Vec<Value>)> {
    CONFIGURATIONS
        .iter()
        .map(|extra| (extra.join(" "), render(extra)))
        .collect()
}

// ---------------------------------------------------------------- lint and schema

#[test]
fn helm_lint_passes_strictly() {
    let out = helm(&["lint", "--strict", CHART]);
    assert!(
        out.status.success(),
        "helm lint:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_default_values_render_the_operator_and_nothing_optional() {
    let docs = render(&[]);
    for kind in [
        "Deployment",
        "ServiceAccount",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "Role",
        "RoleBinding",
    ] {
        one(&docs, kind);
    }
    assert_eq!(of_kind(&docs, "CustomResourceDefinition").len(), 4);
    assert!(named(&docs, "Service", "monivault-webhook").is_some());
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "Certificate",
        "Issuer",
    ] {
        assert!(of_kind(&docs, kind).is_empty(), "{kind} is off by default");
    }
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
}

#[test]
fn the_schema_refuses_unknown_keys_and_wrong_types() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "nope=1"], "additional properties 'nope'"),
        (&["--set", "image.tga=v1"], "additional properties 'tga'"),
        (
            &["--set", "webhook.namespaceSelector.matchLabel.a=b"],
            "additional properties 'matchLabel'",
        ),
        (&["--set", "webhook.timeoutSeconds=31"], "timeoutSeconds"),
        (&["--set", "webhook.timeoutSeconds=0"], "timeoutSeconds"),
        (&["--set-string", "replicaCount=two"], "replicaCount"),
        (&["--set", "crds.install=maybe"], "crds/install"),
        (
            &["--set", "webhook.url=http://insecure:8443"],
            "webhook/url",
        ),
        (&["--set", "image.digest=latest"], "image/digest"),
    ];
    for (extra, needle) in cases {
        let message = refusal(extra);
        assert!(
            message.contains("schema") && message.contains(needle),
            "{extra:?} refused without naming {needle:?}:\n{message}"
        );
        // helm lint reads the same schema.
        let mut args = vec!["lint", CHART];
        args.extend_from_slice(extra);
        let out = helm(&args);
        assert!(!out.status.success(), "helm lint accepted {extra:?}");
    }
}

/// Every object of the schema that lists its keys refuses any other key.
#[test]
fn every_object_in_the_schema_refuses_unknown_keys() {
    fn walk(node: &Value, at: &str, open: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if map.contains_key("properties")
                    && map.get("additionalProperties") != Some(&json!(false))
                {
                    open.push(at.to_owned());
                }
                for (key, child) in map {
                    walk(child, &format!("{at}/{key}"), open);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), open);
                }
            }
            _ => {}
        }
    }
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(root("charts/monivault/values.schema.json")).expect("read the schema"),
    )
    .expect("the schema is JSON");
    let mut open = Vec::new();
    walk(&schema, "", &mut open);
    assert!(
        open.is_empty(),
        "objects that accept unknown keys: {open:?}"
    );
}

// ---------------------------------------------------------------- CRDs

const CRD_TEMPLATE: &str = r#"{{- /* Generated from crds/monivault.yaml by `MONIVAULT_BLESS=1 cargo test --test chart`: do not edit. */}}
{{- if .Values.crds.install }}
__HEAD__
  labels:
    {{- include "monivault.labels" . | nindent 4 }}
  {{- if .Values.crds.keep }}
  annotations:
    # Uninstalling the release keeps the CRDs, and so every vault item.
    helm.sh/resource-policy: keep
  {{- end }}
spec:
__SPEC__
{{- end }}
"#;

/// The chart's CRD templates, file name and text, made from `crds/` as it is.
fn crd_templates() -> BTreeMap<String, String> {
    let generated = fs::read_to_string(root(CRDS_FILE)).expect("read crds/monivault.yaml");
    let body: Vec<&str> = generated
        .lines()
        .skip_while(|line| line.starts_with('#'))
        .collect();
    let body = body.join("\n");
    let mut templates = BTreeMap::new();
    for doc in body.split("\n---\n") {
        let doc = doc.trim_end_matches('\n');
        let (head, spec) = doc
            .split_once("\nspec:\n")
            .expect("every CRD in crds/ has a spec");
        let name = head
            .lines()
            .find_map(|line| line.strip_prefix("  name: "))
            .expect("every CRD in crds/ has a name");
        assert_eq!(
            head,
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {name}"
            ),
            "the generated CRD metadata holds more than a name: teach crd_templates() to merge it"
        );
        // Helm would read placeholders in descriptions and messages as actions.
        let spec = spec.replace("{{", r#"{{ "{{" }}"#);
        let plural = name.split('.').next().expect("a plural");
        templates.insert(
            format!("{plural}.yaml"),
            CRD_TEMPLATE
                .replace("__HEAD__", head)
                .replace("__SPEC__", &spec),
        );
    }
    templates
}

#[test]
fn the_chart_crd_templates_are_made_from_crds() {
    let want = crd_templates();
    let dir = root(CRD_TEMPLATES);
    let on_disk = || -> BTreeMap<String, String> {
        fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .map(|e| e.expect("a directory entry").path())
                    .map(|p| {
                        let name = p
                            .file_name()
                            .expect("a name")
                            .to_string_lossy()
                            .into_owned();
                        (name, fs::read_to_string(&p).expect("read a CRD template"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    if std::env::var_os("MONIVAULT_BLESS").is_some_and(|v| v == "1") {
        fs::create_dir_all(&dir).expect("mkdir");
        for stale in on_disk().keys().filter(|name| !want.contains_key(*name)) {
            fs::remove_file(dir.join(stale)).expect("remove a stale CRD template");
        }
        for (name, text) in &want {
            fs::write(dir.join(name), text).expect("write a CRD template");
        }
        return;
    }
    let have = on_disk();
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{CRD_TEMPLATES} holds other files than crds/ has CRDs; {BLESS_HINT}"
    );
    for (name, text) in &want {
        assert!(
            have[name] == *text,
            "{CRD_TEMPLATES}/{name} differs from {CRDS_FILE}; {BLESS_HINT}"
        );
    }
}

/// What helm renders is the generated CRD, plus only labels and the keep annotation.
#[test]
fn the_rendered_crds_are_the_generated_ones() {
    let text = fs::read_to_string(root(CRDS_FILE)).expect("read crds/");
    let mut want: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("crds/ is YAML");
    let mut have: Vec<Value> = render(&[])
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    for crd in &mut have {
        let metadata = crd["metadata"].as_object_mut().expect("metadata");
        assert_eq!(metadata["labels"]["app.kubernetes.io/name"], "monivault");
        metadata.remove("labels");
        metadata.remove("annotations");
    }
    let by_name = |v: &Value| {
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    want.sort_by_key(by_name);
    have.sort_by_key(by_name);
    assert!(
        have == want,
        "helm renders other CRDs than {CRDS_FILE}; {BLESS_HINT}"
    );
}

#[test]
fn crds_install_and_keep_follow_the_values() {
    let kept = render(&[]);
    let crds = of_kind(&kept, "CustomResourceDefinition");
    assert_eq!(crds.len(), 4);
    for crd in crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "an uninstall must not delete the CRDs (and every vault item)"
        );
    }
    let not_kept = render(&["--set", "crds.keep=false"]);
    let crds = of_kind(&not_kept, "CustomResourceDefinition");
    assert_eq!(crds.len(), 4);
    for crd in crds {
        assert!(crd["metadata"]["annotations"].is_null(), "{crd}");
    }
    let none = render(&["--set", "crds.install=false"]);
    assert!(of_kind(&none, "CustomResourceDefinition").is_empty());
}

// ---------------------------------------------------------------- no hooks, no lookup

fn template_files() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in fs::read_dir(dir).expect("read templates") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let text = fs::read_to_string(&path).expect("read a template");
                out.push((path, text));
            }
        }
    }
    let mut files = Vec::new();
    walk(&root("charts/monivault/templates"), &mut files);
    files
}

#[test]
fn no_helm_hook_anywhere() {
    for (path, text) in template_files() {
        assert!(
            !text.contains("helm.sh/hook"),
            "{} has a hook",
            path.display()
        );
    }
    for (values, docs) in every_configuration() {
        for doc in &docs {
            let annotations = doc["metadata"]["annotations"].as_object();
            for key in annotations.into_iter().flat_map(|a| a.keys()) {
                assert!(
                    !key.starts_with("helm.sh/hook"),
                    "{} {} has {key} (values: {values})",
                    doc["kind"],
                    doc["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn no_template_uses_lookup() {
    for (path, text) in template_files() {
        assert!(
            !text.contains("lookup"),
            "{} uses lookup: the chart must render the same offline",
            path.display()
        );
    }
}

// ---------------------------------------------------------------- webhooks

fn excluded(namespaces: &[&str]) -> Value {
    json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": namespaces})
}

#[test]
fn every_webhook_excludes_kube_system_and_the_release_namespace() {
    let docs = render_in("ops", &[]);
    for webhook in webhooks(&docs) {
        assert_eq!(
            webhook["namespaceSelector"],
            json!({"matchExpressions": [excluded(&["kube-system", "ops"])]}),
            "{}",
            webhook["name"]
        );
    }
    // What the user adds comes on top.
    let docs = render_in(
        "ops",
        &[
            "--set-json",
            r#"webhook.namespaceSelector={"matchLabels":{"team":"shop"},"matchExpressions":[{"key":"tier","operator":"Exists"}]}"#,
        ],
    );
    for webhook in webhooks(&docs) {
        assert_eq!(
            webhook["namespaceSelector"],
            json!({
                "matchLabels": {"team": "shop"},
                "matchExpressions": [
                    excluded(&["kube-system", "ops"]),
                    {"key": "tier", "operator": "Exists"},
                ],
            }),
            "{}",
            webhook["name"]
        );
    }
    // And in every other configuration.
    for (values, docs) in every_configuration() {
        for webhook in webhooks(&docs) {
            assert_eq!(
                webhook["namespaceSelector"]["matchExpressions"][0],
                excluded(&["kube-system", RELEASE_NS]),
                "{} (values: {values})",
                webhook["name"]
            );
        }
    }
}

#[test]
fn watching_an_excluded_namespace_is_refused() {
    for namespace in [RELEASE_NS, "kube-system"] {
        let message = refusal(&["--set", &format!("watchNamespace={namespace}")]);
        assert!(
            message.contains("is never covered by the webhooks"),
            "{message}"
        );
    }
}

#[test]
fn no_webhook_ever_carries_a_ca_bundle() {
    for (values, docs) in every_configuration() {
        for webhook in webhooks(&docs) {
            assert!(
                webhook["clientConfig"].get("caBundle").is_none(),
                "{} has a caBundle (values: {values}): an upgrade would overwrite the operator's",
                webhook["name"]
            );
        }
    }
}

#[test]
fn webhook_url_renders_url_client_configs() {
    let docs = render(&["--set", "webhook.url=https://127.0.0.1:9443/"]);
    let urls: Vec<Value> = webhooks(&docs)
        .iter()
        .map(|w| w["clientConfig"].clone())
        .collect();
    assert_eq!(
        urls,
        [
            "/mutate/vaultitems",
            "/mutate/monitors",
            "/validate/monitors",
            "/validate/deletes",
            "/validate/vaultitems",
        ]
        .iter()
        .map(|path| json!({"url": format!("https://127.0.0.1:9443{path}")}))
        .collect::<Vec<_>>()
    );
    // The self-managed certificate names the URL's host, an IP address here.
    let dns = args(&docs)
        .into_iter()
        .find(|a| a.starts_with("--webhook-dns-name="))
        .expect("--webhook-dns-name");
    assert!(dns.ends_with(",127.0.0.1"), "{dns}");
}

#[test]
fn timeout_and_match_conditions_are_values() {
    let docs = render(&[
        "--set",
        "webhook.timeoutSeconds=5",
        "--set-json",
        r#"webhook.matchConditions=[{"name":"not-nodes","expression":"!request.userInfo.username.startsWith('system:node:')"}]"#,
    ]);
    for webhook in webhooks(&docs) {
        assert_eq!(webhook["timeoutSeconds"], 5);
        assert_eq!(webhook["matchConditions"][0]["name"], "not-nodes");
    }
    for webhook in webhooks(&render(&[])) {
        assert_eq!(webhook["timeoutSeconds"], 10);
        assert!(webhook.get("matchConditions").is_none());
    }
}

/// `monivault webhooks` with these arguments, as documents.
fn printed(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_monivault"))
        .arg("webhooks")
        .args(args)
        .output()
        .expect("run monivault webhooks");
    assert!(
        out.status.success(),
        "monivault webhooks {args:?}: {}",
        text(&out.stderr)
    );
    serde_saphyr::from_str_multiple(&text(&out.stdout)).expect("monivault webhooks prints YAML")
}

#[test]
fn the_chart_webhooks_are_what_monivault_webhooks_prints() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (RELEASE_NS, &[], &["--service-namespace", RELEASE_NS]),
        (
            "ops",
            &[
                "--set",
                "watchNamespace=shop",
                "--set",
                "webhook.timeoutSeconds=5",
            ],
            &[
                "--service-namespace",
                "ops",
                "--only-namespace",
                "shop",
                "--timeout-seconds",
                "5",
            ],
        ),
        (
            "ops",
            &[
                "--set-json",
                r#"webhook.namespaceSelector.matchExpressions=[{"key":"kubernetes.io/metadata.name","operator":"In","values":["a","b"]}]"#,
            ],
            &["--service-namespace", "ops", "--only-namespace", "a,b"],
        ),
        (
            RELEASE_NS,
            &["--set", "webhook.url=https://10.1.2.3:8443"],
            &[
                "--service-namespace",
                RELEASE_NS,
                "--url",
                "https://10.1.2.3:8443",
            ],
        ),
        // An operator in kube-system: the exclusion names it once.
        ("kube-system", &[], &["--service-namespace", "kube-system"]),
    ];
    for (namespace, values, flags) in cases {
        let chart = render_in(namespace, values);
        let binary = printed(flags);
        for kind in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            let from_chart = one(&chart, kind);
            let from_binary = one(&binary, kind);
            assert_eq!(
                from_chart["metadata"]["name"],
                from_binary["metadata"]["name"]
            );
            // Whole webhooks: names, rules, paths, sideEffects, failurePolicy, matchPolicy,
            // reinvocationPolicy, admissionReviewVersions, timeoutSeconds, namespaceSelector.
            assert!(
                from_chart["webhooks"] == from_binary["webhooks"],
                "{kind} differs (chart {values:?} in {namespace}, binary {flags:?}):\nchart:  {}\nbinary: {}",
                from_chart["webhooks"],
                from_binary["webhooks"]
            );
        }
    }
}

#[test]
fn cert_manager_issues_the_certificate_and_injects_its_ca() {
    let docs = render(&["--set", "tls.certManager.enabled=true"]);
    let certificate = one(&docs, "Certificate");
    assert_eq!(certificate["spec"]["secretName"], "monivault-webhook-cert");
    assert_eq!(
        strings(&certificate["spec"]["dnsNames"]),
        [
            "monivault-webhook.monivault-system.svc",
            "monivault-webhook.monivault-system.svc.cluster.local"
        ]
    );
    let issuer = one(&docs, "Issuer");
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert_eq!(
            one(&docs, kind)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "monivault-system/monivault-webhook-cert"
        );
    }
    let args = args(&docs);
    assert!(args.contains(&"--tls-cert-file=/etc/monivault/tls/tls.crt".to_owned()));
    assert!(args.contains(&"--tls-key-file=/etc/monivault/tls/tls.key".to_owned()));
    let deployment = one(&docs, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "monivault-webhook-cert"
    );
    // The CA injector writes the caBundle: the operator needs no right on the configurations.
    assert!(named(&docs, "ClusterRole", "monivault-operator-webhooks").is_none());

    // An issuer of the user's: no Issuer of ours.
    let docs = render(&[
        "--set",
        "tls.certManager.enabled=true",
        "--set",
        "tls.certManager.issuerRef.name=corp-ca",
        "--set",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(of_kind(&docs, "Issuer").is_empty());
    assert_eq!(
        one(&docs, "Certificate")["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );

    // Self-managed by default: no annotation, no Certificate.
    let docs = render(&[]);
    assert!(of_kind(&docs, "Certificate").is_empty());
    assert!(one(&docs, "MutatingWebhookConfiguration")["metadata"]["annotations"].is_null());
}

// ---------------------------------------------------------------- the Deployment

#[test]
fn a_client_ca_makes_the_webhooks_answer_the_api_server_alone() {
    let docs = render(&[
        "--set",
        "webhook.clientCA.secretName=apiserver-webhook-client",
    ]);
    assert!(
        args(&docs)
            .contains(&"--webhook-client-ca-file=/etc/monivault/client-ca/ca.crt".to_owned())
    );
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "client-ca")
        .expect("the client CA volume");
    assert_eq!(volume["secret"]["secretName"], "apiserver-webhook-client");
    let mounts = container(&docs)["volumeMounts"].clone();
    assert!(
        mounts
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == "client-ca" && m["mountPath"] == "/etc/monivault/client-ca"),
        "{mounts}"
    );
    // Off by default: no flag, no volume.
    let docs = render(&[]);
    assert!(!args(&docs).iter().any(|a| a.contains("client-ca")));
    assert!(one(&docs, "Deployment")["spec"]["template"]["spec"]["volumes"].is_null());
}

#[test]
fn the_pod_is_hardened() {
    let docs = render(&[]);
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"],
        json!({
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        container(&docs)["securityContext"],
        json!({
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "privileged": false, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(pod["serviceAccountName"], "monivault");
    assert!(
        !pod["topologySpreadConstraints"]
            .as_array()
            .expect("spread")
            .is_empty()
    );
}

#[test]
fn the_operator_knows_its_pod_and_namespace_and_is_probed() {
    let docs = render(&[]);
    let container = container(&docs);
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_owned(), e.clone()))
        .collect();
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env["MONIVAULT_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    let ports: BTreeMap<String, Value> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_owned(),
                p["containerPort"].clone(),
            )
        })
        .collect();
    assert_eq!(ports["metrics"], 8080);
    assert_eq!(ports["webhook"], 8443);
    let args = args(&docs);
    assert_eq!(args[0], "run", "the image's entrypoint is the binary");
    for flag in [
        "--webhook-addr=0.0.0.0:8443",
        "--metrics-addr=0.0.0.0:8080",
        "--webhook-configuration=monivault",
    ] {
        assert!(args.contains(&flag.to_owned()), "{flag} in {args:?}");
    }
    assert!(container["resources"]["requests"]["memory"].is_string());
}

#[test]
fn the_image_is_the_app_version_unless_a_tag_or_digest_is_given() {
    let chart = fs::read_to_string(root("charts/monivault/Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_saphyr::from_str(&chart).expect("Chart.yaml is YAML");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "appVersion is Cargo.toml's version"
    );
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "monivault");
    let image = |extra: &[&str]| container(&render(extra))["image"].clone();
    assert_eq!(
        image(&[]),
        format!("monivault:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        image(&[
            "--set",
            "image.repository=registry.example/monivault",
            "--set",
            "image.tag=v9"
        ]),
        "registry.example/monivault:v9"
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        image(&[
            "--set",
            "image.tag=v9",
            "--set",
            &format!("image.digest={digest}")
        ]),
        format!("monivault@{digest}")
    );
}

#[test]
fn a_disruption_budget_whenever_there_is_more_than_one_replica() {
    let docs = render(&[]);
    assert_eq!(
        one(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
    assert!(of_kind(&render(&["--set", "replicaCount=1"]), "PodDisruptionBudget").is_empty());
    let docs = render(&[
        "--set",
        "replicaCount=3",
        "--set",
        "podDisruptionBudget.minAvailable=2",
    ]);
    let spec = &one(&docs, "PodDisruptionBudget")["spec"];
    assert_eq!(spec["minAvailable"], 2);
    assert!(spec.get("maxUnavailable").is_none());
    let docs = render(&["--set", "podDisruptionBudget.maxUnavailable=50%"]);
    assert_eq!(
        one(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        "50%"
    );

    let message = refusal(&[
        "--set",
        "podDisruptionBudget.minAvailable=1",
        "--set",
        "podDisruptionBudget.maxUnavailable=1",
    ]);
    assert!(
        message.contains("set minAvailable or maxUnavailable, not both"),
        "{message}"
    );
}

// ---------------------------------------------------------------- optional parts

#[test]
fn monitoring_and_network_policy_are_opt_in() {
    let docs = render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
    ]);
    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let service = named(&docs, "Service", "monivault-metrics").expect("the metrics Service");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("labels")
    {
        assert_eq!(&service["metadata"]["labels"][key], value);
    }
    let alerts: BTreeSet<String> = one(&docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["alert"].as_str().expect("alert").to_owned())
        .collect();
    for alert in [
        "MonivaultWebhookErrors",
        "MonivaultReconcileErrors",
        "MonivaultItemsNotReady",
        "MonivaultRotationFailing",
        "MonivaultReencryptionStuck",
        "MonivaultLeaderMissing",
    ] {
        assert!(alerts.contains(alert), "{alert} in {alerts:?}");
    }

    let message = refusal(&["--set", "networkPolicy.enabled=true"]);
    assert!(message.contains("networkPolicy.webhookFrom"), "{message}");
    let docs = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set-json",
        r#"networkPolicy.webhookFrom=[{"ipBlock":{"cidr":"10.0.0.0/24"}}]"#,
    ]);
    let policy = one(&docs, "NetworkPolicy");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "webhook");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"],
        json!([{"ipBlock": {"cidr": "10.0.0.0/24"}}])
    );
}

/// Metric families the code registers (`registry.register("name", ...)`), without the
/// `monivault_` prefix.
fn registered_metrics() -> BTreeSet<String> {
    fn walk(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).expect("read a source file");
                for (at, _) in text.match_indices("registry.register(") {
                    let rest = &text[at..];
                    let Some(open) = rest.find('"') else { continue };
                    let rest = &rest[open + 1..];
                    if let Some(close) = rest.find('"') {
                        names.insert(rest[..close].to_owned());
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    walk(&root("src"), &mut names);
    names
}

#[test]
fn every_alert_uses_a_metric_the_code_exports() {
    let registered = registered_metrics();
    assert!(registered.contains("is_leader"), "{registered:?}");
    let docs = render(&["--set", "metrics.prometheusRule.enabled=true"]);
    let rules = one(&docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .clone();
    for rule in rules {
        let expr = rule["expr"].as_str().expect("expr");
        let mut used = 0;
        for (at, _) in expr.match_indices("monivault_") {
            let name: String = expr[at + "monivault_".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| registered.contains(*base))
                .unwrap_or(&name);
            assert!(
                registered.contains(family),
                "{} uses monivault_{name}, which src/ does not register",
                rule["alert"]
            );
            used += 1;
        }
        assert!(used > 0, "{} uses no monivault metric", rule["alert"]);
    }
}

// ---------------------------------------------------------------- RBAC

fn rbac_rules(doc: &Value) -> Vec<Value> {
    doc["rules"].as_array().cloned().unwrap_or_default()
}

#[test]
fn no_cluster_role_mentions_secrets_and_no_rule_has_a_wildcard() {
    for (values, docs) in every_configuration() {
        for doc in docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        {
            for rule in rbac_rules(doc) {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    assert!(
                        !strings(&rule[field]).iter().any(|v| v.contains('*')),
                        "{} {} has a wildcard in {field} (values: {values})",
                        doc["kind"],
                        doc["metadata"]["name"]
                    );
                }
                let resources = strings(&rule["resources"]);
                if doc["kind"] == "ClusterRole" {
                    assert!(
                        !resources.iter().any(|r| r.starts_with("secrets")),
                        "ClusterRole {} mentions secrets (values: {values})",
                        doc["metadata"]["name"]
                    );
                }
                if resources
                    .iter()
                    .any(|r| r.contains("webhookconfigurations"))
                {
                    assert_eq!(
                        strings(&rule["resourceNames"]),
                        ["monivault"],
                        "webhook configurations other than monivault's (values: {values})"
                    );
                }
            }
            if doc["kind"] == "Role" {
                assert_eq!(doc["metadata"]["namespace"], RELEASE_NS);
            }
        }
    }
}

/// The operator's rights, one line per rule: binding scope, apiGroup, resources, verbs,
/// resourceNames. The end-to-end test proves on the API server that the code needs no more.
fn operator_rights(docs: &[Value]) -> BTreeSet<String> {
    let mut rights = BTreeSet::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let to_operator = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == "monivault"
                    && s["namespace"] == RELEASE_NS
            });
        if !to_operator {
            continue;
        }
        let scope = match binding["metadata"]["namespace"].as_str() {
            Some(ns) => format!("in {ns}"),
            None => "cluster".to_owned(),
        };
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == binding["roleRef"]["kind"]
                    && d["metadata"]["name"] == binding["roleRef"]["name"]
            })
            .unwrap_or_else(|| {
                panic!(
                    "{} binds a role the chart lacks",
                    binding["metadata"]["name"]
                )
            });
        for rule in rbac_rules(role) {
            rights.insert(format!(
                "{scope}: {} {} [{}]{}",
                strings(&rule["apiGroups"]).join(","),
                strings(&rule["resources"]).join(","),
                strings(&rule["verbs"]).join(","),
                match strings(&rule["resourceNames"]).as_slice() {
                    [] => String::new(),
                    names => format!(" names {}", names.join(",")),
                }
            ));
        }
    }
    rights
}

#[test]
fn the_operator_gets_exactly_the_rights_its_calls_need() {
    let ns = RELEASE_NS;
    let cluster_wide: BTreeSet<String> = [
        format!("in {ns}:  secrets [get,list,watch,create,update,delete]"),
        format!("in {ns}: coordination.k8s.io leases [create]"),
        format!("in {ns}: coordination.k8s.io leases [get,patch] names monivault-leader"),
        "cluster: monivault.io vaultitems [get,list,watch,patch]".to_owned(),
        "cluster: monivault.io vaultsections [list,watch]".to_owned(),
        "cluster: monivault.io monitors [get,list,watch]".to_owned(),
        "cluster: monivault.io monitorruns [list,watch,delete]".to_owned(),
        "cluster: monivault.io vaultitems/status,vaultsections/status,monitors/status,monitorruns/status [patch]".to_owned(),
        "cluster: events.k8s.io events [create,patch]".to_owned(),
        "cluster:  namespaces [get,list]".to_owned(),
        "cluster: authorization.k8s.io subjectaccessreviews [create]".to_owned(),
        "cluster: admissionregistration.k8s.io mutatingwebhookconfigurations,validatingwebhookconfigurations [get,update] names monivault".to_owned(),
    ]
    .into_iter()
    .collect();
    assert_eq!(operator_rights(&render(&[])), cluster_wide);

    // One namespace: monivault's resources there only, and that namespace alone.
    let scoped = operator_rights(&render(&["--set", "watchNamespace=shop"]));
    let want: BTreeSet<String> = cluster_wide
        .iter()
        .map(|r| {
            if r.starts_with("cluster: monivault.io") || r.starts_with("cluster: events") {
                r.replacen("cluster:", "in shop:", 1)
            } else if r.starts_with("cluster:  namespaces") {
                "cluster:  namespaces [get] names shop".to_owned()
            } else {
                r.clone()
            }
        })
        .collect();
    assert_eq!(scoped, want);

    // With cert-manager the operator never touches the webhook configurations.
    let with_cert_manager = operator_rights(&render(&["--set", "tls.certManager.enabled=true"]));
    let want: BTreeSet<String> = cluster_wide
        .iter()
        .filter(|r| !r.contains("webhookconfigurations"))
        .cloned()
        .collect();
    assert_eq!(with_cert_manager, want);
}

#[test]
fn the_user_cluster_roles_are_the_examples() {
    let examples =
        fs::read_to_string(root("examples/rbac/clusterroles.yaml")).expect("read the examples");
    let examples: Vec<Value> = serde_saphyr::from_str_multiple(&examples).expect("YAML");
    let docs = render(&[]);
    let aggregation = |role: &Value| -> BTreeMap<String, Value> {
        role["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(examples.len(), 4);
    for example in &examples {
        let name = example["metadata"]["name"].as_str().expect("a name");
        let chart =
            named(&docs, "ClusterRole", name).unwrap_or_else(|| panic!("the chart lacks {name}"));
        assert_eq!(chart["rules"], example["rules"], "{name}");
        assert_eq!(aggregation(chart), aggregation(example), "{name}");
    }
    for never in ["monivault-use", "monivault-allowhosts"] {
        assert!(aggregation(named(&docs, "ClusterRole", never).expect("role")).is_empty());
    }
    let without = render(&["--set", "userRoles.create=false"]);
    assert!(named(&without, "ClusterRole", "monivault-view").is_none());
}

// ---------------------------------------------------------------- documentation

fn leaf_keys(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                leaf_keys(child, &path, out);
            }
        }
        _ => out.push(at.to_owned()),
    }
}

#[test]
fn every_value_is_documented_in_the_readme() {
    let values = fs::read_to_string(root("charts/monivault/values.yaml")).expect("values.yaml");
    let values: Value = serde_saphyr::from_str(&values).expect("values.yaml is YAML");
    let readme =
        fs::read_to_string(root("charts/monivault/README.md")).expect("the chart's README");
    let mut keys = Vec::new();
    leaf_keys(&values, "", &mut keys);
    assert!(keys.len() > 20, "{keys:?}");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "values the chart's README does not describe: {missing:?}"
    );
}

#[test]
fn the_readme_ships_the_audit_policy_rule() {
    let readme =
        fs::read_to_string(root("charts/monivault/README.md")).expect("the chart's README");
    for needle in [
        "kind: Policy",
        "level: Metadata",
        "group: monivault.io",
        "vaultitems",
    ] {
        assert!(
            readme.contains(needle),
            "the audit policy rule lacks {needle:?}"
        );
    }
}
