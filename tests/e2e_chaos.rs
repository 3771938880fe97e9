//! Chaos on the real control plane (issue 14 §5): the operator SIGKILLed in the middle of
//! an ingest burst, a leader paused (SIGSTOP) past its Lease while a follower takes over,
//! etcd compacted and the kube-apiserver crashed under the operator's watches so they
//! expire (410 Gone), and the webhook killed with writes in flight. Each ends with the same audit of the store: one record per live item, bound to
//! its uid and opening to the plaintext the test last sealed; no record without its item;
//! every item Ready on its current generation; and no plaintext anywhere in etcd.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use monivault::api::condition::{READY, find_condition};
use monivault::api::vault_item::VaultItem;
use monivault::api::vault_section::VaultSection;
use monivault::controller::leader::LEASE_NAME;
use monivault::crypto::{ItemBinding, Keyring, SealBinding, SealingPublicKey, seal};
use monivault::store::{SecretStore, Store};
use support::{Cluster, Operator, cluster, credential_set, section_public_key};

/// The chaos tests start and stop operators and bursts of writes on a 2-core machine, and
/// one restarts the kube-apiserver every test of this binary talks to: they take turns.
/// (Test binaries run one after another, so no other binary's tests see that restart.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small seeded generator (SplitMix64): the chaos moments are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low))
    }
}

async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `signal` (e.g. `STOP`, `CONT`) to a process, as an operator would with `kill`.
fn signal(operator: &Operator, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(operator.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

/// A test's world: the items' namespace, the store's, and the plaintext each live item
/// was last sealed with. Removes what it created when dropped, even after a failure.
struct World {
    ns: String,
    store_ns: String,
    admin: Client,
    store: SecretStore,
    public_key: Option<SealingPublicKey>,
    plaintexts: BTreeMap<String, String>,
    /// Every plaintext the test ever sealed, for the etcd scan.
    every_plaintext: Vec<String>,
}

impl World {
    async fn new(c: &Cluster, prefix: &str) -> World {
        let admin = c.admin().await;
        let ns = c.temp_namespace(prefix).await;
        let store_ns = c.temp_namespace(&format!("{prefix}-store")).await;
        World {
            store: SecretStore::new(admin.clone(), &store_ns),
            ns,
            store_ns,
            admin,
            public_key: None,
            plaintexts: BTreeMap::new(),
            every_plaintext: Vec::new(),
        }
    }

    fn items(&self) -> Api<VaultItem> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Creates the section (an operator must be running) and remembers its sealing key.
    async fn section(&mut self) {
        self.public_key = Some(section_public_key(&self.admin, &self.ns).await);
    }

    /// A fresh plaintext sealed for `item`, remembered as its current one.
    fn seal_new(&mut self, item: &str) -> String {
        let plaintext = support::secret("chaos-pw");
        let binding = SealBinding {
            namespace: &self.ns,
            section: "checkout",
            item_type: "CredentialSet",
            item,
            field: "password",
        };
        let key = self.public_key.as_ref().expect("the section's key");
        let sealed = seal(key, &binding, plaintext.as_bytes()).expect("seal");
        self.every_plaintext.push(plaintext.clone());
        self.plaintexts.insert(item.to_owned(), plaintext);
        sealed
    }

    /// Creates `names` as sealed items, 16 at a time.
    async fn create_items(&mut self, names: &[String]) {
        let items = self.items();
        let made: Vec<VaultItem> = names
            .iter()
            .map(|name| credential_set(name, &self.seal_new(name)))
            .collect();
        futures::stream::iter(made)
            .map(|item| {
                let items = items.clone();
                async move {
                    items
                        .create(&PostParams::default(), &item)
                        .await
                        .unwrap_or_else(|e| panic!("create {}: {e}", item.name_any()));
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
    }

    /// Replaces each item's sealed password with a fresh one (a new generation).
    async fn reseal_items(&mut self, names: &[String]) {
        let items = self.items();
        for name in names {
            let sealed = self.seal_new(name);
            items
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"sealed": {"password": sealed}}})),
                )
                .await
                .unwrap_or_else(|e| panic!("reseal {name}: {e}"));
        }
    }

    async fn delete_items(&mut self, names: &[String]) {
        let items = self.items();
        for name in names {
            items
                .delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("delete {name}: {e}"));
            self.plaintexts.remove(name);
        }
    }

    async fn keyring(&self) -> Keyring {
        self.store
            .environment(&self.ns)
            .await
            .expect("read the environment's keys")
            .expect("the environment's keys")
            .value
    }

    async fn record_count(&self) -> usize {
        self.store
            .list_records()
            .await
            .expect("list records")
            .items
            .len()
    }

    /// Every live item Ready on its current generation: `None` until then.
    async fn all_ready(&self) -> Option<usize> {
        let list = self.items().list(&ListParams::default()).await.ok()?;
        let live: Vec<&VaultItem> = list
            .items
            .iter()
            .filter(|i| i.metadata.deletion_timestamp.is_none())
            .collect();
        let names: BTreeSet<String> = list.items.iter().map(|i| i.name_any()).collect();
        let expected: BTreeSet<String> = self.plaintexts.keys().cloned().collect();
        // Deleted items must be gone, finalizer and all, not merely terminating.
        if names != expected {
            return None;
        }
        live.iter()
            .all(|item| {
                let Some(status) = item.status.as_ref() else {
                    return false;
                };
                find_condition(&status.conditions, READY).is_some_and(|r| r.status == "True")
                    && status.observed_generation == item.metadata.generation
            })
            .then_some(live.len())
    }

    /// The audit: exactly one record per live item (none orphaned, none missing), bound
    /// to its uid, on the data key its status names, opening to the plaintext the test
    /// sealed last; and every item Ready on its current generation.
    async fn assert_store_matches_items(&self) {
        let roots = self
            .store
            .root_keys()
            .await
            .expect("read root keys")
            .expect("root key Secret")
            .value;
        let keyring = self.keyring().await;
        let root = roots
            .key(keyring.root_key_version)
            .expect("the root key Secret holds the keyring's root key");
        let items: BTreeMap<String, VaultItem> = self
            .items()
            .list(&ListParams::default())
            .await
            .expect("list items")
            .items
            .into_iter()
            .map(|item| (item.name_any(), item))
            .collect();
        let listing = self.store.list_records().await.expect("list records");
        assert!(listing.unreadable.is_empty(), "{:?}", listing.unreadable);
        let records: BTreeMap<String, _> = listing
            .items
            .into_iter()
            .map(|(key, record)| {
                assert_eq!(key.namespace, self.ns, "a record of another namespace");
                (key.name, record.value)
            })
            .collect();
        let item_names: BTreeSet<&String> = items.keys().collect();
        let record_names: BTreeSet<&String> = records.keys().collect();
        let expected: BTreeSet<&String> = self.plaintexts.keys().collect();
        assert_eq!(
            item_names, expected,
            "the items are not the ones the test left"
        );
        let orphaned: Vec<_> = record_names.difference(&item_names).collect();
        assert!(orphaned.is_empty(), "records without an item: {orphaned:?}");
        let missing: Vec<_> = item_names.difference(&record_names).collect();
        assert!(missing.is_empty(), "items without a record: {missing:?}");
        for (name, item) in &items {
            let record = &records[name];
            let uid = item.uid().expect("uid");
            assert_eq!(record.uid, uid, "{name}'s record is bound to another item");
            let status = item.status.as_ref().expect("status");
            let ready = find_condition(&status.conditions, READY).expect("Ready");
            assert_eq!(ready.status, "True", "{name}: {}", ready.message);
            assert_eq!(
                status.observed_generation, item.metadata.generation,
                "{name}'s status is not about its current spec"
            );
            assert_eq!(
                status.key_version,
                Some(record.key_version),
                "{name}'s status names another data key than its record"
            );
            let opened = keyring
                .decrypt(
                    &root,
                    &ItemBinding {
                        namespace: &self.ns,
                        item: name,
                        uid: &uid,
                        field: "password",
                    },
                    &record.fields["password"],
                )
                .unwrap_or_else(|e| panic!("{name}'s record does not open: {e}"));
            assert_eq!(
                opened.expose(),
                self.plaintexts[name].as_bytes(),
                "{name}'s record holds an older plaintext than its spec"
            );
        }
    }

    fn assert_no_plaintext_in_etcd(&self, c: &Cluster) {
        let all: Vec<&str> = self.every_plaintext.iter().map(String::as_str).collect();
        assert!(!all.is_empty());
        c.assert_not_in_etcd(&all);
    }
}

