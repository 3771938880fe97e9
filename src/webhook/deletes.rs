//! The delete guards: a `VaultItem` that a monitor still uses, and a `VaultSection` that
//! still holds items, are not deleted. Either would leave a monitor that fails at its next
//! run for a reason nobody chose.
//!
//! They never hold up a namespace that is being deleted: every delete there is allowed, or
//! the namespace would never finish.

use std::future::Future;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::core::admission::{AdmissionResponse, Operation};

use super::authorize::AuthorizeError;
use super::{KubeLookup, Request, refuse};
use crate::api::template::referenced_items;
use crate::api::{GROUP, Monitor, MonitorSpec, VaultItem};

/// How many names a refusal lists before it says "and N more".
const LISTED: usize = 10;

/// What the guards need to know about the cluster.
pub trait DeleteLookup: Send + Sync {
    /// Whether `namespace` is being deleted.
    fn namespace_terminating(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<bool, AuthorizeError>> + Send;

    /// The monitors in `namespace` that are not being deleted, with their specs.
    fn live_monitors(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<(String, MonitorSpec)>, AuthorizeError>> + Send;

    /// The items of `section` in `namespace` that are not being deleted.
    fn live_items_in_section(
        &self,
        namespace: &str,
        section: &str,
    ) -> impl Future<Output = Result<Vec<String>, AuthorizeError>> + Send;
}

/// The validating webhook for `VaultItem` and `VaultSection` deletes.
pub async fn guard_delete<L: DeleteLookup>(lookup: &L, request: &Request) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    if request.operation != Operation::Delete || request.kind.group != GROUP {
        return allowed;
    }
    let kind = request.kind.kind.as_str();
    if kind != "VaultItem" && kind != "VaultSection" {
        return allowed;
    }
    let (Some(namespace), name) = (request.namespace.as_deref(), request.name.as_str()) else {
        return allowed;
    };
    match decide(lookup, kind, namespace, name).await {
        Ok(None) => allowed,
        Ok(Some(message)) => refuse(request, 409, "Conflict", &message),
        Err(e) => {
            tracing::warn!(uid = %request.uid, error = %e, "delete guard lookup failed");
            refuse(
                request,
                500,
                "InternalError",
                &format!("checking whether {kind} {namespace}/{name} is still needed failed: {e}"),
            )
        }
    }
}

/// `Some(why)` when the delete must be refused.
async fn decide<L: DeleteLookup>(
    lookup: &L,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, AuthorizeError> {
    if lookup.namespace_terminating(namespace).await? {
        return Ok(None);
    }
    if kind == "VaultItem" {
        let mut users: Vec<String> = lookup
            .live_monitors(namespace)
            .await?
            .into_iter()
            // A monitor whose references do not parse cannot have been admitted; it
            // carries nothing the runner would resolve.
            .filter(|(_, spec)| referenced_items(spec).is_ok_and(|items| items.contains(name)))
            .map(|(monitor, _)| monitor)
            .collect();
        if users.is_empty() {
            return Ok(None);
        }
        users.sort();
        return Ok(Some(format!(
            "VaultItem {namespace}/{name} is used by Monitor(s) {}: remove it from them first",
            listing(&users)
        )));
    }
    let mut items = lookup.live_items_in_section(namespace, name).await?;
    if items.is_empty() {
        return Ok(None);
    }
    items.sort();
    Ok(Some(format!(
        "VaultSection {namespace}/{name} still holds VaultItem(s) {}: delete or move them first",
        listing(&items)
    )))
}

fn listing(names: &[String]) -> String {
    let shown = names[..names.len().min(LISTED)].join(", ");
    match names.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

impl DeleteLookup for KubeLookup {
    async fn namespace_terminating(&self, namespace: &str) -> Result<bool, AuthorizeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let found = api
            .get_opt(namespace)
            .await
            .map_err(|source| AuthorizeError::Lookup {
                what: format!("Namespace {namespace}"),
                source,
            })?;
        Ok(found.is_none_or(|ns| {
            ns.metadata.deletion_timestamp.is_some()
                || ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
        }))
    }

    async fn live_monitors(
        &self,
        namespace: &str,
    ) -> Result<Vec<(String, MonitorSpec)>, AuthorizeError> {
        let api: Api<Monitor> = Api::namespaced(self.client.clone(), namespace);
        let list =
            api.list(&ListParams::default())
                .await
                .map_err(|source| AuthorizeError::Lookup {
                    what: format!("Monitors in {namespace}"),
                    source,
                })?;
        Ok(list
            .items
            .into_iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .map(|m| (m.metadata.name.unwrap_or_default(), m.spec))
            .collect())
    }

    async fn live_items_in_section(
        &self,
        namespace: &str,
        section: &str,
    ) -> Result<Vec<String>, AuthorizeError> {
        let api: Api<VaultItem> = Api::namespaced(self.client.clone(), namespace);
        // `spec.section` is a selectable field of the CRD, so the API server filters.
        let params = ListParams::default().fields(&format!("spec.section={section}"));
        let list = api
            .list_metadata(&params)
            .await
            .map_err(|source| AuthorizeError::Lookup {
                what: format!("VaultItems of section {namespace}/{section}"),
                source,
            })?;
        Ok(list
            .items
            .into_iter()
            .filter(|i| i.metadata.deletion_timestamp.is_none())
            .filter_map(|i| i.metadata.name)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_are_cut() {
        let names: Vec<String> = (0..12).map(|i| format!("m{i:02}")).collect();
        let text = listing(&names);
        assert!(text.ends_with("m09 and 2 more"), "{text}");
        assert_eq!(listing(&names[..2]), "m00, m01");
    }
}
