//! The CRDs and their rules, checked without a cluster ("the least powerful method").
//!
//! - `crds/monivault.yaml` is exactly what `monivault crds` prints;
//! - every manifest in `examples/` is a valid object, as the API server would see it once the
//!   webhook has sealed its plaintext;
//! - every file in `tests/fixtures/invalid/` is refused with the message its first line
//!   names (`# expect: ...`), and every CEL rule has such a fixture;
//! - immutable fields stay immutable.
//!
//! CEL runs in-process through kube's `cel` feature. The OpenAPI parts of the schema
//! (enums, patterns, lengths) are not evaluated here: the end-to-end suite covers those
//! against a real API server.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{CompiledSchema, ValidationErrors, compile_schema, estimate_rule_cost};
use monivault::api::{
    self, ItemType, Monitor, MonitorRun, MonitorRunSpec, ObjectName, SECRET_MASK, SecretField,
    VaultItem, VaultSection,
};
use serde_json::Value;

const CRDS_FILE: &str = "crds/monivault.yaml";
const BLESS_HINT: &str = "run `MONIVAULT_BLESS=1 cargo test --test crds` and commit the result";

fn root(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(root(dir))
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn read_docs(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_str_multiple::<Value, Vec<_>>(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn messages(errors: &ValidationErrors) -> Vec<String> {
    errors.iter().map(|e| e.to_string()).collect()
}

// ---------------------------------------------------------------- generated CRDs

#[test]
fn checked_in_crds_match_the_rust_types() {
    let generated = api::crds_yaml().expect("CRDs render as YAML");
    let path = root(CRDS_FILE);
    if std::env::var_os("MONIVAULT_BLESS").is_some_and(|v| v == "1") {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {CRDS_FILE} ({e}); {BLESS_HINT}"));
    assert!(
        checked_in == generated,
        "{CRDS_FILE} differs from the CRDs generated from src/api; {BLESS_HINT}"
    );
}

#[test]
fn crd_yaml_reads_back_as_the_same_crds() {
    // Guards the YAML text itself (quoting, folded rules) against saying something else
    // than the Rust types do.
    let text = api::crds_yaml().unwrap();
    let parsed: Vec<CustomResourceDefinition> = serde_saphyr::from_str_multiple(&text).unwrap();
    assert_eq!(parsed, api::crds());
}

/// Every `x-kubernetes-validations` entry of a schema, with its JSON path.
fn rules_of(schema: &Value, path: &str, out: &mut Vec<(String, String, String)>) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules {
            let text = rule["rule"].as_str().unwrap_or_default().to_owned();
            let message = rule["message"].as_str().unwrap_or_default().to_owned();
            out.push((path.to_owned(), text, message));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            rules_of(sub, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        rules_of(items, &format!("{path}[]"), out);
    }
}

/// Every schema node under `schema`, with its JSON path: properties, array items and map
/// values.
fn schema_nodes<'a>(schema: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.to_owned(), schema));
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            schema_nodes(sub, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        schema_nodes(items, &format!("{path}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        schema_nodes(values, &format!("{path}{{}}"), out);
    }
}

/// Every property of every CRD (a named field, not an array item or map value).
fn all_properties() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for crd in api::crds() {
        let schema = crd_schema(&crd);
        let mut nodes = Vec::new();
        schema_nodes(&schema, &crd.spec.names.kind, &mut nodes);
        out.extend(
            nodes
                .into_iter()
                .filter(|(path, _)| path.ends_with(|c: char| c.is_alphanumeric()))
                .filter(|(path, _)| path.contains('.'))
                .map(|(path, node)| (path, node.clone())),
        );
    }
    out
}

#[test]
fn every_property_is_described() {
    let properties = all_properties();
    // A guard against a walk that finds nothing: the four CRDs have well over 100.
    assert!(
        properties.len() > 100,
        "found {} properties",
        properties.len()
    );
    let undescribed: Vec<_> = properties
        .iter()
        .filter(|(_, node)| {
            node.get("description")
                .and_then(Value::as_str)
                .is_none_or(|d| d.trim().is_empty())
        })
        .map(|(path, _)| path.as_str())
        .collect();
    assert!(
        undescribed.is_empty(),
        "properties without a description (add a doc comment to the Rust field): {undescribed:?}"
    );
}

/// Whether kube-apiserver knows `format` for a node of this `type`, as
/// `GetUnrecognizedFormats` in k8s.io/apiextensions-apiserver (validation/formats.go)
/// decides; an unknown one is a warning on every install.
fn kubernetes_knows_format(node_type: Option<&str>, format: &str) -> bool {
    const STRING_FORMATS: &[&str] = &[
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
        "byte",
        "password",
        "date",
        "duration",
        "datetime",
        "k8sshortname",
        "k8slongname",
    ];
    match node_type {
        None | Some("string") => STRING_FORMATS.contains(&format.replace('-', "").as_str()),
        Some("integer") => matches!(format, "int32" | "int64"),
        Some("number") => matches!(format, "float" | "double"),
        Some(_) => false,
    }
}

#[test]
fn every_format_is_one_kubernetes_knows() {
    let mut formats = 0;
    for crd in api::crds() {
        let schema = crd_schema(&crd);
        let mut nodes = Vec::new();
        schema_nodes(&schema, &crd.spec.names.kind, &mut nodes);
        for (path, node) in nodes {
            if let Some(format) = node.get("format").and_then(Value::as_str) {
                formats += 1;
                let node_type = node.get("type").and_then(Value::as_str);
                assert!(
                    kubernetes_knows_format(node_type, format),
                    "{path} has format {format:?} on type {node_type:?}, which the API server \
                     does not know and warns about on every install"
                );
            }
        }
    }
    assert!(formats > 0, "the walk found no format at all");
}

fn crd_schema(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("every CRD has a schema")).unwrap()
}

fn all_rules() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for crd in api::crds() {
        rules_of(&crd_schema(&crd), &crd.spec.names.kind, &mut out);
    }
    out
}

#[test]
fn every_rule_compiles_has_a_message_and_stays_within_cost_bounds() {
    for crd in api::crds() {
        let schema = crd_schema(&crd);
        let compiled = compile_schema(&schema);
        let errors: Vec<String> = compiled
            .compilation_errors()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", crd.spec.names.kind);
        let mut warnings = Vec::new();
        walk_compiled(&compiled, &mut warnings);
        assert!(
            warnings.is_empty(),
            "{}: {warnings:#?}",
            crd.spec.names.kind
        );
    }
    for (path, rule, message) in all_rules() {
        assert!(!message.is_empty(), "{path}: rule {rule:?} needs a message");
        assert!(
            !message.contains('\n'),
            "{path}: the API server refuses multi-line messages"
        );
    }
}

/// kube-cel's cost heuristic (its scope check is skipped: it mistakes the variable of a
/// comprehension such as `self.all(h, ...)` for an undeclared one). The API server's own
/// estimate decides when the end-to-end suite installs the CRDs.
fn walk_compiled(node: &CompiledSchema, warnings: &mut Vec<String>) {
    for result in node.validations.iter().flatten() {
        for w in estimate_rule_cost(&result.rule.rule, node) {
            warnings.push(format!("{}: {}", w.rule, w.message));
        }
    }
    for child in node.properties.values() {
        walk_compiled(child, warnings);
    }
    if let Some(items) = &node.items {
        walk_compiled(items, warnings);
    }
}

// ---------------------------------------------------------------- examples

/// Does what the mutating webhook does to an item before validation: each plaintext moves
/// into `spec.sealed` (here a stand-in envelope) and the field keeps only the mask.
fn as_sealed_by_the_webhook(item: &mut VaultItem) {
    for field in item.spec.plaintext_fields() {
        let plaintext = item.spec.take_plaintext(field).expect("plaintext present");
        assert!(!plaintext.is_empty());
        item.spec
            .set_sealed(field, format!("mv2.s.1.stand-in-for-{}", field.as_str()));
    }
}

/// A typed object keeps every field of the manifest: a misspelt field (serde drops unknown
/// ones) shows up as missing here.
fn assert_no_field_dropped(original: &Value, typed: &Value, path: &str) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (key, value) in o {
                let Some(tv) = t.get(key) else {
                    panic!("{path}.{key} is not a field of the type (misspelt?)");
                };
                assert_no_field_dropped(value, tv, &format!("{path}.{key}"));
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            assert_eq!(o.len(), t.len(), "{path}");
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                assert_no_field_dropped(ov, tv, &format!("{path}[{i}]"));
            }
        }
        (o, t) => assert_eq!(o, t, "{path}"),
    }
}

