//! What rotation reads from the API server besides the store: rotation requests on
//! VaultSections, which namespaces still exist, and which root key versions the admission
//! stamps of Monitors and MonitorRuns name. Behind a trait, so unit tests state them.
//!
//! Only metadata is listed, a page at a time: ten thousand monitors cost their annotations,
//! not their specs. It must never treat a failed read as "none": the caller then keeps
//! every key it would otherwise drop.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, ObjectList};
use kube::core::PartialObjectMeta;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{KeyKind, ROTATE_ANNOTATION, RotationError, parse_request};
use crate::api::monitor::Monitor;
use crate::api::monitor_run::MonitorRun;
use crate::api::vault_section::VaultSection;
use crate::crypto::UnixMillis;
use crate::stamp::root_version_of;

/// Objects per list page.
const PAGE_SIZE: u32 = 500;

/// What rotation needs to know about the cluster, within the operator's scope.
pub trait ClusterFacts: Send + Sync {
    /// Per namespace and key kind, the latest rotation request on a VaultSection.
    /// Malformed requests are logged and left out.
    fn rotation_requests(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<(String, KeyKind), UnixMillis>, RotationError>> + Send;

    /// The namespaces that exist and are not being deleted; `None` if this cannot be told
    /// (then no environment is dropped).
    fn live_namespaces(
        &self,
    ) -> impl Future<Output = Result<Option<BTreeSet<String>>, RotationError>> + Send;

    /// Every root key version an admission stamp of a Monitor or MonitorRun names.
    fn stamped_root_versions(
        &self,
    ) -> impl Future<Output = Result<BTreeSet<u32>, RotationError>> + Send;
}

/// The facts from the API server: in every namespace, or in `scope` only (an operator
/// scoped to one namespace acts on no other, and other installations' stamps there name
/// their own root keys, not ours).
#[derive(Clone)]
pub struct KubeFacts {
    client: Client,
    scope: Option<String>,
}

impl KubeFacts {
    pub fn new(client: Client, scope: Option<String>) -> Self {
        KubeFacts { client, scope }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.scope {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// Every object's metadata, a page at a time.
async fn all_metadata<K>(
    api: &Api<K>,
    what: &str,
) -> Result<Vec<PartialObjectMeta<K>>, RotationError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(PAGE_SIZE);
    let mut all = Vec::new();
    loop {
        let page: ObjectList<PartialObjectMeta<K>> =
            api.list_metadata(&params)
                .await
                .map_err(|source| RotationError::Kube {
                    what: what.to_owned(),
                    source,
                })?;
        all.extend(page.items);
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(all),
        }
    }
}

impl ClusterFacts for KubeFacts {
    async fn rotation_requests(
        &self,
    ) -> Result<BTreeMap<(String, KeyKind), UnixMillis>, RotationError> {
        let sections = all_metadata(&self.api::<VaultSection>(), "VaultSections").await?;
        let mut requests = BTreeMap::new();
        for section in sections {
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

    async fn live_namespaces(&self) -> Result<Option<BTreeSet<String>>, RotationError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let live = |ns: &PartialObjectMeta<Namespace>| ns.metadata.deletion_timestamp.is_none();
        let namespaces = match &self.scope {
            // Scoped: one GET, no cluster-wide list (which the scope's RBAC may not allow).
            Some(scope) => {
                let found =
                    api.get_metadata_opt(scope)
                        .await
                        .map_err(|source| RotationError::Kube {
                            what: format!("namespace {scope}"),
                            source,
                        })?;
                found
                    .filter(live)
                    .map(|ns| ns.name_any())
                    .into_iter()
                    .collect()
            }
            None => all_metadata(&api, "Namespaces")
                .await?
                .iter()
                .filter(|ns| live(ns))
                .map(|ns| ns.name_any())
                .collect(),
        };
        Ok(Some(namespaces))
    }

    async fn stamped_root_versions(&self) -> Result<BTreeSet<u32>, RotationError> {
        let monitors = all_metadata(&self.api::<Monitor>(), "Monitors").await?;
        let runs = all_metadata(&self.api::<MonitorRun>(), "MonitorRuns").await?;
        Ok(monitors
            .iter()
            .map(|m| &m.metadata)
            .chain(runs.iter().map(|r| &r.metadata))
            .filter_map(root_version_of)
            .collect())
    }
}
