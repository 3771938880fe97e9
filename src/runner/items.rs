//! The vault items of one check, already resolved from the store: what the engine may send,
//! and where to.

use std::collections::BTreeMap;
use std::fmt;

use crate::api::vault_item::{ItemType, OtpAlgorithm, OtpEncoding};
use crate::crypto::Plaintext;

/// One vault item, resolved just before the check.
pub struct ResolvedItem {
    pub name: String,
    pub item_type: ItemType,
    /// `spec.allowedHosts`: exact names, or `*.example.com` for any subdomain (not the apex).
    pub allowed_hosts: Vec<String>,
    /// A CredentialSet's username (public).
    pub username: Option<String>,
    /// A CredentialSet's password, or a Secret's value.
    pub secret: Option<Plaintext>,
    /// A OneTimePassword's seed and settings.
    pub otp: Option<OtpSeed>,
    /// A CertificateArchive, converted from PKCS#12 by the caller.
    pub client_identity: Option<ClientIdentity>,
}

impl ResolvedItem {
    /// An item of `item_type` with no values yet; set the ones its type has.
    pub fn new(name: impl Into<String>, item_type: ItemType, allowed_hosts: Vec<String>) -> Self {
        ResolvedItem {
            name: name.into(),
            item_type,
            allowed_hosts,
            username: None,
            secret: None,
            otp: None,
            client_identity: None,
        }
    }
}

impl fmt::Debug for ResolvedItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedItem")
            .field("name", &self.name)
            .field("item_type", &self.item_type)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("username", &self.username)
            .field("secret", &self.secret)
            .field("otp", &self.otp)
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

/// A TOTP seed as the item holds it: the text as written (Base32 or Hex, per `encoding`),
/// and the public settings.
pub struct OtpSeed {
    pub seed: Plaintext,
    pub encoding: OtpEncoding,
    pub digits: u8,
    pub period: u32,
    pub algorithm: OtpAlgorithm,
}

impl fmt::Debug for OtpSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpSeed")
            .field("seed", &self.seed)
            .field("encoding", &self.encoding)
            .field("digits", &self.digits)
            .field("period", &self.period)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// A TLS client identity, read from a CertificateArchive by the vault engine. It stays in
/// memory; nothing is written to disk.
pub use crate::crypto::pkcs12::ClientIdentity;

/// The resolved items of one check, by name.
#[derive(Debug, Default)]
pub struct ResolvedItems {
    by_name: BTreeMap<String, ResolvedItem>,
}

impl ResolvedItems {
    pub fn new() -> Self {
        ResolvedItems::default()
    }

    /// Adds `item`, replacing one of the same name.
    pub fn insert(&mut self, item: ResolvedItem) {
        self.by_name.insert(item.name.clone(), item);
    }

    pub fn get(&self, name: &str) -> Option<&ResolvedItem> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ResolvedItem> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl FromIterator<ResolvedItem> for ResolvedItems {
    fn from_iter<T: IntoIterator<Item = ResolvedItem>>(iter: T) -> Self {
        let mut items = ResolvedItems::new();
        for item in iter {
            items.insert(item);
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    #[test]
    fn debug_never_shows_a_secret() {
        let mut item = ResolvedItem::new("login", ItemType::CredentialSet, vec!["a.test".into()]);
        item.username = Some("bot".into());
        item.secret = Some(Plaintext::from("hunter2"));
        item.client_identity = Some(ClientIdentity {
            private_key_pkcs8_der: Zeroizing::new(b"KEYBYTES".to_vec()),
            chain_der: vec![b"CERT".to_vec()],
        });
        item.otp = Some(OtpSeed {
            seed: Plaintext::from("JBSWY3DPEHPK3PXP"),
            encoding: OtpEncoding::Base32,
            digits: 6,
            period: 30,
            algorithm: OtpAlgorithm::Sha1,
        });
        let items: ResolvedItems = [item].into_iter().collect();
        let shown = format!("{items:?}");
        for secret in ["hunter2", "KEYBYTES", "JBSWY3DPEHPK3PXP"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("bot"));
    }
}
