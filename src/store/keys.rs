//! The operator's keys at run time: the root key set, held in memory and reloaded on a
//! timer, and each environment's keys, read from and written to the store by
//! compare-and-swap.
//!
//! Shared by the controller, the webhook and the runner, so all create an environment's
//! keys the same way and two racing processes always agree on one key.
//!
//! What it must never do: make a new root key, or an empty keyring, over existing data
//! ([`Keys::bootstrap`] refuses to start instead, and says what to restore), or keep signing
//! with a root key version after another replica made a newer one current for longer
//! than one reload period.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::RwLock;
use tokio::time::Instant;

use super::{KeyringHead, RootKeySet, Store, StoreError, StoredKeyring, update_environment};
use crate::crypto::{CryptoError, Keyring, RootKey, UnixMillis};

/// How often every replica reads the root key Secret again, by default. A root key
/// rotation keeps the version it replaced for at least this long after the switch (plus
/// an admission's time), so no replica signs a stamp with a version that is gone.
pub const ROOT_KEY_RELOAD: Duration = Duration::from_secs(30);

/// Environments looked at to check the root key at start.
const ROOT_CHECK_SAMPLE: u32 = 5;

/// Rounds of the keyring split before giving up (an older operator still writing the
/// one-Secret format makes a round start over).
const SPLIT_ATTEMPTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the keyring exists but the root key Secret does not: refusing to start, because a new root key could not open existing data. Restore the store from a backup: monivault restore --recovery-private-key NAME.private < backup.mvb (run it again if a restore was interrupted)"
    )]
    RootKeyMissing,
    #[error(
        "the keyring Secret monivault-keyring is gone but {evidence}: refusing to start, because an empty keyring would make every stored record, and every sealed value in Git, unreadable. Restore the store from a backup: monivault restore --recovery-private-key NAME.private < backup.mvb (run it again if a restore was interrupted)"
    )]
    KeyringMissing { evidence: String },
    #[error(
        "the root key Secret does not hold the key the keyring is wrapped under: refusing to start. {0}"
    )]
    WrongRootKey(#[source] CryptoError),
    #[error("keyring store: {0}")]
    Store(#[from] StoreError),
    #[error("keyring: {0}")]
    Crypto(#[from] CryptoError),
}

impl KeyError {
    pub fn category(&self) -> &'static str {
        match self {
            KeyError::RootKeyMissing | KeyError::WrongRootKey(_) => "root_key",
            KeyError::KeyringMissing { .. } => "keyring",
            KeyError::Store(e) => e.category(),
            KeyError::Crypto(_) => "crypto",
        }
    }
}

/// Unix seconds now; the engine takes time as an argument to stay pure.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Now, as key times count it; the engine takes time as an argument to stay pure.
pub fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| UnixMillis::from_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        .unwrap_or(UnixMillis::from_millis(0))
}

/// The root key set and when it was read.
struct LoadedRoots {
    set: RootKeySet,
    at: Instant,
}

pub struct Keys<S> {
    store: Arc<S>,
    roots: RwLock<LoadedRoots>,
    reload_every: Duration,
    /// Encryptions per namespace not yet added to its keys. Counting in memory keeps a
    /// store write off the ingest path; the rotation check flushes it by CAS. A crash
    /// loses at most one check interval's count, far below the 2^31 bound's margin.
    unflushed_encryptions: Mutex<BTreeMap<String, u64>>,
}

impl<S: Store> Keys<S> {
    /// [`Keys::bootstrap_with`] the default reload period.
    pub async fn bootstrap(store: Arc<S>) -> Result<Self, KeyError> {
        Keys::bootstrap_with(store, ROOT_KEY_RELOAD).await
    }

