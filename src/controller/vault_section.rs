//! `VaultSection`: makes sure its environment has keys, and publishes the current sealing
//! public key in status, where `monivault seal` and users find it.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use serde_json::json;

use super::{Context, Error, apply_status};
use crate::api::condition::{ConditionStatus, READY, new_condition, set_condition};
use crate::api::vault_section::{VaultSection, VaultSectionStatus};
use crate::store::Store;

/// Sealing keys rotate on a schedule; look again often enough to publish a new one soon.
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile<S: Store>(
    section: Arc<VaultSection>,
    ctx: Arc<Context<S>>,
) -> Result<Action, Error> {
    let namespace = section
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let keyring = ctx.keys.ensure_environment(&namespace).await?;
    let root = ctx.keys.root_for(&keyring).await?;
    let public_key = keyring.sealing_public_key(&root, &namespace)?;

    let previous = section.status.clone().unwrap_or_default();
    let mut status = VaultSectionStatus {
        conditions: previous.conditions.clone(),
        key_version: Some(public_key.version()),
        sealing_public_key: Some(public_key.to_string()),
        observed_generation: section.metadata.generation,
    };
    set_condition(
        &mut status.conditions,
        new_condition(
            READY,
            ConditionStatus::True,
            "KeysReady",
            format!(
                "environment {namespace} has keys; sealing key version {}",
                public_key.version()
            ),
            section.metadata.generation,
            super::now(),
        ),
    );
    if section.status.as_ref() != Some(&status) {
        let api: Api<VaultSection> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&api, section.as_ref(), json!(status)).await?;
    }
    Ok(Action::requeue(RESYNC))
}
