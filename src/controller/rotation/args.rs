//! What users write to ask for rotation: the flags of `monivault run` and `monivault rotate`,
//! and the `monivault.io/rotate` annotation.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::duration::parse_period;
use crate::crypto::{RotationPolicy, UnixMillis};

use super::{KeyKind, RotationConfig, RotationError, root_key_retire_grace};

/// Annotation on a VaultSection asking for a rotation of its environment's keys:
/// `data-key@<RFC 3339 time>` or `sealing-key@<RFC 3339 time>`.
pub const ROTATE_ANNOTATION: &str = "monivault.io/rotate";

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
    /// How long the keys of a deleted namespace are kept, in case it comes back (values
    /// sealed for it in Git open again only while they are).
    #[arg(long, env = "MONIVAULT_DELETED_NAMESPACE_GRACE", default_value = "7d", value_parser = parse_period)]
    pub deleted_namespace_grace: Duration,
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
    /// How often every replica reads the root key Secret again, so it signs admission
    /// stamps with the current root key soon after a rotation. An old root key is removed
    /// no sooner than this (plus an admission's time) after it stopped being current.
    #[arg(long, env = "MONIVAULT_ROOT_KEY_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_period)]
    pub root_key_reload_interval: Duration,
}

impl ReencryptArgs {
    /// The rotation settings these flags give, over `base`.
    pub fn apply(&self, base: RotationConfig) -> RotationConfig {
        RotationConfig {
            reencrypt_rate: self.reencrypt_rate,
            retire_grace: self.data_key_retire_grace,
            root_key_retire_grace: root_key_retire_grace(self.root_key_reload_interval),
            ..base
        }
    }
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
            deleted_namespace_grace: self.deleted_namespace_grace,
            ..self.reencrypt.apply(RotationConfig::default())
        }
    }
}

/// Parses a rotation request: `data-key@2026-11-27T22:00:00Z` → (kind, the moment).
pub fn parse_request(value: &str) -> Result<(KeyKind, UnixMillis), RotationError> {
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
    Ok((kind, UnixMillis::from_millis(at.as_millisecond())))
}

/// Parses an RFC 3339 time into Unix milliseconds (for `--requested-at`).
pub fn parse_time(text: &str) -> Result<UnixMillis, String> {
    text.parse::<Timestamp>()
        .map(|t| UnixMillis::from_millis(t.as_millisecond()))
        .map_err(|_| format!("{text:?} is not an RFC 3339 time, e.g. 2026-11-27T22:00:00Z"))
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
    /// The operator's --watch-namespace, if it is scoped: a root key rotation keeps the
    /// old root key while an admission stamp of a Monitor or MonitorRun there names it
    /// (default: every namespace).
    #[arg(long, env = "MONIVAULT_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Rotate only keys created before this RFC 3339 time (default: now). Re-running
    /// with the same time completes an interrupted rotation and never rotates twice.
    #[arg(long, value_parser = parse_time)]
    pub requested_at: Option<UnixMillis>,
    /// Data keys: re-encrypt every record and destroy the old key before returning.
    /// Root key: wait out the retire grace and remove old versions no stamp names. Without
    /// it, the operator's background loop does that.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub reencrypt: ReencryptArgs,
}
