//! The keyring: environments' keys, wrapped under a root key, with versions.
//!
//! A `Keyring` is a plain value. It holds no plaintext key, so it may be serialized into
//! the store as is. Every rotation step is a method that turns one keyring into the next;
//! the store persists the result by compare-and-swap, so a step interrupted at any point
//! leaves either the old keyring or the new one, both complete.
//!
//! The store keeps each environment as a keyring of its own, holding that one environment
//! and naming the root key version it is wrapped under ([`Keyring::split`] turns a keyring
//! of many into those). So no single object grows with the number of namespaces, and a root
//! key rotation re-wraps one environment per write.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::data::{DataCipher, ItemBinding};
use super::envelope::{EnvelopeKind, key_version_of};
use super::keys::{KeyBytes, Plaintext, RootKey, WrapContext, random_key};
use super::sealing::{SealBinding, SealingOpener, SealingPublicKey};
use super::time::UnixMillis;
use super::{CryptoError, MAX_ENCRYPTIONS_PER_DATA_KEY};

/// Format 2 dates keys in milliseconds; format 1 (whole seconds) is migrated on read.
const FORMAT: u32 = 2;
const FORMAT_WHOLE_SECONDS: u32 = 1;
const DATA: &str = "data";
const SEALING: &str = "sealing";

/// How often keys rotate and how long old sealing keys stay. Times are in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    pub root_key_max_age: i64,
    pub data_key_max_age: i64,
    pub sealing_key_max_age: i64,
    /// How long a superseded sealing key still opens values sealed to it (values in Git).
    pub sealing_key_retention: i64,
}

const DAY: i64 = 24 * 60 * 60;

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            root_key_max_age: 30 * DAY,
            data_key_max_age: 90 * DAY,
            sealing_key_max_age: 30 * DAY,
            sealing_key_retention: 365 * DAY,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "KeyringAsStored")]
pub struct Keyring {
    pub format: u32,
    pub root_key_version: u32,
    /// Fingerprint of the root key that wraps everything here ([`RootKey::id`]).
    pub root_key_id: String,
    /// When this keyring was last wrapped under a root key (the root key's own age is kept
    /// with the root keys).
    #[serde(rename = "rootKeySinceMs")]
    pub root_key_since: UnixMillis,
    pub environments: BTreeMap<String, Environment>,
}

/// A keyring as read, in any format: format 1 named its times without `Ms` and counted
/// them in seconds. [`Keyring`]'s own reader converts it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyringAsStored {
    format: u32,
    root_key_version: u32,
    root_key_id: String,
    #[serde(rename = "rootKeySinceMs", alias = "rootKeySince")]
    root_key_since: UnixMillis,
    environments: BTreeMap<String, Environment>,
}

impl From<KeyringAsStored> for Keyring {
    fn from(stored: KeyringAsStored) -> Self {
        let mut keyring = Keyring {
            format: stored.format,
            root_key_version: stored.root_key_version,
            root_key_id: stored.root_key_id,
            root_key_since: stored.root_key_since,
            environments: stored.environments,
        };
        if keyring.format == FORMAT_WHOLE_SECONDS {
            keyring.migrate_from_whole_seconds();
        }
        keyring
    }
}

/// One namespace's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    pub current_data_key: u32,
    pub data_keys: BTreeMap<u32, DataKeyInfo>,
    pub current_sealing_key: u32,
    pub sealing_keys: BTreeMap<u32, SealingKeyInfo>,
    /// When the namespace was first seen gone; its keys are dropped a grace period later,
    /// unless it comes back first.
    #[serde(
        default,
        rename = "orphanedSinceMs",
        alias = "orphanedSince",
        skip_serializing_if = "Option::is_none"
    )]
    pub orphaned_since: Option<UnixMillis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataKeyInfo {
    #[serde(rename = "createdAtMs", alias = "createdAt")]
    pub created_at: UnixMillis,
    /// base64 of `nonce || AES-256-GCM(root wrapping key, data key)`.
    pub wrapped: String,
    /// Encryptions counted under this key, for the 2^31 limit. Callers add to it.
    #[serde(default)]
    pub encryptions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealingKeyInfo {
    #[serde(rename = "createdAtMs", alias = "createdAt")]
    pub created_at: UnixMillis,
    /// base64 of the wrapped 32-byte X-Wing seed. The public key is derived from it when
    /// needed rather than stored: at 1.6 KiB of text a version, it would fill the keyring
    /// Secret's 1 MiB within a few dozen namespaces.
    pub wrapped_seed: String,
    /// When a newer key replaced it; it is dropped after the retention from then.
    #[serde(
        default,
        rename = "supersededAtMs",
        alias = "supersededAt",
        skip_serializing_if = "Option::is_none"
    )]
    pub superseded_at: Option<UnixMillis>,
}

