//! Rotation over the in-memory store, including a crash after every single write.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::*;
use crate::crypto::{ItemBinding, Plaintext};
use crate::store::{
    ItemKey, ItemRecord, KeyringHead, Listing, MemoryStore, RootKeySet, StoredKeyring,
};

const NS: &str = "shop";
const RECORDS: usize = 6;

/// A store that "crashes" after a given number of writes: every later write fails, as if
/// the process had died right after the last one that landed.
#[derive(Clone)]
struct CrashingStore {
    inner: MemoryStore,
    /// Writes still allowed; negative means unlimited.
    writes_left: Arc<AtomicI64>,
    refused: Arc<AtomicBool>,
}

impl CrashingStore {
    fn new(inner: &MemoryStore, writes: Option<i64>) -> Self {
        CrashingStore {
            inner: inner.clone(),
            writes_left: Arc::new(AtomicI64::new(writes.unwrap_or(-1))),
            refused: Arc::new(AtomicBool::new(false)),
        }
    }

    fn write(&self) -> Result<(), StoreError> {
        let left = self.writes_left.load(Ordering::SeqCst);
        if left == 0 {
            self.refused.store(true, Ordering::SeqCst);
            return Err(StoreError::Invalid {
                what: "the store".into(),
                reason: "simulated crash".into(),
            });
        }
        if left > 0 {
            self.writes_left.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn crashed(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Store for CrashingStore {
    async fn root_keys(&self) -> Result<Option<Versioned<RootKeySet>>, StoreError> {
        self.inner.root_keys().await
    }
    async fn put_root_keys(
        &self,
        keys: &RootKeySet,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.write()?;
        self.inner.put_root_keys(keys, expected).await
    }
    async fn keyring_head(&self) -> Result<Option<Versioned<StoredKeyring>>, StoreError> {
        self.inner.keyring_head().await
    }
    async fn put_keyring_head(
        &self,
        head: &KeyringHead,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.write()?;
        self.inner.put_keyring_head(head, expected).await
    }
    async fn environment(&self, namespace: &str) -> Result<Option<Versioned<Keyring>>, StoreError> {
        self.inner.environment(namespace).await
    }
    async fn put_environment(
        &self,
        namespace: &str,
        keyring: &Keyring,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.write()?;
        self.inner
            .put_environment(namespace, keyring, expected)
            .await
    }
    async fn delete_environment(
        &self,
        namespace: &str,
        expected: &str,
    ) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.delete_environment(namespace, expected).await
    }
    async fn list_environments(&self) -> Result<Listing<String, Keyring>, StoreError> {
        self.inner.list_environments().await
    }
    async fn some_environments(&self, limit: u32) -> Result<Listing<String, Keyring>, StoreError> {
        self.inner.some_environments(limit).await
    }
    async fn record(&self, key: &ItemKey) -> Result<Option<Versioned<ItemRecord>>, StoreError> {
        self.inner.record(key).await
    }
    async fn put_record(
        &self,
        key: &ItemKey,
        record: &ItemRecord,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.write()?;
        self.inner.put_record(key, record, expected).await
    }
    async fn delete_record(&self, key: &ItemKey, expected: &str) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.delete_record(key, expected).await
    }
    async fn list_records(&self) -> Result<Listing<ItemKey, ItemRecord>, StoreError> {
        self.inner.list_records().await
    }
}

fn plaintext(i: usize) -> String {
    format!("rotation-secret-{i}")
}

fn item(i: usize) -> ItemKey {
    ItemKey::new(NS, format!("item-{i}"))
}

fn uid(i: usize) -> String {
    format!("uid-{i}")
}

/// Environments besides `NS`, with no records: a root key rotation re-wraps each.
const OTHERS: [&str; 2] = ["team-a", "team-b"];

/// Every environment of [`seeded`].
fn all_namespaces() -> Vec<&'static str> {
    let mut all = vec![NS];
    all.extend(OTHERS);
    all
}

/// A store with a root key, environments whose keys are an hour old (one Secret each),
/// and records in `NS`.
async fn seeded() -> MemoryStore {
    let store = MemoryStore::new();
    let root = RootKey::generate(1).expect("root");
    let hour_ago = UnixMillis::from_secs(now_millis().as_secs() - 3600);
    let mut keyring = Keyring::new(&root, hour_ago);
    for ns in all_namespaces() {
        keyring
            .ensure_environment(&root, ns, hour_ago)
            .expect("environment");
    }
    let cipher = keyring.current_data_cipher(&root, NS).expect("cipher");
    for i in 0..RECORDS {
        let key = item(i);
        let uid = uid(i);
        let binding = ItemBinding {
            namespace: NS,
            item: &key.name,
            uid: &uid,
            field: "password",
        };
        let record = ItemRecord {
            uid: uid.clone(),
            key_version: cipher.version(),
            fields: BTreeMap::from([(
                "password".to_owned(),
                cipher
                    .encrypt(&binding, plaintext(i).as_bytes())
                    .expect("encrypt"),
            )]),
            source_digest: "0".repeat(64),
            generation: Some(1),
        };
        store.put_record(&key, &record, None).await.expect("record");
    }
    store
        .put_root_keys(&RootKeySet::new(root, hour_ago), None)
        .await
        .expect("root keys");
    for (ns, one) in keyring.split() {
        store
            .put_environment(&ns, &one, None)
            .await
            .expect("environment");
    }
    store
        .put_keyring_head(&KeyringHead::new(hour_ago.as_secs()), None)
        .await
        .expect("head");
    store
}

async fn keys_over(store: &CrashingStore) -> Keys<CrashingStore> {
    Keys::bootstrap(Arc::new(store.clone()))
        .await
        .expect("bootstrap copes with every intermediate state")
}

/// `namespace`'s keys as stored.
async fn stored_keys(store: &MemoryStore, namespace: &str) -> Keyring {
    store
        .environment(namespace)
        .await
        .expect("read")
        .expect("environment keys")
        .value
}

async fn root_keys(store: &MemoryStore) -> RootKeySet {
    store.root_keys().await.expect("read").expect("roots").value
}

/// Every environment opens with the root key it names, which the store holds; every
/// record opens to its plaintext and names a data key version its environment still has.
async fn assert_all_records_open(store: &MemoryStore) {
    let roots = root_keys(store).await;
    for ns in all_namespaces() {
        let keyring = stored_keys(store, ns).await;
        let root = roots
            .key(keyring.root_key_version)
            .unwrap_or_else(|e| panic!("{ns}: the root key it names is gone: {e}"));
        keyring.check_root(&root).expect("right root");
        keyring
            .sealing_public_key(&root, ns)
            .expect("its keys unwrap");
    }
    let keyring = stored_keys(store, NS).await;
    let root = roots.key(keyring.root_key_version).expect("root");
    let records = store.list_records().await.expect("list").items;
    assert_eq!(records.len(), RECORDS, "no record lost");
    let env = keyring.environment(NS).expect("env");
    for (i, (key, record)) in records.iter().enumerate() {
        assert_eq!(key, &item(i));
        assert!(
            env.data_keys.contains_key(&record.value.key_version),
            "{key} is on destroyed data key {}",
            record.value.key_version
        );
        let binding = ItemBinding {
            namespace: NS,
            item: &key.name,
            uid: &record.value.uid,
            field: "password",
        };
        let opened: Plaintext = keyring
            .decrypt(&root, &binding, &record.value.fields["password"])
            .expect("record opens");
        assert_eq!(opened.expose(), plaintext(i).as_bytes());
    }
}

fn config() -> RotationConfig {
    RotationConfig {
        reencrypt_rate: 10_000,
        retire_grace: Duration::ZERO,
        root_key_retire_grace: Duration::ZERO,
        ..RotationConfig::default()
    }
}

/// The cluster as a test states it: which namespaces exist (`None`: unknown), which root
/// key versions stamps name, and rotation requests.
#[derive(Default)]
struct TestFacts {
    live: Option<BTreeSet<String>>,
    stamps: std::sync::Mutex<BTreeSet<u32>>,
    stamps_unreadable: AtomicBool,
    requests: BTreeMap<(String, KeyKind), UnixMillis>,
}

impl TestFacts {
    fn stamped(versions: &[u32]) -> Self {
        let facts = TestFacts::default();
        facts.set_stamps(versions);
        facts
    }

