//! `kubectl monivault`: the same binary, found by kubectl as `kubectl-monivault` on the
//! PATH (a link or a copy). Invoked under that name it calls itself `kubectl monivault`.
//!
//! The plugin's own commands (`can-use`, `status`, `test-now`) follow kubectl's habits:
//! - the kubeconfig as kubectl reads it: `$KUBECONFIG` or `~/.kube/config`, `--kubeconfig`,
//!   `--context`, and `-n` defaulting to the context's namespace;
//! - a table by default, `-o json|yaml` for scripts;
//! - stable exit codes ([`exit`]): 0 yes or done, 1 no or failed, 2 could not tell;
//! - errors that say what to do next.
//!
//! What it must never do: print a secret. It reads no plaintext: `status` reads the
//! keyring and the records only for their key versions, never the root key; `test-now`
//! prints the run's status, which the runner has scrubbed. It writes nothing but the
//! MonitorRun that `test-now` creates.

pub mod can_use;
pub mod output;
pub mod status;
pub mod test_now;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};

/// The file name kubectl looks for on the PATH to run `kubectl monivault`.
pub const PLUGIN_BINARY: &str = "kubectl-monivault";

/// What the binary calls itself in help and errors when run as the plugin.
pub const PLUGIN_DISPLAY_NAME: &str = "kubectl monivault";

/// Exit codes a script can rely on.
pub mod exit {
    /// Allowed; the run passed; done.
    pub const YES: u8 = 0;
    /// Not allowed; the run failed or was refused.
    pub const NO: u8 = 1;
    /// Could not tell: bad input, no such object, no access, the API server unreachable.
    /// (clap also exits 2 on a usage error.)
    pub const ERROR: u8 = 2;
}

/// Whether `argv0` names the plugin binary (`kubectl` runs it by its full path).
pub fn invoked_as_plugin(argv0: Option<&OsStr>) -> bool {
    argv0
        .map(Path::new)
        .and_then(Path::file_name)
        .is_some_and(|name| name == PLUGIN_BINARY)
}

/// Parses `args` (argv[0] first) into `C`, named `kubectl monivault` in help and errors
/// when argv[0] is the plugin binary.
pub fn parse<C: Parser>(args: Vec<OsString>) -> Result<C, clap::Error> {
    let mut command = C::command();
    if invoked_as_plugin(args.first().map(OsString::as_os_str)) {
        command = command
            .name(PLUGIN_DISPLAY_NAME)
            .bin_name(PLUGIN_DISPLAY_NAME)
            .display_name(PLUGIN_DISPLAY_NAME);
    }
    let mut matches = command.try_get_matches_from(args)?;
    C::from_arg_matches_mut(&mut matches)
}

// How to reach the API server, as kubectl would. (A `//` comment: clap would take a doc
// comment here as the about text of every command that flattens it.)
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeArgs {
    /// The kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config, as kubectl).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// A client and the namespace the context defaults to.
pub struct Connection {
    pub client: Client,
    pub default_namespace: String,
}

impl Connection {
    /// `namespace`, or else the context's.
    pub fn namespace(&self, namespace: Option<&str>) -> String {
        namespace.map_or_else(|| self.default_namespace.clone(), str::to_owned)
    }
}

impl KubeArgs {
    /// Connects with the kubeconfig and context these flags pick. With neither flag and no
    /// kubeconfig at all, the in-cluster service account (as kubectl in a pod).
    pub async fn connect(&self) -> Result<Connection, PluginError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|source| PluginError::Kubeconfig {
                        path: path.display().to_string(),
                        source,
                    })?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|source| PluginError::Kubeconfig {
                        path: path.display().to_string(),
                        source,
                    })?
            }
            None if self.context.is_some() => {
                Config::from_kubeconfig(&options).await.map_err(|source| {
                    PluginError::Kubeconfig {
                        path: "$KUBECONFIG or ~/.kube/config".to_owned(),
                        source,
                    }
                })?
            }
            None => Config::infer().await.map_err(PluginError::NoConfig)?,
        };
        let default_namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(PluginError::Client)?;
        Ok(Connection {
            client,
            default_namespace,
        })
    }
}

/// Why a plugin command could not answer. Each says what to do next; none carries a
/// secret (API errors carry the server's message, which names objects, not values).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot use the kubeconfig {path}: {source}; check --kubeconfig and --context")]
    Kubeconfig {
        path: String,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "no kubeconfig found and not running in a cluster ({0}); set KUBECONFIG or pass --kubeconfig"
    )]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write the output: {0}")]
    Write(#[source] std::io::Error),
    #[error("cannot format the output as {format}: {reason}")]
    Format {
        format: &'static str,
        reason: String,
    },
    #[error(
        "VaultItem {item:?} not found in namespace {namespace:?}: check the name with `kubectl get vaultitems -n {namespace}`, or pass -n for another namespace"
    )]
    ItemNotFound { namespace: String, item: String },
    #[error(
        "Monitor {monitor:?} not found in namespace {namespace:?}: check the name with `kubectl get monitors -n {namespace}`, or pass -n for another namespace"
    )]
    MonitorNotFound { namespace: String, monitor: String },
    #[error("you may not {action}: {message}; {hint}")]
    Forbidden {
        action: String,
        message: String,
        hint: String,
    },
    #[error(
        "you need get on secrets in {operator_namespace}, which only operators have: `status` reads monivault's store there (pass --operator-namespace if monivault runs elsewhere)"
    )]
    StoreForbidden { operator_namespace: String },
    #[error("{what} failed: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading monivault's store failed: {0}")]
    Store(#[source] monivault::store::StoreError),
    #[error(
        "MonitorRun {namespace}/{run} did not finish within {seconds}s; see `kubectl get monitorrun {run} -n {namespace} -o yaml`, or wait longer with --timeout"
    )]
    Timeout {
        namespace: String,
        run: String,
        seconds: u64,
    },
}

