//! Item ciphertext in the internal store: AES-256-GCM under an environment data key.

use std::fmt;

use aes_gcm::Aes256Gcm;

use super::CryptoError;
use super::aad::Aad;
use super::envelope::{self, EnvelopeKind};
use super::keys::{self, KeyBytes, Plaintext};

/// Which item field a stored ciphertext belongs to. The uid makes a ciphertext die with
/// its item: a new item of the same name cannot open the old one's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemBinding<'a> {
    pub namespace: &'a str,
    pub item: &'a str,
    pub uid: &'a str,
    pub field: &'a str,
}

impl ItemBinding<'_> {
    fn aad(&self, version: u32) -> Aad {
        let mut aad = Aad::new("monivault/v1/item-data");
        aad.str(self.namespace)
            .str(self.item)
            .str(self.uid)
            .str(self.field)
            .u32(version);
        aad
    }
}

/// One unwrapped data key of one environment, ready to encrypt and decrypt. Build it once
/// per key version and reuse it; the key schedule is wiped on drop.
pub struct DataCipher {
    namespace: String,
    version: u32,
    cipher: Aes256Gcm,
}

impl DataCipher {
    pub(crate) fn new(namespace: &str, version: u32, key: &KeyBytes) -> Self {
        DataCipher {
            namespace: namespace.to_owned(),
            version,
            cipher: keys::cipher(key),
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Encrypts one field into a `mv1.d.<version>.…` envelope.
    pub fn encrypt(
        &self,
        binding: &ItemBinding<'_>,
        plaintext: &[u8],
    ) -> Result<String, CryptoError> {
        self.check_namespace(binding)?;
        let payload = keys::aead_seal(
            &self.cipher,
            binding.aad(self.version).as_bytes(),
            plaintext,
        )?;
        Ok(envelope::encode(EnvelopeKind::Data, self.version, &payload))
    }

    /// Opens an envelope written by [`DataCipher::encrypt`] under this key version.
    pub fn decrypt(&self, binding: &ItemBinding<'_>, text: &str) -> Result<Plaintext, CryptoError> {
        self.check_namespace(binding)?;
        let env = envelope::decode(EnvelopeKind::Data, text)?;
        if env.version != self.version {
            return Err(CryptoError::UnknownKeyVersion {
                namespace: self.namespace.clone(),
                kind: "data",
                version: env.version,
            });
        }
        let bytes = keys::aead_open(
            &self.cipher,
            binding.aad(self.version).as_bytes(),
            &env.payload,
            "stored ciphertext",
        )?;
        Ok(Plaintext::from_zeroizing(bytes))
    }

    fn check_namespace(&self, binding: &ItemBinding<'_>) -> Result<(), CryptoError> {
        if binding.namespace == self.namespace {
            Ok(())
        } else {
            // A key of one environment never touches another's items.
            Err(CryptoError::NamespaceMismatch {
                key_namespace: self.namespace.clone(),
                wanted: binding.namespace.to_owned(),
            })
        }
    }
}

impl fmt::Debug for DataCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataCipher")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}
