use thiserror::Error;

/// Everything that can go wrong in the store. No variant carries a Secret's data, so any
/// of them may be logged or put in an Event: `what` names the object, `reason` says what
/// was wrong with it in words, never with its bytes.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A precondition failed: the object changed since it was read (resourceVersion
    /// mismatch), it is gone, or a create found it already there. Re-read and retry.
    #[error("{what} changed underneath (stale resourceVersion, already exists, or gone)")]
    Conflict { what: String },

    /// Something that should exist does not (the keyring, a root key version).
    #[error("{what} does not exist")]
    NotFound { what: String },

    /// The stored object cannot be parsed. The reason never quotes the data.
    #[error("{what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },

    /// A request the store refuses before it reaches the API server, e.g. an object over
    /// the Secret size limit, or removing the current root key.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },

    #[error("Kubernetes API call on {what} failed: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

impl StoreError {
    /// Whether a re-read and retry may succeed (the compare-and-swap lost a race).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// A low-cardinality label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "conflict",
            StoreError::NotFound { .. } => "not_found",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Invalid { .. } => "invalid",
            StoreError::Kube { .. } => "kube",
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
