//! Who may steer a monitor that carries vault items: the decision for `Monitor` and
//! `MonitorRun` writes.
//!
//! A monitor sends its items to the host in its URL, so whoever may change a monitor
//! could point it at a host they control and receive the secret. A write is therefore
//! allowed only if the requesting user has the verb `use` on every item the object names,
//! before and after the change (removing an item changes where the others go too): on
//! `vaultitems/<item>`, or else on `vaultsections/<the item's section>`.
//!
//! The spec's size limits are checked first, before anything is parsed or looked up: this
//! webhook runs before the API server checks the schema. A new `MonitorRun` is refused
//! (403, as a quota would) while its monitor has [`MAX_UNFINISHED_RUNS_PER_MONITOR`] unfinished runs.
//!
//! Not checked: changes to metadata alone (the spec is unchanged) and status writes; they
//! cannot move a secret. Deletes are for the delete guards.
//!
//! The decision is pure over three small traits, so it is unit-tested with tables:
//! [`Authorizer`] (a SubjectAccessReview in production), [`ItemLookup`] and
//! [`MonitorLookup`]. Independent reviews run concurrently.
//!
//! Every item the new object carries is looked up, so the stamp can bind each item's uid:
//! an item deleted and recreated under the same name (possibly in another section) after
//! admission is not the item that was authorized, and the runner refuses it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;

use futures::future::join_all;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, Operation};
use serde_json::Value;

use super::{Request, parse_part, refuse};
use crate::api::monitor::LimitError;
use crate::api::monitor_run::MAX_UNFINISHED_RUNS_PER_MONITOR;
use crate::api::template::{ReferenceError, referenced_items};
use crate::api::{GROUP, Monitor, MonitorRun, MonitorRunSpec, MonitorSpec, VaultItem};
use crate::stamp::spec_digest;

/// The custom RBAC verb that lets a user have a monitor carry an item.
pub const USE_VERB: &str = "use";

/// The custom RBAC verb that lets a user add hosts to an item's `allowedHosts`. Never
/// aggregated into `edit` or `admin`: widening where a secret may go is a decision of its
/// own, apart from using it.
pub const ALLOW_HOSTS_VERB: &str = "allowhosts";

/// The resources a `use` grant can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VaultResource {
    VaultItems,
    VaultSections,
}

impl VaultResource {
    /// The RBAC resource name.
    pub fn as_str(self) -> &'static str {
        match self {
            VaultResource::VaultItems => "vaultitems",
            VaultResource::VaultSections => "vaultsections",
        }
    }
}

impl fmt::Display for VaultResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One question to the authorizer: may the user do `verb` on `resource/name` in
/// `namespace` (group `monivault.io`)?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessCheck<'a> {
    pub verb: &'a str,
    pub namespace: &'a str,
    pub resource: VaultResource,
    pub name: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("the SubjectAccessReview for {resource}/{name} failed: {source}")]
    Review {
        resource: VaultResource,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("looking up {what} failed: {source}")]
    Lookup {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// For authorizers and lookups other than the Kubernetes ones.
    #[error("{0}")]
    Other(String),
}

/// Answers "may this user do this?". Production: [`SubjectAccessReviewAuthorizer`].
pub trait Authorizer: Send + Sync {
    fn allowed(
        &self,
        user: &UserInfo,
        check: &AccessCheck<'_>,
    ) -> impl Future<Output = Result<bool, AuthorizeError>> + Send;
}

/// What authorization needs to know about a stored vault item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemFacts {
    /// For the section-wide grant.
    pub section: String,
    /// Bound into the stamp.
    pub uid: String,
}

