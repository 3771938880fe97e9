//! The controller on the real control plane: sealed values become store records that only
//! the root key opens, bad values leave an item not Ready with an Event, and no plaintext
//! reaches etcd.

mod support;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use monivault::api::condition::{READY, find_condition};
use monivault::api::vault_item::VaultItem;
use monivault::crypto::{ItemBinding, SealBinding, SealingPublicKey, seal};
use monivault::store::{ItemKey, SecretStore, Store};
use support::{
    EXAMPLE_ARCHIVE_PASSWORD, Operator, cluster, credential_set, eventually, example_archive,
    ready_condition, section_public_key,
};

#[tokio::test]
async fn a_sealed_item_becomes_ready_and_only_the_root_key_opens_its_record() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-ingest").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let mut operator = Operator::start(c, &store_ns, &ns);

    let public_key = section_public_key(&admin, &ns).await;
    assert_eq!(public_key.namespace(), ns);
    let plaintext: &str = &support::secret("ingest-plaintext");
    let binding = SealBinding {
        namespace: &ns,
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    };
    let sealed = seal(&public_key, &binding, plaintext.as_bytes()).expect("seal");

    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(
            &PostParams::default(),
            &credential_set("shop-login", &sealed),
        )
        .await
        .expect("create item");
    let item = ready_condition(&items, "shop-login", "True").await;
    let status = item.status.clone().expect("status");
    assert_eq!(status.secret.as_deref(), Some("*****"));
    assert_eq!(status.key_version, Some(1));
    assert!(status.changed_at.is_some());

    // The chain: root key Secret → keyring → record → plaintext. Only this test knows it.
    let store = SecretStore::new(admin.clone(), &store_ns);
    let roots = store
        .root_keys()
        .await
        .expect("root keys")
        .expect("root key Secret");
    let keyring = store
        .environment(&ns)
        .await
        .expect("keys")
        .expect("the environment's Secret")
        .value;
    let root = roots.value.key(keyring.root_key_version).expect("root key");
    let key = ItemKey {
        namespace: ns.clone(),
        name: "shop-login".into(),
    };
    let record = store
        .record(&key)
        .await
        .expect("record")
        .expect("a record")
        .value;
    let uid = item.uid().expect("uid");
    let opened = keyring
        .decrypt(
            &root,
            &ItemBinding {
                namespace: &ns,
                item: "shop-login",
                uid: &uid,
                field: "password",
            },
            &record.fields["password"],
        )
        .expect("record opens");
    assert_eq!(opened.expose(), plaintext.as_bytes());
    c.assert_not_in_etcd(&[plaintext]);

    // A rotation in another process re-encrypts the record; the status follows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args([
            "rotate",
            "data-key",
            "--namespace",
            &store_ns,
            "--environment",
            &ns,
        ])
        .args(["--wait", "--data-key-retire-grace", "0s"])
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        .output()
        .expect("run monivault rotate");
    assert!(out.status.success(), "{}", support::stderr(&out));
    eventually("status.keyVersion 2", || async {
        let status = items.get("shop-login").await.ok()?.status?;
        (status.key_version == Some(2)).then_some(())
    })
    .await;

    // Deleting the item deletes its record.
    items
        .delete("shop-login", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the record to go", || async {
        store.record(&key).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(operator.is_running(), "the operator died");
}

