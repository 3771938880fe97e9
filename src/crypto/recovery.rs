//! Recovery keys and sealed backups.
//!
//! A recovery key is an X-Wing key pair made for one purpose: a backup of the store is
//! sealed to its public half (HPKE base mode, as for sealed values, with its own `info`),
//! and only its private half, kept offline, opens it. X-Wing for the same reason as sealed
//! values: a backup is kept for years, and must resist "harvest now, decrypt later".
//!
//! Text forms: `mvrk1.pub.<base64url X-Wing public key>` and
//! `mvrk1.private.<base64url 32-byte seed>`. The private text is handed out only in a
//! buffer wiped on drop.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hpke::{Deserializable, Kem as _, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::CryptoError;
use super::keys::{KeyBytes, Plaintext, random_key};
use super::sealing::{self, Kem, PrivateKey, PublicKeyBytes};

const PUBLIC_PREFIX: &str = "mvrk1.pub.";
const PRIVATE_PREFIX: &str = "mvrk1.private.";
/// Domain separation from sealed values: a backup can never be taken for one, or back.
const BACKUP_INFO: &[u8] = b"monivault/v1/backup";

/// The public half of a recovery key: what `monivault backup` seals to.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryPublicKey {
    key: PublicKeyBytes,
}

/// The private half: opens backups. Not `Clone`; the seed is wiped on drop.
pub struct RecoveryPrivateKey {
    seed: KeyBytes,
    key: PrivateKey,
}

/// A new recovery key pair.
pub fn new_recovery_key() -> Result<(RecoveryPublicKey, RecoveryPrivateKey), CryptoError> {
    let private = RecoveryPrivateKey::from_seed(random_key()?)?;
    Ok((private.public_key(), private))
}

impl RecoveryPublicKey {
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let malformed = |reason| CryptoError::Malformed {
            what: "recovery public key",
            reason,
        };
        let text = text.trim();
        if text.starts_with(PRIVATE_PREFIX) {
            return Err(malformed(
                "this is the private half (NAME.private); give the public half (NAME.pub)",
            ));
        }
        let encoded = text
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or(malformed("unknown format (expected prefix mvrk1.pub.)"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| malformed("key is not unpadded base64url"))?;
        let key = PublicKeyBytes::from_bytes(&bytes)
            .map_err(|_| malformed("key is not an X-Wing public key"))?;
        Ok(RecoveryPublicKey { key })
    }

    /// A short public fingerprint (hex of the first 16 bytes of SHA-256 over the key), so
    /// a backup names the recovery key it needs without revealing anything.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.key.to_bytes().as_slice());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for RecoveryPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.key.to_bytes())
        )
    }
}

impl fmt::Debug for RecoveryPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryPublicKey")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl RecoveryPrivateKey {
    fn from_seed(seed: KeyBytes) -> Result<Self, CryptoError> {
        let key = sealing::private_key(&seed).map_err(|_| CryptoError::Malformed {
            what: "recovery private key",
            reason: "not an X-Wing seed",
        })?;
        Ok(RecoveryPrivateKey { seed, key })
    }

    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let malformed = |reason| CryptoError::Malformed {
            what: "recovery private key",
            reason,
        };
        let text = text.trim();
        if text.starts_with(PUBLIC_PREFIX) {
            return Err(malformed(
                "this is the public half (NAME.pub); give the private half (NAME.private)",
            ));
        }
        let encoded = text
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or(malformed("unknown format (expected prefix mvrk1.private.)"))?;
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|_| malformed("key is not unpadded base64url"))?,
        );
        let seed = KeyBytes::from_slice(&bytes).ok_or(malformed("key is not 32 bytes"))?;
        RecoveryPrivateKey::from_seed(seed)
    }

    /// The text form, to write to `NAME.private`, in a buffer wiped on drop.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(PRIVATE_PREFIX.len() + 44));
        text.push_str(PRIVATE_PREFIX);
        URL_SAFE_NO_PAD.encode_string(self.seed.as_ref(), &mut text);
        text
    }

    pub fn public_key(&self) -> RecoveryPublicKey {
        RecoveryPublicKey {
            key: Kem::sk_to_pk(&self.key),
        }
    }
}

impl fmt::Debug for RecoveryPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryPrivateKey")
            .field("fingerprint", &self.public_key().fingerprint())
            .finish_non_exhaustive()
    }
}

/// Seals a backup's payload to a recovery key. `header` is bound as associated data, so
/// what a backup says about itself in the clear cannot be changed without it failing to
/// open. Returns the encapsulated key followed by the ciphertext.
pub fn seal_backup(
    recipient: &RecoveryPublicKey,
    header: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    sealing::hpke_seal(&recipient.key, BACKUP_INFO, header, payload)
}

/// Opens what [`seal_backup`] made, with the same header.
pub fn open_backup(
    key: &RecoveryPrivateKey,
    header: &[u8],
    sealed: &[u8],
) -> Result<Plaintext, CryptoError> {
    sealing::hpke_open(&key.key, BACKUP_INFO, header, sealed, "backup")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip_and_are_not_confused() {
        let (public, private) = new_recovery_key().expect("key");
        let public_text = public.to_string();
        let private_text = private.to_text();
        assert!(public_text.starts_with("mvrk1.pub."));
        assert!(private_text.starts_with("mvrk1.private."));
        let parsed = RecoveryPrivateKey::parse(&format!("{}\n", private_text.as_str()))
            .expect("private parses");
        assert_eq!(parsed.public_key(), public);
        assert_eq!(
            RecoveryPublicKey::parse(&public_text).expect("public parses"),
            public
        );
        assert!(RecoveryPublicKey::parse(&private_text).is_err());
        assert!(RecoveryPrivateKey::parse(&public_text).is_err());
        assert!(!format!("{private:?}").contains(&private_text[PRIVATE_PREFIX.len()..]));
    }

    #[test]
    fn a_backup_opens_only_with_its_key_and_its_header() {
        let (public, private) = new_recovery_key().expect("key");
        let (_, other) = new_recovery_key().expect("key");
        let sealed = seal_backup(&public, b"header", b"payload").expect("seal");
        assert_eq!(
            open_backup(&private, b"header", &sealed)
                .expect("open")
                .expose(),
            b"payload"
        );
        assert!(open_backup(&other, b"header", &sealed).is_err());
        assert!(open_backup(&private, b"headex", &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open_backup(&private, b"header", &flipped).is_err());
        assert!(open_backup(&private, b"header", &sealed[..100]).is_err());
    }
}
