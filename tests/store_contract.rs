//! The store's contract, written once over any `S: Store` and run against both stores:
//! `memory::*` on [`MemoryStore`], `cluster::*` on [`SecretStore`] in a fresh namespace of
//! the real local control plane (the namespace plays the operator's own).
//!
//! Each scenario is what a replica relies on: a create never overwrites, a write at a
//! stale resourceVersion never lands, racing keyring updates agree on one key, and a
//! corrupt Secret is reported as corrupt without its contents.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use monivault::crypto::{Keyring, RootKey, UnixMillis};
use monivault::store::layout::{
    self, HEAD_DATA, ITEM_NAME_ANNOTATION, ITEM_NAMESPACE_ANNOTATION, KEYRING_DATA, KEYRING_SECRET,
    MANAGED_BY, MANAGED_BY_LABEL, RECORD_DATA, RECORD_KIND_ITEM, RECORD_LABEL, ROOT_KEY_SECRET,
};
use monivault::store::{
    ItemKey, ItemRecord, KeyringHead, Keys, Listing, MemoryStore, RootKeySet, SecretStore, Store,
    StoreError, StoredKeyring, Versioned,
};
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------------------
// The two backends.

/// A store under test, plus a way to see and plant raw Secrets as an admin with kubectl
/// could (to check the layout, and to corrupt it).
trait Backend: Send + Sync + 'static {
    type S: Store + Clone;
    fn store(&self) -> &Self::S;
    fn raw(&self, name: &str) -> impl Future<Output = Option<Secret>> + Send;
    fn plant(&self, secret: Secret) -> impl Future<Output = ()> + Send;
}

struct Memory(MemoryStore);

impl Memory {
    fn new() -> Self {
        Memory(MemoryStore::new())
    }
}

impl Backend for Memory {
    type S = MemoryStore;

    fn store(&self) -> &MemoryStore {
        &self.0
    }

    async fn raw(&self, name: &str) -> Option<Secret> {
        self.0.get_raw(name)
    }

    async fn plant(&self, secret: Secret) {
        self.0.insert_raw(secret);
    }
}

struct OnCluster {
    store: SecretStore,
    secrets: Api<Secret>,
}

impl OnCluster {
    async fn new() -> Self {
        let cluster = support::cluster();
        let namespace = cluster.temp_namespace("store").await;
        let client = cluster.admin().await;
        OnCluster {
            // Pages of two, so every listing below crosses continue tokens.
            store: SecretStore::new(client.clone(), &namespace).with_page_size(2),
            secrets: Api::namespaced(client, &namespace),
        }
    }
}

impl Backend for OnCluster {
    type S = SecretStore;

    fn store(&self) -> &SecretStore {
        &self.store
    }

    async fn raw(&self, name: &str) -> Option<Secret> {
        self.secrets.get_opt(name).await.expect("get Secret")
    }

    async fn plant(&self, secret: Secret) {
        self.secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("plant Secret");
    }
}

/// Runs every scenario on both backends: `memory::<scenario>` and `cluster::<scenario>`.
macro_rules! contract {
    ($($scenario:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(&super::Memory::new()).await;
                }
            )+
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(&super::OnCluster::new().await).await;
                }
            )+
        }
    };
}

contract!(
    root_keys_are_created_once_and_replaced_only_at_the_version_read,
    the_keyring_head_and_environments_are_created_once_and_replaced_only_at_the_version_read,
    records_are_written_and_deleted_only_under_their_preconditions,
    listing_returns_every_record_and_nothing_else,
    racing_replicas_creating_one_environment_agree_on_its_keys,
    many_replicas_adding_environments_all_get_through,
    the_secrets_have_the_documented_layout,
    corrupt_secrets_are_reported_as_corrupt_without_their_contents,
    a_keyring_in_the_one_secret_format_is_split_on_first_start,
);

// ---------------------------------------------------------------------------------------
// Fixtures.

fn root(version: u32, byte: u8) -> RootKey {
    RootKey::from_bytes(version, &[byte; 32]).expect("root key")
}