impl Drop for World {
    /// Best effort, also after a failure: the items lose their finalizer (their operator
    /// may be dead), then everything the test made goes. No kube-controller-manager runs
    /// here, so a namespace's contents are deleted explicitly.
    fn drop(&mut self) {
        let (ns, store_ns) = (self.ns.clone(), self.store_ns.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            runtime.block_on(remove_everything(&ns, &store_ns));
        });
        let _ = cleanup.join();
    }
}

async fn remove_everything(ns: &str, store_ns: &str) {
    use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
    use monivault::api::monitor::Monitor;
    let admin = cluster().admin().await;
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), ns);
    let unhook = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    if let Ok(list) = items.list(&ListParams::default()).await {
        futures::stream::iter(list.items)
            .map(|item| {
                let (items, unhook) = (items.clone(), &unhook);
                async move {
                    let _ = items
                        .patch(&item.name_any(), &PatchParams::default(), unhook)
                        .await;
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
    }
    let (all, lp) = (DeleteParams::default(), ListParams::default());
    let _ = items.delete_collection(&all, &lp).await;
    let monitors: Api<Monitor> = Api::namespaced(admin.clone(), ns);
    let _ = monitors.delete_collection(&all, &lp).await;
    let sections: Api<VaultSection> = Api::namespaced(admin.clone(), ns);
    let _ = sections.delete_collection(&all, &lp).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), store_ns);
    let _ = secrets.delete_collection(&all, &lp).await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), store_ns);
    let _ = leases.delete_collection(&all, &lp).await;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for name in [ns, store_ns] {
        let events: Api<Event> = Api::namespaced(admin.clone(), name);
        let _ = events.delete_collection(&all, &lp).await;
        let _ = namespaces.delete(name, &all).await;
        // The namespace controller would finish this; none runs here. Its contents are
        // gone, so the namespace may go too.
        let finalized = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name}, "spec": {"finalizers": []}
        });
        let _ = namespaces
            .replace_subresource("finalize", name, &PostParams::default(), &finalized)
            .await;
    }
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:03}")).collect()
}

