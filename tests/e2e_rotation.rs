//! Key rotation on the real control plane, with the processes doing it killed (SIGKILL)
//! at random moments: afterwards every one of 500 items still opens to its plaintext, no
//! record is lost or left on a destroyed key, and no plaintext is anywhere in etcd.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use monivault::api::condition::{READY, find_condition};
use monivault::api::vault_item::VaultItem;
use monivault::api::vault_section::VaultSection;
use monivault::crypto::{ItemBinding, Keyring, SealBinding, seal};
use monivault::store::{SecretStore, Store};
use support::{Cluster, Operator, cluster, credential_set, section_public_key};

const ITEMS: usize = 500;
const KILLS: usize = 20;

/// The operator as these tests run it: one fixed identity, so a restart takes the Lease
/// over at once (a pod restarted under its name does the same); a Lease long enough to be
/// renewed on a loaded 2-core machine; a check every second; and a re-encryption rate
/// (60/s) that keeps a rotation of 500 records about eight seconds long, so twenty kills
/// a few hundred milliseconds apart land inside it.
fn start_operator(c: &Cluster, store_ns: &str, ns: &str) -> Operator {
    Operator::start_with(
        c,
        store_ns,
        ns,
        &[
            "--instance",
            "rotation-test-operator",
            "--lease-duration-seconds",
            "15",
            "--lease-renew-seconds",
            "2",
            "--rotation-check-interval",
            "1s",
            "--reencrypt-rate",
            "60",
            "--data-key-retire-grace",
            "1s",
            "--root-key-reload-interval",
            "1s",
        ],
    )
}

fn restart_operator(c: &Cluster, store_ns: &str, ns: &str) -> Operator {
    start_operator(c, store_ns, ns)
}

/// Each test drives 500 items and dozens of restarts; two at once overload a 2-core
/// machine's API server, so they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small seeded generator (SplitMix64): the kill moments are the same on every run.
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

/// A test's world: the items' namespace, the store's, and every item's plaintext.
struct World {
    ns: String,
    store_ns: String,
    store: SecretStore,
    plaintexts: BTreeMap<String, String>,
}