impl Keyring {
    /// An empty keyring under `root`.
    pub fn new(root: &RootKey, now: UnixMillis) -> Self {
        Keyring {
            format: FORMAT,
            root_key_version: root.version(),
            root_key_id: root.id(),
            root_key_since: now,
            environments: BTreeMap::new(),
        }
    }

    /// Fails unless `root` is the key this keyring is wrapped under. The operator refuses
    /// to start on this error rather than make a new root key over existing data.
    pub fn check_root(&self, root: &RootKey) -> Result<(), CryptoError> {
        if self.format != FORMAT {
            return Err(CryptoError::Malformed {
                what: "keyring",
                reason: "unknown keyring format",
            });
        }
        if root.version() == self.root_key_version && root.id() == self.root_key_id {
            Ok(())
        } else {
            Err(CryptoError::WrongRootKey {
                version: root.version(),
                expected_version: self.root_key_version,
                expected_id: self.root_key_id.clone(),
            })
        }
    }

    pub fn environment(&self, namespace: &str) -> Result<&Environment, CryptoError> {
        self.environments
            .get(namespace)
            .ok_or_else(|| CryptoError::UnknownEnvironment {
                namespace: namespace.to_owned(),
            })
    }

    fn environment_mut(&mut self, namespace: &str) -> Result<&mut Environment, CryptoError> {
        self.environments
            .get_mut(namespace)
            .ok_or_else(|| CryptoError::UnknownEnvironment {
                namespace: namespace.to_owned(),
            })
    }

    /// Creates the namespace's first data key and sealing key if it has none. Returns
    /// whether the keyring changed (and so must be written back).
    pub fn ensure_environment(
        &mut self,
        root: &RootKey,
        namespace: &str,
        now: UnixMillis,
    ) -> Result<bool, CryptoError> {
        self.check_root(root)?;
        if self.environments.contains_key(namespace) {
            return Ok(false);
        }
        let data = new_data_key(root, namespace, 1, now)?;
        let sealing = new_sealing_key(root, namespace, 1, now)?;
        self.environments.insert(
            namespace.to_owned(),
            Environment {
                current_data_key: 1,
                data_keys: BTreeMap::from([(1, data)]),
                current_sealing_key: 1,
                sealing_keys: BTreeMap::from([(1, sealing)]),
                orphaned_since: None,
            },
        );
        Ok(true)
    }

    /// The cipher of the namespace's current data key: what new records are written with.
    pub fn current_data_cipher(
        &self,
        root: &RootKey,
        namespace: &str,
    ) -> Result<DataCipher, CryptoError> {
        let version = self.environment(namespace)?.current_data_key;
        self.data_cipher(root, namespace, version)
    }

    pub fn data_cipher(
        &self,
        root: &RootKey,
        namespace: &str,
        version: u32,
    ) -> Result<DataCipher, CryptoError> {
        self.check_root(root)?;
        let info = self
            .environment(namespace)?
            .data_keys
            .get(&version)
            .ok_or_else(|| unknown_version(namespace, DATA, version))?;
        let key = unwrap_key(root, namespace, DATA, version, &info.wrapped)?;
        Ok(DataCipher::new(namespace, version, &key))
    }

    /// Decrypts a stored ciphertext under whichever data key version it names.
    pub fn decrypt(
        &self,
        root: &RootKey,
        binding: &ItemBinding<'_>,
        text: &str,
    ) -> Result<Plaintext, CryptoError> {
        let version = expect_kind(text, EnvelopeKind::Data)?;
        self.data_cipher(root, binding.namespace, version)?
            .decrypt(binding, text)
    }

    /// The namespace's current sealing public key, as published in VaultSection status.
    pub fn sealing_public_key(
        &self,
        root: &RootKey,
        namespace: &str,
    ) -> Result<SealingPublicKey, CryptoError> {
        let version = self.environment(namespace)?.current_sealing_key;
        Ok(self.sealing_opener(root, namespace, version)?.public_key())
    }

