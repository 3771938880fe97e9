//! Starting the webhooks inside `monivault run`: the certificate (files or self-managed),
//! the HTTPS server, and in local mode the registration with `url:` client configs.
//!
//! Every replica serves; leadership plays no part here. The server is bound before the
//! registration is applied, so the API server never calls a port nobody listens on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::api::{Api, DeleteParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::registration::{ClientTarget, Registration, RegistrationError};
use super::server::{Limits, ServeError, Server};
use super::tls::{self, CertResolver, SelfManaged, SelfManagedConfig, TlsError};
use super::{Admission, AdmissionMetrics, Webhooks};
use crate::store::Keys;
use crate::store::Store;

/// How the serving certificate is obtained.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// PEM files, e.g. mounted by cert-manager, polled for changes.
    Files {
        cert: PathBuf,
        key: PathBuf,
        poll_every: Duration,
    },
    /// A CA and serving certificate the operator keeps in a Secret in its namespace.
    /// Empty `dns_names`: the in-cluster Service names.
    SelfManaged { dns_names: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    pub tls: TlsSource,
    /// The name of monivault's Mutating- and ValidatingWebhookConfiguration.
    pub configuration: String,
    /// Local mode: register `url:` client configs to 127.0.0.1 and the bound port.
    pub register_local: bool,
    /// The operator's namespace (the self-managed certificate's Secret lives there).
    pub namespace: String,
    /// When set, the local registration covers this namespace only.
    pub watch_namespace: Option<String>,
    pub limits: Limits,
    pub metrics: Option<Arc<AdmissionMetrics>>,
    /// PEM of the CA whose client certificates the API server presents; when set, callers
    /// without one are refused at the TLS handshake.
    pub client_ca: Option<Vec<u8>>,
    /// How long access review answers are kept (zero: not at all); the longest a revoked
    /// `use` still admits.
    pub review_cache_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookStartError {
    #[error("webhook certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("webhook server: {0}")]
    Serve(#[from] ServeError),
    #[error("webhook registration: {0}")]
    Registration(#[from] RegistrationError),
    #[error(
        "--register-local-webhooks needs the self-managed certificate (its CA goes into the registration); drop --tls-cert-file/--tls-key-file"
    )]
    LocalNeedsSelfManaged,
}

/// The running webhooks. [`RunningWebhooks::stop`] ends them and, in local mode, removes
/// the registration, so a stopped operator does not leave `failurePolicy: Fail` webhooks
/// pointing at nothing.
pub struct RunningWebhooks {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    registered: Option<(Client, String)>,
}

/// Resolves once `stop` says true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

pub async fn start<S: Store>(
    client: Client,
    keys: Arc<Keys<S>>,
    settings: WebhookSettings,
) -> Result<RunningWebhooks, WebhookStartError> {
    let (stop, stop_rx) = watch::channel(false);
    let resolver = Arc::new(CertResolver::new());
    let mut tasks = Vec::new();

    let ca_pem = match &settings.tls {
        TlsSource::Files {
            cert,
            key,
            poll_every,
        } => {
            if settings.register_local {
                return Err(WebhookStartError::LocalNeedsSelfManaged);
            }
            let mut files = tls::CertFiles::new(cert.clone(), key.clone());
            files.poll(&resolver).await?;
            let (resolver, poll_every) = (resolver.clone(), *poll_every);
            tasks.push(tokio::spawn(files.watch(
                resolver,
                poll_every,
                stopped(stop_rx.clone()),
            )));
            None
        }
        TlsSource::SelfManaged { dns_names } => {
            let mut config = if dns_names.is_empty() {
                SelfManagedConfig::in_cluster(tls::WEBHOOK_SERVICE, &settings.namespace)
            } else {
                SelfManagedConfig::for_subject_names(dns_names)
            };
            if settings.register_local {
                let local = SelfManagedConfig::local();
                config.dns_names.extend(local.dns_names);
                config.ip_addresses.extend(local.ip_addresses);
            }
            let managed = SelfManaged::new(client.clone(), settings.namespace.clone(), config)?;
            let serving = managed.ensure().await?;
            serving.install(&resolver)?;
            let names = vec![settings.configuration.clone()];
            let (resolver, shutdown) = (resolver.clone(), stopped(stop_rx.clone()));
            tasks.push(tokio::spawn(async move {
                if let Err(e) = managed.run(resolver, names, shutdown).await {
                    tracing::error!(error = %e, "the webhook certificate loop stopped");
                }
            }));
            Some(serving.ca_pem)
        }
    };

    let mut webhooks = Webhooks::new(client.clone(), keys, settings.review_cache_ttl);
    if let Some(metrics) = settings.metrics.clone() {
        webhooks = webhooks.with_metrics(metrics);
    }
    let admission: Arc<dyn Admission> = Arc::new(webhooks);
    let mut server =
        Server::bind(settings.addr, resolver.clone(), admission, settings.limits).await?;
    if let Some(ca) = &settings.client_ca {
        server = server.require_client_certificates(resolver, ca)?;
    }
    let addr = server.local_addr()?;
    let shutdown = stopped(stop_rx.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.serve(shutdown).await {
            tracing::error!(error = %e, "the webhook server stopped");
        }
    }));
    tracing::info!("serving webhooks on https://{addr}");

    let mut running = RunningWebhooks {
        addr,
        stop,
        tasks,
        registered: None,
    };
    if settings.register_local {
        let port = addr.port();
        let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut registration = Registration::new(
            settings.configuration.clone(),
            ClientTarget::Url(format!("https://{}", SocketAddr::new(host, port))),
            settings.namespace.clone(),
        );
        registration.ca_bundle = ca_pem.map(String::into_bytes);
        registration.namespaces = settings.watch_namespace.clone().map(|ns| vec![ns]);
        if let Err(e) = registration.apply(&client).await {
            running.stop().await;
            return Err(e.into());
        }
        running.registered = Some((client, settings.configuration));
    }
    Ok(running)
}

impl RunningWebhooks {
    /// Stops serving and, in local mode, deregisters.
    pub async fn stop(self) {
        if let Some((client, name)) = &self.registered {
            deregister(client, name).await;
        }
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn deregister(client: &Client, name: &str) {
    let params = DeleteParams::default();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let results = [
        mutating.delete(name, &params).await.map(|_| ()),
        validating.delete(name, &params).await.map(|_| ()),
    ];
    for result in results {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                tracing::warn!(name, error = %e, "could not remove the local webhook registration")
            }
        }
    }
    tracing::info!(name, "removed the local webhook registration");
}
