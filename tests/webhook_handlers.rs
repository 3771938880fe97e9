//! The admission webhooks as the API server calls them, without the network: an
//! AdmissionReview body in, an AdmissionReview out (testing ladder step 2).
//!
//! Keys come from `Keys::bootstrap` over the in-memory store; authorization from a table of
//! grants. Every item response is searched for the plaintext, patch included, in its plain,
//! base64 (at any offset) and hex forms.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use monivault::api::{Monitor, MonitorRun};
use monivault::api::{MonitorSpec, SECRET_MASK};
use monivault::crypto::{RootKey, UnixMillis};
use monivault::crypto::{SealBinding, seal};
use monivault::stamp::{self, STAMP_ANNOTATION, StampError};
use monivault::store::Keys;
use monivault::store::MemoryStore;
use monivault::store::Store;
use monivault::webhook::{
    self, AccessCheck, Admission, AuthorizeError, Authorizer, DeleteLookup, ItemFacts, ItemLookup,
    MAX_BODY_BYTES, MonitorLookup, Route, Webhooks, authorize_monitor_write, seal_vault_item,
};
use serde_json::{Value, json};
use tokio::sync::Barrier;

const NS: &str = "shop";
const ITEM: &str = "shop-login";
const PASSWORD: &str = "correct-horse-battery-staple-7731";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

// ---------------------------------------------------------------------------------------
// Harness

async fn keys() -> Keys<MemoryStore> {
    Keys::bootstrap(Arc::new(MemoryStore::new()))
        .await
        .expect("bootstrap keys in memory")
}

fn body(request: Value) -> Vec<u8> {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
        .to_string()
        .into_bytes()
}

fn request(kind: &str, resource: &str, operation: &str, user: &str, object: &Value) -> Value {
    json!({
        "uid": "7f0e2b4c-uid",
        "kind": {"group": "monivault.io", "version": "v1alpha1", "kind": kind},
        "resource": {"group": "monivault.io", "version": "v1alpha1", "resource": resource},
        "name": object["metadata"]["name"],
        "namespace": NS,
        "operation": operation,
        "userInfo": {"username": user, "uid": format!("{user}-uid"), "groups": ["system:authenticated"]},
        "object": object,
        "oldObject": null,
        "dryRun": false,
    })
}

fn item_request(operation: &str, object: &Value) -> Value {
    request("VaultItem", "vaultitems", operation, "alice", object)
}

/// A CredentialSet item; `password` is the plaintext-or-mask field.
fn credential_set(password: Option<&str>, sealed: Option<&str>) -> Value {
    let mut spec = json!({
        "type": "CredentialSet",
        "section": "checkout",
        "allowedHosts": ["shop.example.com"],
        "credentialSet": {"username": "bot"},
    });
    if let Some(password) = password {
        spec["credentialSet"]["password"] = json!(password);
    }
    if let Some(sealed) = sealed {
        spec["sealed"] = json!({"password": sealed});
    }
    json!({
        "apiVersion": "monivault.io/v1alpha1",
        "kind": "VaultItem",
        "metadata": {"name": ITEM, "namespace": NS},
        "spec": spec,
    })
}

/// What `kubectl apply` sends: the object, with itself in the last-applied annotation.
fn applied_with_kubectl(mut object: Value) -> Value {
    let config = format!("{object}\n");
    object["metadata"]["annotations"] = json!({ LAST_APPLIED: config });
    object
}

struct Outcome {
    response: AdmissionResponse,
    /// The whole AdmissionReview as it goes back to the API server.
    wire: String,
    /// The JSONPatch, decoded (on the wire it is an array of bytes).
    patch: Option<Value>,
}

impl Outcome {
    fn new(response: AdmissionResponse) -> Self {
        let wire = serde_json::to_string(&response.clone().into_review()).expect("serializes");
        let patch = response
            .patch
            .as_ref()
            .map(|bytes| serde_json::from_slice(bytes).expect("the patch is JSON"));
        Outcome {
            response,
            wire,
            patch,
        }
    }

    fn message(&self) -> &str {
        &self.response.result.message
    }

    /// The plaintext appears nowhere: not in the response, not in the patch, in no form.
    fn assert_no_plaintext(&self, plaintext: &str) {
        let patch = self
            .patch
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        for form in &plaintext_forms(plaintext) {
            assert!(
                !self.wire.contains(form.as_str()),
                "response holds {form:?}: {}",
                self.wire
            );
            assert!(
                !patch.contains(form.as_str()),
                "patch holds {form:?}: {patch}"
            );
        }
    }

    /// Applies the patch's `add`/`replace` operations to `object`.
    fn patched(&self, object: &Value) -> Value {
        let mut doc = object.clone();
        for op in self
            .patch
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let path = op["path"].as_str().expect("path");
            let (parent, key) = path.rsplit_once('/').expect("a member path");
            let key = key.replace("~1", "/").replace("~0", "~");
            let parent = doc
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .expect("RFC 6902: the parent exists and is an object");
            match op["op"].as_str() {
                Some("add") => {
                    parent.insert(key, op["value"].clone());
                }
                Some("replace") => {
                    let target = parent
                        .get_mut(&key)
                        .expect("RFC 6902: replace needs an existing member");
                    *target = op["value"].clone();
                }
                Some("remove") => {
                    parent
                        .remove(&key)
                        .expect("RFC 6902: remove needs the member");
                }
                other => panic!("unexpected op {other:?}"),
            }
        }
        doc
    }
}

/// The forms a plaintext could take in a response: as is; base64 (standard and URL-safe,
/// padded or not); the base64 of any longer buffer that holds it, at each of the three
/// byte offsets (its whole 3-byte groups, encoded); and hex.
fn plaintext_forms(plaintext: &str) -> Vec<String> {
    let bytes = plaintext.as_bytes();
    let mut forms = vec![
        plaintext.to_owned(),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    for skip in 1..3 {
        let rest = &bytes[skip.min(bytes.len())..];
        let whole = &rest[..rest.len() / 3 * 3];
        // Shorter than 9 bytes, 12 characters could turn up by chance in a sealed value.
        if whole.len() >= 9 {
            forms.push(STANDARD_NO_PAD.encode(whole));
            forms.push(URL_SAFE_NO_PAD.encode(whole));
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex.to_uppercase());
    forms.push(hex);
    forms
}

async fn admit_item(keys: &Keys<MemoryStore>, request: Value) -> Outcome {
    let review = webhook::review(&body(request), |req| async move {
        seal_vault_item(keys, &Everyone, &req).await
    })
    .await;
    Outcome::new(review.response.expect("a response"))
}

/// Opens a sealed password of `ITEM`, as the controller would.
async fn open(keys: &Keys<MemoryStore>, item: &str, sealed: &str) -> String {
    let keyring = keys.keyring_for(NS).await.expect("keyring");
    let root = keys.root_for(&keyring).await.expect("root");
    let binding = SealBinding {
        namespace: NS,
        section: "checkout",
        item_type: "CredentialSet",
        item,
        field: "password",
    };
    let plaintext = keyring.open_sealed(&root, &binding, sealed).expect("opens");
    String::from_utf8(plaintext.expose().to_vec()).expect("utf-8")
}

/// Seals `plaintext` for `item`'s password, as `monivault seal` does.
async fn seal_for(keys: &Keys<MemoryStore>, item: &str, plaintext: &str) -> String {
    seal_field(keys, "CredentialSet", item, "password", plaintext).await
}

/// Seals `plaintext` for one field of an item of the section "checkout".
async fn seal_field(
    keys: &Keys<MemoryStore>,
    item_type: &str,
    item: &str,
    field: &str,
    plaintext: &str,
) -> String {
    let keyring = keys.ensure_environment(NS).await.expect("environment");
    let root = keys.root_for(&keyring).await.expect("root");
    let public_key = keyring.sealing_public_key(&root, NS).expect("public key");
    let binding = SealBinding {
        namespace: NS,
        section: "checkout",
        item_type,
        item,
        field,
    };
    seal(&public_key, &binding, plaintext.as_bytes()).expect("seals")
}

// ---------------------------------------------------------------------------------------
// The VaultItem mutating webhook

#[tokio::test]
async fn a_plaintext_password_comes_out_sealed_and_masked_in_spec_and_in_last_applied() {
    let keys = keys().await;
    let object = applied_with_kubectl(credential_set(Some(PASSWORD), None));
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;

    assert!(outcome.response.allowed, "{}", outcome.message());
    outcome.assert_no_plaintext(PASSWORD);
    let stored = outcome.patched(&object);
    assert_eq!(stored["spec"]["credentialSet"]["password"], SECRET_MASK);
    assert_eq!(stored["spec"]["credentialSet"]["username"], "bot");
    let sealed = stored["spec"]["sealed"]["password"]
        .as_str()
        .expect("sealed");
    assert!(sealed.starts_with("mv2.s.1."), "{sealed}");
    assert_eq!(open(&keys, ITEM, sealed).await, PASSWORD);

    let last_applied: Value = serde_json::from_str(
        stored["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .expect("annotation"),
    )
    .expect("the annotation is still JSON");
    assert_eq!(
        last_applied["spec"]["credentialSet"]["password"],
        SECRET_MASK
    );
    assert_eq!(last_applied["spec"]["sealed"]["password"], sealed);
    assert!(!stored.to_string().contains(PASSWORD));
    // The item arrived before any VaultSection: the webhook created the keys.
    let keyring = keys.keyring_for(NS).await.expect("keyring");
    assert!(keyring.environments.contains_key(NS));
}

#[tokio::test]
async fn applying_the_same_plaintext_twice_gives_the_same_object() {
    let keys = keys().await;
    let config = credential_set(Some(PASSWORD), None);
    let first = applied_with_kubectl(config.clone());
    let outcome = admit_item(&keys, item_request("CREATE", &first)).await;
    let stored = outcome.patched(&first);

    // kubectl's three-way merge of the same file: the plaintext comes back, and
    // spec.sealed.password, in the last-applied annotation but not in the file, goes.
    let mut again = applied_with_kubectl(config);
    again["spec"]["sealed"] = json!({});
    let mut update = item_request("UPDATE", &again);
    update["oldObject"] = stored.clone();
    let outcome = admit_item(&keys, update).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    outcome.assert_no_plaintext(PASSWORD);
    assert_eq!(
        outcome.patched(&again),
        stored,
        "same sealed value, same annotation"
    );

    // A new password is sealed afresh.
    let changed = applied_with_kubectl(credential_set(Some("a-new-password-0042"), None));
    let mut update = item_request("UPDATE", &changed);
    update["oldObject"] = stored.clone();
    let outcome = admit_item(&keys, update).await;
    outcome.assert_no_plaintext("a-new-password-0042");
    let sealed = outcome.patched(&changed)["spec"]["sealed"]["password"].clone();
    assert_ne!(sealed, stored["spec"]["sealed"]["password"]);
    assert_eq!(
        open(&keys, ITEM, sealed.as_str().expect("sealed")).await,
        "a-new-password-0042"
    );
}

#[tokio::test]
async fn every_write_only_field_of_an_archive_is_sealed_into_its_own_slot() {
    let keys = keys().await;
    let archive = STANDARD.encode(b"not really pkcs12, but the webhook does not care");
    let object = json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "client-cert", "namespace": NS},
        "spec": {"type": "CertificateArchive", "section": "checkout", "allowedHosts": ["shop.example.com"],
                 "certificateArchive": {"archive": archive, "password": PASSWORD},
                 "sealed": {}},
    });
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    outcome.assert_no_plaintext(PASSWORD);
    outcome.assert_no_plaintext(&archive);
    let stored = outcome.patched(&object);
    assert_eq!(stored["spec"]["certificateArchive"]["archive"], SECRET_MASK);
    assert_eq!(
        stored["spec"]["certificateArchive"]["password"],
        SECRET_MASK
    );
    assert!(stored["spec"]["sealed"]["archive"].is_string());
    assert!(stored["spec"]["sealed"]["archivePassword"].is_string());
}

