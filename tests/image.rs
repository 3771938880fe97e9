//! The container image (`tests/image/build`), proved the way a container runtime would use
//! it: the test unpacks the OCI archive itself (checking every digest), reads the config,
//! and runs the entrypoint from nothing but the image's own files, in a chroot whose root
//! is mounted read-only (as the chart runs it), in its own PID namespace (the binary is
//! PID 1, as in a pod), as UID/GID 65532 with no capabilities, with no /proc and no /dev.
//! It runs `--version`, then `run` against the local control plane until it is ready,
//! holds the Lease and publishes a namespace's sealing key, and stops it with SIGTERM.
//!
//! The image comes from a static debug build unless `MONIVAULT_IMAGE_PROFILE=release`:
//! the same flags and files as the release image, unoptimized, at a fraction of the
//! build time. Needs root (unshare, mount, chroot), as the control plane tests do.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use monivault::controller::leader::LEASE_NAME;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{cluster, http_get, section_public_key, stderr, stdout};

/// The UID and GID the image declares and the chart runs it as.
const NONROOT: &str = "65532";

/// Everything the image may hold: the binary, the CA bundle and their directories.
const IMAGE_FILES: [&str; 8] = [
    "etc",
    "etc/ssl",
    "etc/ssl/certs",
    "etc/ssl/certs/ca-certificates.crt",
    "usr",
    "usr/local",
    "usr/local/bin",
    "usr/local/bin/monivault",
];

/// Where the test mounts the kubeconfig, as a pod would mount a Secret.
const CONFIG_DIR: &str = "run/secrets/monivault";

struct Image {
    /// Holds the unpacked archive and root filesystem; removed on drop.
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    config: Value,
}

impl Image {
    fn config_strings(&self, key: &str) -> Vec<String> {
        self.config["config"][key]
            .as_array()
            .unwrap_or_else(|| panic!("the image config has no {key}"))
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect()
    }

    /// The process the image starts: its entrypoint, then `args` (in place of its cmd).
    fn command_line(&self, args: &[&str]) -> Vec<String> {
        let mut line = self.config_strings("Entrypoint");
        line.extend(args.iter().map(|a| a.to_string()));
        line
    }
}

/// Builds the image and returns its OCI archive. Tools and binary are incremental, so
/// once `tests/all` built them this is a relink check and a few seconds of assembly. When
/// the tests themselves were built static (`cargo test --target x86_64-unknown-linux-gnu`
/// with the image's RUSTFLAGS), the image packs their `monivault` instead of building one.
fn build_image() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let chosen = std::env::var("MONIVAULT_IMAGE_PROFILE").ok();
    let profile = chosen.clone().unwrap_or_else(|| "debug".into());
    let mut image_args = vec!["--profile".to_owned(), profile.clone()];
    let test_binary = env!("CARGO_BIN_EXE_monivault");
    let mut head = Vec::new();
    std::fs::File::open(test_binary)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .expect("read the test build's monivault");
    if chosen.is_none() && !has_interpreter(&head) {
        eprintln!("packing the test build's static {test_binary}");
        image_args.extend(["--binary".to_owned(), test_binary.to_owned()]);
    }
    for (script, args) in [
        ("tests/tools/build", vec![]),
        ("tests/image/build", image_args),
    ] {
        let out = Command::new(root.join(script))
            .args(&args)
            .current_dir(&root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "{script} failed ({}):\n{}{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
    }
    root.join("target/image")
        .join(profile)
        .join("monivault.tar")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A blob of the OCI layout, checked against its digest.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("a digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("read a blob");
    assert_eq!(sha256_hex(&bytes), hex, "blob {digest} does not match");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(bytes.len() as u64),
        "blob {digest} has the wrong size"
    );
    bytes
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run a command");
    assert!(out.status.success(), "{cmd:?} failed: {}", stderr(&out));
    out
}

/// Unpacks the archive as a runtime does: index, manifest, config, then the layers in
/// order onto an empty root filesystem.
fn unpack(archive: &Path) -> Image {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let layout = dir.path().join("layout");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&layout).expect("mkdir");
    std::fs::create_dir(&rootfs).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));

    let read_json = |bytes: &[u8]| -> Value { serde_json::from_slice(bytes).expect("JSON") };
    let oci_layout = read_json(&std::fs::read(layout.join("oci-layout")).expect("oci-layout"));
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index = read_json(&std::fs::read(layout.join("index.json")).expect("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        env!("CARGO_PKG_VERSION")
    );
    let manifest = read_json(&blob(&layout, &manifests[0]));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = read_json(&blob(&layout, &manifest["config"]));
    let layers = manifest["layers"].as_array().expect("layers");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(layers.len(), diff_ids.len(), "one diff_id per layer");
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let gz = dir.path().join("layer.tar.gz");
        std::fs::write(&gz, blob(&layout, layer)).expect("write a layer");
        let tar = run(Command::new("gzip").arg("-dc").arg(&gz)).stdout;
        // The config names each layer by the digest of its uncompressed tar.
        assert_eq!(
            diff_id.as_str(),
            Some(format!("sha256:{}", sha256_hex(&tar)).as_str()),
            "a layer does not match its diff_id"
        );
        let path = dir.path().join("layer.tar");
        std::fs::write(&path, tar).expect("write a layer");
        let listing = run(Command::new("tar").arg("-tf").arg(&path));
        assert!(
            !stdout(&listing).contains(".wh."),
            "a single-layer image has no whiteouts"
        );
        run(Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&rootfs));
        std::fs::remove_file(&gz).expect("remove a layer");
        std::fs::remove_file(&path).expect("remove a layer");
    }
    Image {
        _dir: dir,
        rootfs,
        config,
    }
}

