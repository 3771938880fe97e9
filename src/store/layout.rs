//! How the store's values sit in Secrets: names, labels, data keys, and the pure
//! conversions both ways. [`super::MemoryStore`] keeps the very same Secrets, so it parses
//! exactly what [`super::SecretStore`] does.
//!
//! | Secret | data | what |
//! |---|---|---|
//! | `monivault-root-key` | `v<N>` (raw 32 bytes each), `current`, `sinceMs` (decimal; `since` in seconds before) | [`RootKeySet`] |
//! | `monivault-keyring` | `head.json` | [`KeyringHead`] |
//! | `monivault-env-<sha256("<ns>")[..40 hex]>` | `keyring.json` | one environment's [`Keyring`] |
//! | `monivault-item-<sha256("<ns>/<name>")[..40 hex]>` | `record.json` | [`ItemRecord`] |
//!
//! All are `Opaque`, labelled `app.kubernetes.io/managed-by=monivault` and
//! `monivault.io/record=<root-key|keyring|environment|item>`. Environment and item Secrets
//! carry their namespace in the annotation `monivault.io/namespace` (items also their name
//! in `monivault.io/name`), because the hashed name cannot be reversed (and an item's full
//! name may not fit in a Secret name).
//!
//! Before environments had Secrets of their own, `monivault-keyring` held the whole
//! keyring as `keyring.json` ([`legacy_keyring_secret`]); such a Secret is read once, to
//! split it. One environment takes some 350 bytes at first and about 2 KB after a year of
//! rotations (sealing keys are kept for the retention), far from the 1 MiB of a Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::root_keys::{RootKeyBytes, root_key_bytes};
use super::{
    HEAD_FORMAT, ItemKey, ItemRecord, KeyringHead, Listing, RootKeySet, StoreError, StoredKeyring,
    Unreadable, Versioned,
};
use crate::crypto::{Keyring, UnixMillis};

pub const ROOT_KEY_SECRET: &str = "monivault-root-key";
/// The root key Secret's data key naming the current version.
pub const ROOT_KEY_CURRENT: &str = "current";
/// The root key Secret's data key dating the current version, in Unix milliseconds.
pub const ROOT_KEY_SINCE: &str = "sinceMs";
/// The same in whole seconds, as versions before millisecond key times wrote it.
pub const ROOT_KEY_SINCE_SECONDS: &str = "since";
pub const KEYRING_SECRET: &str = "monivault-keyring";
/// The keyring head's data key.
pub const HEAD_DATA: &str = "head.json";
/// A keyring's data key: one environment's in its Secret, or (the old format) the whole
/// keyring's in `monivault-keyring`.
pub const KEYRING_DATA: &str = "keyring.json";
pub const ENVIRONMENT_SECRET_PREFIX: &str = "monivault-env-";
pub const RECORD_SECRET_PREFIX: &str = "monivault-item-";
pub const RECORD_DATA: &str = "record.json";

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "monivault";
/// Tells the store's Secrets apart; item records are listed by `monivault.io/record=item`.
pub const RECORD_LABEL: &str = "monivault.io/record";
pub const RECORD_KIND_ITEM: &str = "item";
pub const RECORD_KIND_KEYRING: &str = "keyring";
pub const RECORD_KIND_ENVIRONMENT: &str = "environment";
pub const RECORD_KIND_ROOT_KEY: &str = "root-key";
pub const ITEM_NAMESPACE_ANNOTATION: &str = "monivault.io/namespace";
pub const ITEM_NAME_ANNOTATION: &str = "monivault.io/name";

/// The API server refuses a Secret whose data values add up to more than 1 MiB. The store
/// checks first, so the error names the object and its size.
pub const MAX_SECRET_DATA_BYTES: usize = 1024 * 1024;

/// Hex characters of SHA-256 in a hashed Secret name: 160 bits, far from collisions.
const NAME_HASH_HEX: usize = 40;

/// The label selector of item record Secrets.
pub fn record_selector() -> String {
    format!("{RECORD_LABEL}={RECORD_KIND_ITEM}")
}

/// The label selector of environment Secrets.
pub fn environment_selector() -> String {
    format!("{RECORD_LABEL}={RECORD_KIND_ENVIRONMENT}")
}

