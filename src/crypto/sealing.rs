//! Sealing: HPKE (RFC 9180) base mode, KEM X-Wing (ML-KEM-768 + X25519), HKDF-SHA256,
//! AES-256-GCM. Anyone with an environment's public key can seal; only the operator,
//! holding the private key, can open. X-Wing because sealed values sit in Git for years
//! and must resist a future quantum computer ("harvest now, decrypt later").
//!
//! Public key text form (what a VaultSection's status carries and `monivault seal` reads):
//! `mvpk1.<namespace>.<key version>.<base64url X-Wing public key>`. The namespace in it
//! stops a value from being sealed to the wrong environment by mistake.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};

use super::CryptoError;
use super::aad::Aad;
use super::envelope::{self, EnvelopeKind};
use super::keys::{KeyBytes, Plaintext};

pub(super) type Kem = XWing;
pub(super) type PublicKeyBytes = <Kem as hpke::Kem>::PublicKey;
pub(super) type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

const PUBLIC_KEY_PREFIX: &str = "mvpk1";
const INFO: &[u8] = b"monivault/v2/seal";
/// X-Wing's encapsulated key is 1120 bytes.
const ENCAPPED_LEN: usize = 1120;

/// What a sealed value is bound to. No uid: sealing happens before the item exists.
///
/// The section is bound because `use` may be granted per section: a value that opened in
/// any section of its namespace could be copied into an item recreated in a section the
/// copier may use. The item type is bound so a value never changes meaning (a field name
/// implies its type today; binding both keeps that true if types ever share a field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealBinding<'a> {
    pub namespace: &'a str,
    pub section: &'a str,
    /// The item type's name as in the spec, e.g. `CredentialSet`.
    pub item_type: &'a str,
    pub item: &'a str,
    pub field: &'a str,
}

impl SealBinding<'_> {
    fn aad(&self, version: u32) -> Aad {
        let mut aad = Aad::new("monivault/v2/sealed");
        aad.str(self.namespace)
            .str(self.section)
            .str(self.item_type)
            .str(self.item)
            .str(self.field)
            .u32(version);
        aad
    }
}

/// An environment's sealing public key, with the namespace and version it belongs to.
#[derive(Clone, PartialEq, Eq)]
pub struct SealingPublicKey {
    namespace: String,
    version: u32,
    key: PublicKeyBytes,
}

impl SealingPublicKey {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Parses the `mvpk1.` text form, e.g. from a file or a VaultSection's status.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let malformed = |reason| CryptoError::Malformed {
            what: "sealing public key",
            reason,
        };
        let mut parts = text.trim().splitn(4, '.');
        let (Some(prefix), Some(namespace), Some(version), Some(key)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected mvpk1.<namespace>.<version>.<key>"));
        };
        if prefix != PUBLIC_KEY_PREFIX {
            return Err(malformed("unknown format (expected prefix mvpk1)"));
        }
        if namespace.is_empty() {
            return Err(malformed("namespace is empty"));
        }
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("key version is not a number"));
        }
        let version = version
            .parse::<u32>()
            .map_err(|_| malformed("key version is not a number"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(key)
            .map_err(|_| malformed("key is not unpadded base64url"))?;
        let key = PublicKeyBytes::from_bytes(&bytes)
            .map_err(|_| malformed("key is not an X-Wing public key"))?;
        Ok(SealingPublicKey {
            namespace: namespace.to_owned(),
            version,
            key,
        })
    }
}

impl fmt::Display for SealingPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}.{}.{}.{}",
            self.namespace,
            self.version,
            URL_SAFE_NO_PAD.encode(self.key.to_bytes())
        )
    }
}

impl fmt::Debug for SealingPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingPublicKey")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Seals a plaintext for one item field into a `mv2.s.<version>.…` envelope. Offline and
/// stateless: this is all `monivault seal` does.
pub fn seal(
    public_key: &SealingPublicKey,
    binding: &SealBinding<'_>,
    plaintext: &[u8],
) -> Result<String, CryptoError> {
    if binding.namespace != public_key.namespace {
        return Err(CryptoError::NamespaceMismatch {
            key_namespace: public_key.namespace.clone(),
            wanted: binding.namespace.to_owned(),
        });
    }
    let aad = binding.aad(public_key.version);
    let payload = hpke_seal(&public_key.key, INFO, aad.as_bytes(), plaintext)?;
    Ok(envelope::encode(
        EnvelopeKind::Sealed,
        public_key.version,
        &payload,
    ))
}