fn record(uid: &str, key_version: u32) -> ItemRecord {
    ItemRecord {
        uid: uid.into(),
        key_version,
        fields: BTreeMap::from([(
            "password".into(),
            format!("mv1.d.{key_version}.ciphertext-of-{uid}"),
        )]),
        source_digest: "5e".repeat(32),
        generation: Some(1),
    }
}

/// `namespace`'s keys alone, as the store keeps them.
fn one_environment(root: &RootKey, namespace: &str, now: UnixMillis) -> Keyring {
    let mut keyring = Keyring::new(root, now);
    keyring
        .ensure_environment(root, namespace, now)
        .expect("environment");
    keyring
}

/// A replica's keys over `store`, whose root key and keyring exist.
async fn replica<S: Store>(store: S) -> Keys<S> {
    Keys::bootstrap(Arc::new(store)).await.expect("bootstrap")
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, doing: &str) {
    match result {
        Err(e) if e.is_conflict() => assert_eq!(e.category(), "conflict"),
        other => panic!("{doing}: expected a Conflict, got {other:?}"),
    }
}

fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>, secret: &str) -> String {
    match result {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert_eq!(e.category(), "corrupt");
            let message = e.to_string();
            assert!(message.contains(secret), "{message:?} should name {secret}");
            assert!(!message.contains("SENTINEL"), "{message:?} quotes the data");
            message
        }
        other => panic!("expected Corrupt for {secret}, got {other:?}"),
    }
}

/// A hand-made Secret in the store's layout (for planting).
fn secret(
    name: &str,
    kind: &str,
    annotations: Option<BTreeMap<String, String>>,
    data: &[(&str, &[u8])],
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (RECORD_LABEL.to_owned(), kind.to_owned()),
            ])),
            annotations,
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn item_annotations(key: &ItemKey) -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([
        (ITEM_NAMESPACE_ANNOTATION.to_owned(), key.namespace.clone()),
        (ITEM_NAME_ANNOTATION.to_owned(), key.name.clone()),
    ]))
}

// ---------------------------------------------------------------------------------------
// Scenarios.

async fn root_keys_are_created_once_and_replaced_only_at_the_version_read(b: &impl Backend) {
    let store = b.store();
    assert!(store.root_keys().await.expect("read").is_none());

    let mut keys = RootKeySet::new(root(1, 0x11), UnixMillis::from_secs(100));
    let rv1 = store.put_root_keys(&keys, None).await.expect("create");
    // A second replica starting at the same moment must not overwrite the first's key.
    assert_conflict(
        store
            .put_root_keys(
                &RootKeySet::new(root(1, 0x22), UnixMillis::from_secs(100)),
                None,
            )
            .await,
        "create over an existing root key",
    );
    let stored = store.root_keys().await.expect("read").expect("present");
    assert_eq!(stored.resource_version, rv1);
    assert_eq!(
        stored.value.current_key().expect("v1").expose_bytes(),
        &[0x11; 32]
    );

    keys.insert(root(2, 0x33)).expect("add v2");
    keys.set_current(2, UnixMillis::from_secs(200))
        .expect("switch");
    let rv2 = store
        .put_root_keys(&keys, Some(&rv1))
        .await
        .expect("replace");
    assert_ne!(rv1, rv2);
    assert_conflict(
        store.put_root_keys(&keys, Some(&rv1)).await,
        "replace at a stale version",
    );
    let stored = store.root_keys().await.expect("read").expect("present");
    assert_eq!(stored.resource_version, rv2);
    assert_eq!(stored.value.versions(), vec![1, 2]);
    assert_eq!(stored.value.current(), 2);
    assert_eq!(stored.value.since(), Some(UnixMillis::from_secs(200)));
    assert_eq!(stored.value.key(1).expect("v1").expose_bytes(), &[0x11; 32]);
    assert_eq!(stored.value.key(2).expect("v2").expose_bytes(), &[0x33; 32]);
}

