//! The webhook server's TLS certificate: what the HTTPS server presents, swapped while it
//! runs.
//!
//! - [`CertResolver`]: the rustls certificate resolver. [`CertResolver::set`] parses and
//!   checks a new pair before the swap; a bad pair leaves the old one in place.
//! - [`files`]: cert-manager mode. `tls.crt` and `tls.key` are mounted from a Secret and
//!   polled, because Kubernetes updates them with a symlink swap that may send no inotify
//!   event.
//! - [`self_managed`]: the operator keeps its own CA and a short-lived serving certificate
//!   in the Secret `monivault-webhook-tls`, renews it by compare-and-swap, and patches the
//!   CA bundle into its webhook configurations ([`patch_ca_bundle`]).
//!
//! What it must never do: log, return in an error or print in a `Debug` a private key.
//! Keys stay in `Zeroizing` buffers, and errors name files, Secrets and fields.

mod authority;
mod ca_bundle;
pub mod files;
pub mod self_managed;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use authority::SubjectNames;
pub use ca_bundle::patch_ca_bundle;
pub use files::{CertFiles, watch_files};
pub use self_managed::{
    SECRET_NAME, SelfManaged, SelfManagedConfig, ServingCert, WEBHOOK_SERVICE, run_self_managed,
};

/// Everything that can go wrong with the webhook's certificate. No variant carries key
/// material or PEM text: they name the file, Secret or field and say what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} is not usable PEM: {reason}")]
    Pem { what: String, reason: &'static str },

    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },

    #[error("rustls refuses {what}: {source}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },

    #[error("cannot generate {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("{what} is not a usable certificate: {reason}")]
    Certificate { what: String, reason: String },

    /// The Secret exists but lacks monivault's label: someone else's, never overwritten.
    #[error("Secret {namespace}/{name} is not managed by monivault; refusing to overwrite it")]
    ForeignSecret { namespace: String, name: String },

    #[error("{what} kept changing underneath ({attempts} attempts); will retry")]
    Conflict { what: String, attempts: u32 },

    #[error("Kubernetes API call on {what} failed: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error("invalid webhook TLS configuration: {reason}")]
    Config { reason: String },
}

impl TlsError {
    /// A low-cardinality label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            TlsError::ReadFile { .. } => "read_file",
            TlsError::Pem { .. } => "pem",
            TlsError::KeyMismatch { .. } => "key_mismatch",
            TlsError::Rustls { .. } => "rustls",
            TlsError::Generate { .. } => "generate",
            TlsError::Certificate { .. } => "certificate",
            TlsError::ForeignSecret { .. } => "foreign_secret",
            TlsError::Conflict { .. } => "conflict",
            TlsError::Kube { .. } => "kube",
            TlsError::Config { .. } => "config",
        }
    }
}

/// The crypto provider of every TLS object built here: ring, not the process default, so
/// nothing depends on which provider someone installed first.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration over `resolver`, TLS 1.2 and 1.3, no client certificates. The
/// server sets its own ALPN protocols on the result.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    Ok(
        rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "the protocol versions".to_owned(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver),
    )
}

/// The certificate the webhook server presents, swappable while it serves. Until the first
/// [`set`](Self::set) it has none, and handshakes fail.
#[derive(Default)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl CertResolver {
    pub fn new() -> Self {
        CertResolver::default()
    }

    /// Parses a PEM certificate chain (leaf first) and its PEM private key, checks that the
    /// key belongs to the leaf, then swaps them in. On error the old pair stays.
    pub fn set(&self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        self.set_from(
            "the certificate chain",
            "the private key",
            cert_chain_pem,
            key_pem,
        )
    }

    /// [`set`](Self::set), with errors naming where the PEMs came from.
    pub(crate) fn set_from(
        &self,
        cert_what: &str,
        key_what: &str,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), TlsError> {
        let key = certified_key(cert_what, key_what, cert_chain_pem, key_pem)?;
        // A poisoned lock only means a panic elsewhere mid-swap; the Arc inside is whole.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(key));
        Ok(())
    }

    /// The pair handshakes get now.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a certificate is loaded: the server is not ready before.
    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// A rustls pair from PEM, refused unless the key provably belongs to the leaf.
pub(crate) fn certified_key(
    cert_what: &str,
    key_what: &str,
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_chain(cert_what, cert_chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error(key_what, &e))?;
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Rustls {
            what: key_what.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // rustls' own from_der lets an "unknown" match through; here only a proven one passes.
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert_what.to_owned(),
            key: key_what.to_owned(),
        }),
        Err(source) => Err(TlsError::Rustls {
            what: cert_what.to_owned(),
            source,
        }),
    }
}

/// Every certificate of a PEM chain, in order; at least one.
pub(crate) fn parse_chain(
    what: &str,
    pem_bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, &e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            reason: "it holds no CERTIFICATE section",
        });
    }
    Ok(chain)
}

/// The PEM error in words of our own: the parser's messages may quote a line of the input,
/// which for a key file is key material.
fn pem_error(what: &str, error: &pem::Error) -> TlsError {
    let reason = match error {
        pem::Error::NoItemsFound => "it holds no section of the expected type",
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "it cannot be read",
    };
    TlsError::Pem {
        what: what.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests;
