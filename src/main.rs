//! The `monivault` binary: a thin shell over the library.

mod cli;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use monivault::api;
use monivault::controller::{self, leader};
use monivault::store::Keys;
use monivault::store::SecretStore;
use monivault::telemetry::server::{self, Readiness};
use monivault::telemetry::{self, Metrics};
use monivault::webhook;
use thiserror::Error;

/// A secrets vault for synthetic monitoring on Kubernetes.
#[derive(Parser)]
#[command(name = "monivault", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions generated from the Rust types, as YAML.
    Crds,
    /// Run the operator: the admission webhooks, and on the leader the controller that
    /// ingests vault items into the encrypted store and rotates the keys.
    Run(Box<RunArgs>),
    /// Seal a secret for GitOps. Reads the value from standard input or a file (never
    /// from the command line, which other users can see in the process list) and prints
    /// the `mv2.s.…` string to put under `spec.sealed.<field>`.
    Seal(cli::seal::SealArgs),
    /// Rotate a key now: root-key, or an environment's data-key or sealing-key. Safe
    /// beside a running operator; re-run with the same --requested-at after a crash.
    Rotate(controller::rotation::RotateArgs),
    /// Print monivault's MutatingWebhookConfiguration and ValidatingWebhookConfiguration
    /// for a cluster install, calling the operator through a Service. With the
    /// self-managed certificate, `monivault run` fills in their caBundle itself.
    Webhooks(WebhooksArgs),
    /// Whether a user may use a vault item, and through what: the item, or its section.
    /// Exits 0 if allowed, 1 if not, 2 if it cannot tell.
    CanUse(cli::plugin::can_use::CanUseArgs),
    /// Per environment: key versions current and held, re-encryption left, items not
    /// Ready, the last rotation. Reads the operator's store (operators only).
    Status(cli::plugin::status::StatusArgs),
    /// Test Now: run a saved monitor once, wait, print the scrubbed result. Exits 0 if it
    /// passed, 1 if it failed or was refused, 2 if it cannot tell.
    TestNow(cli::plugin::test_now::TestNowArgs),
    /// Make a recovery key pair for sealed backups: NAME.pub and NAME.private.
    RecoveryKey(cli::backup::RecoveryKeyArgs),
    /// Write the store (root keys, keyring, every item record) as one file sealed to a
    /// recovery public key, to standard output.
    Backup(cli::backup::BackupArgs),
    /// Restore the store from a sealed backup (standard input) into the operator's
    /// namespace. Stop the operator first; re-run it if it was interrupted.
    Restore(cli::backup::RestoreArgs),
}

#[derive(clap::Args)]
struct WebhooksArgs {
    /// The configurations' name; `monivault run --webhook-configuration` must match.
    #[arg(long, default_value = "monivault")]
    name: String,
    /// The operator's namespace, where the Service in front of it runs. No webhook covers
    /// it, nor kube-system.
    #[arg(long, default_value = "monivault-system")]
    service_namespace: String,
    /// The Service in front of the operator's webhook port.
    #[arg(long, default_value = "monivault-webhook")]
    service_name: String,
    /// The Service's port.
    #[arg(long, default_value_t = 443)]
    service_port: i32,
    /// Call the operator at this base URL instead of through the Service (each webhook's
    /// path is appended), e.g. when it runs outside the cluster: the chart's `webhook.url`.
    #[arg(long, conflicts_with_all = ["service_name", "service_port"])]
    url: Option<String>,
    /// A PEM file of the CA that signs the serving certificate (e.g. cert-manager's);
    /// leave out with the self-managed certificate.
    #[arg(long)]
    ca_bundle_file: Option<PathBuf>,
    /// Limit the webhooks to these namespaces (repeat, or comma-separate).
    #[arg(long = "only-namespace", value_delimiter = ',')]
    only_namespaces: Vec<String>,
    /// How long the API server waits for an answer, in seconds.
    #[arg(long, default_value_t = webhook::registration::DEFAULT_TIMEOUT_SECONDS,
        value_parser = clap::value_parser!(i32).range(1..=30))]
    timeout_seconds: i32,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The operator's own namespace, which holds the store (root key, keyring, records).
    #[arg(long, env = "MONIVAULT_NAMESPACE", default_value = "monivault-system")]
    namespace: String,
    /// Act on this namespace only (default: every namespace).
    #[arg(long, env = "MONIVAULT_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// This replica's name, for Events and the leader Lease (the pod name in a cluster;
    /// must differ between replicas). Default: the host name and process id.
    #[arg(long, env = "POD_NAME", default_value_t = default_instance())]
    instance: String,
    /// Where to serve /metrics, /healthz and /readyz (port 0: any free port, logged).
    #[arg(long, env = "MONIVAULT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// How long the leader Lease holds without renewal, in seconds.
    #[arg(long, env = "MONIVAULT_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How often the leader renews the Lease, in seconds; less than the duration.
    #[arg(long, env = "MONIVAULT_LEASE_RENEW_SECONDS", default_value_t = 5)]
    lease_renew_seconds: u64,
    /// How long shutdown may take after SIGTERM or Ctrl-C before the process exits anyway
    /// (status 1): a reconcile that hangs, or a cache that never filled, cannot hold it.
    #[arg(long, env = "MONIVAULT_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = api::duration::parse_period)]
    shutdown_timeout: Duration,
    /// Start with a new root key even though vault objects in the watched namespaces show
    /// that an earlier store existed (it was lost). Everything stored under the old keys
    /// stays unreadable; use `monivault restore` instead if you have a backup.
    #[arg(long, env = "MONIVAULT_ALLOW_NEW_ROOT_KEY")]
    allow_new_root_key: bool,
    #[command(flatten)]
    rotation: controller::rotation::RotationArgs,
    #[command(flatten)]
    runner: cli::runner::RunnerArgs,
    #[command(flatten)]
    webhook: WebhookArgs,
}