/// `<prefix><first 40 hex of sha256(input)>`.
fn hashed_name(prefix: &str, input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut name = String::with_capacity(prefix.len() + NAME_HASH_HEX);
    name.push_str(prefix);
    for byte in digest.iter().take(NAME_HASH_HEX / 2) {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// `monivault-item-<first 40 hex of sha256("<namespace>/<name>")>`. Hashed because a
/// namespace (63) plus an item name (253) can be longer than a Secret name may be.
pub fn record_secret_name(key: &ItemKey) -> String {
    hashed_name(RECORD_SECRET_PREFIX, &key.to_string())
}

/// `monivault-env-<first 40 hex of sha256("<namespace>")>`, hashed like the records.
pub fn environment_secret_name(namespace: &str) -> String {
    hashed_name(ENVIRONMENT_SECRET_PREFIX, namespace)
}

/// How errors name an environment's keys: by namespace, and by Secret.
pub(crate) fn environment_what(namespace: &str) -> String {
    format!(
        "the keys of environment {namespace} (Secret {})",
        environment_secret_name(namespace)
    )
}

/// How errors name a record: by item, and by Secret for whoever inspects the cluster.
pub(crate) fn record_what(key: &ItemKey) -> String {
    format!("record {key} (Secret {})", record_secret_name(key))
}

pub(crate) fn secret_what(name: &str) -> String {
    format!("Secret {name}")
}

/// A Secret whose data is wiped when dropped: for the root key Secret, read or written.
/// Best effort: copies inside the HTTP client and serde buffers are out of our reach.
pub(crate) struct WipeOnDrop(pub(crate) Secret);

impl Drop for WipeOnDrop {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

pub(crate) fn wipe(secret: &mut Secret) {
    for value in secret.data.iter_mut().flat_map(|data| data.values_mut()) {
        value.0.zeroize();
    }
}

fn new_secret(
    name: String,
    kind: &str,
    annotations: Option<BTreeMap<String, String>>,
    data: BTreeMap<String, ByteString>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (RECORD_LABEL.to_owned(), kind.to_owned()),
            ])),
            annotations,
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn check_size(secret: &Secret) -> Result<(), StoreError> {
    let size: usize = secret
        .data
        .iter()
        .flat_map(|data| data.values())
        .map(|v| v.0.len())
        .sum();
    if size > MAX_SECRET_DATA_BYTES {
        return Err(StoreError::Invalid {
            what: secret_what(secret.metadata.name.as_deref().unwrap_or_default()),
            reason: format!(
                "its data would be {size} bytes, over the {MAX_SECRET_DATA_BYTES}-byte Secret limit"
            ),
        });
    }
    Ok(())
}

/// The resourceVersion the API server (or the memory store) gave the object.
pub(crate) fn resource_version(secret: &Secret, what: &str) -> Result<String, StoreError> {
    secret
        .metadata
        .resource_version
        .clone()
        .ok_or_else(|| StoreError::corrupt(what, "it has no resourceVersion"))
}

/// A parsed value with the resourceVersion it was read at.
pub(crate) fn versioned<T>(
    secret: &Secret,
    what: &str,
    parse: impl FnOnce(&Secret) -> Result<T, StoreError>,
) -> Result<Versioned<T>, StoreError> {
    Ok(Versioned {
        value: parse(secret)?,
        resource_version: resource_version(secret, what)?,
    })
}

fn data_value<'a>(secret: &'a Secret, what: &str, key: &str) -> Result<&'a [u8], StoreError> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|v| v.0.as_slice())
        .ok_or_else(|| StoreError::corrupt(what, format!("data key {key} is missing")))
}

fn to_json<T: Serialize>(what: &str, value: &T) -> Result<ByteString, StoreError> {
    serde_json::to_vec(value)
        .map(ByteString)
        .map_err(|e| StoreError::Invalid {
            what: what.to_owned(),
            reason: format!("cannot serialize ({:?} error)", e.classify()),
        })
}

