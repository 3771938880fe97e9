//! Key rotation: the root key, and per environment the data key and the sealing key, on a
//! schedule ([`run_rotation_loop`], leader only) or on demand (`monivault rotate`, or the
//! `monivault.io/rotate` annotation on a VaultSection).
//!
//! Crash safety: every step reads the stored state, decides from it alone what is left to
//! do, and makes one compare-and-swap write. A process killed at any instant leaves a
//! state some step recognises, so running the same rotation again (or the next check of
//! the loop) finishes it and never starts a second one.
//!
//! Root key (installation-wide), each step one CAS write:
//! 1. add version N+1 to the root key Secret, not current, old versions kept;
//! 2. re-wrap the keyring under N+1 (item records are untouched);
//! 3. make N+1 current in the root key Secret;
//! 4. remove the versions the keyring no longer uses.
//!
//! A root key Secret holding a version newer than the keyring's means step 2 is pending.
//!
//! Data key (per environment): a new version becomes current (CAS on the keyring); every
//! record on an older version is re-encrypted at a bounded rate (CAS on the record: a
//! conflict means it was re-ingested, under the current key); versions no record uses
//! are destroyed (CAS on the keyring, `in_use` from a fresh list). New records are always
//! written under the current version, so the set of old records only shrinks.
//!
//! Sealing key (per environment): a new version becomes current; superseded ones are
//! dropped after the retention, so sealed values in Git keep opening until then.
//!
//! An on-demand request carries a time; it is honoured once its time has come and only
//! while the current key is older than it. The new key's creation time is at least the
//! request's, so repeating or racing the request rotates once, with no state of its own.
//!
//! What it must never do: log, or put in an Event, a key or a plaintext. Messages carry
//! namespaces, versions and counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::vault_section::VaultSection;
use crate::crypto::{CryptoError, Keyring, RootKey, RotationPolicy};
use crate::store::{KeyError, Keys, unix_now};
use crate::store::{SecretStore, Store, StoreError, Versioned};

pub use args::{
    ROTATE_ANNOTATION, ReencryptArgs, RotateArgs, RotationArgs, parse_request, parse_time,
};
pub use environment::{prune_sealing_keys, rotate_data_key, rotate_sealing_key};
pub use metrics::RotationMetrics;
pub use reencrypt::{
    DataKeyState, RateLimiter, ReencryptOutcome, finish_data_key_rotation, rate_limiter,
    reencrypt_environment, reencrypt_quota, retire_unused_data_keys,
};
pub use reporting::Reporting;
pub use root::rotate_root_key;

mod args;
mod environment;
mod metrics;
mod reencrypt;
mod reporting;
mod root;

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
    /// Asked for at this time (Unix seconds): only if the current key is older than that,
    /// and not before that time.
    Requested { at: i64 },
}

impl Trigger {
    /// Whether a key created at `created_at` (`None`: there is no current key) should be
    /// replaced, given whether the policy says it is `due`.
    fn applies(self, created_at: Option<i64>, due: bool, now: i64) -> bool {
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
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            policy: RotationPolicy::default(),
            check_interval: Duration::from_secs(60),
            reencrypt_rate: 50,
            retire_grace: Duration::from_secs(30),
        }
    }
}