#[tokio::test]
async fn an_item_with_only_sealed_values_passes_unchanged() {
    let keys = keys().await;
    let sealed = seal_for(&keys, ITEM, PASSWORD).await;
    for password in [None, Some(SECRET_MASK)] {
        let object = applied_with_kubectl(credential_set(password, Some(&sealed)));
        let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
        assert!(outcome.response.allowed, "{}", outcome.message());
        assert!(
            outcome.patch.is_none(),
            "no drift for GitOps: {:?}",
            outcome.patch
        );
        assert!(outcome.response.warnings.is_none());
        assert!(!outcome.wire.contains("\"patch\""), "{}", outcome.wire);
    }
}

#[tokio::test]
async fn an_unchanged_sealed_value_is_not_checked_again_on_update() {
    let keys = keys().await;
    let sealed = seal_for(&keys, ITEM, PASSWORD).await;
    // The keys it was sealed under are gone (e.g. past retention): a label change must
    // still go through, while a new sealed value under them would not.
    let stale = sealed.replacen("mv2.s.1.", "mv2.s.7.", 1);
    let old = credential_set(Some(SECRET_MASK), Some(&stale));
    let mut new = old.clone();
    new["metadata"]["labels"] = json!({"team": "checkout"});
    let mut update = item_request("UPDATE", &new);
    update["oldObject"] = old;
    let outcome = admit_item(&keys, update).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    assert!(outcome.patch.is_none());
}

#[tokio::test]
async fn a_sealed_value_copied_from_another_item_is_refused_naming_the_field() {
    let keys = keys().await;
    let copied = seal_for(&keys, "other-login", PASSWORD).await;
    // A real value: it opens for the item it was sealed for.
    assert_eq!(open(&keys, "other-login", &copied).await, PASSWORD);
    let object = credential_set(Some(SECRET_MASK), Some(&copied));
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 422);
    let message = outcome.message();
    assert!(message.contains("spec.sealed.password"), "{message}");
    assert!(message.contains("\"shop-login\""), "{message}");
    assert!(message.contains("does not open"), "{message}");
    outcome.assert_no_plaintext(PASSWORD);

    // The webhook cannot open a copy, so the check above could not fail. What a refused
    // copy does carry through the webhook is the plaintext beside it: here the password of
    // an archive sealed for another item, in the spec and in kubectl's copy of it.
    let archive_password = "archive-password-beside-a-copy-5c1d";
    let copied = seal_field(
        &keys,
        "CertificateArchive",
        "other-cert",
        "archive",
        &STANDARD.encode(b"someone else's PKCS#12"),
    )
    .await;
    let object = applied_with_kubectl(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "client-cert", "namespace": NS},
        "spec": {"type": "CertificateArchive", "section": "checkout", "allowedHosts": ["shop.example.com"],
                 "certificateArchive": {"archive": SECRET_MASK, "password": archive_password},
                 "sealed": {"archive": copied}},
    }));
    let request = item_request("CREATE", &object);
    let sent = String::from_utf8(body(request.clone())).expect("utf-8");
    assert_eq!(
        sent.matches(archive_password).count(),
        2,
        "the plaintext reaches the webhook, in the spec and in last-applied"
    );
    let outcome = admit_item(&keys, request).await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 422);
    let message = outcome.message();
    assert!(message.contains("spec.sealed.archive "), "{message}");
    assert!(message.contains("\"client-cert\""), "{message}");
    assert!(message.contains("does not open"), "{message}");
    assert!(outcome.patch.is_none());
    outcome.assert_no_plaintext(archive_password);
}

#[tokio::test]
async fn a_sealed_value_naming_an_unknown_key_version_is_refused() {
    let keys = keys().await;
    let sealed = seal_for(&keys, ITEM, PASSWORD).await;
    let unknown = sealed.replacen("mv2.s.1.", "mv2.s.9.", 1);
    let object = credential_set(None, Some(&unknown));
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(!outcome.response.allowed);
    let message = outcome.message();
    assert!(message.contains("spec.sealed.password"), "{message}");
    assert!(message.contains("sealing key version 9"), "{message}");

    let malformed = credential_set(None, Some("mv2.s.1.not*base64"));
    let outcome = admit_item(&keys, item_request("CREATE", &malformed)).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("malformed sealed value"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn a_dry_run_creates_no_keys() {
    let keys = keys().await;
    let before = keys.keyring_for(NS).await.expect("keyring");
    let object = applied_with_kubectl(credential_set(Some(PASSWORD), None));
    let mut dry_run = item_request("CREATE", &object);
    dry_run["dryRun"] = json!(true);

    let outcome = admit_item(&keys, dry_run.clone()).await;
    assert!(!outcome.response.allowed);
    let message = outcome.message();
    assert!(message.contains("do not exist yet"), "{message}");
    assert!(message.contains("retry without --dry-run"), "{message}");
    outcome.assert_no_plaintext(PASSWORD);
    assert_eq!(
        keys.keyring_for(NS).await.expect("keyring"),
        before,
        "nothing was written"
    );

    // Once the keys exist a dry run seals (sealing is pure) and still writes nothing.
    keys.ensure_environment(NS).await.expect("environment");
    let with_keys = keys.keyring_for(NS).await.expect("keyring");
    let outcome = admit_item(&keys, dry_run).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    outcome.assert_no_plaintext(PASSWORD);
    assert!(outcome.patch.is_some());
    assert_eq!(keys.keyring_for(NS).await.expect("keyring"), with_keys);
}

#[tokio::test]
async fn a_too_long_or_empty_password_is_refused_without_echoing_it() {
    let keys = keys().await;
    let long = format!("{PASSWORD}{}", "x".repeat(2000));
    for (password, expected) in [
        (long.as_str(), "too long: at most 1024 bytes"),
        ("", "is empty"),
    ] {
        let object = credential_set(Some(password), None);
        let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
        assert!(!outcome.response.allowed);
        assert!(
            outcome.message().contains("spec.credentialSet.password"),
            "{}",
            outcome.message()
        );
        assert!(
            outcome.message().contains(expected),
            "{}",
            outcome.message()
        );
        if !password.is_empty() {
            outcome.assert_no_plaintext(password);
        }
    }
    let keyring = keys.keyring_for(NS).await.expect("keyring");
    assert!(
        !keyring.environments.contains_key(NS),
        "refused before any side effect"
    );
}

#[tokio::test]
async fn a_sealed_value_over_its_limits_is_refused_naming_the_field() {
    use monivault::api::SecretField;
    let keys = keys().await;
    let limit = SecretField::Password.max_sealed_len();
    // Too long to be a sealed password: refused before it is opened.
    let long = format!("mv2.s.1.{}", "A".repeat(limit));
    let outcome = admit_item(
        &keys,
        item_request("CREATE", &credential_set(None, Some(&long))),
    )
    .await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 422);
    assert_eq!(
        outcome.message(),
        format!("spec.sealed.password is too long: at most {limit} characters")
    );
    // Sealed by hand around the limit that monivault seal checks: refused once opened.
    let max = SecretField::Password.max_plaintext_len();
    let at_limit = seal_for(&keys, ITEM, &"p".repeat(max)).await;
    assert!(at_limit.len() <= limit);
    let outcome = admit_item(
        &keys,
        item_request("CREATE", &credential_set(None, Some(&at_limit))),
    )
    .await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    let over = seal_for(&keys, ITEM, &format!("{PASSWORD}{}", "p".repeat(max))).await;
    let outcome = admit_item(
        &keys,
        item_request("CREATE", &credential_set(None, Some(&over))),
    )
    .await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 422);
    assert!(
        outcome.message().starts_with(&format!(
            "spec.sealed.password holds a value longer than spec.credentialSet.password accepts: at most {max} bytes"
        )),
        "{}",
        outcome.message()
    );
    outcome.assert_no_plaintext(PASSWORD);
}