/// The HTTP status of an API error, if the API server answered.
pub fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// The API server's message for an API error (a webhook's refusal, say).
pub fn api_message(error: &kube::Error) -> Option<&str> {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => Some(status.message.as_str()),
        _ => None,
    }
}

/// Runs an async plugin command on a runtime of its own, and turns its outcome into the
/// process's exit code: the command's own, or [`exit::ERROR`] with the error on stderr.
pub fn run_command<F>(command: F) -> ExitCode
where
    F: std::future::Future<Output = Result<u8, PluginError>>,
{
    let outcome = tokio::runtime::Runtime::new()
        .map_err(PluginError::Runtime)
        .and_then(|runtime| runtime.block_on(command));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(exit::ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "monivault")]
    struct Demo {
        #[command(subcommand)]
        command: DemoCommand,
    }

    #[derive(clap::Subcommand, Debug)]
    enum DemoCommand {
        CanUse(can_use::CanUseArgs),
        Status(status::StatusArgs),
        TestNow(test_now::TestNowArgs),
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_plugin_is_recognised_by_its_file_name_only() {
        let yes = |s: &str| invoked_as_plugin(Some(OsStr::new(s)));
        assert!(yes("kubectl-monivault"));
        assert!(yes("/home/me/.local/bin/kubectl-monivault"));
        assert!(!yes("monivault"));
        assert!(!yes("/usr/bin/monivault"));
        assert!(!yes("/opt/kubectl-monivault/monivault"));
        assert!(!yes("kubectl-monivault-old"));
        assert!(!invoked_as_plugin(None));
    }

    #[test]
    fn as_the_plugin_help_and_errors_say_kubectl_monivault() {
        let err = parse::<Demo>(args(&["/bin/kubectl-monivault", "--help"])).unwrap_err();
        assert!(
            err.to_string().contains("Usage: kubectl monivault"),
            "{err}"
        );
        let err = parse::<Demo>(args(&["/bin/kubectl-monivault", "can-use"])).unwrap_err();
        assert!(
            err.to_string().contains("kubectl monivault can-use"),
            "{err}"
        );
        let err = parse::<Demo>(args(&["/usr/bin/monivault", "--help"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("Usage: monivault"), "{text}");
        assert!(!text.contains("kubectl monivault"), "{text}");
    }

    #[test]
    fn kubectl_flags_parse_as_kubectl_spells_them() {
        let parsed = parse::<Demo>(args(&[
            "kubectl-monivault",
            "can-use",
            "login",
            "-n",
            "shop",
            "--as",
            "alice",
            "--as-group",
            "dev",
            "--as-group",
            "ops",
            "--context",
            "prod",
            "--kubeconfig",
            "/tmp/kc",
            "-o",
            "json",
        ]))
        .expect("parses");
        let DemoCommand::CanUse(a) = parsed.command else {
            panic!("can-use");
        };
        assert_eq!(a.item, "login");
        assert_eq!(a.namespace.as_deref(), Some("shop"));
        assert_eq!(a.as_user.as_deref(), Some("alice"));
        assert_eq!(a.as_groups, ["dev", "ops"]);
        assert_eq!(a.kube.context.as_deref(), Some("prod"));
        assert_eq!(a.kube.kubeconfig, Some(PathBuf::from("/tmp/kc")));
        assert_eq!(a.output, Some(output::Format::Json));
    }

    #[test]
    fn as_group_needs_as() {
        let err =
            parse::<Demo>(args(&["monivault", "can-use", "x", "--as-group", "dev"])).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn status_takes_a_namespace_or_all_but_not_both() {
        let parsed =
            parse::<Demo>(args(&["monivault", "status", "-A", "-o", "yaml"])).expect("parses");
        let DemoCommand::Status(s) = parsed.command else {
            panic!("status");
        };
        assert!(s.all_namespaces);
        assert_eq!(s.output, Some(output::Format::Yaml));
        assert_eq!(s.operator_namespace, "monivault-system");
        let err = parse::<Demo>(args(&["monivault", "status", "-A", "-n", "x"])).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = parse::<Demo>(args(&["monivault", "status", "-o", "wide"])).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn test_now_waits_by_default_with_a_timeout() {
        let parse_now = |extra: &[&str]| {
            let mut all = vec!["monivault", "test-now", "shop"];
            all.extend_from_slice(extra);
            match parse::<Demo>(args(&all)).expect("parses").command {
                DemoCommand::TestNow(t) => t,
                other => panic!("test-now, not {other:?}"),
            }
        };
        let t = parse_now(&[]);
        assert_eq!(t.monitor, "shop");
        assert!(t.wait);
        assert_eq!(t.timeout, std::time::Duration::from_secs(60));
        assert!(parse_now(&["--wait"]).wait);
        assert!(!parse_now(&["--wait=false"]).wait);
        assert_eq!(
            parse_now(&["--timeout", "2m"]).timeout,
            std::time::Duration::from_secs(120)
        );
        let err = parse::<Demo>(args(&[
            "monivault",
            "test-now",
            "shop",
            "--timeout",
            "soon",
        ]))
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
