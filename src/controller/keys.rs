//! The operator's keys at run time: the root key set, held in memory, and the keyring,
//! read from and written to the store by compare-and-swap.
//!
//! Shared by the controller and the webhook, so both create an environment's keys the
//! same way and two racing processes always agree on one key.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::RwLock;

use crate::crypto::{CryptoError, Keyring, RootKey};
use crate::store::{RootKeySet, Store, StoreError, update_keyring};

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
                            .ok_or(StoreError::Conflict {
                                what: "keyring".into(),
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
        let fresh = self
            .store
            .root_keys()
            .await?
            .ok_or(KeyError::RootKeyMissing)?
            .value;
        let root = fresh.key(version)?;
        keyring.check_root(&root)?;
        *self.roots.write().await = fresh;
        Ok(root)
    }

    /// The keyring as stored now.
    pub async fn keyring(&self) -> Result<Keyring, KeyError> {
        Ok(self
            .store
            .keyring()
            .await?
            .ok_or(StoreError::Conflict {
                what: "keyring vanished".into(),
            })?
            .value)
    }

    /// Makes sure `namespace` has keys, creating them by compare-and-swap if not. Returns
    /// the keyring that holds them.
    pub async fn ensure_environment(&self, namespace: &str) -> Result<Keyring, KeyError> {
        let keyring = self.keyring().await?;
        if keyring.environments.contains_key(namespace) {
            return Ok(keyring);
        }
        let root = self.root_for(&keyring).await?;
        let written = update_keyring(self.store.as_ref(), |keyring: &mut Keyring| {
            keyring
                .ensure_environment(&root, namespace, unix_now())
                .map_err(KeyError::from)
        })
        .await?;
        tracing::info!(namespace, "created environment keys");
        Ok(written)
    }
}
