//! Key rotation: the root key, and per environment the data key and the sealing key, on a
//! schedule ([`run_rotation_loop`], leader only) or on demand (`monivault rotate`, or the
//! `monivault.io/rotate` annotation on a VaultSection); and the keys of deleted namespaces,
//! dropped after a grace ([`orphans`]).
//!
//! Crash safety: every step reads the stored state, decides from it alone what is left to
//! do, and makes compare-and-swap writes. A process killed at any instant leaves a state
//! some step recognises, so running the same rotation again (or the next check of the
//! loop) finishes it and never starts a second one.
//!
//! Root key (installation-wide): see [`root`]. A new version is stored, every environment
//! is re-wrapped under it (one write each), it becomes current, and old versions go once
//! no environment is under them and no admission stamp names them.
//!
//! Data key (per environment): a new version becomes current (CAS on the environment's
//! keys); every record with a field on an older version is re-encrypted at a bounded rate
//! (CAS on the record: a conflict means it was re-ingested, under the current key);
//! versions no record's envelopes use are destroyed (`in_use` from a fresh list). New
//! records are always written under the current version, so the set of old records only
//! shrinks.
//!
//! Sealing key (per environment): a new version becomes current; superseded ones are
//! dropped after the retention, so sealed values in Git keep opening until then.
//!
//! An on-demand request carries a time; it is honoured once its time has come and only
//! while the current key is older than it. The new key's creation time is at least the
//! request's, so repeating or racing the request rotates once, with no state of its own.
//!
//! Scale: a check lists the environment Secrets once and touches only the environments
//! with something due, so ten thousand namespaces cost one paged list a check.
//!
//! What it must never do: log, or put in an Event, a key or a plaintext. Messages carry
//! namespaces, versions and counts. Nor destroy a key on a guess: a Secret it cannot read,
//! or a fact about the cluster it cannot get, keeps every key that might depend on it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::crypto::{CryptoError, Environment, Keyring, RootKey, RotationPolicy, UnixMillis};
use crate::store::{KeyError, Keys, ROOT_KEY_RELOAD, now_millis};
use crate::store::{SecretStore, Store, StoreError, Versioned};

pub use args::{
    ROTATE_ANNOTATION, ReencryptArgs, RotateArgs, RotationArgs, parse_request, parse_time,
};
pub use environment::{prune_sealing_keys, rotate_data_key, rotate_sealing_key};
pub use facts::{ClusterFacts, KubeFacts};
pub use metrics::RotationMetrics;
pub use orphans::{OrphanOutcome, prune_orphaned_environments};
pub use reencrypt::{
    DataKeyState, RateLimiter, ReencryptOutcome, ReencryptProgress, finish_data_key_rotation,
    rate_limiter, reencrypt_environment, reencrypt_progress, reencrypt_quota,
    retire_unused_data_keys,
};
pub use reporting::Reporting;
pub use root::{RootKeyState, rotate_root_key};

mod args;
mod environment;
mod facts;
mod metrics;
mod orphans;
mod reencrypt;
mod reporting;
mod root;

/// Time allowed for an admission (the webhook answers within 9 s): a stamp signed just
/// before a replica reloaded its root keys is stored by then.
const ADMISSION_MARGIN: Duration = Duration::from_secs(10);

/// How long an old root key outlives the switch to its successor at least, for replicas
/// that reload every `reload`: every one of them has stopped signing with it, and the
/// stamps they signed are stored, before the stamps are listed.
pub fn root_key_retire_grace(reload: Duration) -> Duration {
    reload.saturating_add(ADMISSION_MARGIN)
}

/// How many times a step re-reads after losing a race before giving up for this round.
const ATTEMPTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("vault engine: {0}")]
    Crypto(#[from] CryptoError),
    #[error("{what} kept changing underneath; gave up after {ATTEMPTS} attempts")]
    Contention { what: &'static str },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("Kubernetes API on {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

impl RotationError {
    /// A low-cardinality label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            RotationError::Keys(e) => e.category(),
            RotationError::Store(e) => e.category(),
            RotationError::Crypto(_) => "crypto",
            RotationError::Contention { .. } => "conflict",
            RotationError::Invalid { .. } => "invalid",
            RotationError::Kube { .. } => "kube",
        }
    }
}