/// Stored vault items, by name.
pub trait ItemLookup: Send + Sync {
    /// `None` if there is no such item (then only a grant on the item's name can allow it).
    fn item(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ItemFacts>, AuthorizeError>> + Send;
}

/// The spec of a saved monitor, for a `MonitorRun` of it, and the runs already waiting.
pub trait MonitorLookup: Send + Sync {
    /// `None` if there is no such monitor.
    fn monitor_spec(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<MonitorSpec>, AuthorizeError>> + Send;

    /// How many MonitorRuns in `namespace` have not finished: those of the saved monitor
    /// `monitor`, or, for `None`, those with an inline spec.
    fn unfinished_runs(
        &self,
        namespace: &str,
        monitor: Option<&str>,
    ) -> impl Future<Output = Result<usize, AuthorizeError>> + Send;
}

/// Why a Monitor or MonitorRun write was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "monivault's monitor webhook got {0}; it handles monivault.io Monitors and MonitorRuns only"
    )]
    WrongKind(String),
    #[error("the admission request carries no object")]
    NoObject,
    #[error("the {kind} has no namespace")]
    NoNamespace { kind: &'static str },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("{0}")]
    Placeholder(String),
    #[error(
        "MonitorRun of monitor {0:?}: there is no such Monitor in this namespace, so the run cannot be authorized"
    )]
    NoSuchMonitor(String),
    #[error(
        "{user} may not use vault item(s) {items} in namespace {namespace:?}: this {kind} carries them (before or after this change), and writing it needs verb \"use\" on vaultitems/<item> or on vaultsections/<the item's section>"
    )]
    NotAllowed {
        user: String,
        items: String,
        namespace: String,
        kind: &'static str,
    },
    #[error(
        "{runs} has {count} runs that have not finished, and at most {MAX_UNFINISHED_RUNS_PER_MONITOR} may wait at once: let them finish (Pending or Running), then create this run"
    )]
    TooManyRuns { runs: String, count: usize },
    #[error("authorization failed: {0}")]
    Authorize(#[from] AuthorizeError),
}

impl Refusal {
    pub(crate) fn into_response(self, request: &Request) -> AdmissionResponse {
        let (code, reason) = self.status();
        if code >= 500 {
            tracing::warn!(uid = %request.uid, error = %self, "monitor admission failed");
        }
        refuse(request, code, reason, &self.to_string())
    }

    fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::WrongKind(_) | Refusal::NoObject | Refusal::NoNamespace { .. } => {
                (400, "BadRequest")
            }
            Refusal::InvalidSpec(_) | Refusal::Placeholder(_) | Refusal::NoSuchMonitor(_) => {
                (422, "Invalid")
            }
            Refusal::NotAllowed { .. } => (403, "Forbidden"),
            // 403, as ResourceQuota answers: clients retry a 429 on their own (kube-rs
            // backs off for minutes) and would sit waiting for runs to finish.
            Refusal::TooManyRuns { .. } => (403, "Forbidden"),
            Refusal::Authorize(_) => (500, "InternalError"),
        }
    }
}

pub(crate) use crate::stamp::StampKind as Kind;

/// Which kind of object a monitor webhook request is about.
pub(crate) fn kind_of(request: &Request) -> Result<Kind, Refusal> {
    match (request.kind.group.as_str(), request.kind.kind.as_str()) {
        (GROUP, "Monitor") => Ok(Kind::Monitor),
        (GROUP, "MonitorRun") => Ok(Kind::MonitorRun),
        (_, kind) => Err(Refusal::WrongKind(super::foreign_kind(kind))),
    }
}

/// The authorization decision alone for one Monitor or MonitorRun request: allowed or
/// refused, without a stamp. The mutating webhook adds the stamp on top
/// ([`super::monitors::stamp_monitor_write`]).
pub async fn authorize_monitor_write<A, I, M>(
    authorizer: &A,
    sections: &I,
    monitors: &M,
    request: &Request,
) -> AdmissionResponse
where
    A: Authorizer,
    I: ItemLookup,
    M: MonitorLookup,
{
    match decide(authorizer, sections, monitors, request).await {
        Ok(_) => AdmissionResponse::from(request),
        Err(refusal) => refusal.into_response(request),
    }
}

