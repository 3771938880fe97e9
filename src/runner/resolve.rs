//! Resolution: the vault items a check may carry, from the store, just before the check.
//!
//! Only items the admission stamp names are resolved, and each only while it is the very
//! object that was authorized (the uid the stamp binds). Plaintexts come out of the store
//! into [`ResolvedItems`] and are dropped, wiped, when the check is over.
//!
//! Every failure names the item and what is wrong with it, never a value.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store as Cache};
use zeroize::Zeroizing;

use super::items::{ClientIdentity, OtpSeed, ResolvedItem, ResolvedItems};
use super::tls::Trust;
use crate::api::{ItemType, MonitorSpec, SecretField, VaultItem};
use crate::crypto::{ItemBinding, Plaintext};
use crate::stamp::AuthorizedRefs;
use crate::store::{ItemKey, Keys, Store};

/// Why a check cannot be given its items. No variant holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The item the stamp names was deleted and created again since admission: it is not
    /// the item that was authorized.
    #[error(
        "VaultItem {item:?} was replaced after the monitor was admitted: someone allowed to use it must apply the monitor again"
    )]
    Replaced { item: String },
    #[error("VaultItem {item:?} does not exist")]
    Missing { item: String },
    #[error("VaultItem {item:?} has no stored secret yet (is it Ready?)")]
    NotStored { item: String },
    #[error("VaultItem {item:?}: {reason}")]
    Unusable { item: String, reason: String },
    #[error("the vault's keys are unavailable: {0}")]
    Keys(String),
}

impl ResolveError {
    /// Whether the monitor is not authorized (as opposed to an item that is not usable).
    pub fn is_authorization(&self) -> bool {
        matches!(self, ResolveError::Replaced { .. })
    }

    /// A short stable word for status and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::Replaced { .. } => "ItemReplaced",
            ResolveError::Missing { .. } => "ItemMissing",
            ResolveError::NotStored { .. } => "ItemNotStored",
            ResolveError::Unusable { .. } => "ItemUnusable",
            ResolveError::Keys(_) => "KeysUnavailable",
        }
    }
}

/// What a check gets: its items, and whom to trust.
#[derive(Debug)]
pub struct Resolved {
    pub items: ResolvedItems,
    pub trust: Trust,
}

/// Resolves the items `refs` authorizes for `spec` in `namespace`: items from `cache`,
/// their secrets from the store.
pub async fn resolve<S: Store>(
    keys: &Keys<S>,
    cache: &Cache<VaultItem>,
    namespace: &str,
    spec: &MonitorSpec,
    refs: &AuthorizedRefs,
) -> Result<Resolved, ResolveError> {
    let ca_name = spec
        .tls
        .as_ref()
        .and_then(|t| t.ca_certificate.as_ref())
        .map(|n| n.as_str().to_owned());
    let mut items = ResolvedItems::new();
    let mut trust = Trust::SystemRoots;
    let mut with_secrets = Vec::new();
    for (name, stamped_uid) in &refs.items {
        let item = cache
            .get(&ObjectRef::new(name).within(namespace))
            .ok_or_else(|| ResolveError::Missing { item: name.clone() })?;
        let uid = item.uid().unwrap_or_default();
        // An empty stamped uid: the item did not exist at admission, so only a grant on
        // its name allowed it, and that grant covers whichever item has the name now.
        if !stamped_uid.is_empty() && *stamped_uid != uid {
            return Err(ResolveError::Replaced { item: name.clone() });
        }
        if item.spec.item_type == ItemType::Certificate {
            if ca_name.as_deref() == Some(name.as_str()) {
                trust = Trust::Custom(ca_certificates(&item)?);
            }
            continue;
        }
        with_secrets.push((item, uid));
    }
    if with_secrets.is_empty() {
        return Ok(Resolved { items, trust });
    }
    let keys_error = |e: crate::store::KeyError| ResolveError::Keys(e.to_string());
    let ring = keys.keyring().await.map_err(keys_error)?;
    let root = keys.root_for(&ring).await.map_err(keys_error)?;
    for (item, uid) in with_secrets {
        let opened = open_record(keys, &ring, &root, namespace, &item, &uid).await?;
        items.insert(resolved_item(&item, opened)?);
    }
    Ok(Resolved { items, trust })
}