    /// Loads the root key set and the keyring head, creating both at the first start, and
    /// splits a keyring of the one-Secret format into one Secret per environment. Refuses
    /// to start rather than make a new root key or an empty keyring over existing data,
    /// or run with a root key that does not open the stored environments.
    pub async fn bootstrap_with(store: Arc<S>, reload_every: Duration) -> Result<Self, KeyError> {
        let head = store.keyring_head().await?;
        let roots = match store.root_keys().await? {
            Some(roots) => roots.value,
            None => {
                let environments = store.some_environments(1).await?;
                if head.is_some()
                    || !environments.items.is_empty()
                    || !environments.unreadable.is_empty()
                {
                    return Err(KeyError::RootKeyMissing);
                }
                let fresh = RootKeySet::new(RootKey::generate(1)?, now_millis());
                match store.put_root_keys(&fresh, None).await {
                    Ok(_) => {
                        tracing::info!(version = 1, "created the root key");
                        fresh
                    }
                    // Another replica created it first: use theirs.
                    Err(e) if e.is_conflict() => {
                        store
                            .root_keys()
                            .await?
                            .ok_or(KeyError::RootKeyMissing)?
                            .value
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match head.map(|h| (h.value, h.resource_version)) {
            Some((StoredKeyring::Head(_), _)) => {}
            Some((StoredKeyring::Legacy(keyring), rv)) => {
                split_keyring(store.as_ref(), keyring, rv).await?;
            }
            None => create_head(store.as_ref(), &roots).await?,
        }
        let roots = store
            .root_keys()
            .await?
            .ok_or(KeyError::RootKeyMissing)?
            .value;
        let keys = Keys {
            store,
            roots: RwLock::new(LoadedRoots {
                set: roots,
                at: Instant::now(),
            }),
            reload_every,
            unflushed_encryptions: Mutex::new(BTreeMap::new()),
        };
        // A root key Secret from another installation (or a wrong backup) would open
        // nothing: refuse now, not at the first item.
        for (_, keyring) in keys.store.some_environments(ROOT_CHECK_SAMPLE).await?.items {
            keys.root_for(&keyring.value).await.map_err(|e| match e {
                KeyError::Crypto(c) => KeyError::WrongRootKey(c),
                other => other,
            })?;
        }
        Ok(keys)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// How often the root key set is read again.
    pub fn reload_every(&self) -> Duration {
        self.reload_every
    }

    /// The root key that opens `keyring`. Reloads the root key Secret once if the keyring
    /// names a version this process has not seen (another replica rotated it).
    pub async fn root_for(&self, keyring: &Keyring) -> Result<RootKey, KeyError> {
        let version = keyring.root_key_version;
        if let Ok(root) = self.roots.read().await.set.key(version)
            && keyring.check_root(&root).is_ok()
        {
            return Ok(root);
        }
        let root = self.reload_root(version).await?;
        keyring.check_root(&root)?;
        Ok(root)
    }

    /// The current root key: what new environments are wrapped under and new admission
    /// stamps are signed with. Read again once the copy in memory is a reload period old,
    /// so every replica follows a rotation within that period.
    pub async fn current_root(&self) -> Result<RootKey, KeyError> {
        {
            let loaded = self.roots.read().await;
            if loaded.at.elapsed() < self.reload_every {
                return Ok(loaded.set.current_key()?);
            }
        }
        self.reload().await?;
        Ok(self.roots.read().await.set.current_key()?)
    }

    /// Root key `version`, reloading the root key Secret if this process has not seen it
    /// (another replica rotated) or its copy is a reload period old (so a removed version
    /// stops verifying too). Old versions stay stored while a stamp names them.
    pub async fn root_key(&self, version: u32) -> Result<RootKey, KeyError> {
        {
            let loaded = self.roots.read().await;
            if loaded.at.elapsed() < self.reload_every
                && let Ok(root) = loaded.set.key(version)
            {
                return Ok(root);
            }
        }
        self.reload_root(version).await
    }

    /// Reads the root key Secret again now: after this process changed it itself.
    pub async fn reload_roots(&self) -> Result<(), KeyError> {
        self.reload().await
    }

    /// Reads the root key Secret again and returns key `version` from it.
    async fn reload_root(&self, version: u32) -> Result<RootKey, KeyError> {
        self.reload().await?;
        Ok(self.roots.read().await.set.key(version)?)
    }

    /// Reads the root key Secret again.
    async fn reload(&self) -> Result<(), KeyError> {
        let fresh = self
            .store
            .root_keys()
            .await?
            .ok_or(KeyError::RootKeyMissing)?
            .value;
        let mut loaded = self.roots.write().await;
        if fresh.current() != loaded.set.current() {
            tracing::info!(
                from = loaded.set.current(),
                to = fresh.current(),
                "the current root key changed"
            );
        }
        *loaded = LoadedRoots {
            set: fresh,
            at: Instant::now(),
        };
        Ok(())
    }

    /// Makes the root keys in memory look `ago` old, as if that much time had passed
    /// since they were read: for tests of the reload, which must not sleep.
    #[cfg(test)]
    pub(crate) async fn pretend_roots_loaded_ago(&self, ago: Duration) {
        let mut loaded = self.roots.write().await;
        if let Some(at) = loaded.at.checked_sub(ago) {
            loaded.at = at;
        }
    }

    /// `namespace`'s keys as stored now: a keyring holding that one environment, or, if it
    /// has none yet, an empty keyring under the current root key (written nowhere).
    pub async fn keyring_for(&self, namespace: &str) -> Result<Keyring, KeyError> {
        match self.store.environment(namespace).await? {
            Some(stored) => Ok(stored.value),
            None => Ok(Keyring::new(
                &self.current_root().await?,
                UnixMillis::from_millis(0),
            )),
        }
    }

    /// Makes sure `namespace` has keys, creating them under the current root key if not.
    /// Returns the keyring that holds them. Two processes racing both create; one create
    /// wins and the other reads the winner's keys, so both use the same.
    pub async fn ensure_environment(&self, namespace: &str) -> Result<Keyring, KeyError> {
        for _ in 0..3 {
            if let Some(stored) = self.store.environment(namespace).await? {
                return Ok(stored.value);
            }
            let root = self.current_root().await?;
            let now = now_millis();
            let mut keyring = Keyring::new(&root, now);
            keyring.ensure_environment(&root, namespace, now)?;
            match self.store.put_environment(namespace, &keyring, None).await {
                Ok(_) => {
                    tracing::info!(
                        namespace,
                        root_key = root.version(),
                        "created environment keys"
                    );
                    return Ok(keyring);
                }
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict {
            what: format!("the keys of environment {namespace}"),
        }
        .into())
    }

    /// Notes `n` encryptions under `namespace`'s current data key, for the 2^31 bound.
    pub fn count_encryptions(&self, namespace: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut counts = self
            .unflushed_encryptions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(namespace.to_owned()).or_insert(0);
        *count = count.saturating_add(n);
    }

    /// Adds the counted encryptions to each environment's keys by compare-and-swap. Counts
    /// of an environment that is gone are dropped; on any other failure they are kept for
    /// the next flush, and the first error is returned once every environment was tried.
    /// Counts go to the key current at flush time, which can only over-count a newer key:
    /// the safe direction.
    pub async fn flush_encryption_counts(&self) -> Result<(), KeyError> {
        let counts = std::mem::take(
            &mut *self
                .unflushed_encryptions
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut first_error = None;
        for (namespace, n) in counts {
            let result = update_environment(self.store.as_ref(), &namespace, |keyring| {
                keyring.record_encryptions(&namespace, n)?;
                Ok::<_, KeyError>(true)
            })
            .await;
            match result {
                Ok(_) | Err(KeyError::Store(StoreError::NotFound { .. })) => {}
                Err(e) => {
                    self.count_encryptions(&namespace, n);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The keyring head of a new installation, or a refusal when the store shows the keyring
/// existed: records, an environment, or a root key rotated since the first start.
async fn create_head<S: Store>(store: &S, roots: &RootKeySet) -> Result<(), KeyError> {
    let mut evidence = Vec::new();
    if roots.newest() > 1 {
        evidence.push(format!(
            "the root key has been rotated (version {})",
            roots.newest()
        ));
    }
    let environments = store.some_environments(1).await?;
    if !environments.items.is_empty() || !environments.unreadable.is_empty() {
        evidence.push("environment Secrets exist".to_owned());
    }
    let records = store.list_records().await?;
    if !records.items.is_empty() || !records.unreadable.is_empty() {
        evidence.push(format!(
            "{} item records exist",
            records.items.len() + records.unreadable.len()
        ));
    }
    if !evidence.is_empty() {
        return Err(KeyError::KeyringMissing {
            evidence: evidence.join(", "),
        });
    }
    match store
        .put_keyring_head(&KeyringHead::new(unix_now()), None)
        .await
    {
        Ok(_) => {
            tracing::info!("created the keyring");
            Ok(())
        }
        // Another replica created it first.
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Splits a keyring of the one-Secret format into one Secret per environment, then
/// replaces it with the head (at the version read). Idempotent and crash-safe: an
/// environment Secret that exists already is never overwritten (it is the same keys, or
/// newer), and until the head is written a restart simply splits again. If an older
/// operator changed the old keyring meanwhile, the head write conflicts and the split
/// starts over from the fresh copy; once the head is written, such an operator's writes
/// fail, so nothing it does is silently lost.
async fn split_keyring<S: Store>(
    store: &S,
    mut keyring: Keyring,
    mut resource_version: String,
) -> Result<(), KeyError> {
    for _ in 0..SPLIT_ATTEMPTS {
        let environments = keyring.split();
        let mut created = 0;
        for (namespace, one) in &environments {
            match store.put_environment(namespace, one, None).await {
                Ok(_) => created += 1,
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        date_root_key(store, keyring.root_key_since).await?;
        match store
            .put_keyring_head(&KeyringHead::new(unix_now()), Some(&resource_version))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    environments = environments.len(),
                    created,
                    "split the keyring into one Secret per environment"
                );
                return Ok(());
            }
            Err(e) if e.is_conflict() => match store.keyring_head().await? {
                Some(stored) => match stored.value {
                    StoredKeyring::Head(_) => return Ok(()),
                    StoredKeyring::Legacy(fresh) => {
                        keyring = fresh;
                        resource_version = stored.resource_version;
                    }
                },
                None => {
                    return Err(KeyError::KeyringMissing {
                        evidence: "it was deleted while being split".into(),
                    });
                }
            },
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict {
        what: "the keyring (kept changing while being split)".into(),
    }
    .into())
}

/// Dates the current root key where the root key Secret does not (written before it was
/// kept), from the one-Secret keyring's own record of it.
async fn date_root_key<S: Store>(store: &S, since: UnixMillis) -> Result<(), KeyError> {
    for _ in 0..SPLIT_ATTEMPTS {
        let Some(mut roots) = store.root_keys().await? else {
            return Err(KeyError::RootKeyMissing);
        };
        if roots.value.since().is_some() {
            return Ok(());
        }
        roots.value.set_since(since);
        match store
            .put_root_keys(&roots.value, Some(&roots.resource_version))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict {
        what: "the root key Secret".into(),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout;
    use crate::store::{ItemKey, ItemRecord, MemoryStore};

    /// Stores `root` as version 1 of the root key set.
    async fn store_root(store: &MemoryStore, root: &RootKey) {
        store
            .put_root_keys(
                &RootKeySet::new(
                    RootKey::from_bytes(1, root.expose_bytes()).expect("copy"),
                    UnixMillis::from_secs(0),
                ),
                None,
            )
            .await
            .expect("roots");
    }

    /// A keyring of the one-Secret format with `namespaces`, under `root`.
    fn old_keyring(root: &RootKey, namespaces: &[&str]) -> Keyring {
        let mut keyring = Keyring::new(root, UnixMillis::from_secs(1234));
        for ns in namespaces {
            keyring
                .ensure_environment(root, ns, UnixMillis::from_secs(1234))
                .expect("env");
        }
        keyring
    }

    /// Plants the root key Secret as an older version wrote it: no `since`.
    fn plant_undated_root(store: &MemoryStore, root: &RootKey) {
        let mut secret = layout::root_key_secret(&RootKeySet::new(
            RootKey::from_bytes(root.version(), root.expose_bytes()).expect("copy"),
            UnixMillis::from_secs(0),
        ))
        .expect("secret");
        if let Some(data) = secret.0.data.as_mut() {
            data.remove(layout::ROOT_KEY_SINCE);
        }
        store.insert_raw(std::mem::take(&mut secret.0));
    }

    #[tokio::test]
    async fn a_keyring_in_the_one_secret_format_is_split_on_first_start() {
        let store = MemoryStore::new();
        let root = RootKey::generate(1).expect("root");
        plant_undated_root(&store, &root);
        let old = old_keyring(&root, &["shop", "team-a", "team-b"]);
        store.insert_raw(layout::legacy_keyring_secret(&old).expect("secret"));
        let roots = store.root_keys().await.expect("read").expect("roots");
        assert_eq!(roots.value.since(), None, "as an older version left it");

        let keys = Keys::bootstrap(Arc::new(store.clone()))
            .await
            .expect("bootstrap");
        assert!(matches!(
            store
                .keyring_head()
                .await
                .expect("read")
                .expect("head")
                .value,
            StoredKeyring::Head(_)
        ));
        let listing = store.list_environments().await.expect("list");
        let split: Vec<(String, Keyring)> = listing
            .items
            .into_iter()
            .map(|(ns, stored)| (ns, stored.value))
            .collect();
        assert_eq!(split, old.split(), "every environment, keys unchanged");
        let roots = store.root_keys().await.expect("read").expect("roots");
        assert_eq!(
            roots.value.since(),
            Some(UnixMillis::from_secs(1234)),
            "the root key keeps its age"
        );
        // Each opens, and the running keys use them.
        let shop = keys.keyring_for("shop").await.expect("keys");
        let root = keys.root_for(&shop).await.expect("root");
        assert_eq!(
            shop.sealing_public_key(&root, "shop").expect("opens"),
            old.sealing_public_key(&root, "shop").expect("opens")
        );
        // A second start finds nothing to do.
        let before = store.list_environments().await.expect("list");
        Keys::bootstrap(Arc::new(store.clone()))
            .await
            .expect("again");
        assert_eq!(store.list_environments().await.expect("list"), before);
    }

    #[tokio::test]
    async fn a_split_never_overwrites_keys_already_split() {
        let store = MemoryStore::new();
        let root = RootKey::generate(1).expect("root");
        store_root(&store, &root).await;
        let old = old_keyring(&root, &["shop", "team-a"]);
        store.insert_raw(layout::legacy_keyring_secret(&old).expect("secret"));
        // An earlier attempt split `shop` and its sealing key has rotated since.
        let mut newer = old.split().remove(0).1;
        newer
            .rotate_sealing_key(&root, "shop", UnixMillis::from_secs(2000))
            .expect("rotate");
        store
            .put_environment("shop", &newer, None)
            .await
            .expect("plant");
        Keys::bootstrap(Arc::new(store.clone()))
            .await
            .expect("bootstrap");
        assert_eq!(
            store
                .environment("shop")
                .await
                .expect("read")
                .expect("kept")
                .value,
            newer
        );
        assert!(store.environment("team-a").await.expect("read").is_some());
    }

    fn record() -> ItemRecord {
        ItemRecord {
            uid: "u".into(),
            key_version: 1,
            fields: BTreeMap::new(),
            source_digest: String::new(),
            generation: None,
        }
    }

    async fn refusal(store: MemoryStore) -> String {
        match Keys::bootstrap(Arc::new(store.clone())).await {
            Err(e @ KeyError::KeyringMissing { .. }) => {
                assert!(
                    store.keyring_head().await.expect("read").is_none(),
                    "no empty keyring was made"
                );
                e.to_string()
            }
            Err(e) => panic!("expected a refusal for a missing keyring, got {e}"),
            Ok(_) => panic!("started over a deleted keyring"),
        }
    }

    #[tokio::test]
    async fn a_deleted_keyring_is_not_replaced_while_anything_shows_it_existed() {
        // Records exist: they would never open again.
        let store = MemoryStore::new();
        store
            .put_root_keys(
                &RootKeySet::new(
                    RootKey::generate(1).expect("root"),
                    UnixMillis::from_secs(0),
                ),
                None,
            )
            .await
            .expect("roots");
        store
            .put_record(&ItemKey::new("shop", "login"), &record(), None)
            .await
            .expect("record");
        let message = refusal(store).await;
        assert!(message.contains("1 item records exist"), "{message}");
        assert!(message.contains("monivault restore"), "{message}");

        // The root key was rotated: it has been in use.
        let store = MemoryStore::new();
        let mut roots = RootKeySet::new(
            RootKey::generate(1).expect("root"),
            UnixMillis::from_secs(0),
        );
        roots
            .insert(RootKey::generate(2).expect("root"))
            .expect("v2");
        roots
            .set_current(2, UnixMillis::from_secs(10))
            .expect("current");
        roots.remove(1).expect("remove v1");
        store.put_root_keys(&roots, None).await.expect("roots");
        let message = refusal(store).await;
        assert!(message.contains("rotated (version 2)"), "{message}");

        // Environment Secrets exist but the head is gone.
        let store = MemoryStore::new();
        let root = RootKey::generate(1).expect("root");
        store_root(&store, &root).await;
        let (ns, one) = old_keyring(&root, &["shop"]).split().remove(0);
        store.put_environment(&ns, &one, None).await.expect("env");
        let message = refusal(store).await;
        assert!(message.contains("environment Secrets exist"), "{message}");
    }

    #[tokio::test]
    async fn a_first_start_after_a_crash_between_root_key_and_keyring_carries_on() {
        let store = MemoryStore::new();
        store
            .put_root_keys(
                &RootKeySet::new(
                    RootKey::generate(1).expect("root"),
                    UnixMillis::from_secs(0),
                ),
                None,
            )
            .await
            .expect("roots");
        Keys::bootstrap(Arc::new(store.clone()))
            .await
            .expect("nothing existed yet");
        assert!(store.keyring_head().await.expect("read").is_some());
    }

    #[tokio::test]
    async fn a_root_key_from_elsewhere_is_refused_at_start() {
        let store = MemoryStore::new();
        let keys = Keys::bootstrap(Arc::new(store.clone()))
            .await
            .expect("first");
        keys.ensure_environment("shop").await.expect("env");
        let other = RootKeySet::new(
            RootKey::generate(1).expect("another key"),
            UnixMillis::from_secs(0),
        );
        let stored = store.root_keys().await.expect("read").expect("roots");
        store
            .put_root_keys(&other, Some(&stored.resource_version))
            .await
            .expect("swap");
        assert!(matches!(
            Keys::bootstrap(Arc::new(store)).await,
            Err(KeyError::WrongRootKey(_))
        ));
    }
}
