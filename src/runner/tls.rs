//! TLS for checks: which servers a check trusts, and the client identity it may present.
//!
//! rustls with the `ring` provider, named explicitly. The system root store (Mozilla's,
//! from `webpki-roots`, compiled in: the image has no `/etc/ssl`) and the client
//! configuration over it are built once per process and shared by every check. Verification
//! is never skipped: there is no "insecure" switch.

use std::sync::{Arc, LazyLock};

use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use super::items::ClientIdentity;

/// Which servers a check trusts.
#[derive(Clone, Debug, Default)]
pub enum Trust {
    /// The system roots (Mozilla's list).
    #[default]
    SystemRoots,
    /// Only these CAs, from the monitor's `tls.caCertificate` item. They replace the system
    /// roots.
    Custom(Vec<CertificateDer<'static>>),
}

/// Why a TLS configuration could not be built. Never holds key material.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("the CA certificate list is empty")]
    NoCa,
    #[error("CA certificate {index} cannot be used: {source}")]
    BadCa {
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("the client certificate chain is empty")]
    NoChain,
    #[error("the client key and certificate cannot be used: {0}")]
    Identity(#[source] rustls::Error),
    #[error("TLS protocol versions: {0}")]
    Versions(#[source] rustls::Error),
}

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

static SYSTEM_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    Arc::new(RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
});

/// The client configuration for system roots without a client identity: the common case,
/// built once.
static SYSTEM_CONFIG: LazyLock<Result<ClientConfig, String>> =
    LazyLock::new(|| client_config(SYSTEM_ROOTS.clone(), None).map_err(|e| e.to_string()));

/// The ALPN protocols a check offers.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The root store for `trust`: the shared system store, or one of the custom CAs.
pub fn root_store(trust: &Trust) -> Result<Arc<RootCertStore>, TlsSetupError> {
    match trust {
        Trust::SystemRoots => Ok(SYSTEM_ROOTS.clone()),
        Trust::Custom(cas) => {
            if cas.is_empty() {
                return Err(TlsSetupError::NoCa);
            }
            let mut store = RootCertStore::empty();
            for (index, ca) in cas.iter().enumerate() {
                store
                    .add(ca.clone())
                    .map_err(|source| TlsSetupError::BadCa { index, source })?;
            }
            Ok(Arc::new(store))
        }
    }
}

/// A client configuration over `roots`, presenting `identity` if given.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Versions)?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            if identity.chain_der.is_empty() {
                return Err(TlsSetupError::NoChain);
            }
            let chain = identity
                .chain_der
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                identity.private_key_pkcs8_der.to_vec(),
            ));
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsSetupError::Identity)?
        }
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The shared system configuration, built on first use.
fn system_config() -> Result<ClientConfig, TlsSetupError> {
    match &*SYSTEM_CONFIG {
        Ok(config) => Ok(config.clone()),
        Err(_) => client_config(SYSTEM_ROOTS.clone(), None),
    }
}

/// The client configuration for `trust` and `identity`; the shared one when it can be.
pub fn config_for(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, TlsSetupError> {
    match (trust, identity) {
        (Trust::SystemRoots, None) => system_config(),
        _ => client_config(root_store(trust)?, identity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    #[test]
    fn the_system_store_is_built_once_and_shared() {
        let a = root_store(&Trust::SystemRoots).unwrap();
        let b = root_store(&Trust::SystemRoots).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.len() > 50, "Mozilla's roots: {}", a.len());
        let config = system_config().unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_custom_ca_replaces_the_system_roots() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let store = root_store(&Trust::Custom(vec![ca.cert.der().clone()])).unwrap();
        assert_eq!(store.len(), 1);
        assert!(matches!(
            root_store(&Trust::Custom(vec![])),
            Err(TlsSetupError::NoCa)
        ));
        let junk = CertificateDer::from(b"not a certificate".to_vec());
        assert!(matches!(
            root_store(&Trust::Custom(vec![junk])),
            Err(TlsSetupError::BadCa { index: 0, .. })
        ));
    }

    #[test]
    fn a_client_identity_loads_from_memory_and_a_bad_key_is_refused() {
        let issued = rcgen::generate_simple_self_signed(vec!["client.test".into()]).unwrap();
        let roots = root_store(&Trust::SystemRoots).unwrap();
        let good = ClientIdentity {
            private_key_pkcs8_der: Zeroizing::new(issued.signing_key.serialize_der()),
            chain_der: vec![issued.cert.der().to_vec()],
        };
        let config = client_config(roots.clone(), Some(&good)).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        let bad = ClientIdentity {
            private_key_pkcs8_der: Zeroizing::new(b"SECRETKEYBYTES".to_vec()),
            chain_der: vec![issued.cert.der().to_vec()],
        };
        let err = client_config(roots.clone(), Some(&bad)).unwrap_err();
        assert!(!err.to_string().contains("SECRETKEYBYTES"), "{err}");
        let no_chain = ClientIdentity {
            private_key_pkcs8_der: Zeroizing::new(issued.signing_key.serialize_der()),
            chain_der: vec![],
        };
        assert!(matches!(
            client_config(roots, Some(&no_chain)),
            Err(TlsSetupError::NoChain)
        ));
    }
}
