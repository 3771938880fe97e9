//! The keyring Secret's content: a head that says the keyring exists, while each
//! environment's keys live in a Secret of their own; or, in a store written before that
//! split, the whole keyring (read once, to split it).

use serde::{Deserialize, Serialize};

use crate::crypto::Keyring;

/// The head's format: environments in Secrets of their own.
pub const HEAD_FORMAT: u32 = 2;

/// What the keyring Secret holds once environments have Secrets of their own.
///
/// It is a marker more than a value: its presence tells a store whose keyring exists (it
/// may hold no environment yet) from one whose keyring was deleted, which the operator
/// must not silently replace with an empty one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyringHead {
    pub format: u32,
    /// Unix seconds when the keyring was made, or split out of the one-Secret format.
    pub created_at: i64,
}

impl KeyringHead {
    pub fn new(now: i64) -> Self {
        KeyringHead {
            format: HEAD_FORMAT,
            created_at: now,
        }
    }
}

/// The keyring Secret as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredKeyring {
    /// Environments are in Secrets of their own.
    Head(KeyringHead),
    /// The one-Secret format of earlier versions: every environment in this Secret. It
    /// is split on the first start ([`crate::store::Keys::bootstrap`]), never written.
    Legacy(Keyring),
}
