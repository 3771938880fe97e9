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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::vault_section::VaultSection;
use crate::crypto::{CryptoError, DataCipher, ItemBinding, Keyring, RootKey, RotationPolicy};
use crate::crypto::{Environment, reencrypt};
use crate::store::{ItemKey, ItemRecord, SecretStore, Store, StoreError, Versioned};
use crate::store::{KeyError, Keys, unix_now};

/// Annotation on a VaultSection asking for a rotation of its environment's keys:
/// `data-key@<RFC 3339 time>` or `sealing-key@<RFC 3339 time>`.
pub const ROTATE_ANNOTATION: &str = "monivault.io/rotate";

/// The Event reporter of rotation Events.
const EVENT_CONTROLLER: &str = "monivault-rotation";

/// How many times a step re-reads after losing a race before giving up for this round.
const ATTEMPTS: u32 = 10;

/// Re-encryption passes per check: records re-ingested meanwhile are already current, so
/// a second pass only finds records a concurrent rotation left behind.
const MAX_PASSES: u32 = 3;

/// How often re-encryption reports its progress in the log.
const PROGRESS_EVERY: usize = 100;

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

/// The rotation flags of `monivault run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RotationArgs {
    /// How often the leader checks for due keys, rotation requests and unfinished work.
    #[arg(long, env = "MONIVAULT_ROTATION_CHECK_INTERVAL", default_value = "1m", value_parser = parse_period)]
    pub rotation_check_interval: Duration,
    /// Age at which the root key is replaced (environment keys are re-wrapped).
    #[arg(long, env = "MONIVAULT_ROOT_KEY_ROTATION_PERIOD", default_value = "30d", value_parser = parse_period)]
    pub root_key_rotation_period: Duration,
    /// Age at which an environment's data key is replaced (records are re-encrypted).
    #[arg(long, env = "MONIVAULT_DATA_KEY_ROTATION_PERIOD", default_value = "90d", value_parser = parse_period)]
    pub data_key_rotation_period: Duration,
    /// Age at which an environment's sealing key is replaced.
    #[arg(long, env = "MONIVAULT_SEALING_KEY_ROTATION_PERIOD", default_value = "30d", value_parser = parse_period)]
    pub sealing_key_rotation_period: Duration,
    /// How long a replaced sealing key still opens values sealed to it (e.g. in Git).
    #[arg(long, env = "MONIVAULT_SEALING_KEY_RETENTION", default_value = "365d", value_parser = parse_period)]
    pub sealing_key_retention: Duration,
    #[command(flatten)]
    pub reencrypt: ReencryptArgs,
}

/// How records move to a new data key; shared by `run` and `rotate`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReencryptArgs {
    /// Records re-encrypted per second at most during a data key rotation.
    #[arg(long, env = "MONIVAULT_REENCRYPT_RATE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub reencrypt_rate: u32,
    /// How long an old data key is kept after its successor appeared, at least.
    #[arg(long, env = "MONIVAULT_DATA_KEY_RETIRE_GRACE", default_value = "30s", value_parser = parse_period)]
    pub data_key_retire_grace: Duration,
}

impl RotationArgs {
    pub fn config(&self) -> RotationConfig {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        RotationConfig {
            policy: RotationPolicy {
                root_key_max_age: secs(self.root_key_rotation_period),
                data_key_max_age: secs(self.data_key_rotation_period),
                sealing_key_max_age: secs(self.sealing_key_rotation_period),
                sealing_key_retention: secs(self.sealing_key_retention),
            },
            check_interval: self.rotation_check_interval,
            reencrypt_rate: self.reencrypt.reencrypt_rate,
            retire_grace: self.reencrypt.data_key_retire_grace,
        }
    }
}

/// Parses a period such as `30d`, `12h`, `90s`, `500ms` or `1d12h` (units `d`, `h`, `m`,
/// `s`, `ms`; whole numbers).
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid period {text:?}: expected e.g. 30d, 12h, 5m, 90s or 500ms");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        if digits == 0 {
            return Err(invalid());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "h" => n.checked_mul(3_600).map(Duration::from_secs),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "s" => Some(Duration::from_secs(n)),
            "ms" => Some(Duration::from_millis(n)),
            _ => None,
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(invalid)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses a rotation request: `data-key@2026-11-27T22:00:00Z` → (kind, Unix seconds).
pub fn parse_request(value: &str) -> Result<(KeyKind, i64), RotationError> {
    let invalid = |reason: String| RotationError::Invalid {
        what: "rotation request",
        reason,
    };
    let (kind, at) = value.trim().split_once('@').ok_or_else(|| {
        invalid(
            "expected <data-key|sealing-key>@<RFC 3339 time>, e.g. data-key@2026-11-27T22:00:00Z"
                .into(),
        )
    })?;
    let kind = match kind {
        "data-key" => KeyKind::DataKey,
        "sealing-key" => KeyKind::SealingKey,
        other => {
            return Err(invalid(format!(
                "unknown key {other:?}; expected data-key or sealing-key"
            )));
        }
    };
    let at: Timestamp = at
        .parse()
        .map_err(|_| invalid(format!("{at:?} is not an RFC 3339 time")))?;
    Ok((kind, at.as_second()))
}