/// The operator of the kill test: one fixed identity, so a restart takes the Lease over
/// at once, as a pod restarted under its name does; the hand-over is not under test here.
fn ingest_operator(c: &Cluster, w: &World) -> Operator {
    Operator::start_with(
        c,
        &w.store_ns,
        &w.ns,
        &[
            "--instance",
            "chaos-ingest",
            "--lease-duration-seconds",
            "15",
            "--lease-renew-seconds",
            "2",
        ],
    )
}

const BURST: usize = 150;
const KILLS: usize = 5;

/// The operator is SIGKILLed five times, each a random moment after its new life began
/// storing a fresh wave of items; while it is dead, items are deleted (their finalizer
/// waits for the next life) and resealed. Afterwards the store holds exactly one record
/// per item, none orphaned, each opening to the item's latest plaintext.
#[tokio::test]
async fn operator_killed_during_an_ingest_burst_leaves_one_record_per_item_and_every_item_ready() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let mut w = World::new(c, "chaos-kill").await;
    let mut operator = ingest_operator(c, &w);
    w.section().await;

    // The burst: 150 items, in waves of 30, each wave into a new operator's life.
    let all = names("burst", 0..BURST);
    let mut rng = Rng(0x5EED_C0A5);
    let mut kills_in_flight = 0;
    let mut seen = Vec::new();
    let mut created = 0;
    let begun = Instant::now();
    for kill in 0..KILLS {
        // Once the (restarted) operator is the leader, a wave of items arrives, and the
        // kill comes a random moment later: into the wave's ingest and the backlog's.
        let started = Instant::now();
        while !operator.stderr().contains("acquired the leader lease") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the operator did not take the lease:\n{}",
                operator.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wave = (BURST / KILLS).min(BURST - created);
        w.create_items(&all[created..created + wave]).await;
        created += wave;
        wait_until(
            Duration::from_secs(30),
            "the operator to store items",
            || async { (operator.stderr().matches("stored item").count() >= 3).then_some(()) },
        )
        .await;
        tokio::time::sleep(rng.millis(0, 150)).await;
        operator.kill();
        let records = w.record_count().await;
        let live = w.plaintexts.len();
        if records > 0 && records < live {
            kills_in_flight += 1;
        }
        seen.push((records, live));
        // While it is dead: some items go (their finalizer holds them until a restarted
        // operator removes their records), and some get a new sealed value.
        if kill == 1 {
            w.delete_items(&all[0..10]).await;
        }
        if kill == 3 {
            w.reseal_items(&all[10..20]).await;
            w.delete_items(&all[20..25]).await;
        }
        operator = ingest_operator(c, &w);
    }
    eprintln!(
        "records/live items at each kill: {seen:?} ({:?})",
        begun.elapsed()
    );
    assert!(
        kills_in_flight >= KILLS / 2,
        "too few kills landed while items were still being ingested: {seen:?}"
    );

    let ready = wait_until(Duration::from_secs(90), "every item Ready", || {
        w.all_ready()
    })
    .await;
    eprintln!("all Ready after {:?}", begun.elapsed());
    assert_eq!(ready, BURST - 15);
    w.assert_store_matches_items().await;
    assert!(
        operator.is_running(),
        "the operator died:\n{}",
        operator.stderr()
    );
    w.assert_no_plaintext_in_etcd(c);
}

/// A replica of the paused-leader test: a 4 s Lease renewed every second, a rotation
/// check every second, and a re-encryption slow enough (5 records/s) that the pause lands
/// in the middle of one.
fn replica(c: &Cluster, w: &World, instance: &str) -> Operator {
    Operator::start_with(
        c,
        &w.store_ns,
        &w.ns,
        &[
            "--instance",
            instance,
            "--lease-duration-seconds",
            "4",
            "--lease-renew-seconds",
            "1",
            "--rotation-check-interval",
            "1s",
            "--reencrypt-rate",
            "5",
            "--data-key-retire-grace",
            "1s",
        ],
    )
}

async fn lease_holder(w: &World) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(w.admin.clone(), &w.store_ns);
    leases
        .get_opt(LEASE_NAME)
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn wait_for_holder(w: &World, instance: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("{instance} to hold the lease"),
        || async { (lease_holder(w).await.as_deref() == Some(instance)).then_some(()) },
    )
    .await;
}

fn rfc3339_now() -> String {
    // Milliseconds, rounded down: key times count milliseconds.
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    k8s_openapi::jiff::Timestamp::from_millisecond(now)
        .expect("a valid time")
        .to_string()
}

/// Records still on a data key older than the current one.
async fn records_on_old_keys(w: &World) -> usize {
    let current = w
        .keyring()
        .await
        .environment(&w.ns)
        .expect("environment")
        .current_data_key;
    w.store
        .list_records()
        .await
        .expect("list records")
        .items
        .iter()
        .filter(|(_, r)| r.value.key_version != current)
        .count()
}

