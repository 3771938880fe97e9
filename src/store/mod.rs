//! The internal store: the root keys, the keyring (a head, and one Secret per
//! environment) and one record per item, kept in Secrets in the operator's own namespace,
//! where users have no RBAC. It rides on the API
//! server and etcd, so the operator needs no volume and runs several replicas.
//!
//! It owns persistence only, behind the small [`Store`] trait: [`SecretStore`] is the real
//! one, [`MemoryStore`] a stand-in for unit tests. The layout is in [`layout`].
//!
//! Every write is guarded by the object's resourceVersion, so racing replicas and crashed
//! rotations cannot lose an update: a write names the version it read, and the loser of a
//! race gets [`StoreError::Conflict`], re-reads and retries ([`update_environment`] does
//! that loop for an environment's keys). The one unguarded write is the create of a new object, which
//! fails with a Conflict if the object already exists.
//!
//! What it must never do:
//! - decrypt anything: records hold ciphertext and the keyring wrapped keys; both are
//!   opaque here, and the root keys are only carried, never used;
//! - log, or put in an error, the contents of a record or a root key: errors name the
//!   object and what was wrong with it, never the bytes; `Debug` of [`RootKeySet`] shows
//!   versions and of [`ItemRecord`] field names;
//! - write without a resourceVersion precondition, except to create a new object.

pub mod backup;
mod error;
mod head;
pub mod keys;
pub mod layout;
mod memory;
mod record;
mod root_keys;
mod secrets;

use std::future::Future;

pub use error::StoreError;
pub use head::{HEAD_FORMAT, KeyringHead, StoredKeyring};
pub use keys::{KeyError, Keys, ROOT_KEY_RELOAD, now_millis, unix_now};
pub use memory::MemoryStore;
pub use record::{ItemKey, ItemRecord};
pub use root_keys::RootKeySet;
pub use secrets::SecretStore;

use crate::crypto::Keyring;

/// A stored value and the resourceVersion it was read at: pass that version back as
/// `expected` to replace the value only if nobody changed it since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub resource_version: String,
}

/// What a listing found: every object it could read, sorted by key, and every Secret of
/// the kind listed that it could not read. One corrupt or foreign Secret does not hide
/// the others; the caller decides what its presence forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<K, V> {
    pub items: Vec<(K, Versioned<V>)>,
    pub unreadable: Vec<Unreadable>,
}

/// A store Secret that could not be read. Names it and says why, never what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The Secret's name.
    pub secret: String,
    /// The namespace its annotation names, if it names one.
    pub namespace: Option<String>,
    /// What is wrong with it, in words.
    pub reason: String,
}

impl<K, V> Listing<K, V> {
    /// Whether an unreadable Secret may belong to `namespace`: it names that namespace,
    /// or none at all.
    pub fn unreadable_in(&self, namespace: &str) -> bool {
        self.unreadable
            .iter()
            .any(|u| u.namespace.as_deref().is_none_or(|ns| ns == namespace))
    }
}