/// Parses an RFC 3339 time into Unix seconds (for `--requested-at`).
pub fn parse_time(text: &str) -> Result<i64, String> {
    text.parse::<Timestamp>()
        .map(|t| t.as_second())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time, e.g. 2026-11-27T22:00:00Z"))
}

/// Rotation progress as Prometheus metrics, registered in the shared registry.
#[derive(Debug)]
pub struct RotationMetrics {
    rotations: Family<KindLabel, Counter>,
    reencrypted: Counter,
    remaining: Gauge,
    retired: Counter,
    failures: Family<CategoryLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    key: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

impl RotationMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = RotationMetrics {
            rotations: Family::default(),
            reencrypted: Counter::default(),
            remaining: Gauge::default(),
            retired: Counter::default(),
            failures: Family::default(),
        };
        for kind in [KeyKind::RootKey, KeyKind::DataKey, KeyKind::SealingKey] {
            metrics
                .rotations
                .get_or_create(&KindLabel { key: kind.as_str() })
                .inc_by(0);
        }
        registry.register(
            "key_rotations",
            "New key versions made current, by key kind",
            metrics.rotations.clone(),
        );
        registry.register(
            "reencrypted_records",
            "Item records moved to their environment's current data key",
            metrics.reencrypted.clone(),
        );
        registry.register(
            "reencrypt_remaining_records",
            "Item records still on an old data key, as of the last re-encryption pass",
            metrics.remaining.clone(),
        );
        registry.register(
            "retired_data_keys",
            "Data key versions destroyed after no record used them",
            metrics.retired.clone(),
        );
        registry.register(
            "rotation_check_failures",
            "Rotation steps that failed, by error category",
            metrics.failures.clone(),
        );
        metrics
    }

    fn rotated(&self, kind: KeyKind) {
        self.rotations
            .get_or_create(&KindLabel { key: kind.as_str() })
            .inc();
    }

    fn failed(&self, category: &'static str) {
        self.failures
            .get_or_create(&CategoryLabel { category })
            .inc();
    }
}

/// Where rotation reports: Events on the environment's VaultSections, and metrics.
/// Both optional, so the engine runs the same in unit tests and in `monivault rotate`.
#[derive(Clone, Default)]
pub struct Reporting {
    events: Option<(Client, Recorder)>,
    metrics: Option<Arc<RotationMetrics>>,
}

impl Reporting {
    pub fn none() -> Self {
        Reporting::default()
    }