async fn the_keyring_head_and_environments_are_created_once_and_replaced_only_at_the_version_read(
    b: &impl Backend,
) {
    let store = b.store();
    assert!(store.keyring_head().await.expect("read").is_none());
    let rv = store
        .put_keyring_head(&KeyringHead::new(1_000), None)
        .await
        .expect("create");
    assert_conflict(
        store.put_keyring_head(&KeyringHead::new(2_000), None).await,
        "create over an existing head",
    );
    assert_eq!(
        store.keyring_head().await.expect("read"),
        Some(Versioned {
            value: StoredKeyring::Head(KeyringHead::new(1_000)),
            resource_version: rv
        })
    );

    let root = root(1, 0x44);
    assert!(store.environment("shop").await.expect("read").is_none());
    let shop = one_environment(&root, "shop", UnixMillis::from_secs(1_000));
    let rv1 = store
        .put_environment("shop", &shop, None)
        .await
        .expect("create");
    assert_conflict(
        store
            .put_environment(
                "shop",
                &one_environment(&root, "shop", UnixMillis::from_secs(2_000)),
                None,
            )
            .await,
        "a second replica's create would replace the shop keys",
    );
    let mut next = shop.clone();
    next.rotate_sealing_key(&root, "shop", UnixMillis::from_secs(1_500))
        .expect("rotate");
    let rv2 = store
        .put_environment("shop", &next, Some(&rv1))
        .await
        .expect("replace");
    assert_conflict(
        store.put_environment("shop", &shop, Some(&rv1)).await,
        "a stale writer would drop the new sealing key",
    );
    assert_eq!(
        store.environment("shop").await.expect("read"),
        Some(Versioned {
            value: next.clone(),
            resource_version: rv2.clone()
        })
    );
    // One Secret holds one namespace's keys, and no other's.
    assert!(matches!(
        store.put_environment("team", &shop, None).await,
        Err(StoreError::Invalid { .. })
    ));

    let team = one_environment(&root, "team", UnixMillis::from_secs(1_000));
    store
        .put_environment("team", &team, None)
        .await
        .expect("create");
    let listing = store.list_environments().await.expect("list");
    assert_eq!(
        listing
            .items
            .iter()
            .map(|(ns, e)| (ns.as_str(), &e.value))
            .collect::<Vec<_>>(),
        [("shop", &next), ("team", &team)]
    );
    assert!(listing.unreadable.is_empty());
    assert_eq!(
        store.some_environments(1).await.expect("some").items.len(),
        1
    );

    assert_conflict(
        store.delete_environment("shop", &rv1).await,
        "a delete at a stale version",
    );
    assert!(
        store
            .delete_environment("shop", &rv2)
            .await
            .expect("delete")
    );
    assert!(!store.delete_environment("shop", &rv2).await.expect("gone"));
    assert!(store.environment("shop").await.expect("read").is_none());
}

async fn records_are_written_and_deleted_only_under_their_preconditions(b: &impl Backend) {
    let store = b.store();
    let key = ItemKey::new("shop", "db-login");
    assert!(store.record(&key).await.expect("read").is_none());
    assert_conflict(
        store.put_record(&key, &record("uid-a", 1), Some("1")).await,
        "replace of a record that does not exist",
    );

    let rv1 = store
        .put_record(&key, &record("uid-a", 1), None)
        .await
        .expect("create");
    assert_conflict(
        store.put_record(&key, &record("uid-b", 1), None).await,
        "create over an existing record",
    );
    let rv2 = store
        .put_record(&key, &record("uid-a", 2), Some(&rv1))
        .await
        .expect("re-encrypt at the version read");
    assert_conflict(
        store
            .put_record(&key, &record("uid-a", 3), Some(&rv1))
            .await,
        "replace at a stale version",
    );
    let stored = store.record(&key).await.expect("read").expect("present");
    assert_eq!(stored.resource_version, rv2);
    assert_eq!(stored.value, record("uid-a", 2));

    // The deleted item's finalizer read rv1; the record has moved on, so it stays.
    assert_conflict(
        store.delete_record(&key, &rv1).await,
        "delete at a stale version",
    );
    assert!(store.record(&key).await.expect("read").is_some());
    assert!(store.delete_record(&key, &rv2).await.expect("delete"));
    assert!(!store.delete_record(&key, &rv2).await.expect("already gone"));
    assert!(store.record(&key).await.expect("read").is_none());

    // After a delete the name is free again: a new item of the same name gets a record.
    store
        .put_record(&key, &record("uid-c", 2), None)
        .await
        .expect("create again");
}