    fn set_stamps(&self, versions: &[u32]) {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = versions.iter().copied().collect();
    }
}

impl ClusterFacts for TestFacts {
    async fn rotation_requests(
        &self,
    ) -> Result<BTreeMap<(String, KeyKind), UnixMillis>, RotationError> {
        Ok(self.requests.clone())
    }
    async fn live_namespaces(&self) -> Result<Option<BTreeSet<String>>, RotationError> {
        Ok(self.live.clone())
    }
    async fn stamped_root_versions(&self) -> Result<BTreeSet<u32>, RotationError> {
        if self.stamps_unreadable.load(Ordering::SeqCst) {
            return Err(RotationError::Invalid {
                what: "stamps",
                reason: "the API server did not answer".into(),
            });
        }
        Ok(self
            .stamps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }
}

fn facts() -> TestFacts {
    TestFacts::default()
}

async fn rotate_root(
    keys: &Keys<CrashingStore>,
    trigger: Trigger,
) -> Result<RootKeyState, RotationError> {
    rotate_root_key(keys, &facts(), trigger, &config(), &Reporting::none()).await
}

/// A request made after the seeded keys (an hour old) and before any key a test makes, so
/// that asking again, as a re-run does, never rotates twice.
fn request() -> Trigger {
    Trigger::Requested {
        at: UnixMillis::from_secs(now_millis().as_secs() - 1800),
    }
}

#[test]
fn re_encryption_is_paced_one_write_at_a_time() {
    use governor::clock::FakeRelativeClock;
    let clock = FakeRelativeClock::default();
    let limiter = governor::RateLimiter::direct_with_clock(reencrypt_quota(50), clock.clone());
    assert!(limiter.check().is_ok(), "the first write goes at once");
    assert!(limiter.check().is_err(), "no burst: the second waits");
    clock.advance(Duration::from_millis(19));
    assert!(limiter.check().is_err(), "not before 1/50 s");
    clock.advance(Duration::from_millis(1));
    assert!(limiter.check().is_ok(), "then one more");
    // A rate of zero is refused by the flag; here it means one a second, not a panic.
    let slow = governor::RateLimiter::direct_with_clock(reencrypt_quota(0), clock.clone());
    assert!(slow.check().is_ok());
    clock.advance(Duration::from_millis(999));
    assert!(slow.check().is_err());
    clock.advance(Duration::from_millis(1));
    assert!(slow.check().is_ok());
}

#[test]
fn rotation_requests_parse() {
    let (kind, at) = parse_request("data-key@2026-11-27T22:00:00Z").expect("parses");
    assert_eq!(kind, KeyKind::DataKey);
    assert_eq!(at, UnixMillis::from_secs(1_795_816_800));
    assert_eq!(
        parse_request("sealing-key@2026-11-27T22:00:00Z")
            .expect("parses")
            .0,
        KeyKind::SealingKey
    );
    for bad in [
        "data-key",
        "root-key@2026-11-27T22:00:00Z",
        "data-key@yesterday",
    ] {
        assert!(parse_request(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_request_in_the_same_second_as_the_key_still_applies() {
    // Whole-second key times made this false, and such a rotation did nothing.
    let made = UnixMillis::from_millis(1_800_000_000_200);
    let asked = Trigger::Requested {
        at: UnixMillis::from_millis(1_800_000_000_700),
    };
    let now = UnixMillis::from_millis(1_800_000_000_900);
    assert!(asked.applies(Some(made), false, now));
    let (_, at) = parse_request("data-key@2027-01-15T08:00:00.700Z").expect("parse");
    assert_eq!(
        at.as_millis() % 1000,
        700,
        "the request keeps its milliseconds"
    );
}

#[test]
fn a_request_applies_once_its_time_has_come_and_only_to_older_keys() {
    let now = UnixMillis::from_secs(1000);
    let at = Trigger::Requested {
        at: UnixMillis::from_secs(900),
    };
    assert!(
        at.applies(Some(UnixMillis::from_secs(800)), false, now),
        "key older than the request"
    );
    assert!(
        !at.applies(Some(UnixMillis::from_secs(900)), false, now),
        "key made for this request"
    );
    assert!(
        !at.applies(Some(UnixMillis::from_secs(950)), false, now),
        "key newer than the request"
    );
    let future = Trigger::Requested {
        at: UnixMillis::from_secs(1100),
    };
    assert!(
        !future.applies(Some(UnixMillis::from_secs(800)), false, now),
        "not yet"
    );
    assert!(Trigger::Schedule.applies(Some(UnixMillis::from_secs(0)), true, now));
    assert!(!Trigger::Schedule.applies(Some(UnixMillis::from_secs(0)), false, now));
}

#[tokio::test]
async fn root_key_rotation_rewraps_every_environment_and_leaves_records_untouched() {
    let memory = seeded().await;
    let before = memory.list_records().await.expect("list");
    let store = CrashingStore::new(&memory, None);
    let keys = keys_over(&store).await;
    let state = rotate_root(&keys, request()).await.expect("rotate");
    assert_eq!(
        state,
        RootKeyState {
            current: 2,
            versions: vec![2],
            grace_ends: None
        }
    );
    let roots = root_keys(&memory).await;
    assert_eq!(roots.versions(), vec![2]);
    assert_eq!(roots.current(), 2);
    for ns in all_namespaces() {
        assert_eq!(stored_keys(&memory, ns).await.root_key_version, 2, "{ns}");
    }
    assert_eq!(
        memory.list_records().await.expect("list"),
        before,
        "records are untouched"
    );
    assert_all_records_open(&memory).await;
    // The same request again is done already; a scheduled check finds nothing due.
    assert_eq!(
        rotate_root(&keys, request()).await.expect("again").current,
        2
    );
    let scheduled = rotate_root(&keys, Trigger::Schedule)
        .await
        .expect("schedule");
    assert_eq!(scheduled.versions, vec![2]);
    // The running Keys picked up the new root key.
    let other = keys.ensure_environment("other").await.expect("new env");
    assert_eq!(other.root_key_version, 2);
}

#[tokio::test]
async fn a_root_key_rotation_killed_after_any_write_finishes_on_restart() {
    // A root key rotation writes: the new key, each environment, the switch, the removal.
    let writes = 1 + all_namespaces().len() as i64 + 1 + 1;
    for crash_after in 0..=writes {
        let memory = seeded().await;
        let at = now_millis();
        let first = CrashingStore::new(&memory, Some(crash_after));
        let keys = keys_over(&first).await;
        let result = rotate_root(&keys, Trigger::Requested { at }).await;
        assert_eq!(
            result.is_err(),
            first.crashed(),
            "crash after {crash_after}"
        );
        // Every intermediate state still opens every environment and record.
        assert_all_records_open(&memory).await;

        // A new process, the same request.
        let second = CrashingStore::new(&memory, None);
        let keys = keys_over(&second).await;
        let state = rotate_root(&keys, Trigger::Requested { at })
            .await
            .expect("finishes");
        assert_eq!(state.current, 2, "crash after {crash_after}");
        assert_eq!(state.versions, vec![2], "crash after {crash_after}");
        let roots = root_keys(&memory).await;
        assert_eq!(roots.versions(), vec![2], "crash after {crash_after}");
        assert_eq!(roots.current(), 2);
        assert_all_records_open(&memory).await;
    }
}

#[tokio::test]
async fn keys_cope_with_environments_under_a_root_key_that_is_not_yet_current() {
    let memory = seeded().await;
    // Steps 1 and 2 only: every environment is under v2, the Secret still says v1.
    let store = CrashingStore::new(&memory, Some(1 + all_namespaces().len() as i64));
    let keys = keys_over(&store).await;
    assert!(rotate_root(&keys, request()).await.is_err());
    let roots = root_keys(&memory).await;
    assert_eq!((roots.current(), roots.newest()), (1, 2));
    assert_eq!(stored_keys(&memory, NS).await.root_key_version, 2);

    // A new environment now is made under the current key, v1; every one opens.
    let fresh = keys_over(&CrashingStore::new(&memory, None)).await;
    let made = fresh.ensure_environment("other").await.expect("env");
    assert_eq!(made.root_key_version, 1);
    let root = fresh.root_for(&made).await.expect("its root");
    made.sealing_public_key(&root, "other").expect("opens");
    let keyring = fresh.keyring_for(NS).await.expect("keys");
    let root = fresh.root_for(&keyring).await.expect("v2 is loaded");
    keyring.sealing_public_key(&root, NS).expect("opens");

    // Finishing the rotation takes the straggler along, and only then drops v1.
    let state = rotate_root(&fresh, request()).await.expect("finish");
    assert_eq!(state.versions, vec![2]);
    assert_eq!(stored_keys(&memory, "other").await.root_key_version, 2);
    assert_all_records_open(&memory).await;
}

#[tokio::test]
async fn a_root_key_version_that_a_stamp_names_outlives_the_rotation() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    // A monitor was stamped under v1 before the rotation.
    let facts = TestFacts::stamped(&[1]);
    let state = rotate_root_key(&keys, &facts, request(), &config(), &Reporting::none())
        .await
        .expect("rotate");
    assert_eq!((state.current, state.versions.clone()), (2, vec![1, 2]));
    assert_all_records_open(&memory).await;
    // Its stamp still verifies: the key that signed it is there.
    keys.root_key(1).await.expect("v1 still loads");

    // The monitor is deleted (or re-applied, under v2): the next check removes v1.
    facts.set_stamps(&[2]);
    let state = rotate_root_key(
        &keys,
        &facts,
        Trigger::Schedule,
        &config(),
        &Reporting::none(),
    )
    .await
    .expect("check");
    assert_eq!(state.versions, vec![2]);
    assert!(keys.root_key(1).await.is_err(), "v1 is gone");
}

#[tokio::test]
async fn old_root_keys_are_kept_when_stamps_cannot_be_listed_or_an_environment_cannot_be_read() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let facts = TestFacts::default();
    facts.stamps_unreadable.store(true, Ordering::SeqCst);
    let state = rotate_root_key(&keys, &facts, request(), &config(), &Reporting::none())
        .await
        .expect("rotate");
    assert_eq!(state.versions, vec![1, 2], "no removal on a guess");

    facts.stamps_unreadable.store(false, Ordering::SeqCst);
    plant_corrupt_environment(&memory, "broken");
    let state = rotate_root_key(
        &keys,
        &facts,
        Trigger::Schedule,
        &config(),
        &Reporting::none(),
    )
    .await
    .expect("check");
    assert_eq!(
        state.versions,
        vec![1, 2],
        "an environment Secret that cannot be read may be under v1"
    );
}

#[tokio::test]
async fn old_root_keys_outlive_the_retire_grace() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let patient = RotationConfig {
        root_key_retire_grace: Duration::from_secs(3600),
        ..config()
    };
    let state = rotate_root_key(&keys, &facts(), request(), &patient, &Reporting::none())
        .await
        .expect("rotate");
    assert_eq!(state.versions, vec![1, 2]);
    let since = root_keys(&memory).await.since().expect("dated");
    assert_eq!(
        state.grace_ends,
        Some(since.plus(Duration::from_secs(3600)))
    );
}

#[tokio::test]
async fn every_replica_signs_with_the_new_root_key_within_one_reload_period() {
    let memory = seeded().await;
    let replica = Keys::bootstrap_with(
        Arc::new(CrashingStore::new(&memory, None)),
        Duration::from_secs(30),
    )
    .await
    .expect("replica");
    assert_eq!(replica.current_root().await.expect("root").version(), 1);
    // Another process rotates; v1 stays for the grace.
    let rotating = keys_over(&CrashingStore::new(&memory, None)).await;
    let patient = RotationConfig {
        root_key_retire_grace: Duration::from_secs(40),
        ..config()
    };
    rotate_root_key(&rotating, &facts(), request(), &patient, &Reporting::none())
        .await
        .expect("rotate");
    // Within the period the replica may still sign with v1, which is still there.
    assert_eq!(replica.current_root().await.expect("root").version(), 1);
    replica
        .pretend_roots_loaded_ago(Duration::from_secs(31))
        .await;
    assert_eq!(
        replica.current_root().await.expect("root").version(),
        2,
        "one reload period later it signs with the new key"
    );
}

/// Rotates the data key and finishes; what an operator restart would do.
async fn data_rotation(
    keys: &Keys<CrashingStore>,
    at: UnixMillis,
) -> Result<DataKeyState, RotationError> {
    let config = config();
    rotate_data_key(
        keys,
        NS,
        Trigger::Requested { at },
        &config.policy,
        &Reporting::none(),
    )
    .await?;
    finish_data_key_rotation(keys, NS, &config, false, &Reporting::none()).await
}

#[tokio::test]
async fn data_key_rotation_reencrypts_every_record_and_destroys_the_old_key() {
    let memory = seeded().await;
    let store = CrashingStore::new(&memory, None);
    let keys = keys_over(&store).await;
    let state = data_rotation(&keys, now_millis()).await.expect("rotate");
    assert_eq!(
        state,
        DataKeyState {
            current: 2,
            versions: vec![2]
        }
    );
    for (_, record) in memory.list_records().await.expect("list").items {
        assert_eq!(record.value.key_version, 2);
        assert!(record.value.fields["password"].starts_with("mv1.d.2."));
    }
    assert_all_records_open(&memory).await;
    let keyring = stored_keys(&memory, NS).await;
    assert_eq!(
        keyring.environment(NS).expect("env").data_keys[&2].encryptions,
        0,
        "counted in memory until the next flush"
    );
    keys.flush_encryption_counts().await.expect("flush");
    let keyring = stored_keys(&memory, NS).await;
    assert_eq!(
        keyring.environment(NS).expect("env").data_keys[&2].encryptions,
        RECORDS as u64
    );
}

#[tokio::test]
async fn progress_counts_the_records_left_on_an_old_data_key() {
    let memory = seeded().await;
    let store = CrashingStore::new(&memory, None);
    let keys = keys_over(&store).await;
    let listing = memory.list_records().await.expect("list");
    assert_eq!(
        reencrypt_progress(&listing, NS, 1),
        ReencryptProgress::default(),
        "every record is on the only key"
    );
    rotate_data_key(
        &keys,
        NS,
        Trigger::Requested { at: now_millis() },
        &config().policy,
        &Reporting::none(),
    )
    .await
    .expect("rotate");
    let listing = memory.list_records().await.expect("list");
    let progress = reencrypt_progress(&listing, NS, 2);
    assert_eq!(progress.remaining, RECORDS, "nothing moved yet");
    assert_eq!(
        reencrypt_progress(&listing, "team-a", 2).remaining,
        0,
        "another namespace's records are not counted"
    );
    tamper(&memory, 0, |record| {
        record
            .fields
            .insert("password".into(), "not an envelope".into());
    })
    .await;
    let listing = memory.list_records().await.expect("list");
    let progress = reencrypt_progress(&listing, NS, 2);
    assert_eq!((progress.remaining, progress.unknown), (RECORDS - 1, 1));
    let limiter = rate_limiter(1000);
    reencrypt_environment(&keys, NS, &limiter, &Reporting::none())
        .await
        .expect("re-encrypt");
    let listing = memory.list_records().await.expect("list");
    let progress = reencrypt_progress(&listing, NS, 2);
    assert_eq!((progress.remaining, progress.unknown), (0, 1));
}

#[tokio::test]
async fn a_data_key_rotation_killed_after_any_write_converges_on_restart() {
    // 1 keyring write (rotate) + one per record + 1 keyring write (retire).
    let total_writes = 1 + RECORDS as i64 + 1;
    for crash_after in 0..=total_writes {
        let memory = seeded().await;
        let at = now_millis();
        let first = CrashingStore::new(&memory, Some(crash_after));
        let keys = keys_over(&first).await;
        let result = data_rotation(&keys, at).await;
        assert_eq!(
            result.is_err(),
            first.crashed(),
            "crash after {crash_after}"
        );
        assert_all_records_open(&memory).await;

        let second = CrashingStore::new(&memory, None);
        let keys = keys_over(&second).await;
        let state = data_rotation(&keys, at).await.expect("finishes");
        assert_eq!(
            state,
            DataKeyState {
                current: 2,
                versions: vec![2]
            },
            "crash after {crash_after}: exactly one new version, the old one destroyed"
        );
        assert_all_records_open(&memory).await;
    }
}

#[tokio::test]
async fn racing_rotations_of_one_request_make_one_new_data_key() {
    let memory = seeded().await;
    let at = now_millis();
    let a = keys_over(&CrashingStore::new(&memory, None)).await;
    let b = keys_over(&CrashingStore::new(&memory, None)).await;
    let (ra, rb) = tokio::join!(data_rotation(&a, at), data_rotation(&b, at));
    let (ra, rb) = (ra.expect("a"), rb.expect("b"));
    assert_eq!(ra.current, 2);
    assert_eq!(rb.current, 2);
    assert_all_records_open(&memory).await;
    let keyring = stored_keys(&memory, NS).await;
    assert_eq!(
        keyring
            .environment(NS)
            .expect("env")
            .data_keys
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![2]
    );
}

#[tokio::test]
async fn old_data_keys_outlive_the_grace() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let config = RotationConfig {
        retire_grace: Duration::from_secs(3600),
        ..config()
    };
    rotate_data_key(&keys, NS, request(), &config.policy, &Reporting::none())
        .await
        .expect("rotate");
    let state = finish_data_key_rotation(&keys, NS, &config, false, &Reporting::none())
        .await
        .expect("finish");
    assert_eq!(state.versions, vec![1, 2], "v1 kept during the grace");
    assert!(!state.finished());
    for (_, record) in memory.list_records().await.expect("list").items {
        assert_eq!(record.value.key_version, 2, "but nothing uses it");
    }
}

#[tokio::test]
async fn the_encryption_count_makes_a_data_key_due() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let policy = RotationPolicy::default();
    assert_eq!(
        rotate_data_key(&keys, NS, Trigger::Schedule, &policy, &Reporting::none())
            .await
            .expect("check"),
        None,
        "an hour-old key is not due"
    );
    keys.count_encryptions(NS, crate::crypto::MAX_ENCRYPTIONS_PER_DATA_KEY);
    keys.flush_encryption_counts().await.expect("flush");
    assert_eq!(
        rotate_data_key(&keys, NS, Trigger::Schedule, &policy, &Reporting::none())
            .await
            .expect("check"),
        Some(2)
    );
}

#[tokio::test]
async fn sealing_keys_rotate_once_per_request_and_are_pruned_after_the_retention() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let policy = RotationPolicy::default();
    let at = request();
    assert_eq!(
        rotate_sealing_key(&keys, NS, at, &policy, &Reporting::none())
            .await
            .expect("rotate"),
        Some(2)
    );
    assert_eq!(
        rotate_sealing_key(&keys, NS, at, &policy, &Reporting::none())
            .await
            .expect("again"),
        None
    );
    assert!(
        prune_sealing_keys(&keys, NS, &policy)
            .await
            .expect("prune")
            .is_empty(),
        "v1 is within the retention"
    );
    let expired = RotationPolicy {
        sealing_key_retention: 0,
        ..policy
    };
    assert_eq!(
        prune_sealing_keys(&keys, NS, &expired)
            .await
            .expect("prune"),
        vec![1]
    );
}