/// Which key a rotation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum KeyKind {
    RootKey,
    DataKey,
    SealingKey,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::RootKey => "root-key",
            KeyKind::DataKey => "data-key",
            KeyKind::SealingKey => "sealing-key",
        }
    }
}

/// Why a rotation may happen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Only if the key is due under the policy (age, or the encryption count).
    Schedule,
    /// Asked for at this moment: only if the current key is older than that, and not
    /// before that moment.
    Requested { at: UnixMillis },
}

impl Trigger {
    /// Whether a key created at `created_at` (`None`: there is no current key) should be
    /// replaced, given whether the policy says it is `due`.
    fn applies(self, created_at: Option<UnixMillis>, due: bool, now: UnixMillis) -> bool {
        match self {
            Trigger::Schedule => due,
            Trigger::Requested { at } => at <= now && created_at.is_none_or(|c| c < at),
        }
    }
}

/// How rotation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationConfig {
    pub policy: RotationPolicy,
    /// How often the leader checks for due keys, requests and unfinished work.
    pub check_interval: Duration,
    /// Records re-encrypted per second at most, so a rotation never floods the API server.
    pub reencrypt_rate: u32,
    /// How long an old data key outlives its successor at least. An ingest that read the
    /// keyring just before the rotation may still write a record under the old key within
    /// this time; the fresh record list taken after it sees that record.
    pub retire_grace: Duration,
    /// How long an old root key outlives the switch to its successor at least
    /// ([`root_key_retire_grace`]).
    pub root_key_retire_grace: Duration,
    /// How long the keys of a deleted namespace are kept, in case it comes back.
    pub deleted_namespace_grace: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            policy: RotationPolicy::default(),
            check_interval: Duration::from_secs(60),
            reencrypt_rate: 50,
            retire_grace: Duration::from_secs(30),
            root_key_retire_grace: root_key_retire_grace(ROOT_KEY_RELOAD),
            deleted_namespace_grace: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Changes `namespace`'s keys by compare-and-swap, resolving the root key that opens each
/// fresh read (a root key rotation may re-wrap them between attempts). `change` decides
/// from the keyring it is given and returns whether it changed it; nothing is written
/// otherwise.
async fn change_environment<S, F>(
    keys: &Keys<S>,
    namespace: &str,
    mut change: F,
) -> Result<Keyring, RotationError>
where
    S: Store,
    F: FnMut(&mut Keyring, &RootKey) -> Result<bool, RotationError>,
{
    for attempt in 1..=ATTEMPTS {
        let current = read_environment(keys.store(), namespace).await?;
        let root = keys.root_for(&current.value).await?;
        let mut next = current.value.clone();
        if !change(&mut next, &root)? {
            return Ok(current.value);
        }
        match keys
            .store()
            .put_environment(namespace, &next, Some(&current.resource_version))
            .await
        {
            Ok(_) => return Ok(next),
            Err(e) if e.is_conflict() => {
                tracing::debug!(
                    attempt,
                    namespace,
                    "environment keys changed underneath; re-reading"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(RotationError::Contention {
        what: "an environment's keys",
    })
}

async fn read_environment<S: Store>(
    store: &S,
    namespace: &str,
) -> Result<Versioned<Keyring>, RotationError> {
    Ok(store
        .environment(namespace)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("the keys of environment {namespace}"),
        })?)
}

/// The environments in `scope`, by namespace, from a listing.
fn in_scope<'a>(
    listing: &'a crate::store::Listing<String, Keyring>,
    scope: Option<&'a str>,
) -> impl Iterator<Item = (&'a String, &'a Keyring)> + 'a {
    listing
        .items
        .iter()
        .filter(move |(ns, _)| scope.is_none_or(|s| s == ns.as_str()))
        .map(|(ns, stored)| (ns, &stored.value))
}