/// Changes the keyring by compare-and-swap, resolving the root key that opens each fresh
/// read (a root key rotation may re-wrap it between attempts). `change` decides from the
/// keyring it is given and returns whether it changed it; nothing is written otherwise.
async fn change_keyring<S, F>(keys: &Keys<S>, mut change: F) -> Result<Keyring, RotationError>
where
    S: Store,
    F: FnMut(&mut Keyring, &RootKey) -> Result<bool, RotationError>,
{
    for attempt in 1..=ATTEMPTS {
        let current = read_keyring(keys.store()).await?;
        let root = keys.root_for(&current.value).await?;
        let mut next = current.value.clone();
        if !change(&mut next, &root)? {
            return Ok(current.value);
        }
        match keys
            .store()
            .put_keyring(&next, Some(&current.resource_version))
            .await
        {
            Ok(_) => return Ok(next),
            Err(e) if e.is_conflict() => {
                tracing::debug!(attempt, "keyring changed underneath; re-reading");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(RotationError::Contention {
        what: "the keyring",
    })
}

async fn read_keyring<S: Store>(store: &S) -> Result<Versioned<Keyring>, RotationError> {
    Ok(store.keyring().await?.ok_or_else(|| StoreError::NotFound {
        what: "the keyring".into(),
    })?)
}

/// The rotation requests on the VaultSections in scope: per namespace and key kind, the
/// latest requested time. Malformed requests are logged and ignored.
async fn rotation_requests(
    client: &Client,
    scope: Option<&str>,
) -> Result<BTreeMap<(String, KeyKind), i64>, RotationError> {
    let api: Api<VaultSection> = match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let sections =
        api.list(&ListParams::default())
            .await
            .map_err(|source| RotationError::Kube {
                what: "VaultSections".into(),
                source,
            })?;
    let mut requests = BTreeMap::new();
    for section in sections.items {
        let Some(value) = section.annotations().get(ROTATE_ANNOTATION) else {
            continue;
        };
        let namespace = section.namespace().unwrap_or_default();
        match parse_request(value) {
            Ok((kind, at)) => {
                let latest = requests.entry((namespace, kind)).or_insert(at);
                *latest = (*latest).max(at);
            }
            Err(e) => tracing::warn!(
                %namespace,
                section = %section.name_any(),
                error = %e,
                "ignoring rotation request"
            ),
        }
    }
    Ok(requests)
}

/// One rotation check: flush encryption counts, run or finish the root key rotation,
/// then per environment in scope rotate data and sealing keys that are due or requested,
/// re-encrypt, retire and prune. A failure in one environment does not stop the others.
pub async fn check_once<S: Store>(
    keys: &Keys<S>,
    client: Option<&Client>,
    scope: Option<&str>,
    config: &RotationConfig,
    reporting: &Reporting,
) -> Result<(), RotationError> {
    let policy = &config.policy;
    keys.flush_encryption_counts().await?;
    rotate_root_key(keys, Trigger::Schedule, policy, reporting).await?;
    let requests = match client {
        Some(client) => rotation_requests(client, scope).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read rotation requests");
            BTreeMap::new()
        }),
        None => BTreeMap::new(),
    };
    let keyring = read_keyring(keys.store()).await?.value;
    let namespaces: Vec<String> = keyring
        .environments
        .keys()
        .filter(|ns| scope.is_none_or(|s| s == ns.as_str()))
        .cloned()
        .collect();
    for namespace in namespaces {
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
pub async fn run_rotation_loop<S: Store>(
    client: Client,
    keys: Arc<Keys<S>>,
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
            Some(&client),
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
    let at = args.requested_at.unwrap_or_else(unix_now);
    if at > unix_now() {
        return Err(RotationError::Invalid {
            what: "--requested-at",
            reason: "it is in the future; a request is honoured once its time has come".into(),
        });
    }
    let trigger = Trigger::Requested { at };
    let config = RotationConfig {
        reencrypt_rate: args.reencrypt.reencrypt_rate,
        retire_grace: args.reencrypt.data_key_retire_grace,
        ..RotationConfig::default()
    };
    let reporting = Reporting::new(client, "monivault-rotate".into(), None);
    if args.key == KeyKind::RootKey {
        let version = rotate_root_key(&keys, trigger, &config.policy, &reporting).await?;
        return Ok(vec![format!("root key version {version} is current")]);
    }
    let namespaces = match &args.environment {
        Some(ns) => vec![ns.clone()],
        None => read_keyring(keys.store())
            .await?
            .value
            .environments
            .into_keys()
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
                let keyring = read_keyring(keys.store()).await?.value;
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
            let keyring = read_keyring(keys.store()).await?.value;
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