/// One status as a watch saw it: the item, its generation then, and what the status said.
#[derive(Debug, Clone, PartialEq)]
struct SeenStatus {
    item: String,
    generation: Option<i64>,
    observed: Option<i64>,
    key_version: Option<u32>,
}

/// How the old leader is fenced once it resumes (see `src/controller/leader.rs`):
///
/// - The Lease itself: kube-lease-manager re-reads the Lease once its own idea of the
///   expiry has passed (it has, after a pause longer than the Lease), sees another holder
///   and does not write it. monivault's watchdog reads the Lease every renew period, and
///   the library's channel flips: either makes the process exit ("lost the leader Lease").
/// - Until it exits (at least one renew period, plus the read), its loops run on with
///   what they held when paused. Their writes are fenced by compare-and-swap: a record
///   is written at the resourceVersion it was read at (`Store::put_record`), so a stale
///   ingest or re-encryption conflicts instead of rolling a record back; the keyring is
///   changed only by `update_environment` (CAS, decided from the keyring read); and a
///   rotation request is honoured only while the current key is older than it, so the
///   resumed leader's check finds the follower's new key and rotates nothing.
/// - Item and section statuses are server-side applies that carry the resourceVersion the
///   reconcile read (`controller::apply_status`), so a status computed before the pause
///   conflicts once the follower has written a newer one. Without that precondition this
///   test failed 2 runs in 4: the resumed leader wrote `observedGeneration: 2` over the
///   follower's status for generation 3. The test watches every status written from the
///   moment the old leader resumes, and fails on one about an older generation or an
///   older data key than the follower had already written.
#[tokio::test]
async fn paused_leader_resumes_after_a_takeover_without_double_rotation_or_rolled_back_records() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let mut w = World::new(c, "chaos-pause").await;
    let mut alpha = replica(c, &w, "chaos-alpha");
    wait_for_holder(&w, "chaos-alpha").await;
    let mut beta = replica(c, &w, "chaos-beta");
    w.section().await;
    let all = names("item", 0..40);
    w.create_items(&all).await;
    wait_until(Duration::from_secs(60), "every item Ready", || {
        w.all_ready()
    })
    .await;

    // A data key rotation, requested once; alpha starts re-encrypting 5 records a second.
    let sections: Api<VaultSection> = Api::namespaced(w.admin.clone(), &w.ns);
    sections
        .patch(
            "checkout",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {
                    monivault::controller::rotation::ROTATE_ANNOTATION:
                        format!("data-key@{}", rfc3339_now())
                }}
            })),
        )
        .await
        .expect("request a data key rotation");
    wait_until(Duration::from_secs(30), "alpha to re-encrypt", || async {
        let log = alpha.stderr();
        let current = w.keyring().await.environment(&w.ns).ok()?.current_data_key;
        (current == 2 && log.contains("re-encrypting records")).then_some(())
    })
    .await;
    // Items change under alpha's feet, and it is paused with that work in flight.
    w.reseal_items(&all[0..8]).await;
    signal(&alpha, "STOP");
    let old_at_pause = records_on_old_keys(&w).await;
    eprintln!("paused alpha with {old_at_pause} of 40 records still on data key 1");
    assert!(old_at_pause > 0, "the pause came after the re-encryption");

    // While alpha sleeps: the same items change again, others change, come and go.
    w.reseal_items(&all[0..12]).await;
    w.create_items(&names("late", 0..5)).await;
    w.delete_items(&all[35..40]).await;
    wait_for_holder(&w, "chaos-beta").await;
    wait_until(
        Duration::from_secs(60),
        "beta to finish the rotation and the changes",
        || async {
            let env = w.keyring().await.environment(&w.ns).ok()?.clone();
            let retired = env.data_keys.keys().copied().collect::<Vec<_>>() == [2];
            (retired && records_on_old_keys(&w).await == 0 && w.all_ready().await.is_some())
                .then_some(())
        },
    )
    .await;
    w.assert_store_matches_items().await;
    let records_before: BTreeMap<String, String> = w
        .store
        .list_records()
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|(key, record)| (key.name, record.resource_version))
        .collect();

    // From now on every status written is seen, in order.
    let observed_before: BTreeMap<String, Option<i64>> = w
        .items()
        .list(&ListParams::default())
        .await
        .expect("list items")
        .items
        .iter()
        .map(|i| {
            (
                i.name_any(),
                i.status.as_ref().and_then(|s| s.observed_generation),
            )
        })
        .collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (items, seen) = (w.items(), seen.clone());
        tokio::spawn(async move {
            let stream = kube::runtime::watcher(items, kube::runtime::watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let Ok(kube::runtime::watcher::Event::Apply(item)) = event else {
                    continue;
                };
                let status = item.status.clone().unwrap_or_default();
                seen.lock().expect("seen").push(SeenStatus {
                    item: item.name_any(),
                    generation: item.metadata.generation,
                    observed: status.observed_generation,
                    key_version: status.key_version,
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_resume = alpha.stderr().len();
    signal(&alpha, "CONT");
    let (status, log) = alpha.exited().await;
    assert!(
        log.contains("lost the leader Lease"),
        "alpha did not see it had lost the lease ({status}):\n{log}"
    );
    let resumed = &log[before_resume..];
    eprintln!(
        "alpha after its pause: {} records stored, {} reconciles failed",
        resumed.matches("stored item").count(),
        resumed.matches("reconcile failed").count()
    );
    // Beta stays the leader and keeps working: a change after the resumption is ingested.
    w.reseal_items(&all[12..14]).await;
    wait_until(Duration::from_secs(30), "every item Ready", || {
        w.all_ready()
    })
    .await;
    watcher.abort();
    let seen = seen.lock().expect("seen").clone();
    let stale: Vec<&SeenStatus> = seen
        .iter()
        .filter(|s| {
            s.key_version != Some(2)
                || observed_before
                    .get(&s.item)
                    .is_some_and(|before| s.observed < *before)
        })
        .collect();
    eprintln!("{} item writes seen after the resumption", seen.len());
    assert!(
        stale.is_empty(),
        "a status older than the follower's was written after the old leader resumed: {stale:?}"
    );

    // No double rotation: the one request made exactly one new data key.
    let env = w.keyring().await.environment(&w.ns).expect("env").clone();
    assert_eq!(env.current_data_key, 2, "the request was honoured twice");
    assert_eq!(env.data_keys.keys().copied().collect::<Vec<_>>(), [2]);
    // No record lost or rolled back: only the two items changed since were rewritten.
    w.assert_store_matches_items().await;
    let rewritten: Vec<String> = w
        .store
        .list_records()
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|(key, record)| records_before.get(&key.name) != Some(&record.resource_version))
        .map(|(key, _)| key.name)
        .collect();
    assert_eq!(rewritten, all[12..14], "records written after the takeover");
    assert_eq!(lease_holder(&w).await.as_deref(), Some("chaos-beta"));
    assert!(beta.is_running(), "beta died:\n{}", beta.stderr());
    w.assert_no_plaintext_in_etcd(c);
}

/// The outcome of one Monitor write of the webhook test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Admitted,
    /// The API server could not reach the webhook (`failurePolicy: Fail`): nobody listened.
    Refused,
    /// The same, with the webhook dying while it handled the write.
    RefusedInFlight,
}

/// One worker's writes: it creates monitor `w<k>-<n>`, then changes its URL, then goes on
/// with `n + 1`, each URL unique, until `stop`. Returns (monitor, url, outcome) per write.
async fn monitor_writes(
    monitors: Api<monivault::api::monitor::Monitor>,
    worker: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    admitted: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<(String, String, Outcome)> {
    use std::sync::atomic::Ordering;
    let outcome = |result: Result<_, kube::Error>| match result {
        Ok(_) => Outcome::Admitted,
        Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => {
            if s.message.contains("connection refused") {
                Outcome::Refused
            } else {
                Outcome::RefusedInFlight
            }
        }
        // Anything else (a timeout, a conflict) is not what this test is about: fail.
        Err(e) => panic!("a monitor write failed otherwise: {e}"),
    };
    let mut writes = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("w{worker}-{n:03}");
        let url = format!("https://shop.example.com/{name}/created");
        let monitor: monivault::api::monitor::Monitor = serde_json::from_value(serde_json::json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
            "metadata": {"name": name},
            "spec": {"url": url, "auth": {"basic": {"credentialSet": "shop-login"}}},
        }))
        .expect("monitor");
        let created = outcome(monitors.create(&PostParams::default(), &monitor).await);
        writes.push((name.clone(), url, created));
        if created != Outcome::Admitted {
            // Nobody to ask: no need to hammer the API server meanwhile.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if created == Outcome::Admitted {
            admitted.fetch_add(1, Ordering::Relaxed);
            let url = format!("https://shop.example.com/{name}/updated");
            let patch = Patch::Merge(serde_json::json!({"spec": {"url": url}}));
            let updated = outcome(monitors.patch(&name, &PatchParams::default(), &patch).await);
            if updated == Outcome::Admitted {
                admitted.fetch_add(1, Ordering::Relaxed);
            }
            writes.push((name, url, updated));
        }
        n += 1;
    }
    writes
}

