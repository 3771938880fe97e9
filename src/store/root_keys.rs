//! The root key Secret's content: every root key version the installation still needs.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

use super::StoreError;
use crate::crypto::{RootKey, UnixMillis};

/// Root key bytes, wiped when dropped. On the heap (a boxed slice, always 32 long), so
/// storing one in the map moves a pointer and leaves no stack copy behind.
pub(crate) type RootKeyBytes = Zeroizing<Box<[u8]>>;

/// A heap copy of a root key's bytes, made without a stack array in between.
pub(crate) fn root_key_bytes(bytes: &[u8; 32]) -> RootKeyBytes {
    Zeroizing::new(Box::from(bytes.as_slice()))
}

/// The root keys by version, which one is current (new environments are wrapped under it
/// and admission stamps signed with it), and since when.
///
/// Several versions live side by side: during a rotation the new key is stored first,
/// every environment is re-wrapped under it, and only then is an old one removed, so a
/// crash at any step leaves a key that opens every environment. Each environment names
/// the version that opens it ([`crate::crypto::Keyring::root_key_version`]); an old
/// version also stays while an admission stamp still names it.
///
/// Invariant: `current` is always one of the stored versions. Not `Clone`, so the bytes
/// are not copied by accident; `Debug` prints versions only.
pub struct RootKeySet {
    current: u32,
    /// When `current` became current: the root key's age, and how long ago the version
    /// before it stopped signing. `None` in a Secret written before it was kept (the split
    /// of a one-Secret keyring fills it in).
    since: Option<UnixMillis>,
    keys: BTreeMap<u32, RootKeyBytes>,
}

impl RootKeySet {
    /// A set holding `first`, current since `now`.
    pub fn new(first: RootKey, now: UnixMillis) -> Self {
        let current = first.version();
        RootKeySet {
            current,
            since: Some(now),
            keys: BTreeMap::from([(current, root_key_bytes(first.expose_bytes()))]),
        }
    }

    /// Builds a set from parsed Secret data; the caller has checked that `current` is in
    /// `keys` and that `keys` is not empty.
    pub(crate) fn from_parts(
        current: u32,
        since: Option<UnixMillis>,
        keys: BTreeMap<u32, RootKeyBytes>,
    ) -> Self {
        RootKeySet {
            current,
            since,
            keys,
        }
    }

    pub(crate) fn raw_keys(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.keys.iter().map(|(v, k)| (*v, &k[..]))
    }

    /// The version new environments are wrapped under and stamps are signed with.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// When the current version became current, if known.
    pub fn since(&self) -> Option<UnixMillis> {
        self.since
    }

    /// Records when the current version became current, where a Secret written before
    /// this was kept does not say.
    pub fn set_since(&mut self, since: UnixMillis) {
        self.since = Some(since);
    }

    /// The newest stored version (a rotation under way stores it before it is current).
    pub fn newest(&self) -> u32 {
        self.keys
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.current)
    }

    pub fn current_key(&self) -> Result<RootKey, StoreError> {
        self.key(self.current)
    }

    pub fn key(&self, version: u32) -> Result<RootKey, StoreError> {
        let bytes = self
            .keys
            .get(&version)
            .ok_or_else(|| StoreError::NotFound {
                what: format!("root key version {version}"),
            })?;
        // Cannot fail: the buffer is exactly 32 bytes.
        RootKey::from_bytes(version, bytes)
            .map_err(|e| StoreError::corrupt(format!("root key version {version}"), e.to_string()))
    }

    /// Adds `key` without making it current. Adding the same key again is a no-op
    /// (`Ok(false)`), so a retried rotation step is harmless; adding *different* bytes
    /// under a stored version is refused, because that would lose the stored key.
    pub fn insert(&mut self, key: RootKey) -> Result<bool, StoreError> {
        let version = key.version();
        match self.keys.get(&version) {
            Some(existing) if existing[..] == key.expose_bytes()[..] => Ok(false),
            Some(_) => Err(StoreError::Invalid {
                what: format!("root key version {version}"),
                reason: "a different key is already stored under this version".into(),
            }),
            None => {
                self.keys
                    .insert(version, root_key_bytes(key.expose_bytes()));
                Ok(true)
            }
        }
    }

    /// Makes a stored version current, from `now` on.
    pub fn set_current(&mut self, version: u32, now: UnixMillis) -> Result<(), StoreError> {
        if !self.keys.contains_key(&version) {
            return Err(StoreError::NotFound {
                what: format!("root key version {version}"),
            });
        }
        if version != self.current {
            self.current = version;
            self.since = Some(now);
        }
        Ok(())
    }

    /// Destroys a version; `Ok(false)` if it was not there. The current version cannot be
    /// removed. The caller must first make sure no environment is wrapped under it and no
    /// admission stamp names it.
    pub fn remove(&mut self, version: u32) -> Result<bool, StoreError> {
        if version == self.current {
            return Err(StoreError::Invalid {
                what: format!("root key version {version}"),
                reason: "it is the current root key and cannot be removed".into(),
            });
        }
        Ok(self.keys.remove(&version).is_some())
    }

    /// The stored versions, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }
}

impl fmt::Debug for RootKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKeySet")
            .field("current", &self.current)
            .field("since", &self.since)
            .field("versions", &self.versions())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: u32, byte: u8) -> RootKey {
        RootKey::from_bytes(version, &[byte; 32]).expect("key")
    }

    #[test]
    fn rotation_steps_keep_current_present() {
        let mut set = RootKeySet::new(key(1, 1), UnixMillis::from_secs(100));
        assert_eq!(
            (set.current(), set.since()),
            (1, Some(UnixMillis::from_secs(100)))
        );
        assert!(set.insert(key(2, 2)).expect("insert"), "added");
        assert!(!set.insert(key(2, 2)).expect("re-insert"), "idempotent");
        assert!(set.insert(key(2, 3)).is_err(), "different bytes under v2");
        assert_eq!(set.current(), 1, "insert does not switch");
        assert!(set.remove(1).is_err(), "current cannot go");
        assert_eq!(set.newest(), 2);
        set.set_current(2, UnixMillis::from_secs(200))
            .expect("switch");
        assert_eq!(
            set.since(),
            Some(UnixMillis::from_secs(200)),
            "the switch is dated"
        );
        set.set_current(2, UnixMillis::from_secs(300))
            .expect("again");
        assert_eq!(
            set.since(),
            Some(UnixMillis::from_secs(200)),
            "staying current keeps the date"
        );
        assert!(set.set_current(9, UnixMillis::from_secs(400)).is_err());
        assert!(set.remove(1).expect("remove"), "removed");
        assert!(!set.remove(1).expect("again"), "already gone");
        assert_eq!(set.versions(), vec![2]);
        assert_eq!(
            set.current_key().expect("current").expose_bytes(),
            &[2u8; 32]
        );
        assert!(matches!(set.key(1), Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn debug_prints_versions_only() {
        let mut set = RootKeySet::new(key(1, 0xAB), UnixMillis::from_secs(7));
        set.insert(key(2, 0xCD)).expect("insert");
        let debug = format!("{set:?}");
        assert_eq!(
            debug,
            "RootKeySet { current: 1, since: Some(UnixMillis(7000)), versions: [1, 2] }"
        );
    }
}
