//! Environments of deleted namespaces: marked when the namespace is first seen gone,
//! unmarked if it comes back, and dropped once it has been gone for the grace.
//!
//! What is lost when an environment is dropped: its data keys, so the records of its items
//! (which went with the namespace) no longer open, and its sealing keys, so sealed values
//! for that namespace kept in Git stop opening: re-creating the namespace gets new keys,
//! and those values must be sealed again. Hence the grace (a week by default): a namespace
//! deleted by mistake and re-created from Git within it keeps its keys, and every sealed
//! value opens as before. Without dropping, every namespace ever made would keep a Secret
//! in the store forever.
//!
//! What it must never do: drop an environment when it cannot tell which namespaces exist
//! (the caller then skips this), or one whose namespace came back.

use std::collections::BTreeSet;

use crate::crypto::{Keyring, UnixMillis};
use crate::store::{Keys, Listing, Store, now_millis};

use super::{Reporting, RotationConfig, RotationError};

/// What one pass over the environments did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrphanOutcome {
    /// Namespaces newly seen gone.
    pub marked: Vec<String>,
    /// Namespaces seen again.
    pub unmarked: Vec<String>,
    /// Namespaces whose keys were dropped.
    pub dropped: Vec<String>,
}

/// Marks, unmarks and drops the environments of `listing` in `scope` against `live`, the
/// namespaces that exist. Each change is one compare-and-swap write (or a delete at the
/// version listed); one that lost a race is left to the next check.
pub async fn prune_orphaned_environments<S: Store>(
    keys: &Keys<S>,
    listing: &Listing<String, Keyring>,
    live: &BTreeSet<String>,
    scope: Option<&str>,
    config: &RotationConfig,
    reporting: &Reporting,
) -> Result<OrphanOutcome, RotationError> {
    let store = keys.store();
    let grace = i64::try_from(config.deleted_namespace_grace.as_secs()).unwrap_or(i64::MAX);
    let now = now_millis();
    let mut outcome = OrphanOutcome::default();
    for (namespace, stored) in &listing.items {
        if scope.is_some_and(|s| s != namespace) {
            continue;
        }
        let env = stored.value.environment(namespace)?;
        let gone = !live.contains(namespace);
        let rv = Some(stored.resource_version.as_str());
        if gone && env.orphaned_for(grace, now) {
            match store
                .delete_environment(namespace, &stored.resource_version)
                .await
            {
                Ok(_) => {
                    tracing::warn!(
                        %namespace,
                        gone_since = env.orphaned_since.map(UnixMillis::as_secs),
                        "dropped the keys of a deleted namespace; values sealed for it no longer open"
                    );
                    outcome.dropped.push(namespace.clone());
                }
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        } else if gone || env.orphaned_since.is_some() {
            let mut next = stored.value.clone();
            let changed = if gone {
                next.mark_orphaned(namespace, now)?
            } else {
                next.unmark_orphaned(namespace)?
            };
            if !changed {
                continue;
            }
            match store.put_environment(namespace, &next, rv).await {
                Ok(_) if gone => {
                    tracing::info!(
                        %namespace,
                        grace_seconds = grace,
                        "namespace is gone; its keys are dropped after the grace unless it comes back"
                    );
                    outcome.marked.push(namespace.clone());
                }
                Ok(_) => {
                    tracing::info!(%namespace, "namespace is back; keeping its keys");
                    outcome.unmarked.push(namespace.clone());
                }
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if let Some(m) = reporting.metrics() {
        m.dropped_environments.inc_by(outcome.dropped.len() as u64);
    }
    Ok(outcome)
}