/// Creates a section and `ITEMS` sealed items, and waits until every one is Ready.
async fn populate(c: &Cluster, admin: &Client, prefix: &str) -> (World, Operator) {
    let ns = c.temp_namespace(prefix).await;
    let store_ns = c.temp_namespace(&format!("{prefix}-store")).await;
    let operator = start_operator(c, &store_ns, &ns);
    let public_key = section_public_key(admin, &ns).await;
    let plaintexts: BTreeMap<String, String> = (0..ITEMS)
        .map(|i| {
            let name = format!("item-{i:04}");
            let plaintext = support::secret(&format!("rotation-{i:04}-pw"));
            (name, plaintext)
        })
        .collect();
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    let started = Instant::now();
    futures::stream::iter(plaintexts.iter())
        .map(|(name, plaintext)| {
            let binding = SealBinding {
                namespace: &ns,
                section: "checkout",
                item_type: "CredentialSet",
                item: name,
                field: "password",
            };
            let sealed = seal(&public_key, &binding, plaintext.as_bytes()).expect("seal");
            let items = items.clone();
            let item = credential_set(name, &sealed);
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
    let created = started.elapsed();
    wait_until(Duration::from_secs(120), "every item Ready", || async {
        let list = items.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|item| {
                item.status
                    .as_ref()
                    .and_then(|s| find_condition(&s.conditions, READY))
                    .is_some_and(|r| r.status == "True")
            })
            .count();
        let log = operator.stderr();
        assert!(!log.contains("\nerror: "), "the operator exited: {log}");
        if ready < ITEMS && started.elapsed().as_secs().is_multiple_of(20) {
            let tail = &log[log.len().saturating_sub(2000)..];
            eprintln!(
                "{prefix}: {ready}/{ITEMS} Ready after {:?}; operator log tail:\n{tail}",
                started.elapsed()
            );
        }
        (ready == ITEMS).then_some(())
    })
    .await;
    eprintln!(
        "{prefix}: created {ITEMS} items in {created:?}, all Ready after {:?}",
        started.elapsed()
    );
    let store = SecretStore::new(admin.clone(), &store_ns);
    (
        World {
            ns,
            store_ns,
            store,
            plaintexts,
        },
        operator,
    )
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The keys of the test's environment, as stored.
async fn keyring(store: &SecretStore, ns: &str) -> Keyring {
    store
        .environment(ns)
        .await
        .expect("read the environment's keys")
        .expect("the environment's keys")
        .value
}

/// No record names a data key version the keyring no longer holds, and none is lost.
/// Returns how many records are still on an old version.
async fn assert_no_record_on_a_destroyed_key(world: &World) -> usize {
    let keyring = keyring(&world.store, &world.ns).await;
    let env = keyring.environment(&world.ns).expect("environment");
    let records = world
        .store
        .list_records()
        .await
        .expect("list records")
        .items;
    assert_eq!(records.len(), ITEMS, "a record was lost");
    let mut old = 0;
    for (key, record) in &records {
        let version = record.value.key_version;
        assert!(
            env.data_keys.contains_key(&version),
            "{key} is on data key version {version}, which the keyring no longer holds"
        );
        if version != env.current_data_key {
            old += 1;
        }
    }
    old
}

/// Opens every record with the root key from the store and compares with the plaintext
/// the test remembers; checks each record is bound to its item's uid.
async fn assert_every_item_opens(world: &World, admin: &Client) {
    let roots = world
        .store
        .root_keys()
        .await
        .expect("read root keys")
        .expect("root key Secret")
        .value;
    let keyring = keyring(&world.store, &world.ns).await;
    let root = roots
        .key(keyring.root_key_version)
        .expect("the root key Secret holds the keyring's root key");
    let env = keyring.environment(&world.ns).expect("environment");
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &world.ns);
    let uids: BTreeMap<String, String> = items
        .list(&ListParams::default())
        .await
        .expect("list items")
        .items
        .iter()
        .map(|item| (item.name_any(), item.uid().unwrap_or_default()))
        .collect();
    let records = world
        .store
        .list_records()
        .await
        .expect("list records")
        .items;
    assert_eq!(records.len(), ITEMS, "no record lost");
    for (key, record) in &records {
        assert_eq!(key.namespace, world.ns);
        assert_eq!(
            record.value.key_version, env.current_data_key,
            "{key} is not on the current data key"
        );
        assert_eq!(Some(&record.value.uid), uids.get(&key.name), "{key} uid");
        let opened = keyring
            .decrypt(
                &root,
                &ItemBinding {
                    namespace: &world.ns,
                    item: &key.name,
                    uid: &record.value.uid,
                    field: "password",
                },
                &record.value.fields["password"],
            )
            .unwrap_or_else(|e| panic!("{key} does not open: {e}"));
        assert_eq!(
            opened.expose(),
            world.plaintexts[&key.name].as_bytes(),
            "{key} opens to something else"
        );
    }
}

/// Dumps etcd once and looks for every plaintext, in every form a leak takes. (The
/// operator's drop scans again, its data files and logs too.)
fn assert_plaintexts_not_in_etcd(c: &Cluster, world: &World) {
    let dump = c.etcd_dump();
    assert!(
        dump.contains(&world.store_ns),
        "the dump does not even hold the store"
    );
    let secrets: Vec<support::Generated> = world
        .plaintexts
        .iter()
        .map(|(name, plaintext)| support::Generated::new(name, plaintext.clone().into_bytes()))
        .collect();
    assert_eq!(secrets.len(), ITEMS);
    let leaks = support::Scanner::new(&secrets).scan("etcd's keyspace", dump.as_bytes());
    assert!(leaks.is_empty(), "plaintexts are in etcd: {leaks:#?}");
}

fn rfc3339_now() -> String {
    // Milliseconds, rounded down: a request from the future is not honoured yet, and key
    // times count milliseconds.
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    k8s_openapi::jiff::Timestamp::from_millisecond(now)
        .expect("a valid time")
        .to_string()
}

#[tokio::test]
async fn a_data_key_rotation_survives_twenty_kills_of_the_operator() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let admin = c.admin().await;
    let (world, mut operator) = populate(c, &admin, "rot-data").await;
    let before = keyring(&world.store, &world.ns).await;
    assert_eq!(
        before.environment(&world.ns).expect("env").current_data_key,
        1
    );

    // Ask for the rotation the way a user does: an annotation on the section.
    let sections: Api<VaultSection> = Api::namespaced(admin.clone(), &world.ns);
    let request = format!("data-key@{}", rfc3339_now());
    sections
        .patch(
            "checkout",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"monivault.io/rotate": request}}
            })),
        )
        .await
        .expect("annotate");
    let started = Instant::now();
    wait_until(Duration::from_secs(30), "the new data key", || async {
        let k = keyring(&world.store, &world.ns).await;
        (k.environment(&world.ns).ok()?.current_data_key == 2).then_some(())
    })
    .await;

    let mut rng = Rng(0x5EED_0001);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), &world.store_ns);
    let mut remaining = Vec::new();
    for _ in 0..KILLS {
        // A random moment after this process took over the re-encryption, so the kills
        // land inside it, not in start-up.
        let resumed = Instant::now();
        while !operator.stderr().contains("re-encrypting records") {
            if resumed.elapsed() > Duration::from_secs(20) {
                let log = operator.stderr();
                panic!(
                    "kill {}: the re-encryption did not resume; operator log tail:\n{}",
                    remaining.len(),
                    &log[log.len().saturating_sub(3000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(rng.millis(1, 400)).await;
        operator.kill();
        remaining.push(assert_no_record_on_a_destroyed_key(&world).await);
        // Its leak scan runs now, not beside the successor: the rotation must not finish
        // while the test is not looking.
        drop(operator);
        // The dead leader's Lease would hold the successor off for its duration; the
        // hand-over is not under test here, the rotation is.
        let _ = leases.delete("monivault-leader", &Default::default()).await;
        operator = restart_operator(c, &world.store_ns, &world.ns);
    }
    eprintln!(
        "records on the old key after each kill: {remaining:?} ({:?} since the request)",
        started.elapsed()
    );
    let done = wait_until(
        Duration::from_secs(90),
        "the rotation to finish",
        || async {
            let k = keyring(&world.store, &world.ns).await;
            let env = k.environment(&world.ns).ok()?;
            (env.data_keys.keys().copied().collect::<Vec<_>>() == [env.current_data_key])
                .then_some(env.current_data_key)
        },
    )
    .await;
    eprintln!("data key rotation finished after {:?}", started.elapsed());
    assert_eq!(done, 2, "the request made exactly one new data key");
    assert_eq!(assert_no_record_on_a_destroyed_key(&world).await, 0);
    assert_every_item_opens(&world, &admin).await;

    // The request was honoured once: more checks make no third version.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = keyring(&world.store, &world.ns).await;
    assert_eq!(
        after.environment(&world.ns).expect("env").current_data_key,
        2
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), &world.ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "DataKeyRotated"), "{reasons:?}");
    assert!(operator.is_running(), "the operator died");
    assert_plaintexts_not_in_etcd(c, &world);
}

#[tokio::test]
async fn a_root_key_rotation_survives_kills_of_the_rotate_command_and_the_operator() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let admin = c.admin().await;
    let (world, mut operator) = populate(c, &admin, "rot-root").await;
    let records_before = world.store.list_records().await.expect("list");

    let rotate_with = |requested_at: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_monivault"))
            .args([
                "rotate",
                "root-key",
                "--namespace",
                &world.store_ns,
                "--watch-namespace",
                &world.ns,
                "--root-key-reload-interval",
                "1s",
                "--requested-at",
                requested_at,
            ])
            .args(extra)
            .env("KUBECONFIG", c.var("KUBECONFIG"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start monivault rotate")
    };
    // (root versions, current, the keyring's): what a kill leaves behind.
    let state = || async {
        let roots = world.store.root_keys().await.expect("read").expect("roots");
        let k = keyring(&world.store, &world.ns).await;
        // Whatever state a kill left, the keyring's root key is in the Secret and opens it.
        let root = roots
            .value
            .key(k.root_key_version)
            .expect("the keyring's root key is in the Secret");
        k.check_root(&root).expect("and it opens the keyring");
        (
            roots.value.versions(),
            roots.value.current(),
            k.root_key_version,
        )
    };
    // Version `target` added, current, and wrapping the keyring: all but the retirement.
    let done = |(versions, current, wrapped): &(Vec<u32>, u32, u32), target: u32| {
        versions.contains(&target) && *current == target && *wrapped == target
    };
    let mut rng = Rng(0x5EED_0002);
    let started = Instant::now();
    let (mut target, mut requested_at) = (2u32, rfc3339_now());
    let (mut in_flight, mut too_late, mut operator_kills, mut runs) = (0, 0, 0, 0);
    // Kills that left a rotation unfinished: only these count. When a run (or the
    // operator's loop) finishes one, the next is requested, so kills keep landing in one.
    let mut half_done = std::collections::BTreeSet::new();
    // Until a kill has also left a rotation half done: most land before its first write.
    while in_flight < KILLS || half_done.is_empty() {
        runs += 1;
        assert!(
            runs < 400,
            "{in_flight} kills inside a rotation in {runs} runs, {} of them half done",
            half_done.len()
        );
        if done(&state().await, target) {
            target += 1;
            // Strictly after the newest key was made: a request rotates only older keys.
            tokio::time::sleep(Duration::from_millis(5)).await;
            requested_at = rfc3339_now();
        }
        let mut child = rotate_with(&requested_at, &[]);
        // The whole command takes some 70 ms; most kills land inside it.
        let deadline = Instant::now() + rng.millis(5, 120);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let killed = matches!(child.try_wait(), Ok(None));
        if killed {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait for rotate");
        assert!(
            status.success() || status.code().is_none(),
            "rotate failed: {status}"
        );
        let after = state().await;
        if killed && done(&after, target) {
            too_late += 1;
        } else if killed {
            in_flight += 1;
            // The new version is there, but not yet current or not yet wrapping the keyring.
            if after.0.contains(&target) {
                half_done.insert(after.clone());
            }
            // Every third kill the operator dies too (its loop finishes pending rotations).
            if in_flight % 3 == 0 && in_flight <= KILLS {
                drop(operator);
                operator_kills += 1;
                operator = restart_operator(c, &world.store_ns, &world.ns);
            }
        }
    }
    // With --wait the last run also waits out the old keys' retire grace and removes them.
    let out = rotate_with(&requested_at, &["--wait"])
        .wait_with_output()
        .expect("rotate output");
    assert!(
        out.status.success(),
        "rotate failed: {}",
        support::stdout(&out)
    );
    let finished = support::stdout(&out);
    eprintln!(
        "root key rotation: {in_flight} kills inside a rotation ({} of them left it half \
         done: {half_done:?}), {too_late} after one had finished, {operator_kills} of the \
         operator, {runs} runs, {} rotations, {:?}: {}",
        half_done.len(),
        target - 1,
        started.elapsed(),
        finished.trim()
    );
    assert!(
        !half_done.is_empty(),
        "no kill left a rotation half done: the kills missed every intermediate state"
    );
    assert!(
        finished.contains(&format!("root key version {target} is current")),
        "{finished}"
    );
    let roots = world.store.root_keys().await.expect("read").expect("roots");
    assert_eq!(
        roots.value.versions(),
        vec![target],
        "the old root keys are gone"
    );
    assert_eq!(roots.value.current(), target);
    assert_eq!(
        keyring(&world.store, &world.ns).await.root_key_version,
        target
    );
    assert_eq!(
        world.store.list_records().await.expect("list"),
        records_before,
        "records are untouched by a root key rotation"
    );
    assert_every_item_opens(&world, &admin).await;

    // The running operator keeps ingesting under the new root key.
    let public_key = {
        let sections: Api<VaultSection> = Api::namespaced(admin.clone(), &world.ns);
        let text = sections
            .get("checkout")
            .await
            .expect("section")
            .status
            .and_then(|s| s.sealing_public_key)
            .expect("published key");
        monivault::crypto::SealingPublicKey::parse(&text).expect("key")
    };
    let sealed = seal(
        &public_key,
        &SealBinding {
            namespace: &world.ns,
            section: "checkout",
            item_type: "CredentialSet",
            item: "after-rotation",
            field: "password",
        },
        support::secret("after-rotation-plaintext").as_bytes(),
    )
    .expect("seal");
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &world.ns);
    items
        .create(
            &PostParams::default(),
            &credential_set("after-rotation", &sealed),
        )
        .await
        .expect("create");
    support::ready_condition(&items, "after-rotation", "True").await;
    assert!(operator.is_running(), "the operator died");
    assert_plaintexts_not_in_etcd(c, &world);
}

/// A monitor stamped under root key 1, as the webhook of a running operator stamps it.
fn shop_monitor(name: &str) -> monivault::api::monitor::Monitor {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": name},
        "spec": {
            "url": "https://shop.example.com/login",
            "auth": {"basic": {"credentialSet": "shop-login"}},
        },
    }))
    .expect("monitor")
}

