//! Self-managed mode: a CA and a short-lived serving certificate in the Secret
//! `monivault-webhook-tls`, shared by every replica.
//!
//! | data | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the CA (10 years), PEM; `ca.crt` is the bundle the API server trusts |
//! | `tls.crt`, `tls.key` | the serving certificate (7 days by default) and its key, PEM |
//!
//! The Secret is `Opaque` and labelled `app.kubernetes.io/managed-by=monivault`,
//! `monivault.io/record=webhook-tls`; one without the label is never overwritten.
//!
//! Replicas agree through the API server: the first creates the Secret (a 409 means
//! another replica won, and its Secret is read and used), renewals replace it at the
//! resourceVersion they read (a conflict means re-read). Each replica serves what the
//! Secret holds and re-reads it every [`SelfManagedConfig::reload_interval`], so one
//! replica's renewal reaches all of them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, Error as KubeError};
use zeroize::Zeroizing;

use super::authority::{self, Lifetimes, SubjectNames, TlsMaterial, Verdict};
use super::{CertResolver, TlsError, patch_ca_bundle};
use crate::store::layout::{MANAGED_BY, MANAGED_BY_LABEL, RECORD_LABEL, WipeOnDrop};

pub const SECRET_NAME: &str = "monivault-webhook-tls";
/// The Service in front of the webhook server, in the operator's namespace.
pub const WEBHOOK_SERVICE: &str = "monivault-webhook";
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
/// The value of [`RECORD_LABEL`] on the Secret.
pub const RECORD_KIND_WEBHOOK_TLS: &str = "webhook-tls";

pub(crate) const FIELD_MANAGER: &str = "monivault";

/// Read-decide-write rounds before [`SelfManaged::ensure`] gives up for this round.
const MAX_ATTEMPTS: u32 = 5;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What the self-managed certificates look like and how often replicas re-read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfManagedConfig {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Lifetime of a serving certificate; it is renewed with a third of it left.
    pub serving_validity: Duration,
    pub ca_validity: Duration,
    /// How often the Secret is re-read (and renewed when due).
    pub reload_interval: Duration,
    pub secret_name: String,
}

impl SelfManagedConfig {
    /// Local mode: the API server calls `https://127.0.0.1:<port>`.
    pub fn local() -> Self {
        SelfManagedConfig::for_names(
            vec!["localhost".to_owned()],
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )
    }

    /// In a cluster: the API server calls the Service `service` in `namespace`.
    pub fn in_cluster(service: &str, namespace: &str) -> Self {
        SelfManagedConfig::for_names(
            vec![
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ],
            Vec::new(),
        )
    }

    /// For the names that `--webhook-dns-name` gives: an IP address (e.g. `127.0.0.1` of a
    /// `webhook.url` that names one) becomes an IP subject name, since the API server checks
    /// an address against those only.
    pub fn for_subject_names(names: &[String]) -> Self {
        let (ips, dns): (Vec<_>, Vec<_>) = names
            .iter()
            .map(|name| name.parse::<IpAddr>().map_err(|_| name.clone()))
            .partition(Result::is_ok);
        SelfManagedConfig::for_names(
            dns.into_iter().filter_map(Result::err).collect(),
            ips.into_iter().filter_map(Result::ok).collect(),
        )
    }

    /// The defaults (7-day serving certificates, a 10-year CA, re-read every minute) for
    /// these names.
    pub fn for_names(dns_names: Vec<String>, ip_addresses: Vec<IpAddr>) -> Self {
        SelfManagedConfig {
            dns_names,
            ip_addresses,
            serving_validity: 7 * DAY,
            ca_validity: 3650 * DAY,
            reload_interval: Duration::from_secs(60),
            secret_name: SECRET_NAME.to_owned(),
        }
    }

    fn names(&self) -> SubjectNames {
        SubjectNames::new(&self.dns_names, self.ip_addresses.iter().copied())
    }

    fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            ca: self.ca_validity,
            serving: self.serving_validity,
        }
    }

    pub(crate) fn check(&self) -> Result<(), TlsError> {
        let invalid = |reason: &str| {
            Err(TlsError::Config {
                reason: reason.to_owned(),
            })
        };
        if self.names().is_empty() {
            return invalid("the serving certificate needs at least one DNS name or IP address");
        }
        if self.serving_validity < Duration::from_secs(60 * 60) {
            return invalid("the serving certificate must be valid for an hour at least");
        }
        if self.ca_validity < 3 * self.serving_validity {
            return invalid("the CA must be valid for three serving lifetimes at least");
        }
        if self.reload_interval.is_zero() {
            return invalid("the reload interval must not be zero");
        }
        Ok(())
    }
}

/// The serving certificate as stored, with the CA bundle for the webhook configurations.
#[derive(Clone)]
pub struct ServingCert {
    /// The CA certificate (PEM): the `caBundle` of the webhook configurations.
    pub ca_pem: String,
    /// The serving certificate (PEM).
    pub cert_pem: String,
    key_pem: Zeroizing<String>,
    /// The Secret's resourceVersion this was read or written at.
    pub resource_version: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("resource_version", &self.resource_version)
            .finish()
    }
}

