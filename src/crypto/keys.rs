//! Key material: the root key, plaintext, and the wrapping of environment keys.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;
use super::aad::Aad;

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// 32 bytes of key material on the heap, wiped when dropped. Boxed so that moving a key
/// (returning it, storing it in a struct) moves a pointer and leaves no copy of the bytes
/// on the stack, where nothing would wipe it.
pub(crate) struct KeyBytes(Box<[u8; KEY_LEN]>);

impl KeyBytes {
    /// All zeros, to be filled in place.
    pub(crate) fn zeroed() -> Self {
        KeyBytes(Box::new([0u8; KEY_LEN]))
    }

    /// A copy of `bytes` if they are exactly a key long. The copy goes straight into the
    /// heap buffer, never through a stack array.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let mut key = KeyBytes::zeroed();
        key.0.copy_from_slice(bytes);
        Some(key)
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8; KEY_LEN];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KeyBytes {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl AsRef<[u8]> for KeyBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Drop for KeyBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

pub(crate) fn random_key() -> Result<KeyBytes, CryptoError> {
    let mut key = KeyBytes::zeroed();
    getrandom::fill(key.as_mut_slice()).map_err(|_| CryptoError::Random)?;
    Ok(key)
}

pub(crate) fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    Ok(nonce)
}

/// The AES-256-GCM cipher of `key`, keyed from the caller's buffer by reference (a `Key`
/// made by value would be a stack copy nobody wipes).
pub(crate) fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    let key: &Key<Aes256Gcm> = key.into();
    Aes256Gcm::new(key)
}

/// `nonce || AES-256-GCM(key, nonce, plaintext, aad)`.
pub(crate) fn aead_seal(
    cipher: &Aes256Gcm,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce = random_nonce()?;
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens `nonce || ciphertext`; `what` names the object in the error.
pub(crate) fn aead_open(
    cipher: &Aes256Gcm,
    aad: &[u8],
    sealed: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed {
            what,
            reason: "too short to hold a nonce and a tag",
        });
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed {
        what,
        reason: "bad nonce length",
    })?;
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::OpenFailed { what })
}

/// A secret value in memory: wiped on drop, redacted in `Debug`, not `Clone`.
/// Read it with [`Plaintext::expose`], at the one place that needs the bytes.
pub struct Plaintext(SecretSlice<u8>);

impl Plaintext {
    /// Takes over `bytes`; the buffer it came in is wiped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Plaintext::from_zeroizing(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a box of exactly their length; `bytes` wipes its own buffer
    /// when dropped. Turning the `Vec` into a box instead could reallocate (when it has
    /// spare capacity, as a decryption's output does) and free the old buffer unwiped.
    pub fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> Self {
        let exact: Box<[u8]> = Box::from(bytes.as_slice());
        Plaintext(SecretSlice::from(exact))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    pub fn len(&self) -> usize {
        self.expose().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<&str> for Plaintext {
    fn from(s: &str) -> Self {
        Plaintext::new(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext(***** {} bytes)", self.len())
    }
}

/// The installation's root key, with its version. It only wraps environment keys and
/// derives purpose keys; it never encrypts item data itself.
pub struct RootKey {
    version: u32,
    key: KeyBytes,
}

impl RootKey {
    pub fn generate(version: u32) -> Result<Self, CryptoError> {
        Ok(RootKey {
            version,
            key: random_key()?,
        })
    }

    pub fn from_bytes(version: u32, bytes: &[u8]) -> Result<Self, CryptoError> {
        let key = KeyBytes::from_slice(bytes).ok_or(CryptoError::Malformed {
            what: "root key",
            reason: "must be exactly 32 bytes",
        })?;
        Ok(RootKey { version, key })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The raw bytes, for the one caller that persists the key (the root key Secret).
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// A public fingerprint, stored in the keyring, that tells a wrong root key from a
    /// right one before anything is unwrapped.
    pub fn id(&self) -> String {
        let id = self.derive("monivault/v1/root-key-id");
        id[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A key for one purpose (e.g. key wrapping), independent of every other purpose's key.
    pub(crate) fn derive(&self, purpose: &str) -> KeyBytes {
        let hk = Hkdf::<Sha256>::new(Some(b"monivault root key"), self.key.as_ref());
        let mut out = KeyBytes::zeroed();
        let info = Aad::new(purpose);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        if hk.expand(info.as_bytes(), out.as_mut_slice()).is_err() {
            unreachable!("HKDF-SHA256 can always expand 32 bytes");
        }
        out
    }

    pub(crate) fn wrap(
        &self,
        context: &WrapContext<'_>,
        key: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        aead_seal(
            &self.wrapping_cipher(),
            context.aad(self.version).as_bytes(),
            key,
        )
    }

    pub(crate) fn unwrap(
        &self,
        context: &WrapContext<'_>,
        wrapped: &[u8],
    ) -> Result<KeyBytes, CryptoError> {
        let bytes = aead_open(
            &self.wrapping_cipher(),
            context.aad(self.version).as_bytes(),
            wrapped,
            "wrapped environment key",
        )?;
        KeyBytes::from_slice(&bytes).ok_or(CryptoError::Malformed {
            what: "wrapped environment key",
            reason: "not 32 bytes",
        })
    }

    fn wrapping_cipher(&self) -> Aes256Gcm {
        cipher(&self.derive("monivault/v1/wrap"))
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey")
            .field("version", &self.version)
            .field("key", &"*****")
            .finish()
    }
}

/// What a wrapped environment key is bound to.
pub(crate) struct WrapContext<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) purpose: &'static str,
    pub(crate) version: u32,
}

impl WrapContext<'_> {
    fn aad(&self, root_version: u32) -> Aad {
        let mut aad = Aad::new("monivault/v1/wrapped-key");
        aad.str(self.namespace)
            .str(self.purpose)
            .u32(self.version)
            .u32(root_version);
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let root = RootKey::from_bytes(1, &[7u8; 32]).expect("key");
        assert!(!format!("{root:?}").contains("7"));
        let pt = Plaintext::from("hunter2-plaintext");
        assert!(!format!("{pt:?}").contains("hunter2"));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_key() {
        let a = RootKey::from_bytes(1, &[1u8; 32]).expect("key");
        let b = RootKey::from_bytes(1, &[2u8; 32]).expect("key");
        assert_ne!(*a.derive("x"), *a.derive("y"));
        assert_ne!(*a.derive("x"), *b.derive("x"));
        assert_ne!(
            a.id(),
            RootKey::from_bytes(1, &[2u8; 32]).expect("key").id()
        );
    }

    #[test]
    fn root_key_must_be_32_bytes() {
        assert!(RootKey::from_bytes(1, &[0u8; 31]).is_err());
    }
}