#[tokio::test]
async fn a_root_key_rotation_keeps_every_admission_stamp_valid_until_its_monitor_goes() {
    use monivault::api::monitor::Monitor;
    use monivault::stamp::{self, root_version_of};
    use monivault::store::Keys;
    use std::sync::Arc;

    let _turn = ONE_AT_A_TIME.lock().await;
    let c = cluster();
    let admin = c.admin().await;
    let ns = c.temp_namespace("rot-stamp").await;
    let store_ns = c.temp_namespace("rot-stamp-store").await;
    let operator = Operator::start_with_webhooks_and(
        c,
        &store_ns,
        &ns,
        &[
            "--rotation-check-interval",
            "1s",
            "--root-key-reload-interval",
            "1s",
        ],
    );
    let store = SecretStore::new(admin.clone(), &store_ns);
    section_public_key(&admin, &ns).await;
    // Until the webhook serves, the API server's CEL rule refuses a plaintext.
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    let login: VaultItem = serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
        "metadata": {"name": "shop-login"},
        "spec": {"type": "CredentialSet", "section": "checkout",
                 "allowedHosts": ["shop.example.com"],
                 "credentialSet": {"username": "bot", "password": support::secret("stamp-test-Pa55word")}},
    }))
    .expect("item");
    wait_until(Duration::from_secs(60), "the webhook to serve", || {
        let (items, login) = (items.clone(), login.clone());
        async move { items.create(&PostParams::default(), &login).await.ok() }
    })
    .await;
    let monitors: Api<Monitor> = Api::namespaced(admin.clone(), &ns);
    monitors
        .create(&PostParams::default(), &shop_monitor("shop"))
        .await
        .expect("the admin creates the shop monitor");
    let stamped = monitors.get("shop").await.expect("read");
    assert_eq!(root_version_of(&stamped.metadata), Some(1));
    let fresh_keys = || async {
        Keys::bootstrap(Arc::new(SecretStore::new(admin.clone(), &store_ns)))
            .await
            .expect("keys from the store")
    };
    stamp::verify(&fresh_keys().await, &stamped)
        .await
        .expect("stamped under root key 1");

    // All four steps: new key, every environment re-wrapped, the switch, and step 4. A
    // request newer than the root key, even within its second, is honoured.
    let out = Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args([
            "rotate",
            "root-key",
            "--namespace",
            &store_ns,
            "--watch-namespace",
            &ns,
            "--root-key-reload-interval",
            "1s",
        ])
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        .output()
        .expect("monivault rotate");
    assert!(out.status.success(), "rotate: {}", support::stderr(&out));
    let said = support::stdout(&out);
    assert!(said.contains("root key version 2 is current"), "{said}");
    assert_eq!(
        store
            .environment(&ns)
            .await
            .expect("read")
            .expect("keys")
            .value
            .root_key_version,
        2,
        "the environment is re-wrapped"
    );
    // Once the retire grace is over, the operator's check keeps v1 for the stamp.
    wait_until(
        Duration::from_secs(60),
        "step 4 to keep v1 for the stamp",
        || {
            let log = operator.stderr();
            async move { log.contains("admission stamps still name").then_some(()) }
        },
    )
    .await;
    let roots = store.root_keys().await.expect("read").expect("roots").value;
    assert_eq!((roots.current(), roots.versions()), (2, vec![1, 2]));
    let stamped = monitors.get("shop").await.expect("read");
    stamp::verify(&fresh_keys().await, &stamped)
        .await
        .expect("a stamp made before the rotation still verifies after it");

    // The webhook signs new stamps with the new key.
    monitors
        .create(&PostParams::default(), &shop_monitor("after"))
        .await
        .expect("create another monitor");
    let after = monitors.get("after").await.expect("read");
    assert_eq!(root_version_of(&after.metadata), Some(2));
    stamp::verify(&fresh_keys().await, &after)
        .await
        .expect("stamped under root key 2");

    // The old monitor goes: the next check removes v1.
    monitors
        .delete("shop", &Default::default())
        .await
        .expect("delete the old monitor");
    let versions = wait_until(Duration::from_secs(30), "v1 to be removed", || async {
        let roots = store.root_keys().await.ok()??.value;
        (roots.versions() == [2]).then_some(roots.versions())
    })
    .await;
    assert_eq!(versions, vec![2]);
    stamp::verify(&fresh_keys().await, &after)
        .await
        .expect("the new stamp verifies");
    let mut operator = operator;
    assert!(operator.is_running(), "the operator died");
}
