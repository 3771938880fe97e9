//! Per-environment key rotations: a new data or sealing key made current, and superseded
//! sealing keys pruned after the retention.

use crate::crypto::RotationPolicy;
use crate::store::Store;
use crate::store::{Keys, now_millis};

use super::{KeyKind, Reporting, RotationError, Trigger, change_environment};

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
    let now = now_millis();
    let mut rotated = None;
    change_environment(keys, namespace, |keyring, root| {
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
    let now = now_millis();
    let mut pruned = Vec::new();
    change_environment(keys, namespace, |keyring, _| {
        pruned = keyring.prune_sealing_keys(namespace, now, policy)?;
        Ok(!pruned.is_empty())
    })
    .await?;
    if !pruned.is_empty() {
        tracing::info!(namespace, versions = ?pruned, "dropped expired sealing keys");
    }
    Ok(pruned)
}