/// Parses JSON; the error says where and what kind of failure, never what was there
/// (serde's own messages quote the offending value).
fn from_json<T: DeserializeOwned>(what: &str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax => "is not valid JSON",
            serde_json::error::Category::Eof => "is truncated JSON",
            serde_json::error::Category::Data => "does not have the expected fields and types",
            serde_json::error::Category::Io => "could not be read",
        };
        StoreError::corrupt(
            what,
            format!("{key} {kind} (line {}, column {})", e.line(), e.column()),
        )
    })
}

/// A keyring in the one-Secret format of earlier versions: every environment in
/// `monivault-keyring`. The store never writes it; tests plant it to check the split.
pub fn legacy_keyring_secret(keyring: &Keyring) -> Result<Secret, StoreError> {
    let data = BTreeMap::from([(
        KEYRING_DATA.to_owned(),
        to_json(&secret_what(KEYRING_SECRET), keyring)?,
    )]);
    let secret = new_secret(KEYRING_SECRET.to_owned(), RECORD_KIND_KEYRING, None, data);
    check_size(&secret)?;
    Ok(secret)
}

pub(crate) fn head_secret(head: &KeyringHead) -> Result<Secret, StoreError> {
    let data = BTreeMap::from([(
        HEAD_DATA.to_owned(),
        to_json(&secret_what(KEYRING_SECRET), head)?,
    )]);
    Ok(new_secret(
        KEYRING_SECRET.to_owned(),
        RECORD_KIND_KEYRING,
        None,
        data,
    ))
}

/// The head, or a keyring of the one-Secret format, by which data key is present.
pub(crate) fn parse_keyring_head(secret: &Secret) -> Result<StoredKeyring, StoreError> {
    let what = secret_what(KEYRING_SECRET);
    let data = secret.data.as_ref();
    if let Some(head) = data.and_then(|d| d.get(HEAD_DATA)) {
        let head: KeyringHead = from_json(&what, HEAD_DATA, &head.0)?;
        if head.format != HEAD_FORMAT {
            return Err(StoreError::corrupt(
                &what,
                format!("{HEAD_DATA} has unknown format {}", head.format),
            ));
        }
        Ok(StoredKeyring::Head(head))
    } else if let Some(keyring) = data.and_then(|d| d.get(KEYRING_DATA)) {
        Ok(StoredKeyring::Legacy(from_json(
            &what,
            KEYRING_DATA,
            &keyring.0,
        )?))
    } else {
        Err(StoreError::corrupt(
            &what,
            format!("it holds neither {HEAD_DATA} nor {KEYRING_DATA}"),
        ))
    }
}

/// `namespace`'s keys in their Secret. Refused unless `keyring` holds exactly that
/// environment, so one Secret never carries another namespace's keys.
pub(crate) fn environment_secret(namespace: &str, keyring: &Keyring) -> Result<Secret, StoreError> {
    let what = environment_what(namespace);
    if keyring.environments.len() != 1 || !keyring.environments.contains_key(namespace) {
        return Err(StoreError::Invalid {
            what,
            reason: "an environment Secret holds exactly the keys of its own namespace".into(),
        });
    }
    let annotations =
        BTreeMap::from([(ITEM_NAMESPACE_ANNOTATION.to_owned(), namespace.to_owned())]);
    let data = BTreeMap::from([(KEYRING_DATA.to_owned(), to_json(&what, keyring)?)]);
    let secret = new_secret(
        environment_secret_name(namespace),
        RECORD_KIND_ENVIRONMENT,
        Some(annotations),
        data,
    );
    check_size(&secret)?;
    Ok(secret)
}

/// The namespace from the annotation, checked against the Secret's name, and its keys,
/// checked to be that namespace's and no other's.
pub(crate) fn parse_environment(secret: &Secret) -> Result<(String, Keyring), StoreError> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let what = secret_what(name);
    let namespace = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ITEM_NAMESPACE_ANNOTATION))
        .cloned()
        .ok_or_else(|| {
            StoreError::corrupt(
                &what,
                format!("annotation {ITEM_NAMESPACE_ANNOTATION} is missing"),
            )
        })?;
    if environment_secret_name(&namespace) != name {
        return Err(StoreError::corrupt(
            &what,
            format!(
                "its annotation names environment {namespace}, whose keys have another Secret name"
            ),
        ));
    }
    let what = environment_what(&namespace);
    let keyring: Keyring = from_json(
        &what,
        KEYRING_DATA,
        data_value(secret, &what, KEYRING_DATA)?,
    )?;
    if keyring.environments.len() != 1 || !keyring.environments.contains_key(&namespace) {
        return Err(StoreError::corrupt(
            &what,
            "it does not hold exactly the keys of its own namespace",
        ));
    }
    Ok((namespace, keyring))
}

