use thiserror::Error;

/// Everything that can go wrong in the engine. No variant carries key material or
/// plaintext, so any of them may be logged, put in an Event or returned by the webhook.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("malformed {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },

    #[error(
        "sealed with format mv1, which did not bind the item's section and type and is no longer accepted: seal the value again with monivault seal --section"
    )]
    OutdatedSealedFormat,

    #[error("expected a {expected} envelope, found a {found} one")]
    WrongEnvelopeKind {
        expected: &'static str,
        found: &'static str,
    },

    #[error("environment {namespace:?} has no keys yet")]
    UnknownEnvironment { namespace: String },

    #[error("environment {namespace:?} has no {kind} key version {version}")]
    UnknownKeyVersion {
        namespace: String,
        kind: &'static str,
        version: u32,
    },

    /// Authentication failed: the bytes were changed, or they belong to another
    /// namespace, item, uid, field or key version.
    #[error(
        "{what} does not open: it was altered, or it belongs to another namespace, item, field or key version"
    )]
    OpenFailed { what: &'static str },

    #[error(
        "root key version {version} does not match the keyring (keyring expects root key version {expected_version}, id {expected_id})"
    )]
    WrongRootKey {
        version: u32,
        expected_version: u32,
        expected_id: String,
    },

    #[error("sealing key is for namespace {key_namespace:?}, not {wanted:?}")]
    NamespaceMismatch {
        key_namespace: String,
        wanted: String,
    },

    #[error("data key version {version} of {namespace:?} is current and cannot be retired")]
    RetireCurrent { namespace: String, version: u32 },

    #[error("data key version {version} of {namespace:?} is still used by stored records")]
    KeyInUse { namespace: String, version: u32 },

    #[error("key version counter of {namespace:?} is exhausted")]
    VersionOverflow { namespace: String },

    #[error("the system random number generator failed")]
    Random,

    #[error("encryption failed")]
    Encrypt,
}