async fn listing_returns_every_record_and_nothing_else(b: &impl Backend) {
    let store = b.store();
    assert_eq!(
        store.list_records().await.expect("empty list"),
        Listing {
            items: Vec::new(),
            unreadable: Vec::new()
        }
    );
    // The root key, keyring and environment Secrets sit in the same namespace and must not
    // be listed.
    let root_key = root(1, 0x55);
    store
        .put_keyring_head(&KeyringHead::new(0), None)
        .await
        .expect("head");
    store
        .put_environment(
            "team-0",
            &one_environment(&root_key, "team-0", UnixMillis::from_secs(0)),
            None,
        )
        .await
        .expect("environment");
    store
        .put_root_keys(&RootKeySet::new(root_key, UnixMillis::from_secs(0)), None)
        .await
        .expect("root");

    let mut keys: Vec<ItemKey> = (0..5)
        .map(|i| ItemKey::new(format!("team-{}", i % 2), format!("item-{i}")))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        store
            .put_record(key, &record(&format!("uid-{i}"), 1), None)
            .await
            .expect("create");
    }
    keys.sort();
    let listed = store.list_records().await.expect("list").items;
    assert_eq!(
        listed.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        keys,
        "every record once, sorted by key"
    );
    for (key, versioned) in &listed {
        let read = store.record(key).await.expect("read").expect("present");
        assert_eq!(&read, versioned, "{key}: list and get agree");
    }

    let (gone, at) = (&listed[0].0, &listed[0].1.resource_version);
    assert!(store.delete_record(gone, at).await.expect("delete"));
    let listed = store.list_records().await.expect("list").items;
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|(k, _)| k != gone));
}

/// A store that holds each caller's first environment write at a barrier until every
/// racer has read: so both find the keys missing, and exactly one create lands.
#[derive(Clone)]
struct Racing<S> {
    inner: S,
    barrier: Arc<Barrier>,
    armed: Arc<AtomicBool>,
    reads: Arc<AtomicU32>,
}

impl<S: Store + Clone> Store for Racing<S> {
    async fn root_keys(&self) -> Result<Option<Versioned<RootKeySet>>, StoreError> {
        self.inner.root_keys().await
    }
    async fn put_root_keys(
        &self,
        keys: &RootKeySet,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.inner.put_root_keys(keys, expected).await
    }
    async fn keyring_head(&self) -> Result<Option<Versioned<StoredKeyring>>, StoreError> {
        self.inner.keyring_head().await
    }
    async fn put_keyring_head(
        &self,
        head: &KeyringHead,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.inner.put_keyring_head(head, expected).await
    }
    async fn environment(&self, namespace: &str) -> Result<Option<Versioned<Keyring>>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.environment(namespace).await
    }
    async fn put_environment(
        &self,
        namespace: &str,
        keyring: &Keyring,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.barrier.wait().await;
        }
        self.inner
            .put_environment(namespace, keyring, expected)
            .await
    }
    async fn delete_environment(
        &self,
        namespace: &str,
        expected: &str,
    ) -> Result<bool, StoreError> {
        self.inner.delete_environment(namespace, expected).await
    }
    async fn list_environments(&self) -> Result<Listing<String, Keyring>, StoreError> {
        self.inner.list_environments().await
    }
    async fn some_environments(&self, limit: u32) -> Result<Listing<String, Keyring>, StoreError> {
        self.inner.some_environments(limit).await
    }
    async fn record(&self, key: &ItemKey) -> Result<Option<Versioned<ItemRecord>>, StoreError> {
        self.inner.record(key).await
    }
    async fn put_record(
        &self,
        key: &ItemKey,
        record: &ItemRecord,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.inner.put_record(key, record, expected).await
    }
    async fn delete_record(&self, key: &ItemKey, expected: &str) -> Result<bool, StoreError> {
        self.inner.delete_record(key, expected).await
    }
    async fn list_records(&self) -> Result<Listing<ItemKey, ItemRecord>, StoreError> {
        self.inner.list_records().await
    }
}

