//! Admission latency on the local control plane: `Monitor` updates that name 3 vault
//! items, from 50 concurrent clients, with monivault's webhooks registered (mutating:
//! authorization by SubjectAccessReview and the stamp; validating: the stamp check), first
//! with the access review cache off (`--access-review-cache-ttl 0s`), then on (the default
//! 10 s), then unregistered, all in the same run. The ratios are the overhead the webhooks
//! add.
//!
//! Not part of the test suite. Run it with:
//!
//! ```sh
//! cargo test --release --test bench_admission -- --ignored --nocapture
//! ```
//!
//! `MONIVAULT_BENCH_CLIENTS` (50) and `MONIVAULT_BENCH_UPDATES` (20 per client per round)
//! set the load. The clients act as a user who holds `use` on the items' section through
//! RBAC, so every review goes through the RBAC authorizer as a real user's would.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use monivault::api::Monitor;
use monivault::api::vault_item::VaultItem;
use monivault::api::vault_section::VaultSection;
use monivault::stamp::STAMP_ANNOTATION;
use serde_json::json;
use support::{Operator, cluster, eventually, http_get};

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One round: every client updates its own monitor `updates` times, one request at a
/// time; all clients at once. Returns every request's latency, sorted.
async fn round(
    client: &Client,
    ns: &str,
    clients: usize,
    updates: usize,
    tag: &str,
) -> Vec<Duration> {
    let tasks = (0..clients).map(|c| {
        let monitors: Api<Monitor> = Api::namespaced(client.clone(), ns);
        let tag = tag.to_owned();
        async move {
            let mut latencies = Vec::with_capacity(updates);
            for u in 0..updates {
                let patch = Patch::Merge(json!({"spec": {
                    "url": format!("https://shop.example.com/login?{tag}={u}"),
                }}));
                let start = Instant::now();
                monitors
                    .patch(&format!("m{c:03}"), &PatchParams::default(), &patch)
                    .await
                    .unwrap_or_else(|e| panic!("update m{c:03}: {e}"));
                latencies.push(start.elapsed());
            }
            latencies
        }
    });
    let mut all: Vec<Duration> = join_all(tasks).await.into_iter().flatten().collect();
    all.sort();
    all
}

