//! Resolution: the vault items a check may carry, from the store, just before the check.
//!
//! Only items the admission stamp names are resolved, and each only while it is the very
//! object that was authorized (the uid the stamp binds). Plaintexts come out of the store
//! into [`ResolvedItems`] and are dropped, wiped, when the check is over.
//!
//! Every failure names the item and what is wrong with it, never a value.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store as Cache};

use super::hosts;
use super::items::{ClientIdentity, OtpSeed, ResolvedItem, ResolvedItems};
use super::tls::Trust;
use crate::api::{ItemType, MonitorSpec, SecretField, VaultItem};
use crate::crypto::Keyring;
use crate::crypto::{ItemBinding, Plaintext, pkcs12};
use crate::stamp::AuthorizedRefs;
use crate::store::{ItemKey, ItemRecord, Keys, Store, layout};

static ARCHIVE_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

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
    #[error("VaultItem {item:?} may not be sent to {host}: it is not in the item's allowedHosts")]
    HostNotAllowed { item: String, host: String },
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
            ResolveError::HostNotAllowed { .. } => "HostNotAllowed",
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

/// What resolution reads often, kept close: item records as a watch keeps them, and each
/// environment's keyring for a few seconds. A record or keyring that does not open is read
/// afresh from the store before anything is refused, so a cache never fails a check.
#[derive(Default)]
pub struct StoreCache {
    /// The reflector of record Secrets, and the store's namespace they live in.
    records: Option<(Cache<Secret>, String)>,
    keyrings: Mutex<HashMap<String, (Instant, Keyring)>>,
}

/// How long a cached environment keyring is used before it is read again.
const KEYRING_TTL: Duration = Duration::from_secs(10);

impl StoreCache {
    /// With record Secrets from `records`, a reflector over the item records in the store's
    /// namespace.
    pub fn new(records: Option<(Cache<Secret>, String)>) -> Self {
        StoreCache {
            records,
            keyrings: Mutex::default(),
        }
    }

    async fn keyring<S: Store>(
        &self,
        keys: &Keys<S>,
        namespace: &str,
        fresh: bool,
    ) -> Result<Keyring, ResolveError> {
        if !fresh {
            let cached = self
                .keyrings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(namespace)
                .cloned();
            if let Some((at, ring)) = cached
                && at.elapsed() < KEYRING_TTL
            {
                return Ok(ring);
            }
        }
        let ring = keys
            .keyring_for(namespace)
            .await
            .map_err(|e| ResolveError::Keys(e.to_string()))?;
        self.keyrings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(namespace.to_owned(), (Instant::now(), ring.clone()));
        Ok(ring)
    }

    async fn record<S: Store>(
        &self,
        keys: &Keys<S>,
        key: &ItemKey,
        uid: &str,
        fresh: bool,
    ) -> Result<Option<ItemRecord>, ResolveError> {
        if !fresh
            && let Some((records, store_namespace)) = &self.records
            && let Some(secret) = records
                .get(&ObjectRef::new(&layout::record_secret_name(key)).within(store_namespace))
            && let Ok((found, record)) = layout::parse_record(&secret)
            && found == *key
            && record.uid == uid
        {
            return Ok(Some(record));
        }
        Ok(keys
            .store()
            .record(key)
            .await
            .map_err(|e| ResolveError::Keys(e.to_string()))?
            .map(|r| r.value)
            .filter(|r| r.uid == uid))
    }
}

