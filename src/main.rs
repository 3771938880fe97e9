//! The `monivault` binary: a thin shell over the library.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use monivault::api::{self, SecretField};
use monivault::controller::{self, keys::Keys};
use monivault::crypto::{self, Plaintext, SealBinding, SealingPublicKey};
use monivault::store::SecretStore;
use thiserror::Error;
use zeroize::Zeroizing;

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
    /// Run the operator: the controller that ingests vault items into the encrypted store.
    Run(RunArgs),
    /// Seal a secret for GitOps. Reads the value from standard input (never from the
    /// command line, which other users can see in the process list) and prints the
    /// `mv1.s.…` string to put under `spec.sealed.<field>`.
    Seal(SealArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The operator's own namespace, which holds the store (root key, keyring, records).
    #[arg(long, env = "MONIVAULT_NAMESPACE", default_value = "monivault-system")]
    namespace: String,
    /// Act on this namespace only (default: every namespace).
    #[arg(long, env = "MONIVAULT_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// This replica's name, for Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "monivault")]
    instance: String,
}

#[derive(clap::Args)]
struct SealArgs {
    /// The namespace the item lives in (its environment).
    #[arg(short = 'n', long)]
    namespace: String,
    /// The VaultItem's name.
    #[arg(long)]
    item: String,
    /// The write-only field: password, value, archive, archivePassword, content or secret.
    #[arg(long, value_parser = parse_field)]
    field: SecretField,
    /// A file holding the environment's sealing public key (`mvpk1.…`), as published in
    /// any VaultSection's `status.sealingPublicKey` in that namespace.
    #[arg(long)]
    public_key_file: PathBuf,
    /// Read the value from this file instead of standard input (e.g. a PKCS#12 archive).
    #[arg(long)]
    from_file: Option<PathBuf>,
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
    Crypto(#[from] crypto::CryptoError),
    #[error("the value to seal is empty")]
    EmptyValue,
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[source] kube::Error),
    #[error("{0}")]
    Keys(#[from] monivault::controller::keys::KeyError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn parse_field(s: &str) -> Result<SecretField, String> {
    SecretField::ALL
        .into_iter()
        .find(|f| f.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<_> = SecretField::ALL.iter().map(|f| f.as_str()).collect();
            format!("unknown field {s:?}; expected one of {}", names.join(", "))
        })
}

fn main() -> ExitCode {
    monivault::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => print_crds(),
        Command::Run(args) => run(args),
        Command::Seal(args) => seal(&args),
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
    runtime.block_on(async {
        let client = kube::Client::try_default().await.map_err(CliError::Kube)?;
        let store = Arc::new(SecretStore::new(client.clone(), &args.namespace));
        let keys = Arc::new(Keys::bootstrap(store).await?);
        tracing::info!(namespace = %args.namespace, "monivault controller started");
        controller::run(client, keys, args.watch_namespace, args.instance).await;
        Ok(())
    })
}

fn print_crds() -> Result<(), CliError> {
    let yaml = api::crds_yaml()?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .map_err(CliError::Write)
}

fn seal(args: &SealArgs) -> Result<(), CliError> {
    let key_text =
        std::fs::read_to_string(&args.public_key_file).map_err(|source| CliError::Read {
            what: "the public key",
            path: args.public_key_file.display().to_string(),
            source,
        })?;
    let public_key = SealingPublicKey::parse(&key_text)?;
    let value = read_value(args)?;
    if value.is_empty() {
        return Err(CliError::EmptyValue);
    }
    let binding = SealBinding {
        namespace: &args.namespace,
        item: &args.item,
        field: args.field.as_str(),
    };
    let sealed = crypto::seal(&public_key, &binding, value.expose())?;
    println!("{sealed}");
    Ok(())
}

fn read_value(args: &SealArgs) -> Result<Plaintext, CliError> {
    let mut bytes = Zeroizing::new(Vec::new());
    let (path, result) = match &args.from_file {
        Some(path) => (
            path.display().to_string(),
            std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)),
        ),
        None => (
            "standard input".to_owned(),
            std::io::stdin().read_to_end(&mut bytes),
        ),
    };
    result.map_err(|source| CliError::Read {
        what: "the value",
        path,
        source,
    })?;
    // A value piped in with `echo` ends in a newline that is not part of the secret.
    if args.from_file.is_none() {
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
    }
    Ok(Plaintext::from_zeroizing(bytes))
}