const WRITERS: usize = 4;
const WEBHOOK_KILLS: usize = 3;

#[tokio::test]
async fn webhook_killed_under_load_stores_only_stamped_monitors_and_refuses_the_rest() {
    use monivault::api::monitor::Monitor;
    use monivault::store::Keys;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let mut w = World::new(c, "chaos-webhook").await;
    let start = |w: &World| {
        Operator::start_with_webhooks_and(c, &w.store_ns, &w.ns, &["--instance", "chaos-webhook"])
    };
    let mut operator = start(&w);
    w.section().await;
    let sealed = w.seal_new("shop-login");
    w.items()
        .create(
            &PostParams::default(),
            &credential_set("shop-login", &sealed),
        )
        .await
        .expect("create the item");
    support::ready_condition(&w.items(), "shop-login", "True").await;
    let monitors: Api<Monitor> = Api::namespaced(w.admin.clone(), &w.ns);
    // The webhook serves once a monitor is admitted.
    let probe: Monitor = serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "probe"},
        "spec": {"url": "https://shop.example.com/probe",
                 "auth": {"basic": {"credentialSet": "shop-login"}}},
    }))
    .expect("monitor");
    wait_until(Duration::from_secs(30), "the webhook to serve", || async {
        monitors.create(&PostParams::default(), &probe).await.ok()
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..WRITERS)
        .map(|k| {
            tokio::spawn(monitor_writes(
                monitors.clone(),
                k,
                stop.clone(),
                admitted.clone(),
            ))
        })
        .collect();
    let mut rng = Rng(0x5EED_3EB0);
    for _ in 0..WEBHOOK_KILLS {
        // Writes flow through this webhook, then it dies in the middle of them; its
        // registration stays, pointing at nothing, until the next one re-registers.
        let before = admitted.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(30), "writes to be admitted", || async {
            (admitted.load(Ordering::Relaxed) >= before + 10).then_some(())
        })
        .await;
        tokio::time::sleep(rng.millis(0, 200)).await;
        operator.kill();
        tokio::time::sleep(rng.millis(300, 800)).await;
        // The harness's drop would remove the registration the successor makes: the
        // killed one has nothing left to clean.
        std::mem::forget(std::mem::replace(&mut operator, start(&w)));
    }
    let before = admitted.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(30),
        "writes to be admitted again",
        || async { (admitted.load(Ordering::Relaxed) >= before + 10).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut writes = Vec::new();
    for worker in workers {
        writes.extend(worker.await.expect("a writer"));
    }
    let count = |o: Outcome| writes.iter().filter(|(_, _, x)| *x == o).count();
    eprintln!(
        "{} monitor writes: {} admitted, {} refused (of which {} with the webhook dying in them)",
        writes.len(),
        count(Outcome::Admitted),
        count(Outcome::Refused) + count(Outcome::RefusedInFlight),
        count(Outcome::RefusedInFlight)
    );
    assert!(
        count(Outcome::RefusedInFlight) > 0,
        "no kill landed while the webhook handled a write: the kills proved little"
    );

    // Every stored monitor carries a stamp that matches its spec, and its spec is the
    // last write admitted for it; no refused write is stored.
    let keys = Keys::bootstrap(Arc::new(SecretStore::new(w.admin.clone(), &w.store_ns)))
        .await
        .expect("the operator's keys");
    let stored: BTreeMap<String, Monitor> = monitors
        .list(&ListParams::default())
        .await
        .expect("list monitors")
        .items
        .into_iter()
        .map(|m| (m.name_any(), m))
        .collect();
    let mut last_admitted: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, url, outcome) in &writes {
        if *outcome == Outcome::Admitted {
            last_admitted.insert(name, url);
        }
    }
    for (name, monitor) in &stored {
        monivault::stamp::verify(&keys, monitor)
            .await
            .unwrap_or_else(|e| panic!("{name} is stored without a valid stamp: {e}"));
        if name != "probe" {
            assert_eq!(
                last_admitted.get(name.as_str()).copied(),
                Some(monitor.spec.url.as_str()),
                "{name} is stored with a spec that was not the last admitted"
            );
        }
    }
    let stored_names: BTreeSet<&str> = stored
        .keys()
        .map(String::as_str)
        .filter(|name| *name != "probe")
        .collect();
    let admitted_names: BTreeSet<&str> = last_admitted.keys().copied().collect();
    assert_eq!(
        stored_names, admitted_names,
        "the monitors stored are not those whose creation was admitted"
    );
    assert!(
        operator.is_running(),
        "the operator died:\n{}",
        operator.stderr()
    );
    w.assert_no_plaintext_in_etcd(c);
}