/// What [`decide`] found.
pub(crate) enum Decision {
    /// Not a write that can move a secret (metadata only, status, delete): not checked.
    Unchecked,
    /// The user may use every item the object carries, before and after.
    Authorized(Authorized),
}

/// An authorized write: what the stamp vouches for.
pub(crate) struct Authorized {
    pub kind: Kind,
    pub namespace: String,
    /// The items the new object carries, with each one's uid at admission (empty for an
    /// item that did not exist: only a grant on its name can have allowed it).
    pub items: BTreeMap<String, String>,
    /// The new object's spec digest ([`super::monitors::spec_digest`]).
    pub spec_digest: [u8; 32],
}

pub(crate) async fn decide<A, I, M>(
    authorizer: &A,
    sections: &I,
    monitors: &M,
    request: &Request,
) -> Result<Decision, Refusal>
where
    A: Authorizer,
    I: ItemLookup,
    M: MonitorLookup,
{
    let kind = kind_of(request)?;
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request.sub_resource.as_deref() == Some("status")
    {
        return Ok(Decision::Unchecked);
    }
    let object = request.object.as_ref().ok_or(Refusal::NoObject)?;
    let old = request.old_object.as_ref();
    if let Some(old) = old
        && old.data.get("spec") == object.data.get("spec")
    {
        return Ok(Decision::Unchecked);
    }
    let namespace = namespace_of(request, kind)?;

    let new = references(kind, object, monitors, namespace, "").await?;
    let mut items = new.items.clone();
    if let Some(old) = old {
        items.extend(
            references(kind, old, monitors, namespace, "the stored object's ")
                .await?
                .items,
        );
    }
    let facts = look_up(sections, namespace, &items).await?;
    let denied =
        unauthorized_items(authorizer, &request.user_info, USE_VERB, namespace, &facts).await?;
    if denied.is_empty() {
        // Counted only for someone allowed to run it: the refusal tells how many wait.
        if kind == Kind::MonitorRun && request.operation == Operation::Create {
            check_unfinished_runs(monitors, namespace, new.monitor_ref.as_deref()).await?;
        }
        let items = new
            .items
            .into_iter()
            .map(|item| {
                let uid = facts
                    .get(&item)
                    .and_then(|f| f.as_ref())
                    .map(|f| f.uid.clone())
                    .unwrap_or_default();
                (item, uid)
            })
            .collect();
        return Ok(Decision::Authorized(Authorized {
            kind,
            namespace: namespace.to_owned(),
            items,
            spec_digest: new.spec_digest,
        }));
    }
    Err(Refusal::NotAllowed {
        user: user_name(&request.user_info),
        items: denied.join(", "),
        namespace: namespace.to_owned(),
        kind: kind.as_str(),
    })
}

/// Refuses a new run of `monitor` (`None`: an inline run) when
/// [`MAX_UNFINISHED_RUNS_PER_MONITOR`] of its runs have not finished. Two runs admitted at
/// the same instant may both pass; the runner fails a run over the limit too.
async fn check_unfinished_runs<M: MonitorLookup>(
    monitors: &M,
    namespace: &str,
    monitor: Option<&str>,
) -> Result<(), Refusal> {
    let count = monitors.unfinished_runs(namespace, monitor).await?;
    if count < MAX_UNFINISHED_RUNS_PER_MONITOR {
        return Ok(());
    }
    let runs = match monitor {
        Some(name) => format!("Monitor {name:?}"),
        None => format!("namespace {namespace:?} (inline spec.monitor runs count together)"),
    };
    Err(Refusal::TooManyRuns { runs, count })
}

pub(crate) fn namespace_of(request: &Request, kind: Kind) -> Result<&str, Refusal> {
    request
        .namespace
        .as_deref()
        .or(request
            .object
            .as_ref()
            .and_then(|o| o.metadata.namespace.as_deref()))
        .filter(|n| !n.is_empty())
        .ok_or(Refusal::NoNamespace {
            kind: kind.as_str(),
        })
}

