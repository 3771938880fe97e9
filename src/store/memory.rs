//! An in-memory [`Store`], for unit tests only: every end-to-end test uses [`SecretStore`]
//! (DESIGN: "Unit tests may use an in-memory implementation, but every end-to-end test
//! uses the real one").
//!
//! It keeps the very Secrets the real store would write (built and parsed by
//! [`super::layout`]) and enforces the same preconditions, with resourceVersions from a
//! counter, so a test that passes here exercises the same conditions as on the cluster.
//!
//! [`SecretStore`]: super::SecretStore

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::core::v1::Secret;

use super::layout::{
    self, KEYRING_SECRET, RECORD_KIND_ENVIRONMENT, RECORD_KIND_ITEM, RECORD_LABEL, ROOT_KEY_SECRET,
};
use super::{
    ItemKey, ItemRecord, KeyringHead, Listing, RootKeySet, Store, StoreError, StoredKeyring,
    Versioned,
};
use crate::crypto::Keyring;

/// Clones share one store, as replicas share one API server.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    last_rv: u64,
    secrets: BTreeMap<String, Secret>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.secrets.values_mut().for_each(layout::wipe);
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().secrets.keys().cloned().collect();
        f.debug_struct("MemoryStore")
            .field("secrets", &names)
            .finish()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Stores `secret` as is, with no precondition and no validation, and returns its new
    /// resourceVersion. For tests that plant what the API server could hold (e.g. a
    /// Secret edited by hand into something corrupt).
    pub fn insert_raw(&self, mut secret: Secret) -> String {
        let mut inner = self.lock();
        let rv = inner.next_rv();
        secret.metadata.resource_version = Some(rv.clone());
        let name = secret.metadata.name.clone().unwrap_or_default();
        if let Some(mut old) = inner.secrets.insert(name, secret) {
            layout::wipe(&mut old);
        }
        rv
    }

    /// The stored Secret named `name`, as the real store would have written it.
    pub fn get_raw(&self, name: &str) -> Option<Secret> {
        self.get(name)
    }

    /// A poisoned lock only means another test thread panicked; the maps are still whole.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, name: &str) -> Option<Secret> {
        self.lock().secrets.get(name).cloned()
    }

    /// Deletes `name` only while it is at `expected`, as the API server does with a
    /// precondition; `Ok(false)` if it is gone.
    fn delete(&self, name: &str, what: &str, expected: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(stored) = inner.secrets.get(name) else {
            return Ok(false);
        };
        if stored.metadata.resource_version.as_deref() != Some(expected) {
            return Err(StoreError::Conflict {
                what: what.to_owned(),
            });
        }
        if let Some(mut old) = inner.secrets.remove(name) {
            layout::wipe(&mut old);
        }
        Ok(true)
    }

    /// Up to `limit` stored Secrets labelled as `kind`, as a label-selected list returns.
    fn of_kind(&self, kind: &str, limit: usize) -> Vec<Secret> {
        self.lock()
            .secrets
            .values()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(RECORD_LABEL))
                    .is_some_and(|k| k == kind)
            })
            .take(limit)
            .cloned()
            .collect()
    }

    /// Create (`expected = None`) or replace at `expected`, as the API server does.
    fn put(
        &self,
        what: &str,
        mut secret: Secret,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let mut inner = self.lock();
        let stored_rv = inner
            .secrets
            .get(&name)
            .map(|s| s.metadata.resource_version.as_deref().unwrap_or_default());
        if stored_rv != expected {
            return Err(StoreError::Conflict {
                what: what.to_owned(),
            });
        }
        let rv = inner.next_rv();
        secret.metadata.resource_version = Some(rv.clone());
        if let Some(mut old) = inner.secrets.insert(name, secret) {
            layout::wipe(&mut old);
        }
        Ok(rv)
    }
}

impl Inner {
    fn next_rv(&mut self) -> String {
        self.last_rv += 1;
        self.last_rv.to_string()
    }
}

impl Store for MemoryStore {
    async fn root_keys(&self) -> Result<Option<Versioned<RootKeySet>>, StoreError> {
        let Some(secret) = self.get(ROOT_KEY_SECRET).map(layout::WipeOnDrop) else {
            return Ok(None);
        };
        let what = layout::secret_what(ROOT_KEY_SECRET);
        layout::versioned(&secret.0, &what, layout::parse_root_keys).map(Some)
    }

    async fn put_root_keys(
        &self,
        keys: &RootKeySet,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let mut secret = layout::root_key_secret(keys)?;
        let secret = std::mem::take(&mut secret.0);
        self.put(&layout::secret_what(ROOT_KEY_SECRET), secret, expected)
    }