#[tokio::test]
async fn a_sealed_value_for_another_item_leaves_it_not_ready_with_an_event() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-tamper").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let mut operator = Operator::start(c, &store_ns, &ns);

    let public_key = section_public_key(&admin, &ns).await;
    let plaintext: &str = &support::secret("tamper-plaintext");
    // Sealed for another item: copying it here must not work.
    let binding = SealBinding {
        namespace: &ns,
        section: "checkout",
        item_type: "CredentialSet",
        item: "someone-else",
        field: "password",
    };
    let sealed = seal(&public_key, &binding, plaintext.as_bytes()).expect("seal");

    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(
            &PostParams::default(),
            &credential_set("shop-login", &sealed),
        )
        .await
        .expect("create item");
    let item = ready_condition(&items, "shop-login", "False").await;
    let status = item.status.expect("status");
    let ready = find_condition(&status.conditions, READY).expect("Ready");
    assert_eq!(ready.reason, "SealedValueInvalid");
    assert!(
        ready.message.contains("sealed.password"),
        "{}",
        ready.message
    );
    assert_eq!(status.secret, None, "no secret is stored");

    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    let found = eventually("a warning Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("SealedValueInvalid")
                && e.involved_object.name.as_deref() == Some("shop-login")
        })
    })
    .await;
    assert_eq!(found.type_.as_deref(), Some("Warning"));
    let note = found.message.unwrap_or_default();
    assert!(!note.contains(plaintext));

    // Replacing the value with a good one makes it Ready: the controller did not give up.
    let good = seal(
        &public_key,
        &SealBinding {
            namespace: &ns,
            section: "checkout",
            item_type: "CredentialSet",
            item: "shop-login",
            field: "password",
        },
        plaintext.as_bytes(),
    )
    .expect("seal");
    let mut item = items.get("shop-login").await.expect("get");
    item.spec
        .set_sealed(monivault::api::vault_item::SecretField::Password, good);
    items
        .replace("shop-login", &PostParams::default(), &item)
        .await
        .expect("replace");
    let item = ready_condition(&items, "shop-login", "True").await;
    assert!(operator.is_running(), "the operator died");
    c.assert_not_in_etcd(&[plaintext]);
    // The copy never opened, so the note above could not hold the plaintext. The good
    // value did open: now the plaintext has been through the controller, and neither the
    // Events about the item, nor its status, nor the operator's log may hold it.
    let events = events.list(&ListParams::default()).await.expect("events");
    let about_item: Vec<&Event> = events
        .items
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("shop-login"))
        .collect();
    assert!(
        about_item
            .iter()
            .any(|e| e.reason.as_deref() == Some("SealedValueInvalid")),
        "the refusal's Event is among them"
    );
    assert_nowhere(
        "the item's Events",
        &serde_json::to_string(&about_item).expect("json"),
        plaintext,
    );
    assert_nowhere(
        "the item",
        &serde_json::to_string(&item).expect("json"),
        plaintext,
    );
    assert_nowhere("the operator's log", &operator.stderr(), plaintext);
}

/// `plaintext` is not in `text`: as is, in base64 (standard or URL-safe, at any of the
/// three byte offsets of a longer buffer) or in hex.
fn assert_nowhere(what: &str, text: &str, plaintext: &str) {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let bytes = plaintext.as_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut forms = vec![plaintext.to_owned(), hex.to_uppercase(), hex];
    for skip in 0..3 {
        let rest = &bytes[skip.min(bytes.len())..];
        let whole = &rest[..rest.len() / 3 * 3];
        if whole.len() >= 9 {
            forms.push(STANDARD_NO_PAD.encode(whole));
            forms.push(URL_SAFE_NO_PAD.encode(whole));
        }
    }
    for form in forms {
        assert!(
            !text.contains(&form),
            "{what} holds the plaintext as {form:?}"
        );
    }
}

#[tokio::test]
async fn an_operator_without_its_root_key_refuses_to_start() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-noroot").await;
    let store_ns = c.temp_namespace("ctl-store").await;

    // A first start creates the root key and the keyring.
    {
        let _operator = Operator::start(c, &store_ns, &ns);
        let store = SecretStore::new(admin.clone(), &store_ns);
        eventually("the keyring", || async {
            store.keyring_head().await.ok()?.map(|_| ())
        })
        .await;
    }
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &store_ns);
    secrets
        .delete("monivault-root-key", &DeleteParams::default())
        .await
        .expect("delete the root key Secret");

    let mut second = Operator::start(c, &store_ns, &ns);
    let (status, stderr) = second.exited().await;
    assert!(!status.success());
    assert!(stderr.contains("refusing to start"), "{stderr}");
    // It made no new root key over the existing data.
    assert!(
        secrets
            .get_opt("monivault-root-key")
            .await
            .expect("get")
            .is_none()
    );
}