    pub fn sealing_opener(
        &self,
        root: &RootKey,
        namespace: &str,
        version: u32,
    ) -> Result<SealingOpener, CryptoError> {
        self.check_root(root)?;
        let info = self
            .environment(namespace)?
            .sealing_keys
            .get(&version)
            .ok_or_else(|| unknown_version(namespace, SEALING, version))?;
        let seed = unwrap_key(root, namespace, SEALING, version, &info.wrapped_seed)?;
        SealingOpener::from_seed(namespace, version, &seed)
    }

    /// Opens a sealed value under whichever retained sealing key version it names.
    pub fn open_sealed(
        &self,
        root: &RootKey,
        binding: &SealBinding<'_>,
        text: &str,
    ) -> Result<Plaintext, CryptoError> {
        let version = expect_kind(text, EnvelopeKind::Sealed)?;
        self.sealing_opener(root, binding.namespace, version)?
            .open(binding, text)
    }

    /// Adds a data key version and makes it current. Records on older versions still
    /// open; they move over through [`reencrypt`].
    pub fn rotate_data_key(
        &mut self,
        root: &RootKey,
        namespace: &str,
        now: UnixMillis,
    ) -> Result<u32, CryptoError> {
        self.check_root(root)?;
        let env = self.environment(namespace)?;
        let version = next_version(namespace, env.data_keys.keys())?;
        let info = new_data_key(root, namespace, version, now)?;
        let env = self.environment_mut(namespace)?;
        env.data_keys.insert(version, info);
        env.current_data_key = version;
        Ok(version)
    }

    /// Adds a sealing key version and makes it current. The old one is kept, marked
    /// superseded, until [`Keyring::prune_sealing_keys`] drops it after the retention.
    pub fn rotate_sealing_key(
        &mut self,
        root: &RootKey,
        namespace: &str,
        now: UnixMillis,
    ) -> Result<u32, CryptoError> {
        self.check_root(root)?;
        let env = self.environment(namespace)?;
        let version = next_version(namespace, env.sealing_keys.keys())?;
        let info = new_sealing_key(root, namespace, version, now)?;
        let env = self.environment_mut(namespace)?;
        if let Some(old) = env.sealing_keys.get_mut(&env.current_sealing_key) {
            old.superseded_at.get_or_insert(now);
        }
        env.sealing_keys.insert(version, info);
        env.current_sealing_key = version;
        Ok(version)
    }

    /// Root key rotation: the same environment keys, wrapped under `new_root`. Items are
    /// untouched. The caller keeps `old_root` until the result is safely stored.
    pub fn rewrap(
        &self,
        old_root: &RootKey,
        new_root: &RootKey,
        now: UnixMillis,
    ) -> Result<Keyring, CryptoError> {
        self.check_root(old_root)?;
        let mut next = Keyring::new(new_root, now);
        for (namespace, env) in &self.environments {
            let mut env = env.clone();
            for (version, info) in env.data_keys.iter_mut() {
                let key = unwrap_key(old_root, namespace, DATA, *version, &info.wrapped)?;
                info.wrapped = wrap_key(new_root, namespace, DATA, *version, &key)?;
            }
            for (version, info) in env.sealing_keys.iter_mut() {
                let seed = unwrap_key(old_root, namespace, SEALING, *version, &info.wrapped_seed)?;
                info.wrapped_seed = wrap_key(new_root, namespace, SEALING, *version, &seed)?;
            }
            next.environments.insert(namespace.clone(), env);
        }
        Ok(next)
    }

    /// Destroys a data key version. Refused for the current version and for any version
    /// in `in_use` (the versions the store's records name), so no record is ever orphaned.
    pub fn retire_data_key(
        &mut self,
        namespace: &str,
        version: u32,
        in_use: &BTreeSet<u32>,
    ) -> Result<(), CryptoError> {
        let env = self.environment_mut(namespace)?;
        if version == env.current_data_key {
            return Err(CryptoError::RetireCurrent {
                namespace: namespace.to_owned(),
                version,
            });
        }
        if in_use.contains(&version) {
            return Err(CryptoError::KeyInUse {
                namespace: namespace.to_owned(),
                version,
            });
        }
        env.data_keys
            .remove(&version)
            .map(|_| ())
            .ok_or_else(|| unknown_version(namespace, DATA, version))
    }

