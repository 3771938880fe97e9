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
//! - [`Operator`] runs `monivault run` as a child process, scoped to the test's namespaces.
#![allow(dead_code)] // Each test binary uses its own subset of the harness.

mod leaks;
#[allow(unused_imports)] // Each test binary uses its own subset of the harness.
pub use leaks::{
    Form, Generated, Leak, Scanner, Scope, adopt, base32_seed, forms, generated, scan_append_only,
    secret, token,
};

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use monivault::api::condition::{READY, find_condition};
use monivault::api::vault_item::VaultItem;
use monivault::api::vault_section::VaultSection;
use monivault::crypto::SealingPublicKey;

pub const TEST_LABEL: &str = "monivault.io/test";

pub struct Cluster {
    pub root: PathBuf,
    /// The variables of `target/cluster/env`.
    pub env: BTreeMap<String, String>,
    pub(crate) kubeconfig: Kubeconfig,
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

    /// Every key and value in etcd, as text: what an attacker with the disk would see.
    /// The endpoint comes from the environment only: etcdctl 3.7 refuses a flag that
    /// shadows a variable, and `tests/all` exports the variable.
    pub fn etcd_dump(&self) -> String {
        let out = Command::new(self.var("MONIVAULT_ETCDCTL"))
            .env("ETCDCTL_ENDPOINTS", self.var("ETCDCTL_ENDPOINTS"))
            .env_remove("ETCDCTL_API")
            .args(["get", "--prefix", ""])
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl: {}", stderr(&out));
        assert!(out.stdout.len() > 1000, "etcdctl returned almost nothing");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fails if any plaintext, or its base64 form, is anywhere in etcd.
    pub fn assert_not_in_etcd(&self, plaintexts: &[&str]) {
        use base64::Engine as _;
        let dump = self.etcd_dump();
        for plaintext in plaintexts {
            let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
            assert!(!dump.contains(plaintext), "a plaintext is in etcd");
            assert!(!dump.contains(&b64), "a plaintext's base64 is in etcd");
        }
    }

    /// The API server's audit log from `since` on: the current file and any file it was
    /// rotated into since (the API server rotates at 100 MB).
    pub fn audit_log_since(&self, since: std::time::SystemTime) -> String {
        let mut text = String::new();
        for path in self.audit_logs_since(since) {
            let bytes = std::fs::read(&path).expect("read the audit log");
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        text
    }

    /// The files of [`Cluster::audit_log_since`].
    pub fn audit_logs_since(&self, since: std::time::SystemTime) -> Vec<PathBuf> {
        let current = PathBuf::from(self.var("MONIVAULT_AUDIT_LOG"));
        let dir = current.parent().expect("the audit log's directory");
        let stem = current
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("audit")
            .to_owned();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read the audit log's directory") {
            let path = entry.expect("dir entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let recent = path
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified >= since);
            if name.starts_with(&stem) && name.ends_with(".log") && (recent || path == current) {
                files.push(path);
            }
        }
        files.sort();
        files
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

/// A value no earlier run wrote: etcd, the audit log and the logs outlive a test run.
pub fn fresh(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    format!("{prefix}-{:016x}", u64::from_le_bytes(bytes))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits up to 30 s for `f` to return `Some`, polling every 100 ms.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Host names the operators of the tests resolve to loopback: test servers listen there,
/// each on its own port, and monitors and allowedHosts name them.
pub const RUNNER_HOSTS: [&str; 3] = ["shop.test", "api.test", "evil.test"];

fn runner_resolve() -> String {
    RUNNER_HOSTS
        .iter()
        .map(|host| format!("{host}=127.0.0.1"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `monivault run` process scoped to one test: its own store namespace, watching only
/// the test's namespace, serving its operations endpoints on a free loopback port.
/// Its stderr is collected as it comes (a full pipe would stall the process). Killed
/// (SIGKILL) on drop, and then, unless the test already failed, the leak scan runs over
/// what it touched (see [`leaks`]): no test that runs an operator can forget it.
pub struct Operator {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    drain: Option<thread::JoinHandle<()>>,
    /// The webhook configurations it registered, removed on drop: a killed operator
    /// cannot remove them itself.
    registered: Option<(PathBuf, PathBuf, String)>,
    /// Its `--namespace` and `--watch-namespace`, and its start: the leak scan's scope.
    store_namespace: Option<String>,
    watched: Vec<String>,
    since: std::time::SystemTime,
}

impl Operator {
    pub fn start(c: &Cluster, store_ns: &str, watch_ns: &str) -> Operator {
        Operator::start_with(c, store_ns, watch_ns, &[])
    }

    /// With its admission webhooks registered for `watch_ns`, by `url:` to its loopback
    /// port. The configurations are named after `store_ns`, so tests do not share them.
    pub fn start_with_webhooks(c: &Cluster, store_ns: &str, watch_ns: &str) -> Operator {
        Operator::start_with_webhooks_and(c, store_ns, watch_ns, &[])
    }

    /// [`Operator::start_with_webhooks`] with more `monivault run` arguments.
    pub fn start_with_webhooks_and(
        c: &Cluster,
        store_ns: &str,
        watch_ns: &str,
        extra: &[&str],
    ) -> Operator {
        let mut args = vec![
            "--register-local-webhooks",
            "--webhook-configuration",
            store_ns,
        ];
        args.extend_from_slice(extra);
        let mut op = Operator::start_with(c, store_ns, watch_ns, &args);
        op.registered = Some((
            PathBuf::from(c.var("MONIVAULT_KUBECTL")),
            PathBuf::from(c.var("KUBECONFIG")),
            store_ns.to_owned(),
        ));
        op
    }

    /// With more `monivault run` arguments, e.g. `--instance`.
    pub fn start_with(c: &Cluster, store_ns: &str, watch_ns: &str, extra: &[&str]) -> Operator {
        let mut args = vec![
            "run",
            "--namespace",
            store_ns,
            "--watch-namespace",
            watch_ns,
            "--metrics-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Operator::spawn(&args, c.var("KUBECONFIG"), &[])
    }

    /// `monivault` with exactly these arguments, this kubeconfig and these extra
    /// environment variables.
    pub fn spawn(args: &[&str], kubeconfig: &str, env: &[(&str, &str)]) -> Operator {
        let since = std::time::SystemTime::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_monivault"))
            .args(args)
            .envs(env.iter().copied())
            .env("KUBECONFIG", kubeconfig)
            // Test targets listen on loopback under these names (see RUNNER_HOSTS).
            .env("MONIVAULT_RUNNER_ALLOW_INTERNAL", "true")
            .env("MONIVAULT_RUNNER_RESOLVE", runner_resolve())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start monivault run");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let drain = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
        });
        Operator {
            child,
            stderr,
            drain: Some(drain),
            registered: None,
            store_namespace: flag(args, "--namespace"),
            watched: flag(args, "--watch-namespace")
                .map(|list| list.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            since,
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the process to exit; returns its status and everything it wrote to stderr.
    pub async fn exited(&mut self) -> (ExitStatus, String) {
        let mut status = None;
        for _ in 0..300 {
            status = self.child.try_wait().expect("wait for the operator");
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(status) = status else {
            panic!(
                "timed out waiting for the operator to exit; its stderr:\n{}",
                self.stderr()
            );
        };
        if let Some(drain) = self.drain.take() {
            drain.join().expect("stderr reader");
        }
        (status, self.stderr())
    }

    /// SIGKILL: no chance to release the lease or finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The address of its operations server, from the line it logs once it listens.
    pub async fn ops_addr(&self) -> SocketAddr {
        const MARK: &str = "serving metrics on http://";
        eventually("the operator to serve its endpoints", || {
            let text = self.stderr();
            let addr = text
                .split_once(MARK)
                .and_then(|(_, rest)| rest.split('/').next().and_then(|a| a.parse().ok()));
            async move { addr }
        })
        .await
    }
}

/// The value of `--name VALUE` or `--name=VALUE` in `args`.
fn flag(args: &[&str], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, arg)| {
        if *arg == name {
            args.get(i + 1).map(|v| (*v).to_owned())
        } else {
            arg.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        }
    })
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if let Some((kubectl, kubeconfig, name)) = self.registered.take() {
            let _ = Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["delete", "--ignore-not-found", "--wait=false"])
                .arg(format!("mutatingwebhookconfiguration/{name}"))
                .arg(format!("validatingwebhookconfiguration/{name}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // A failed test's leaks are not worth a second panic, which would abort.
        if !thread::panicking() {
            if let Some(drain) = self.drain.take() {
                let _ = drain.join();
            }
            let log = self.stderr();
            let started = std::time::Instant::now();
            cluster().assert_no_leaks(&Scope {
                store_namespace: self.store_namespace.as_deref(),
                namespaces: self.watched.iter().map(String::as_str).collect(),
                operator_log: &log,
                since: self.since,
            });
            eprintln!("leak scan: clean, in {:?}", started.elapsed());
        }
    }
}

/// A plain HTTP/1.0 GET (the body ends where the connection does): status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Creates the VaultSection `checkout` in `ns` and returns the sealing key it publishes.
pub async fn section_public_key(client: &Client, ns: &str) -> SealingPublicKey {
    let sections: Api<VaultSection> = Api::namespaced(client.clone(), ns);
    let section: VaultSection = serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
        "metadata": {"name": "checkout"}, "spec": {"description": "the shop"}
    }))
    .expect("section");
    sections
        .create(&PostParams::default(), &section)
        .await
        .expect("create section");
    let text = eventually("the section's sealing public key", || async {
        sections
            .get("checkout")
            .await
            .ok()?
            .status?
            .sealing_public_key
    })
    .await;
    SealingPublicKey::parse(&text).expect("published key parses")
}

/// The password of [`example_archive`].
pub const EXAMPLE_ARCHIVE_PASSWORD: &str = "changeit";

/// The throwaway PKCS#12 of `examples/item-certificate-archive.yaml`, as the base64 text a
/// user writes into `certificateArchive.archive`. Public in the repository, but stored as a
/// secret: the leak scans look for it (text and DER) and its password too.
pub fn example_archive() -> &'static str {
    use base64::Engine as _;
    let archive = include_str!("../../examples/item-certificate-archive.yaml")
        .lines()
        .find_map(|l| l.trim().strip_prefix("archive: "))
        .expect("the example archive");
    let der = base64::engine::general_purpose::STANDARD
        .decode(archive)
        .expect("the example archive is base64");
    adopt("the example archive", archive.as_bytes());
    adopt("the example archive's DER", &der);
    adopt(
        "the example archive's password",
        EXAMPLE_ARCHIVE_PASSWORD.as_bytes(),
    );
    archive
}

/// A CredentialSet item in section `checkout` with a sealed password.
pub fn credential_set(name: &str, sealed_password: &str) -> VaultItem {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": name},
        "spec": {
            "type": "CredentialSet", "section": "checkout",
            "allowedHosts": ["shop.example.com"],
            "credentialSet": {"username": "synthetic-bot", "password": "*****"},
            "sealed": {"password": sealed_password}
        }
    }))
    .expect("item")
}

/// Waits until the item's Ready condition is `want` for its current generation.
pub async fn ready_condition(items: &Api<VaultItem>, name: &str, want: &str) -> VaultItem {
    eventually(&format!("{name} Ready={want}"), || async {
        let item = items.get(name).await.ok()?;
        let status = item.status.as_ref()?;
        let ready = find_condition(&status.conditions, READY)?;
        (ready.status == want && status.observed_generation == item.metadata.generation)
            .then_some(item.clone())
    })
    .await
}

/// One HTTP/1.1 POST over TLS to `addr`, verifying the server as `localhost` against
/// `ca_pem`, as a client on the network would send it. `declared` overrides the
/// Content-Length (a client announcing more than it sends). Returns the status and body
/// (the connection is closed after the answer, so the body ends where the stream does).
pub async fn https_post(
    addr: SocketAddr,
    ca_pem: &[u8],
    path: &str,
    body: &[u8],
    declared: Option<usize>,
) -> (u16, String) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("a CA certificate")).expect("a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake that verifies against the operator's CA");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        declared.unwrap_or(body.len())
    );
    tls.write_all(head.as_bytes()).await.expect("write head");
    // The server may answer (413) and close before the whole body is sent.
    let _ = tls.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
