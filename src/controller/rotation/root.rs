//! The root key rotation, installation-wide. Each step is chosen from the stored state
//! alone and makes compare-and-swap writes, so a crash anywhere is a re-run:
//!
//! 1. add version N+1 to the root key Secret, not current, old versions kept;
//! 2. re-wrap every environment not under the newest version (one write each, paced like
//!    re-encryption); each environment Secret names the version it is wrapped under, so
//!    every one opens at every moment;
//! 3. make the newest version current (new environments and new admission stamps use it);
//! 4. remove old versions that no environment is wrapped under and no admission stamp
//!    names, once the switch is older than the retire grace.
//!
//! Step 4 keeps a version while a stored stamp names it, rather than re-stamping
//! monitors: a stamp is an authorization that only the admission of a permitted user's
//! write can make, and the rotation, acting for nobody, must not mint one. The version
//! goes once those stamps are gone or re-applied (a later check removes it). The grace
//! (at least one root key reload period, plus an admission's time) lets every replica
//! stop signing with the old version, and the stamps it signed reach the API server,
//! before the stamps are listed.
//!
//! A root key Secret whose newest version is not current means step 2 or 3 is pending; an
//! environment under an older version than the newest (made by a replica that had not yet
//! reloaded) is re-wrapped by step 2 of the next check.

use std::collections::BTreeSet;

use crate::crypto::{RootKey, RotationPolicy, UnixMillis};
use crate::store::{KeyError, Keys, RootKeySet, Store, now_millis};

use super::reencrypt::rate_limiter;
use super::{ATTEMPTS, ClusterFacts, KeyKind, Reporting, RotationConfig, RotationError, Trigger};

/// Where the root key stands after a rotation call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootKeyState {
    pub current: u32,
    /// Every version still stored, current included.
    pub versions: Vec<u32>,
    /// When the retire grace of the old versions ends, if it has not yet.
    pub grace_ends: Option<UnixMillis>,
}

impl RootKeyState {
    pub fn finished(&self) -> bool {
        self.versions == [self.current]
    }
}

/// What one root key step found or did.
enum RootStep {
    /// A write happened (or lost a race): look again.
    Progress,
    /// Nothing left to do now.
    Done(RootKeyState),
}

/// Runs the root key rotation as far as it can go now: finishes one that a crash
/// interrupted, starts a new one if `trigger` applies, and removes old versions nothing
/// needs any more.
pub async fn rotate_root_key<S: Store, F: ClusterFacts>(
    keys: &Keys<S>,
    facts: &F,
    trigger: Trigger,
    config: &RotationConfig,
    reporting: &Reporting,
) -> Result<RootKeyState, RotationError> {
    // Four steps, plus a lost race per step: bounded so a pathological store cannot spin.
    // At most one new key per call, even if the policy says a fresh key is due already.
    let mut may_start = true;
    for _ in 0..(4 + ATTEMPTS) {
        if let RootStep::Done(state) =
            root_step(keys, facts, trigger, config, &mut may_start, reporting).await?
        {
            return Ok(state);
        }
    }
    Err(RotationError::Contention {
        what: "the root key rotation",
    })
}

fn root_key_due(roots: &RootKeySet, now: UnixMillis, policy: &RotationPolicy) -> bool {
    roots
        .since()
        .is_some_and(|since| now.secs_since(since) >= policy.root_key_max_age)
}