    /// Data key versions that could be destroyed now: not current and not in `in_use`.
    pub fn retirable_data_keys(&self, namespace: &str, in_use: &BTreeSet<u32>) -> Vec<u32> {
        self.environments
            .get(namespace)
            .map(|env| {
                env.data_keys
                    .keys()
                    .filter(|v| **v != env.current_data_key && !in_use.contains(v))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops superseded sealing keys older than the retention. Returns the dropped versions.
    pub fn prune_sealing_keys(
        &mut self,
        namespace: &str,
        now: UnixMillis,
        policy: &RotationPolicy,
    ) -> Result<Vec<u32>, CryptoError> {
        let env = self.environment_mut(namespace)?;
        let current = env.current_sealing_key;
        let expired: Vec<u32> = env
            .sealing_keys
            .iter()
            .filter(|(v, info)| {
                **v != current
                    && info
                        .superseded_at
                        .is_some_and(|at| now.secs_since(at) >= policy.sealing_key_retention)
            })
            .map(|(v, _)| *v)
            .collect();
        for v in &expired {
            env.sealing_keys.remove(v);
        }
        Ok(expired)
    }

    /// Counts `n` more encryptions under the namespace's current data key.
    pub fn record_encryptions(&mut self, namespace: &str, n: u64) -> Result<(), CryptoError> {
        let env = self.environment_mut(namespace)?;
        let current = env.current_data_key;
        if let Some(info) = env.data_keys.get_mut(&current) {
            info.encryptions = info.encryptions.saturating_add(n);
        }
        Ok(())
    }

    /// One keyring per environment, each under this keyring's root key: how the store
    /// keeps them. Wrapped keys are copied as they are; nothing is unwrapped.
    pub fn split(&self) -> Vec<(String, Keyring)> {
        self.environments
            .iter()
            .map(|(namespace, env)| {
                let keyring = Keyring {
                    environments: BTreeMap::from([(namespace.clone(), env.clone())]),
                    ..self.without_environments()
                };
                (namespace.clone(), keyring)
            })
            .collect()
    }

    fn without_environments(&self) -> Keyring {
        Keyring {
            format: self.format,
            root_key_version: self.root_key_version,
            root_key_id: self.root_key_id.clone(),
            root_key_since: self.root_key_since,
            environments: BTreeMap::new(),
        }
    }

    /// Format 1 counted whole seconds: each of its times becomes the start of its second.
    fn migrate_from_whole_seconds(&mut self) {
        let scale = |t: &mut UnixMillis| *t = UnixMillis::from_secs(t.as_millis());
        scale(&mut self.root_key_since);
        for env in self.environments.values_mut() {
            if let Some(since) = env.orphaned_since.as_mut() {
                scale(since);
            }
            env.data_keys
                .values_mut()
                .for_each(|k| scale(&mut k.created_at));
            for key in env.sealing_keys.values_mut() {
                scale(&mut key.created_at);
                if let Some(at) = key.superseded_at.as_mut() {
                    scale(at);
                }
            }
        }
        self.format = FORMAT;
    }

    /// Notes that `namespace` is gone, from `now` on, unless noted already. Returns whether
    /// the keyring changed.
    pub fn mark_orphaned(&mut self, namespace: &str, now: UnixMillis) -> Result<bool, CryptoError> {
        let env = self.environment_mut(namespace)?;
        if env.orphaned_since.is_some() {
            return Ok(false);
        }
        env.orphaned_since = Some(now);
        Ok(true)
    }

    /// Forgets that `namespace` was gone (it came back). Returns whether the keyring changed.
    pub fn unmark_orphaned(&mut self, namespace: &str) -> Result<bool, CryptoError> {
        Ok(self
            .environment_mut(namespace)?
            .orphaned_since
            .take()
            .is_some())
    }
}

impl Environment {
    /// Whether the namespace has been gone for at least `grace` seconds.
    pub fn orphaned_for(&self, grace: i64, now: UnixMillis) -> bool {
        self.orphaned_since
            .is_some_and(|since| now.secs_since(since) >= grace)
    }

    /// Due by age, or by the encryption count approaching the nonce-collision bound.
    pub fn data_key_due(&self, now: UnixMillis, policy: &RotationPolicy) -> bool {
        self.data_keys
            .get(&self.current_data_key)
            .is_none_or(|info| {
                now.secs_since(info.created_at) >= policy.data_key_max_age
                    || info.encryptions >= MAX_ENCRYPTIONS_PER_DATA_KEY
            })
    }

    /// When the current data key was made.
    pub fn current_data_key_since(&self) -> Option<UnixMillis> {
        self.data_keys
            .get(&self.current_data_key)
            .map(|k| k.created_at)
    }

    /// When the current sealing key was made.
    pub fn current_sealing_key_since(&self) -> Option<UnixMillis> {
        self.sealing_keys
            .get(&self.current_sealing_key)
            .map(|k| k.created_at)
    }

    pub fn sealing_key_due(&self, now: UnixMillis, policy: &RotationPolicy) -> bool {
        self.sealing_keys
            .get(&self.current_sealing_key)
            .is_none_or(|info| now.secs_since(info.created_at) >= policy.sealing_key_max_age)
    }
}

/// Moves a stored ciphertext onto `to`'s key version. Returns `None` when it is already
/// there, so a re-run after a crash does no work and writes nothing.
pub fn reencrypt(
    from: &DataCipher,
    to: &DataCipher,
    binding: &ItemBinding<'_>,
    text: &str,
) -> Result<Option<String>, CryptoError> {
    if expect_kind(text, EnvelopeKind::Data)? == to.version() {
        return Ok(None);
    }
    let plaintext = from.decrypt(binding, text)?;
    to.encrypt(binding, plaintext.expose()).map(Some)
}

fn expect_kind(text: &str, expected: EnvelopeKind) -> Result<u32, CryptoError> {
    let (kind, version) = key_version_of(text)?;
    if kind == expected {
        Ok(version)
    } else {
        let name = |k| match k {
            EnvelopeKind::Data => "data",
            EnvelopeKind::Sealed => "sealed",
        };
        Err(CryptoError::WrongEnvelopeKind {
            expected: name(expected),
            found: name(kind),
        })
    }
}

fn unknown_version(namespace: &str, kind: &'static str, version: u32) -> CryptoError {
    CryptoError::UnknownKeyVersion {
        namespace: namespace.to_owned(),
        kind,
        version,
    }
}

fn next_version<'a>(
    namespace: &str,
    versions: impl DoubleEndedIterator<Item = &'a u32>,
) -> Result<u32, CryptoError> {
    versions
        .last()
        .copied()
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| CryptoError::VersionOverflow {
            namespace: namespace.to_owned(),
        })
}

fn new_data_key(
    root: &RootKey,
    namespace: &str,
    version: u32,
    now: UnixMillis,
) -> Result<DataKeyInfo, CryptoError> {
    let key = random_key()?;
    Ok(DataKeyInfo {
        created_at: now,
        wrapped: wrap_key(root, namespace, DATA, version, &key)?,
        encryptions: 0,
    })
}

fn new_sealing_key(
    root: &RootKey,
    namespace: &str,
    version: u32,
    now: UnixMillis,
) -> Result<SealingKeyInfo, CryptoError> {
    let seed = random_key()?;
    Ok(SealingKeyInfo {
        created_at: now,
        wrapped_seed: wrap_key(root, namespace, SEALING, version, &seed)?,
        superseded_at: None,
    })
}

fn wrap_key(
    root: &RootKey,
    namespace: &str,
    purpose: &'static str,
    version: u32,
    key: &KeyBytes,
) -> Result<String, CryptoError> {
    let context = WrapContext {
        namespace,
        purpose,
        version,
    };
    Ok(STANDARD.encode(root.wrap(&context, key.as_ref())?))
}

fn unwrap_key(
    root: &RootKey,
    namespace: &str,
    purpose: &'static str,
    version: u32,
    wrapped: &str,
) -> Result<KeyBytes, CryptoError> {
    let bytes = STANDARD
        .decode(wrapped)
        .map_err(|_| CryptoError::Malformed {
            what: "wrapped environment key",
            reason: "not base64",
        })?;
    let context = WrapContext {
        namespace,
        purpose,
        version,
    };
    root.unwrap(&context, &bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// `keyring` as format 1 wrote it: times in whole seconds, named without `Ms`.
    fn as_format_1(keyring: &Keyring) -> Value {
        let mut value = serde_json::to_value(keyring).expect("serialize");
        fn seconds(object: &mut Value, from: &str, to: &str) {
            if let Some(ms) = object.as_object_mut().and_then(|o| o.remove(from)) {
                let secs = ms.as_i64().expect("a number") / 1000;
                object[to] = json!(secs);
            }
        }
        value["format"] = json!(1);
        seconds(&mut value, "rootKeySinceMs", "rootKeySince");
        for env in value["environments"]
            .as_object_mut()
            .expect("map")
            .values_mut()
        {
            seconds(env, "orphanedSinceMs", "orphanedSince");
            for key in env["dataKeys"].as_object_mut().expect("map").values_mut() {
                seconds(key, "createdAtMs", "createdAt");
            }
            for key in env["sealingKeys"]
                .as_object_mut()
                .expect("map")
                .values_mut()
            {
                seconds(key, "createdAtMs", "createdAt");
                seconds(key, "supersededAtMs", "supersededAt");
            }
        }
        value
    }

    #[test]
    fn a_format_1_keyring_loads_with_its_seconds_as_milliseconds_and_still_opens() {
        let root = RootKey::generate(1).expect("root");
        let made = UnixMillis::from_secs(1_800_000_000);
        let mut keyring = Keyring::new(&root, made);
        keyring
            .ensure_environment(&root, "shop", made)
            .expect("env");
        let later = UnixMillis::from_secs(1_800_000_100);
        keyring
            .rotate_sealing_key(&root, "shop", later)
            .expect("rotate");
        keyring.mark_orphaned("shop", later).expect("orphan");
        let cipher = keyring.current_data_cipher(&root, "shop").expect("cipher");
        let binding = ItemBinding {
            namespace: "shop",
            item: "login",
            uid: "u1",
            field: "password",
        };
        let sealed = cipher.encrypt(&binding, b"p4ss").expect("encrypt");

        let stored = as_format_1(&keyring);
        assert_eq!(stored["rootKeySince"], json!(1_800_000_000));
        assert!(stored.get("rootKeySinceMs").is_none());
        let loaded: Keyring = serde_json::from_value(stored).expect("format 1 loads");
        assert_eq!(loaded.format, FORMAT);
        loaded.check_root(&root).expect("same root key");
        assert_eq!(loaded, keyring, "every time migrated, nothing else changed");
        let env = loaded.environment("shop").expect("env");
        assert_eq!(env.current_data_key_since(), Some(made));
        assert_eq!(env.sealing_keys[&1].superseded_at, Some(later));
        assert_eq!(env.orphaned_since, Some(later));
        let opened = loaded
            .data_cipher(&root, "shop", 1)
            .expect("cipher")
            .decrypt(&binding, &sealed)
            .expect("the migrated keyring still opens its records");
        assert_eq!(opened.expose(), b"p4ss");

        // Written back, it is format 2, and reads back the same.
        let written = serde_json::to_value(&loaded).expect("serialize");
        assert_eq!(written["format"], json!(2));
        assert_eq!(written["rootKeySinceMs"], json!(1_800_000_000_000_i64));
        let again: Keyring = serde_json::from_value(written).expect("format 2 loads");
        assert_eq!(again, loaded);
    }

    #[test]
    fn key_times_keep_their_milliseconds() {
        let root = RootKey::generate(1).expect("root");
        let made = UnixMillis::from_millis(1_800_000_000_250);
        let mut keyring = Keyring::new(&root, made);
        keyring
            .ensure_environment(&root, "shop", made)
            .expect("env");
        let text = serde_json::to_string(&keyring).expect("serialize");
        let loaded: Keyring = serde_json::from_str(&text).expect("load");
        let env = loaded.environment("shop").expect("env");
        assert_eq!(env.current_data_key_since(), Some(made));
        assert_eq!(env.current_sealing_key_since(), Some(made));
    }

    #[test]
    fn an_unknown_format_still_loads_but_is_refused() {
        let root = RootKey::generate(1).expect("root");
        let keyring = Keyring::new(&root, UnixMillis::from_secs(1));
        let mut value = serde_json::to_value(&keyring).expect("serialize");
        value["format"] = json!(3);
        let loaded: Keyring = serde_json::from_value(value).expect("parses");
        assert!(
            loaded.check_root(&root).is_err(),
            "a newer format is not guessed at"
        );
    }
}