fn certificate_archive(name: &str, sealed_archive: &str, sealed_password: &str) -> VaultItem {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": name},
        "spec": {
            "type": "CertificateArchive", "section": "checkout",
            "allowedHosts": ["partners.shop.example.com"],
            "certificateArchive": {"archive": "*****", "password": "*****"},
            "sealed": {"archive": sealed_archive, "archivePassword": sealed_password}
        }
    }))
    .expect("item")
}

fn seal_field(key: &SealingPublicKey, ns: &str, item: &str, field: &str, value: &str) -> String {
    let binding = SealBinding {
        namespace: ns,
        section: "checkout",
        item_type: "CertificateArchive",
        item,
        field,
    };
    seal(key, &binding, value.as_bytes()).expect("seal")
}

fn time(s: &str) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        s.parse().expect("timestamp"),
    ))
}

#[tokio::test]
async fn a_certificate_archive_reports_its_subject_issuer_and_validity() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-p12").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let mut operator = Operator::start(c, &store_ns, &ns);

    let key = section_public_key(&admin, &ns).await;
    let name = "shop-client-cert";
    let item = certificate_archive(
        name,
        &seal_field(&key, &ns, name, "archive", example_archive()),
        &seal_field(&key, &ns, name, "archivePassword", EXAMPLE_ARCHIVE_PASSWORD),
    );
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(&PostParams::default(), &item)
        .await
        .expect("create item");
    let item = ready_condition(&items, name, "True").await;
    let status = item.status.clone().expect("status");
    assert_eq!(status.secret.as_deref(), Some("*****"));
    let cert = status.certificate.clone().expect("status.certificate");
    assert_eq!(
        cert.subject.as_deref(),
        Some("O=Example Shop,CN=synthetic-bot")
    );
    assert_eq!(cert.issuer, cert.subject, "the example is self-signed");
    assert_eq!(cert.not_before, time("2026-11-27T21:11:59Z"));
    assert_eq!(cert.not_after, time("2036-11-24T21:11:59Z"));

    // A reconcile with nothing changed leaves the status alone: no patch, no new version.
    let poke = serde_json::json!({"metadata": {"annotations": {"test.monivault.io/poke": "1"}}});
    let poked = items
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&poke),
        )
        .await
        .expect("annotate");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = items.get(name).await.expect("get");
    assert_eq!(after.resource_version(), poked.resource_version());
    assert_eq!(after.status, Some(status));
    assert!(operator.is_running(), "the operator died");
}

#[tokio::test]
async fn a_wrong_archive_password_leaves_the_item_not_ready() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-p12-bad").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let mut operator = Operator::start(c, &store_ns, &ns);

    let key = section_public_key(&admin, &ns).await;
    let name = "shop-client-cert";
    let wrong: &str = &support::secret("wrong-archive-password");
    let item = certificate_archive(
        name,
        &seal_field(&key, &ns, name, "archive", example_archive()),
        &seal_field(&key, &ns, name, "archivePassword", wrong),
    );
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(&PostParams::default(), &item)
        .await
        .expect("create item");
    let item = ready_condition(&items, name, "False").await;
    let status = item.status.expect("status");
    let ready = find_condition(&status.conditions, READY).expect("Ready");
    assert_eq!(ready.reason, "CertificateArchiveInvalid");
    assert_eq!(
        ready.message,
        "certificateArchive.password does not open the archive"
    );
    assert_eq!(status.secret, None, "no secret is stored");
    assert_eq!(status.certificate, None);
    assert!(operator.is_running(), "the operator died");
    c.assert_not_in_etcd(&[wrong]);
}

