//! Runner benchmark on the local control plane: 1,000 monitors every 10 s against a local
//! HTTPS server with Basic auth, for at least a minute, beside Prometheus blackbox_exporter
//! v0.28.0 (built from its Go module) probing the same server at the same rate through
//! `/probe`, in the same run. Both open a new TLS connection per check (blackbox turns
//! keep-alive off per probe; monivault builds a client per check), verify the server against
//! the same private CA, and send the same Basic credentials.
//!
//! Not part of the test suite (it builds blackbox_exporter and takes a few minutes). Run:
//!
//! ```sh
//! cargo test --release --test bench_runner -- --ignored --nocapture
//! ```
//!
//! `MONIVAULT_BENCH_MONITORS` (default 1000) and `MONIVAULT_BENCH_SECONDS` (default 60)
//! change the load and the measured window. The table is printed and written as JSON to
//! `target/bench/runner.json`.

mod support;

#[path = "runner_check/servers.rs"]
mod servers;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use monivault::api::{Monitor, VaultItem, VaultSection};
use monivault::runner::schedule::phase;
use serde_json::json;
use servers::{PKI, Seen, handler, https, ok, pem, status};
use support::{Operator, cluster, eventually};

const INTERVAL: Duration = Duration::from_secs(10);
const BLACKBOX: &str = "github.com/prometheus/blackbox_exporter@v0.28.0";

