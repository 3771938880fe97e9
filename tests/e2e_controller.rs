//! The controller on the real control plane: sealed values become store records that only
//! the root key opens, bad values leave an item not Ready with an Event, and no plaintext
//! reaches etcd.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use monivault::api::condition::{READY, find_condition};
use monivault::api::vault_item::VaultItem;
use monivault::api::vault_section::VaultSection;
use monivault::crypto::{ItemBinding, SealBinding, SealingPublicKey, seal};
use monivault::store::{ItemKey, SecretStore, Store};
use support::{Cluster, cluster};

/// A `monivault run` process scoped to one test: its own store namespace, watching only
/// the test's namespace. Killed on drop.
struct Operator {
    child: Child,
}

impl Operator {
    fn start(c: &Cluster, store_ns: &str, watch_ns: &str) -> Operator {
        let child = Command::new(env!("CARGO_BIN_EXE_monivault"))
            .args([
                "run",
                "--namespace",
                store_ns,
                "--watch-namespace",
                watch_ns,
            ])
            .env("KUBECONFIG", c.var("KUBECONFIG"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start monivault run");
        Operator { child }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn section_public_key(client: &Client, ns: &str) -> SealingPublicKey {
    let sections: Api<VaultSection> = Api::namespaced(client.clone(), ns);
    let section: VaultSection = serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
        "metadata": {"name": "checkout"}, "spec": {"description": "the shop"}
    }))
    .expect("section");
    sections
        .create(&PostParams::default(), &section)
        .await
        .expect("create section");
    let text = eventually("the section's sealing public key", || async {
        sections
            .get("checkout")
            .await
            .ok()?
            .status?
            .sealing_public_key
    })
    .await;
    SealingPublicKey::parse(&text).expect("published key parses")
}

fn credential_set(name: &str, sealed_password: &str) -> VaultItem {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": name},
        "spec": {
            "type": "CredentialSet", "section": "checkout",
            "allowedHosts": ["shop.example.com"],
            "credentialSet": {"username": "synthetic-bot", "password": "*****"},
            "sealed": {"password": sealed_password}
        }
    }))
    .expect("item")
}

async fn ready_condition(items: &Api<VaultItem>, name: &str, want: &str) -> VaultItem {
    eventually(&format!("{name} Ready={want}"), || async {
        let item = items.get(name).await.ok()?;
        let status = item.status.as_ref()?;
        let ready = find_condition(&status.conditions, READY)?;
        (ready.status == want && status.observed_generation == item.metadata.generation)
            .then_some(item.clone())
    })
    .await
}

/// Searches every value in etcd for the plaintext and its base64 form.
fn assert_not_in_etcd(c: &Cluster, plaintext: &str) {
    use base64::Engine as _;
    let out = Command::new(c.var("MONIVAULT_ETCDCTL"))
        .args([
            "--endpoints",
            c.var("ETCDCTL_ENDPOINTS"),
            "get",
            "--prefix",
            "",
        ])
        .output()
        .expect("run etcdctl");
    assert!(out.status.success(), "etcdctl: {}", support::stderr(&out));
    assert!(out.stdout.len() > 1000, "etcdctl returned almost nothing");
    let dump = String::from_utf8_lossy(&out.stdout);
    let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
    assert!(!dump.contains(plaintext), "the plaintext is in etcd");
    assert!(!dump.contains(&b64), "the plaintext's base64 is in etcd");
}

#[tokio::test]
async fn a_sealed_item_becomes_ready_and_only_the_root_key_opens_its_record() {
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("ctl-ingest").await;
    let store_ns = c.temp_namespace("ctl-store").await;
    let mut operator = Operator::start(c, &store_ns, &ns);

    let public_key = section_public_key(&admin, &ns).await;
    assert_eq!(public_key.namespace(), ns);
    let plaintext = "ingest-plaintext-4b1f9e";
    let binding = SealBinding {
        namespace: &ns,
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
        .keyring()
        .await
        .expect("keyring")
        .expect("keyring Secret")
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
    assert_not_in_etcd(c, plaintext);

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
    let plaintext = "tamper-plaintext-77c2d0";
    // Sealed for another item: copying it here must not work.
    let binding = SealBinding {
        namespace: &ns,
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
    ready_condition(&items, "shop-login", "True").await;
    assert!(operator.is_running(), "the operator died");
    assert_not_in_etcd(c, plaintext);
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
            store.keyring().await.ok()?.map(|_| ())
        })
        .await;
    }
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &store_ns);
    secrets
        .delete("monivault-root-key", &DeleteParams::default())
        .await
        .expect("delete the root key Secret");

    let mut second = Operator::start(c, &store_ns, &ns);
    let status = eventually("the operator to exit", || {
        let exited = second.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(!status.success());
    let mut stderr = String::new();
    use std::io::Read;
    second
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
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