fn files_under(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            let relative = path.strip_prefix(root).expect("under root");
            found.insert(relative.to_string_lossy().into_owned());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found
}

/// Whether an ELF file asks for a program interpreter (ld-linux), i.e. is dynamic.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "not 64-bit little-endian");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == PT_INTERP
    })
}

fn host_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed"))
}

/// The container: `unshare` makes a mount and PID namespace; inside, the root filesystem
/// is bind-mounted read-only (with `config` read-only at /run/secrets/monivault), and
/// `chroot` drops to 65532:65532 and execs `line`, which becomes PID 1. The environment
/// is the image's own plus `env`, nothing from the host.
fn container(image: &Image, config: &Path, line: &[String], env: &[(&str, &str)]) -> Command {
    let script = r#"set -eu
root=$1 config=$2 mount=$MOUNT chroot=$CHROOT dir=$CONFIG_DIR user=$NONROOT; shift 2
unset MOUNT CHROOT CONFIG_DIR NONROOT
"$mount" --bind "$root" "$root"
"$mount" --bind "$config" "$root/$dir"
"$mount" -o remount,bind,ro "$root/$dir"
"$mount" -o remount,bind,ro "$root"
exec "$chroot" --userspec="$user:$user" "$root" "$@"
"#;
    // The mount point, as a runtime creates one for a volume.
    std::fs::create_dir_all(image.rootfs.join(CONFIG_DIR)).expect("a mount point");
    let mut cmd = Command::new(host_tool("unshare"));
    cmd.args(["--mount", "--pid", "--fork", "--kill-child", "--"])
        .arg("/bin/sh")
        .args(["-c", script, "sh"])
        .arg(&image.rootfs)
        .arg(config)
        .args(line)
        .env_clear()
        .env("MOUNT", host_tool("mount"))
        .env("CHROOT", host_tool("chroot"))
        .env("CONFIG_DIR", CONFIG_DIR)
        .env("NONROOT", NONROOT);
    for pair in image.config_strings("Env") {
        let (key, value) = pair.split_once('=').expect("KEY=value");
        cmd.env(key, value);
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// The PID-1 process of a running container: the child of `unshare`.
fn container_pid(unshare: u32) -> u32 {
    for _ in 0..100 {
        for entry in std::fs::read_dir("/proc").expect("/proc") {
            let Ok(pid) = entry
                .expect("a /proc entry")
                .file_name()
                .to_string_lossy()
                .parse()
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The fields after the command name, which is in parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(unshare) {
                return pid;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("unshare {unshare} started no child");
}

fn proc_status_line(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `monivault run` in the container, with its stderr collected as it comes.
struct Running {
    unshare: Child,
    stderr: Arc<Mutex<String>>,
    drain: Option<thread::JoinHandle<()>>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut unshare = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start unshare");
        let mut pipe = unshare.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let drain = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running {
            unshare,
            stderr,
            drain: Some(drain),
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to 60 s for `f` to return `Some`; on timeout, fails with the log.
    async fn until<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        for _ in 0..600 {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}; the log:\n{}", self.stderr());
    }

    async fn exited(&mut self) -> ExitStatus {
        for _ in 0..300 {
            if let Some(status) = self.unshare.try_wait().expect("wait") {
                if let Some(drain) = self.drain.take() {
                    drain.join().expect("stderr reader");
                }
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the container did not exit:\n{}", self.stderr());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // unshare --kill-child takes the container down with it.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

#[tokio::test]
async fn the_image_runs_monivault_from_its_own_files_as_nonroot() {
    let image = unpack(&build_image());

    // The config a runtime reads.
    assert_eq!(image.config["os"], "linux");
    assert_eq!(image.config["architecture"], "amd64");
    assert_eq!(
        image.config["config"]["User"],
        format!("{NONROOT}:{NONROOT}")
    );
    assert_eq!(
        image.config_strings("Entrypoint"),
        ["/usr/local/bin/monivault"]
    );
    assert_eq!(image.config_strings("Cmd"), ["run"]);
    assert_eq!(
        image.config["config"]["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // Nothing but the binary and the CA bundle; the binary is static.
    assert_eq!(
        files_under(&image.rootfs),
        IMAGE_FILES.iter().map(|f| f.to_string()).collect(),
        "the image holds exactly the binary and the CA certificates"
    );
    let binary = std::fs::read(image.rootfs.join("usr/local/bin/monivault")).expect("binary");
    assert!(!has_interpreter(&binary), "the binary is dynamic");
    let bundle = std::fs::read(image.rootfs.join("etc/ssl/certs/ca-certificates.crt"))
        .expect("the CA bundle");
    let roots = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::pem_slice_iter(&bundle)
            .collect::<Result<Vec<_>, _>>()
            .expect("the CA bundle parses")
    };
    assert!(roots.len() > 50, "only {} CA certificates", roots.len());

    let c = cluster();
    let config = tempfile::tempdir().expect("a config directory");
    let kubeconfig = std::fs::read(c.var("KUBECONFIG")).expect("the kubeconfig");
    std::fs::write(config.path().join("kubeconfig"), kubeconfig).expect("copy the kubeconfig");

    // --version, from the image alone.
    let out = container(
        &image,
        config.path(),
        &image.command_line(&["--version"]),
        &[],
    )
    .output()
    .expect("run unshare");
    assert!(out.status.success(), "--version: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("monivault {}\n", env!("CARGO_PKG_VERSION"))
    );

    // `run` against the control plane, scoped to throwaway namespaces.
    let admin = c.admin().await;
    let ns = c.temp_namespace("image").await;
    let store_ns = c.temp_namespace("image-store").await;
    let kubeconfig_path = format!("/{CONFIG_DIR}/kubeconfig");
    let line = image.command_line(&[
        "run",
        "--namespace",
        &store_ns,
        "--watch-namespace",
        &ns,
        "--instance",
        "image-test",
        "--metrics-addr",
        "127.0.0.1:0",
        "--webhook-addr",
        "127.0.0.1:0",
    ]);
    let mut operator = Running::start(container(
        &image,
        config.path(),
        &line,
        &[
            ("KUBECONFIG", &kubeconfig_path),
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
        ],
    ));
    let pid = container_pid(operator.unshare.id());

    const MARK: &str = "serving metrics on http://";
    let ops = operator
        .until("the operator to serve its endpoints", || {
            let text = operator.stderr();
            let addr = text
                .split_once(MARK)
                .and_then(|(_, rest)| rest.split('/').next()?.parse().ok());
            async move { addr }
        })
        .await;
    operator
        .until("/readyz to answer 200", || async {
            (http_get(ops, "/readyz").await?.0 == 200).then_some(())
        })
        .await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &store_ns);
    operator
        .until("the operator to hold the lease", || async {
            let holder = leases
                .get_opt(LEASE_NAME)
                .await
                .ok()??
                .spec?
                .holder_identity;
            (holder.as_deref() == Some("image-test")).then_some(())
        })
        .await;
    // The controller is at work: environment keys made and published (random numbers,
    // X-Wing, the store's Secrets), all from the static binary.
    section_public_key(&admin, &ns).await;

    // Who it runs as: UID and GID 65532, no supplementary groups of root, no capabilities.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "monivault", "PID 1 of the container");
    assert_eq!(proc_status_line(pid, "Uid"), ["65532"; 4].join(" "));
    assert_eq!(proc_status_line(pid, "Gid"), ["65532"; 4].join(" "));
    let groups = proc_status_line(pid, "Groups");
    assert!(groups.is_empty() || groups == NONROOT, "groups: {groups}");
    assert_eq!(proc_status_line(pid, "CapEff"), "0000000000000000");
    // Its root, as it sees it, is read-only (mount point and options: fields 5 and 6).
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root_options = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(4) == Some(&"/")).then(|| fields.get(5).copied().unwrap_or_default())
    });
    assert!(
        root_options.is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "the root is not read-only:\n{mounts}"
    );

    // SIGTERM, as the kubelet sends it: the leader releases the lease and exits cleanly.
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = operator.exited().await;
    let log = operator.stderr();
    assert!(status.success(), "exited with {status}:\n{log}");
    assert!(log.contains("left the leader election"), "{log}");
    let holder = leases
        .get_opt(LEASE_NAME)
        .await
        .expect("get the lease")
        .and_then(|l| l.spec?.holder_identity);
    assert_eq!(holder, None, "the lease is released");
    for bad in ["Read-only file system", "No such file or directory"] {
        assert!(!log.contains(bad), "the log mentions {bad:?}:\n{log}");
    }
}

/// The Dockerfile (for those with an engine) builds what tests/image/build builds.
#[test]
fn the_dockerfile_matches_the_image_script() {
    const RUSTFLAGS: &str =
        r#"-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom""#;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let script = std::fs::read_to_string(root.join("tests/image/build")).expect("the script");
    assert!(dockerfile.contains(&format!("RUSTFLAGS='{RUSTFLAGS}'")));
    assert!(script.contains(&RUSTFLAGS.replace('"', r#"\""#)));
    assert!(
        dockerfile.contains("--locked --release --bin monivault --target x86_64-unknown-linux-gnu")
    );
    assert!(script.contains("--locked --bin monivault --target \"$target\""));
    for line in [
        "FROM --platform=linux/amd64 gcr.io/distroless/static-debian12:nonroot",
        "USER 65532:65532",
        r#"ENTRYPOINT ["/usr/local/bin/monivault"]"#,
        r#"CMD ["run"]"#,
    ] {
        assert!(
            dockerfile.lines().any(|l| l == line),
            "the Dockerfile lacks {line}"
        );
    }
}
