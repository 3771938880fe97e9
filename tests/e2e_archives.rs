//! PKCS#12 bombs against the real operator on the real control plane: refused at admission
//! with the limit named; created with the webhook bypassed, left not Ready with a reason by
//! a controller that goes on ingesting other items.

mod archive_bombs;
mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use monivault::api::condition::{READY, find_condition};
use monivault::api::vault_item::VaultItem;
use monivault::crypto::{SealBinding, SealingPublicKey, seal};
use serde_json::json;
use support::{
    EXAMPLE_ARCHIVE_PASSWORD, Operator, cluster, credential_set, eventually, example_archive,
    http_get, ready_condition, section_public_key,
};

use archive_bombs::{BOMB_PASSWORD, hidden_scrypt_bomb, many_bags, scrypt_bomb};

/// Seals `value` for `field` of item `item` in `ns`, as `monivault seal` does. The one place
/// this test seals: the sealing format is about to bind more than namespace, item and field.
fn seal_field(key: &SealingPublicKey, ns: &str, item: &str, field: &str, value: &[u8]) -> String {
    // The type a field belongs to: a login's password, else an archive's fields.
    let item_type = if field == "password" {
        "CredentialSet"
    } else {
        "CertificateArchive"
    };
    let binding = SealBinding {
        namespace: ns,
        section: "checkout",
        item_type,
        item,
        field,
    };
    seal(key, &binding, value).expect("seal")
}

/// A CertificateArchive item: the archive and its password as plaintexts (for the webhook to
/// seal), or sealed.
fn archive_item(name: &str, archive: &str, password: &str, sealed: bool) -> VaultItem {
    let (plain, sealed) = if sealed {
        (
            json!({"archive": "*****", "password": "*****"}),
            json!({"archive": archive, "archivePassword": password}),
        )
    } else {
        (json!({"archive": archive, "password": password}), json!({}))
    };
    serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": name},
        "spec": {
            "type": "CertificateArchive", "section": "checkout",
            "allowedHosts": ["partners.shop.example.com"],
            "certificateArchive": plain,
            "sealed": sealed,
        }
    }))
    .expect("item")
}

/// A sealed CertificateArchive item holding `archive` (raw DER, as `monivault seal
/// --from-file` seals a `.p12`).
fn sealed_archive_item(
    key: &SealingPublicKey,
    ns: &str,
    name: &str,
    archive: &[u8],
    password: &str,
) -> VaultItem {
    archive_item(
        name,
        &seal_field(key, ns, name, "archive", archive),
        &seal_field(key, ns, name, "archivePassword", password.as_bytes()),
        true,
    )
}

#[tokio::test]
async fn a_pkcs12_bomb_is_refused_at_admission_naming_the_limit() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("arch-admit").await;
    let store_ns = c.temp_namespace("arch-admit-store").await;
    let mut operator = Operator::start_with_webhooks(c, &store_ns, &ns);
    let key = section_public_key(&admin, &ns).await;
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);

    // A plaintext bomb. Until the webhook is registered, the CRD's own rule refuses any
    // plaintext: wait for the webhook's refusal, which names the rule.
    let bomb = STANDARD.encode(scrypt_bomb());
    let plaintext_bomb = archive_item("plain-bomb", &bomb, BOMB_PASSWORD, false);
    let refusal = eventually("the webhook to refuse the scrypt bomb", || async {
        match items.create(&PostParams::default(), &plaintext_bomb).await {
            Err(kube::Error::Api(status)) if status.message.contains("scrypt") => Some(status),
            _ => None,
        }
    })
    .await;
    assert_eq!(refusal.code, 422, "{}", refusal.message);
    assert!(
        refusal
            .message
            .contains("spec.certificateArchive.archive holds an archive monivault refuses"),
        "{}",
        refusal.message
    );
    assert!(refusal.message.contains("scrypt is not accepted"));
    assert!(!refusal.message.contains(&bomb[..32]));

    // Sealed by hand, from a raw `.p12` file.
    let sealed_bomb = sealed_archive_item(&key, &ns, "sealed-bomb", &many_bags(), BOMB_PASSWORD);
    let Err(kube::Error::Api(refusal)) = items.create(&PostParams::default(), &sealed_bomb).await
    else {
        panic!("a sealed archive with 500 bags was admitted");
    };
    assert_eq!(refusal.code, 422, "{}", refusal.message);
    assert!(
        refusal.message.contains("spec.sealed.archive")
            && refusal.message.contains("at most 64 bags"),
        "{}",
        refusal.message
    );
    for name in ["plain-bomb", "sealed-bomb"] {
        assert!(
            items.get_opt(name).await.expect("get").is_none(),
            "{name} was stored"
        );
    }

    // A sound archive goes in, and the controller reads it.
    let good = archive_item(
        "shop-client-cert",
        example_archive(),
        EXAMPLE_ARCHIVE_PASSWORD,
        false,
    );
    items
        .create(&PostParams::default(), &good)
        .await
        .expect("a sound archive is admitted");
    ready_condition(&items, "shop-client-cert", "True").await;
    assert!(operator.is_running(), "the operator died");
}

