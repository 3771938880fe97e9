//! The VaultItem webhook and PKCS#12 archives over the limits, without the network: an
//! AdmissionReview in, an AdmissionReview out. A costly archive is refused whether it comes
//! as a plaintext or sealed by hand (as `monivault seal --from-file` seals a raw `.p12`),
//! with 422 and a message naming the limit; nothing is sealed, nothing echoed.

mod archive_bombs;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::admission::AdmissionResponse;
use monivault::crypto::{SealBinding, seal};
use monivault::store::{Keys, MemoryStore};
use monivault::webhook::{self, AccessCheck, AuthorizeError, Authorizer, seal_vault_item};
use serde_json::{Value, json};

use archive_bombs::{BOMB_PASSWORD, hidden_scrypt_bomb, many_bags, scrypt_bomb};

const NS: &str = "shop";
const ITEM: &str = "client-cert";

async fn keys() -> Keys<MemoryStore> {
    Keys::bootstrap(Arc::new(MemoryStore::new()))
        .await
        .expect("bootstrap keys in memory")
}

/// The throwaway archive of `examples/item-certificate-archive.yaml` (password `changeit`).
fn example_archive() -> &'static str {
    include_str!("../examples/item-certificate-archive.yaml")
        .lines()
        .find_map(|l| l.trim().strip_prefix("archive: "))
        .expect("the example archive")
}

/// A CertificateArchive item: the archive as a plaintext (`Ok`) or sealed (`Err`).
fn archive_item(archive: Result<&str, &str>) -> Value {
    let (plain, sealed) = match archive {
        Ok(plaintext) => (plaintext, json!({})),
        Err(sealed) => ("*****", json!({"archive": sealed})),
    };
    json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": ITEM, "namespace": NS},
        "spec": {"type": "CertificateArchive", "section": "checkout",
                 "allowedHosts": ["partners.shop.example.com"],
                 "certificateArchive": {"archive": plain, "password": BOMB_PASSWORD},
                 "sealed": sealed},
    })
}

async fn admit(keys: &Keys<MemoryStore>, object: &Value, old: Option<&Value>) -> AdmissionResponse {
    let request = json!({
        "uid": "5c1d-uid",
        "kind": {"group": "monivault.io", "version": "v1alpha1", "kind": "VaultItem"},
        "resource": {"group": "monivault.io", "version": "v1alpha1", "resource": "vaultitems"},
        "name": ITEM, "namespace": NS,
        "operation": if old.is_some() { "UPDATE" } else { "CREATE" },
        "userInfo": {"username": "alice", "uid": "alice-uid", "groups": ["system:authenticated"]},
        "object": object, "oldObject": old, "dryRun": false,
    });
    let body =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    let review = webhook::review(body.to_string().as_bytes(), |req| async move {
        seal_vault_item(keys, &Everyone, &req).await
    })
    .await;
    review.response.expect("a response")
}

/// Everyone may do everything: these tests are about archives, not authorization.
struct Everyone;

impl Authorizer for Everyone {
    async fn allowed(&self, _: &UserInfo, _: &AccessCheck<'_>) -> Result<bool, AuthorizeError> {
        Ok(true)
    }
}

/// Seals `value` for the archive field of [`ITEM`], as `monivault seal` would.
async fn seal_archive(keys: &Keys<MemoryStore>, value: &[u8]) -> String {
    let keyring = keys.ensure_environment(NS).await.expect("environment");
    let root = keys.root_for(&keyring).await.expect("root");
    let public_key = keyring.sealing_public_key(&root, NS).expect("public key");
    let binding = SealBinding {
        namespace: NS,
        section: "checkout",
        item_type: "CertificateArchive",
        item: ITEM,
        field: "archive",
    };
    seal(&public_key, &binding, value).expect("seals")
}

fn assert_refused(response: &AdmissionResponse, path: &str, limit: &str) {
    assert!(!response.allowed, "a costly archive was admitted");
    assert_eq!(response.result.code, 422, "{}", response.result.message);
    let message = &response.result.message;
    assert!(message.contains(path), "{message}");
    assert!(message.contains(limit), "{message}");
    assert!(!message.contains(BOMB_PASSWORD), "{message}");
    assert!(response.patch.is_none(), "nothing is sealed");
}

#[tokio::test]
async fn a_plaintext_scrypt_bomb_is_refused_naming_the_rule() {
    let keys = keys().await;
    let bomb = STANDARD.encode(scrypt_bomb());
    let response = admit(&keys, &archive_item(Ok(&bomb)), None).await;
    assert_refused(
        &response,
        "spec.certificateArchive.archive",
        "scrypt is not accepted",
    );
    assert!(!response.result.message.contains(&bomb[..32]));
}

#[tokio::test]
async fn a_hand_sealed_raw_p12_with_too_many_bags_is_refused_naming_the_limit() {
    let keys = keys().await;
    let sealed = seal_archive(&keys, &many_bags()).await;
    let response = admit(&keys, &archive_item(Err(&sealed)), None).await;
    assert_refused(&response, "spec.sealed.archive", "at most 64 bags");
    // Sealed as base64 text it is the same archive, refused the same way.
    let sealed = seal_archive(&keys, STANDARD.encode(scrypt_bomb()).as_bytes()).await;
    let response = admit(&keys, &archive_item(Err(&sealed)), None).await;
    assert_refused(&response, "spec.sealed.archive", "scrypt is not accepted");
}

#[tokio::test]
async fn a_sound_archive_is_admitted_as_plaintext_sealed_raw_or_sealed_as_base64() {
    let keys = keys().await;
    let response = admit(&keys, &archive_item(Ok(example_archive())), None).await;
    assert!(response.allowed, "{}", response.result.message);
    assert!(response.patch.is_some(), "the plaintext is sealed");

    let raw = STANDARD.decode(example_archive()).expect("base64");
    for value in [raw, example_archive().as_bytes().to_vec()] {
        let sealed = seal_archive(&keys, &value).await;
        let response = admit(&keys, &archive_item(Err(&sealed)), None).await;
        assert!(response.allowed, "{}", response.result.message);
    }
}

#[tokio::test]
async fn a_bomb_in_an_encrypted_safe_is_past_admission_and_left_to_the_controller() {
    // The walk derives no key, so what an encrypted safe holds is out of its sight; the
    // controller's read charges it before deriving anything for it (see e2e_archives).
    let keys = keys().await;
    let hidden = STANDARD.encode(hidden_scrypt_bomb());
    let response = admit(&keys, &archive_item(Ok(&hidden)), None).await;
    assert!(response.allowed, "{}", response.result.message);
}

#[tokio::test]
async fn an_update_that_keeps_an_admitted_sealed_archive_does_not_open_it_again() {
    let keys = keys().await;
    let sealed = seal_archive(&keys, &many_bags()).await;
    // Stored before admission checked archives (or with the webhook bypassed): the
    // controller refuses it on the item; other changes to the item are not held up.
    let old = archive_item(Err(&sealed));
    let mut new = old.clone();
    new["spec"]["description"] = json!("rotated next month");
    let response = admit(&keys, &new, Some(&old)).await;
    assert!(response.allowed, "{}", response.result.message);
}