#[tokio::test]
async fn a_certificate_item_reports_the_facts_of_its_pem() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-pem").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let mut operator = Operator::start(c, &store_ns, &ns);
    section_public_key(&admin, &ns).await;

    let example = include_str!("../examples/item-certificate.yaml");
    let pem: String = example[example.find("-----BEGIN").expect("pem")..]
        .lines()
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let certificate = |name: &str, pem: &str| -> VaultItem {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
            "metadata": {"name": name},
            "spec": {"type": "Certificate", "section": "checkout", "certificate": {"pem": pem}}
        }))
        .expect("item")
    };
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(&PostParams::default(), &certificate("shop-ca", &pem))
        .await
        .expect("create item");
    let bad = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
    items
        .create(&PostParams::default(), &certificate("broken", bad))
        .await
        .expect("create item");

    let item = ready_condition(&items, "shop-ca", "True").await;
    let cert = item
        .status
        .and_then(|s| s.certificate)
        .expect("status.certificate");
    assert_eq!(
        cert.subject.as_deref(),
        Some("O=Example Shop,CN=synthetic-bot")
    );
    assert_eq!(cert.not_after, time("2036-11-24T21:11:59Z"));

    let item = ready_condition(&items, "broken", "False").await;
    let status = item.status.expect("status");
    let ready = find_condition(&status.conditions, READY).expect("Ready");
    assert_eq!(ready.reason, "CertificateInvalid");
    assert!(
        ready.message.starts_with("certificate.pem"),
        "{}",
        ready.message
    );
    assert_eq!(status.certificate, None);
    assert!(operator.is_running(), "the operator died");
}

#[tokio::test]
async fn a_sealing_key_rotation_is_published_on_the_section_at_once() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-publish").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let _operator = Operator::start(c, &store_ns, &ns);
    let first = section_public_key(&admin, &ns).await;
    assert_eq!(first.version(), 1);
    // No pause: a request rotates keys made before it to the millisecond.

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args([
            "rotate",
            "sealing-key",
            "--namespace",
            &store_ns,
            "--environment",
            &ns,
        ])
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        .output()
        .expect("run monivault rotate");
    assert!(out.status.success(), "{}", support::stderr(&out));

    // Well before the section's periodic resync: the keyring watch republishes it.
    let sections: Api<monivault::api::vault_section::VaultSection> =
        Api::namespaced(admin.clone(), &ns);
    let published = eventually("sealing key version 2 on the section", || async {
        let text = sections
            .get("checkout")
            .await
            .ok()?
            .status?
            .sealing_public_key?;
        let key = SealingPublicKey::parse(&text).ok()?;
        (key.version() == 2).then_some(key)
    })
    .await;
    assert_ne!(published, first);
}

#[tokio::test]
async fn an_altered_store_record_is_rebuilt_from_the_sealed_value() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-record").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let mut operator = Operator::start(c, &store_ns, &ns);
    let public_key = section_public_key(&admin, &ns).await;
    let plaintext: &str = &support::secret("record-plaintext");
    let binding = SealBinding {
        namespace: &ns,
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    };
    let sealed = seal(&public_key, &binding, plaintext.as_bytes()).expect("seal");
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(
            &PostParams::default(),
            &credential_set("shop-login", &sealed),
        )
        .await
        .expect("create item");
    let item = ready_condition(&items, "shop-login", "True").await;
    let uid = item.uid().expect("uid");

    // Someone with access to the store alters one byte of the ciphertext.
    let store = SecretStore::new(admin.clone(), &store_ns);
    let key = ItemKey {
        namespace: ns.clone(),
        name: "shop-login".into(),
    };
    let stored = store.record(&key).await.expect("read").expect("record");
    let mut altered = stored.value.clone();
    let text = altered.fields.get_mut("password").expect("password field");
    let last = text.pop().expect("non-empty");
    text.push(if last == 'A' { 'B' } else { 'A' });
    store
        .put_record(&key, &altered, Some(&stored.resource_version))
        .await
        .expect("alter the record");

    // Any change to the item makes the controller look; it notices and rebuilds.
    let patch = serde_json::json!({"metadata": {"annotations": {"touched": "yes"}}});
    items
        .patch(
            "shop-login",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("touch the item");
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    eventually("a StoreRecordInvalid Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("StoreRecordInvalid"))
    })
    .await;
    let keyring = store
        .environment(&ns)
        .await
        .expect("keys")
        .expect("the environment's Secret")
        .value;
    let roots = store
        .root_keys()
        .await
        .expect("roots")
        .expect("roots")
        .value;
    let root = roots.key(keyring.root_key_version).expect("root");
    let rebuilt = eventually("a record that opens again", || async {
        let record = store.record(&key).await.ok()??.value;
        let binding = ItemBinding {
            namespace: &ns,
            item: "shop-login",
            uid: &uid,
            field: "password",
        };
        keyring
            .decrypt(&root, &binding, &record.fields["password"])
            .ok()
    })
    .await;
    assert_eq!(rebuilt.expose(), plaintext.as_bytes());
    assert!(operator.is_running(), "the operator died");
}