    pub fn new(client: Client, instance: String, metrics: Option<Arc<RotationMetrics>>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: EVENT_CONTROLLER.to_owned(),
                instance: Some(instance),
            },
        );
        Reporting {
            events: Some((client, recorder)),
            metrics,
        }
    }

    fn metrics(&self) -> Option<&RotationMetrics> {
        self.metrics.as_deref()
    }

    /// A Normal Event on every VaultSection of `namespace`. Best effort: a rotation never
    /// fails because an Event could not be written.
    async fn event(&self, namespace: &str, reason: &str, note: String) {
        let Some((client, recorder)) = &self.events else {
            return;
        };
        let api: Api<VaultSection> = Api::namespaced(client.clone(), namespace);
        let sections = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::debug!(namespace, error = %e, "cannot list sections for an event");
                return;
            }
        };
        let event = Event {
            type_: EventType::Normal,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Rotate".to_owned(),
            secondary: None,
        };
        for section in &sections {
            if let Err(e) = recorder.publish(&event, &section.object_ref(&())).await {
                tracing::debug!(namespace, error = %e, "cannot publish a rotation event");
            }
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

/// What one root key step found or did.
enum RootStep {
    /// A write happened (or lost a race): look again.
    Progress,
    /// Nothing left to do; the keyring is under this version.
    Done(u32),
}

/// Runs the root key rotation to its end: finishes one that a crash interrupted, and
/// starts a new one if `trigger` applies. Returns the version the keyring ends up under
/// and whether this call (or an interrupted earlier one it finished) moved it.
pub async fn rotate_root_key<S: Store>(
    keys: &Keys<S>,
    trigger: Trigger,
    policy: &RotationPolicy,
    reporting: &Reporting,
) -> Result<u32, RotationError> {
    // Four steps, plus a lost race per step: bounded so a pathological store cannot spin.
    // At most one new key per call, even if the policy says a fresh key is due already.
    let mut may_start = true;
    for _ in 0..(4 + ATTEMPTS) {
        if let RootStep::Done(version) =
            root_step(keys, trigger, policy, &mut may_start, reporting).await?
        {
            return Ok(version);
        }
    }
    Err(RotationError::Contention {
        what: "the root key rotation",
    })
}

/// One step of the root key rotation, chosen from the stored state alone.
async fn root_step<S: Store>(
    keys: &Keys<S>,
    trigger: Trigger,
    policy: &RotationPolicy,
    may_start: &mut bool,
    reporting: &Reporting,
) -> Result<RootStep, RotationError> {
    let store = keys.store();
    let roots = store.root_keys().await?.ok_or(KeyError::RootKeyMissing)?;
    let keyring = read_keyring(store).await?;
    let wrapped_under = keyring.value.root_key_version;
    let newest = roots.value.versions().last().copied().unwrap_or_default();
    let now = unix_now();

    let written = if newest > wrapped_under {
        // Step 2: a newer root key is stored; re-wrap the keyring under it.
        let old = roots.value.key(wrapped_under)?;
        let new = roots.value.key(newest)?;
        let next = keyring.value.rewrap(&old, &new, now)?;
        let result = store
            .put_keyring(&next, Some(&keyring.resource_version))
            .await;
        if result.is_ok() {
            tracing::info!(
                from = wrapped_under,
                to = newest,
                environments = next.environments.len(),
                "root key rotation: keyring re-wrapped"
            );
        }
        result
    } else if roots.value.current() != wrapped_under {
        // Step 3: the keyring moved; new keyrings are wrapped under its version too.
        let mut next = roots.value;
        next.set_current(wrapped_under)?;
        let result = store
            .put_root_keys(&next, Some(&roots.resource_version))
            .await;
        if result.is_ok() {
            tracing::info!(
                version = wrapped_under,
                "root key rotation: new root key current"
            );
        }
        result
    } else if roots.value.versions().len() > 1 {
        // Step 4: nothing is wrapped under the older versions any more.
        let mut next = roots.value;
        let old: Vec<u32> = next
            .versions()
            .into_iter()
            .filter(|v| *v != wrapped_under)
            .collect();
        for version in &old {
            next.remove(*version)?;
        }
        let result = store
            .put_root_keys(&next, Some(&roots.resource_version))
            .await;
        if result.is_ok() {
            tracing::info!(removed = ?old, current = wrapped_under, "root key rotation: done");
            if let Some(m) = reporting.metrics() {
                m.rotated(KeyKind::RootKey);
            }
        }
        result
    } else if *may_start
        && trigger.applies(
            Some(keyring.value.root_key_since),
            keyring.value.root_key_due(now, policy),
            now,
        )
    {
        // Step 1: store the new key beside the old one.
        let version = newest.checked_add(1).ok_or(RotationError::Invalid {
            what: "root key version",
            reason: "the version counter is exhausted".into(),
        })?;
        let mut next = roots.value;
        next.insert(RootKey::generate(version)?)?;
        let result = store
            .put_root_keys(&next, Some(&roots.resource_version))
            .await;
        if result.is_ok() {
            *may_start = false;
            tracing::info!(
                from = wrapped_under,
                to = version,
                "root key rotation: started"
            );
        }
        result
    } else {
        return Ok(RootStep::Done(wrapped_under));
    };
    match written {
        Ok(_) => Ok(RootStep::Progress),
        Err(e) if e.is_conflict() => Ok(RootStep::Progress),
        Err(e) => Err(e.into()),
    }
}

/// Makes a new data key current in `namespace` if `trigger` applies to the current one.
/// Returns the new version, or `None` if the current key stays (decided from the stored
/// keyring, so a repeated or racing call does not add a second version).
pub async fn rotate_data_key<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    trigger: Trigger,
    policy: &RotationPolicy,
    reporting: &Reporting,
) -> Result<Option<u32>, RotationError> {
    rotate_environment_key(
        keys,
        namespace,
        KeyKind::DataKey,
        trigger,
        policy,
        reporting,
    )
    .await
}

/// Makes a new sealing key current in `namespace` if `trigger` applies to the current one.
pub async fn rotate_sealing_key<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    trigger: Trigger,
    policy: &RotationPolicy,
    reporting: &Reporting,
) -> Result<Option<u32>, RotationError> {
    rotate_environment_key(
        keys,
        namespace,
        KeyKind::SealingKey,
        trigger,
        policy,
        reporting,
    )
    .await
}

