//! Smoke tests on the real control plane: the CRDs install, the examples are accepted,
//! every CEL rule refuses its bad object with its message, kubectl shows the designed
//! columns, and RBAC keeps strangers out.

mod support;

use std::path::{Path, PathBuf};

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use monivault::api::vault_item::VaultItem;
use support::{cluster, stderr, stdout};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    files
}

#[tokio::test]
async fn the_api_server_is_the_pinned_release() {
    let c = cluster();
    let out = c.kubectl(&["get", "--raw", "/version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(version["gitVersion"], "v1.37.2");
}

#[tokio::test]
async fn the_crds_install_and_are_established() {
    let c = cluster();
    let crds = Api::<CustomResourceDefinition>::all(c.admin().await);
    for plural in ["vaultsections", "vaultitems", "monitors", "monitorruns"] {
        let crd = crds
            .get(&format!("{plural}.monivault.io"))
            .await
            .unwrap_or_else(|e| panic!("{plural}: {e}"));
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{plural} is not established");
    }
}

/// Items written in plaintext need the mutating webhook, which seals them. Without it the
/// API server refuses them (a CEL rule), so a plaintext never lands in etcd by accident.
#[tokio::test]
async fn every_example_is_accepted_and_plaintext_needs_the_webhook() {
    let c = cluster();
    let ns = c.temp_namespace("smoke-examples").await;
    for file in yaml_files(&c.root.join("examples")) {
        let text = std::fs::read_to_string(&file).expect("read example");
        let plaintexts: Vec<String> = serde_saphyr::from_str::<VaultItem>(&text)
            .map(|mut item| {
                item.spec
                    .plaintext_fields()
                    .into_iter()
                    .filter_map(|field| item.spec.take_plaintext(field))
                    .map(|value| value.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let carries_plaintext = !plaintexts.is_empty();
        let path = file.to_str().expect("utf-8 path");
        let out = c.kubectl(&["create", "-n", &ns, "-f", path]);
        if carries_plaintext {
            assert!(!out.status.success(), "{path} was stored with a plaintext");
            assert!(
                stderr(&out).contains("monivault webhook"),
                "{path}: {}",
                stderr(&out)
            );
            // The refusal (which the audit log keeps, even at Metadata level) does not
            // quote the value it refused.
            for plaintext in &plaintexts {
                assert!(
                    !stderr(&out).contains(plaintext.as_str()),
                    "{path}: the refusal quotes the plaintext: {}",
                    stderr(&out)
                );
            }
        } else {
            assert!(out.status.success(), "{path}: {}", stderr(&out));
        }
    }
}

#[tokio::test]
async fn every_cel_rule_refuses_its_bad_object_with_its_message() {
    let c = cluster();
    let ns = c.temp_namespace("smoke-cel").await;
    let mut checked = 0;
    for file in yaml_files(&c.root.join("tests/fixtures/invalid")) {
        let text = std::fs::read_to_string(&file).expect("read fixture");
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let path = file.to_str().expect("utf-8 path");
        let out = c.kubectl(&["create", "-n", &ns, "-f", path]);
        assert!(!out.status.success(), "{path} was accepted");
        let err = stderr(&out);
        for fragment in expected {
            assert!(
                err.contains(fragment),
                "{path}: expected {fragment:?} in: {err}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} fixtures");
}

#[tokio::test]
async fn type_and_section_cannot_change() {
    let c = cluster();
    let ns = c.temp_namespace("smoke-immutable").await;
    let item = |section: &str, ty: &str, body: &str| {
        format!(
            "apiVersion: monivault.io/v1alpha1\nkind: VaultItem\nmetadata:\n  name: token\nspec:\n  type: {ty}\n  section: {section}\n  allowedHosts: [api.example.com]\n{body}"
        )
    };
    let secret = "  secret: {value: \"*****\"}\n  sealed: {value: mv2.s.1.AAAA}\n";
    let out = c.kubectl_stdin(
        &["create", "-n", &ns, "-f", "-"],
        &item("checkout", "Secret", secret),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = c.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            &ns,
            "-f",
            "-",
        ],
        &item("billing", "Secret", secret),
    );
    assert!(!out.status.success(), "section changed");
    assert!(
        stderr(&out).contains("section is immutable"),
        "{}",
        stderr(&out)
    );

    let otp = "  oneTimePassword: {secret: \"*****\"}\n  sealed: {secret: mv2.s.1.AAAA}\n";
    let out = c.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            &ns,
            "-f",
            "-",
        ],
        &item("checkout", "OneTimePassword", otp),
    );
    assert!(!out.status.success(), "type changed");
    assert!(
        stderr(&out).contains("type is immutable"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn kubectl_get_vaultitems_shows_the_designed_columns() {
    let c = cluster();
    let ns = c.temp_namespace("smoke-columns").await;
    let item = "apiVersion: monivault.io/v1alpha1\nkind: VaultItem\nmetadata:\n  name: shop-login\nspec:\n  type: CredentialSet\n  section: checkout\n  allowedHosts: [shop.example.com]\n  credentialSet: {username: synthetic-bot, password: \"*****\"}\n  sealed: {password: mv2.s.1.AAAA}\n";
    let out = c.kubectl_stdin(&["create", "-n", &ns, "-f", "-"], item);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = c.kubectl(&["get", "vi", "-n", &ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "TYPE", "SECTION", "USERNAME", "SECRET", "READY", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(
        &row[..4],
        ["shop-login", "CredentialSet", "checkout", "synthetic-bot"],
        "{table}"
    );

    // The category and short names reach kubectl too.
    let out = c.kubectl(&["get", "monivault", "-n", &ns, "-o", "name"]);
    assert!(
        stdout(&out).contains("vaultitem.monivault.io/shop-login"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_user_without_rbac_cannot_list_vault_items() {
    let c = cluster();
    let ns = c.temp_namespace("smoke-rbac").await;
    let mallory = Api::<VaultItem>::namespaced(c.user("mallory", &[]).await, &ns);
    match mallory.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("mallory listed vault items: {other:?}"),
    }

    // The control: the same call works once a Role allows it.
    let admin = c.admin().await;
    let role = Role {
        metadata: ObjectMeta {
            name: Some("vaultitem-reader".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["monivault.io".into()]),
            resources: Some(vec!["vaultitems".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..PolicyRule::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("alice-reads".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "vaultitem-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: "alice".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    let alice = Api::<VaultItem>::namespaced(c.user("alice", &[]).await, &ns);
    alice
        .list(&ListParams::default())
        .await
        .expect("alice may list");
}