/// Compacts etcd at its current revision: every older revision is gone, so a watch from
/// one of them can only be answered with 410 Gone.
fn compact_etcd(c: &Cluster) -> u64 {
    let etcdctl = |args: &[&str]| {
        let out = Command::new(c.var("MONIVAULT_ETCDCTL"))
            .env("ETCDCTL_ENDPOINTS", c.var("ETCDCTL_ENDPOINTS"))
            .env_remove("ETCDCTL_API")
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            support::stderr(&out)
        );
        support::stdout(&out)
    };
    let status = etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("etcd status");
    let revision = status[0]["Status"]["header"]["revision"]
        .as_u64()
        .expect("a revision");
    etcdctl(&["compact", &revision.to_string()]);
    revision
}

/// Kills (SIGKILL) the control plane's kube-apiserver and starts it again with the same
/// command line (same certificates, so every kubeconfig stays good): every watch is cut,
/// and its watch cache starts again from the current revision.
async fn restart_apiserver(c: &Cluster) {
    let dir = std::path::PathBuf::from(c.var("MONIVAULT_CLUSTER_DIR"));
    let pid_file = dir.join("run/kube-apiserver.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("the kube-apiserver pid file");
    let pid = pid.trim().to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("its command line");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        args.iter()
            .any(|a| a.contains(dir.to_str().expect("utf-8"))),
        "pid {pid} is not this cluster's kube-apiserver: {args:?}"
    );
    let began = Instant::now();
    // A crash, not a shutdown: a graceful one waits for the paused operator's watches.
    let killed = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_until(
        Duration::from_secs(30),
        "kube-apiserver to stop",
        || async {
            // Gone, not merely a zombie: the leader thread of a dying Go process shows as
            // one while its other threads still hold the listening socket.
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        },
    )
    .await;
    // As tests/cluster/up launches it: its own session, its pid in the pid file, and not
    // a child of this process (the shell in between exits at once).
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("logs/kube-apiserver.log"))
        .expect("the kube-apiserver log");
    let launched = Command::new("sh")
        .args(["-c", "setsid \"$@\" &", "sh"])
        .args(["sh", "-c", "echo $$ >\"$0\"; exec \"$@\""])
        .arg(&pid_file)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .status()
        .expect("start kube-apiserver");
    assert!(launched.success(), "starting kube-apiserver: {launched}");
    wait_until(
        Duration::from_secs(60),
        "kube-apiserver to be ready",
        || async {
            let out = c.kubectl(&["get", "--raw", "/readyz"]);
            out.status.success().then_some(())
        },
    )
    .await;
    eprintln!(
        "kube-apiserver killed and ready again in {:?}",
        began.elapsed()
    );
}