/// Resolves the items `refs` authorizes for `spec` in `namespace`: items from `cache`,
/// their secrets from the store (through `stored`).
pub async fn resolve<S: Store>(
    keys: &Keys<S>,
    stored: &StoreCache,
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
        if ca_name.as_deref() == Some(name.as_str()) {
            if item.spec.item_type != ItemType::Certificate {
                return Err(ResolveError::Unusable {
                    item: name.clone(),
                    reason: format!(
                        "tls.caCertificate needs a Certificate item, and it is a {}",
                        item.spec.item_type
                    ),
                });
            }
            let pem = item.spec.certificate.as_ref().map(|c| c.pem.as_str());
            trust =
                Trust::from_pem(pem.unwrap_or_default()).map_err(|e| ResolveError::Unusable {
                    item: name.clone(),
                    reason: format!("certificate.pem: {e}"),
                })?;
            continue;
        }
        if item.spec.item_type == ItemType::Certificate {
            continue;
        }
        with_secrets.push((item, uid));
    }
    if with_secrets.is_empty() {
        return Ok(Resolved { items, trust });
    }
    // Every carried item goes to the URL's host on the first request: one that may not is
    // refused before any secret leaves the store (the engine checks again, on every hop).
    if let Ok(url) = hosts::parse_url(&spec.url) {
        for (item, _) in &with_secrets {
            if !hosts::host_allowed(&item.spec.allowed_hosts, &url) {
                return Err(ResolveError::HostNotAllowed {
                    item: item.name_any(),
                    host: hosts::host_name(&url),
                });
            }
        }
    }
    for (item, uid) in with_secrets {
        // From the caches first; what does not open there is read again from the store.
        let opened = match open_record(keys, stored, namespace, &item, &uid, false).await {
            Ok(opened) => opened,
            Err(_) => open_record(keys, stored, namespace, &item, &uid, true).await?,
        };
        items.insert(resolved_item(&item, opened).await?);
    }
    Ok(Resolved { items, trust })
}

/// The item's stored fields, opened.
async fn open_record<S: Store>(
    keys: &Keys<S>,
    stored: &StoreCache,
    namespace: &str,
    item: &VaultItem,
    uid: &str,
    fresh: bool,
) -> Result<BTreeMap<SecretField, Plaintext>, ResolveError> {
    let name = item.name_any();
    let key = ItemKey {
        namespace: namespace.to_owned(),
        name: name.clone(),
    };
    let ring = stored.keyring(keys, namespace, fresh).await?;
    let root = keys
        .root_for(&ring)
        .await
        .map_err(|e| ResolveError::Keys(e.to_string()))?;
    let record = stored
        .record(keys, &key, uid, fresh)
        .await?
        .ok_or_else(|| ResolveError::NotStored { item: name.clone() })?;
    let mut opened = BTreeMap::new();
    for &field in item.spec.secret_fields() {
        let Some(text) = record.fields.get(field.as_str()) else {
            continue;
        };
        let binding = ItemBinding {
            namespace,
            item: &name,
            uid,
            field: field.as_str(),
        };
        let plaintext =
            ring.decrypt(&root, &binding, text)
                .map_err(|e| ResolveError::Unusable {
                    item: name.clone(),
                    reason: format!("its stored {} does not open: {e}", field.as_str()),
                })?;
        opened.insert(field, plaintext);
    }
    Ok(opened)
}

/// The item as the check engine takes it.
async fn resolved_item(
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
                let identity = client_identity(archive, password).await.map_err(|reason| {
                    ResolveError::Unusable {
                        item: name.clone(),
                        reason,
                    }
                })?;
                resolved.client_identity = Some(identity);
            }
        }
        // Nothing of these goes into a request.
        ItemType::File | ItemType::Certificate => {}
    }
    Ok(resolved)
}

/// A PKCS#12 archive (raw, or base64 text as the field holds it) as a client identity, read
/// on a blocking thread: its key derivations may take a while (the engine's limits bound
/// them). Not cached: the key lives only as long as the check.
async fn client_identity(
    archive: Plaintext,
    password: Option<Plaintext>,
) -> Result<ClientIdentity, String> {
    // Two at a time: at the engine's limits one read costs about a second of CPU, and the
    // leader also serves admission.
    let Ok(_permit) = ARCHIVE_READS.acquire().await else {
        return Err("reading its archive failed".to_owned());
    };
    tokio::task::spawn_blocking(move || {
        let der = pkcs12::archive_der(archive.expose()).map_err(|e| e.to_string())?;
        let password = password.as_ref().map(Plaintext::expose).unwrap_or_default();
        pkcs12::identity(&der, password).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("reading its archive failed".to_owned()))
}