fn count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Process CPU time (user + system) in seconds, from /proc; fails loudly if unreadable.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    let after = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// (VmRSS, VmHWM) in MiB; fails loudly if unreadable.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .expect("a VmRSS/VmHWM line")
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds blackbox_exporter from its Go module into target/bench/bin, once. Not `go
/// install …@v0.28.0`: that asks the proxy for the module's version list (for deprecation
/// notices), which this proxy refuses; `go mod download` of the exact version works, and
/// the module builds in place.
fn blackbox_binary() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/bin");
    let exe = bin.join("blackbox_exporter");
    if exe.exists() {
        return exe;
    }
    std::fs::create_dir_all(&bin).expect("bench bin dir");
    let out = Command::new("go")
        .args(["mod", "download", "-json", BLACKBOX])
        .output()
        .expect("run go mod download");
    assert!(
        out.status.success(),
        "go mod download {BLACKBOX}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("go mod download -json");
    let dir = info["Dir"].as_str().expect("the module's directory");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(dir)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build {BLACKBOX}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[derive(Default)]
struct Window {
    checks: u64,
    cpu: f64,
    rss: (f64, f64),
}

impl Window {
    fn cpu_per_1000(&self) -> f64 {
        self.cpu * 1000.0 / self.checks.max(1) as f64
    }
}

#[tokio::test]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
async fn runner_against_blackbox_exporter() {
    let monitors = count("MONIVAULT_BENCH_MONITORS", 1000);
    let seconds = count("MONIVAULT_BENCH_SECONDS", 60);
    let blackbox = blackbox_binary();
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("bench-runner").await;
    let store_ns = c.temp_namespace("bench-runner-store").await;
    let password = format!("bench-{}", std::process::id());
    let expected = format!("Basic {}", STANDARD.encode(format!("bot:{password}")));

    // The target: answers 200 to the right Basic credentials, and notes when each check
    // and probe arrived.
    let arrivals: Arc<Mutex<Vec<(String, SystemTime)>>> = Arc::default();
    let noted = arrivals.clone();
    let server = https(handler(move |seen: &Seen| {
        noted
            .lock()
            .expect("arrivals")
            .push((seen.path.clone(), SystemTime::now()));
        if seen.header("authorization") == Some(expected.as_str()) {
            ok("up")
        } else {
            status(401)
        }
    }))
    .await;

    let op = Operator::start_with_webhooks_and(c, &store_ns, &ns, &["--runner-concurrency", "256"]);
    let pid = op.child.id();
    let sections: Api<VaultSection> = Api::namespaced(admin.clone(), &ns);
    sections
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "monivault.io/v1alpha1",
                "kind": "VaultSection", "metadata": {"name": "bench"}, "spec": {}}))
            .expect("section"),
        )
        .await
        .expect("section");
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    for item in [
        json!({"metadata": {"name": "ca"}, "spec": {"type": "Certificate", "section": "bench",
               "certificate": {"pem": pem(&PKI.ca)}}}),
        json!({"metadata": {"name": "login"}, "spec": {"type": "CredentialSet", "section": "bench",
               "allowedHosts": ["shop.test"],
               "credentialSet": {"username": "bot", "password": password}}}),
    ] {
        let mut item = item;
        item["apiVersion"] = json!("monivault.io/v1alpha1");
        item["kind"] = json!("VaultItem");
        let item: VaultItem = serde_json::from_value(item).expect("item");
        eventually("the webhook to admit an item", || {
            let (items, item) = (items.clone(), item.clone());
            async move { items.create(&PostParams::default(), &item).await.ok() }
        })
        .await;
        support::ready_condition(&items, &item.name_any(), "True").await;
    }
    let api: Api<Monitor> = Api::namespaced(admin.clone(), &ns);
    let port = server.port;
    let created: Vec<(String, String)> = futures::stream::iter(0..monitors)
        .map(|i| {
            let api = api.clone();
            async move {
                let monitor: Monitor = serde_json::from_value(json!({
                    "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
                    "metadata": {"name": format!("m-{i:04}")},
                    "spec": {"url": format!("https://shop.test:{port}/m/{i:04}"),
                             "interval": "10s", "timeout": "5s",
                             "auth": {"basic": {"credentialSet": "login"}},
                             "tls": {"caCertificate": "ca"}},
                }))
                .expect("monitor");
                let made = api
                    .create(&PostParams::default(), &monitor)
                    .await
                    .expect("create a monitor");
                (format!("/m/{i:04}"), made.uid().expect("uid"))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let phases: BTreeMap<String, Duration> = created
        .into_iter()
        .map(|(path, uid)| (path, phase(&uid, INTERVAL)))
        .collect();
    // Warm up: every monitor has run at least once.
    eventually("every monitor to have run", || async {
        let seen = arrivals.lock().expect("arrivals").len() as u64;
        (seen >= monitors).then_some(())
    })
    .await;
    tokio::time::sleep(INTERVAL).await;

    // monivault's window.
    arrivals.lock().expect("arrivals").clear();
    let cpu_start = cpu_seconds(pid);
    let start = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let ours = Window {
        checks: 0,
        cpu: cpu_seconds(pid) - cpu_start,
        rss: rss_mib(pid),
    };
    let window: Vec<(String, SystemTime)> = arrivals.lock().expect("arrivals").drain(..).collect();
    let mut lateness = Vec::new();
    let mut buckets = vec![0u64; seconds as usize];
    let mut checks = 0u64;
    for (path, at) in &window {
        let Some(phase) = phases.get(path) else {
            continue;
        };
        checks += 1;
        let since = at.duration_since(UNIX_EPOCH).expect("time").as_millis() as f64;
        let period = INTERVAL.as_millis() as f64;
        let late = (since - phase.as_millis() as f64).rem_euclid(period);
        lateness.push(late);
        if let Ok(offset) = at.duration_since(start) {
            let bucket = offset.as_secs() as usize;
            if bucket < buckets.len() {
                buckets[bucket] += 1;
            }
        }
    }
    let ours = Window { checks, ..ours };
    lateness.sort_by(f64::total_cmp);
    let mean_bucket = buckets.iter().sum::<u64>() as f64 / buckets.len().max(1) as f64;
    let max_bucket = buckets.iter().copied().max().unwrap_or(0) as f64;
    drop(op);

    // blackbox_exporter's window, at the same rate, against the same server.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::write(dir.join("ca.pem"), pem(&PKI.ca)).expect("ca file");
    std::fs::write(
        dir.join("blackbox.yml"),
        format!(
            "modules:\n  http_basic:\n    prober: http\n    timeout: 5s\n    http:\n      valid_status_codes: [200]\n      basic_auth: {{username: bot, password: \"{password}\"}}\n      tls_config: {{ca_file: {}}}\n",
            dir.join("ca.pem").display()
        ),
    )
    .expect("blackbox config");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let bb_port = listen.local_addr().expect("addr").port();
    drop(listen);
    let bb = Killed(
        Command::new(&blackbox)
            .arg(format!(
                "--config.file={}",
                dir.join("blackbox.yml").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{bb_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start blackbox_exporter"),
    );
    let bb_pid = bb.0.id();
    // reqwest is built without a default TLS provider; this client speaks plain HTTP to
    // blackbox_exporter, but building it still wants one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let probe = |i: u64| {
        let client = client.clone();
        let url = format!(
            "http://127.0.0.1:{bb_port}/probe?module=http_basic&target=https://127.0.0.1:{port}/b/{i:04}"
        );
        async move {
            let body = client.get(url).send().await.ok()?.text().await.ok()?;
            Some(body.lines().any(|l| l == "probe_success 1"))
        }
    };
    eventually("blackbox_exporter to answer", || probe(0)).await;
    let rate = Duration::from_micros(INTERVAL.as_micros() as u64 / monitors);
    let successes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let drive = |duration: Duration| {
        let successes = successes.clone();
        let probe = &probe;
        async move {
            let mut tick = tokio::time::interval(rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut set = tokio::task::JoinSet::new();
            let until = tokio::time::Instant::now() + duration;
            let mut i = 0u64;
            while tokio::time::Instant::now() < until {
                tick.tick().await;
                let successes = successes.clone();
                let fut = probe(i % monitors);
                set.spawn(async move {
                    if fut.await == Some(true) {
                        successes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
                i += 1;
            }
            while set.join_next().await.is_some() {}
        }
    };
    drive(INTERVAL).await;
    successes.store(0, std::sync::atomic::Ordering::Relaxed);
    let bb_cpu_start = cpu_seconds(bb_pid);
    drive(Duration::from_secs(seconds)).await;
    let theirs = Window {
        checks: successes.load(std::sync::atomic::Ordering::Relaxed),
        cpu: cpu_seconds(bb_pid) - bb_cpu_start,
        rss: rss_mib(bb_pid),
    };
    drop(bb);

    let ratio = ours.cpu_per_1000() / theirs.cpu_per_1000();
    let table = format!(
        "| row | monivault | blackbox_exporter v0.28.0 | ratio |\n|---|---|---|---|\n\
         | checks per second ({monitors} monitors, 10 s) | {:.1} | {:.1} | |\n\
         | CPU-seconds per 1,000 checks | {:.3} | {:.3} | {ratio:.2}x |\n\
         | start jitter p50 / p99 | {:.1} / {:.1} ms | | |\n\
         | spread: largest 1 s bucket / mean | {:.2} | | |\n\
         | RSS steady / peak | {:.1} / {:.1} MiB | {:.1} / {:.1} MiB | |\n",
        ours.checks as f64 / seconds as f64,
        theirs.checks as f64 / seconds as f64,
        ours.cpu_per_1000(),
        theirs.cpu_per_1000(),
        percentile(&lateness, 50.0),
        percentile(&lateness, 99.0),
        max_bucket / mean_bucket.max(1e-9),
        ours.rss.0,
        ours.rss.1,
        theirs.rss.0,
        theirs.rss.1,
    );
    println!("\n{table}");
    let json = json!({
        "monitors": monitors, "seconds": seconds,
        "monivault": {"checks_per_second": ours.checks as f64 / seconds as f64,
                      "cpu_seconds_per_1000": ours.cpu_per_1000(),
                      "jitter_p50_ms": percentile(&lateness, 50.0),
                      "jitter_p99_ms": percentile(&lateness, 99.0),
                      "largest_bucket_over_mean": max_bucket / mean_bucket.max(1e-9),
                      "rss_mib": ours.rss.0, "rss_peak_mib": ours.rss.1},
        "blackbox_exporter": {"probes_per_second": theirs.checks as f64 / seconds as f64,
                              "cpu_seconds_per_1000": theirs.cpu_per_1000(),
                              "rss_mib": theirs.rss.0, "rss_peak_mib": theirs.rss.1},
        "cpu_ratio": ratio,
    });
    std::fs::write(
        dir.join("runner.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write runner.json");
    assert!(
        ours.checks > 0 && theirs.checks > 0,
        "both measured something"
    );
}
