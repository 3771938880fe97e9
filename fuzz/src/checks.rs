//! What every fuzz target checks, beyond "no panic". Shared by the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and by the corpus replay in the test suite
//! (`tests/fuzz_corpus.rs` includes this file), so a corpus file proves the same thing in
//! both. Each function takes the raw fuzz input and panics on a broken invariant:
//!
//! - a refusal always carries a non-empty message;
//! - [`PLANTED`], a plaintext the check itself puts into every write-only position of the
//!   input (or seals under a key it holds), never appears in any output (response, patch,
//!   error `Display`/`Debug`), in any of the forms [`leak_forms`] lists;
//! - parse and print round-trip where both exist (placeholders, CRD objects).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use k8s_openapi::api::authentication::v1::UserInfo;
use monivault::api::template::{self, Placeholder};
use monivault::api::{
    Monitor, MonitorRun, MonitorRunSpec, MonitorSpec, VaultItem, VaultItemSpec, VaultSection,
};
use monivault::crypto::pkcs12;
use monivault::crypto::{
    ItemBinding, Keyring, RootKey, SealBinding, UnixMillis, key_version_of, seal,
};
use monivault::runner::Scrubber;
use monivault::runner::check::report_for_response;
use monivault::store::{Keys, MemoryStore};
use monivault::webhook::{
    self, AccessCheck, Admission, AuthorizeError, Authorizer, DeleteLookup, ItemFacts, ItemLookup,
    MonitorLookup, Route, Webhooks, redact_parse_error,
};
use serde_json::{Value, json};

/// The planted plaintext. Valid base64 (28 characters), so a `file.content` or
/// `certificateArchive.archive` that holds it gets past the base64 check and is sealed.
pub const PLANTED: &str = "MvFuzzPlantedSecretQ7x2K9wZ8";

const NS: &str = "shop";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Every write-only field of a VaultItem spec, as (object, field).
const SECRET_POSITIONS: [(&str, &str); 6] = [
    ("credentialSet", "password"),
    ("secret", "value"),
    ("certificateArchive", "archive"),
    ("certificateArchive", "password"),
    ("file", "content"),
    ("oneTimePassword", "secret"),
];

/// The target names, as in `fuzz/Cargo.toml` and `fuzz/corpus/<name>/`.
pub const TARGETS: [&str; 8] = [
    "admission_raw",
    "admission_structured",
    "envelope",
    "placeholder",
    "pkcs12",
    "crd",
    "scrub",
    "response",
];