/// Whether a check has anything to do for this environment: a key due or requested, a
/// data key rotation to finish, or a sealing key past its retention. Decided from the
/// listed keys, so ten thousand idle environments cost no request each.
fn needs_attention(
    env: &Environment,
    now: UnixMillis,
    policy: &RotationPolicy,
    data_request: Option<Trigger>,
    sealing_request: Option<Trigger>,
) -> bool {
    let data_created = env.current_data_key_since();
    let sealing_created = env.current_sealing_key_since();
    env.data_key_due(now, policy)
        || env.sealing_key_due(now, policy)
        || data_request.is_some_and(|t| t.applies(data_created, false, now))
        || sealing_request.is_some_and(|t| t.applies(sealing_created, false, now))
        || env.data_keys.len() > 1
        || env.sealing_keys.values().any(|k| {
            k.superseded_at
                .is_some_and(|at| now.secs_since(at) >= policy.sealing_key_retention)
        })
}

/// One rotation check: drop the keys of namespaces gone for the grace, flush encryption
/// counts, run or finish the root key rotation, then per environment in scope rotate data
/// and sealing keys that are due or requested, re-encrypt, retire and prune. Pruning comes
/// first, so a store crowded by dead namespaces shrinks before anything else is written.
/// A failure in one environment does not stop the others.
pub async fn check_once<S: Store, F: ClusterFacts>(
    keys: &Keys<S>,
    facts: &F,
    scope: Option<&str>,
    config: &RotationConfig,
    reporting: &Reporting,
) -> Result<(), RotationError> {
    let policy = &config.policy;
    let mut listing = keys.store().list_environments().await?;
    reporting.environments_listed(&listing);
    match facts.live_namespaces().await {
        Ok(Some(live)) => {
            let outcome =
                prune_orphaned_environments(keys, &listing, &live, scope, config, reporting)
                    .await?;
            let dropped: BTreeSet<&String> = outcome.dropped.iter().collect();
            listing.items.retain(|(ns, _)| !dropped.contains(ns));
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell which namespaces exist; dropping no environment's keys");
        }
    }
    if let Err(e) = keys.flush_encryption_counts().await {
        if let Some(m) = reporting.metrics() {
            m.failed(e.category());
        }
        tracing::warn!(category = e.category(), error = %e, "cannot flush encryption counts; kept for the next check");
    }
    rotate_root_key(keys, facts, Trigger::Schedule, config, reporting).await?;
    let requests = facts.rotation_requests().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read rotation requests");
        BTreeMap::new()
    });
    let now = now_millis();
    let due: Vec<String> = in_scope(&listing, scope)
        .filter(|(namespace, keyring)| {
            let requested = |kind| {
                requests
                    .get(&((*namespace).clone(), kind))
                    .map(|at| Trigger::Requested { at: *at })
            };
            keyring.environment(namespace).is_ok_and(|env| {
                needs_attention(
                    env,
                    now,
                    policy,
                    requested(KeyKind::DataKey),
                    requested(KeyKind::SealingKey),
                )
            })
        })
        .map(|(namespace, _)| namespace.clone())
        .collect();
    for namespace in due {
        let requested = |kind| {
            requests
                .get(&(namespace.clone(), kind))
                .map(|at| Trigger::Requested { at: *at })
        };
        let result = async {
            rotate_data_key(keys, &namespace, Trigger::Schedule, policy, reporting).await?;
            if let Some(trigger) = requested(KeyKind::DataKey) {
                rotate_data_key(keys, &namespace, trigger, policy, reporting).await?;
            }
            finish_data_key_rotation(keys, &namespace, config, false, reporting).await?;
            rotate_sealing_key(keys, &namespace, Trigger::Schedule, policy, reporting).await?;
            if let Some(trigger) = requested(KeyKind::SealingKey) {
                rotate_sealing_key(keys, &namespace, trigger, policy, reporting).await?;
            }
            prune_sealing_keys(keys, &namespace, policy).await?;
            Ok::<_, RotationError>(())
        }
        .await;
        if let Err(e) = result {
            if let Some(m) = reporting.metrics() {
                m.failed(e.category());
            }
            tracing::warn!(%namespace, category = e.category(), error = %e, "rotation check failed");
        }
    }
    Ok(())
}