#[tokio::test]
async fn used_by_lists_the_monitors_that_reference_the_item() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-usedby").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let _operator = Operator::start(c, &store_ns, &ns);
    let public_key = section_public_key(&admin, &ns).await;
    let binding = SealBinding {
        namespace: &ns,
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    };
    let plaintext = support::secret("usedby-plaintext");
    let sealed = seal(&public_key, &binding, plaintext.as_bytes()).expect("seal");
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(
            &PostParams::default(),
            &credential_set("shop-login", &sealed),
        )
        .await
        .expect("create item");
    ready_condition(&items, "shop-login", "True").await;

    let monitors: Api<monivault::api::monitor::Monitor> = Api::namespaced(admin.clone(), &ns);
    let monitor = |name: &str, auth: bool| -> monivault::api::monitor::Monitor {
        let mut spec = serde_json::json!({"url": "https://shop.example.com/"});
        if auth {
            spec["auth"] = serde_json::json!({"basic": {"credentialSet": "shop-login"}});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
            "metadata": {"name": name}, "spec": spec
        }))
        .expect("monitor")
    };
    for name in ["checkout", "login"] {
        monitors
            .create(&PostParams::default(), &monitor(name, true))
            .await
            .expect("create monitor");
    }
    let used_by = |want: Vec<&'static str>| {
        let items = items.clone();
        async move {
            eventually(&format!("usedBy {want:?}"), || async {
                let status = items.get("shop-login").await.ok()?.status?;
                (status.used_by == want).then_some(())
            })
            .await
        }
    };
    used_by(vec!["checkout", "login"]).await;

    // Dropping the reference drops the monitor from usedBy, without waiting for a resync.
    let mut login = monitors.get("login").await.expect("get");
    login.spec = monitor("login", false).spec;
    monitors
        .replace("login", &PostParams::default(), &login)
        .await
        .expect("replace");
    used_by(vec!["checkout"]).await;
    monitors
        .delete("checkout", &DeleteParams::default())
        .await
        .expect("delete");
    used_by(vec![]).await;
}

#[tokio::test]
async fn monivault_seal_reads_the_key_from_the_section_and_the_item_becomes_ready() {
    use std::io::Write;
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-sealcli").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let _operator = Operator::start(c, &store_ns, &ns);
    section_public_key(&admin, &ns).await;

    let plaintext: &str = &support::secret("seal-cli-plaintext");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args([
            "seal",
            "-n",
            &ns,
            "--section",
            "checkout",
            "--item",
            "shop-login",
        ])
        .args(["--field", "password"])
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run monivault seal");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(plaintext.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", support::stderr(&out));
    let sealed = String::from_utf8(out.stdout).expect("utf-8");

    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    items
        .create(
            &PostParams::default(),
            &credential_set("shop-login", sealed.trim()),
        )
        .await
        .expect("create item");
    ready_condition(&items, "shop-login", "True").await;

    // A section that does not exist gets a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args([
            "seal",
            "-n",
            &ns,
            "--section",
            "nope",
            "--item",
            "x",
            "--field",
            "password",
        ])
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run monivault seal");
    assert!(!out.status.success());
    assert!(
        support::stderr(&out).contains("not found"),
        "{}",
        support::stderr(&out)
    );
}