/// Runs the check of the target named `name` on `data`.
pub fn check(name: &str, data: &[u8]) {
    match name {
        "admission_raw" => admission_raw(data),
        "admission_structured" => admission_structured(data),
        "envelope" => envelope(data),
        "placeholder" => placeholder(data),
        "pkcs12" => pkcs12(data),
        "crd" => crd(data),
        "scrub" => scrub(data),
        "response" => response(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// The forms a plaintext could take in an output: as is; base64 (standard and URL-safe,
/// padded or not); inside a longer base64 stream at byte offset 1 or 2, the characters
/// that depend on the plaintext alone (a shorter run would be the encoding of a part of
/// it, which the scrubber does not promise to catch: the first `scrub` crash); hex.
pub fn leak_forms(plaintext: &str) -> Vec<String> {
    let bytes = plaintext.as_bytes();
    let mut forms = vec![
        plaintext.to_owned(),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    for offset in 1..3 {
        let mut stream = vec![0u8; offset];
        stream.extend_from_slice(bytes);
        stream.extend_from_slice(&[0, 0, 0]);
        // Character i covers bits [6i, 6i + 6).
        let (first, end) = ((8 * offset).div_ceil(6), 8 * (offset + bytes.len()) / 6);
        for encoded in [
            STANDARD_NO_PAD.encode(&stream),
            URL_SAFE_NO_PAD.encode(&stream),
        ] {
            forms.push(encoded[first..end].to_owned());
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex.to_uppercase());
    forms.push(hex);
    forms
}

/// Panics if `output` holds the planted plaintext in any form.
pub fn assert_no_leak(what: &str, output: &str) {
    for form in leak_forms(PLANTED) {
        assert!(
            !output.contains(&form),
            "{what} holds the planted plaintext as {form:?}: {output}"
        );
    }
}

/// Panics if `output` holds the planted plaintext in a form the scrubber promises to
/// catch: all of [`leak_forms`] but hex, which no server is expected to echo and the
/// scrubber does not search (the second `scrub` crash).
fn assert_scrubbed(what: &str, output: &str) {
    for form in scrubbed_forms() {
        assert!(
            !output.contains(&form),
            "{what} holds the planted plaintext as {form:?}: {output}"
        );
    }
}

fn scrubbed_forms() -> Vec<String> {
    let mut forms = leak_forms(PLANTED);
    forms.truncate(forms.len() - 2);
    forms
}

fn holds_planted(text: &str) -> bool {
    leak_forms(PLANTED).iter().any(|form| text.contains(form))
}

// ---------------------------------------------------------------------------------------
// Admission: the five routes, in-process, with a table authorizer and lookups

/// Grants of (user, verb, resource, name); the namespace is not checked, so any the fuzzer
/// writes is answered.
struct Grants(BTreeSet<(&'static str, &'static str, &'static str, &'static str)>);

impl Authorizer for Grants {
    async fn allowed(
        &self,
        user: &UserInfo,
        check: &AccessCheck<'_>,
    ) -> Result<bool, AuthorizeError> {
        let user = user.username.clone().unwrap_or_default();
        Ok(self.0.iter().any(|(u, v, r, n)| {
            *u == user && *v == check.verb && *r == check.resource.as_str() && *n == check.name
        }))
    }
}

/// The shop namespace: its items (name → section) and one saved monitor. The namespace
/// `gone` is terminating.
struct Shop {
    sections: BTreeMap<String, String>,
    monitors: BTreeMap<String, MonitorSpec>,
}

impl Shop {
    fn new() -> Self {
        let sections = [
            ("shop-login", "checkout"),
            ("shop-api-token", "checkout"),
            ("bank-token", "payments"),
        ];
        let monitor = json!({
            "url": "https://shop.example.com/login",
            "auth": {"basic": {"credentialSet": "shop-login"}},
            "headers": [{"name": "X-Api-Key", "value": "{{@VaultItem.shop-api-token.Value}}"}],
        });
        Shop {
            sections: sections
                .iter()
                .map(|(i, s)| (i.to_string(), s.to_string()))
                .collect(),
            monitors: serde_json::from_value(monitor)
                .map(|spec| BTreeMap::from([("shop".to_owned(), spec)]))
                .unwrap_or_default(),
        }
    }
}

impl DeleteLookup for Shop {
    async fn namespace_terminating(&self, namespace: &str) -> Result<bool, AuthorizeError> {
        Ok(namespace == "gone")
    }

    async fn monitors(&self, _: &str) -> Result<Vec<(String, MonitorSpec)>, AuthorizeError> {
        Ok(self.monitors.clone().into_iter().collect())
    }

    async fn unfinished_inline_runs(
        &self,
        _: &str,
    ) -> Result<Vec<(String, MonitorSpec)>, AuthorizeError> {
        Ok(Vec::new())
    }

    async fn live_items_in_section(
        &self,
        _: &str,
        section: &str,
    ) -> Result<Vec<String>, AuthorizeError> {
        Ok(self
            .sections
            .iter()
            .filter(|(_, s)| s.as_str() == section)
            .map(|(item, _)| item.clone())
            .collect())
    }
}

impl ItemLookup for Shop {
    async fn item(&self, _: &str, name: &str) -> Result<Option<ItemFacts>, AuthorizeError> {
        Ok(self.sections.get(name).map(|section| ItemFacts {
            section: section.clone(),
            uid: format!("uid-{name}"),
        }))
    }
}

impl MonitorLookup for Shop {
    async fn monitor_spec(
        &self,
        _: &str,
        name: &str,
    ) -> Result<Option<MonitorSpec>, AuthorizeError> {
        Ok(self.monitors.get(name).cloned())
    }

    async fn unfinished_runs(
        &self,
        _: &str,
        monitor: Option<&str>,
    ) -> Result<usize, AuthorizeError> {
        Ok(usize::from(monitor == Some("busy")) * 100)
    }
}

struct AdmissionHarness {
    runtime: tokio::runtime::Runtime,
    webhooks: Webhooks<MemoryStore, Grants, Shop>,
    /// The planted plaintext sealed for shop-login's password and shop-api-token's value.
    sealed_password: String,
    sealed_value: String,
    uses: u32,
}

/// A fresh harness after this many reviews: every namespace a review names gets its own
/// environment keys in the in-memory store, and they would pile up over millions of runs.
const HARNESS_USES: u32 = 512;

thread_local! {
    static ADMISSION: RefCell<Option<AdmissionHarness>> = const { RefCell::new(None) };
}

fn admission_harness() -> AdmissionHarness {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let (keys, sealed_password, sealed_value) = runtime.block_on(async {
        let keys = Keys::bootstrap(Arc::new(MemoryStore::new()))
            .await
            .expect("keys in memory");
        let keyring = keys.ensure_environment(NS).await.expect("environment");
        let root = keys.root_for(&keyring).await.expect("root");
        let public_key = keyring.sealing_public_key(&root, NS).expect("public key");
        let sealed = |item_type, item, field| {
            let binding = SealBinding {
                namespace: NS,
                section: "checkout",
                item_type,
                item,
                field,
            };
            seal(&public_key, &binding, PLANTED.as_bytes()).expect("seals")
        };
        let password = sealed("CredentialSet", "shop-login", "password");
        let value = sealed("Secret", "shop-api-token", "value");
        (keys, password, value)
    });
    let grants = [
        ("alice", "use", "vaultitems", "shop-login"),
        ("alice", "use", "vaultitems", "shop-api-token"),
        ("alice", "allowhosts", "vaultitems", "shop-login"),
        ("bob", "use", "vaultsections", "checkout"),
        ("carol", "use", "vaultsections", "payments"),
    ];
    AdmissionHarness {
        runtime,
        webhooks: Webhooks::with(
            Arc::new(keys),
            Grants(grants.into_iter().collect()),
            Shop::new(),
        ),
        sealed_password,
        sealed_value,
        uses: 0,
    }
}

fn with_admission<R>(f: impl FnOnce(&AdmissionHarness) -> R) -> R {
    ADMISSION.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|h| h.uses >= HARNESS_USES) {
            *slot = Some(admission_harness());
        }
        let harness = slot.as_mut().expect("just set");
        harness.uses += 1;
        f(harness)
    })
}

/// Sends `body` to `route` and checks the answer: always a response; a refusal has a
/// message; a patch is JSON; with `planted`, no form of [`PLANTED`] anywhere in it.
fn admit_and_check(harness: &AdmissionHarness, route: Route, body: &[u8], planted: bool) {
    let webhooks = &harness.webhooks;
    let review = harness
        .runtime
        .block_on(webhook::review(body, |req| webhooks.admit(route, req)));
    let response = review.response.expect("every review gets a response");
    if !response.allowed {
        assert!(
            !response.result.message.trim().is_empty(),
            "a refusal without a message: {:?}",
            response.result
        );
    }
    let patch = response.patch.as_ref().map(|bytes| {
        serde_json::from_slice::<Value>(bytes)
            .expect("the patch is JSON")
            .to_string()
    });
    let wire = serde_json::to_string(&response.into_review()).expect("the review serializes");
    if planted {
        assert_no_leak("the response", &wire);
        assert_no_leak("the patch", patch.as_deref().unwrap_or_default());
    }
}

/// Sets every write-only position of a VaultItem-shaped object (spec and the
/// last-applied copy) to `value`.
fn set_secret_positions(object: &mut Value, value: &str) {
    set_spec_secrets(object, value);
    let annotation = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
        .and_then(|a| a.get_mut(LAST_APPLIED));
    if let Some(annotation) = annotation
        && let Some(mut copy) = annotation
            .as_str()
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .filter(Value::is_object)
    {
        set_secret_positions(&mut copy, value);
        *annotation = json!(copy.to_string());
    }
}

/// Sets every write-only position of the object's spec to `value`.
fn set_spec_secrets(object: &mut Value, value: &str) {
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        for (parent, field) in SECRET_POSITIONS {
            match spec.get_mut(parent) {
                Some(Value::Object(fields)) if fields.contains_key(field) => {
                    fields.insert(field.to_owned(), json!(value));
                }
                Some(Value::Object(_)) => {}
                // A plaintext written where an object belongs: serde would quote it.
                Some(other) if !other.is_null() => *other = json!(value),
                _ => {}
            }
        }
    }
}

/// Plants [`PLANTED`] into every write-only position of the review's object and old
/// object. `None` if the review holds none, or holds the plaintext somewhere else too
/// (a visible field the webhook may echo, e.g. the uid).
fn plant(review: &Value) -> Option<Vec<u8>> {
    let mut planted = review.clone();
    let mut blanked = review.clone();
    let mut any = false;
    for key in ["object", "oldObject"] {
        if let Some(object) = planted.pointer_mut(&format!("/request/{key}")) {
            let before = object.clone();
            set_secret_positions(object, PLANTED);
            any |= *object != before;
        }
        if let Some(object) = blanked.pointer_mut(&format!("/request/{key}")) {
            set_secret_positions(object, "");
        }
    }
    (any && !holds_planted(&blanked.to_string())).then(|| planted.to_string().into_bytes())
}

/// Target `admission_raw`: byte 0 picks the route, the rest is the body as the API server
/// would post it. The body goes in as is; then, if it is JSON with write-only fields,
/// again with [`PLANTED`] in all of them.
pub fn admission_raw(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = Route::ALL[usize::from(selector) % Route::ALL.len()];
    with_admission(|harness| {
        admit_and_check(harness, route, body, false);
        if let Some(planted) = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| plant(&v))
        {
            admit_and_check(harness, route, &planted, true);
        }
    });
}