/// The webhook and the controller both find the `shop` environment missing and create
/// its keys at the same moment. One create wins; the other re-reads, finds the keys, and
/// both end up using the very same keys.
async fn racing_replicas_creating_one_environment_agree_on_its_keys(b: &impl Backend) {
    replica(b.store().clone()).await; // the root key and the keyring
    let barrier = Arc::new(Barrier::new(2));
    let reads = Arc::new(AtomicU32::new(0));
    let racer = |_| {
        let store = Racing {
            inner: b.store().clone(),
            barrier: barrier.clone(),
            armed: Arc::new(AtomicBool::new(true)),
            reads: reads.clone(),
        };
        tokio::spawn(async move {
            let keys = replica(store).await;
            keys.ensure_environment("shop")
                .await
                .expect("ensure_environment")
        })
    };
    let (webhook, controller) = (racer(0), racer(1));
    let (webhook, controller) = (
        webhook.await.expect("join"),
        controller.await.expect("join"),
    );
    assert_eq!(webhook, controller, "both replicas hold the same keys");
    let stored = b
        .store()
        .environment("shop")
        .await
        .expect("read")
        .expect("present");
    assert_eq!(stored.value, webhook);
    assert_eq!(
        b.store()
            .list_environments()
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    assert_eq!(
        reads.load(Ordering::SeqCst),
        3,
        "one replica lost the race and read once more"
    );
}

/// Six replicas each create a different environment at once: every one lands (each is
/// its own Secret, so they do not even contend).
async fn many_replicas_adding_environments_all_get_through(b: &impl Backend) {
    replica(b.store().clone()).await;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let store = b.store().clone();
            tokio::spawn(async move {
                replica(store)
                    .await
                    .ensure_environment(&format!("team-{i}"))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("join").expect("ensure_environment");
    }
    let listing = b.store().list_environments().await.expect("list");
    assert_eq!(
        listing
            .items
            .iter()
            .map(|(ns, _)| ns.clone())
            .collect::<Vec<_>>(),
        (0..6).map(|i| format!("team-{i}")).collect::<Vec<_>>()
    );
}

async fn the_secrets_have_the_documented_layout(b: &impl Backend) {
    let store = b.store();
    let root_key = root(3, 0x88);
    store
        .put_keyring_head(&KeyringHead::new(7), None)
        .await
        .expect("head");
    store
        .put_environment(
            "shop",
            &one_environment(&root_key, "shop", UnixMillis::from_secs(0)),
            None,
        )
        .await
        .expect("environment");
    store
        .put_root_keys(
            &RootKeySet::new(root_key, UnixMillis::from_secs(1_800_000_000)),
            None,
        )
        .await
        .expect("root");
    let key = ItemKey::new("shop", "db-login");
    store
        .put_record(&key, &record("uid-a", 1), None)
        .await
        .expect("record");

    let check = |secret: &Secret, kind: &str, data_keys: &[&str]| {
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some("monivault")
        );
        assert_eq!(labels.get(RECORD_LABEL).map(String::as_str), Some(kind));
        let data = secret.data.clone().unwrap_or_default();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            data_keys
        );
        data
    };

    let root_secret = b.raw(ROOT_KEY_SECRET).await.expect("root key Secret");
    let data = check(&root_secret, "root-key", &["current", "sinceMs", "v3"]);
    assert_eq!(data["current"].0, b"3");
    assert_eq!(data["sinceMs"].0, b"1800000000000");
    assert_eq!(data["v3"].0, [0x88; 32], "raw 32 bytes");

    let keyring_secret = b.raw(KEYRING_SECRET).await.expect("keyring Secret");
    let data = check(&keyring_secret, "keyring", &[HEAD_DATA]);
    let head: serde_json::Value = serde_json::from_slice(&data[HEAD_DATA].0).expect("json");
    assert_eq!(head, serde_json::json!({"format": 2, "createdAt": 7}));

    let name = layout::environment_secret_name("shop");
    assert!(
        name.starts_with("monivault-env-") && name.len() == 54,
        "{name}"
    );
    let environment_secret = b.raw(&name).await.expect("environment Secret");
    let data = check(&environment_secret, "environment", &[KEYRING_DATA]);
    assert_eq!(
        environment_secret.metadata.annotations,
        Some(BTreeMap::from([(
            ITEM_NAMESPACE_ANNOTATION.to_owned(),
            "shop".to_owned()
        )]))
    );
    let keyring: Keyring = serde_json::from_slice(&data[KEYRING_DATA].0).expect("json");
    assert_eq!(keyring.root_key_version, 3);
    assert_eq!(
        keyring.environments.keys().collect::<Vec<_>>(),
        ["shop"],
        "its own namespace's keys, no other's"
    );

    let name = layout::record_secret_name(&key);
    assert!(
        name.starts_with("monivault-item-") && name.len() == 55,
        "{name}"
    );
    let record_secret = b.raw(&name).await.expect("record Secret");
    let data = check(&record_secret, RECORD_KIND_ITEM, &[RECORD_DATA]);
    assert_eq!(record_secret.metadata.annotations, item_annotations(&key));
    let json: serde_json::Value = serde_json::from_slice(&data[RECORD_DATA].0).expect("json");
    assert_eq!(json["uid"], "uid-a");
    assert_eq!(json["keyVersion"], 1);
    assert_eq!(json["fields"]["password"], "mv1.d.1.ciphertext-of-uid-a");
}

