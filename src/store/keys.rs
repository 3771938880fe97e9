//! The operator's keys at run time: the root key set, held in memory, and the keyring,
//! read from and written to the store by compare-and-swap.
//!
//! Shared by the controller, the webhook and the runner, so all create an environment's keys the
//! same way and two racing processes always agree on one key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::RwLock;

use super::{RootKeySet, Store, StoreError, update_keyring};
use crate::crypto::{CryptoError, Keyring, RootKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the keyring exists but the root key Secret does not: refusing to start, because a new root key could not open existing data. Restore the root key Secret from backup"
    )]
    RootKeyMissing,
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

pub struct Keys<S> {
    store: Arc<S>,
    roots: RwLock<RootKeySet>,
    /// Encryptions per namespace not yet added to the keyring. Counting in memory keeps a
    /// keyring write off the ingest path; the rotation check flushes it by CAS. A crash
    /// loses at most one check interval's count, far below the 2^31 bound's margin.
    unflushed_encryptions: Mutex<BTreeMap<String, u64>>,
}

impl<S: Store> Keys<S> {
    /// Loads the root key and checks it against the keyring, creating both at the first
    /// start. Never makes a new root key when a keyring already exists.
    pub async fn bootstrap(store: Arc<S>) -> Result<Self, KeyError> {
        let roots = match store.root_keys().await? {
            Some(roots) => roots.value,
            None => {
                if store.keyring().await?.is_some() {
                    return Err(KeyError::RootKeyMissing);
                }
                let fresh = RootKeySet::new(RootKey::generate(1)?);
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
        let keyring = match store.keyring().await? {
            Some(keyring) => keyring.value,
            None => {
                let root = roots.current_key()?;
                let fresh = Keyring::new(&root, unix_now());
                match store.put_keyring(&fresh, None).await {
                    Ok(_) => fresh,
                    Err(e) if e.is_conflict() => {
                        store
                            .keyring()
                            .await?
                            .ok_or(StoreError::NotFound {
                                what: "the keyring".into(),
                            })?
                            .value
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let keys = Keys {
            store,
            roots: RwLock::new(roots),
            unflushed_encryptions: Mutex::new(BTreeMap::new()),
        };
        keys.root_for(&keyring).await.map_err(|e| match e {
            KeyError::Crypto(c) => KeyError::WrongRootKey(c),
            other => other,
        })?;
        Ok(keys)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The root key that opens `keyring`. Reloads the root key Secret once if the keyring
    /// names a version this process has not seen (another replica rotated it).
    pub async fn root_for(&self, keyring: &Keyring) -> Result<RootKey, KeyError> {
        let version = keyring.root_key_version;
        if let Ok(root) = self.roots.read().await.key(version)
            && keyring.check_root(&root).is_ok()
        {
            return Ok(root);
        }
        let root = self.reload_root(version).await?;
        keyring.check_root(&root)?;
        Ok(root)
    }

    /// The current root key, for new admission stamps.
    pub async fn current_root(&self) -> Result<RootKey, KeyError> {
        Ok(self.roots.read().await.current_key()?)
    }

    /// Root key `version`, reloading the root key Secret once if this process has not seen
    /// it (another replica rotated). Old versions stay stored, so stamps made under them
    /// still verify.
    pub async fn root_key(&self, version: u32) -> Result<RootKey, KeyError> {
        if let Ok(root) = self.roots.read().await.key(version) {
            return Ok(root);
        }
        self.reload_root(version).await
    }

    /// Reads the root key Secret again and returns key `version` from it.
    async fn reload_root(&self, version: u32) -> Result<RootKey, KeyError> {
        let fresh = self
            .store
            .root_keys()
            .await?
            .ok_or(KeyError::RootKeyMissing)?
            .value;
        let root = fresh.key(version)?;
        *self.roots.write().await = fresh;
        Ok(root)
    }

    /// The keyring as stored now.
    pub async fn keyring(&self) -> Result<Keyring, KeyError> {
        Ok(self
            .store
            .keyring()
            .await?
            .ok_or(StoreError::NotFound {
                what: "the keyring".into(),
            })?
            .value)
    }

    /// Makes sure `namespace` has keys, creating them by compare-and-swap if not. Returns
    /// the keyring that holds them.
    pub async fn ensure_environment(&self, namespace: &str) -> Result<Keyring, KeyError> {
        // A root key rotation may re-wrap the keyring between our read and our write; the
        // root we resolved then no longer opens it, so resolve it again once.
        let mut attempt = 0;
        loop {
            let keyring = self.keyring().await?;
            if keyring.environments.contains_key(namespace) {
                return Ok(keyring);
            }
            let root = self.root_for(&keyring).await?;
            let result = update_keyring(self.store.as_ref(), |keyring: &mut Keyring| {
                keyring
                    .ensure_environment(&root, namespace, unix_now())
                    .map_err(KeyError::from)
            })
            .await;
            match result {
                Ok(written) => {
                    tracing::info!(namespace, "created environment keys");
                    return Ok(written);
                }
                Err(KeyError::Crypto(CryptoError::WrongRootKey { .. })) if attempt == 0 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
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

    /// Adds the counted encryptions to the keyring by compare-and-swap. On failure the
    /// counts are kept for the next flush. Counts go to the key current at flush time,
    /// which can only over-count a newer key: the safe direction.
    pub async fn flush_encryption_counts(&self) -> Result<(), KeyError> {
        let counts = std::mem::take(
            &mut *self
                .unflushed_encryptions
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if counts.is_empty() {
            return Ok(());
        }
        let result = update_keyring(self.store.as_ref(), |keyring: &mut Keyring| {
            let mut changed = false;
            for (namespace, n) in &counts {
                if keyring.environments.contains_key(namespace) {
                    keyring.record_encryptions(namespace, *n)?;
                    changed = true;
                }
            }
            Ok::<_, KeyError>(changed)
        })
        .await;
        if result.is_err() {
            for (namespace, n) in counts {
                self.count_encryptions(&namespace, n);
            }
        }
        result.map(|_| ())
    }
}