#[tokio::test]
async fn a_check_does_nothing_when_nothing_is_due() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let versions = || {
        let memory = memory.clone();
        async move {
            let mut all = vec![
                memory
                    .root_keys()
                    .await
                    .expect("read")
                    .expect("roots")
                    .resource_version,
            ];
            for (_, env) in memory.list_environments().await.expect("list").items {
                all.push(env.resource_version);
            }
            all
        }
    };
    let before = versions().await;
    check_once(&keys, &facts(), None, &config(), &Reporting::none())
        .await
        .expect("check");
    assert_eq!(before, versions().await, "nothing was written");
    // With every period at zero, one check rotates everything and finishes.
    let eager = RotationConfig {
        policy: RotationPolicy {
            root_key_max_age: 0,
            data_key_max_age: 0,
            sealing_key_max_age: 0,
            sealing_key_retention: 0,
        },
        ..config()
    };
    check_once(&keys, &facts(), None, &eager, &Reporting::none())
        .await
        .expect("check");
    assert_all_records_open(&memory).await;
    let keyring = stored_keys(&memory, NS).await;
    assert_eq!(keyring.root_key_version, 2);
    let env = keyring.environment(NS).expect("env");
    assert_eq!(env.current_sealing_key, 2);
    assert!(env.current_data_key >= 2);
}