fn monitor_using(name: &str, item: &str) -> monivault::api::monitor::Monitor {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": name},
        "spec": {"url": format!("https://shop.example.com/{name}"),
                 "auth": {"basic": {"credentialSet": item}}},
    }))
    .expect("monitor")
}

/// Each item's `usedBy` as the monitors say it should be: `None` until every item shows it.
async fn used_by_is_right(w: &World) -> Option<()> {
    use monivault::api::monitor::Monitor;
    let monitors: Api<Monitor> = Api::namespaced(w.admin.clone(), &w.ns);
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for monitor in monitors.list(&ListParams::default()).await.ok()?.items {
        let item = monitor
            .spec
            .auth
            .as_ref()?
            .basic
            .as_ref()?
            .credential_set
            .to_string();
        expected.entry(item).or_default().push(monitor.name_any());
    }
    let items = w.items().list(&ListParams::default()).await.ok()?;
    items
        .items
        .iter()
        .all(|item| {
            let mut want = expected.get(&item.name_any()).cloned().unwrap_or_default();
            want.sort();
            item.status.as_ref().map(|s| &s.used_by) == Some(&want)
        })
        .then_some(())
}

/// While the operator is paused, items and monitors change; then etcd is compacted at the
/// current revision and the kube-apiserver is killed and started again. The operator's
/// watches resume from revisions the new watch cache (which starts at the current
/// revision) no longer holds, and etcd no longer holds either: 410 Gone. Only a relist
/// finds what changed, including a deleted monitor, which a relist reports by absence.
#[tokio::test]
async fn etcd_compaction_and_expired_watches_lose_no_change_to_items_or_monitors() {
    use monivault::api::monitor::Monitor;
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let mut w = World::new(c, "chaos-compact").await;
    // A Lease that outlives the pause and the API server's restart: the hand-over is not
    // under test here, the relist is.
    let mut operator = Operator::start_with(
        c,
        &w.store_ns,
        &w.ns,
        &[
            "--instance",
            "chaos-compact",
            "--lease-duration-seconds",
            "90",
            "--lease-renew-seconds",
            "2",
        ],
    );
    w.section().await;
    let all = names("item", 0..30);
    w.create_items(&all).await;
    let monitors: Api<Monitor> = Api::namespaced(w.admin.clone(), &w.ns);
    for (monitor, item) in [
        ("kept", "item-000"),
        ("moved", "item-002"),
        ("gone", "item-004"),
    ] {
        monitors
            .create(&PostParams::default(), &monitor_using(monitor, item))
            .await
            .expect("create monitor");
    }
    wait_until(Duration::from_secs(60), "every item Ready", || {
        w.all_ready()
    })
    .await;
    wait_until(Duration::from_secs(30), "usedBy", || used_by_is_right(&w)).await;

    // The operator sees none of what follows as it happens: paused, its watches then cut
    // by the API server's restart, and the revisions they stopped at compacted away.
    signal(&operator, "STOP");
    w.create_items(&names("late", 0..10)).await;
    w.reseal_items(&all[5..15]).await;
    w.delete_items(&all[25..30]).await;
    monitors
        .create(&PostParams::default(), &monitor_using("new", "item-001"))
        .await
        .expect("create monitor");
    monitors
        .patch(
            "moved",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"auth": {"basic": {"credentialSet": "item-003"}}}}),
            ),
        )
        .await
        .expect("move a monitor to another item");
    monitors
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete monitor");
    let revision = compact_etcd(c);
    restart_apiserver(c).await;
    signal(&operator, "CONT");
    eprintln!("compacted etcd at revision {revision}, restarted kube-apiserver");

    wait_until(Duration::from_secs(60), "every item Ready", || {
        w.all_ready()
    })
    .await;
    wait_until(
        Duration::from_secs(60),
        "usedBy to follow the monitors",
        || used_by_is_right(&w),
    )
    .await;
    w.assert_store_matches_items().await;
    // The watches did expire (410 Gone, "Expired"), and the operator relisted: the watch of
    // the monitor cache says so in the log (the controllers' own watches do not log).
    let log = operator.stderr();
    let expired: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("too old resource version") && l.contains("Expired"))
        .collect();
    for line in &expired {
        eprintln!("operator: {line}");
    }
    assert!(
        expired
            .iter()
            .any(|l| l.contains("monivault::controller: watching Monitors failed")),
        "the controller's monitor watch did not expire:\n{log}"
    );
    assert!(
        operator.is_running(),
        "the operator died:\n{}",
        operator.stderr()
    );
    w.assert_no_plaintext_in_etcd(c);
}

