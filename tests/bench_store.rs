//! Store benchmark on the local control plane, as ratios against the physical limit of
//! this store: the same number of plain Secrets of the same size, written through the
//! same API server from one client, in the same run.
//!
//! Not part of the test suite (it takes minutes). Run it with:
//!
//! ```sh
//! cargo test --release --test bench_store -- --ignored --nocapture
//! ```
//!
//! `MONIVAULT_BENCH_ITEMS` (default 1000) sets the item count, `MONIVAULT_BENCH_RSS_ITEMS`
//! (default 10000, 0 to skip) the count at which the operator's memory is read.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use monivault::api::condition::{READY, find_condition};
use monivault::api::vault_item::VaultItem;
use monivault::api::vault_section::VaultSection;
use monivault::crypto::{SealBinding, SealingPublicKey, seal};

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (VmRSS, VmHWM) of `pid` in KiB. Panics if they cannot be read: a figure of 0 would
/// pass for a measurement.
fn rss_kib(pid: u32) -> (u64, u64) {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the operator's memory from {path}: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .filter(|kib| *kib > 0)
            .unwrap_or_else(|| {
                panic!("{path} has no {name} line with a size in KiB (has the process exited?)")
            })
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn the_memory_reader_reads_a_live_process_and_refuses_a_missing_one() {
    let (rss, hwm) = rss_kib(std::process::id());
    assert!(rss > 0 && hwm >= rss, "VmRSS {rss} KiB, VmHWM {hwm} KiB");
    let missing = std::panic::catch_unwind(|| rss_kib(u32::MAX));
    assert!(missing.is_err(), "no process has pid {}", u32::MAX);
}

fn item(name: &str, sealed: &str) -> VaultItem {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": name},
        "spec": {"type": "Secret", "section": "bench", "allowedHosts": ["api.example.com"],
                 "secret": {"value": "*****"}, "sealed": {"value": sealed}}
    }))
    .expect("item")
}

async fn ready_count(items: &Api<VaultItem>) -> usize {
    let list = items
        .list(&ListParams::default())
        .await
        .expect("list items");
    list.items
        .iter()
        .filter(|i| {
            i.status
                .as_ref()
                .and_then(|s| find_condition(&s.conditions, READY))
                .is_some_and(|c| c.status == "True")
        })
        .count()
}

async fn wait_ready(items: &Api<VaultItem>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while ready_count(items).await < n {
        assert!(Instant::now() < deadline, "items did not become Ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
#[ignore = "a benchmark: run it explicitly"]
async fn store_throughput_against_plain_secrets() {
    let n = count("MONIVAULT_BENCH_ITEMS", 1000);
    let rss_items = count("MONIVAULT_BENCH_RSS_ITEMS", 10_000);
    let c = support::cluster();
    let admin = c.admin().await;

    // Seal once, before any timing: sealing is the user's side, offline.
    let ns = c.temp_namespace("bench-items").await;
    let store_ns = c.temp_namespace("bench-store").await;
    let operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_monivault"))
            .args(["run", "--namespace", &store_ns, "--watch-namespace", &ns])
            .env("KUBECONFIG", c.var("KUBECONFIG"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the operator"),
    );
    let sections: Api<VaultSection> = Api::namespaced(admin.clone(), &ns);
    let section: VaultSection = serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
        "metadata": {"name": "bench"}, "spec": {}
    }))
    .expect("section");
    sections
        .create(&PostParams::default(), &section)
        .await
        .expect("section");
    let key_text = loop {
        if let Some(k) = sections
            .get("bench")
            .await
            .ok()
            .and_then(|s| s.status?.sealing_public_key)
        {
            break k;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let public_key = SealingPublicKey::parse(&key_text).expect("key");
    let total = n.max(rss_items);
    let sealed: Vec<String> = (0..total)
        .map(|i| {
            let name = format!("item-{i:05}");
            let binding = SealBinding {
                namespace: &ns,
                section: "bench",
                item_type: "Secret",
                item: &name,
                field: "value",
            };
            seal(
                &public_key,
                &binding,
                format!("bench-secret-{i:05}-0123456789abcdef").as_bytes(),
            )
            .expect("seal")
        })
        .collect();
    let object_size = serde_json::to_vec(&item("item-00000", &sealed[0]))
        .expect("json")
        .len();

    // Baseline: plain Secrets of the item's size, created then updated one by one.
    let raw_ns = c.temp_namespace("bench-raw").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &raw_ns);
    let payload = |i: usize| {
        BTreeMap::from([(
            "value".to_owned(),
            ByteString(format!("{i:05}{}", "x".repeat(object_size)).into_bytes()),
        )])
    };
    let t = Instant::now();
    for i in 0..n {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(format!("raw-{i:05}")),
                ..ObjectMeta::default()
            },
            data: Some(payload(i)),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("create Secret");
    }
    let raw_create = t.elapsed();
    let t = Instant::now();
    for i in 0..n {
        let patch =
            serde_json::json!({"data": {"value": ByteString(format!("u{i:05}").into_bytes())}});
        secrets
            .patch(
                &format!("raw-{i:05}"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("update Secret");
    }
    let raw_update = t.elapsed();

    // Ingest: create the items from one client, until every one is Ready.
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    let t = Instant::now();
    for (i, s) in sealed.iter().enumerate().take(n) {
        items
            .create(&PostParams::default(), &item(&format!("item-{i:05}"), s))
            .await
            .expect("create item");
    }
    wait_ready(&items, n).await;
    let ingest = t.elapsed();

    // Data key rotation over the same items, until every record is on the new key and
    // the old key is destroyed.
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args([
            "rotate",
            "data-key",
            "--namespace",
            &store_ns,
            "--environment",
            &ns,
            "--wait",
            "--reencrypt-rate",
            "1000000",
            // Measure re-encryption, not the safety wait before the old key goes.
            "--data-key-retire-grace",
            "0s",
        ])
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        .output()
        .expect("run monivault rotate");
    let rotate = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    println!("\n== store benchmark: {n} items, objects of {object_size} bytes ==");
    println!(
        "create {n} Secrets (baseline): {:>8.2} s",
        raw_create.as_secs_f64()
    );
    println!(
        "ingest {n} VaultItems:         {:>8.2} s  ratio {:.2}x",
        ingest.as_secs_f64(),
        ingest.as_secs_f64() / raw_create.as_secs_f64()
    );
    println!(
        "update {n} Secrets (baseline): {:>8.2} s",
        raw_update.as_secs_f64()
    );
    println!(
        "rotate data key over {n}:      {:>8.2} s  ratio {:.2}x",
        rotate.as_secs_f64(),
        rotate.as_secs_f64() / raw_update.as_secs_f64()
    );

    if rss_items > n {
        futures::stream::iter(n..rss_items)
            .map(|i| {
                let items = items.clone();
                let s = sealed[i].clone();
                async move {
                    items
                        .create(&PostParams::default(), &item(&format!("item-{i:05}"), &s))
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await
            .expect("create items");
        wait_ready(&items, rss_items).await;
        let (rss, hwm) = rss_kib(operator.0.id());
        println!(
            "operator memory with {rss_items} items: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
}