#[derive(Default)]
struct Examples {
    sections: BTreeSet<String>,
    items: BTreeMap<String, VaultItem>,
    monitors: BTreeMap<String, Monitor>,
    runs: Vec<MonitorRun>,
}

fn load_examples() -> Examples {
    let mut ex = Examples::default();
    for path in yaml_files("examples") {
        let shown = path.display().to_string();
        for doc in read_docs(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            assert_eq!(doc["apiVersion"], "monivault.io/v1alpha1", "{shown}");
            assert!(
                doc["metadata"].get("namespace").is_none(),
                "{shown}: examples are namespace-agnostic"
            );
            match kind.as_str() {
                "VaultSection" => {
                    let s: VaultSection = serde_json::from_value(doc.clone()).unwrap();
                    assert_no_field_dropped(&doc, &serde_json::to_value(&s).unwrap(), &shown);
                    s.validate_cel()
                        .unwrap_or_else(|e| panic!("{shown}: {:#?}", messages(&e)));
                    ex.sections.insert(s.metadata.name.clone().unwrap());
                }
                "VaultItem" => {
                    let mut item: VaultItem = serde_json::from_value(doc.clone()).unwrap();
                    assert_no_field_dropped(&doc, &serde_json::to_value(&item).unwrap(), &shown);
                    assert!(
                        !item.spec.plaintext_fields().is_empty()
                            || item.spec.secret_fields().is_empty(),
                        "{shown}: examples show the plaintext a user applies"
                    );
                    as_sealed_by_the_webhook(&mut item);
                    item.validate_cel()
                        .unwrap_or_else(|e| panic!("{shown}: {:#?}", messages(&e)));
                    ex.items.insert(item.metadata.name.clone().unwrap(), item);
                }
                "Monitor" => {
                    let m: Monitor = serde_json::from_value(doc.clone()).unwrap();
                    assert_no_field_dropped(&doc, &serde_json::to_value(&m).unwrap(), &shown);
                    m.validate_cel()
                        .unwrap_or_else(|e| panic!("{shown}: {:#?}", messages(&e)));
                    ex.monitors.insert(m.metadata.name.clone().unwrap(), m);
                }
                "MonitorRun" => {
                    let r: MonitorRun = serde_json::from_value(doc.clone()).unwrap();
                    assert_no_field_dropped(&doc, &serde_json::to_value(&r).unwrap(), &shown);
                    r.validate_cel()
                        .unwrap_or_else(|e| panic!("{shown}: {:#?}", messages(&e)));
                    ex.runs.push(r);
                }
                other => panic!("{shown}: unexpected kind {other:?}"),
            }
        }
    }
    ex
}