/// One unwrapped sealing private key. Built from the keyring, used to open envelopes.
pub struct SealingOpener {
    namespace: String,
    version: u32,
    key: PrivateKey,
}

impl SealingOpener {
    pub(crate) fn from_seed(
        namespace: &str,
        version: u32,
        seed: &KeyBytes,
    ) -> Result<Self, CryptoError> {
        Ok(SealingOpener {
            namespace: namespace.to_owned(),
            version,
            key: private_key(seed)?,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The public half, for publishing.
    pub fn public_key(&self) -> SealingPublicKey {
        SealingPublicKey {
            namespace: self.namespace.clone(),
            version: self.version,
            key: Kem::sk_to_pk(&self.key),
        }
    }

    /// Opens a sealed value. Fails if it was sealed for another namespace, section, item
    /// type, item, field or key version, or altered in any byte.
    pub fn open(&self, binding: &SealBinding<'_>, text: &str) -> Result<Plaintext, CryptoError> {
        if binding.namespace != self.namespace {
            return Err(CryptoError::NamespaceMismatch {
                key_namespace: self.namespace.clone(),
                wanted: binding.namespace.to_owned(),
            });
        }
        let env = envelope::decode(EnvelopeKind::Sealed, text)?;
        if env.version != self.version {
            return Err(CryptoError::UnknownKeyVersion {
                namespace: self.namespace.clone(),
                kind: "sealing",
                version: env.version,
            });
        }
        hpke_open(
            &self.key,
            INFO,
            binding.aad(self.version).as_bytes(),
            &env.payload,
            "sealed value",
        )
    }
}

impl fmt::Debug for SealingOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingOpener")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// HPKE base-mode single-shot seal (X-Wing, HKDF-SHA256, AES-256-GCM): the encapsulated
/// key followed by the ciphertext. Shared by sealed values and sealed backups, which
/// differ only in their `info` and `aad`.
pub(super) fn hpke_seal(
    public_key: &PublicKeyBytes,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let (encapped, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem>(
        &OpModeS::Base,
        public_key,
        info,
        plaintext,
        aad,
    )
    .map_err(|_| CryptoError::Encrypt)?;
    let mut payload = Vec::with_capacity(ENCAPPED_LEN + ciphertext.len());
    payload.extend_from_slice(&encapped.to_bytes());
    payload.extend_from_slice(&ciphertext);
    Ok(payload)
}

/// Opens what [`hpke_seal`] made; `what` names the object in the error.
pub(super) fn hpke_open(
    private_key: &PrivateKey,
    info: &[u8],
    aad: &[u8],
    payload: &[u8],
    what: &'static str,
) -> Result<Plaintext, CryptoError> {
    if payload.len() < ENCAPPED_LEN {
        return Err(CryptoError::Malformed {
            what,
            reason: "too short to hold an encapsulated key",
        });
    }
    let (encapped, ciphertext) = payload.split_at(ENCAPPED_LEN);
    let encapped = EncappedKey::from_bytes(encapped).map_err(|_| CryptoError::Malformed {
        what,
        reason: "bad encapsulated key",
    })?;
    let plaintext = hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Base,
        private_key,
        &encapped,
        info,
        ciphertext,
        aad,
    )
    .map_err(|_| CryptoError::OpenFailed { what })?;
    Ok(Plaintext::new(plaintext))
}

/// The X-Wing private key is its 32-byte seed, so the keyring wraps just the seed.
pub(super) fn private_key(seed: &KeyBytes) -> Result<PrivateKey, CryptoError> {
    PrivateKey::from_bytes(seed.as_ref()).map_err(|_| CryptoError::Malformed {
        what: "sealing key seed",
        reason: "not an X-Wing seed",
    })
}