/// What an object carries, and the digest of its spec as parsed.
pub(crate) struct References {
    pub items: BTreeSet<String>,
    pub spec_digest: [u8; 32],
    /// The saved Monitor a run names, whose items are not in `items` yet.
    pub monitor_ref: Option<String>,
}

/// The items `object` names itself, without looking anything up. `whose` prefixes
/// messages about the old object.
pub(crate) fn own_references(
    kind: Kind,
    object: &DynamicObject,
    whose: &str,
) -> Result<References, Refusal> {
    let spec = object.data.get("spec").unwrap_or(&Value::Null);
    let invalid = |e: String| {
        Refusal::InvalidSpec(format!("{whose}spec is not a valid {}: {e}", kind.as_str()))
    };
    let placeholder =
        |prefix: &str, e: ReferenceError| Refusal::Placeholder(format!("{whose}{prefix}{e}"));
    // Before any placeholder is parsed or item looked up: this webhook runs before the
    // API server checks the schema's limits.
    let over_limit =
        |prefix: &str, e: LimitError| Refusal::InvalidSpec(format!("{whose}{prefix}{e}"));
    match kind {
        Kind::Monitor => {
            let spec: MonitorSpec = parse_part(spec).map_err(invalid)?;
            spec.check_limits().map_err(|e| over_limit("spec.", e))?;
            Ok(References {
                items: referenced_items(&spec).map_err(|e| placeholder("spec.", e))?,
                spec_digest: spec_digest(&spec).map_err(|e| invalid(e.to_string()))?,
                monitor_ref: None,
            })
        }
        Kind::MonitorRun => {
            let spec: MonitorRunSpec = parse_part(spec).map_err(invalid)?;
            let items = match &spec.monitor {
                Some(inline) => {
                    inline
                        .check_limits()
                        .map_err(|e| over_limit("spec.monitor.", e))?;
                    referenced_items(inline).map_err(|e| placeholder("spec.monitor.", e))?
                }
                None => BTreeSet::new(),
            };
            Ok(References {
                items,
                spec_digest: spec_digest(&spec).map_err(|e| invalid(e.to_string()))?,
                monitor_ref: spec.monitor_ref.map(|r| r.name.to_string()),
            })
        }
    }
}

/// Every item `object` carries: its own, and a run's saved monitor's.
async fn references<M: MonitorLookup>(
    kind: Kind,
    object: &DynamicObject,
    monitors: &M,
    namespace: &str,
    whose: &str,
) -> Result<References, Refusal> {
    let mut refs = own_references(kind, object, whose)?;
    if let Some(name) = &refs.monitor_ref {
        let saved = monitors
            .monitor_spec(namespace, name)
            .await?
            .ok_or_else(|| Refusal::NoSuchMonitor(name.clone()))?;
        let items = referenced_items(&saved)
            .map_err(|e| Refusal::Placeholder(format!("{whose}monitor {name:?}: spec.{e}")))?;
        refs.items.extend(items);
    }
    Ok(refs)
}

/// Looks every item up at once.
pub async fn look_up<I: ItemLookup>(
    lookup: &I,
    namespace: &str,
    items: &BTreeSet<String>,
) -> Result<BTreeMap<String, Option<ItemFacts>>, AuthorizeError> {
    let found = join_all(items.iter().map(|item| async move {
        Ok::<_, AuthorizeError>((item.clone(), lookup.item(namespace, item).await?))
    }))
    .await;
    found.into_iter().collect()
}