/// Parses the environment Secrets of one listing: the readable ones sorted by namespace,
/// the others reported.
pub(crate) fn environment_listing<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
) -> Listing<String, Keyring> {
    listing(secrets, parse_environment, |namespace| {
        environment_what(namespace)
    })
}

pub(crate) fn root_key_secret(keys: &RootKeySet) -> Result<WipeOnDrop, StoreError> {
    let mut data: BTreeMap<String, ByteString> = keys
        .raw_keys()
        .map(|(version, bytes)| (format!("v{version}"), ByteString(bytes.to_vec())))
        .collect();
    data.insert(
        ROOT_KEY_CURRENT.to_owned(),
        ByteString(keys.current().to_string().into_bytes()),
    );
    if let Some(since) = keys.since() {
        data.insert(
            ROOT_KEY_SINCE.to_owned(),
            ByteString(since.as_millis().to_string().into_bytes()),
        );
    }
    // Guarded from here on, so the bytes are wiped on every path, errors included.
    let secret = WipeOnDrop(new_secret(
        ROOT_KEY_SECRET.to_owned(),
        RECORD_KIND_ROOT_KEY,
        None,
        data,
    ));
    check_size(&secret.0)?;
    Ok(secret)
}

pub(crate) fn parse_root_keys(secret: &Secret) -> Result<RootKeySet, StoreError> {
    let what = secret_what(ROOT_KEY_SECRET);
    let corrupt = |reason: String| StoreError::corrupt(&what, reason);
    let data = secret
        .data
        .as_ref()
        .ok_or_else(|| corrupt("it has no data".into()))?;
    let mut current = None;
    let mut since = None;
    let mut since_seconds = None;
    let mut keys: BTreeMap<u32, RootKeyBytes> = BTreeMap::new();
    let decimal = |value: &ByteString, name: &str| {
        std::str::from_utf8(&value.0)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| corrupt(format!("{name} is not a decimal time")))
    };
    for (name, value) in data {
        if name == ROOT_KEY_CURRENT {
            let version = std::str::from_utf8(&value.0)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| corrupt(format!("{ROOT_KEY_CURRENT} is not a decimal version")))?;
            current = Some(version);
        } else if name == ROOT_KEY_SINCE {
            since = Some(UnixMillis::from_millis(decimal(value, name)?));
        } else if name == ROOT_KEY_SINCE_SECONDS {
            since_seconds = Some(UnixMillis::from_secs(decimal(value, name)?));
        } else if let Some(version) = parse_version_key(name) {
            let bytes: &[u8; 32] = value
                .0
                .as_slice()
                .try_into()
                .map_err(|_| corrupt(format!("{name} is not exactly 32 bytes")))?;
            keys.insert(version, root_key_bytes(bytes));
        } else {
            return Err(corrupt(format!("unexpected data key {name:?}")));
        }
    }
    let current =
        current.ok_or_else(|| corrupt(format!("data key {ROOT_KEY_CURRENT} is missing")))?;
    if !keys.contains_key(&current) {
        return Err(corrupt(format!(
            "{ROOT_KEY_CURRENT} names version {current}, which it does not hold"
        )));
    }
    Ok(RootKeySet::from_parts(
        current,
        since.or(since_seconds),
        keys,
    ))
}

/// `v<N>` with `N` in canonical decimal (so `v1` and `v01` cannot both exist).
fn parse_version_key(name: &str) -> Option<u32> {
    let version: u32 = name.strip_prefix('v')?.parse().ok()?;
    (format!("v{version}") == name).then_some(version)
}