/// The leader's rotation loop: a check at once (to finish what a crash interrupted), then
/// every `config.check_interval`. Never returns; drop or abort the task to stop it.
pub async fn run_rotation_loop<S: Store, F: ClusterFacts>(
    keys: Arc<Keys<S>>,
    facts: F,
    watch_namespace: Option<String>,
    config: RotationConfig,
    reporting: Reporting,
) {
    tracing::info!(
        check_interval = ?config.check_interval,
        reencrypt_rate = config.reencrypt_rate,
        "rotation loop started"
    );
    let mut tick = tokio::time::interval(config.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = check_once(
            &keys,
            &facts,
            watch_namespace.as_deref(),
            &config,
            &reporting,
        )
        .await
        {
            if let Some(m) = reporting.metrics() {
                m.failed(e.category());
            }
            tracing::warn!(category = e.category(), error = %e, "rotation check failed");
        }
    }
}

/// Runs `monivault rotate`; returns one line per environment (or the root key) saying
/// where it stands.
pub async fn rotate_command(
    client: Client,
    args: &RotateArgs,
) -> Result<Vec<String>, RotationError> {
    let store = Arc::new(SecretStore::new(client.clone(), &args.namespace));
    let keys = Keys::bootstrap(store).await?;
    let at = args.requested_at.unwrap_or_else(now_millis);
    if at > now_millis() {
        return Err(RotationError::Invalid {
            what: "--requested-at",
            reason: "it is in the future; a request is honoured once its time has come".into(),
        });
    }
    let trigger = Trigger::Requested { at };
    let config = args.reencrypt.apply(RotationConfig::default());
    let reporting = Reporting::new(client.clone(), "monivault-rotate".into(), None);
    if args.key == KeyKind::RootKey {
        let facts = KubeFacts::new(client, args.watch_namespace.clone());
        let mut state = rotate_root_key(&keys, &facts, trigger, &config, &reporting).await?;
        if args.wait
            && let Some(ends) = state.grace_ends
        {
            // A second in hand: the sleep is on the monotonic clock, the grace on the wall's.
            let left = now_millis()
                .until(ends)
                .saturating_add(Duration::from_secs(1));
            tracing::info!(
                seconds = left.as_secs_f64(),
                "waiting out the old root key's retire grace"
            );
            tokio::time::sleep(left).await;
            state = rotate_root_key(&keys, &facts, trigger, &config, &reporting).await?;
        }
        let note = if state.finished() {
            String::new()
        } else if state.grace_ends.is_some() {
            " (older versions go after the retire grace)".to_owned()
        } else {
            " (older versions stay while admission stamps name them)".to_owned()
        };
        return Ok(vec![format!(
            "root key version {} is current; versions held: {:?}{note}",
            state.current, state.versions
        )]);
    }
    let namespaces = match &args.environment {
        Some(ns) => vec![ns.clone()],
        None => keys
            .store()
            .list_environments()
            .await?
            .items
            .into_iter()
            .map(|(ns, _)| ns)
            .collect(),
    };
    let mut lines = Vec::new();
    for namespace in namespaces {
        let line = if args.key == KeyKind::DataKey {
            let rotated =
                rotate_data_key(&keys, &namespace, trigger, &config.policy, &reporting).await?;
            let state = if args.wait {
                finish_data_key_rotation(&keys, &namespace, &config, true, &reporting).await?
            } else {
                let keyring = read_environment(keys.store(), &namespace).await?.value;
                let env = keyring.environment(&namespace)?;
                DataKeyState {
                    current: env.current_data_key,
                    versions: env.data_keys.keys().copied().collect(),
                }
            };
            format!(
                "{namespace}: data key version {} is current{}; versions held: {:?}{}",
                state.current,
                if rotated.is_some() { " (new)" } else { "" },
                state.versions,
                if state.finished() {
                    ""
                } else {
                    " (re-encryption pending)"
                },
            )
        } else {
            let rotated =
                rotate_sealing_key(&keys, &namespace, trigger, &config.policy, &reporting).await?;
            let keyring = read_environment(keys.store(), &namespace).await?.value;
            let env = keyring.environment(&namespace)?;
            format!(
                "{namespace}: sealing key version {} is current{}",
                env.current_sealing_key,
                if rotated.is_some() { " (new)" } else { "" },
            )
        };
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests;
