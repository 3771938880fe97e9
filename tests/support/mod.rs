//! The end-to-end harness: a real kube-apiserver and etcd (tests/cluster), never a mock.
//!
//! - [`cluster`] attaches to the control plane that `tests/cluster/up` started, or starts
//!   it (once per test process) if none answers. If it cannot start, the test fails with
//!   the reason: end-to-end tests never skip silently.
//! - The CRDs from `crds/` are applied once per test process.
//! - Each test takes a throwaway namespace ([`Cluster::temp_namespace`]); no
//!   kube-controller-manager runs, so namespaces never finish deleting and tests do not
//!   wait for it.
//! - Clients act as the admin or as any user, group or service account, by impersonation.
#![allow(dead_code)] // Each test binary uses its own subset of the harness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub const TEST_LABEL: &str = "monivault.io/test";

pub struct Cluster {
    pub root: PathBuf,
    /// The variables of `target/cluster/env`.
    pub env: BTreeMap<String, String>,
    kubeconfig: Kubeconfig,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The shared control plane, with the CRDs installed. Panics with the reason if the
/// control plane cannot be reached or started.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(|| Cluster::attach_or_start().and_then(Cluster::install_crds)) {
        Ok(cluster) => cluster,
        Err(reason) => panic!("the local control plane is not available: {reason}"),
    }
}

impl Cluster {
    fn attach_or_start() -> Result<Cluster, String> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        // `up` is idempotent: it returns at once when the control plane already answers.
        let up = Command::new(root.join("tests/cluster/up"))
            .current_dir(&root)
            .output()
            .map_err(|e| format!("cannot run tests/cluster/up: {e}"))?;
        if !up.status.success() {
            return Err(format!(
                "tests/cluster/up failed ({}):\n{}{}",
                up.status,
                String::from_utf8_lossy(&up.stdout),
                String::from_utf8_lossy(&up.stderr)
            ));
        }
        let env = read_env(&root.join("target/cluster/env"))?;
        let path = env
            .get("KUBECONFIG")
            .ok_or("target/cluster/env sets no KUBECONFIG")?;
        let kubeconfig =
            Kubeconfig::read_from(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Ok(Cluster {
            root,
            env,
            kubeconfig,
        })
    }

    fn install_crds(self) -> Result<Cluster, String> {
        let crds = self.root.join("crds");
        let out = self.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            path_str(&crds)?,
        ]);
        if !out.status.success() {
            return Err(format!("installing the CRDs failed: {}", stderr(&out)));
        }
        let out = self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            path_str(&crds)?,
        ]);
        if !out.status.success() {
            return Err(format!(
                "the CRDs did not become established: {}",
                stderr(&out)
            ));
        }
        Ok(self)
    }

    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("target/cluster/env sets no {name}"))
    }

    /// Runs the control plane's kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.var("MONIVAULT_KUBECTL"))
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl with `stdin` piped in (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(self.var("MONIVAULT_KUBECTL"))
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes());
        child.wait_with_output().expect("wait for kubectl")
    }

    async fn config(&self) -> Config {
        Config::from_custom_kubeconfig(self.kubeconfig.clone(), &KubeConfigOptions::default())
            .await
            .expect("admin kubeconfig")
    }

    /// A client with the admin's rights (group `system:masters`).
    pub async fn admin(&self) -> Client {
        Client::try_from(self.config().await).expect("admin client")
    }

    /// A client acting as `user` in `groups` (plus `system:authenticated`, as the API
    /// server adds for real users), by impersonation.
    pub async fn user(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.config().await;
        let mut all: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        all.push("system:authenticated".to_owned());
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(all);
        Client::try_from(config).expect("impersonating client")
    }

    /// A client acting as a ServiceAccount, with the groups the API server gives one.
    pub async fn service_account(&self, namespace: &str, name: &str) -> Client {
        self.user(
            &format!("system:serviceaccount:{namespace}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{namespace}"),
            ],
        )
        .await
    }

    /// A fresh namespace, labelled as a test's so it is easy to find and sweep.
    pub async fn temp_namespace(&self, prefix: &str) -> String {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).expect("random");
        let name = format!("{prefix}-{:08x}", u32::from_le_bytes(bytes));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(TEST_LABEL.to_owned(), "true".to_owned())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.admin().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        name
    }
}

/// Reads the env file the way a shell does, by sourcing it.
fn read_env(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$1\" && env -0")
        .arg("bash")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot source {}: {}",
            path.display(),
            stderr(&out)
        ));
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