/// The item's stored fields, opened.
async fn open_record<S: Store>(
    keys: &Keys<S>,
    ring: &crate::crypto::Keyring,
    root: &crate::crypto::RootKey,
    namespace: &str,
    item: &VaultItem,
    uid: &str,
) -> Result<BTreeMap<SecretField, Plaintext>, ResolveError> {
    let name = item.name_any();
    let key = ItemKey {
        namespace: namespace.to_owned(),
        name: name.clone(),
    };
    let record = keys
        .store()
        .record(&key)
        .await
        .map_err(|e| ResolveError::Keys(e.to_string()))?
        .filter(|r| r.value.uid == uid)
        .ok_or_else(|| ResolveError::NotStored { item: name.clone() })?;
    let mut opened = BTreeMap::new();
    for &field in item.spec.secret_fields() {
        let Some(text) = record.value.fields.get(field.as_str()) else {
            continue;
        };
        let binding = ItemBinding {
            namespace,
            item: &name,
            uid,
            field: field.as_str(),
        };
        let plaintext = ring
            .decrypt(root, &binding, text)
            .map_err(|e| ResolveError::Unusable {
                item: name.clone(),
                reason: format!("its stored {} does not open: {e}", field.as_str()),
            })?;
        opened.insert(field, plaintext);
    }
    Ok(opened)
}

/// The item as the check engine takes it.
fn resolved_item(
    item: &VaultItem,
    mut opened: BTreeMap<SecretField, Plaintext>,
) -> Result<ResolvedItem, ResolveError> {
    let name = item.name_any();
    let spec = &item.spec;
    let mut resolved = ResolvedItem::new(&name, spec.item_type, spec.allowed_hosts.clone());
    match spec.item_type {
        ItemType::CredentialSet => {
            resolved.username = spec.credential_set.as_ref().map(|c| c.username.clone());
            resolved.secret = opened.remove(&SecretField::Password);
        }
        ItemType::Secret => resolved.secret = opened.remove(&SecretField::Value),
        ItemType::OneTimePassword => {
            if let (Some(seed), Some(settings)) = (
                opened.remove(&SecretField::Secret),
                spec.one_time_password.as_ref(),
            ) {
                resolved.otp = Some(OtpSeed {
                    seed,
                    encoding: settings.encoding,
                    digits: settings.digits,
                    period: settings.period,
                    algorithm: settings.algorithm,
                });
            }
        }
        ItemType::CertificateArchive => {
            if let Some(archive) = opened.remove(&SecretField::Archive) {
                let password = opened.remove(&SecretField::ArchivePassword);
                resolved.client_identity = Some(client_identity(&archive, password.as_ref()).map_err(
                    |reason| ResolveError::Unusable {
                        item: name.clone(),
                        reason,
                    },
                )?);
            }
        }
        // Nothing of these goes into a request.
        ItemType::File | ItemType::Certificate => {}
    }
    Ok(resolved)
}

/// The CA certificates of a `Certificate` item (public PEM).
fn ca_certificates(
    item: &VaultItem,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ResolveError> {
    use rustls::pki_types::pem::PemObject as _;
    let unusable = |reason: &str| ResolveError::Unusable {
        item: item.name_any(),
        reason: reason.to_owned(),
    };
    let pem = item
        .spec
        .certificate
        .as_ref()
        .map(|c| c.pem.as_bytes())
        .ok_or_else(|| unusable("it has no certificate.pem"))?;
    let certificates: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| unusable("certificate.pem does not parse as PEM certificates"))?;
    if certificates.is_empty() {
        return Err(unusable("certificate.pem holds no certificate"));
    }
    Ok(certificates)
}

/// A PKCS#12 archive (base64 text, as the field holds it) as a client identity: the key
/// paired with a certificate by localKeyId, that certificate first.
fn client_identity(
    archive: &Plaintext,
    password: Option<&Plaintext>,
) -> Result<ClientIdentity, String> {
    use base64::Engine as _;
    let text: Zeroizing<Vec<u8>> = Zeroizing::new(
        archive
            .expose()
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect(),
    );
    let der = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.as_slice())
            .map_err(|_| "its archive is not base64".to_owned())?,
    );
    let password = match password {
        Some(p) => std::str::from_utf8(p.expose())
            .map_err(|_| "its archive password is not UTF-8".to_owned())?,
        None => "",
    };
    let parsed = p12_keystore::Pkcs12Archive::from_pkcs12(&der, password)
        .map_err(|_| "its archive does not open with its password".to_owned())?;
    let key = parsed
        .keys
        .first()
        .ok_or_else(|| "its archive holds no private key".to_owned())?;
    let key_id = key.local_key_id.as_ref().map(|id| id.0.clone());
    let mut chain: Vec<Vec<u8>> = Vec::new();
    if let Some(leaf) = parsed
        .certs
        .iter()
        .find(|c| key_id.is_some() && c.local_key_id == key_id)
        .or_else(|| parsed.certs.first())
    {
        chain.push(leaf.cert.as_der().to_vec());
    }
    for cert in &parsed.certs {
        let der = cert.cert.as_der().to_vec();
        if !chain.contains(&der) {
            chain.push(der);
        }
    }
    if chain.is_empty() {
        return Err("its archive holds no certificate".to_owned());
    }
    Ok(ClientIdentity {
        private_key_pkcs8_der: Zeroizing::new(key.key.as_der().to_vec()),
        chain_der: chain,
    })
}
