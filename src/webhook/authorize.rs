//! Who may steer a monitor that carries vault items: the decision for `Monitor` and
//! `MonitorRun` writes.
//!
//! A monitor sends its items to the host in its URL, so whoever may change a monitor
//! could point it at a host they control and receive the secret. A write is therefore
//! allowed only if the requesting user has the verb `use` on every item the object names,
//! before and after the change (removing an item changes where the others go too): on
//! `vaultitems/<item>`, or else on `vaultsections/<the item's section>`.
//!
//! Not checked: changes to metadata alone (the spec is unchanged) and status writes; they
//! cannot move a secret. Deletes are for the delete guards.
//!
//! The decision is pure over three small traits, so it is unit-tested with tables:
//! [`Authorizer`] (a SubjectAccessReview in production), [`ItemSectionLookup`] and
//! [`MonitorLookup`]. Independent reviews run concurrently.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;

use futures::future::join_all;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, Operation};
use serde_json::Value;

use super::{Request, parse_part, refuse};
use crate::api::template::{ReferenceError, referenced_items};
use crate::api::{GROUP, Monitor, MonitorRunSpec, MonitorSpec, VaultItem};
use crate::stamp::spec_digest;

/// The custom RBAC verb that lets a user have a monitor carry an item.
pub const USE_VERB: &str = "use";

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

/// The section of a vault item, for the section-wide grant.
pub trait ItemSectionLookup: Send + Sync {
    /// `None` if there is no such item (then only a grant on the item's name can allow it).
    fn section_of(
        &self,
        namespace: &str,
        item: &str,
    ) -> impl Future<Output = Result<Option<String>, AuthorizeError>> + Send;
}

/// The spec of a saved monitor, for a `MonitorRun` of it.
pub trait MonitorLookup: Send + Sync {
    /// `None` if there is no such monitor.
    fn monitor_spec(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<MonitorSpec>, AuthorizeError>> + Send;
}

/// Why a Monitor or MonitorRun write was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "monivault's monitor webhook got a {0}; it handles monivault.io Monitors and MonitorRuns only"
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
        (group, kind) => Err(Refusal::WrongKind(format!("{group}/{kind}"))),
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
    I: ItemSectionLookup,
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
    /// The items the new object carries.
    pub items: BTreeSet<String>,
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
    I: ItemSectionLookup,
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
    let denied =
        unauthorized_items(authorizer, sections, &request.user_info, namespace, &items).await?;
    if denied.is_empty() {
        return Ok(Decision::Authorized(Authorized {
            kind,
            namespace: namespace.to_owned(),
            items: new.items,
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
    match kind {
        Kind::Monitor => {
            let spec: MonitorSpec = parse_part(spec).map_err(invalid)?;
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

/// The items of `items` that `user` may not use, sorted. An item is allowed by `use` on
/// `vaultitems/<item>`, or else by `use` on `vaultsections/<its section>`. Items are
/// checked at once, and each section is asked about once however many of the items it
/// holds; the first failed review fails the whole decision.
pub async fn unauthorized_items<A, I>(
    authorizer: &A,
    sections: &I,
    user: &UserInfo,
    namespace: &str,
    items: &BTreeSet<String>,
) -> Result<Vec<String>, AuthorizeError>
where
    A: Authorizer,
    I: ItemSectionLookup,
{
    // By name first; the section of an item not allowed by name.
    let by_name = items.iter().map(|item| async move {
        let check = AccessCheck {
            verb: USE_VERB,
            namespace,
            resource: VaultResource::VaultItems,
            name: item,
        };
        if authorizer.allowed(user, &check).await? {
            return Ok(None);
        }
        let section = sections.section_of(namespace, item).await?;
        Ok::<_, AuthorizeError>(Some((item.clone(), section)))
    });
    let mut pending: Vec<(String, Option<String>)> = Vec::new();
    for outcome in join_all(by_name).await {
        pending.extend(outcome?);
    }

    let wanted: BTreeSet<&str> = pending.iter().filter_map(|(_, s)| s.as_deref()).collect();
    let by_section = wanted.into_iter().map(|section| async move {
        let check = AccessCheck {
            verb: USE_VERB,
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
            allowed_sections.insert(section.to_owned());
        }
    }

    let mut denied: Vec<String> = pending
        .into_iter()
        .filter(|(_, section)| {
            !section
                .as_ref()
                .is_some_and(|s| allowed_sections.contains(s))
        })
        .map(|(item, _)| item)
        .collect();
    denied.sort();
    Ok(denied)
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
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.to_owned()),
                    namespace: Some(check.namespace.to_owned()),
                    resource: Some(check.resource.as_str().to_owned()),
                    name: Some(check.name.to_owned()),
                    verb: Some(check.verb.to_owned()),
                    ..ResourceAttributes::default()
                }),
                non_resource_attributes: None,
            },
            ..SubjectAccessReview::default()
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
        Ok(answer
            .status
            .is_some_and(|s| s.allowed && s.denied != Some(true)))
    }
}

/// [`ItemSectionLookup`] and [`MonitorLookup`] by reading the objects from the API server.
#[derive(Clone)]
pub struct KubeLookup {
    pub(crate) client: Client,
}

impl KubeLookup {
    pub fn new(client: Client) -> Self {
        KubeLookup { client }
    }
}

impl ItemSectionLookup for KubeLookup {
    async fn section_of(
        &self,
        namespace: &str,
        item: &str,
    ) -> Result<Option<String>, AuthorizeError> {
        let api: Api<VaultItem> = Api::namespaced(self.client.clone(), namespace);
        let found = api
            .get_opt(item)
            .await
            .map_err(|source| AuthorizeError::Lookup {
                what: format!("VaultItem {namespace}/{item}"),
                source,
            })?;
        Ok(found.map(|item| item.spec.section))
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
