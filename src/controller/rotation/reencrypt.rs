//! The rest of a data key rotation: records re-encrypted at a bounded rate onto the
//! current key, and old keys destroyed once no record uses them.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

use crate::crypto::{CryptoError, DataCipher, EnvelopeKind, ItemBinding, key_version_of};
use crate::crypto::{Environment, UnixMillis, reencrypt};
use crate::store::{ItemKey, ItemRecord, Listing, Store, Versioned};
use crate::store::{Keys, now_millis};

use super::{Reporting, RotationConfig, RotationError, change_environment, read_environment};

/// Re-encryption passes per check: records re-ingested meanwhile are already current, so
/// a second pass only finds records a concurrent rotation left behind.
const MAX_PASSES: u32 = 3;

/// How often re-encryption reports its progress in the log.
const PROGRESS_EVERY: usize = 100;

/// What a re-encryption pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReencryptOutcome {
    /// Records moved to the current key.
    pub reencrypted: usize,
    /// Records changed underneath (re-ingested or deleted): left to the next pass.
    pub conflicts: usize,
    /// Records that could not be re-encrypted (logged); they keep their old key.
    pub failed: usize,
    /// Records found on old versions at the start of the pass.
    pub found: usize,
}

/// Paces re-encryption writes: a GCRA limiter from `governor`.
pub type RateLimiter = governor::DefaultDirectRateLimiter;

/// At most `rate` writes per second (at least one), spaced out: a burst of one, so a
/// rotation never sends the API server a flood, even right after a pause.
pub fn reencrypt_quota(rate: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN)).allow_burst(NonZeroU32::MIN)
}

/// A limiter of [`reencrypt_quota`].
pub fn rate_limiter(rate: u32) -> RateLimiter {
    RateLimiter::direct(reencrypt_quota(rate))
}

/// Moves every record of `namespace` that is on an old data key to the current one, at
/// most `limiter`'s rate. Each record is one CAS write; a conflict means the item was
/// re-ingested (under the current key) or deleted meanwhile, and is skipped.
pub async fn reencrypt_environment<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    limiter: &RateLimiter,
    reporting: &Reporting,
) -> Result<ReencryptOutcome, RotationError> {
    let keyring = read_environment(keys.store(), namespace).await?.value;
    let env = keyring.environment(namespace)?;
    let mut outcome = ReencryptOutcome::default();
    if env.data_keys.len() <= 1 {
        return Ok(outcome);
    }
    let root = keys.root_for(&keyring).await?;
    let to = keyring.current_data_cipher(&root, namespace)?;
    // Which key a record needs is what its envelopes say, not its own `key_version`.
    let mut old: Vec<(ItemKey, Versioned<ItemRecord>, BTreeSet<u32>)> = Vec::new();
    let listing = keys.store().list_records().await?;
    report_unreadable(&listing, reporting);
    for (key, record) in listing.items {
        if key.namespace != namespace {
            continue;
        }
        match envelope_versions(&record.value) {
            Ok(versions) if on_key(&record.value, &versions, to.version()) => {}
            Ok(versions) => old.push((key, record, versions)),
            Err(e) => {
                tracing::error!(%key, error = %e, "record has a field that is not a stored envelope; it keeps its keys");
                outcome.failed += 1;
            }
        }
    }
    outcome.found = old.len() + outcome.failed;
    if old.is_empty() {
        return Ok(outcome);
    }
    tracing::info!(
        namespace,
        current = to.version(),
        remaining = old.len(),
        "re-encrypting records onto the current data key"
    );
    let mut ciphers: BTreeMap<u32, DataCipher> = BTreeMap::new();
    let mut fields_encrypted = 0u64;
    for (done, (key, record, versions)) in old.iter().enumerate() {
        if let Some(m) = reporting.metrics() {
            m.remaining
                .set(i64::try_from(old.len() - done).unwrap_or(i64::MAX));
        }
        limiter.until_ready().await;
        let mut missing = None;
        for version in versions {
            if *version == to.version() || ciphers.contains_key(version) {
                continue;
            }
            match keyring.data_cipher(&root, namespace, *version) {
                Ok(cipher) => {
                    ciphers.insert(*version, cipher);
                }
                Err(e) => {
                    missing = Some((*version, e));
                    break;
                }
            }
        }
        if let Some((version, e)) = missing {
            tracing::error!(%key, version, error = %e, "record is on a data key the keyring cannot open");
            outcome.failed += 1;
            continue;
        }
        let next = match reencrypt_record(&ciphers, &to, key, &record.value) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(%key, error = %e, "cannot re-encrypt record");
                outcome.failed += 1;
                continue;
            }
        };
        let moved = next
            .fields
            .iter()
            .filter(|(field, text)| record.value.fields.get(*field) != Some(*text))
            .count() as u64;
        match keys
            .store()
            .put_record(key, &next, Some(&record.resource_version))
            .await
        {
            Ok(_) => {
                outcome.reencrypted += 1;
                fields_encrypted += moved;
                if let Some(m) = reporting.metrics() {
                    m.reencrypted.inc();
                }
            }
            Err(e) if e.is_conflict() => outcome.conflicts += 1,
            Err(e) => {
                keys.count_encryptions(namespace, fields_encrypted);
                return Err(e.into());
            }
        }
        if (done + 1) % PROGRESS_EVERY == 0 {
            tracing::info!(
                namespace,
                current = to.version(),
                reencrypted = outcome.reencrypted,
                remaining = old.len() - done - 1,
                "re-encryption progress"
            );
        }
    }
    keys.count_encryptions(namespace, fields_encrypted);
    if let Some(m) = reporting.metrics() {
        m.remaining
            .set(i64::try_from(outcome.conflicts + outcome.failed).unwrap_or(i64::MAX));
    }
    tracing::info!(
        namespace,
        current = to.version(),
        ?outcome,
        "re-encryption pass done"
    );
    Ok(outcome)
}