/// Replaces item `i`'s stored record with `change(record)`, as a hand edit or an older
/// operator could have left it.
async fn tamper(memory: &MemoryStore, i: usize, change: impl FnOnce(&mut ItemRecord)) {
    let stored = memory
        .record(&item(i))
        .await
        .expect("read")
        .expect("record");
    let mut record = stored.value.clone();
    change(&mut record);
    memory
        .put_record(&item(i), &record, Some(&stored.resource_version))
        .await
        .expect("plant");
}

#[tokio::test]
async fn retirement_goes_by_the_envelopes_not_by_the_records_own_version() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let config = config();
    rotate_data_key(&keys, NS, request(), &config.policy, &Reporting::none())
        .await
        .expect("rotate");
    // A record that says it is on the new key while its field is still on the old one.
    tamper(&memory, 0, |record| record.key_version = 2).await;
    let state = finish_data_key_rotation(&keys, NS, &config, false, &Reporting::none())
        .await
        .expect("finish");
    assert_all_records_open(&memory).await;
    assert_eq!(
        state,
        DataKeyState {
            current: 2,
            versions: vec![2]
        },
        "the field was moved first, then the old key destroyed"
    );
    let record = memory
        .record(&item(0))
        .await
        .expect("read")
        .expect("record");
    assert!(record.value.fields["password"].starts_with("mv1.d.2."));
}