pub(crate) fn record_secret(key: &ItemKey, record: &ItemRecord) -> Result<Secret, StoreError> {
    let annotations = BTreeMap::from([
        (ITEM_NAMESPACE_ANNOTATION.to_owned(), key.namespace.clone()),
        (ITEM_NAME_ANNOTATION.to_owned(), key.name.clone()),
    ]);
    let data = BTreeMap::from([(RECORD_DATA.to_owned(), to_json(&record_what(key), record)?)]);
    let secret = new_secret(
        record_secret_name(key),
        RECORD_KIND_ITEM,
        Some(annotations),
        data,
    );
    check_size(&secret)?;
    Ok(secret)
}

/// How a listing reports a Secret it cannot read: by name, with the namespace its
/// annotation names (if any), and the parse error's words.
pub(crate) fn unreadable(secret: &Secret, error: &StoreError) -> Unreadable {
    Unreadable {
        secret: secret.metadata.name.clone().unwrap_or_default(),
        namespace: secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ITEM_NAMESPACE_ANNOTATION))
            .cloned(),
        reason: error.to_string(),
    }
}

/// Parses the record Secrets of one listing: the readable ones sorted by key, the others
/// reported.
pub(crate) fn record_listing<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
) -> Listing<ItemKey, ItemRecord> {
    listing(secrets, parse_record, record_what)
}

fn listing<'a, K: Ord, V>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    parse: impl Fn(&Secret) -> Result<(K, V), StoreError>,
    what: impl Fn(&K) -> String,
) -> Listing<K, V> {
    let mut listing = Listing {
        items: Vec::new(),
        unreadable: Vec::new(),
    };
    for secret in secrets {
        let parsed = parse(secret).and_then(|(key, value)| {
            let resource_version = resource_version(secret, &what(&key))?;
            Ok((
                key,
                Versioned {
                    value,
                    resource_version,
                },
            ))
        });
        match parsed {
            Ok(item) => listing.items.push(item),
            Err(e) => listing.unreadable.push(unreadable(secret, &e)),
        }
    }
    listing.items.sort_by(|a, b| a.0.cmp(&b.0));
    listing
}