#[test]
fn examples_are_valid_objects() {
    let ex = load_examples();
    assert!(ex.sections.contains("checkout"));
    let types: BTreeSet<_> = ex
        .items
        .values()
        .map(|i| i.spec.item_type.as_str())
        .collect();
    for t in [
        ItemType::CredentialSet,
        ItemType::Secret,
        ItemType::CertificateArchive,
        ItemType::Certificate,
        ItemType::File,
        ItemType::OneTimePassword,
    ] {
        assert!(types.contains(t.as_str()), "an example of a {t} item");
    }
    assert!(
        ex.runs.iter().any(|r| r.spec.monitor_ref.is_some()),
        "a run by reference"
    );
    assert!(
        ex.runs.iter().any(|r| r.spec.monitor.is_some()),
        "an inline run"
    );
}

/// Names in `{{@VaultItem.<name>.<Field>}}` placeholders.
fn placeholder_items(text: &str) -> Vec<String> {
    const OPEN: &str = "{{@VaultItem.";
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let end = after.find("}}").expect("placeholder is closed");
        let (name, _field) = after[..end]
            .rsplit_once('.')
            .expect("placeholder names a field");
        names.push(name.to_owned());
        rest = &after[end..];
    }
    names
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| match a.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
        None => a == host,
    })
}