#[tokio::test]
async fn with_the_webhook_bypassed_a_bomb_is_not_ready_and_the_controller_goes_on() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("arch-bypass").await;
    let store_ns = c.temp_namespace("arch-bypass-store").await;
    let mut operator = Operator::start(c, &store_ns, &ns);
    let key = section_public_key(&admin, &ns).await;
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);

    // The reported attack, and one admission cannot see: scrypt bags inside an encrypted safe.
    let bombs = [
        ("scrypt-bomb", scrypt_bomb(), "scrypt is not accepted"),
        (
            "hidden-bomb",
            hidden_scrypt_bomb(),
            "scrypt is not accepted",
        ),
        ("bag-bomb", many_bags(), "at most 64 bags"),
    ];
    for (name, archive, _) in &bombs {
        let item = sealed_archive_item(&key, &ns, name, archive, BOMB_PASSWORD);
        items
            .create(&PostParams::default(), &item)
            .await
            .expect("no webhook stops it");
    }
    for (name, _, limit) in &bombs {
        let item = ready_condition(&items, name, "False").await;
        let status = item.status.expect("status");
        let ready = find_condition(&status.conditions, READY).expect("Ready");
        assert_eq!(ready.reason, "CertificateArchiveRefused", "{name}");
        assert!(ready.message.contains(limit), "{name}: {}", ready.message);
        assert_eq!(status.secret, None, "{name}: no secret is stored");
    }
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    eventually("a warning Event for the bomb", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("CertificateArchiveRefused")
                && e.involved_object.name.as_deref() == Some("scrypt-bomb")
        })
    })
    .await;

    // The controller is still there for everyone else.
    let archive = sealed_archive_item(
        &key,
        &ns,
        "shop-client-cert",
        &STANDARD.decode(example_archive()).expect("base64"),
        EXAMPLE_ARCHIVE_PASSWORD,
    );
    items
        .create(&PostParams::default(), &archive)
        .await
        .expect("create the sound archive");
    let login_password = support::secret("bypass-pw");
    let login_password = seal_field(
        &key,
        &ns,
        "shop-login",
        "password",
        login_password.as_bytes(),
    );
    items
        .create(
            &PostParams::default(),
            &credential_set("shop-login", &login_password),
        )
        .await
        .expect("create the login");
    let ready = ready_condition(&items, "shop-client-cert", "True").await;
    let certificate = ready.status.and_then(|s| s.certificate).expect("facts");
    assert_eq!(
        certificate.subject.as_deref(),
        Some("O=Example Shop,CN=synthetic-bot")
    );
    ready_condition(&items, "shop-login", "True").await;

    let (status, _) = http_get(operator.ops_addr().await, "/healthz")
        .await
        .expect("healthz answers");
    assert_eq!(status, 200);
    assert!(operator.is_running(), "the operator died");
}