#[tokio::test]
async fn a_record_whose_envelope_cannot_be_read_keeps_every_key_of_its_namespace() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let config = config();
    rotate_data_key(&keys, NS, request(), &config.policy, &Reporting::none())
        .await
        .expect("rotate");
    // A second field that is not an envelope at all: which key it needs is unknown.
    tamper(&memory, 0, |record| {
        record.key_version = 2;
        record
            .fields
            .insert("value".into(), "not-an-envelope".into());
    })
    .await;
    let state = finish_data_key_rotation(&keys, NS, &config, false, &Reporting::none())
        .await
        .expect("finish");
    assert_eq!(
        state.versions,
        vec![1, 2],
        "nothing is destroyed on a guess"
    );
    // Every other record moved on.
    for (key, record) in memory.list_records().await.expect("list").items {
        if key != item(0) {
            assert!(
                record.value.fields["password"].starts_with("mv1.d.2."),
                "{key}"
            );
        }
    }
}

/// Plants an environment Secret for `ns` whose JSON does not parse.
fn plant_corrupt_environment(memory: &MemoryStore, ns: &str) {
    use k8s_openapi::ByteString;
    let root = RootKey::generate(1).expect("root");
    let mut keyring = Keyring::new(&root, UnixMillis::from_secs(0));
    keyring
        .ensure_environment(&root, ns, UnixMillis::from_secs(0))
        .expect("env");
    let mut secret = crate::store::layout::environment_secret(ns, &keyring).expect("secret");
    secret.data = Some(BTreeMap::from([(
        crate::store::layout::KEYRING_DATA.to_owned(),
        ByteString(b"{not json".to_vec()),
    )]));
    memory.insert_raw(secret);
}

