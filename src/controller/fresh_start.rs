//! The start guard: an operator whose store is empty makes a new root key, which is right
//! for a new installation and a disaster for one whose store was lost: the new key opens
//! nothing stored before, and every VaultSection would publish a new sealing key. So before
//! the first root key is made, the watched namespaces are searched for evidence of an
//! earlier store (items stored under a key version, sections publishing a sealing key), and
//! the operator refuses to start if it finds any, pointing at `monivault restore`.
//!
//! What it must never do: make or change anything; it only reads.

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::condition::{READY, find_condition};
use crate::api::vault_item::VaultItem;
use crate::api::vault_section::VaultSection;
use crate::store::{Store, StoreError};

/// Objects looked at per kind: one piece of evidence is enough to refuse.
const SAMPLE: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum FreshStartError {
    #[error(
        "the store in namespace {namespace} is empty (no root key, no keyring), but {evidence}: the store was lost, and a new root key would open none of it. Restore it: `monivault restore --namespace {namespace} --recovery-private-key NAME.private < backup.mvb`. To start over with new keys on purpose (every stored secret, and every value sealed for the old keys, stays unreadable), start with --allow-new-root-key"
    )]
    StoreLost { namespace: String, evidence: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot look for vault objects an earlier store left: {0}")]
    Kube(#[source] kube::Error),
}

/// Refuses when `store` is empty while the cluster holds objects an earlier store made.
/// A store that is not empty is left to [`crate::store::Keys::bootstrap`], which has its
/// own refusals for a half-present store.
pub async fn refuse_if_store_lost<S: Store>(
    client: &Client,
    store: &S,
    store_namespace: &str,
    watch_namespace: Option<&str>,
) -> Result<(), FreshStartError> {
    if store.root_keys().await?.is_some() || store.keyring_head().await?.is_some() {
        return Ok(());
    }
    if let Some(evidence) = earlier_store_evidence(client, watch_namespace).await? {
        return Err(FreshStartError::StoreLost {
            namespace: store_namespace.to_owned(),
            evidence,
        });
    }
    Ok(())
}

/// The first VaultItem stored under a key version, or VaultSection publishing a sealing
/// key, in the watched namespaces (every namespace when unscoped), described in words.
pub async fn earlier_store_evidence(
    client: &Client,
    watch_namespace: Option<&str>,
) -> Result<Option<String>, FreshStartError> {
    let params = ListParams::default().limit(SAMPLE);
    let items: Api<VaultItem> = match watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    for item in items.list(&params).await.map_err(FreshStartError::Kube)? {
        let Some(status) = &item.status else { continue };
        let ready = find_condition(&status.conditions, READY).is_some_and(|c| c.status == "True");
        // A key version, or a Ready item, only comes from a store.
        if let Some(version) = status
            .key_version
            .filter(|_| ready || status.secret.is_some())
        {
            return Ok(Some(format!(
                "VaultItem {}/{} is stored under data key version {version}",
                item.namespace().unwrap_or_default(),
                item.name_any()
            )));
        }
    }
    let sections: Api<VaultSection> = match watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    for section in sections
        .list(&params)
        .await
        .map_err(FreshStartError::Kube)?
    {
        if section
            .status
            .as_ref()
            .is_some_and(|s| s.sealing_public_key.is_some())
        {
            return Ok(Some(format!(
                "VaultSection {}/{} publishes a sealing key",
                section.namespace().unwrap_or_default(),
                section.name_any()
            )));
        }
    }
    Ok(None)
}