/// Reads fuzz bytes as choices; past the end every choice is 0.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[usize::from(self.byte()) % options.len()]
    }

    /// Raw text: a length byte (at most 63), then that many bytes, lossily UTF-8.
    fn text(&mut self) -> String {
        let len = usize::from(self.byte() % 64).min(self.0.len());
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(text).into_owned()
    }

    /// One of `options`, or now and then raw text.
    fn word(&mut self, options: &[&str]) -> String {
        if self.byte().is_multiple_of(8) {
            self.text()
        } else {
            self.pick(options).to_owned()
        }
    }

    /// A text with a few placeholders, well-formed or not, between literal parts.
    fn templated(&mut self, literals: &[&str]) -> String {
        let mut out = self.word(literals);
        for _ in 0..self.byte() % 4 {
            let item = self.word(&["shop-login", "shop-api-token", "bank-token", "x", ""]);
            let field = self.word(&["Password", "Username", "Value", "OneTimePassword", "Seed"]);
            let shape = self.pick(&["{{@VaultItem.", "{{ @VaultItem.", "{{@Vault.", "{{@"]);
            let close = self.pick(&["}}", "}}", "}", ""]);
            out.push_str(&format!("{shape}{item}.{field}{close}"));
            out.push_str(&self.word(literals));
        }
        out
    }
}