impl ServingCert {
    fn new(material: &TlsMaterial, resource_version: String) -> Self {
        ServingCert {
            ca_pem: material.ca_cert_pem.clone(),
            cert_pem: material.cert_pem.clone(),
            key_pem: material.key_pem.clone(),
            resource_version,
        }
    }

    /// The serving certificate's private key (PEM). Never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Hands the pair to `resolver`.
    pub fn install(&self, resolver: &CertResolver) -> Result<(), TlsError> {
        resolver.set_from(
            TLS_CERT_KEY,
            TLS_KEY_KEY,
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
        )
    }
}

/// The self-managed certificates of one replica: the Secret, and how to keep it current.
pub struct SelfManaged {
    client: Client,
    api: Api<Secret>,
    namespace: String,
    config: SelfManagedConfig,
}

impl std::fmt::Debug for SelfManaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfManaged")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .finish()
    }
}

/// What the Secret held, when it exists.
enum Stored {
    Readable(TlsMaterial),
    /// Ours but unusable (a field missing or not UTF-8): start over.
    Unreadable(String),
}

impl SelfManaged {
    /// The certificates in the Secret `config.secret_name` of `namespace`, the operator's.
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        config: SelfManagedConfig,
    ) -> Result<Self, TlsError> {
        config.check()?;
        let namespace = namespace.into();
        Ok(SelfManaged {
            api: Api::namespaced(client.clone(), &namespace),
            client,
            namespace,
            config,
        })
    }

    pub fn config(&self) -> &SelfManagedConfig {
        &self.config
    }

    /// Reads the Secret, creating it or renewing its certificates when due, and returns
    /// what it now holds. Call it at startup to fail fast and to get the CA bundle.
    pub async fn ensure(&self) -> Result<ServingCert, TlsError> {
        self.ensure_at(SystemTime::now()).await
    }

    /// [`ensure`](Self::ensure) as if the time were `now` (renewals are decided by it).
    pub async fn ensure_at(&self, now: SystemTime) -> Result<ServingCert, TlsError> {
        let names = self.config.names();
        let lifetimes = self.config.lifetimes();
        for _ in 0..MAX_ATTEMPTS {
            let Some((stored, resource_version)) = self.read().await? else {
                let material = authority::fresh(&names, lifetimes, now)?;
                match self.write(&material, None).await {
                    Ok(rv) => {
                        tracing::info!(secret = %self.what(), names = %names, "webhook CA and serving certificate created");
                        return Ok(ServingCert::new(&material, rv));
                    }
                    // Another replica created it first: use theirs.
                    Err(TlsError::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            };
            let verdict = match &stored {
                Stored::Readable(material) => authority::assess(material, &names, now),
                Stored::Unreadable(reason) => Verdict::NewCa(reason.clone()),
            };
            let renewed = match (&verdict, &stored) {
                (Verdict::Keep, Stored::Readable(material)) => {
                    return Ok(ServingCert::new(material, resource_version));
                }
                (Verdict::Reissue(_), Stored::Readable(material)) => {
                    authority::reissue(material, &names, lifetimes, now)?
                }
                _ => authority::fresh(&names, lifetimes, now)?,
            };
            match self.write(&renewed, Some(&resource_version)).await {
                Ok(rv) => {
                    match &verdict {
                        Verdict::NewCa(reason) => {
                            tracing::warn!(secret = %self.what(), %reason, "webhook CA replaced")
                        }
                        Verdict::Reissue(reason) => {
                            tracing::info!(secret = %self.what(), %reason, "webhook serving certificate renewed")
                        }
                        Verdict::Keep => {}
                    }
                    return Ok(ServingCert::new(&renewed, rv));
                }
                // Another replica renewed first: re-read, and most likely keep theirs.
                Err(TlsError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(TlsError::Conflict {
            what: self.what(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Serves the Secret's certificate through `resolver` and keeps it current until
    /// `shutdown`: ensure, patch the CA bundle into `config_names`, install; then again
    /// every reload interval. The first round's error is returned (fail at start); later
    /// ones are logged and the current certificate stays.
    pub async fn run(
        &self,
        resolver: Arc<CertResolver>,
        config_names: Vec<String>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), TlsError> {
        let mut served = self.ensure().await?;
        self.patch_bundles(&config_names, &served.ca_pem).await;
        served.install(&resolver)?;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(self.config.reload_interval) => {}
            }
            let next = match self.ensure().await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "webhook certificate not refreshed; still serving the current one");
                    continue;
                }
            };
            // Every round, not only on change: a configuration created or edited since
            // gets the bundle too. The bundle goes first, so a new CA is trusted before
            // its certificate is served.
            self.patch_bundles(&config_names, &next.ca_pem).await;
            if next.cert_pem != served.cert_pem {
                match next.install(&resolver) {
                    Ok(()) => {
                        tracing::info!(secret = %self.what(), "webhook serving certificate reloaded");
                        served = next;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "webhook serving certificate not reloaded; still serving the current one")
                    }
                }
            }
        }
    }

    async fn patch_bundles(&self, config_names: &[String], ca_pem: &str) {
        for name in config_names {
            if let Err(error) = patch_ca_bundle(&self.client, name, ca_pem).await {
                tracing::warn!(%error, configuration = %name, "webhook CA bundle not updated; will retry");
            }
        }
    }

    fn what(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.config.secret_name)
    }

    async fn read(&self) -> Result<Option<(Stored, String)>, TlsError> {
        let kube = |source| TlsError::Kube {
            what: self.what(),
            source,
        };
        let Some(secret) = self
            .api
            .get_opt(&self.config.secret_name)
            .await
            .map_err(kube)?
            .map(WipeOnDrop)
        else {
            return Ok(None);
        };
        let secret = &secret.0;
        let ours = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(MANAGED_BY_LABEL))
            .is_some_and(|value| value == MANAGED_BY);
        if !ours {
            return Err(TlsError::ForeignSecret {
                namespace: self.namespace.clone(),
                name: self.config.secret_name.clone(),
            });
        }
        let resource_version =
            secret
                .metadata
                .resource_version
                .clone()
                .ok_or_else(|| TlsError::Certificate {
                    what: self.what(),
                    reason: "it has no resourceVersion".to_owned(),
                })?;
        Ok(Some((parse_secret(secret), resource_version)))
    }

    /// POST when `expected` is `None`, else PUT at `expected`. A lost race is a Conflict.
    async fn write(
        &self,
        material: &TlsMaterial,
        expected: Option<&str>,
    ) -> Result<String, TlsError> {
        let mut secret = WipeOnDrop(secret_of(&self.config.secret_name, material));
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let written = match expected {
            None => self.api.create(&params, &secret.0).await,
            Some(rv) => {
                secret.0.metadata.resource_version = Some(rv.to_owned());
                self.api
                    .replace(&self.config.secret_name, &params, &secret.0)
                    .await
            }
        };
        let written = match written {
            Ok(written) => WipeOnDrop(written),
            Err(e) if is_status(&e, 409) || (expected.is_some() && is_status(&e, 404)) => {
                return Err(TlsError::Conflict {
                    what: self.what(),
                    attempts: 1,
                });
            }
            Err(source) => {
                return Err(TlsError::Kube {
                    what: self.what(),
                    source,
                });
            }
        };
        written
            .0
            .metadata
            .resource_version
            .clone()
            .ok_or_else(|| TlsError::Certificate {
                what: self.what(),
                reason: "the written Secret has no resourceVersion".to_owned(),
            })
    }
}