    async fn keyring_head(&self) -> Result<Option<Versioned<StoredKeyring>>, StoreError> {
        let what = layout::secret_what(KEYRING_SECRET);
        self.get(KEYRING_SECRET)
            .map(|secret| layout::versioned(&secret, &what, layout::parse_keyring_head))
            .transpose()
    }

    async fn put_keyring_head(
        &self,
        head: &KeyringHead,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let secret = layout::head_secret(head)?;
        self.put(&layout::secret_what(KEYRING_SECRET), secret, expected)
    }

    async fn environment(&self, namespace: &str) -> Result<Option<Versioned<Keyring>>, StoreError> {
        let what = layout::environment_what(namespace);
        self.get(&layout::environment_secret_name(namespace))
            .map(|secret| {
                layout::versioned(&secret, &what, |s| Ok(layout::parse_environment(s)?.1))
            })
            .transpose()
    }

    async fn put_environment(
        &self,
        namespace: &str,
        keyring: &Keyring,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let secret = layout::environment_secret(namespace, keyring)?;
        self.put(&layout::environment_what(namespace), secret, expected)
    }

    async fn delete_environment(
        &self,
        namespace: &str,
        expected: &str,
    ) -> Result<bool, StoreError> {
        self.delete(
            &layout::environment_secret_name(namespace),
            &layout::environment_what(namespace),
            expected,
        )
    }

    async fn list_environments(&self) -> Result<Listing<String, Keyring>, StoreError> {
        Ok(layout::environment_listing(
            &self.of_kind(RECORD_KIND_ENVIRONMENT, usize::MAX),
        ))
    }