const ITEMS: &[&str] = &[
    "shop-login",
    "shop-api-token",
    "bank-token",
    "mallory-token",
];

fn item_spec(c: &mut Choices<'_>, sealed_password: &str, sealed_value: &str) -> Value {
    let item_type = c.word(&[
        "CredentialSet",
        "Secret",
        "CertificateArchive",
        "Certificate",
        "File",
        "OneTimePassword",
    ]);
    let mut spec = json!({
        "type": item_type,
        "section": c.word(&["checkout", "payments"]),
    });
    if c.flag() {
        let hosts: Vec<String> = (0..c.byte() % 3)
            .map(|_| c.word(&["shop.example.com", "*.example.com", "mallory.example.net"]))
            .collect();
        spec["allowedHosts"] = json!(hosts);
    }
    // The write-only fields get their value from `plant`; here they only need to exist,
    // at times with the wrong shape.
    let secret = if c.byte().is_multiple_of(8) {
        json!(null)
    } else {
        json!("x")
    };
    match c.byte() % 7 {
        0 => spec["credentialSet"] = json!({"username": c.word(&["bot"]), "password": secret}),
        1 => spec["secret"] = json!({"value": secret}),
        2 => spec["certificateArchive"] = json!({"archive": secret, "password": secret}),
        3 => spec["file"] = json!({"name": c.word(&["data.csv"]), "content": secret}),
        4 => {
            spec["oneTimePassword"] = json!({
                "secret": secret,
                "encoding": c.word(&["Base32", "Hex"]),
                "digits": c.byte() % 10,
                "period": c.byte(),
                "algorithm": c.word(&["SHA1", "SHA256", "SHA512"]),
            })
        }
        5 => spec["secret"] = json!("x"),
        _ => spec["certificate"] = json!({"pem": c.text()}),
    }
    if c.flag() {
        let sealed = match c.byte() % 6 {
            0 => sealed_password.to_owned(),
            1 => sealed_value.to_owned(),
            2 => sealed_password.replacen("mv2.s.1.", "mv2.s.9.", 1),
            3 => sealed_password.replacen("mv2.", "mv1.", 1),
            4 => {
                // One byte of the payload changed.
                let mut bytes = sealed_password.as_bytes().to_vec();
                let at = 8 + usize::from(c.byte()) % (bytes.len() - 8);
                bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
                String::from_utf8(bytes).unwrap_or_default()
            }
            _ => c.text(),
        };
        let field = c.word(&["password", "value", "archive", "archivePassword", "content"]);
        spec["sealed"] = json!({ field: sealed });
    }
    spec
}

fn monitor_spec(c: &mut Choices<'_>) -> Value {
    let url_literals = &[
        "https://shop.example.com/login",
        "https://mallory.example.net/?k=",
        "http://shop.example.com/",
        "",
    ];
    let mut spec = json!({"url": c.templated(url_literals)});
    match c.byte() % 4 {
        0 => spec["auth"] = json!({"basic": {"credentialSet": c.word(ITEMS)}}),
        1 => spec["auth"] = json!({"bearer": {"secret": c.word(ITEMS)}}),
        2 => spec["clientCertificate"] = json!({"certificateArchive": c.word(ITEMS)}),
        _ => {}
    }
    let headers: Vec<Value> = (0..c.byte() % 3)
        .map(|_| json!({"name": c.word(&["X-Api-Key", "Authorization"]), "value": c.templated(&["Bearer ", "k="])}))
        .collect();
    if !headers.is_empty() {
        spec["headers"] = json!(headers);
    }
    if c.flag() {
        spec["body"] = json!(c.templated(&["{\"a\": 1}", "q="]));
    }
    if c.flag() {
        spec["method"] = json!(c.word(&["GET", "POST", "HEAD", "DELETE"]));
    }
    if c.flag() {
        spec["assertions"] = json!({
            "statusCodes": [200, c.byte()],
            "bodyContains": [c.text()],
            "maxResponseTime": c.word(&["2s", "500ms", "1h"]),
        });
    }
    if c.flag() {
        spec["interval"] = json!(c.word(&["5m", "1s", "0s"]));
        spec["timeout"] = json!(c.word(&["30s", "10m"]));
    }
    if c.flag() {
        spec["tls"] = json!({"caCertificate": c.word(ITEMS)});
    }
    spec
}