/// One environment key rotation by compare-and-swap, decided inside the CAS from the
/// keyring as stored, then reported. `kind` is a data or sealing key.
async fn rotate_environment_key<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    kind: KeyKind,
    trigger: Trigger,
    policy: &RotationPolicy,
    reporting: &Reporting,
) -> Result<Option<u32>, RotationError> {
    let now = unix_now();
    let mut rotated = None;
    change_keyring(keys, |keyring, root| {
        rotated = None;
        let env = keyring.environment(namespace)?;
        let (created_at, due) = if kind == KeyKind::SealingKey {
            let current = env.sealing_keys.get(&env.current_sealing_key);
            (
                current.map(|k| k.created_at),
                env.sealing_key_due(now, policy),
            )
        } else {
            let current = env.data_keys.get(&env.current_data_key);
            (current.map(|k| k.created_at), env.data_key_due(now, policy))
        };
        if !trigger.applies(created_at, due, now) {
            return Ok(false);
        }
        rotated = Some(if kind == KeyKind::SealingKey {
            keyring.rotate_sealing_key(root, namespace, now)?
        } else {
            keyring.rotate_data_key(root, namespace, now)?
        });
        Ok(true)
    })
    .await?;
    let Some(version) = rotated else {
        return Ok(None);
    };
    let (reason, note) = if kind == KeyKind::SealingKey {
        (
            "SealingKeyRotated",
            format!(
                "sealing key version {version} is current; values sealed to older versions still open for the retention period"
            ),
        )
    } else {
        (
            "DataKeyRotated",
            format!(
                "data key version {version} is current; records on older versions are re-encrypted in the background"
            ),
        )
    };
    tracing::info!(namespace, version, key = kind.as_str(), "key rotated");
    if let Some(m) = reporting.metrics() {
        m.rotated(kind);
    }
    reporting.event(namespace, reason, note).await;
    Ok(rotated)
}

/// Drops `namespace`'s superseded sealing keys older than the retention.
pub async fn prune_sealing_keys<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    policy: &RotationPolicy,
) -> Result<Vec<u32>, RotationError> {
    let now = unix_now();
    let mut pruned = Vec::new();
    change_keyring(keys, |keyring, _| {
        pruned = keyring.prune_sealing_keys(namespace, now, policy)?;
        Ok(!pruned.is_empty())
    })
    .await?;
    if !pruned.is_empty() {
        tracing::info!(namespace, versions = ?pruned, "dropped expired sealing keys");
    }
    Ok(pruned)
}

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

/// Spaces out writes to at most `rate` per second.
pub struct RateLimiter {
    interval: Duration,
    next: tokio::time::Instant,
}

impl RateLimiter {
    pub fn new(rate: u32) -> Self {
        RateLimiter {
            interval: Duration::from_secs(1) / rate.max(1),
            next: tokio::time::Instant::now(),
        }
    }

    pub async fn wait(&mut self) {
        let now = tokio::time::Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + self.interval;
    }
}