/// Per webhook, the operator's own decision time: (sum of seconds, count), from /metrics.
async fn decision_seconds(op: &Operator) -> BTreeMap<String, (f64, f64)> {
    let (_, text) = http_get(op.ops_addr().await, "/metrics")
        .await
        .expect("metrics");
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("monivault_admission_duration_seconds_") else {
            continue;
        };
        let (what, rest) = rest.split_once("{webhook=\"").unwrap_or(("", ""));
        let Some((webhook, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let entry = out.entry(webhook.to_owned()).or_default();
        match what {
            "sum" => entry.0 = value,
            "count" => entry.1 = value,
            _ => {}
        }
    }
    out
}

/// Updates monitor `m000` until `done(stamp before, stamp after)` holds for one update.
async fn until_an_update(
    probe: &Api<Monitor>,
    what: &str,
    done: impl Fn(Option<String>, Option<String>) -> bool,
) {
    let stamp_of = |m: &Monitor| m.annotations().get(STAMP_ANNOTATION).cloned();
    let mut n = 0;
    eventually(what, || {
        n += 1;
        let (probe, url) = (probe.clone(), format!("https://shop.example.com/probe?{n}"));
        let done = &done;
        async move {
            let old = probe.get("m000").await.ok()?;
            let patch = Patch::Merge(json!({"spec": {"url": url}}));
            let new = probe
                .patch("m000", &PatchParams::default(), &patch)
                .await
                .ok()?;
            done(stamp_of(&old), stamp_of(&new)).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo test --release --test bench_admission -- --ignored --nocapture"]
async fn admission_latency_with_and_without_the_webhooks() {
    let clients = count("MONIVAULT_BENCH_CLIENTS", 50);
    let updates = count("MONIVAULT_BENCH_UPDATES", 20);
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("bench-adm").await;
    let store_ns = c.temp_namespace("bench-adm-store").await;

    // The user: edit on monivault's resources, `use` on the section.
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
    let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec!["monivault.io".into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    let role = Role {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            rule(&["monitors"], &["get", "list", "create", "update", "patch"]),
            PolicyRule {
                resource_names: Some(vec!["checkout".into()]),
                ..rule(&["vaultsections"], &["use"])
            },
        ]),
    };
    roles.create(&PostParams::default(), &role).await.unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "bench".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            name: "bench-user".into(),
            namespace: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let op =
        Operator::start_with_webhooks_and(c, &store_ns, &ns, &["--access-review-cache-ttl", "0s"]);
    let section: VaultSection = serde_json::from_value(json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
        "metadata": {"name": "checkout"}, "spec": {},
    }))
    .unwrap();
    Api::<VaultSection>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &section)
        .await
        .unwrap();
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    for (i, name) in ["login", "token-a", "token-b"].into_iter().enumerate() {
        let item: VaultItem = if i == 0 {
            serde_json::from_value(json!({
                "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
                "metadata": {"name": name},
                "spec": {"type": "CredentialSet", "section": "checkout",
                         "allowedHosts": ["shop.example.com"],
                         "credentialSet": {"username": "bot", "password": "bench-Pa55word-1"}},
            }))
        } else {
            serde_json::from_value(json!({
                "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
                "metadata": {"name": name},
                "spec": {"type": "Secret", "section": "checkout",
                         "allowedHosts": ["shop.example.com"],
                         "secret": {"value": format!("bench-token-{i}")}},
            }))
        }
        .unwrap();
        let items = items.clone();
        eventually("the webhook to seal an item", || {
            let (items, item) = (items.clone(), item.clone());
            async move { items.create(&PostParams::default(), &item).await.ok() }
        })
        .await;
    }
    let admin_monitors: Api<Monitor> = Api::namespaced(admin.clone(), &ns);
    for m in 0..clients {
        let monitor: Monitor = serde_json::from_value(json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
            "metadata": {"name": format!("m{m:03}")},
            "spec": {
                "url": "https://shop.example.com/login",
                "auth": {"basic": {"credentialSet": "login"}},
                "headers": [
                    {"name": "X-Token-A", "value": "{{@VaultItem.token-a.Value}}"},
                    {"name": "X-Token-B", "value": "{{@VaultItem.token-b.Value}}"},
                ],
            },
        }))
        .unwrap();
        admin_monitors
            .create(&PostParams::default(), &monitor)
            .await
            .unwrap();
    }

    let user = c.user("bench-user", &[]).await;
    // Warm-up: connections, caches, JIT-free but not cold.
    round(&user, &ns, clients, 2, "warm").await;
    let stamp_of = |m: &Monitor| m.annotations().get(STAMP_ANNOTATION).cloned();
    let before = admin_monitors.get("m000").await.unwrap();
    let decisions_before_off = decision_seconds(&op).await;
    let with_off = round(&user, &ns, clients, updates, "off").await;
    let decisions_off = decision_seconds(&op).await;
    let after = admin_monitors.get("m000").await.unwrap();
    assert_ne!(stamp_of(&before), stamp_of(&after), "the webhooks stamped");

    // The same operator, with the access review cache on (its default TTL).
    drop(op);
    let op = Operator::start_with_webhooks(c, &store_ns, &ns);
    let probe: Api<Monitor> = Api::namespaced(user.clone(), &ns);
    until_an_update(&probe, "the restarted webhooks to stamp", |old, new| {
        new.is_some() && old != new
    })
    .await;
    round(&user, &ns, clients, 2, "warm-on").await;
    let before = admin_monitors.get("m000").await.unwrap();
    let decisions_before = decision_seconds(&op).await;
    let with = round(&user, &ns, clients, updates, "with").await;
    let decisions = decision_seconds(&op).await;
    let after = admin_monitors.get("m000").await.unwrap();
    assert_ne!(stamp_of(&before), stamp_of(&after), "the webhooks stamped");

    // Unregister, and wait until the API server no longer calls them: an update that
    // leaves the stamp as it was.
    let dp = DeleteParams::default();
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .delete(&store_ns, &dp)
        .await
        .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .delete(&store_ns, &dp)
        .await
        .unwrap();
    until_an_update(
        &probe,
        "the API server to stop calling the webhooks",
        |old, new| old == new,
    )
    .await;
    round(&user, &ns, clients, 2, "warm2").await;
    let without = round(&user, &ns, clients, updates, "without").await;

    let (p50f, p99f) = (percentile(&with_off, 0.50), percentile(&with_off, 0.99));
    let (p50w, p99w) = (percentile(&with, 0.50), percentile(&with, 0.99));
    let (p50n, p99n) = (percentile(&without, 0.50), percentile(&without, 0.99));
    println!(
        "admission of a Monitor update naming 3 vault items, {clients} concurrent clients, {} updates per round:",
        with.len()
    );
    println!(
        "  webhooks, review cache off: p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(p50f),
        ms(p99f)
    );
    println!(
        "  webhooks, review cache on:  p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(p50w),
        ms(p99w)
    );
    println!(
        "  webhooks unregistered:      p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(p50n),
        ms(p99n)
    );
    for (label, after, before) in [
        ("cache off", &decisions_off, &decisions_before_off),
        ("cache on", &decisions, &decisions_before),
    ] {
        for (webhook, (sum, count)) in after {
            let (sum0, count0) = before.get(webhook).copied().unwrap_or_default();
            if count - count0 > 0.0 {
                println!(
                    "  inside monivault ({label}), {webhook}: mean {:.2} ms over {} requests",
                    (sum - sum0) / (count - count0) * 1000.0,
                    count - count0
                );
            }
        }
    }
    for (label, p50, p99) in [("cache off", p50f, p99f), ("cache on", p50w, p99w)] {
        println!(
            "  ratio ({label} / unregistered): p50 {:.2}x   p99 {:.2}x; added p50 {:.2} ms",
            ms(p50) / ms(p50n),
            ms(p99) / ms(p99n),
            ms(p50) - ms(p50n),
        );
    }
}