#[tokio::test]
async fn a_plaintext_in_the_wrong_place_is_refused_without_echoing_it() {
    let keys = keys().await;
    let mut object = credential_set(Some(PASSWORD), None);
    // `secret: <token>` instead of `secret: {value: <token>}`.
    object["spec"]["secret"] = json!(PASSWORD);
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("expected struct SecretSpec"),
        "{}",
        outcome.message()
    );
    outcome.assert_no_plaintext(PASSWORD);

    // A field of another type's, holding a plaintext.
    let mut object = credential_set(Some(SECRET_MASK), None);
    object["spec"]["secret"] = json!({"value": PASSWORD});
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("spec.secret.value"),
        "{}",
        outcome.message()
    );
    outcome.assert_no_plaintext(PASSWORD);
}

/// Re-applies `guess` as `user` over the stored item; the sealed value that comes out.
async fn reapply_as(
    keys: &Keys<MemoryStore>,
    authorizer: &impl Authorizer,
    user: &str,
    stored: &Value,
    guess: &str,
) -> String {
    let again = credential_set(Some(guess), stored["spec"]["sealed"]["password"].as_str());
    let mut update = request("VaultItem", "vaultitems", "UPDATE", user, &again);
    update["oldObject"] = stored.clone();
    update["dryRun"] = json!(true);
    let review = webhook::review(&body(update), |req| async move {
        seal_vault_item(keys, authorizer, &req).await
    })
    .await;
    let outcome = Outcome::new(review.response.expect("a response"));
    assert!(outcome.response.allowed, "{}", outcome.message());
    outcome.assert_no_plaintext(guess);
    outcome.patched(&again)["spec"]["sealed"]["password"]
        .as_str()
        .expect("sealed")
        .to_owned()
}

#[tokio::test]
async fn mallory_cannot_tell_a_right_guess_from_a_wrong_one() {
    let keys = keys().await;
    let created = credential_set(Some(PASSWORD), None);
    let stored = admit_item(&keys, item_request("CREATE", &created))
        .await
        .patched(&created);
    let kept = stored["spec"]["sealed"]["password"]
        .as_str()
        .expect("sealed");
    let grants = shop_grants();
    // The right guess and a wrong one both come back freshly sealed: nothing tells them
    // apart, so a dry run answers no question about the password.
    let right = reapply_as(&keys, &grants, "mallory", &stored, PASSWORD).await;
    let wrong = reapply_as(&keys, &grants, "mallory", &stored, "wrong-guess-1").await;
    assert_ne!(right, kept);
    assert_ne!(wrong, kept);
    assert_eq!(open(&keys, ITEM, &right).await, PASSWORD);
    // alice may use the item: her repeated apply keeps the stored value (no drift).
    assert_eq!(
        reapply_as(&keys, &grants, "alice", &stored, PASSWORD).await,
        kept
    );
    assert_ne!(
        reapply_as(&keys, &grants, "alice", &stored, "wrong-guess-1").await,
        kept
    );
}