/// Moves every record of `namespace` that is on an old data key to the current one, at
/// most `limiter`'s rate. Each record is one CAS write; a conflict means the item was
/// re-ingested (under the current key) or deleted meanwhile, and is skipped.
pub async fn reencrypt_environment<S: Store>(
    keys: &Keys<S>,
    namespace: &str,
    limiter: &mut RateLimiter,
    reporting: &Reporting,
) -> Result<ReencryptOutcome, RotationError> {
    let keyring = read_keyring(keys.store()).await?.value;
    let env = keyring.environment(namespace)?;
    let mut outcome = ReencryptOutcome::default();
    if env.data_keys.len() <= 1 {
        return Ok(outcome);
    }
    let root = keys.root_for(&keyring).await?;
    let to = keyring.current_data_cipher(&root, namespace)?;
    let old: Vec<(ItemKey, Versioned<ItemRecord>)> = keys
        .store()
        .list_records()
        .await?
        .into_iter()
        .filter(|(key, record)| {
            key.namespace == namespace && record.value.key_version != to.version()
        })
        .collect();
    outcome.found = old.len();
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
    for (done, (key, record)) in old.iter().enumerate() {
        if let Some(m) = reporting.metrics() {
            m.remaining
                .set(i64::try_from(old.len() - done).unwrap_or(i64::MAX));
        }
        limiter.wait().await;
        let version = record.value.key_version;
        if let std::collections::btree_map::Entry::Vacant(slot) = ciphers.entry(version) {
            match keyring.data_cipher(&root, namespace, version) {
                Ok(cipher) => {
                    slot.insert(cipher);
                }
                Err(e) => {
                    tracing::error!(%key, version, error = %e, "record is on a data key the keyring cannot open");
                    outcome.failed += 1;
                    continue;
                }
            }
        }
        let Some(from) = ciphers.get(&version) else {
            continue;
        };
        let next = match reencrypt_record(from, &to, key, &record.value) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(%key, version, error = %e, "cannot re-encrypt record");
                outcome.failed += 1;
                continue;
            }
        };
        match keys
            .store()
            .put_record(key, &next, Some(&record.resource_version))
            .await
        {
            Ok(_) => {
                outcome.reencrypted += 1;
                fields_encrypted += next.fields.len() as u64;
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

/// The record with every field on `to`'s key. Pure: the caller writes it by CAS.
fn reencrypt_record(
    from: &DataCipher,
    to: &DataCipher,
    key: &ItemKey,
    record: &ItemRecord,
) -> Result<ItemRecord, CryptoError> {
    let mut next = record.clone();
    for (field, text) in next.fields.iter_mut() {
        let binding = ItemBinding {
            namespace: &key.namespace,
            item: &key.name,
            uid: &record.uid,
            field,
        };
        if let Some(moved) = reencrypt(from, to, &binding, text)? {
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
    let keyring = read_keyring(keys.store()).await?.value;
    if !grace_elapsed(keyring.environment(namespace)?, grace, unix_now()) {
        return Ok(Vec::new());
    }
    if keyring.environment(namespace)?.data_keys.len() <= 1 {
        return Ok(Vec::new());
    }
    let in_use: BTreeSet<u32> = keys
        .store()
        .list_records()
        .await?
        .into_iter()
        .filter(|(key, _)| key.namespace == namespace)
        .map(|(_, record)| record.value.key_version)
        .collect();
    let now = unix_now();
    let mut retired = Vec::new();
    change_keyring(keys, |keyring, _| {
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

fn grace_elapsed(env: &Environment, grace: Duration, now: i64) -> bool {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    env.data_keys
        .get(&env.current_data_key)
        .is_some_and(|k| now.saturating_sub(k.created_at) >= grace)
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
    let mut limiter = RateLimiter::new(config.reencrypt_rate);
    let mut total = ReencryptOutcome::default();
    for _ in 0..MAX_PASSES {
        let pass = reencrypt_environment(keys, namespace, &mut limiter, reporting).await?;
        total.reencrypted += pass.reencrypted;
        total.failed = pass.failed;
        if pass.found == 0 || pass.found == pass.failed {
            break;
        }
    }
    if wait_for_grace {
        let keyring = read_keyring(keys.store()).await?.value;
        let env = keyring.environment(namespace)?;
        if env.data_keys.len() > 1 {
            let created = env
                .data_keys
                .get(&env.current_data_key)
                .map_or(0, |k| k.created_at);
            let grace = i64::try_from(config.retire_grace.as_secs()).unwrap_or(i64::MAX);
            let left = created.saturating_add(grace).saturating_sub(unix_now());
            if left > 0 {
                tracing::info!(namespace, seconds = left, "waiting out the retire grace");
                tokio::time::sleep(Duration::from_secs(left.unsigned_abs())).await;
            }
        }
    }
    let retired = retire_unused_data_keys(keys, namespace, config.retire_grace, reporting).await?;
    let keyring = read_keyring(keys.store()).await?.value;
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

/// `monivault rotate`: one rotation, straight against the store. Compare-and-swap makes it
/// safe beside a running operator, and re-running it with the same `--requested-at`
/// finishes an interrupted rotation instead of starting another.
#[derive(clap::Args, Debug, Clone)]
pub struct RotateArgs {
    /// Which key: root-key (installation-wide), data-key or sealing-key (per environment).
    #[arg(value_enum)]
    pub key: KeyKind,
    /// The operator's own namespace, which holds the store.
    #[arg(long, env = "MONIVAULT_NAMESPACE", default_value = "monivault-system")]
    pub namespace: String,
    /// The environment (namespace) whose data or sealing key rotates; default: every one.
    #[arg(long)]
    pub environment: Option<String>,
    /// Rotate only keys created before this RFC 3339 time (default: now). Re-running
    /// with the same time completes an interrupted rotation and never rotates twice.
    #[arg(long, value_parser = parse_time)]
    pub requested_at: Option<i64>,
    /// Data keys: re-encrypt every record and destroy the old key before returning,
    /// instead of leaving that to the operator's background loop.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub reencrypt: ReencryptArgs,
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