#[derive(clap::Args)]
struct WebhookArgs {
    /// Where to serve the admission webhooks, over HTTPS (port 0: any free port, logged).
    #[arg(long, env = "MONIVAULT_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    webhook_addr: SocketAddr,
    /// The serving certificate (PEM), e.g. mounted by cert-manager; reloaded when it
    /// changes. Without it, the operator keeps its own CA and a short-lived certificate in
    /// the Secret monivault-webhook-tls and renews it before it expires.
    #[arg(long, env = "MONIVAULT_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM), with --tls-cert-file.
    #[arg(long, env = "MONIVAULT_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// How often to check the certificate files for a change, in seconds.
    #[arg(long, default_value_t = 10)]
    tls_poll_seconds: u64,
    /// DNS names of the self-managed serving certificate (comma-separated). Default: the
    /// Service monivault-webhook in the operator's namespace.
    #[arg(
        long = "webhook-dns-name",
        env = "MONIVAULT_WEBHOOK_DNS_NAMES",
        value_delimiter = ','
    )]
    webhook_dns_names: Vec<String>,
    /// The name of monivault's MutatingWebhookConfiguration and
    /// ValidatingWebhookConfiguration; a self-managed certificate's CA is kept in their
    /// caBundle.
    #[arg(
        long,
        env = "MONIVAULT_WEBHOOK_CONFIGURATION",
        default_value = "monivault"
    )]
    webhook_configuration: String,
    /// Local mode (no Service, e.g. the test control plane): register the webhooks with
    /// `url:` client configs to 127.0.0.1 and the served port, for --watch-namespace only
    /// when given, and remove them again on shutdown. Needs the self-managed certificate.
    #[arg(long)]
    register_local_webhooks: bool,
    /// Answer only callers that present a client certificate signed by this CA (PEM): the
    /// API server, given one through an AdmissionConfiguration kubeConfigFile. Without it,
    /// keep the webhook port reachable from the API server only (a NetworkPolicy).
    #[arg(long, env = "MONIVAULT_WEBHOOK_CLIENT_CA_FILE")]
    webhook_client_ca_file: Option<PathBuf>,
    /// How long the webhooks keep a SubjectAccessReview's answer for Monitor and
    /// MonitorRun writes (0s: not at all; at most 60s). It is also the longest that a
    /// revoked `use` still admits that user's monitor writes, and that a new grant takes to
    /// count.
    #[arg(
        long,
        env = "MONIVAULT_ACCESS_REVIEW_CACHE_TTL",
        default_value = "10s",
        value_parser = webhook::review_cache::parse_ttl
    )]
    access_review_cache_ttl: Duration,
}

impl WebhookArgs {
    fn settings(
        &self,
        namespace: &str,
        watch_namespace: Option<&str>,
    ) -> Result<webhook::WebhookSettings, CliError> {
        let client_ca = match &self.webhook_client_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| CliError::Read {
                what: "the webhook client CA",
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => webhook::TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                poll_every: Duration::from_secs(self.tls_poll_seconds.max(1)),
            },
            _ => webhook::TlsSource::SelfManaged {
                dns_names: self.webhook_dns_names.clone(),
            },
        };
        Ok(webhook::WebhookSettings {
            addr: self.webhook_addr,
            tls,
            configuration: self.webhook_configuration.clone(),
            register_local: self.register_local_webhooks,
            namespace: namespace.to_owned(),
            watch_namespace: watch_namespace.map(str::to_owned),
            limits: webhook::Limits::default(),
            metrics: None,
            client_ca,
            review_cache_ttl: self.access_review_cache_ttl,
        })
    }
}