    async fn some_environments(&self, limit: u32) -> Result<Listing<String, Keyring>, StoreError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(layout::environment_listing(
            &self.of_kind(RECORD_KIND_ENVIRONMENT, limit),
        ))
    }

    async fn record(&self, key: &ItemKey) -> Result<Option<Versioned<ItemRecord>>, StoreError> {
        let what = layout::record_what(key);
        self.get(&layout::record_secret_name(key))
            .map(|secret| layout::versioned(&secret, &what, |s| Ok(layout::parse_record(s)?.1)))
            .transpose()
    }

    async fn put_record(
        &self,
        key: &ItemKey,
        record: &ItemRecord,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let secret = layout::record_secret(key, record)?;
        self.put(&layout::record_what(key), secret, expected)
    }

    async fn delete_record(&self, key: &ItemKey, expected: &str) -> Result<bool, StoreError> {
        self.delete(
            &layout::record_secret_name(key),
            &layout::record_what(key),
            expected,
        )
    }

    async fn list_records(&self) -> Result<Listing<ItemKey, ItemRecord>, StoreError> {
        Ok(layout::record_listing(
            &self.of_kind(RECORD_KIND_ITEM, usize::MAX),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crypto::{RootKey, UnixMillis};

    fn record(uid: &str) -> ItemRecord {
        ItemRecord {
            uid: uid.into(),
            key_version: 1,
            fields: BTreeMap::from([("password".into(), "mv1.d.1.ct".into())]),
            source_digest: "d".repeat(64),
            generation: Some(1),
        }
    }

    #[tokio::test]
    async fn records_follow_the_api_servers_preconditions() {
        let store = MemoryStore::new();
        let key = ItemKey::new("shop", "db");
        assert!(store.record(&key).await.expect("read").is_none());
        let rv1 = store
            .put_record(&key, &record("a"), None)
            .await
            .expect("create");
        let err = store
            .put_record(&key, &record("b"), None)
            .await
            .expect_err("exists");
        assert!(err.is_conflict(), "{err}");
        let rv2 = store
            .put_record(&key, &record("b"), Some(&rv1))
            .await
            .expect("replace");
        assert_ne!(rv1, rv2);
        let err = store
            .put_record(&key, &record("c"), Some(&rv1))
            .await
            .expect_err("stale");
        assert_eq!(err.category(), "conflict");
        let stored = store.record(&key).await.expect("read").expect("present");
        assert_eq!(stored.value.uid, "b");
        assert_eq!(stored.resource_version, rv2);
        assert!(
            store
                .delete_record(&key, &rv1)
                .await
                .expect_err("stale")
                .is_conflict()
        );
        assert!(store.delete_record(&key, &rv2).await.expect("delete"));
        assert!(!store.delete_record(&key, &rv2).await.expect("gone"));
        let other = ItemKey::new("shop", "never");
        assert!(
            store
                .put_record(&other, &record("x"), Some("1"))
                .await
                .expect_err("gone")
                .is_conflict()
        );
    }

    #[tokio::test]
    async fn clones_share_state_and_root_keys_round_trip() {
        let store = MemoryStore::new();
        let replica = store.clone();
        let set = RootKeySet::new(
            RootKey::from_bytes(7, &[9u8; 32]).expect("key"),
            UnixMillis::from_secs(0),
        );
        store.put_root_keys(&set, None).await.expect("create");
        let read = replica.root_keys().await.expect("read").expect("present");
        assert_eq!(read.value.current(), 7);
        assert_eq!(
            read.value.current_key().expect("key").expose_bytes(),
            &[9u8; 32]
        );
        assert!(format!("{store:?}").contains("monivault-root-key"));
    }

    /// `shop`'s keys, stored, with the keyring they were made in.
    async fn shop(store: &MemoryStore) -> (RootKey, Keyring) {
        let root = RootKey::from_bytes(1, &[1u8; 32]).expect("key");
        let mut keyring = Keyring::new(&root, UnixMillis::from_secs(0));
        keyring
            .ensure_environment(&root, "shop", UnixMillis::from_secs(0))
            .expect("env");
        store
            .put_environment("shop", &keyring, None)
            .await
            .expect("create");
        (root, keyring)
    }

    #[tokio::test]
    async fn updating_missing_environment_keys_is_not_found() {
        let store = MemoryStore::new();
        let result: Result<Keyring, StoreError> =
            super::super::update_environment(&store, "shop", |_| Ok(true)).await;
        assert!(
            matches!(result, Err(StoreError::NotFound { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn update_environment_writes_only_when_changed() {
        let store = MemoryStore::new();
        let (_, keyring) = shop(&store).await;
        let rv = store
            .environment("shop")
            .await
            .expect("read")
            .expect("present")
            .resource_version;
        let unchanged: Keyring =
            super::super::update_environment(&store, "shop", |_| Ok::<_, StoreError>(false))
                .await
                .expect("no-op");
        assert_eq!(unchanged, keyring);
        let stored = store
            .environment("shop")
            .await
            .expect("read")
            .expect("present");
        assert_eq!(stored.resource_version, rv, "nothing was written");
        let changed = super::super::update_environment(&store, "shop", |k| {
            k.root_key_since = UnixMillis::from_secs(42);
            Ok::<_, StoreError>(true)
        })
        .await
        .expect("write");
        assert_eq!(changed.root_key_since, UnixMillis::from_secs(42));
        let stored = store
            .environment("shop")
            .await
            .expect("read")
            .expect("present");
        assert_ne!(stored.resource_version, rv);
        assert_eq!(stored.value.root_key_since, UnixMillis::from_secs(42));
    }

    #[tokio::test]
    async fn update_environment_gives_up_with_a_conflict_when_it_always_loses() {
        let store = MemoryStore::new();
        shop(&store).await;
        let name = layout::environment_secret_name("shop");
        let mut calls = 0;
        let result = super::super::update_environment(&store, "shop", |k| {
            calls += 1;
            // Another writer sneaks in between every read and write.
            let stored = store.lock().secrets[&name].clone();
            store.insert_raw(stored);
            k.root_key_since = k.root_key_since.plus(std::time::Duration::from_millis(1));
            Ok::<_, StoreError>(true)
        })
        .await;
        assert!(result.expect_err("gives up").is_conflict());
        assert_eq!(calls, super::super::UPDATE_ATTEMPTS);
    }

    #[tokio::test]
    async fn closure_errors_end_the_loop() {
        #[derive(Debug)]
        enum Failure {
            Mine,
            Store(#[allow(dead_code)] StoreError),
        }
        impl From<StoreError> for Failure {
            fn from(e: StoreError) -> Self {
                Failure::Store(e)
            }
        }
        let store = MemoryStore::new();
        shop(&store).await;
        let result = super::super::update_environment(&store, "shop", |_| Err(Failure::Mine)).await;
        assert!(matches!(result, Err(Failure::Mine)));
    }

    #[tokio::test]
    async fn environments_are_deleted_only_at_the_version_read() {
        let store = MemoryStore::new();
        shop(&store).await;
        let rv = store
            .environment("shop")
            .await
            .expect("read")
            .expect("present")
            .resource_version;
        super::super::update_environment(&store, "shop", |k| {
            k.root_key_since = UnixMillis::from_secs(1);
            Ok::<_, StoreError>(true)
        })
        .await
        .expect("write");
        assert!(
            store
                .delete_environment("shop", &rv)
                .await
                .expect_err("stale")
                .is_conflict()
        );
        let rv = store
            .environment("shop")
            .await
            .expect("read")
            .expect("present")
            .resource_version;
        assert!(store.delete_environment("shop", &rv).await.expect("delete"));
        assert!(!store.delete_environment("shop", &rv).await.expect("gone"));
        assert!(
            store
                .list_environments()
                .await
                .expect("list")
                .items
                .is_empty()
        );
    }
}
