//! The vault engine: key hierarchy, authenticated encryption, sealing and the rotation steps.
//!
//! Pure: no I/O, no clock, no Kubernetes. Callers pass in the time and persist the
//! [`Keyring`] value themselves (by compare-and-swap), so every step here is a function
//! from one keyring value to the next and can be tested exhaustively.
//!
//! What it must never do: hand out key material or plaintext in a type that can be logged
//! or cloned by accident. Keys live in heap buffers wiped on drop (never copied through
//! stack arrays), plaintext in [`Plaintext`] (an exact-size `secrecy` box), and every
//! error is free of secret bytes.
//!
//! ```text
//! RootKey (versioned, one per installation)
//!   └─ wraps, per environment (= namespace), versioned:
//!        ├─ data key (AES-256-GCM)    → DataCipher: item ciphertext in the store ("mv1.d.")
//!        └─ sealing key pair (X-Wing) → seal()/SealingOpener: HPKE envelopes ("mv2.s.")
//! ```
//!
//! [`pkcs12`] reads the one hostile format the vault must open itself: PKCS#12 archives,
//! held to limits before any key derivation runs.

mod aad;
mod data;
mod envelope;
mod error;
mod keyring;
mod keys;
pub mod pkcs12;
mod recovery;
mod sealing;
mod stamp;
mod time;

pub use data::{DataCipher, ItemBinding};
pub use envelope::{EnvelopeKind, key_version_of};
pub use error::CryptoError;
pub use keyring::{DataKeyInfo, Environment, Keyring, RotationPolicy, SealingKeyInfo, reencrypt};
pub use keys::{Plaintext, RootKey};
pub use recovery::{
    RecoveryPrivateKey, RecoveryPublicKey, new_recovery_key, open_backup, seal_backup,
};
pub use sealing::{SealBinding, SealingOpener, SealingPublicKey, seal};
pub use stamp::{StampClaims, StampedName};
pub use time::UnixMillis;

/// Encryptions allowed under one data key before it must rotate (random 96-bit nonces:
/// NIST SP 800-38D caps them at 2^32; we keep a factor of two in hand).
pub const MAX_ENCRYPTIONS_PER_DATA_KEY: u64 = 1 << 31;