fn object(c: &mut Choices<'_>, kind: &str, harness: &AdmissionHarness) -> Value {
    let spec = match kind {
        "VaultItem" => item_spec(c, &harness.sealed_password, &harness.sealed_value),
        "Monitor" => monitor_spec(c),
        "MonitorRun" => {
            if c.flag() {
                json!({"monitorRef": {"name": c.word(&["shop", "busy", "missing"])}})
            } else {
                json!({"monitor": monitor_spec(c)})
            }
        }
        "VaultSection" => json!({"description": c.text()}),
        _ => json!(c.text()),
    };
    let mut metadata = json!({"namespace": NS});
    match c.byte() % 4 {
        0 => metadata["generateName"] = json!("test-now-"),
        _ => {
            metadata["name"] = json!(c.word(&["shop-login", "shop-api-token", "shop", "checkout"]))
        }
    }
    let mut object = json!({
        "apiVersion": "monivault.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    });
    match c.byte() % 4 {
        0 => {
            let config = format!("{object}\n");
            object["metadata"]["annotations"] = json!({ LAST_APPLIED: config });
        }
        1 => {
            let stamp = c.text();
            object["metadata"]["annotations"] = json!({
                LAST_APPLIED: c.text(),
                "monivault.io/stamp": stamp,
            });
        }
        _ => {}
    }
    object
}

/// Target `admission_structured`: the input steers the building of a well-formed
/// AdmissionReview (route, operation, kind, user, dry run, object and old object, with
/// sealed values that open, copies, tampered ones, placeholders), so the fuzzer spends its
/// time past the parser. [`PLANTED`] is in every write-only field.
pub fn admission_structured(data: &[u8]) {
    let mut c = Choices(data);
    with_admission(|harness| {
        let route = c.pick(&Route::ALL);
        let kind = c.pick(&["VaultItem", "Monitor", "MonitorRun", "VaultSection", "Pod"]);
        let operation = c.pick(&["CREATE", "UPDATE", "DELETE", "CONNECT"]);
        let user = c.pick(&[
            "alice",
            "bob",
            "carol",
            "mallory",
            "system:serviceaccount:x:y",
        ]);
        let namespace = c.pick(&[NS, NS, "gone"]);
        let new = object(&mut c, kind, harness);
        let old = match operation {
            "UPDATE" | "DELETE" if c.byte().is_multiple_of(4) => {
                let mut old = new.clone();
                old["metadata"]["labels"] = json!({"team": "shop"});
                old
            }
            "UPDATE" | "DELETE" => object(&mut c, kind, harness),
            _ => Value::Null,
        };
        let resource = format!("{}s", kind.to_lowercase());
        let request = json!({
            "uid": "fuzz-uid",
            "kind": {"group": "monivault.io", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "monivault.io", "version": "v1alpha1", "resource": resource},
            "subResource": if c.byte().is_multiple_of(8) { json!("status") } else { Value::Null },
            "name": new["metadata"]["name"],
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": user, "uid": format!("{user}-uid"), "groups": ["system:authenticated"]},
            "object": if operation == "DELETE" { Value::Null } else { new },
            "oldObject": old,
            "dryRun": c.flag(),
        });
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
        match plant(&review) {
            Some(planted) => admit_and_check(harness, route, &planted, true),
            None => admit_and_check(harness, route, review.to_string().as_bytes(), false),
        }
    });
}

// ---------------------------------------------------------------------------------------
// Sealed and stored envelopes

struct EnvelopeHarness {
    keyring: Keyring,
    root: RootKey,
    /// [`PLANTED`] sealed for [`seal_binding`], and encrypted for [`item_binding`].
    sealed: String,
    stored: String,
}

fn seal_binding() -> SealBinding<'static> {
    SealBinding {
        namespace: NS,
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    }
}

fn item_binding() -> ItemBinding<'static> {
    ItemBinding {
        namespace: NS,
        item: "shop-login",
        uid: "uid-shop-login",
        field: "password",
    }
}

thread_local! {
    static ENVELOPES: EnvelopeHarness = envelope_harness();
}

fn envelope_harness() -> EnvelopeHarness {
    let root = RootKey::generate(1).expect("root key");
    let mut keyring = Keyring::new(&root, UnixMillis::from_millis(0));
    keyring
        .ensure_environment(&root, NS, UnixMillis::from_millis(0))
        .expect("environment");
    let public_key = keyring.sealing_public_key(&root, NS).expect("public key");
    let sealed = seal(&public_key, &seal_binding(), PLANTED.as_bytes()).expect("seals");
    let stored = keyring
        .current_data_cipher(&root, NS)
        .expect("data key")
        .encrypt(&item_binding(), PLANTED.as_bytes())
        .expect("encrypts");
    EnvelopeHarness {
        keyring,
        root,
        sealed,
        stored,
    }
}