/// Plants a record Secret for `ns/name` whose JSON does not parse.
fn plant_corrupt_record(memory: &MemoryStore, ns: &str, name: &str) {
    use k8s_openapi::ByteString;
    let key = ItemKey::new(ns, name);
    let mut secret = crate::store::layout::record_secret(&key, &record_like()).expect("secret");
    secret.data = Some(BTreeMap::from([(
        crate::store::layout::RECORD_DATA.to_owned(),
        ByteString(b"{not json".to_vec()),
    )]));
    memory.insert_raw(secret);
}

fn record_like() -> ItemRecord {
    ItemRecord {
        uid: "u".into(),
        key_version: 1,
        fields: BTreeMap::new(),
        source_digest: String::new(),
        generation: None,
    }
}

#[tokio::test]
async fn a_corrupt_record_elsewhere_stalls_nothing_and_one_here_keeps_this_namespaces_keys() {
    let memory = seeded().await;
    plant_corrupt_record(&memory, "elsewhere", "broken");
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let state = data_rotation(&keys, now_millis()).await.expect("rotation");
    assert_eq!(
        state,
        DataKeyState {
            current: 2,
            versions: vec![2]
        },
        "a record in another namespace does not hold this one up"
    );
    assert_all_records_open(&memory).await;

    // One in this namespace could be on any key: the rotation moves every readable
    // record but destroys no key.
    let memory = seeded().await;
    plant_corrupt_record(&memory, NS, "broken");
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let state = data_rotation(&keys, now_millis()).await.expect("rotation");
    assert_eq!(
        state.versions,
        vec![1, 2],
        "v1 is kept for the unreadable record"
    );
    for (key, record) in memory.list_records().await.expect("list").items {
        assert_eq!(record.value.key_version, 2, "{key} moved on");
    }
}