#[derive(Debug, Error)]
enum CliError {
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the output: {0}")]
    Write(#[source] std::io::Error),
    #[error("{0}")]
    Crds(#[from] api::ApiError),
    #[error("{0}")]
    Seal(#[from] cli::seal::SealError),
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[source] kube::Error),
    #[error("{0}")]
    Keys(#[from] monivault::store::KeyError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Rotation(#[from] controller::rotation::RotationError),
    #[error("{0}")]
    Server(#[from] monivault::telemetry::server::ServerError),
    #[error("{0}")]
    Leader(#[from] leader::LeaderError),
    #[error("{0}")]
    Webhook(#[from] webhook::WebhookStartError),
    #[error("{0}")]
    Registration(#[from] webhook::registration::RegistrationError),
    #[error("{0}")]
    Backup(#[from] cli::backup::BackupCliError),
    #[error("{0}")]
    FreshStart(#[from] controller::fresh_start::FreshStartError),
}

/// Unique per process, so replicas started without `POD_NAME` never share a Lease identity.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "monivault".to_owned());
    format!("{host}-{}", std::process::id())
}

fn main() -> ExitCode {
    monivault::telemetry::init();
    // Run as `kubectl-monivault` (kubectl's plugin), it calls itself `kubectl monivault`.
    let cli: Cli = cli::plugin::parse(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::CanUse(args) => return cli::plugin::run_command(cli::plugin::can_use::run(args)),
        Command::Status(args) => return cli::plugin::run_command(cli::plugin::status::run(args)),
        Command::TestNow(args) => {
            return cli::plugin::run_command(cli::plugin::test_now::run(args));
        }
        Command::Crds => print_crds(),
        Command::Run(args) => run(*args),
        Command::Seal(args) => seal(&args),
        Command::Rotate(args) => rotate(&args),
        Command::Webhooks(args) => print_webhooks(&args),
        Command::RecoveryKey(args) => recovery_key(&args),
        Command::Backup(args) => backup(&args),
        Command::Restore(args) => restore(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
    runtime.spawn(exit_after_shutdown_timeout(args.shutdown_timeout));
    runtime.block_on(async {
        // Every part registers its metric families here, before the server shares it.
        let mut registry = telemetry::metrics::registry();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let rotation_metrics = Arc::new(controller::rotation::RotationMetrics::new(&mut registry));
        let admission_metrics = Arc::new(webhook::AdmissionMetrics::new(&mut registry));
        let runner_metrics = Arc::new(monivault::runner::RunnerMetrics::new(&mut registry));
        let readiness = Readiness::default();
        server::start(args.metrics_addr, Arc::new(registry), readiness.clone()).await?;

        let client = kube::Client::try_default().await.map_err(CliError::Kube)?;
        let store = Arc::new(SecretStore::new(client.clone(), &args.namespace));
        if !args.allow_new_root_key {
            controller::fresh_start::refuse_if_store_lost(
                &client,
                store.as_ref(),
                &args.namespace,
                args.watch_namespace.as_deref(),
            )
            .await?;
        }
        let reload = args.rotation.reencrypt.root_key_reload_interval;
        let keys = Arc::new(Keys::bootstrap_with(store, reload).await?);
        let mut settings = args
            .webhook
            .settings(&args.namespace, args.watch_namespace.as_deref())?;
        settings.metrics = Some(admission_metrics);
        let webhooks = webhook::start(client.clone(), keys.clone(), settings).await?;
        readiness.set_ready();
        tracing::info!(namespace = %args.namespace, "monivault started");
        let outcome = lead_and_control(
            args,
            client,
            keys,
            metrics,
            rotation_metrics,
            runner_metrics,
        )
        .await;
        webhooks.stop().await;
        outcome
    })
}

/// Waits for the leader Lease, then runs the controller, key rotation and the runner until
/// shutdown.
/// Returns an error if this replica loses the Lease.
async fn lead_and_control(
    args: RunArgs,
    client: kube::Client,
    keys: Arc<Keys<SecretStore>>,
    metrics: Arc<Metrics>,
    rotation_metrics: Arc<controller::rotation::RotationMetrics>,
    runner_metrics: Arc<monivault::runner::RunnerMetrics>,
) -> Result<(), CliError> {
    {
        let lease = leader::LeaseSettings {
            namespace: args.namespace.clone(),
            identity: args.instance.clone(),
            duration: Duration::from_secs(args.lease_duration_seconds),
            renew_every: Duration::from_secs(args.lease_renew_seconds),
        };
        let mut election = leader::elect(client.clone(), lease, metrics.clone()).await?;
        let mut leadership = election.leadership();
        let lead = async {
            // A follower waits here; once leader, the controller handles shutdown signals.
            tokio::select! {
                acquired = leadership.acquired() => acquired?,
                () = shutdown_signal() => return Ok(()),
            }
            // Key rotation runs on the leader only, beside the controller.
            let rotation = controller::rotation::run_rotation_loop(
                keys.clone(),
                controller::rotation::KubeFacts::new(client.clone(), args.watch_namespace.clone()),
                args.watch_namespace.clone(),
                args.rotation.config(),
                controller::rotation::Reporting::new(
                    client.clone(),
                    args.instance.clone(),
                    Some(rotation_metrics),
                )
                .with_key_gauges(metrics.clone()),
            );
            // So does the runner: checks run only on the leader.
            let runner = monivault::runner::run(
                client.clone(),
                keys.clone(),
                args.runner.settings(
                    args.watch_namespace.clone(),
                    args.instance.clone(),
                    args.namespace.clone(),
                ),
                Some(runner_metrics),
                std::future::pending(),
            );
            tokio::select! {
                () = controller::run(client, keys, args.namespace.clone(), args.watch_namespace, args.instance, metrics) => {},
                () = rotation => {},
                () = runner => {},
            }
            Ok::<(), leader::LeaderError>(())
        };
        tokio::select! {
            done = lead => done?,
            lost = election.lost() => {
                tracing::error!(error = %lost, "exiting: this replica no longer holds the leader lease");
                return Err(lost.into());
            }
        }
        election.release().await;
        Ok(())
    }
}

/// Once shutdown is asked for, a deadline on a thread of its own: a stuck task, or a
/// runtime whose workers are all busy, cannot keep the process past it.
async fn exit_after_shutdown_timeout(timeout: Duration) {
    shutdown_signal().await;
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        tracing::error!(
            timeout = ?timeout,
            "exiting: shutdown did not finish in time (--shutdown-timeout)"
        );
        std::process::exit(1);
    });
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn rotate(args: &controller::rotation::RotateArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await.map_err(CliError::Kube)?;
        for line in controller::rotation::rotate_command(client, args).await? {
            println!("{line}");
        }
        Ok(())
    })
}

fn print_webhooks(args: &WebhooksArgs) -> Result<(), CliError> {
    use webhook::registration::{ClientTarget, Registration};
    let target = match &args.url {
        Some(url) => ClientTarget::Url(url.clone()),
        None => ClientTarget::Service {
            namespace: args.service_namespace.clone(),
            name: args.service_name.clone(),
            port: args.service_port,
        },
    };
    let mut registration =
        Registration::new(args.name.clone(), target, args.service_namespace.clone());
    registration.timeout_seconds = args.timeout_seconds;
    if let Some(path) = &args.ca_bundle_file {
        let pem = std::fs::read(path).map_err(|source| CliError::Read {
            what: "the CA bundle",
            path: path.display().to_string(),
            source,
        })?;
        registration.ca_bundle = Some(pem);
    }
    if !args.only_namespaces.is_empty() {
        registration.namespaces = Some(args.only_namespaces.clone());
    }
    let yaml = registration.to_yaml()?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .map_err(CliError::Write)
}

fn print_crds() -> Result<(), CliError> {
    let yaml = api::crds_yaml()?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .map_err(CliError::Write)
}

fn seal(args: &cli::seal::SealArgs) -> Result<(), CliError> {
    let sealed = cli::seal::seal(args)?;
    println!("{sealed}");
    Ok(())
}

fn recovery_key(args: &cli::backup::RecoveryKeyArgs) -> Result<(), CliError> {
    match &args.command {
        cli::backup::RecoveryKeyCommand::New { out } => {
            eprintln!("{}", cli::backup::new_recovery_key(out)?);
        }
    }
    Ok(())
}

fn backup(args: &cli::backup::BackupArgs) -> Result<(), CliError> {
    eprintln!("{}", cli::backup::backup(args)?);
    Ok(())
}

fn restore(args: &cli::backup::RestoreArgs) -> Result<(), CliError> {
    eprintln!("{}", cli::backup::restore(args)?);
    Ok(())
}
