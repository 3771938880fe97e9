//! Rotation over the in-memory store, including a crash after every single write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::*;
use crate::crypto::{ItemBinding, Plaintext};
use crate::store::{ItemKey, ItemRecord, Listing, MemoryStore, RootKeySet};

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
    async fn keyring(&self) -> Result<Option<Versioned<Keyring>>, StoreError> {
        self.inner.keyring().await
    }
    async fn put_keyring(
        &self,
        keyring: &Keyring,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.write()?;
        self.inner.put_keyring(keyring, expected).await
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

/// A store with a root key, an environment whose keys are an hour old, and records.
async fn seeded() -> MemoryStore {
    let store = MemoryStore::new();
    let root = RootKey::generate(1).expect("root");
    let hour_ago = unix_now() - 3600;
    let mut keyring = Keyring::new(&root, hour_ago);
    keyring
        .ensure_environment(&root, NS, hour_ago)
        .expect("environment");
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
        .put_root_keys(&RootKeySet::new(root), None)
        .await
        .expect("root keys");
    store.put_keyring(&keyring, None).await.expect("keyring");
    store
}

async fn keys_over(store: &CrashingStore) -> Keys<CrashingStore> {
    Keys::bootstrap(Arc::new(store.clone()))
        .await
        .expect("bootstrap copes with every intermediate state")
}

/// Every record opens to its plaintext with the root key the store holds, and names a
/// data key version the keyring still has.
async fn assert_all_records_open(store: &MemoryStore) {
    let roots = store.root_keys().await.expect("read").expect("roots").value;
    let keyring = store.keyring().await.expect("read").expect("keyring").value;
    let root = roots
        .key(keyring.root_key_version)
        .expect("root opens keyring");
    keyring.check_root(&root).expect("right root");
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
        ..RotationConfig::default()
    }
}

