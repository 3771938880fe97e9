//! Item records: what the store keeps per VaultItem (its fields' ciphertexts).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Which VaultItem a record belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemKey {
    pub namespace: String,
    pub name: String,
}

impl ItemKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ItemKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One item's stored secret fields, encrypted under its environment's data key.
///
/// The store treats every field as opaque: it never opens an envelope, and it does not
/// check that `key_version` matches them (the controller writes both together).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemRecord {
    /// The VaultItem uid the ciphertexts are bound to (in their AAD). A new item of the
    /// same name has a new uid, so a stale record is recognisable and cannot be opened.
    pub uid: String,
    /// The data key version of every field, so rotation finds the records still on an
    /// old key without parsing envelopes.
    pub key_version: u32,
    /// Field name (e.g. `password`) → `mv1.d.<version>.…` envelope.
    pub fields: BTreeMap<String, String>,
    /// Hex SHA-256 over the sealed inputs the record was ingested from (never over
    /// plaintext), so the controller can skip an item whose inputs did not change.
    pub source_digest: String,
    /// The VaultItem generation it was ingested at, for status `observedGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// Field names, versions and a digest prefix only: envelopes are ciphertext, but they are
/// long, and a log line has no use for them.
impl fmt::Debug for ItemRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = self.source_digest.get(..12).unwrap_or(&self.source_digest);
        f.debug_struct("ItemRecord")
            .field("uid", &self.uid)
            .field("key_version", &self.key_version)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .field("source_digest", &format_args!("{digest}…"))
            .field("generation", &self.generation)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_key_displays_as_namespace_slash_name() {
        assert_eq!(
            ItemKey::new("shop", "db-login").to_string(),
            "shop/db-login"
        );
    }

    #[test]
    fn record_json_is_camel_case_and_debug_omits_envelopes() {
        let record = ItemRecord {
            uid: "u-1".into(),
            key_version: 3,
            fields: BTreeMap::from([("password".into(), "mv1.d.3.ENVELOPE-BYTES".into())]),
            source_digest: "ab".repeat(32),
            generation: None,
        };
        let json = serde_json::to_string(&record).expect("json");
        assert!(json.contains("\"keyVersion\":3"), "{json}");
        assert!(json.contains("\"sourceDigest\""), "{json}");
        assert!(!json.contains("generation"), "{json}");
        let debug = format!("{record:?}");
        assert!(!debug.contains("ENVELOPE"), "{debug}");
        assert!(
            debug.contains("password") && debug.contains("key_version: 3"),
            "{debug}"
        );
    }
}