/// The items that `user` may not `verb`, sorted. An item is allowed by `verb` on
/// `vaultitems/<item>`, or else by `verb` on `vaultsections/<its section>`. Items are
/// checked at once, and each section is asked about once however many of the items it
/// holds; the first failed review fails the whole decision.
pub async fn unauthorized_items<A: Authorizer>(
    authorizer: &A,
    user: &UserInfo,
    verb: &str,
    namespace: &str,
    items: &BTreeMap<String, Option<ItemFacts>>,
) -> Result<Vec<String>, AuthorizeError> {
    // By name first; the section of an item not allowed by name.
    let by_name = items.iter().map(|(item, facts)| async move {
        let check = AccessCheck {
            verb,
            namespace,
            resource: VaultResource::VaultItems,
            name: item,
        };
        if authorizer.allowed(user, &check).await? {
            return Ok(None);
        }
        let section = facts.as_ref().map(|f| f.section.as_str());
        Ok::<_, AuthorizeError>(Some((item.clone(), section)))
    });
    let mut pending: Vec<(String, Option<&str>)> = Vec::new();
    for outcome in join_all(by_name).await {
        pending.extend(outcome?);
    }

    let wanted: BTreeSet<&str> = pending.iter().filter_map(|(_, s)| *s).collect();
    let by_section = wanted.into_iter().map(|section| async move {
        let check = AccessCheck {
            verb,
            namespace,
            resource: VaultResource::VaultSections,
            name: section,
        };
        let allowed = authorizer.allowed(user, &check).await?;
        Ok::<_, AuthorizeError>((section, allowed))
    });
    let mut allowed_sections = BTreeSet::new();
    for outcome in join_all(by_section).await {
        let (section, allowed) = outcome?;
        if allowed {
            allowed_sections.insert(section);
        }
    }

    let mut denied: Vec<String> = pending
        .into_iter()
        .filter(|(_, section)| !section.is_some_and(|s| allowed_sections.contains(s)))
        .map(|(item, _)| item)
        .collect();
    denied.sort();
    Ok(denied)
}

/// Whether `user` may `verb` the item `item` of `section`: on `vaultitems/<item>`, or else
/// on `vaultsections/<section>`.
pub async fn may_on_item<A: Authorizer>(
    authorizer: &A,
    user: &UserInfo,
    verb: &str,
    namespace: &str,
    item: &str,
    section: &str,
) -> Result<bool, AuthorizeError> {
    let items = BTreeMap::from([(
        item.to_owned(),
        Some(ItemFacts {
            section: section.to_owned(),
            uid: String::new(),
        }),
    )]);
    Ok(
        unauthorized_items(authorizer, user, verb, namespace, &items)
            .await?
            .is_empty(),
    )
}

fn user_name(user: &UserInfo) -> String {
    match user.username.as_deref() {
        Some(name) if !name.is_empty() => format!("user {name:?}"),
        _ => "the requesting user".to_owned(),
    }
}

/// [`Authorizer`] by SubjectAccessReview: asks the API server's authorizers (RBAC and any
/// other) on behalf of the requesting user, with their name, uid, groups and extra, so
/// impersonation and identity-provider claims count as they do for the request itself.
#[derive(Clone)]
pub struct SubjectAccessReviewAuthorizer {
    client: Client,
}

impl SubjectAccessReviewAuthorizer {
    pub fn new(client: Client) -> Self {
        SubjectAccessReviewAuthorizer { client }
    }

    /// The review sent for `check`.
    pub fn review(user: &UserInfo, check: &AccessCheck<'_>) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(Self::resource_attributes(check)),
                non_resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        }
    }

    /// What `check` asks about, as a review names it. Public so that a
    /// SelfSubjectAccessReview (`kubectl monivault can-use`) asks exactly what the webhook
    /// asks.
    pub fn resource_attributes(check: &AccessCheck<'_>) -> ResourceAttributes {
        ResourceAttributes {
            group: Some(GROUP.to_owned()),
            namespace: Some(check.namespace.to_owned()),
            resource: Some(check.resource.as_str().to_owned()),
            name: Some(check.name.to_owned()),
            verb: Some(check.verb.to_owned()),
            ..ResourceAttributes::default()
        }
    }
}

impl Authorizer for SubjectAccessReviewAuthorizer {
    async fn allowed(
        &self,
        user: &UserInfo,
        check: &AccessCheck<'_>,
    ) -> Result<bool, AuthorizeError> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &Self::review(user, check))
            .await
            .map_err(|source| AuthorizeError::Review {
                resource: check.resource,
                name: check.name.to_owned(),
                source,
            })?;
        Ok(review_allows(answer.status.as_ref()))
    }
}