/// Creates the items with their sealed values, 16 at a time, through whatever happens to
/// the API server: a failed create is tried again until it lands (or is found to have
/// landed).
async fn create_through_outages(items: Api<VaultItem>, made: Vec<VaultItem>) {
    futures::stream::iter(made)
        .map(|item| {
            let items = items.clone();
            async move {
                let started = Instant::now();
                loop {
                    match items.create(&PostParams::default(), &item).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(s)) if s.code == 409 => return,
                        Err(e) => {
                            assert!(
                                started.elapsed() < Duration::from_secs(90),
                                "create {}: {e}",
                                item.name_any()
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// Issue 14 asks for 500: set to 500, the test passes too, in about two minutes
/// here, as ingest runs at some ten items a second on a loaded 2-core machine. 200 keep
/// the test near a minute.
const RESTART_BURST: usize = 200;

/// The kube-apiserver crashes (SIGKILL) and comes back twice: in the middle of an ingest
/// burst, and in the middle of the data key rotation that follows. The operator rides
/// both out (its Lease outlasts the outage) and finishes everything: every item Ready on
/// the one new data key, every record opening to its plaintext.
#[tokio::test]
async fn apiserver_restart_during_an_ingest_burst_and_a_data_key_rotation_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let mut w = World::new(c, "chaos-restart").await;
    let mut operator = Operator::start_with(
        c,
        &w.store_ns,
        &w.ns,
        &[
            "--instance",
            "chaos-restart",
            "--lease-duration-seconds",
            "60",
            "--lease-renew-seconds",
            "2",
            "--rotation-check-interval",
            "1s",
            // 10 s for the 200 records: the crash must land inside, on a loaded machine too.
            "--reencrypt-rate",
            "20",
            "--data-key-retire-grace",
            "1s",
        ],
    );
    let begun = Instant::now();
    w.section().await;
    let made: Vec<VaultItem> = names("item", 0..RESTART_BURST)
        .iter()
        .map(|name| credential_set(name, &w.seal_new(name)))
        .collect();
    let burst = tokio::spawn(create_through_outages(w.items(), made));
    let at_restart = wait_until(
        Duration::from_secs(60),
        "ingest to be under way",
        || async {
            let records = w.store.list_records().await.ok()?.items.len();
            (records >= RESTART_BURST / 10).then_some(records)
        },
    )
    .await;
    restart_apiserver(c).await;
    burst.await.expect("the burst");
    let after_restart = w.record_count().await;
    eprintln!(
        "kube-apiserver crashed with {at_restart} of {RESTART_BURST} records stored ({after_restart} once back)"
    );
    assert!(
        after_restart < RESTART_BURST,
        "the ingest had finished before the crash"
    );
    wait_until(Duration::from_secs(120), "every item Ready", || {
        w.all_ready()
    })
    .await;
    eprintln!("all Ready after {:?}", begun.elapsed());

    let sections: Api<VaultSection> = Api::namespaced(w.admin.clone(), &w.ns);
    sections
        .patch(
            "checkout",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {
                    monivault::controller::rotation::ROTATE_ANNOTATION:
                        format!("data-key@{}", rfc3339_now())
                }}
            })),
        )
        .await
        .expect("request a data key rotation");
    let old = wait_until(
        Duration::from_secs(60),
        "the re-encryption to be under way",
        || async {
            let env = w.store.environment(&w.ns).await.ok()??.value;
            if env.environment(&w.ns).ok()?.current_data_key != 2 {
                return None;
            }
            let old = records_on_old_keys(&w).await;
            (old < RESTART_BURST * 9 / 10).then_some(old)
        },
    )
    .await;
    restart_apiserver(c).await;
    let old_after = records_on_old_keys(&w).await;
    eprintln!(
        "kube-apiserver crashed with {old} records on the old data key ({old_after} once back)"
    );
    assert!(
        old_after > 0,
        "the re-encryption had finished before the crash"
    );
    wait_until(
        Duration::from_secs(90),
        "the rotation to finish",
        || async {
            let env = w.keyring().await.environment(&w.ns).ok()?.clone();
            let retired = env.data_keys.keys().copied().collect::<Vec<_>>() == [2];
            let statuses = w.items().list(&ListParams::default()).await.ok()?;
            let shown = statuses
                .items
                .iter()
                .all(|i| i.status.as_ref().and_then(|s| s.key_version) == Some(2));
            (retired && shown && records_on_old_keys(&w).await == 0).then_some(())
        },
    )
    .await;
    eprintln!("rotation finished after {:?}", begun.elapsed());
    let env = w.keyring().await.environment(&w.ns).expect("env").clone();
    assert_eq!(env.current_data_key, 2, "one request, one new data key");
    w.assert_store_matches_items().await;
    assert!(
        operator.is_running(),
        "the operator died:\n{}",
        operator.stderr()
    );
    w.assert_no_plaintext_in_etcd(c);
    eprintln!("checked after {:?}", begun.elapsed());
}
