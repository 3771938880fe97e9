//! The delete guards: a `VaultItem` that a monitor still uses, and a `VaultSection` that
//! still holds items, are not deleted. Either would leave a monitor that fails at its next
//! run for a reason nobody chose. A monitor being deleted (a finalizer holds it) and a
//! MonitorRun that has not finished still use their items.
//!
//! Deleting an item that holds a secret also needs `use` on it: whoever deletes an item can
//! create another of the same name, and the delete must not become a way around `use`.
//!
//! They never hold up a namespace that is being deleted: every delete there is allowed, or
//! the namespace would never finish.

use std::future::Future;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::core::admission::{AdmissionResponse, Operation};

use super::authorize::{AuthorizeError, Authorizer, USE_VERB, may_on_item};
use super::{KubeLookup, Request, parse_part, refuse};
use crate::api::template::referenced_items;
use crate::api::{GROUP, Monitor, MonitorRun, MonitorSpec, VaultItem, VaultItemSpec};

/// How many names a refusal lists before it says "and N more".
const LISTED: usize = 10;

/// What the guards need to know about the cluster.
pub trait DeleteLookup: Send + Sync {
    /// Whether `namespace` is being deleted.
    fn namespace_terminating(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<bool, AuthorizeError>> + Send;

    /// The monitors in `namespace`, those being deleted included (a finalizer may keep
    /// one running), with their specs.
    fn monitors(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<(String, MonitorSpec)>, AuthorizeError>> + Send;

    /// The MonitorRuns in `namespace` that have not finished and carry an inline spec.
    fn unfinished_inline_runs(
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

/// Why a delete is refused.
enum Refusal {
    /// Something still needs the object (409).
    InUse(String),
    /// The requester may not use the secret the item holds (403).
    NotAllowed(String),
}

/// The validating webhook for `VaultItem` and `VaultSection` deletes.
pub async fn guard_delete<A: Authorizer, L: DeleteLookup>(
    authorizer: &A,
    lookup: &L,
    request: &Request,
) -> AdmissionResponse {
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
    match decide(authorizer, lookup, request, kind, namespace, name).await {
        Ok(None) => allowed,
        Ok(Some(Refusal::InUse(message))) => refuse(request, 409, "Conflict", &message),
        Ok(Some(Refusal::NotAllowed(message))) => refuse(request, 403, "Forbidden", &message),
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
async fn decide<A: Authorizer, L: DeleteLookup>(
    authorizer: &A,
    lookup: &L,
    request: &Request,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Refusal>, AuthorizeError> {
    if lookup.namespace_terminating(namespace).await? {
        return Ok(None);
    }
    if kind == "VaultItem" {
        // The stored item: the API server sends it with every delete.
        let stored: Option<VaultItemSpec> = request
            .old_object
            .as_ref()
            .and_then(|old| old.data.get("spec"))
            .and_then(|spec| parse_part(spec).ok());
        let holds_secret = stored
            .as_ref()
            .is_none_or(|spec| !spec.secret_fields().is_empty());
        // Without the stored item, only a grant on the item's own name can allow it.
        let section = stored.as_ref().map_or("", |spec| spec.section.as_str());
        if holds_secret
            && !may_on_item(
                authorizer,
                &request.user_info,
                USE_VERB,
                namespace,
                name,
                section,
            )
            .await?
        {
            let user = match request.user_info.username.as_deref() {
                Some(user) if !user.is_empty() => format!("user {user:?}"),
                _ => "the requesting user".to_owned(),
            };
            return Ok(Some(Refusal::NotAllowed(format!(
                "{user} may not delete VaultItem {namespace}/{name}: it holds a secret, and deleting it needs verb \"use\" on vaultitems/{name} or on vaultsections/{section}"
            ))));
        }
        let uses = |list: Vec<(String, MonitorSpec)>| -> Vec<String> {
            let mut names: Vec<String> = list
                .into_iter()
                // A spec whose references do not parse cannot have been admitted; it
                // carries nothing the runner would resolve.
                .filter(|(_, spec)| referenced_items(spec).is_ok_and(|items| items.contains(name)))
                .map(|(object, _)| object)
                .collect();
            names.sort();
            names
        };
        let monitors = uses(lookup.monitors(namespace).await?);
        let runs = uses(lookup.unfinished_inline_runs(namespace).await?);
        let users: Vec<String> = [("Monitor(s)", monitors), ("MonitorRun(s)", runs)]
            .into_iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(what, names)| format!("{what} {}", listing(&names)))
            .collect();
        if users.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Refusal::InUse(format!(
            "VaultItem {namespace}/{name} is used by {}: remove it from them first (a MonitorRun stops using it once it has finished)",
            users.join(" and ")
        ))));
    }
    let mut items = lookup.live_items_in_section(namespace, name).await?;
    if items.is_empty() {
        return Ok(None);
    }
    items.sort();
    Ok(Some(Refusal::InUse(format!(
        "VaultSection {namespace}/{name} still holds VaultItem(s) {}: delete or move them first",
        listing(&items)
    ))))
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

    async fn monitors(
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
            .map(|m| (m.metadata.name.unwrap_or_default(), m.spec))
            .collect())
    }

    async fn unfinished_inline_runs(
        &self,
        namespace: &str,
    ) -> Result<Vec<(String, MonitorSpec)>, AuthorizeError> {
        let api: Api<MonitorRun> = Api::namespaced(self.client.clone(), namespace);
        let list =
            api.list(&ListParams::default())
                .await
                .map_err(|source| AuthorizeError::Lookup {
                    what: format!("MonitorRuns in {namespace}"),
                    source,
                })?;
        Ok(list
            .items
            .into_iter()
            .filter(|run| run.is_unfinished())
            .filter_map(|run| Some((run.metadata.name.unwrap_or_default(), run.spec.monitor?)))
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