fn request() -> Trigger {
    Trigger::Requested { at: unix_now() }
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
    assert_eq!(at, 1_795_816_800);
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
fn a_request_applies_once_its_time_has_come_and_only_to_older_keys() {
    let now = 1000;
    let at = Trigger::Requested { at: 900 };
    assert!(
        at.applies(Some(800), false, now),
        "key older than the request"
    );
    assert!(
        !at.applies(Some(900), false, now),
        "key made for this request"
    );
    assert!(
        !at.applies(Some(950), false, now),
        "key newer than the request"
    );
    let future = Trigger::Requested { at: 1100 };
    assert!(!future.applies(Some(800), false, now), "not yet");
    assert!(Trigger::Schedule.applies(Some(0), true, now));
    assert!(!Trigger::Schedule.applies(Some(0), false, now));
}

#[tokio::test]
async fn root_key_rotation_rewraps_the_keyring_and_leaves_records_untouched() {
    let memory = seeded().await;
    let before = memory.list_records().await.expect("list");
    let store = CrashingStore::new(&memory, None);
    let keys = keys_over(&store).await;
    let policy = RotationPolicy::default();
    let version = rotate_root_key(&keys, request(), &policy, &Reporting::none())
        .await
        .expect("rotate");
    assert_eq!(version, 2);
    let roots = memory
        .root_keys()
        .await
        .expect("read")
        .expect("roots")
        .value;
    assert_eq!(roots.versions(), vec![2]);
    assert_eq!(roots.current(), 2);
    assert_eq!(
        memory.list_records().await.expect("list"),
        before,
        "records are untouched"
    );
    assert_all_records_open(&memory).await;
    // The same request again is done already; a scheduled check finds nothing due.
    let again = rotate_root_key(&keys, request(), &policy, &Reporting::none())
        .await
        .expect("again");
    assert_eq!(again, 2);
    let scheduled = rotate_root_key(&keys, Trigger::Schedule, &policy, &Reporting::none())
        .await
        .expect("schedule");
    assert_eq!(scheduled, 2);
    // The running Keys picked up the new root key.
    keys.ensure_environment("other").await.expect("new env");
}

#[tokio::test]
async fn a_root_key_rotation_killed_after_any_write_finishes_on_restart() {
    // Four writes make a root key rotation; crash after 0, 1, 2, 3 and 4 of them.
    for crash_after in 0..=4 {
        let memory = seeded().await;
        let at = unix_now();
        let first = CrashingStore::new(&memory, Some(crash_after));
        let keys = keys_over(&first).await;
        let result = rotate_root_key(
            &keys,
            Trigger::Requested { at },
            &RotationPolicy::default(),
            &Reporting::none(),
        )
        .await;
        assert_eq!(
            result.is_err(),
            first.crashed(),
            "crash after {crash_after}"
        );
        // Every intermediate state still opens every record.
        assert_all_records_open(&memory).await;

        // A new process, the same request.
        let second = CrashingStore::new(&memory, None);
        let keys = keys_over(&second).await;
        let version = rotate_root_key(
            &keys,
            Trigger::Requested { at },
            &RotationPolicy::default(),
            &Reporting::none(),
        )
        .await
        .expect("finishes");
        let roots = memory
            .root_keys()
            .await
            .expect("read")
            .expect("roots")
            .value;
        assert_eq!(version, 2, "crash after {crash_after}");
        assert_eq!(roots.versions(), vec![2], "crash after {crash_after}");
        assert_eq!(roots.current(), 2);
        assert_all_records_open(&memory).await;
    }
}

#[tokio::test]
async fn keys_cope_with_a_keyring_under_a_root_key_that_is_not_yet_current() {
    let memory = seeded().await;
    // Steps 1 and 2 only: the keyring is under v2, the Secret still says v1 is current.
    let store = CrashingStore::new(&memory, Some(2));
    let keys = keys_over(&store).await;
    assert!(
        rotate_root_key(
            &keys,
            request(),
            &RotationPolicy::default(),
            &Reporting::none()
        )
        .await
        .is_err()
    );
    let roots = memory
        .root_keys()
        .await
        .expect("read")
        .expect("roots")
        .value;
    let keyring = memory
        .keyring()
        .await
        .expect("read")
        .expect("keyring")
        .value;
    assert_eq!((roots.current(), keyring.root_key_version), (1, 2));
    let fresh = keys_over(&CrashingStore::new(&memory, None)).await;
    let keyring = fresh.ensure_environment("other").await.expect("env");
    assert_eq!(keyring.root_key_version, 2);
    // The process that lived through it too.
    let old = keys_over(&CrashingStore::new(&memory, None)).await;
    old.ensure_environment("third").await.expect("env");
}

/// Rotates the data key and finishes; what an operator restart would do.
async fn data_rotation(keys: &Keys<CrashingStore>, at: i64) -> Result<DataKeyState, RotationError> {
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
    let state = data_rotation(&keys, unix_now()).await.expect("rotate");
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
    let keyring = memory
        .keyring()
        .await
        .expect("read")
        .expect("keyring")
        .value;
    assert_eq!(
        keyring.environment(NS).expect("env").data_keys[&2].encryptions,
        0,
        "counted in memory until the next flush"
    );
    keys.flush_encryption_counts().await.expect("flush");
    let keyring = memory
        .keyring()
        .await
        .expect("read")
        .expect("keyring")
        .value;
    assert_eq!(
        keyring.environment(NS).expect("env").data_keys[&2].encryptions,
        RECORDS as u64
    );
}

#[tokio::test]
async fn a_data_key_rotation_killed_after_any_write_converges_on_restart() {
    // 1 keyring write (rotate) + one per record + 1 keyring write (retire).
    let total_writes = 1 + RECORDS as i64 + 1;
    for crash_after in 0..=total_writes {
        let memory = seeded().await;
        let at = unix_now();
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
    let at = unix_now();
    let a = keys_over(&CrashingStore::new(&memory, None)).await;
    let b = keys_over(&CrashingStore::new(&memory, None)).await;
    let (ra, rb) = tokio::join!(data_rotation(&a, at), data_rotation(&b, at));
    let (ra, rb) = (ra.expect("a"), rb.expect("b"));
    assert_eq!(ra.current, 2);
    assert_eq!(rb.current, 2);
    assert_all_records_open(&memory).await;
    let keyring = memory
        .keyring()
        .await
        .expect("read")
        .expect("keyring")
        .value;
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
    let before = memory.keyring().await.expect("read").expect("keyring");
    check_once(&keys, None, None, &config(), &Reporting::none())
        .await
        .expect("check");
    let after = memory.keyring().await.expect("read").expect("keyring");
    assert_eq!(before.resource_version, after.resource_version);
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
    check_once(&keys, None, None, &eager, &Reporting::none())
        .await
        .expect("check");
    assert_all_records_open(&memory).await;
    let keyring = memory
        .keyring()
        .await
        .expect("read")
        .expect("keyring")
        .value;
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
    let state = data_rotation(&keys, unix_now()).await.expect("rotation");
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
    let state = data_rotation(&keys, unix_now()).await.expect("rotation");
    assert_eq!(
        state.versions,
        vec![1, 2],
        "v1 is kept for the unreadable record"
    );
    for (key, record) in memory.list_records().await.expect("list").items {
        assert_eq!(record.value.key_version, 2, "{key} moved on");
    }
}