/// Persistence of the root keys, the keyring (a head, and one Secret per environment) and
/// item records, by compare-and-swap.
///
/// Writes take `expected`: `None` creates the object (a [`StoreError::Conflict`] if it
/// already exists); `Some(rv)` replaces it only while it is still at `rv` (a Conflict if
/// it changed or is gone). They return the new resourceVersion.
pub trait Store: Send + Sync + 'static {
    fn root_keys(
        &self,
    ) -> impl Future<Output = Result<Option<Versioned<RootKeySet>>, StoreError>> + Send;

    fn put_root_keys(
        &self,
        keys: &RootKeySet,
        expected: Option<&str>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// The keyring Secret: its head, or a keyring in the one-Secret format to split.
    fn keyring_head(
        &self,
    ) -> impl Future<Output = Result<Option<Versioned<StoredKeyring>>, StoreError>> + Send;

    /// Writes the head; replacing a one-Secret keyring with it (at its version) ends the
    /// split, and makes an older operator that still writes that format fail loudly.
    fn put_keyring_head(
        &self,
        head: &KeyringHead,
        expected: Option<&str>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// `namespace`'s keys: a keyring holding exactly that environment.
    fn environment(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Option<Versioned<Keyring>>, StoreError>> + Send;

    /// Writes `namespace`'s keys; `keyring` must hold exactly that environment.
    fn put_environment(
        &self,
        namespace: &str,
        keyring: &Keyring,
        expected: Option<&str>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Deletes `namespace`'s keys only while they are still at `expected`; `Ok(false)` if
    /// they are already gone.
    fn delete_environment(
        &self,
        namespace: &str,
        expected: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every environment's keys, sorted by namespace, and the environment Secrets that
    /// cannot be read.
    fn list_environments(
        &self,
    ) -> impl Future<Output = Result<Listing<String, Keyring>, StoreError>> + Send;

    /// Some environments (up to `limit`, any of them): enough to check the root key
    /// against at start without reading them all.
    fn some_environments(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Listing<String, Keyring>, StoreError>> + Send;

    fn record(
        &self,
        key: &ItemKey,
    ) -> impl Future<Output = Result<Option<Versioned<ItemRecord>>, StoreError>> + Send;

    fn put_record(
        &self,
        key: &ItemKey,
        record: &ItemRecord,
        expected: Option<&str>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Deletes the record only while it is still at `expected` (a Conflict otherwise);
    /// `Ok(false)` if it is already gone. The version is required, so a delete always
    /// follows a read that checked the record is the one to go (e.g. its uid).
    fn delete_record(
        &self,
        key: &ItemKey,
        expected: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every record, sorted by key, and every record Secret that cannot be read (reported,
    /// not hidden: key retirement must keep the keys such a record could need). Fails as a
    /// whole only when the listing itself does.
    fn list_records(
        &self,
    ) -> impl Future<Output = Result<Listing<ItemKey, ItemRecord>, StoreError>> + Send;
}

/// How many times [`update_environment`] re-reads after losing a race before it gives up.
/// Each round has a winner, so this many writers racing at once all get through.
pub const UPDATE_ATTEMPTS: u32 = 10;

/// Changes `namespace`'s keys by compare-and-swap: reads them, applies `change` to a copy,
/// and writes the copy back at the version it read. On a [`StoreError::Conflict`] it
/// starts over from a fresh read, so `change` may run several times and must decide from
/// the keyring it is given. Racing callers therefore agree on one result.
///
/// `change` returns whether it changed anything; when it did not, nothing is written.
/// Returns the keys as stored afterwards. Errors from `change` end the loop at once;
/// store errors reach the caller through `E: From<StoreError>`. Missing keys are a
/// [`StoreError::NotFound`]: they are created with [`Store::put_environment`] and
/// `expected = None` ([`Keys::ensure_environment`]).
pub async fn update_environment<S, F, E>(
    store: &S,
    namespace: &str,
    mut change: F,
) -> Result<Keyring, E>
where
    S: Store,
    F: FnMut(&mut Keyring) -> Result<bool, E>,
    E: From<StoreError>,
{
    for attempt in 1..=UPDATE_ATTEMPTS {
        let current = store
            .environment(namespace)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("the keys of environment {namespace}"),
            })?;
        let mut next = current.value.clone();
        if !change(&mut next)? {
            return Ok(current.value);
        }
        match store
            .put_environment(namespace, &next, Some(&current.resource_version))
            .await
        {
            Ok(_) => return Ok(next),
            Err(e) if e.is_conflict() => {
                tracing::debug!(
                    attempt,
                    namespace,
                    "environment keys changed underneath; re-reading"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict {
        what: format!(
            "the keys of environment {namespace} (gave up after {UPDATE_ATTEMPTS} attempts)"
        ),
    }
    .into())
}