/// One step of the root key rotation, chosen from the stored state alone.
async fn root_step<S: Store, F: ClusterFacts>(
    keys: &Keys<S>,
    facts: &F,
    trigger: Trigger,
    config: &RotationConfig,
    may_start: &mut bool,
    reporting: &Reporting,
) -> Result<RootStep, RotationError> {
    let store = keys.store();
    let roots = store.root_keys().await?.ok_or(KeyError::RootKeyMissing)?;
    let newest = roots.value.newest();
    let current = roots.value.current();
    let now = now_millis();
    // With a single version, no environment can be under another (step 4 removes one only
    // when none is, and the grace outlasts every replica's reload): skip the listing.
    let environments = if roots.value.versions().len() > 1 {
        let listing = store.list_environments().await?;
        reporting.environments_listed(&listing);
        Some(listing)
    } else {
        None
    };

    if let Some(environments) = &environments {
        // Step 2: every environment onto the newest version.
        let pending: Vec<_> = environments
            .items
            .iter()
            .filter(|(_, env)| env.value.root_key_version != newest)
            .collect();
        if !pending.is_empty() {
            let new = roots.value.key(newest)?;
            let limiter = rate_limiter(config.reencrypt_rate);
            let (mut moved, mut raced) = (0usize, 0usize);
            for (namespace, env) in pending {
                let from = env.value.root_key_version;
                let next = roots
                    .value
                    .key(from)
                    .map_err(RotationError::from)
                    .and_then(|old| Ok(env.value.rewrap(&old, &new, now)?));
                let next = match next {
                    Ok(next) => next,
                    Err(e) => {
                        // Left as it is (still under its own version, which stays).
                        tracing::error!(%namespace, root_key = from, error = %e, "environment keys cannot be re-wrapped");
                        continue;
                    }
                };
                limiter.until_ready().await;
                match store
                    .put_environment(namespace, &next, Some(&env.resource_version))
                    .await
                {
                    Ok(_) => moved += 1,
                    Err(e) if e.is_conflict() => raced += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            if moved > 0 {
                tracing::info!(
                    to = newest,
                    environments = moved,
                    "root key rotation: environments re-wrapped"
                );
            }
            if moved + raced > 0 {
                return Ok(RootStep::Progress);
            }
        }
    }

    let written = if current != newest {
        // Step 3: the newest version becomes current.
        let mut next = roots.value;
        next.set_current(newest, now)?;
        let result = store
            .put_root_keys(&next, Some(&roots.resource_version))
            .await;
        if result.is_ok() {
            tracing::info!(
                from = current,
                to = newest,
                "root key rotation: new root key current"
            );
            if let Some(m) = reporting.metrics() {
                m.rotated(KeyKind::RootKey);
            }
        }
        result
    } else {
        // Step 4: old versions that nothing needs any more.
        let old: BTreeSet<u32> = roots
            .value
            .versions()
            .into_iter()
            .filter(|v| *v != current)
            .collect();
        let mut grace_ends = None;
        let mut removable = BTreeSet::new();
        if let Some(environments) = environments.as_ref().filter(|_| !old.is_empty()) {
            let ends = roots
                .value
                .since()
                .unwrap_or(UnixMillis::from_millis(0))
                .plus(config.root_key_retire_grace);
            if !environments.unreadable.is_empty() {
                tracing::warn!(
                    versions = ?old,
                    "keeping old root keys: an environment Secret cannot be read, so the version it is under is unknown"
                );
            } else if now < ends {
                grace_ends = Some(ends);
            } else {
                match facts.stamped_root_versions().await {
                    Ok(stamped) => {
                        let wrapping: BTreeSet<u32> = environments
                            .items
                            .iter()
                            .map(|(_, env)| env.value.root_key_version)
                            .collect();
                        removable = old
                            .iter()
                            .filter(|v| !wrapping.contains(v) && !stamped.contains(v))
                            .copied()
                            .collect();
                        let kept: Vec<&u32> = old.intersection(&stamped).collect();
                        if !kept.is_empty() {
                            tracing::info!(
                                versions = ?kept,
                                "keeping old root keys that admission stamps still name; they go once those monitors are re-applied or deleted"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        versions = ?old,
                        "keeping old root keys: cannot list the admission stamps that may name them"
                    ),
                }
            }
        }
        if !removable.is_empty() {
            let mut next = roots.value;
            for version in &removable {
                next.remove(*version)?;
            }
            let result = store
                .put_root_keys(&next, Some(&roots.resource_version))
                .await;
            if result.is_ok() {
                tracing::info!(removed = ?removable, current, "root key rotation: old versions removed");
            }
            result
        } else if *may_start
            && trigger.applies(
                roots.value.since(),
                root_key_due(&roots.value, now, &config.policy),
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
                tracing::info!(from = current, to = version, "root key rotation: started");
            }
            result
        } else {
            return Ok(RootStep::Done(RootKeyState {
                current,
                versions: roots.value.versions(),
                grace_ends,
            }));
        }
    };
    match written {
        Ok(_) => {
            // This process follows its own change at once, not a reload period later.
            keys.reload_roots().await?;
            Ok(RootStep::Progress)
        }
        Err(e) if e.is_conflict() => Ok(RootStep::Progress),
        Err(e) => Err(e.into()),
    }
}