#[test]
fn examples_fit_together() {
    let ex = load_examples();
    for item in ex.items.values() {
        assert!(
            ex.sections.contains(&item.spec.section),
            "section {} exists",
            item.spec.section
        );
    }
    let mut specs: Vec<(String, &api::MonitorSpec)> = ex
        .monitors
        .iter()
        .map(|(n, m)| (format!("Monitor {n}"), &m.spec))
        .collect();
    for run in &ex.runs {
        let name = run.metadata.name.clone().unwrap_or_default();
        match (&run.spec.monitor_ref, &run.spec.monitor) {
            (Some(r), None) => assert!(
                ex.monitors.contains_key(r.name.as_str()),
                "run {name}: monitor exists"
            ),
            (None, Some(spec)) => specs.push((format!("MonitorRun {name}"), spec)),
            _ => panic!("run {name}: exactly one of monitorRef or monitor"),
        }
    }
    for (who, spec) in specs {
        let host = spec
            .url
            .split("://")
            .nth(1)
            .and_then(|r| r.split(['/', '?', ':']).next())
            .unwrap();
        let mut used: Vec<(String, Option<ItemType>)> = spec
            .typed_item_refs()
            .into_iter()
            .map(|r| (r.name.to_string(), Some(r.item_type)))
            .collect();
        for (_, text) in spec.template_texts() {
            used.extend(placeholder_items(text).into_iter().map(|n| (n, None)));
        }
        assert!(
            !used.is_empty() || who.starts_with("MonitorRun"),
            "{who} uses an item"
        );
        for (name, want_type) in used {
            let item = ex
                .items
                .get(&name)
                .unwrap_or_else(|| panic!("{who}: item {name} exists"));
            if let Some(t) = want_type {
                assert_eq!(
                    item.spec.item_type, t,
                    "{who}: {name} has the type its field needs"
                );
            }
            assert!(
                host_allowed(host, &item.spec.allowed_hosts),
                "{who}: {name} may be sent to {host}"
            );
        }
    }
}

// ---------------------------------------------------------------- invalid objects

struct Fixture {
    path: PathBuf,
    expect: String,
    doc: Value,
}

fn invalid_fixtures() -> Vec<Fixture> {
    yaml_files("tests/fixtures/invalid")
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path).unwrap();
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: first line must be `# expect: <message>`",
                        path.display()
                    )
                })
                .trim()
                .to_owned();
            let mut docs = read_docs(&path);
            assert_eq!(docs.len(), 1, "{}: one object per fixture", path.display());
            Fixture {
                path,
                expect,
                doc: docs.remove(0),
            }
        })
        .collect()
}

/// Validates a manifest as the API server's CEL step would see it on create.
fn validate_manifest(doc: &Value) -> Result<(), ValidationErrors> {
    match doc["kind"].as_str() {
        Some("VaultSection") => serde_json::from_value::<VaultSection>(doc.clone())
            .unwrap()
            .validate_cel(),
        Some("VaultItem") => serde_json::from_value::<VaultItem>(doc.clone())
            .unwrap()
            .validate_cel(),
        Some("Monitor") => serde_json::from_value::<Monitor>(doc.clone())
            .unwrap()
            .validate_cel(),
        Some("MonitorRun") => serde_json::from_value::<MonitorRun>(doc.clone())
            .unwrap()
            .validate_cel(),
        other => panic!("unexpected kind {other:?}"),
    }
}

#[test]
fn invalid_objects_are_refused_with_their_message() {
    let fixtures = invalid_fixtures();
    assert!(!fixtures.is_empty());
    for f in &fixtures {
        let shown = f.path.display();
        let errors = match validate_manifest(&f.doc) {
            Ok(()) => panic!("{shown}: accepted, expected {:?}", f.expect),
            Err(errors) => messages(&errors),
        };
        // Each fixture breaks exactly one rule, so a message names only that rule.
        assert!(
            errors.iter().all(|m| m.contains(&f.expect)),
            "{shown}: expected only {:?}, got {errors:#?}",
            f.expect
        );
    }
}