/// Whether a record is on data key `current`, and says so: every envelope, and its own
/// `key_version`.
fn on_key(record: &ItemRecord, versions: &BTreeSet<u32>, current: u32) -> bool {
    versions.iter().all(|v| *v == current) && record.key_version == current
}

/// How far a data key rotation of one environment is, from a record listing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReencryptProgress {
    /// Records with a field on an older data key: what re-encryption still has to move.
    pub remaining: usize,
    /// Records whose keys cannot be told (a field that is not a stored envelope, or a
    /// Secret that cannot be read): they hold every old key of the namespace.
    pub unknown: usize,
}

/// What is left to re-encrypt in `namespace` onto data key `current`, decided the way
/// [`reencrypt_environment`] decides it. Pure, for `kubectl monivault status`.
pub fn reencrypt_progress(
    listing: &Listing<ItemKey, ItemRecord>,
    namespace: &str,
    current: u32,
) -> ReencryptProgress {
    let mut progress = ReencryptProgress::default();
    for (key, record) in &listing.items {
        if key.namespace != namespace {
            continue;
        }
        match envelope_versions(&record.value) {
            Ok(versions) if on_key(&record.value, &versions, current) => {}
            Ok(_) => progress.remaining += 1,
            Err(_) => progress.unknown += 1,
        }
    }
    progress.unknown += listing
        .unreadable
        .iter()
        .filter(|u| u.namespace.as_deref() == Some(namespace))
        .count();
    progress
}

/// Says which record Secrets a listing could not read: each in the log, their number in
/// `monivault_unreadable_records`. They are skipped, not fatal: one corrupt or foreign
/// Secret must not stall rotation in every namespace.
fn report_unreadable(listing: &Listing<ItemKey, ItemRecord>, reporting: &Reporting) {
    for unreadable in &listing.unreadable {
        tracing::warn!(
            secret = %unreadable.secret,
            namespace = unreadable.namespace.as_deref().unwrap_or("<unknown>"),
            reason = %unreadable.reason,
            "skipping a record Secret that cannot be read; its namespace keeps every data key"
        );
    }
    if let Some(m) = reporting.metrics() {
        m.unreadable_records
            .set(i64::try_from(listing.unreadable.len()).unwrap_or(i64::MAX));
    }
}

/// The data key versions a record's fields are encrypted under, read from each envelope.
/// An error if any field is not a stored-data envelope: then nobody knows which key it
/// needs, and no key of its namespace may be destroyed.
fn envelope_versions(record: &ItemRecord) -> Result<BTreeSet<u32>, CryptoError> {
    record
        .fields
        .values()
        .map(|text| match key_version_of(text)? {
            (EnvelopeKind::Data, version) => Ok(version),
            (EnvelopeKind::Sealed, _) => Err(CryptoError::WrongEnvelopeKind {
                expected: "data",
                found: "sealed",
            }),
        })
        .collect()
}

/// The record with every field on `to`'s key; `from` holds a cipher for every other
/// version its fields are on. Pure: the caller writes it by CAS.
fn reencrypt_record(
    from: &BTreeMap<u32, DataCipher>,
    to: &DataCipher,
    key: &ItemKey,
    record: &ItemRecord,
) -> Result<ItemRecord, CryptoError> {
    let mut next = record.clone();
    for (field, text) in next.fields.iter_mut() {
        let (_, version) = key_version_of(text)?;
        if version == to.version() {
            continue;
        }
        let cipher = from.get(&version).ok_or(CryptoError::UnknownKeyVersion {
            namespace: key.namespace.clone(),
            kind: "data",
            version,
        })?;
        let binding = ItemBinding {
            namespace: &key.namespace,
            item: &key.name,
            uid: &record.uid,
            field,
        };
        if let Some(moved) = reencrypt(cipher, to, &binding, text)? {
            *text = moved;
        }
    }
    next.key_version = to.version();
    Ok(next)
}

