//! The admission stamp's MAC: HMAC-SHA256, under a key derived from one root key version,
//! over what the webhook authorized. The webhook writes it, the runner checks it.
//!
//! The message is a length-prefixed encoding of every claim, so no two different claim
//! sets encode alike (a name ending where an item begins cannot be shifted).

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::keys::RootKey;

const PURPOSE: &str = "monivault/v1/admission-stamp";
const DOMAIN: &[u8] = b"monivault admission stamp v2";

/// The object the stamp is for: its name, or while a `generateName` is still pending (the
/// API server names the object after mutating admission), the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StampedName<'a> {
    Name(&'a str),
    GenerateName(&'a str),
}

/// What a stamp vouches for: `user` was allowed, at `issued_at`, to have this `kind` in
/// `namespace`, named `name`, with the spec whose digest is `spec_digest`, carry `items`
/// (each name with the uid the item had then).
#[derive(Clone, Copy, Debug)]
pub struct StampClaims<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: StampedName<'a>,
    /// SHA-256 of the spec's canonical JSON.
    pub spec_digest: &'a [u8; 32],
    pub items: &'a BTreeMap<String, String>,
    pub user: &'a str,
    /// Unix seconds.
    pub issued_at: i64,
    /// Random, for a stamp bound to a `generateName`: two runs of one spec, asked for by
    /// one user in one second, would otherwise carry the same stamp, and a stamp runs
    /// once. Stamps without it sign exactly as before.
    pub nonce: Option<&'a str>,
}

impl StampClaims<'_> {
    fn mac(&self, root: &RootKey) -> Hmac<Sha256> {
        let key = root.derive(PURPOSE);
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_ref()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts a 32-byte key"),
        };
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(DOMAIN);
        field(self.kind.as_bytes());
        field(self.namespace.as_bytes());
        match self.name {
            StampedName::Name(name) => {
                field(b"name");
                field(name.as_bytes());
            }
            StampedName::GenerateName(prefix) => {
                field(b"generateName");
                field(prefix.as_bytes());
            }
        }
        field(self.spec_digest);
        field(&(self.items.len() as u64).to_be_bytes());
        for (item, uid) in self.items {
            field(item.as_bytes());
            field(uid.as_bytes());
        }
        field(self.user.as_bytes());
        field(&self.issued_at.to_be_bytes());
        if let Some(nonce) = self.nonce {
            field(b"nonce");
            field(nonce.as_bytes());
        }
        mac
    }

    /// The MAC under `root`.
    pub fn sign(&self, root: &RootKey) -> [u8; 32] {
        self.mac(root).finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of these claims under `root`, compared in constant time.
    pub fn verify(&self, root: &RootKey, tag: &[u8]) -> bool {
        self.mac(root).verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(byte: u8) -> RootKey {
        RootKey::from_bytes(1, &[byte; 32]).unwrap()
    }

    #[test]
    fn every_claim_is_bound() {
        let items: BTreeMap<String, String> =
            [("a".into(), "uid-a".into()), ("b".into(), String::new())].into();
        let digest = [7u8; 32];
        let claims = StampClaims {
            kind: "Monitor",
            namespace: "shop",
            name: StampedName::Name("checkout"),
            spec_digest: &digest,
            items: &items,
            user: "alice",
            issued_at: 1_700_000_000,
            nonce: None,
        };
        let tag = claims.sign(&root(1));
        assert!(claims.verify(&root(1), &tag));
        assert!(!claims.verify(&root(2), &tag), "another root key");

        let other_items: BTreeMap<String, String> = [("a".into(), "uid-a".into())].into();
        let shifted: BTreeMap<String, String> =
            [("a".into(), "uid-ab".into()), ("b".into(), String::new())].into();
        let other_uid: BTreeMap<String, String> =
            [("a".into(), "uid-a2".into()), ("b".into(), String::new())].into();
        let other_digest = [8u8; 32];
        let variants = [
            StampClaims {
                kind: "MonitorRun",
                ..claims
            },
            StampClaims {
                namespace: "shop2",
                ..claims
            },
            StampClaims {
                name: StampedName::Name("checkou"),
                ..claims
            },
            StampClaims {
                name: StampedName::GenerateName("checkout"),
                ..claims
            },
            StampClaims {
                spec_digest: &other_digest,
                ..claims
            },
            StampClaims {
                items: &other_items,
                ..claims
            },
            StampClaims {
                items: &shifted,
                ..claims
            },
            StampClaims {
                items: &other_uid,
                ..claims
            },
            StampClaims {
                user: "mallory",
                ..claims
            },
            StampClaims {
                issued_at: 1_700_000_001,
                ..claims
            },
            StampClaims {
                nonce: Some(""),
                ..claims
            },
        ];
        for variant in variants {
            assert!(!variant.verify(&root(1), &tag), "{variant:?}");
        }
        let with_nonce = StampClaims {
            nonce: Some("n1"),
            ..claims
        };
        let tag = with_nonce.sign(&root(1));
        assert!(with_nonce.verify(&root(1), &tag));
        for other in [None, Some("n2"), Some("n")] {
            let variant = StampClaims {
                nonce: other,
                ..claims
            };
            assert!(!variant.verify(&root(1), &tag), "{variant:?}");
        }
        assert!(!claims.verify(&root(1), &tag[..31]), "a truncated tag");
    }
}