/// Rules with `oldSelf` are checked by the update tests below, not by fixtures.
fn is_transition_rule(rule: &str) -> bool {
    rule.contains("oldSelf")
}

#[test]
fn every_rule_has_an_invalid_fixture() {
    let fixtures = invalid_fixtures();
    let missing: Vec<_> = all_rules()
        .into_iter()
        .filter(|(_, rule, _)| !is_transition_rule(rule))
        .filter(|(_, _, message)| !fixtures.iter().any(|f| message.contains(&f.expect)))
        .map(|(path, _, message)| format!("{path}: {message}"))
        .collect();
    assert!(
        missing.is_empty(),
        "rules without a fixture in tests/fixtures/invalid: {missing:#?}"
    );
}

// ---------------------------------------------------------------- updates

fn example_item(file: &str) -> VaultItem {
    let doc = read_docs(&root(&format!("examples/{file}"))).remove(0);
    let mut item: VaultItem = serde_json::from_value(doc).unwrap();
    as_sealed_by_the_webhook(&mut item);
    item
}

#[test]
fn an_unchanged_or_described_item_may_be_updated() {
    let old = example_item("item-credential-set.yaml");
    assert!(old.validate_cel_update(&old).is_ok());
    let mut new = old.clone();
    new.spec.description = Some("rotated password".into());
    new.spec.allowed_hosts.push("*.example.com".into());
    new.spec.set_sealed(
        SecretField::Password,
        "mv2.s.2.another-sealed-password".into(),
    );
    new.validate_cel_update(&old)
        .unwrap_or_else(|e| panic!("{:#?}", messages(&e)));
}

#[test]
fn an_item_cannot_change_section() {
    let old = example_item("item-credential-set.yaml");
    let mut new = old.clone();
    new.spec.section = "payments".into();
    assert!(new.validate_cel().is_ok(), "valid on its own");
    let errors = messages(&new.validate_cel_update(&old).unwrap_err());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("section is immutable"), "{errors:#?}");
}

#[test]
fn an_item_cannot_change_type() {
    // A Secret item that becomes a CredentialSet with everything else right: only the
    // immutability rule is broken.
    let old = example_item("item-secret.yaml");
    let mut new = old.clone();
    new.spec.item_type = ItemType::CredentialSet;
    new.spec.secret = None;
    new.spec.sealed = None;
    new.spec.credential_set = Some(api::CredentialSetSpec {
        username: "bot".into(),
        password: Some(SECRET_MASK.into()),
    });
    new.spec
        .set_sealed(SecretField::Password, "mv2.s.1.sealed".into());
    assert!(new.validate_cel().is_ok(), "valid on its own");
    let errors = messages(&new.validate_cel_update(&old).unwrap_err());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("type is immutable"), "{errors:#?}");
}

#[test]
fn a_monitor_run_cannot_be_changed_after_creation() {
    let old = MonitorRun::new(
        "shop-checkout-now",
        MonitorRunSpec::of_monitor("shop-checkout"),
    );
    assert!(old.validate_cel_update(&old).is_ok());
    let new = MonitorRun::new(
        "shop-checkout-now",
        MonitorRunSpec::of_monitor(ObjectName::from("mallory-monitor")),
    );
    assert!(new.validate_cel().is_ok(), "valid on its own");
    let errors = messages(&new.validate_cel_update(&old).unwrap_err());
    assert!(
        errors.len() == 1 && errors[0].contains("spec is immutable"),
        "{errors:#?}"
    );
}

#[test]
fn every_transition_rule_is_tested_above() {
    let transition: Vec<_> = all_rules()
        .into_iter()
        .filter(|(_, rule, _)| is_transition_rule(rule))
        .map(|(path, _, _)| path)
        .collect();
    assert_eq!(
        transition,
        [
            "VaultItem.spec.section",
            "VaultItem.spec.type",
            "MonitorRun.spec"
        ],
        "a new transition rule needs an update test in tests/crds.rs"
    );
}