async fn corrupt_secrets_are_reported_as_corrupt_without_their_contents(b: &impl Backend) {
    let store = b.store();
    // Wrong types in the keyring head: serde's own message would quote the value.
    b.plant(secret(
        KEYRING_SECRET,
        "keyring",
        None,
        &[(HEAD_DATA, br#"{"format": "SENTINEL-keyring"}"#)],
    ))
    .await;
    assert_corrupt(store.keyring_head().await, KEYRING_SECRET);

    // A corrupt environment Secret is reported by the listing, not fatal to it.
    let env_name = layout::environment_secret_name("team");
    b.plant(secret(
        &env_name,
        "environment",
        Some(BTreeMap::from([(
            ITEM_NAMESPACE_ANNOTATION.to_owned(),
            "team".to_owned(),
        )])),
        &[(KEYRING_DATA, br#"{"format": "SENTINEL-env"}"#)],
    ))
    .await;
    assert_corrupt(store.environment("team").await, &env_name);
    let listing = store.list_environments().await.expect("list");
    assert!(listing.items.is_empty());
    assert_eq!(listing.unreadable.len(), 1);
    assert_eq!(listing.unreadable[0].secret, env_name);
    assert_eq!(listing.unreadable[0].namespace.as_deref(), Some("team"));
    assert!(!listing.unreadable[0].reason.contains("SENTINEL"));

    b.plant(secret(
        ROOT_KEY_SECRET,
        "root-key",
        None,
        &[
            ("current", b"1"),
            ("v1", b"SENTINEL-31-bytes-of-root-key.."),
        ],
    ))
    .await;
    let message = assert_corrupt(store.root_keys().await, ROOT_KEY_SECRET);
    assert!(message.contains("v1 is not exactly 32 bytes"), "{message}");

    let key = ItemKey::new("shop", "db-login");
    let name = layout::record_secret_name(&key);
    b.plant(secret(
        &name,
        RECORD_KIND_ITEM,
        item_annotations(&key),
        &[(RECORD_DATA, br#"{"uid": "x", "keyVersion": "SENTINEL"}"#)],
    ))
    .await;
    assert_corrupt(store.record(&key).await, &name);
    // A listing skips it and says so, with the namespace it names: one bad Secret must
    // not hide the others, and key retirement must know what it could not read.
    let good = ItemKey::new("team", "fine");
    store
        .put_record(&good, &record("uid-f", 1), None)
        .await
        .expect("a readable record");
    let listing = store.list_records().await.expect("list");
    assert_eq!(
        listing.items.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        [&good]
    );
    assert_eq!(listing.unreadable.len(), 1, "{listing:?}");
    let skipped = &listing.unreadable[0];
    assert_eq!(skipped.secret, name);
    assert_eq!(skipped.namespace.as_deref(), Some("shop"));
    assert!(
        skipped.reason.contains("not have the expected fields"),
        "{skipped:?}"
    );
    assert!(!skipped.reason.contains("SENTINEL"), "{skipped:?}");
    assert!(listing.unreadable_in("shop") && !listing.unreadable_in("team"));

    // A record Secret copied under another item's name is not that item's record.
    let other = ItemKey::new("shop", "other");
    let other_name = layout::record_secret_name(&other);
    b.plant(secret(
        &other_name,
        RECORD_KIND_ITEM,
        item_annotations(&key),
        &[(RECORD_DATA, br#"{}"#)],
    ))
    .await;
    let message = assert_corrupt(store.record(&other).await, &other_name);
    assert!(
        message.contains("annotations name item shop/db-login"),
        "{message}"
    );
}

/// A store written by an earlier version: every environment in `monivault-keyring`, and a
/// root key Secret that does not date its key. The first start splits it, every key the
/// same, and a second start finds nothing to do.
async fn a_keyring_in_the_one_secret_format_is_split_on_first_start(b: &impl Backend) {
    let root_key = root(1, 0x99);
    let mut old = Keyring::new(&root_key, UnixMillis::from_secs(1234));
    for ns in ["shop", "team-a", "team-b"] {
        old.ensure_environment(&root_key, ns, UnixMillis::from_secs(1234))
            .expect("env");
    }
    b.plant(secret(
        ROOT_KEY_SECRET,
        "root-key",
        None,
        &[("current", b"1"), ("v1", &[0x99; 32])],
    ))
    .await;
    b.plant(layout::legacy_keyring_secret(&old).expect("old format"))
        .await;

    let keys = replica(b.store().clone()).await;
    let split: Vec<(String, Keyring)> = b
        .store()
        .list_environments()
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|(ns, stored)| (ns, stored.value))
        .collect();
    assert_eq!(split, old.split());
    let roots = b.store().root_keys().await.expect("read").expect("roots");
    assert_eq!(roots.value.since(), Some(UnixMillis::from_secs(1234)));
    let head = b.raw(KEYRING_SECRET).await.expect("keyring Secret");
    assert_eq!(
        head.data.unwrap_or_default().keys().collect::<Vec<_>>(),
        [HEAD_DATA],
        "the old keyring is gone from the Secret"
    );
    for ns in ["shop", "team-a", "team-b"] {
        let keyring = keys.keyring_for(ns).await.expect("keys");
        let root = keys.root_for(&keyring).await.expect("root");
        assert_eq!(
            keyring.sealing_public_key(&root, ns).expect("opens"),
            old.sealing_public_key(&root_key, ns).expect("opens"),
            "{ns} keeps its sealing key"
        );
    }
    let before = b.store().list_environments().await.expect("list");
    replica(b.store().clone()).await;
    assert_eq!(b.store().list_environments().await.expect("list"), before);
}

// ---------------------------------------------------------------------------------------
// Pure properties, no backend.

#[test]
fn debug_output_holds_no_key_bytes_or_envelopes() {
    let key_bytes = *b"SENTINEL-root-key-32-bytes-long!";
    let mut keys = RootKeySet::new(
        RootKey::from_bytes(1, &key_bytes).expect("key"),
        UnixMillis::from_secs(0),
    );
    keys.insert(RootKey::from_bytes(2, &[0xEE; 32]).expect("key"))
        .expect("insert");
    let debug = format!("{keys:?} {keys:#?}");
    assert!(!debug.contains("SENTINEL"), "{debug}");
    // Nor as numbers: 'S' 'E' 'N' = 83 69 78, 0xEE = 238.
    assert!(!debug.contains("83") && !debug.contains("238"), "{debug}");
    assert!(debug.contains("versions: [1, 2]"), "{debug}");

    let mut record = record("uid-a", 4);
    record
        .fields
        .insert("value".into(), "mv1.d.4.SENTINEL-envelope".into());
    let debug = format!("{record:?} {record:#?}");
    assert!(
        !debug.contains("SENTINEL") && !debug.contains("mv1.d"),
        "{debug}"
    );
    assert!(
        debug.contains("password") && debug.contains("value"),
        "{debug}"
    );
}