/// Ensures the Secret in `namespace`, then serves and renews it until `shutdown` (see
/// [`SelfManaged::run`]).
pub async fn run_self_managed(
    client: Client,
    namespace: impl Into<String>,
    config: SelfManagedConfig,
    resolver: Arc<CertResolver>,
    config_names: Vec<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TlsError> {
    SelfManaged::new(client, namespace, config)?
        .run(resolver, config_names, shutdown)
        .await
}

pub(crate) fn is_status(error: &KubeError, code: u16) -> bool {
    matches!(error, KubeError::Api(status) if status.code == code)
}

fn secret_of(name: &str, material: &TlsMaterial) -> Secret {
    let entry = |key: &str, value: &str| (key.to_owned(), ByteString(value.as_bytes().to_vec()));
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (RECORD_LABEL.to_owned(), RECORD_KIND_WEBHOOK_TLS.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            entry(CA_CERT_KEY, &material.ca_cert_pem),
            entry(CA_KEY_KEY, &material.ca_key_pem),
            entry(TLS_CERT_KEY, &material.cert_pem),
            entry(TLS_KEY_KEY, &material.key_pem),
        ])),
        ..Secret::default()
    }
}

fn parse_secret(secret: &Secret) -> Stored {
    let field = |key: &str| -> Result<Zeroizing<String>, String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .ok_or_else(|| format!("data key {key} is missing"))?;
        std::str::from_utf8(&bytes.0)
            .map(|text| Zeroizing::new(text.to_owned()))
            .map_err(|_| format!("data key {key} is not UTF-8 text"))
    };
    let material = (|| {
        Ok(TlsMaterial {
            ca_cert_pem: field(CA_CERT_KEY)?.to_string(),
            ca_key_pem: field(CA_KEY_KEY)?,
            cert_pem: field(TLS_CERT_KEY)?.to_string(),
            key_pem: field(TLS_KEY_KEY)?,
        })
    })();
    match material {
        Ok(material) => Stored::Readable(material),
        Err(reason) => Stored::Unreadable(reason),
    }
}

#[cfg(test)]
pub(crate) fn secret_for_tests(name: &str, material: &TlsMaterial) -> Secret {
    secret_of(name, material)
}

#[cfg(test)]
pub(crate) fn parse_for_tests(secret: &Secret) -> Result<TlsMaterial, String> {
    match parse_secret(secret) {
        Stored::Readable(material) => Ok(material),
        Stored::Unreadable(reason) => Err(reason),
    }
}