/// The item key from the annotations, checked against the Secret's name, and the record.
pub(crate) fn parse_record(secret: &Secret) -> Result<(ItemKey, ItemRecord), StoreError> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let what = secret_what(name);
    let annotation = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
            .ok_or_else(|| StoreError::corrupt(&what, format!("annotation {key} is missing")))
    };
    let key = ItemKey::new(
        annotation(ITEM_NAMESPACE_ANNOTATION)?,
        annotation(ITEM_NAME_ANNOTATION)?,
    );
    if record_secret_name(&key) != name {
        return Err(StoreError::corrupt(
            &what,
            format!("its annotations name item {key}, whose record has another Secret name"),
        ));
    }
    let what = record_what(&key);
    let record = from_json(&what, RECORD_DATA, data_value(secret, &what, RECORD_DATA)?)?;
    Ok((key, record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RootKey;

    fn data(entries: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn corrupt_reason(result: Result<impl std::fmt::Debug, StoreError>) -> String {
        match result {
            Err(StoreError::Corrupt { reason, .. }) => reason,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn record_secret_names_are_fixed_length_hashes() {
        let name = record_secret_name(&ItemKey::new("shop", "db-login"));
        assert!(name.starts_with("monivault-item-"), "{name}");
        assert_eq!(name.len(), "monivault-item-".len() + 40);
        assert!(
            name["monivault-item-".len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // The same input always gives the same name (it is the record's address).
        assert_eq!(name, record_secret_name(&ItemKey::new("shop", "db-login")));
        // First 40 hex of sha256("shop/db-login").
        let digest = Sha256::digest(b"shop/db-login");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&name["monivault-item-".len()..], &hex[..40]);
        // A 253-character item name still gives a valid, short Secret name.
        let long = record_secret_name(&ItemKey::new("a".repeat(63), "b".repeat(253)));
        assert_eq!(long.len(), name.len());
        assert_ne!(
            record_secret_name(&ItemKey::new("shop", "a")),
            record_secret_name(&ItemKey::new("shop-a", "")),
        );
    }

    #[test]
    fn root_key_secret_round_trips() {
        let mut set = RootKeySet::new(
            RootKey::from_bytes(1, &[1u8; 32]).expect("key"),
            UnixMillis::from_secs(10),
        );
        set.insert(RootKey::from_bytes(2, &[2u8; 32]).expect("key"))
            .expect("insert");
        set.set_current(2, UnixMillis::from_millis(1_800_000_000_250))
            .expect("current");
        let secret = root_key_secret(&set).expect("secret");
        let data = secret.0.data.as_ref().expect("data");
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["current", "sinceMs", "v1", "v2"]
        );
        assert_eq!(data["sinceMs"].0, b"1800000000250");
        assert_eq!(data["current"].0, b"2");
        assert_eq!(data["v1"].0, [1u8; 32]);
        assert_eq!(secret.0.type_.as_deref(), Some("Opaque"));
        let parsed = parse_root_keys(&secret.0).expect("parse");
        assert_eq!(parsed.current(), 2);
        assert_eq!(
            parsed.since(),
            Some(UnixMillis::from_millis(1_800_000_000_250))
        );
        assert_eq!(parsed.versions(), vec![1, 2]);
        assert_eq!(parsed.key(1).expect("v1").expose_bytes(), &[1u8; 32]);
    }

    #[test]
    fn a_root_key_secret_dated_in_whole_seconds_still_parses() {
        let key = [3u8; 32];
        let legacy = [
            ("current", &b"3"[..]),
            ("since", b"1800000000"),
            ("v3", &key),
        ];
        let parsed = parse_root_keys(&data(&legacy)).expect("parse");
        assert_eq!(parsed.since(), Some(UnixMillis::from_secs(1_800_000_000)));
        // Written back, it says milliseconds only.
        let secret = root_key_secret(&parsed).expect("secret");
        let written = secret.0.data.as_ref().expect("data");
        assert!(!written.contains_key("since"));
        assert_eq!(written["sinceMs"].0, b"1800000000000");
    }

    #[test]
    fn root_key_parsing_accepts_a_trailing_newline_in_current() {
        let parsed =
            parse_root_keys(&data(&[("current", b"3\n"), ("v3", &[3u8; 32])])).expect("parse");
        assert_eq!(parsed.current(), 3);
    }

    #[test]
    fn root_key_parsing_rejects_bad_data_without_quoting_it() {
        let key = [0x5Au8; 32];
        let cases: Vec<(Secret, &str)> = vec![
            (Secret::default(), "no data"),
            (data(&[("v1", &key)]), "current is missing"),
            (data(&[("current", b"one"), ("v1", &key)]), "not a decimal"),
            (data(&[("current", b"2"), ("v1", &key)]), "does not hold"),
            (
                data(&[("current", b"1"), ("v1", &key[..31])]),
                "v1 is not exactly 32 bytes",
            ),
            (
                data(&[("current", b"1"), ("v1", &key), ("v01", &key)]),
                "unexpected data key \"v01\"",
            ),
            (
                data(&[("current", b"1"), ("v1", &key), ("backup", &key)]),
                "unexpected data key",
            ),
        ];
        for (secret, expected) in cases {
            let reason = corrupt_reason(parse_root_keys(&secret));
            assert!(
                reason.contains(expected),
                "{reason:?} should say {expected:?}"
            );
            assert!(
                !reason.contains("90") && !reason.contains("5a") && !reason.contains('Z'),
                "{reason}"
            );
        }
    }

    #[test]
    fn json_errors_never_quote_the_data() {
        let secret = data(&[(KEYRING_DATA, br#"{"format": "SENTINEL-hunter2"}"#)]);
        let reason = corrupt_reason(parse_keyring_head(&secret));
        assert!(reason.contains("expected fields"), "{reason}");
        assert!(!reason.contains("SENTINEL"), "{reason}");
        let reason = corrupt_reason(parse_keyring_head(&data(&[(HEAD_DATA, b"{SENTINEL")])));
        assert!(
            reason.contains("not valid JSON") && !reason.contains("SENTINEL"),
            "{reason}"
        );
        let reason = corrupt_reason(parse_keyring_head(&data(&[])));
        assert!(
            reason.contains("neither head.json nor keyring.json"),
            "{reason}"
        );
    }

    fn one_environment(namespace: &str) -> Keyring {
        let root = RootKey::from_bytes(1, &[1u8; 32]).expect("key");
        let mut keyring = Keyring::new(&root, UnixMillis::from_secs(0));
        keyring
            .ensure_environment(&root, namespace, UnixMillis::from_secs(0))
            .expect("environment");
        keyring
    }

    #[test]
    fn environment_secrets_hold_exactly_their_own_namespace() {
        let shop = one_environment("shop");
        let secret = environment_secret("shop", &shop).expect("secret");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some(environment_secret_name("shop").as_str())
        );
        assert!(environment_secret_name("shop").starts_with("monivault-env-"));
        assert_eq!(
            environment_secret_name("shop").len(),
            "monivault-env-".len() + 40
        );
        assert_eq!(
            parse_environment(&secret).expect("parse"),
            ("shop".into(), shop.clone())
        );

        // Writing another namespace's keys, or two at once, is refused.
        assert!(environment_secret("team", &shop).is_err());
        let root = RootKey::from_bytes(1, &[1u8; 32]).expect("key");
        let mut two = shop.clone();
        two.ensure_environment(&root, "team", UnixMillis::from_secs(0))
            .expect("env");
        assert!(environment_secret("shop", &two).is_err());

        // A Secret renamed or re-annotated to pass for another namespace does not parse.
        let mut moved = secret.clone();
        moved.metadata.name = Some(environment_secret_name("team"));
        assert!(corrupt_reason(parse_environment(&moved)).contains("another Secret name"));
        let mut relabelled = secret;
        relabelled.metadata.annotations = Some(BTreeMap::from([(
            ITEM_NAMESPACE_ANNOTATION.to_owned(),
            "team".to_owned(),
        )]));
        relabelled.metadata.name = Some(environment_secret_name("team"));
        assert!(corrupt_reason(parse_environment(&relabelled)).contains("its own namespace"));
    }

    #[test]
    fn the_keyring_secret_is_a_head_or_an_old_keyring_to_split() {
        let head = head_secret(&KeyringHead::new(5)).expect("head");
        assert_eq!(
            parse_keyring_head(&head).expect("parse"),
            StoredKeyring::Head(KeyringHead::new(5))
        );
        let shop = one_environment("shop");
        let legacy = legacy_keyring_secret(&shop).expect("legacy");
        assert_eq!(
            parse_keyring_head(&legacy).expect("parse"),
            StoredKeyring::Legacy(shop)
        );
        let future = data(&[(HEAD_DATA, br#"{"format": 9, "createdAt": 0}"#)]);
        assert!(corrupt_reason(parse_keyring_head(&future)).contains("unknown format 9"));
    }

    #[test]
    fn record_secret_round_trips_and_checks_its_name() {
        let key = ItemKey::new("shop", "db-login");
        let record = ItemRecord {
            uid: "uid-1".into(),
            key_version: 1,
            fields: BTreeMap::from([("password".into(), "mv1.d.1.x".into())]),
            source_digest: "00".repeat(32),
            generation: Some(4),
        };
        let secret = record_secret(&key, &record).expect("secret");
        let labels = secret.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[MANAGED_BY_LABEL], "monivault");
        assert_eq!(labels[RECORD_LABEL], "item");
        let (parsed_key, parsed) = parse_record(&secret).expect("parse");
        assert_eq!((parsed_key, parsed), (key.clone(), record));

        // A record Secret copied under another item's name is refused.
        let mut moved = secret.clone();
        moved.metadata.name = Some(record_secret_name(&ItemKey::new("shop", "other")));
        assert!(corrupt_reason(parse_record(&moved)).contains("another Secret name"));
        let mut bare = secret;
        bare.metadata.annotations = None;
        assert!(corrupt_reason(parse_record(&bare)).contains("monivault.io/namespace"));
    }

    #[test]
    fn oversized_data_is_refused_before_the_api_server() {
        let record = ItemRecord {
            uid: "u".into(),
            key_version: 1,
            fields: BTreeMap::from([("content".into(), "x".repeat(MAX_SECRET_DATA_BYTES))]),
            source_digest: String::new(),
            generation: None,
        };
        match record_secret(&ItemKey::new("a", "b"), &record) {
            Err(StoreError::Invalid { reason, .. }) => {
                assert!(reason.contains("1048576"), "{reason}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
}