#[tokio::test]
async fn a_sealed_value_of_the_old_format_is_refused_with_the_way_out() {
    let keys = keys().await;
    let sealed = seal_for(&keys, ITEM, PASSWORD).await;
    let outdated = sealed.replacen("mv2.s.", "mv1.s.", 1);
    let object = credential_set(None, Some(&outdated));
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(!outcome.response.allowed);
    let message = outcome.message();
    assert!(message.contains("format mv1"), "{message}");
    assert!(
        message.contains(
            "monivault seal -n shop --section checkout --item shop-login --field password"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn a_sealed_value_from_another_section_is_refused() {
    let keys = keys().await;
    let keyring = keys.ensure_environment(NS).await.expect("keys");
    let root = keys.root_for(&keyring).await.expect("root");
    let public_key = keyring.sealing_public_key(&root, NS).expect("public key");
    let payments = SealBinding {
        namespace: NS,
        section: "payments",
        item_type: "CredentialSet",
        item: ITEM,
        field: "password",
    };
    let sealed = seal(&public_key, &payments, PASSWORD.as_bytes()).expect("seals");
    // The item recreated in checkout with the value copied from payments.
    let object = credential_set(None, Some(&sealed));
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("does not open"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn a_plaintext_hidden_in_a_duplicate_key_or_a_mistyped_field_leaves_no_trace() {
    let keys = keys().await;
    let object = credential_set(Some(PASSWORD), None);
    let hidden = [
        // kubectl's parser keeps the last of two keys; other clients write this.
        format!(
            r#"{{"apiVersion":"monivault.io/v1alpha1","kind":"VaultItem","metadata":{{"name":"{ITEM}","namespace":"{NS}"}},"spec":{{"type":"CredentialSet","section":"checkout","allowedHosts":["shop.example.com"],"credentialSet":{{"username":"bot","password":"{PASSWORD}","password":"*****"}}}}}}"#
        ),
        // Applied with field validation off: pruned from spec, kept in the annotation.
        json!({"apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
               "metadata": {"name": ITEM, "namespace": NS},
               "spec": {"type": "CredentialSet", "section": "checkout",
                        "allowedHosts": ["shop.example.com"],
                        "credentialSet": {"username": "bot", "password": PASSWORD,
                                          "Password": PASSWORD}}})
        .to_string(),
    ];
    for text in hidden {
        let mut applied = object.clone();
        applied["metadata"]["annotations"] = json!({ LAST_APPLIED: text });
        let outcome = admit_item(&keys, item_request("CREATE", &applied)).await;
        assert!(outcome.response.allowed, "{}", outcome.message());
        let stored = outcome.patched(&applied);
        let annotation = stored["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .expect("set");
        assert!(!annotation.contains(PASSWORD), "{annotation}");
        assert!(
            !serde_json::to_string(&stored)
                .expect("json")
                .contains(PASSWORD)
        );
        let warnings = outcome.response.warnings.clone().unwrap_or_default();
        assert!(
            warnings.iter().any(|w| w.contains("replaced")),
            "{warnings:?}"
        );
    }
}

#[tokio::test]
async fn an_unreadable_last_applied_annotation_is_replaced_not_kept() {
    let keys = keys().await;
    let mut object = credential_set(Some(PASSWORD), None);
    object["metadata"]["annotations"] = json!({ LAST_APPLIED: format!("{{truncated {PASSWORD}") });
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    outcome.assert_no_plaintext(PASSWORD);
    let stored = outcome.patched(&object);
    let last_applied: Value = serde_json::from_str(
        stored["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .expect("set"),
    )
    .expect("replaced by JSON");
    assert_eq!(
        last_applied["spec"]["credentialSet"]["password"],
        SECRET_MASK
    );
    assert_eq!(last_applied["spec"]["sealed"], stored["spec"]["sealed"]);
    let warnings = outcome.response.warnings.clone().unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w.contains(LAST_APPLIED)),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn an_item_without_allowed_hosts_gets_a_warning() {
    let keys = keys().await;
    let sealed = seal_for(&keys, ITEM, PASSWORD).await;
    let mut object = credential_set(None, Some(&sealed));
    object["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("allowedHosts");
    let outcome = admit_item(&keys, item_request("CREATE", &object)).await;
    assert!(outcome.response.allowed);
    assert!(outcome.patch.is_none());
    let warnings = outcome.response.warnings.clone().unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w.contains("no allowedHosts")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn deletes_status_writes_and_other_kinds_pass_through_or_are_refused() {
    let keys = keys().await;
    let object = credential_set(Some(SECRET_MASK), Some("mv2.s.1.AAAA"));
    let mut delete = item_request("DELETE", &object);
    delete["oldObject"] = object.clone();
    delete["object"] = Value::Null;
    let outcome = admit_item(&keys, delete).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    assert!(outcome.patch.is_none());

    let mut status = item_request("UPDATE", &object);
    status["subResource"] = json!("status");
    assert!(admit_item(&keys, status).await.response.allowed);

    // Registered for the wrong resource by mistake: refuse rather than wave through.
    let pod = request("Pod", "pods", "CREATE", "alice", &object);
    let outcome = admit_item(&keys, pod).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("VaultItems only"),
        "{}",
        outcome.message()
    );
    let outcome = authorize(request(
        "VaultItem",
        "vaultitems",
        "CREATE",
        "alice",
        &object,
    ))
    .await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("Monitors and MonitorRuns only"),
        "{}",
        outcome.message()
    );
    assert!(
        outcome.message().contains("got a VaultItem;"),
        "{}",
        outcome.message()
    );

    // A kind that is no kind name is not echoed: the request may carry anything there
    // (found by the admission property test with the plaintext as the kind's group).
    let mut odd = request("Pod", "pods", "CREATE", "alice", &object);
    odd["kind"] = json!({"group": PASSWORD, "version": "v1", "kind": PASSWORD});
    for outcome in [admit_item(&keys, odd.clone()).await, authorize(odd).await] {
        assert!(!outcome.response.allowed);
        assert!(
            outcome.message().contains("got an object of another kind;"),
            "{}",
            outcome.message()
        );
        outcome.assert_no_plaintext(PASSWORD);
    }
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_clean_errors() {
    let keys = keys().await;
    let answer = |body: Vec<u8>| {
        let keys = &keys;
        async move {
            let review: AdmissionReview<DynamicObject> = webhook::review(&body, |req| async move {
                seal_vault_item(keys, &Everyone, &req).await
            })
            .await;
            let wire = serde_json::to_string(&review).expect("serializes");
            (review.response.expect("a response"), wire)
        }
    };
    let valid = body(item_request(
        "CREATE",
        &credential_set(Some(PASSWORD), None),
    ));
    let mut oversized = valid.clone();
    oversized.resize(MAX_BODY_BYTES + 1, b' ');
    let mut wrong_field_type = serde_json::from_slice::<Value>(&valid).expect("json");
    wrong_field_type["request"]["dryRun"] = json!(PASSWORD);
    let mut no_request = serde_json::from_slice::<Value>(&valid).expect("json");
    no_request
        .as_object_mut()
        .expect("object")
        .remove("request");

    let cases: Vec<(&str, Vec<u8>, &str, u16)> = vec![
        ("empty", Vec::new(), "not JSON", 400),
        (
            "not json",
            format!("{{\"password\": {PASSWORD}").into_bytes(),
            "not JSON",
            400,
        ),
        ("binary", vec![0xff, 0xfe, 0x00, 0x01], "not JSON", 400),
        (
            "a JSON string",
            json!(PASSWORD).to_string().into_bytes(),
            "expected kind AdmissionReview",
            400,
        ),
        (
            "wrong kind",
            json!({"kind": "Pod", "apiVersion": "v1"})
                .to_string()
                .into_bytes(),
            "expected kind AdmissionReview",
            400,
        ),
        (
            "no request",
            no_request.to_string().into_bytes(),
            "has no request",
            400,
        ),
        (
            "a field of the wrong type",
            wrong_field_type.to_string().into_bytes(),
            "does not parse",
            400,
        ),
        ("oversized", oversized, "over the limit", 413),
    ];
    for (case, body, expected, code) in cases {
        let (response, wire) = answer(body).await;
        assert!(!response.allowed, "{case}");
        assert_eq!(response.result.code, code, "{case}");
        assert!(
            response.result.message.contains(expected),
            "{case}: {}",
            response.result.message
        );
        assert!(!wire.contains(PASSWORD), "{case}: {wire}");
        assert!(
            wire.contains("\"kind\":\"AdmissionReview\""),
            "{case}: {wire}"
        );
    }
    // When the uid can be read, it is echoed, so the API server can match the answer.
    let (response, _) = answer(wrong_field_type.to_string().into_bytes()).await;
    assert_eq!(response.uid, "7f0e2b4c-uid");
}

// ---------------------------------------------------------------------------------------
// The Monitor / MonitorRun authorization

/// Everyone may do everything: for tests about sealing, not about authorization.
struct Everyone;

impl Authorizer for Everyone {
    async fn allowed(&self, _: &UserInfo, _: &AccessCheck<'_>) -> Result<bool, AuthorizeError> {
        Ok(true)
    }
}

/// Grants, as (user, verb, resource, name).
struct Grants(BTreeSet<(String, String, String, String)>);

impl Grants {
    /// Grants of `use`, as (user, resource, name).
    fn new(grants: &[(&str, &str, &str)]) -> Self {
        let with_use: Vec<_> = grants.iter().map(|(u, r, n)| (*u, "use", *r, *n)).collect();
        Grants::with_verbs(&with_use)
    }

    fn with_verbs(grants: &[(&str, &str, &str, &str)]) -> Self {
        Grants(
            grants
                .iter()
                .map(|(u, v, r, n)| (u.to_string(), v.to_string(), r.to_string(), n.to_string()))
                .collect(),
        )
    }
}

impl Authorizer for Grants {
    async fn allowed(
        &self,
        user: &UserInfo,
        check: &AccessCheck<'_>,
    ) -> Result<bool, AuthorizeError> {
        assert_eq!(check.namespace, NS);
        let key = (
            user.username.clone().unwrap_or_default(),
            check.verb.to_owned(),
            check.resource.as_str().to_owned(),
            check.name.to_owned(),
        );
        Ok(self.0.contains(&key))
    }
}

/// The shop namespace: its items (name → section), saved monitors and unfinished inline
/// runs.
struct Shop {
    sections: BTreeMap<String, String>,
    monitors: BTreeMap<String, MonitorSpec>,
    runs: BTreeMap<String, MonitorSpec>,
    /// Unfinished runs of each saved monitor, by monitor.
    runs_of: BTreeMap<String, usize>,
    terminating: bool,
}

impl Shop {
    fn new() -> Self {
        Shop {
            sections: BTreeMap::from([
                (ITEM.to_owned(), "checkout".to_owned()),
                ("shop-api-token".to_owned(), "checkout".to_owned()),
                ("bank-token".to_owned(), "payments".to_owned()),
            ]),
            monitors: BTreeMap::from([(
                "shop".to_owned(),
                serde_json::from_value(shop_monitor_spec("https://shop.example.com/login"))
                    .expect("spec"),
            )]),
            runs: BTreeMap::new(),
            runs_of: BTreeMap::new(),
            terminating: false,
        }
    }
}

impl DeleteLookup for Shop {
    async fn namespace_terminating(&self, namespace: &str) -> Result<bool, AuthorizeError> {
        assert_eq!(namespace, NS);
        Ok(self.terminating)
    }

    async fn monitors(
        &self,
        namespace: &str,
    ) -> Result<Vec<(String, MonitorSpec)>, AuthorizeError> {
        assert_eq!(namespace, NS);
        Ok(self.monitors.clone().into_iter().collect())
    }

    async fn unfinished_inline_runs(
        &self,
        namespace: &str,
    ) -> Result<Vec<(String, MonitorSpec)>, AuthorizeError> {
        assert_eq!(namespace, NS);
        Ok(self.runs.clone().into_iter().collect())
    }

    async fn live_items_in_section(
        &self,
        namespace: &str,
        section: &str,
    ) -> Result<Vec<String>, AuthorizeError> {
        assert_eq!(namespace, NS);
        Ok(self
            .sections
            .iter()
            .filter(|(_, s)| s.as_str() == section)
            .map(|(item, _)| item.clone())
            .collect())
    }
}

impl ItemLookup for Shop {
    async fn item(&self, namespace: &str, name: &str) -> Result<Option<ItemFacts>, AuthorizeError> {
        assert_eq!(namespace, NS);
        Ok(self.sections.get(name).map(|section| ItemFacts {
            section: section.clone(),
            uid: format!("uid-{name}"),
        }))
    }
}

impl MonitorLookup for Shop {
    async fn monitor_spec(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<MonitorSpec>, AuthorizeError> {
        assert_eq!(namespace, NS);
        Ok(self.monitors.get(name).cloned())
    }

    async fn unfinished_runs(
        &self,
        namespace: &str,
        monitor: Option<&str>,
    ) -> Result<usize, AuthorizeError> {
        assert_eq!(namespace, NS);
        Ok(match monitor {
            Some(name) => self.runs_of.get(name).copied().unwrap_or(0),
            None => self.runs.len(),
        })
    }
}

fn shop_monitor_spec(url: &str) -> Value {
    json!({
        "url": url,
        "auth": {"basic": {"credentialSet": ITEM}},
        "headers": [{"name": "X-Api-Key", "value": "{{@VaultItem.shop-api-token.Value}}"}],
    })
}

fn monitor(spec: Value) -> Value {
    json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "shop", "namespace": NS},
        "spec": spec,
    })
}

fn monitor_update(user: &str, old: Value, new: Value) -> Value {
    let mut update = request("Monitor", "monitors", "UPDATE", user, &new);
    update["oldObject"] = old;
    update
}

fn monitor_run(spec: Value) -> Value {
    json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
        "metadata": {"name": "test-now-1", "namespace": NS},
        "spec": spec,
    })
}

async fn authorize_with(authorizer: &impl Authorizer, request: Value) -> Outcome {
    authorize_in(Shop::new(), authorizer, request).await
}

async fn authorize_in(shop: Shop, authorizer: &impl Authorizer, request: Value) -> Outcome {
    let review = webhook::review(&body(request), |req| {
        let shop = &shop;
        async move { authorize_monitor_write(authorizer, shop, shop, &req).await }
    })
    .await;
    Outcome::new(review.response.expect("a response"))
}

async fn authorize(request: Value) -> Outcome {
    let grants = Grants::new(&[
        ("alice", "vaultitems", ITEM),
        ("alice", "vaultitems", "shop-api-token"),
        ("bob", "vaultsections", "checkout"),
        ("mallory", "vaultitems", "mallory-token"),
    ]);
    authorize_with(&grants, request).await
}

#[tokio::test]
async fn mallory_cannot_point_the_shop_monitor_at_her_own_host() {
    let old = monitor(shop_monitor_spec("https://shop.example.com/login"));
    let new = monitor(shop_monitor_spec("https://mallory.example.net/collect"));
    let outcome = authorize(monitor_update("mallory", old, new)).await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 403);
    let message = outcome.message();
    assert!(message.contains("\"mallory\""), "{message}");
    // Every item not allowed, sorted.
    assert!(
        message.contains("vault item(s) shop-api-token, shop-login in namespace"),
        "{message}"
    );
}

#[tokio::test]
async fn removing_the_reference_also_needs_use() {
    let old = monitor(shop_monitor_spec("https://shop.example.com/login"));
    let new = monitor(json!({"url": "https://shop.example.com/login"}));
    let outcome = authorize(monitor_update("mallory", old, new)).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("shop-api-token, shop-login"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn adding_an_item_to_another_monitor_needs_use() {
    let mut spec = json!({"url": "https://mallory.example.net/"});
    spec["auth"] = json!({"bearer": {"secret": "bank-token"}});
    let create = request("Monitor", "monitors", "CREATE", "mallory", &monitor(spec));
    let outcome = authorize(create).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("vault item(s) bank-token in"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn use_on_the_item_or_on_the_section_is_enough() {
    for user in ["alice", "bob"] {
        let old = monitor(shop_monitor_spec("https://shop.example.com/login"));
        let new = monitor(shop_monitor_spec("https://shop.example.com/v2/login"));
        let outcome = authorize(monitor_update(user, old, new)).await;
        assert!(outcome.response.allowed, "{user}: {}", outcome.message());
    }
    // bob's section grant does not reach an item of another section.
    let mut spec = shop_monitor_spec("https://shop.example.com/login");
    spec["body"] = json!("token={{@VaultItem.bank-token.Value}}");
    let outcome = authorize(request(
        "Monitor",
        "monitors",
        "CREATE",
        "bob",
        &monitor(spec),
    ))
    .await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("vault item(s) bank-token in"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn an_item_that_does_not_exist_needs_use_by_name() {
    let spec =
        json!({"url": "https://shop.example.com/", "auth": {"bearer": {"secret": "future-token"}}});
    let outcome = authorize(request(
        "Monitor",
        "monitors",
        "CREATE",
        "bob",
        &monitor(spec),
    ))
    .await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("future-token"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn metadata_only_change_by_mallory_is_allowed() {
    let old = monitor(shop_monitor_spec("https://shop.example.com/login"));
    let mut new = old.clone();
    new["metadata"]["labels"] = json!({"owner": "mallory"});
    new["metadata"]["finalizers"] = json!(["example.com/keep"]);
    let outcome = authorize(monitor_update("mallory", old.clone(), new)).await;
    assert!(outcome.response.allowed, "{}", outcome.message());

    // A status write is not checked either.
    let mut status = monitor_update("mallory", old.clone(), old);
    status["subResource"] = json!("status");
    status["object"]["status"] = json!({"state": "Up"});
    let outcome = authorize(status).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
}

#[tokio::test]
async fn a_monitor_without_items_needs_no_grant() {
    let spec = json!({"url": "https://mallory.example.net/", "body": "{{not a placeholder}}"});
    let outcome = authorize(request(
        "Monitor",
        "monitors",
        "CREATE",
        "mallory",
        &monitor(spec),
    ))
    .await;
    assert!(outcome.response.allowed, "{}", outcome.message());
}

#[tokio::test]
async fn an_inline_monitor_run_naming_the_item_is_denied() {
    let spec = json!({"monitor": {"url": "https://mallory.example.net/?p={{@VaultItem.shop-login.Password}}"}});
    let run = request(
        "MonitorRun",
        "monitorruns",
        "CREATE",
        "mallory",
        &monitor_run(spec.clone()),
    );
    let outcome = authorize(run).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("vault item(s) shop-login in"),
        "{}",
        outcome.message()
    );
    assert!(
        outcome.message().contains("this MonitorRun"),
        "{}",
        outcome.message()
    );

    let run = request(
        "MonitorRun",
        "monitorruns",
        "CREATE",
        "alice",
        &monitor_run(spec),
    );
    assert!(authorize(run).await.response.allowed);
}

#[tokio::test]
async fn a_run_of_the_shop_monitor_needs_use_on_its_items() {
    let spec = json!({"monitorRef": {"name": "shop"}});
    let run = request(
        "MonitorRun",
        "monitorruns",
        "CREATE",
        "mallory",
        &monitor_run(spec.clone()),
    );
    let outcome = authorize(run).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("shop-api-token, shop-login"),
        "{}",
        outcome.message()
    );

    let run = request(
        "MonitorRun",
        "monitorruns",
        "CREATE",
        "bob",
        &monitor_run(spec),
    );
    assert!(authorize(run).await.response.allowed);

    let missing = json!({"monitorRef": {"name": "nope"}});
    let run = request(
        "MonitorRun",
        "monitorruns",
        "CREATE",
        "alice",
        &monitor_run(missing),
    );
    let outcome = authorize(run).await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome.message().contains("no such Monitor"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn a_hostile_placeholder_is_refused_with_its_position() {
    let cases = [
        (
            json!({"url": "https://shop.example.com/", "body": "ok {{ @VaultItem.shop-login.Password}}"}),
            "spec.body: placeholder at offset 3",
        ),
        (
            json!({"url": "https://shop.example.com/", "headers": [{"name": "A", "value": "x"}, {"name": "B", "value": "{{@VaultItem.shop-login.Password"}]}),
            "spec.headers[1].value: placeholder at offset 0: unterminated",
        ),
        (
            json!({"url": "https://shop.example.com/?{{@VaultItem.{{@VaultItem.a.Value}}.Value}}"}),
            "spec.url: placeholder at offset 26",
        ),
        (
            json!({"url": "https://shop.example.com/", "body": "{{@Env.HOME.Value}}"}),
            "unknown source",
        ),
    ];
    for (spec, expected) in cases {
        let outcome = authorize(request(
            "Monitor",
            "monitors",
            "CREATE",
            "alice",
            &monitor(spec),
        ))
        .await;
        assert!(!outcome.response.allowed);
        assert_eq!(outcome.response.result.code, 422);
        assert!(
            outcome.message().contains(expected),
            "{expected}: {}",
            outcome.message()
        );
    }
}

#[tokio::test]
async fn a_monitor_over_a_size_limit_is_refused_naming_the_field_not_the_value() {
    let token = "tok-s3cret-literal";
    let header = |value: String| json!({"name": "X-Api-Key", "value": value});
    let headers = |n: usize| -> Vec<Value> { (0..n).map(|_| header("ok".into())).collect() };
    let cases = [
        (
            json!({"url": "https://shop.example.com/", "headers": headers(33)}),
            "spec.headers has 33 entries: at most 32",
        ),
        (
            json!({"url": "https://shop.example.com/", "headers": [header(format!("{token}{}", "x".repeat(8192)))]}),
            "spec.headers[0].value is 8210 characters long: at most 8192",
        ),
        (
            json!({"url": "https://shop.example.com/", "body": format!("{token}{}", "x".repeat(65536))}),
            "spec.body is 65554 characters long: at most 65536",
        ),
        (
            json!({"url": format!("https://shop.example.com/?{}", "a".repeat(2048))}),
            "spec.url is 2074 characters long: at most 2048",
        ),
    ];
    for (spec, expected) in cases {
        for (kind, resource, object, prefix) in [
            ("Monitor", "monitors", monitor(spec.clone()), "spec."),
            (
                "MonitorRun",
                "monitorruns",
                monitor_run(json!({"monitor": spec.clone()})),
                "spec.monitor.",
            ),
        ] {
            let expected = expected.replacen("spec.", prefix, 1);
            let outcome = authorize(request(kind, resource, "CREATE", "alice", &object)).await;
            assert!(!outcome.response.allowed, "{expected}");
            assert_eq!(outcome.response.result.code, 422);
            assert!(
                outcome.message().contains(&expected),
                "{expected}: {}",
                outcome.message()
            );
            assert!(!outcome.wire.contains("s3cret"), "{}", outcome.message());
        }
    }
    // Exactly at the limits: admitted.
    let spec = json!({
        "url": format!("https://shop.example.com/?{}", "a".repeat(2048 - 26)),
        "headers": (0..32).map(|_| header("é".repeat(8192))).collect::<Vec<_>>(),
        "body": "é".repeat(65536),
    });
    let outcome = authorize(request(
        "Monitor",
        "monitors",
        "CREATE",
        "alice",
        &monitor(spec),
    ))
    .await;
    assert!(outcome.response.allowed, "{}", outcome.message());
}

#[tokio::test]
async fn too_many_items_or_placeholders_in_one_monitor_are_refused() {
    let items = |n: usize| -> String {
        (0..n)
            .map(|i| format!("{{{{@VaultItem.item-{i}.Value}}}}"))
            .collect()
    };
    let everyone = Everyone;
    let at = authorize_with(
        &everyone,
        request(
            "Monitor",
            "monitors",
            "CREATE",
            "alice",
            &monitor(json!({"url": "https://shop.example.com/", "body": items(16)})),
        ),
    )
    .await;
    assert!(at.response.allowed, "{}", at.message());
    let over = authorize_with(
        &everyone,
        request(
            "Monitor",
            "monitors",
            "CREATE",
            "alice",
            &monitor(json!({"url": "https://shop.example.com/", "body": items(17)})),
        ),
    )
    .await;
    assert!(!over.response.allowed);
    assert_eq!(over.response.result.code, 422);
    assert!(
        over.message()
            .contains("spec.body: placeholder at offset 0: more than 16 distinct vault items"),
        "{}",
        over.message()
    );

    let many = "{{@VaultItem.shop-login.Password}}".repeat(64);
    let spec = |extra: &str| {
        json!({"url": format!("https://shop.example.com/{extra}"), "headers": [
            {"name": "A", "value": many}, {"name": "B", "value": many}]})
    };
    let at = authorize(request(
        "Monitor",
        "monitors",
        "CREATE",
        "alice",
        &monitor(spec("")),
    ))
    .await;
    assert!(at.response.allowed, "{}", at.message());
    let over = authorize(request(
        "Monitor",
        "monitors",
        "CREATE",
        "alice",
        &monitor(spec("{{@VaultItem.shop-login.Password}}")),
    ))
    .await;
    assert!(!over.response.allowed);
    assert!(
        over.message()
            .contains("spec.headers[1].value: placeholder at offset 0: more than 128 placeholders in one monitor"),
        "{}",
        over.message()
    );
}

#[tokio::test]
async fn a_monitor_may_have_only_so_many_unfinished_runs() {
    use monivault::api::monitor_run::MAX_UNFINISHED_RUNS_PER_MONITOR as MAX;
    let grants = Grants::new(&[
        ("alice", "vaultitems", ITEM),
        ("alice", "vaultitems", "shop-api-token"),
    ]);
    let by_ref = || monitor_run(json!({"monitorRef": {"name": "shop"}}));
    let inline = || monitor_run(json!({"monitor": {"url": "https://shop.example.com/"}}));
    let with_runs = |of_shop: usize, inline: usize| {
        let mut shop = Shop::new();
        shop.runs_of.insert("shop".into(), of_shop);
        let spec: MonitorSpec =
            serde_json::from_value(json!({"url": "https://shop.example.com/"})).expect("spec");
        shop.runs = (0..inline)
            .map(|i| (format!("run-{i}"), spec.clone()))
            .collect();
        shop
    };
    let create =
        |user: &str, run: Value| request("MonitorRun", "monitorruns", "CREATE", user, &run);

    let below = authorize_in(
        with_runs(MAX - 1, MAX - 1),
        &grants,
        create("alice", by_ref()),
    )
    .await;
    assert!(below.response.allowed, "{}", below.message());
    let inline_below =
        authorize_in(with_runs(MAX, MAX - 1), &grants, create("alice", inline())).await;
    assert!(inline_below.response.allowed, "{}", inline_below.message());

    let full = authorize_in(with_runs(MAX, 0), &grants, create("alice", by_ref())).await;
    assert!(!full.response.allowed);
    assert_eq!(full.response.result.code, 403);
    assert!(
        full.message().contains(&format!(
            "Monitor \"shop\" has {MAX} runs that have not finished, and at most {MAX} may wait at once"
        )),
        "{}",
        full.message()
    );
    let inline_full = authorize_in(with_runs(0, MAX), &grants, create("alice", inline())).await;
    assert_eq!(inline_full.response.result.code, 403);
    assert!(
        inline_full
            .message()
            .contains("inline spec.monitor runs count together"),
        "{}",
        inline_full.message()
    );
    // Someone who may not run it learns nothing about the runs waiting.
    let mallory = authorize_in(with_runs(MAX, 0), &grants, create("mallory", by_ref())).await;
    assert_eq!(mallory.response.result.code, 403);
}

#[tokio::test]
async fn independent_reviews_run_concurrently() {
    /// Holds every review until all three items are being checked at once.
    struct Gate(Barrier);
    impl Authorizer for Gate {
        async fn allowed(&self, _: &UserInfo, _: &AccessCheck<'_>) -> Result<bool, AuthorizeError> {
            self.0.wait().await;
            Ok(true)
        }
    }
    let mut spec = shop_monitor_spec("https://shop.example.com/login");
    spec["body"] = json!("{{@VaultItem.bank-token.Value}}");
    let gate = Gate(Barrier::new(3));
    let create = request("Monitor", "monitors", "CREATE", "alice", &monitor(spec));
    let outcome = tokio::time::timeout(Duration::from_secs(10), authorize_with(&gate, create))
        .await
        .expect("the three reviews ran at the same time");
    assert!(outcome.response.allowed);
}

#[tokio::test]
async fn a_failing_review_denies_with_the_reason() {
    struct Down;
    impl Authorizer for Down {
        async fn allowed(&self, _: &UserInfo, _: &AccessCheck<'_>) -> Result<bool, AuthorizeError> {
            Err(AuthorizeError::Other(
                "the API server is unreachable".into(),
            ))
        }
    }
    let create = request(
        "Monitor",
        "monitors",
        "CREATE",
        "alice",
        &monitor(shop_monitor_spec("https://shop.example.com/")),
    );
    let outcome = authorize_with(&Down, create).await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 500);
    assert!(
        outcome.message().contains("unreachable"),
        "{}",
        outcome.message()
    );
}

// ---------------------------------------------------------------------------------------
// The admission stamp and the delete guards, through the routes the server calls

fn shop_grants() -> Grants {
    Grants::new(&[
        ("alice", "vaultitems", ITEM),
        ("alice", "vaultitems", "shop-api-token"),
        ("bob", "vaultsections", "checkout"),
        ("carol", "vaultsections", "payments"),
    ])
}

async fn webhooks_with(shop: Shop) -> Webhooks<MemoryStore, Grants, Shop> {
    Webhooks::with(Arc::new(keys().await), shop_grants(), shop)
}

async fn webhooks() -> Webhooks<MemoryStore, Grants, Shop> {
    webhooks_with(Shop::new()).await
}

async fn admit(webhooks: &impl Admission, route: Route, request: Value) -> Outcome {
    let review = webhook::review(&body(request), |req| webhooks.admit(route, req)).await;
    Outcome::new(review.response.expect("a response"))
}

/// Creates `object` as `user` through both monitor webhooks, as the API server would: the
/// mutating one's patch applied, then the validating one. Returns the stored object.
async fn create_monitor(
    webhooks: &Webhooks<MemoryStore, Grants, Shop>,
    kind: &str,
    user: &str,
    object: Value,
) -> Value {
    let resource = format!("{}s", kind.to_lowercase());
    let create = request(kind, &resource, "CREATE", user, &object);
    let mutated = admit(webhooks, Route::MutateMonitors, create).await;
    assert!(mutated.response.allowed, "{}", mutated.message());
    let stored = mutated.patched(&object);
    let validated = admit(
        webhooks,
        Route::ValidateMonitors,
        request(kind, &resource, "CREATE", user, &stored),
    )
    .await;
    assert!(validated.response.allowed, "{}", validated.message());
    stored
}

fn typed<T: serde::de::DeserializeOwned>(object: &Value) -> T {
    serde_json::from_value(object.clone()).expect("a typed object")
}

#[tokio::test]
async fn an_admitted_monitor_is_stamped_and_the_runner_can_verify_it() {
    let webhooks = webhooks().await;
    let stored = alices_shop_monitor(&webhooks).await;
    let stamp = stored["metadata"]["annotations"][STAMP_ANNOTATION]
        .as_str()
        .expect("stamped");
    assert!(stamp.contains("\"user\":\"alice\""), "{stamp}");

    let keys = webhooks.keys();
    let refs = stamp::verify(keys, &typed::<Monitor>(&stored))
        .await
        .expect("the stamp verifies");
    assert_eq!(refs.user, "alice");
    // Each item with the uid it had when alice was allowed.
    assert_eq!(
        refs.items,
        BTreeMap::from([
            ("shop-api-token".to_owned(), "uid-shop-api-token".to_owned()),
            (ITEM.to_owned(), format!("uid-{ITEM}")),
        ])
    );
}

/// The shop monitor, created by alice through both webhooks.
async fn alices_shop_monitor(webhooks: &Webhooks<MemoryStore, Grants, Shop>) -> Value {
    create_monitor(
        webhooks,
        "Monitor",
        "alice",
        monitor(shop_monitor_spec("https://shop.example.com/login")),
    )
    .await
}

#[tokio::test]
async fn a_stamp_does_not_cover_a_changed_spec_another_name_or_no_stamp() {
    let webhooks = webhooks().await;
    let stored = alices_shop_monitor(&webhooks).await;
    let keys = webhooks.keys();

    // Another mutating webhook, or a direct etcd write, changes the URL after the stamp.
    let mut steered = stored.clone();
    steered["spec"]["url"] = json!("https://mallory.example.net/collect");
    let validated = admit(
        &webhooks,
        Route::ValidateMonitors,
        request("Monitor", "monitors", "CREATE", "alice", &steered),
    )
    .await;
    assert!(!validated.response.allowed);
    assert_eq!(validated.response.result.code, 403);
    assert!(
        validated.message().contains("another mutating webhook"),
        "{}",
        validated.message()
    );
    let error = stamp::verify(keys, &typed::<Monitor>(&steered))
        .await
        .unwrap_err();
    assert!(matches!(error, StampError::Mismatch { .. }), "{error}");

    // The stamp copied onto a monitor of another name.
    let mut copied = stored.clone();
    copied["metadata"]["name"] = json!("shop-copy");
    let error = stamp::verify(keys, &typed::<Monitor>(&copied))
        .await
        .unwrap_err();
    assert!(matches!(error, StampError::Mismatch { .. }), "{error}");

    // Written while the webhook was bypassed: no stamp at all.
    let bare = monitor(shop_monitor_spec("https://shop.example.com/login"));
    let error = stamp::verify(keys, &typed::<Monitor>(&bare))
        .await
        .unwrap_err();
    assert!(matches!(error, StampError::Missing { .. }), "{error}");
    assert!(error.to_string().contains("apply it again"), "{error}");

    // A stamp made for alice does not pass bob's request.
    let validated = admit(
        &webhooks,
        Route::ValidateMonitors,
        request("Monitor", "monitors", "CREATE", "bob", &stored),
    )
    .await;
    assert!(!validated.response.allowed, "{}", validated.message());

    // A forged stamp that claims fewer items.
    let mut forged = stored.clone();
    let text = stored["metadata"]["annotations"][STAMP_ANNOTATION]
        .as_str()
        .unwrap()
        .replace("\"shop-api-token\":\"uid-shop-api-token\",", "");
    assert!(!text.contains("shop-api-token"), "{text}");
    forged["metadata"]["annotations"][STAMP_ANNOTATION] = json!(text);
    let error = stamp::verify(keys, &typed::<Monitor>(&forged))
        .await
        .unwrap_err();
    assert!(matches!(error, StampError::Mismatch { .. }), "{error}");
}

#[tokio::test]
async fn mallory_is_refused_before_anything_is_stamped() {
    let webhooks = webhooks().await;
    let old = monitor(shop_monitor_spec("https://shop.example.com/login"));
    let new = monitor(shop_monitor_spec("https://mallory.example.net/collect"));
    let outcome = admit(
        &webhooks,
        Route::MutateMonitors,
        monitor_update("mallory", old, new),
    )
    .await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 403);
    assert!(outcome.patch.is_none());
}

#[tokio::test]
async fn a_metadata_only_update_keeps_the_stored_stamp() {
    let webhooks = webhooks().await;
    let stored = alices_shop_monitor(&webhooks).await;
    // mallory adds a label and tries to swap the stamp for one of her own making.
    let mut relabelled = stored.clone();
    relabelled["metadata"]["labels"] = json!({"team": "web"});
    relabelled["metadata"]["annotations"][STAMP_ANNOTATION] = json!("{\"v\":1}");
    let outcome = admit(
        &webhooks,
        Route::MutateMonitors,
        monitor_update("mallory", stored.clone(), relabelled.clone()),
    )
    .await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    let result = outcome.patched(&relabelled);
    assert_eq!(
        result["metadata"]["annotations"][STAMP_ANNOTATION],
        stored["metadata"]["annotations"][STAMP_ANNOTATION]
    );
    assert_eq!(result["metadata"]["labels"]["team"], "web");
    stamp::verify(webhooks.keys(), &typed::<Monitor>(&result))
        .await
        .expect("still verifies");
}

#[tokio::test]
async fn a_run_named_by_generate_name_is_stamped_and_verifies_under_its_final_name() {
    let webhooks = webhooks().await;
    let mut run = monitor_run(json!({"monitorRef": {"name": "shop"}}));
    run["metadata"]["name"] = Value::Null;
    run["metadata"]["generateName"] = json!("test-now-");
    let mut create = request("MonitorRun", "monitorruns", "CREATE", "bob", &run);
    create["name"] = json!("");
    let mutated = admit(&webhooks, Route::MutateMonitors, create).await;
    assert!(mutated.response.allowed, "{}", mutated.message());
    // The API server names it after mutating admission, before validating admission.
    let mut stored = mutated.patched(&run);
    stored["metadata"]["name"] = json!("test-now-x7k2p");
    let validated = admit(
        &webhooks,
        Route::ValidateMonitors,
        request("MonitorRun", "monitorruns", "CREATE", "bob", &stored),
    )
    .await;
    assert!(validated.response.allowed, "{}", validated.message());
    let refs = stamp::verify_run(webhooks.keys(), &typed::<MonitorRun>(&stored))
        .await
        .expect("verifies");
    assert_eq!(refs.user, "bob");
    assert_eq!(refs.items.get(ITEM), Some(&format!("uid-{ITEM}")));

    // The same request again, in the same second: its own stamp (a stamp runs once, so
    // two runs sharing one would fail the second), which verifies too.
    let mut again = request("MonitorRun", "monitorruns", "CREATE", "bob", &run);
    again["name"] = json!("");
    let second = admit(&webhooks, Route::MutateMonitors, again).await;
    assert!(second.response.allowed, "{}", second.message());
    let mut other = second.patched(&run);
    other["metadata"]["name"] = json!("test-now-q9z4m");
    let stamp_of = |o: &Value| o["metadata"]["annotations"][STAMP_ANNOTATION].clone();
    assert_ne!(
        stamp_of(&other),
        stamp_of(&stored),
        "each admission its own stamp"
    );
    let refs2 = stamp::verify_run(webhooks.keys(), &typed::<MonitorRun>(&other))
        .await
        .expect("verifies");
    assert_ne!(refs2.mac, refs.mac);
    // Without its nonce, the stamp does not verify.
    let mut text: Value =
        serde_json::from_str(stamp_of(&other).as_str().expect("text")).expect("json");
    assert!(text["nonce"].is_string(), "{text}");
    text.as_object_mut().expect("object").remove("nonce");
    other["metadata"]["annotations"][STAMP_ANNOTATION] = json!(text.to_string());
    let error = stamp::verify_run(webhooks.keys(), &typed::<MonitorRun>(&other))
        .await
        .unwrap_err();
    assert!(matches!(error, StampError::Mismatch { .. }), "{error}");

    // The same stamp on a name outside the prefix does not verify.
    stored["metadata"]["name"] = json!("other-x7k2p");
    let error = stamp::verify_run(webhooks.keys(), &typed::<MonitorRun>(&stored))
        .await
        .unwrap_err();
    assert!(matches!(error, StampError::Mismatch { .. }), "{error}");
}

#[tokio::test]
async fn stamps_survive_a_root_key_rotation() {
    let webhooks = webhooks().await;
    let stored = alices_shop_monitor(&webhooks).await;
    let keys = webhooks.keys();
    let store = keys.store();
    let roots = store.root_keys().await.unwrap().unwrap();
    let mut next = roots.value;
    next.insert(RootKey::generate(2).unwrap()).unwrap();
    next.set_current(2, UnixMillis::from_secs(0)).unwrap();
    store
        .put_root_keys(&next, Some(&roots.resource_version))
        .await
        .unwrap();
    stamp::verify(keys, &typed::<Monitor>(&stored))
        .await
        .expect("a stamp under root key 1 still verifies");

    // Another replica, started after the rotation, stamps under root key 2; this one has
    // not seen version 2 yet and must load it to verify.
    let replica = Webhooks::with(
        Arc::new(Keys::bootstrap(Arc::new(store.clone())).await.unwrap()),
        shop_grants(),
        Shop::new(),
    );
    let mut renamed = monitor(shop_monitor_spec("https://shop.example.com/login"));
    renamed["metadata"]["name"] = json!("shop-2");
    let stored = create_monitor(&replica, "Monitor", "alice", renamed).await;
    let stamp = stored["metadata"]["annotations"][STAMP_ANNOTATION]
        .as_str()
        .unwrap();
    assert!(stamp.contains("\"key\":2"), "{stamp}");
    stamp::verify(keys, &typed::<Monitor>(&stored))
        .await
        .expect("a stamp under root key 2 verifies on the replica that had only seen 1");
}

fn delete_request(kind: &str, resource: &str, name: &str) -> Value {
    let old = json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": NS},
    });
    deletion(kind, resource, "alice", old)
}

/// `user` deletes the Secret item `name` of `section`, as stored.
fn item_delete(user: &str, name: &str, section: &str) -> Value {
    let old = json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "Secret", "section": section, "secret": {"value": SECRET_MASK},
                 "sealed": {"value": "mv2.s.1.AAAA"}},
    });
    deletion("VaultItem", "vaultitems", user, old)
}

fn deletion(kind: &str, resource: &str, user: &str, old: Value) -> Value {
    let mut delete = request(kind, resource, "DELETE", user, &old);
    delete["object"] = Value::Null;
    delete["oldObject"] = old;
    delete["name"] = delete["oldObject"]["metadata"]["name"].clone();
    delete
}

#[tokio::test]
async fn an_item_a_monitor_uses_and_a_section_with_items_are_not_deleted() {
    let webhooks = webhooks().await;
    let outcome = admit(
        &webhooks,
        Route::ValidateDeletes,
        item_delete("alice", ITEM, "checkout"),
    )
    .await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 409);
    assert!(
        outcome.message().contains("used by Monitor(s) shop"),
        "{}",
        outcome.message()
    );

    let outcome = admit(
        &webhooks,
        Route::ValidateDeletes,
        item_delete("carol", "bank-token", "payments"),
    )
    .await;
    assert!(outcome.response.allowed, "{}", outcome.message());

    let outcome = admit(
        &webhooks,
        Route::ValidateDeletes,
        delete_request("VaultSection", "vaultsections", "checkout"),
    )
    .await;
    assert!(!outcome.response.allowed);
    assert!(
        outcome
            .message()
            .contains("still holds VaultItem(s) shop-api-token, shop-login"),
        "{}",
        outcome.message()
    );
    let outcome = admit(
        &webhooks,
        Route::ValidateDeletes,
        delete_request("VaultSection", "vaultsections", "empty"),
    )
    .await;
    assert!(outcome.response.allowed, "{}", outcome.message());
}

/// `user` writes the shop item with `hosts`, over `old` hosts (`None`: a create).
fn hosts_request(user: &str, old: Option<&[&str]>, hosts: &[&str]) -> Value {
    let item = |hosts: &[&str]| {
        let mut item = credential_set(Some(SECRET_MASK), Some("mv2.s.1.AAAA"));
        item["spec"]["allowedHosts"] = json!(hosts);
        item
    };
    let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
    let mut write = request("VaultItem", "vaultitems", operation, user, &item(hosts));
    if let Some(old) = old {
        write["oldObject"] = item(old);
    }
    write
}

#[tokio::test]
async fn widening_allowed_hosts_needs_allowhosts_and_narrowing_does_not() {
    let grants = Grants::with_verbs(&[
        ("alice", "use", "vaultitems", ITEM),
        ("dana", "allowhosts", "vaultsections", "checkout"),
    ]);
    let webhooks = Webhooks::with(Arc::new(keys().await), grants, Shop::new());
    let shop = ["shop.example.com"];
    // alice may use the item, and still may not send it somewhere new.
    let outcome = admit(
        &webhooks,
        Route::ValidateVaultItems,
        hosts_request("alice", Some(&shop), &["shop.example.com", "evil.example"]),
    )
    .await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 403);
    let message = outcome.message();
    assert!(message.contains("evil.example"), "{message}");
    assert!(!message.contains("shop.example.com,"), "{message}");
    assert!(message.contains("\"allowhosts\""), "{message}");
    // Creating with hosts is widening from nothing.
    let outcome = admit(
        &webhooks,
        Route::ValidateVaultItems,
        hosts_request("alice", None, &shop),
    )
    .await;
    assert_eq!(outcome.response.result.code, 403, "{}", outcome.message());
    // Narrowing, or a host the list already covers, needs nothing.
    for (old, new) in [
        (&["shop.example.com", "api.example.com"][..], &shop[..]),
        (&["*.example.com"][..], &["a.example.com"][..]),
        (&shop[..], &[][..]),
    ] {
        let outcome = admit(
            &webhooks,
            Route::ValidateVaultItems,
            hosts_request("mallory", Some(old), new),
        )
        .await;
        assert!(
            outcome.response.allowed,
            "{old:?} -> {new:?}: {}",
            outcome.message()
        );
    }
    // A CA certificate decides who can read what a monitor sends: replacing it widens too.
    let certificate = |pem: &str| {
        json!({"apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
               "metadata": {"name": "shop-ca", "namespace": NS},
               "spec": {"type": "Certificate", "section": "checkout", "certificate": {"pem": pem}}})
    };
    let swap = |user: &str| {
        let mut update = request(
            "VaultItem",
            "vaultitems",
            "UPDATE",
            user,
            &certificate("theirs"),
        );
        update["oldObject"] = certificate("ours");
        update
    };
    let outcome = admit(&webhooks, Route::ValidateVaultItems, swap("alice")).await;
    assert_eq!(outcome.response.result.code, 403, "{}", outcome.message());
    assert!(outcome.message().contains("CA"), "{}", outcome.message());
    let outcome = admit(&webhooks, Route::ValidateVaultItems, swap("dana")).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    // dana holds allowhosts on the section.
    for request in [
        hosts_request(
            "dana",
            Some(&shop),
            &["shop.example.com", "api.example.com"],
        ),
        hosts_request("dana", None, &shop),
    ] {
        let outcome = admit(&webhooks, Route::ValidateVaultItems, request).await;
        assert!(outcome.response.allowed, "{}", outcome.message());
    }
}

#[tokio::test]
async fn replacing_a_stored_secret_needs_use_and_a_new_ca_needs_allowhosts() {
    let webhooks = webhooks().await;
    let replace = |user: &str| {
        let mut update = request(
            "VaultItem",
            "vaultitems",
            "UPDATE",
            user,
            &credential_set(Some(SECRET_MASK), Some("mv2.s.1.BBBB")),
        );
        update["oldObject"] = credential_set(Some(SECRET_MASK), Some("mv2.s.1.AAAA"));
        update
    };
    let outcome = admit(&webhooks, Route::ValidateVaultItems, replace("mallory")).await;
    assert_eq!(outcome.response.result.code, 403, "{}", outcome.message());
    assert!(
        outcome.message().contains("replace the secret (password)"),
        "{}",
        outcome.message()
    );
    let outcome = admit(&webhooks, Route::ValidateVaultItems, replace("alice")).await;
    assert!(outcome.response.allowed, "{}", outcome.message());

    let ca = json!({"apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "my-ca", "namespace": NS},
        "spec": {"type": "Certificate", "section": "checkout", "certificate": {"pem": "x"}}});
    let outcome = admit(
        &webhooks,
        Route::ValidateVaultItems,
        request("VaultItem", "vaultitems", "CREATE", "bob", &ca),
    )
    .await;
    assert_eq!(outcome.response.result.code, 403, "{}", outcome.message());
    assert!(
        outcome.message().contains("CA certificate"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn deleting_an_item_that_holds_a_secret_needs_use_on_it() {
    let webhooks = webhooks().await;
    // mallory may edit, and would recreate the item in a section she may use.
    let outcome = admit(
        &webhooks,
        Route::ValidateDeletes,
        item_delete("mallory", "bank-token", "payments"),
    )
    .await;
    assert!(!outcome.response.allowed);
    assert_eq!(outcome.response.result.code, 403);
    let message = outcome.message();
    assert!(message.contains("\"mallory\""), "{message}");
    assert!(message.contains("holds a secret"), "{message}");
    assert!(message.contains("vaultsections/payments"), "{message}");
    // alice may use shop-login by name, but not the payments section.
    let outcome = admit(
        &webhooks,
        Route::ValidateDeletes,
        item_delete("alice", "bank-token", "payments"),
    )
    .await;
    assert_eq!(outcome.response.result.code, 403, "{}", outcome.message());
    // A public Certificate item holds no secret: edit is enough.
    let certificate = json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "shop-ca", "namespace": NS},
        "spec": {"type": "Certificate", "section": "payments", "certificate": {"pem": "x"}},
    });
    let outcome = admit(
        &webhooks,
        Route::ValidateDeletes,
        deletion("VaultItem", "vaultitems", "mallory", certificate),
    )
    .await;
    assert!(outcome.response.allowed, "{}", outcome.message());
}

#[tokio::test]
async fn an_unfinished_run_and_a_monitor_being_deleted_still_use_their_items() {
    let mut shop = Shop::new();
    shop.runs.insert(
        "test-now-1".into(),
        serde_json::from_value(json!({
            "url": "https://bank.example.com/",
            "auth": {"bearer": {"secret": "bank-token"}},
        }))
        .expect("spec"),
    );
    let webhooks = webhooks_with(shop).await;
    let outcome = admit(
        &webhooks,
        Route::ValidateDeletes,
        item_delete("carol", "bank-token", "payments"),
    )
    .await;
    assert_eq!(outcome.response.result.code, 409, "{}", outcome.message());
    assert!(
        outcome.message().contains("MonitorRun(s) test-now-1"),
        "{}",
        outcome.message()
    );
}

#[tokio::test]
async fn a_terminating_namespace_is_never_held_up() {
    let mut shop = Shop::new();
    shop.terminating = true;
    let webhooks = webhooks_with(shop).await;
    for request in [
        item_delete("mallory", ITEM, "checkout"),
        delete_request("VaultSection", "vaultsections", "checkout"),
    ] {
        let kind = request["kind"]["kind"].clone();
        let outcome = admit(&webhooks, Route::ValidateDeletes, request).await;
        assert!(outcome.response.allowed, "{kind}: {}", outcome.message());
    }
}

#[tokio::test]
async fn a_section_is_asked_about_once_for_all_its_items() {
    /// Section grants for bob, counting every review by resource.
    struct Counting(std::sync::Mutex<Vec<String>>);
    impl Authorizer for Counting {
        async fn allowed(
            &self,
            _: &UserInfo,
            check: &AccessCheck<'_>,
        ) -> Result<bool, AuthorizeError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}/{}", check.resource, check.name));
            Ok(check.resource.as_str() == "vaultsections" && check.name == "checkout")
        }
    }
    let counting = Counting(std::sync::Mutex::new(Vec::new()));
    let create = request(
        "Monitor",
        "monitors",
        "CREATE",
        "bob",
        &monitor(shop_monitor_spec("https://shop.example.com/")),
    );
    let outcome = authorize_with(&counting, create).await;
    assert!(outcome.response.allowed, "{}", outcome.message());
    let mut asked = counting.0.into_inner().unwrap();
    asked.sort();
    assert_eq!(
        asked,
        [
            "vaultitems/shop-api-token",
            "vaultitems/shop-login",
            "vaultsections/checkout"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Hostile input, generated: any part of a request replaced by any JSON, on every route

fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "[a-zA-Z0-9{}@. \"\\\\*-]{0,16}".prop_map(Value::from),
        Just(json!("{{@VaultItem.shop-login.Password}}")),
        Just(json!("*****")),
        Just(json!("mv2.s.1.AAAA")),
        Just(json!(PASSWORD)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Requests of every kind the webhooks take, before the damage.
fn intact_requests() -> Vec<(Route, Value)> {
    let shop = monitor(shop_monitor_spec("https://shop.example.com/login"));
    vec![
        (
            Route::MutateVaultItems,
            item_request("CREATE", &credential_set(Some(PASSWORD), None)),
        ),
        (
            Route::MutateMonitors,
            monitor_update(
                "alice",
                shop.clone(),
                monitor(shop_monitor_spec("https://shop.example.com/x")),
            ),
        ),
        (
            Route::ValidateMonitors,
            request("Monitor", "monitors", "CREATE", "alice", &shop),
        ),
        (
            Route::MutateMonitors,
            request(
                "MonitorRun",
                "monitorruns",
                "CREATE",
                "bob",
                &monitor_run(json!({"monitorRef": {"name": "shop"}})),
            ),
        ),
        (
            Route::ValidateDeletes,
            delete_request("VaultSection", "vaultsections", "checkout"),
        ),
    ]
}

/// Where the damage goes.
const TARGETS: [&str; 12] = [
    "/kind",
    "/operation",
    "/userInfo",
    "/object",
    "/object/spec",
    "/object/metadata",
    "/object/metadata/annotations",
    "/object/spec/url",
    "/object/spec/headers",
    "/object/spec/credentialSet",
    "/object/spec/sealed",
    "/oldObject",
];

/// Puts the plaintext in two places of `request` that no single damage removes both of:
/// the requester's `extra` (every request has a userInfo) and the object's (or, for a
/// delete, the old object's) annotations. A search for it is then never vacuous.
fn carry_plaintext(request: &mut Value) {
    request["userInfo"]["extra"] = json!({"note": [PASSWORD]});
    let object = if request["object"].is_object() {
        "object"
    } else {
        "oldObject"
    };
    request[object]["metadata"]["annotations"]["note"] = json!(PASSWORD);
}

/// The damage targets whose parent is an object in `request`: only those can be damaged.
fn targets_in(request: &Value) -> Vec<&'static str> {
    TARGETS
        .iter()
        .copied()
        .filter(|pointer| {
            let (parent, _) = pointer.rsplit_once('/').expect("a member pointer");
            request.pointer(parent).is_some_and(Value::is_object)
        })
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 1024,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// No input makes a webhook panic or answer without a response, and the plaintext that
    /// every request carries never comes back, whatever surrounds it.
    #[test]
    fn any_damaged_request_gets_an_answer_and_never_the_plaintext(
        which in 0..5usize,
        target in 0..TARGETS.len(),
        junk in arbitrary_json(),
        route_override in proptest::option::of(0..4usize),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let webhooks = webhooks().await;
            let (route, mut request) = intact_requests().swap_remove(which);
            let route = route_override.map_or(route, |i| Route::ALL[i]);
            carry_plaintext(&mut request);
            let targets = targets_in(&request);
            assert!(targets.len() >= 5, "too few targets in {request}");
            let pointer = targets[target % targets.len()];
            let (parent, key) = pointer.rsplit_once('/').expect("a member pointer");
            let Some(Value::Object(parent)) = request.pointer_mut(parent) else {
                unreachable!("targets_in keeps only object parents");
            };
            parent.insert(key.to_owned(), junk.clone());
            assert_eq!(request.pointer(pointer), Some(&junk), "the damage is applied");
            assert!(
                request.to_string().contains(PASSWORD),
                "the damaged request still carries the plaintext"
            );
            let outcome = admit(&webhooks, route, request).await;
            outcome.assert_no_plaintext(PASSWORD);
            if !outcome.response.allowed {
                assert!(!outcome.message().is_empty(), "a refusal says why");
            }
        });
    }
}