/// Environments for the scale test: a namespace's keys take about 2 KB.
const MANY: usize = 10_000;

/// The real store costs one Secret of some 350 bytes (2 KB after a year of rotations) per
/// environment, one paged list per check, and one write per environment per root key
/// rotation; the in-memory store keeps the very same Secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_environments_still_rotate_prune_and_flush() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let team = |i: usize| format!("team-{i:05}");
    for i in 0..MANY {
        keys.ensure_environment(&team(i))
            .await
            .unwrap_or_else(|e| panic!("environment {i}: {e}"));
    }
    // The first hundred namespaces were deleted.
    let gone = 100;
    let mut live: BTreeSet<String> = (gone..MANY).map(team).collect();
    live.extend(all_namespaces().into_iter().map(str::to_owned));
    let facts = TestFacts {
        live: Some(live),
        ..TestFacts::default()
    };
    keys.count_encryptions(&team(4242), 7);
    let eager = RotationConfig {
        policy: RotationPolicy {
            root_key_max_age: 0,
            ..RotationPolicy::default()
        },
        deleted_namespace_grace: Duration::ZERO,
        ..config()
    };
    check_once(&keys, &facts, None, &eager, &Reporting::none())
        .await
        .expect("first check");
    let listing = memory.list_environments().await.expect("list");
    assert_eq!(listing.items.len(), MANY + all_namespaces().len());
    assert!(
        listing
            .items
            .iter()
            .all(|(_, env)| env.value.root_key_version == 2),
        "every environment re-wrapped"
    );
    assert_eq!(root_keys(&memory).await.versions(), vec![2]);
    let marked = listing
        .items
        .iter()
        .filter(|(ns, env)| {
            env.value
                .environment(ns)
                .is_ok_and(|e| e.orphaned_since.is_some())
        })
        .count();
    assert_eq!(
        marked, gone,
        "the deleted namespaces are marked, not yet dropped"
    );
    let counted = stored_keys(&memory, &team(4242)).await;
    let env = counted.environment(&team(4242)).expect("env");
    assert_eq!(
        env.data_keys[&env.current_data_key].encryptions, 7,
        "flushed"
    );

    // The next check drops them (the grace is zero here), and counts for one of them are
    // dropped with it rather than failing the flush.
    keys.count_encryptions(&team(0), 3);
    keys.count_encryptions(&team(4242), 1);
    let prune_now = RotationConfig {
        deleted_namespace_grace: Duration::ZERO,
        ..config()
    };
    check_once(&keys, &facts, None, &prune_now, &Reporting::none())
        .await
        .expect("second check");
    let listing = memory.list_environments().await.expect("list");
    assert_eq!(listing.items.len(), MANY - gone + all_namespaces().len());
    assert!(memory.environment(&team(0)).await.expect("read").is_none());
    let counted = stored_keys(&memory, &team(4242)).await;
    let env = counted.environment(&team(4242)).expect("env");
    assert_eq!(env.data_keys[&env.current_data_key].encryptions, 8);
    assert_all_records_open(&memory).await;
}