/// Whether a (Self)SubjectAccessReview's answer allows: `allowed`, and not also `denied`.
pub fn review_allows(status: Option<&SubjectAccessReviewStatus>) -> bool {
    status.is_some_and(|s| s.allowed && s.denied != Some(true))
}

/// [`ItemLookup`] and [`MonitorLookup`] by reading the objects from the API server.
#[derive(Clone)]
pub struct KubeLookup {
    pub(crate) client: Client,
}

impl KubeLookup {
    pub fn new(client: Client) -> Self {
        KubeLookup { client }
    }
}

impl ItemLookup for KubeLookup {
    async fn item(&self, namespace: &str, name: &str) -> Result<Option<ItemFacts>, AuthorizeError> {
        let api: Api<VaultItem> = Api::namespaced(self.client.clone(), namespace);
        let found = api
            .get_opt(name)
            .await
            .map_err(|source| AuthorizeError::Lookup {
                what: format!("VaultItem {namespace}/{name}"),
                source,
            })?;
        Ok(found.map(|item| ItemFacts {
            uid: item.metadata.uid.clone().unwrap_or_default(),
            section: item.spec.section,
        }))
    }
}

impl MonitorLookup for KubeLookup {
    async fn monitor_spec(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<MonitorSpec>, AuthorizeError> {
        let api: Api<Monitor> = Api::namespaced(self.client.clone(), namespace);
        let found = api
            .get_opt(name)
            .await
            .map_err(|source| AuthorizeError::Lookup {
                what: format!("Monitor {namespace}/{name}"),
                source,
            })?;
        Ok(found.map(|monitor| monitor.spec))
    }

    async fn unfinished_runs(
        &self,
        namespace: &str,
        monitor: Option<&str>,
    ) -> Result<usize, AuthorizeError> {
        let api: Api<MonitorRun> = Api::namespaced(self.client.clone(), namespace);
        // `spec.monitorRef.name` is a selectable field of the CRD, so the API server
        // filters a saved monitor's runs.
        let params = match monitor {
            Some(name) => ListParams::default().fields(&format!("spec.monitorRef.name={name}")),
            None => ListParams::default(),
        };
        let list = api
            .list(&params)
            .await
            .map_err(|source| AuthorizeError::Lookup {
                what: format!("MonitorRuns in {namespace}"),
                source,
            })?;
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        Ok(list
            .items
            .iter()
            .filter(|run| monitor.is_some() || run.spec.monitor.is_some())
            .filter(|run| run.counts_as_waiting(now))
            .count())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_review_carries_the_whole_identity() {
        let user = UserInfo {
            username: Some("mallory".into()),
            uid: Some("u-1".into()),
            groups: Some(vec!["dev".into()]),
            extra: Some(BTreeMap::from([("scopes".into(), vec!["a".into()])])),
        };
        let check = AccessCheck {
            verb: USE_VERB,
            namespace: "shop",
            resource: VaultResource::VaultSections,
            name: "checkout",
        };
        let review = SubjectAccessReviewAuthorizer::review(&user, &check);
        assert_eq!(review.spec.user.as_deref(), Some("mallory"));
        assert_eq!(review.spec.uid.as_deref(), Some("u-1"));
        assert_eq!(review.spec.groups, user.groups);
        assert_eq!(review.spec.extra, user.extra);
        let attributes = review.spec.resource_attributes.unwrap();
        assert_eq!(attributes.group.as_deref(), Some("monivault.io"));
        assert_eq!(attributes.resource.as_deref(), Some("vaultsections"));
        assert_eq!(attributes.name.as_deref(), Some("checkout"));
        assert_eq!(attributes.namespace.as_deref(), Some("shop"));
        assert_eq!(attributes.verb.as_deref(), Some("use"));
    }
}