/// Applies edits from `ops` to `text`: (position high, position low, operation, byte)
/// quadruples that replace, insert or delete one byte, or cut the text. Any position can
/// be named, the prefix (`mv2.s.1.`) as well as the payload.
fn mutate(text: &str, ops: &[u8]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for op in ops.chunks_exact(4) {
        let at = usize::from(u16::from_be_bytes([op[0], op[1]])) % (bytes.len() + 1);
        match op[2] % 4 {
            0 if at < bytes.len() => bytes[at] = op[3],
            1 => bytes.insert(at, op[3]),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Target `envelope`: byte 0 picks the mode. Even: the rest is text, opened as a sealed
/// value and as a stored ciphertext. Odd: the rest edits the sealed (or stored) planted
/// value before opening it. An envelope opens only if it is the one made (up to the
/// whitespace the parser trims), and then to the planted plaintext; no error shows it.
pub fn envelope(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    ENVELOPES.with(|h| {
        let (sealed_text, stored_text) = if mode % 2 == 0 {
            let text = String::from_utf8_lossy(rest).into_owned();
            (text.clone(), text)
        } else {
            (mutate(&h.sealed, rest), mutate(&h.stored, rest))
        };
        let opened = [
            (
                &sealed_text,
                &h.sealed,
                h.keyring
                    .open_sealed(&h.root, &seal_binding(), &sealed_text),
            ),
            (
                &stored_text,
                &h.stored,
                h.keyring.decrypt(&h.root, &item_binding(), &stored_text),
            ),
        ];
        for (text, original, result) in opened {
            match result {
                Ok(plaintext) => {
                    assert_eq!(text.trim(), original.as_str(), "an altered envelope opened");
                    assert_eq!(plaintext.expose(), PLANTED.as_bytes());
                    assert_no_leak("a plaintext's Debug", &format!("{plaintext:?}"));
                }
                Err(error) => {
                    let message = error.to_string();
                    assert!(!message.trim().is_empty(), "an error without a message");
                    assert_no_leak("an open error", &message);
                    assert_no_leak("an open error's Debug", &format!("{error:?}"));
                }
            }
        }
        match key_version_of(&sealed_text) {
            Ok(_) => {}
            Err(error) => assert!(!error.to_string().trim().is_empty()),
        }
    });
}

// ---------------------------------------------------------------------------------------
// The placeholder parser

/// How a placeholder is written: the parser allows no other spelling.
fn print(placeholder: &Placeholder) -> String {
    format!(
        "{{{{@VaultItem.{}.{}}}}}",
        placeholder.item, placeholder.field
    )
}

/// Target `placeholder`: every placeholder found reads back as it prints, in order and
/// without overlap; the text is its literal parts and the printed placeholders; printing
/// then parsing gives the same placeholder; an error has a message and an offset inside
/// the text. Also through a whole monitor spec (`referenced_items`).
pub fn placeholder(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match template::parse(text) {
        Ok(found) => {
            let mut rebuilt = String::new();
            let mut cursor = 0;
            for p in &found {
                assert!(
                    p.span.start >= cursor,
                    "overlapping placeholders: {found:?}"
                );
                let printed = print(p);
                assert_eq!(&text[p.span.clone()], printed, "span and print differ");
                let again = template::parse(&printed).expect("a printed placeholder parses");
                assert_eq!(again.len(), 1);
                assert_eq!((&again[0].item, again[0].field), (&p.item, p.field));
                rebuilt.push_str(&text[cursor..p.span.start]);
                rebuilt.push_str(&printed);
                cursor = p.span.end;
            }
            rebuilt.push_str(&text[cursor..]);
            assert_eq!(rebuilt, text);
        }
        Err(error) => {
            assert!(!error.to_string().trim().is_empty());
            assert!(error.offset <= text.chars().count(), "{error}");
        }
    }
    let spec = json!({
        "url": format!("https://shop.example.com/{text}"),
        "headers": [{"name": "X-Key", "value": text}],
        "body": text,
    });
    if let Ok(spec) = serde_json::from_value::<MonitorSpec>(spec) {
        match template::referenced_items(&spec) {
            Ok(items) => {
                let direct: BTreeSet<String> = template::parse(text)
                    .map(|found| found.into_iter().map(|p| p.item).collect())
                    .unwrap_or_default();
                assert!(direct.is_subset(&items), "{direct:?} not in {items:?}");
            }
            Err(error) => assert!(!error.to_string().trim().is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// PKCS#12 ingest

/// The walk, then the reads a controller makes, with the planted password or another.
/// Most of the corpus is sealed with [`PLANTED`] as its password.
const MAX_FUZZ_ITERATIONS: u64 = 10_000;

/// Target `pkcs12`: byte 0 picks the password, the rest is `certificateArchive.archive`
/// as written (DER or base64). Every error has a message and never shows the password;
/// an identity's `Debug` shows neither the key nor the password. Archives whose key
/// derivations would cost more than [`MAX_FUZZ_ITERATIONS`] are walked but not opened: the
/// limits themselves are tested in `src/crypto/pkcs12/tests.rs`, and here they would only
/// slow the fuzzer down.
pub fn pkcs12(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let password: &[u8] = match selector % 3 {
        0 => PLANTED.as_bytes(),
        1 => b"",
        _ => b"wrong-password",
    };
    let refused = |what: &str, error: pkcs12::ArchiveError| {
        let message = error.to_string();
        assert!(
            !message.trim().is_empty(),
            "{what}: an error without a message"
        );
        assert_no_leak(what, &message);
        assert_no_leak(what, &format!("{error:?}"));
    };
    let der = match pkcs12::archive_der(input) {
        Ok(der) => der,
        Err(error) => return refused("archive_der", error),
    };
    match pkcs12::inspect(&der) {
        Ok(inspection) if inspection.iterations <= MAX_FUZZ_ITERATIONS => {}
        Ok(_) => return,
        Err(error) => return refused("inspect", error),
    }
    match pkcs12::certificate_facts(&der, password) {
        Ok(facts) => assert_no_leak("certificate facts", &format!("{facts:?}")),
        Err(error) => refused("certificate_facts", error),
    }
    match pkcs12::identity(&der, password) {
        Ok(identity) => {
            let shown = format!("{identity:?}");
            assert_no_leak("an identity's Debug", &shown);
            let key = &identity.private_key_pkcs8_der;
            let key_hex: String = key.iter().take(16).map(|b| format!("{b:02x}")).collect();
            assert!(
                key.len() < 16 || !shown.contains(&key_hex),
                "an identity's Debug shows its key"
            );
        }
        Err(error) => refused("identity", error),
    }
}

// ---------------------------------------------------------------------------------------
// CRD objects

/// Parses `value` as `T`; a parsed object serializes and parses back to itself, and its
/// `Debug` holds no planted plaintext; a refusal, redacted as the webhook shows it, has a
/// message and never the plaintext.
fn round_trip<T>(value: &Value, debug_may_show: bool)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    match serde_json::from_value::<T>(value.clone()) {
        Ok(parsed) => {
            let printed = serde_json::to_value(&parsed).expect("a parsed object serializes");
            let again: T = serde_json::from_value(printed.clone())
                .unwrap_or_else(|e| panic!("a printed object does not parse: {e}: {printed}"));
            assert_eq!(again, parsed, "print then parse changed the object");
            if !debug_may_show {
                assert_no_leak("a parsed object's Debug", &format!("{parsed:?}"));
            }
        }
        Err(error) => {
            let message = redact_parse_error(&error);
            assert!(!message.trim().is_empty());
            assert_no_leak("a redacted parse error", &message);
        }
    }
}

/// Target `crd`: byte 0 picks the type (each kind, and each spec alone), the rest is JSON.
/// First as is (a parse error, once redacted, never quotes the input), then with
/// [`PLANTED`] in every write-only position (it must not show in `Debug` either).
pub fn crd(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(value) => value,
        Err(error) => {
            let message = redact_parse_error(&error);
            assert!(!message.trim().is_empty());
            return;
        }
    };
    let selector = selector % 7;
    // A spec alone (selector 1) has its write-only positions one level up.
    let with_secrets = |value: &Value, secret: &str| {
        if selector == 1 {
            let mut wrapped = json!({ "spec": value });
            set_spec_secrets(&mut wrapped, secret);
            wrapped["spec"].clone()
        } else {
            // Not the last-applied annotation: `Debug` shows metadata as it came.
            let mut value = value.clone();
            set_spec_secrets(&mut value, secret);
            value
        }
    };
    // Before planting, the input may hold the plaintext in a visible field, which `Debug`
    // shows; only the write-only fields must never show.
    let run = |value: &Value, planted: bool| match selector {
        0 => round_trip::<VaultItem>(value, !planted),
        1 => round_trip::<VaultItemSpec>(value, !planted),
        2 => round_trip::<Monitor>(value, true),
        3 => round_trip::<MonitorSpec>(value, true),
        4 => round_trip::<MonitorRun>(value, true),
        5 => round_trip::<MonitorRunSpec>(value, true),
        _ => round_trip::<VaultSection>(value, true),
    };
    if holds_planted(&value.to_string()) {
        // A redacted error must not show it, wherever it is.
        if let Err(error) = serde_json::from_value::<VaultItem>(value.clone()) {
            assert_no_leak("a redacted parse error", &redact_parse_error(&error));
        }
        return;
    }
    run(&value, false);
    let planted = with_secrets(&value, PLANTED);
    let blanked = with_secrets(&value, "");
    if planted != blanked && !holds_planted(&blanked.to_string()) {
        run(&planted, true);
    }
}

// ---------------------------------------------------------------------------------------
// The runner: scrubbing and judging a response

/// A response body built from the input: literal bytes, with the planted plaintext
/// inserted in one of the forms the scrubber promises to catch. Segments are
/// (form, length, bytes…).
fn planted_body(data: &[u8]) -> Vec<u8> {
    let forms: Vec<Vec<u8>> = vec![
        PLANTED.as_bytes().to_vec(),
        STANDARD.encode(PLANTED).into_bytes(),
        URL_SAFE_NO_PAD.encode(PLANTED).into_bytes(),
        STANDARD.encode(format!("bot:{PLANTED}")).into_bytes(),
        format!("Basic {}", STANDARD.encode(format!("bot:{PLANTED}"))).into_bytes(),
        format!("Bearer {PLANTED}").into_bytes(),
        // Inside a longer base64 blob, at each byte offset.
        STANDARD.encode(format!("x{PLANTED}yz")).into_bytes(),
        STANDARD.encode(format!("xy{PLANTED}z")).into_bytes(),
        // JSON-escaped, as an echo body writes it.
        serde_json::to_string(PLANTED)
            .unwrap_or_default()
            .into_bytes(),
    ];
    let mut body = Vec::new();
    let mut rest = data;
    while let [form, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        body.extend_from_slice(&tail[..len]);
        if let Some(planted) = forms.get(usize::from(*form) % (forms.len() + 2)) {
            body.extend_from_slice(planted);
        }
        rest = &tail[len..];
    }
    body.extend_from_slice(rest);
    body
}

fn planted_scrubber() -> Scrubber {
    let mut builder = Scrubber::builder();
    builder
        .basic(b"bot", PLANTED.as_bytes())
        .bearer(PLANTED.as_bytes());
    builder.build()
}

thread_local! {
    static SCRUBBER: Scrubber = planted_scrubber();
}

/// Target `scrub`: the scrubbed body, text and excerpt (at an input-chosen length) hold no
/// form of the planted plaintext, however the body around it looks.
pub fn scrub(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let body = planted_body(rest);
    SCRUBBER.with(|scrubber| {
        assert_scrubbed("scrub_bytes", &scrubber.scrub_bytes(&body));
        assert_scrubbed("scrub", &scrubber.scrub(&String::from_utf8_lossy(&body)));
        let excerpt = scrubber.excerpt(&body, usize::from(cut) * 4);
        assert!(excerpt.len() <= usize::from(cut) * 4);
        assert_scrubbed("excerpt", &excerpt);
        assert_scrubbed("Debug", &format!("{scrubber:?}"));
        let text = String::from_utf8_lossy(&body);
        if scrubbed_forms().iter().any(|form| text.contains(form)) {
            assert!(scrubber.finds_secret_in(&String::from_utf8_lossy(&body)));
        }
    });
}

/// Target `response`: a response (status, time, body with the planted plaintext) judged
/// against assertions (themselves from the input, and at times naming the plaintext, as a
/// `bodyContains` may) exactly as a check does: the whole report, `Debug` and `Display`
/// included, holds no form of it; a failed check says why.
pub fn response(data: &[u8]) {
    let mut c = Choices(data);
    let status = u16::from(c.byte()) * 4 + u16::from(c.byte() % 4);
    let elapsed = Duration::from_millis(u64::from(c.byte()) * 16);
    let truncated = c.flag();
    let texts = |c: &mut Choices<'_>| -> Vec<String> {
        (0..c.byte() % 3)
            .map(|_| match c.byte() % 4 {
                0 => PLANTED.to_owned(),
                1 => PLANTED[..c.byte() as usize % PLANTED.len()].to_owned(),
                _ => c.text(),
            })
            .collect()
    };
    let contains = texts(&mut c);
    let not_contains = texts(&mut c);
    let codes: Vec<u16> = (0..c.byte() % 3).map(|_| u16::from(c.byte()) * 2).collect();
    let max_time = c.word(&["2s", "100ms", "1h"]);
    let spec = json!({
        "url": "https://shop.example.com/",
        "assertions": {
            "statusCodes": codes,
            "maxResponseTime": max_time,
            "bodyContains": contains,
            "bodyNotContains": not_contains,
        },
    });
    let Ok(spec) = serde_json::from_value::<MonitorSpec>(spec) else {
        return;
    };
    let body = planted_body(c.0);
    SCRUBBER.with(|scrubber| {
        let report = report_for_response(&spec, scrubber, status, elapsed, body, truncated);
        assert!(
            !report.message.trim().is_empty(),
            "a report without a message"
        );
        if !report.result.passed() {
            assert!(report.assertions.iter().any(|a| !a.passed), "{report:?}");
        }
        assert_scrubbed("the report's Debug", &format!("{report:?}"));
    });
}
