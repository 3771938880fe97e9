//! The root key rotation: four steps, each one compare-and-swap write, chosen from the
//! stored state alone.

use crate::crypto::{RootKey, RotationPolicy};
use crate::store::Store;
use crate::store::{KeyError, Keys, unix_now};

use super::{ATTEMPTS, KeyKind, Reporting, RotationError, Trigger, read_keyring};

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