#[tokio::test]
async fn a_split_of_the_old_keyring_killed_after_any_write_finishes_on_restart() {
    use crate::store::layout;
    let root = RootKey::generate(1).expect("root");
    let mut old = Keyring::new(&root, UnixMillis::from_secs(1234));
    for ns in all_namespaces() {
        old.ensure_environment(&root, ns, UnixMillis::from_secs(1234))
            .expect("env");
    }
    // One write per environment, the root key's date, the head.
    let writes = all_namespaces().len() as i64 + 2;
    for crash_after in 0..=writes {
        let memory = MemoryStore::new();
        let set = RootKeySet::new(
            RootKey::from_bytes(1, root.expose_bytes()).expect("copy"),
            UnixMillis::from_secs(0),
        );
        let mut secret = layout::root_key_secret(&set).expect("secret");
        if let Some(data) = secret.0.data.as_mut() {
            data.remove(layout::ROOT_KEY_SINCE);
        }
        memory.insert_raw(std::mem::take(&mut secret.0));
        memory.insert_raw(layout::legacy_keyring_secret(&old).expect("old format"));

        let first = CrashingStore::new(&memory, Some(crash_after));
        let result = Keys::bootstrap(Arc::new(first.clone())).await;
        assert_eq!(
            result.is_err(),
            first.crashed(),
            "crash after {crash_after}"
        );

        let keys = keys_over(&CrashingStore::new(&memory, None)).await;
        let split: Vec<(String, Keyring)> = memory
            .list_environments()
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|(ns, stored)| (ns, stored.value))
            .collect();
        assert_eq!(split, old.split(), "crash after {crash_after}");
        assert_eq!(
            root_keys(&memory).await.since(),
            Some(UnixMillis::from_secs(1234))
        );
        assert!(matches!(
            memory
                .keyring_head()
                .await
                .expect("read")
                .expect("head")
                .value,
            StoredKeyring::Head(_)
        ));
        for ns in all_namespaces() {
            let keyring = keys.keyring_for(ns).await.expect("keys");
            let root = keys.root_for(&keyring).await.expect("root");
            keyring.sealing_public_key(&root, ns).expect("opens");
        }
    }
}

#[tokio::test]
async fn a_namespace_that_comes_back_within_the_grace_keeps_its_keys() {
    let memory = seeded().await;
    let keys = keys_over(&CrashingStore::new(&memory, None)).await;
    let without = |gone: &str| TestFacts {
        live: Some(
            all_namespaces()
                .into_iter()
                .filter(|ns| *ns != gone)
                .map(str::to_owned)
                .collect(),
        ),
        ..TestFacts::default()
    };
    let before = stored_keys(&memory, "team-a").await;
    check_once(
        &keys,
        &without("team-a"),
        None,
        &config(),
        &Reporting::none(),
    )
    .await
    .expect("check");
    let marked = stored_keys(&memory, "team-a").await;
    assert!(
        marked
            .environment("team-a")
            .expect("env")
            .orphaned_since
            .is_some()
    );
    // Within the (default, seven-day) grace nothing is dropped, however often it checks.
    check_once(
        &keys,
        &without("team-a"),
        None,
        &config(),
        &Reporting::none(),
    )
    .await
    .expect("check");
    assert!(memory.environment("team-a").await.expect("read").is_some());
    // It comes back: unmarked, the very same keys.
    check_once(
        &keys,
        &without("nobody"),
        None,
        &config(),
        &Reporting::none(),
    )
    .await
    .expect("check");
    assert_eq!(stored_keys(&memory, "team-a").await, before);
    // Unknown namespaces (no answer from the API server) drop nothing either.
    let prune_now = RotationConfig {
        deleted_namespace_grace: Duration::ZERO,
        ..config()
    };
    check_once(&keys, &facts(), None, &prune_now, &Reporting::none())
        .await
        .expect("check");
    assert_eq!(
        memory.list_environments().await.expect("list").items.len(),
        3
    );
    // A scoped operator touches only its own namespace's keys.
    check_once(
        &keys,
        &without("team-b"),
        Some(NS),
        &prune_now,
        &Reporting::none(),
    )
    .await
    .expect("check");
    assert_eq!(
        stored_keys(&memory, "team-b")
            .await
            .environment("team-b")
            .expect("env")
            .orphaned_since,
        None
    );
}