/// Destroys every data key version of `namespace` that no record uses, once the current
/// key is older than `grace`. `in_use` comes from a record list taken after the grace, so
/// an ingest that raced the rotation is seen. Returns the destroyed versions.
pub async fn retire_unused_data_keys<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    grace: Duration,
    reporting: &Reporting,
) -> Result<Vec<u32>, RotationError> {
    let keyring = read_environment(keys.store(), namespace).await?.value;
    if !grace_elapsed(keyring.environment(namespace)?, grace, now_millis()) {
        return Ok(Vec::new());
    }
    if keyring.environment(namespace)?.data_keys.len() <= 1 {
        return Ok(Vec::new());
    }
    // Every version any field of any record of the namespace is on. One record whose
    // envelopes cannot be read could need any of them: then nothing is destroyed.
    let mut in_use = BTreeSet::new();
    let listing = keys.store().list_records().await?;
    report_unreadable(&listing, reporting);
    if listing.unreadable_in(namespace) {
        tracing::warn!(
            namespace,
            "a record Secret that may belong here cannot be read; destroying no data key of this namespace"
        );
        return Ok(Vec::new());
    }
    for (key, record) in listing.items {
        if key.namespace != namespace {
            continue;
        }
        match envelope_versions(&record.value) {
            Ok(versions) => in_use.extend(versions),
            Err(e) => {
                tracing::warn!(%key, error = %e, "a record's keys are unknown; destroying no data key of its namespace");
                return Ok(Vec::new());
            }
        }
    }
    let now = now_millis();
    let mut retired = Vec::new();
    change_environment(keys, namespace, |keyring, _| {
        retired.clear();
        // A rotation since our read restarts the grace: its predecessor may still gain
        // records from a racing ingest.
        if !grace_elapsed(keyring.environment(namespace)?, grace, now) {
            return Ok(false);
        }
        for version in keyring.retirable_data_keys(namespace, &in_use) {
            keyring.retire_data_key(namespace, version, &in_use)?;
            retired.push(version);
        }
        Ok(!retired.is_empty())
    })
    .await?;
    if !retired.is_empty() {
        tracing::info!(namespace, versions = ?retired, "destroyed unused data keys");
        if let Some(m) = reporting.metrics() {
            m.retired.inc_by(retired.len() as u64);
        }
    }
    Ok(retired)
}

fn grace_elapsed(env: &Environment, grace: Duration, now: UnixMillis) -> bool {
    env.current_data_key_since()
        .is_some_and(|since| since.plus(grace) <= now)
}

/// Where a data key rotation of one environment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyState {
    pub current: u32,
    /// Every data key version still held, current included.
    pub versions: Vec<u32>,
}

impl DataKeyState {
    pub fn finished(&self) -> bool {
        self.versions == [self.current]
    }
}

/// Re-encrypts `namespace`'s old records and retires unused keys: the part of a data key
/// rotation after the new key exists. Safe to run any number of times, concurrently with
/// the operator. With `wait_for_grace`, sleeps out the retire grace instead of leaving the
/// retirement to a later call.
pub async fn finish_data_key_rotation<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    config: &RotationConfig,
    wait_for_grace: bool,
    reporting: &Reporting,
) -> Result<DataKeyState, RotationError> {
    let limiter = rate_limiter(config.reencrypt_rate);
    let mut total = ReencryptOutcome::default();
    for _ in 0..MAX_PASSES {
        let pass = reencrypt_environment(keys, namespace, &limiter, reporting).await?;
        total.reencrypted += pass.reencrypted;
        total.failed = pass.failed;
        if pass.found == 0 || pass.found == pass.failed {
            break;
        }
    }
    if wait_for_grace {
        let keyring = read_environment(keys.store(), namespace).await?.value;
        let env = keyring.environment(namespace)?;
        if env.data_keys.len() > 1 {
            let created = env
                .current_data_key_since()
                .unwrap_or(UnixMillis::from_millis(0));
            let left = now_millis().until(created.plus(config.retire_grace));
            if !left.is_zero() {
                tracing::info!(
                    namespace,
                    seconds = left.as_secs_f64(),
                    "waiting out the retire grace"
                );
                tokio::time::sleep(left).await;
            }
        }
    }
    let retired = retire_unused_data_keys(keys, namespace, config.retire_grace, reporting).await?;
    let keyring = read_environment(keys.store(), namespace).await?.value;
    let env = keyring.environment(namespace)?;
    let state = DataKeyState {
        current: env.current_data_key,
        versions: env.data_keys.keys().copied().collect(),
    };
    if !retired.is_empty() && state.finished() {
        reporting
            .event(
                namespace,
                "DataKeyRotationComplete",
                format!(
                    "every record is on data key version {}; destroyed versions {retired:?}",
                    state.current
                ),
            )
            .await;
    }
    if total.reencrypted > 0 || !retired.is_empty() {
        tracing::info!(
            namespace,
            current = state.current,
            versions = ?state.versions,
            reencrypted = total.reencrypted,
            "data key rotation progress"
        );
    }
    Ok(state)
}
