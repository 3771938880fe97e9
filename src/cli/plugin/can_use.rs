//! `kubectl monivault can-use ITEM`: may this user have a monitor carry the item, and
//! through which grant?
//!
//! It asks what the webhook asks, in the webhook's order: verb `use` on
//! `vaultitems/<item>`, else on `vaultsections/<the item's section>`, through the
//! webhook's own [`Authorizer`] and [`ItemLookup`] and the same resource attributes.
//! - With `--as`: the webhook's [`SubjectAccessReviewAuthorizer`], the review it sends, for
//!   that user and groups. Asking about someone else needs `create` on
//!   `subjectaccessreviews`, as the webhook's own service account has.
//! - Without: a SelfSubjectAccessReview with the same attributes. Any authenticated user
//!   may create one (no extra RBAC), and the API server fills in the caller's identity
//!   itself (name, uid, groups and extra, as it authenticated them), which is exactly the
//!   `userInfo` the webhook would see. A SubjectAccessReview built from a
//!   SelfSubjectReview would need that cluster-wide `create` right too.

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use monivault::webhook::authorize::{
    AccessCheck, AuthorizeError, Authorizer, ItemLookup, KubeLookup, SubjectAccessReviewAuthorizer,
    USE_VERB, VaultResource, review_allows,
};
use serde::Serialize;

use super::output::{self, Format};
use super::{KubeArgs, PluginError, api_code, exit};

/// The group every authenticated user is in: the API server adds it to an impersonated
/// user as to a real one, so a question about `--as USER` includes it too.
const AUTHENTICATED: &str = "system:authenticated";

#[derive(clap::Args, Debug, Clone)]
pub struct CanUseArgs {
    /// The VaultItem's name.
    pub item: String,
    /// The item's namespace (default: the context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Ask about this user instead of yourself (needs create on subjectaccessreviews).
    #[arg(long = "as", value_name = "USER")]
    pub as_user: Option<String>,
    /// A group of the --as user (repeat). system:authenticated is added, as for a real user.
    #[arg(long = "as-group", value_name = "GROUP", requires = "as_user")]
    pub as_groups: Vec<String>,
    /// The --as user's uid, if your authorizers look at it.
    #[arg(long = "as-uid", value_name = "UID", requires = "as_user")]
    pub as_uid: Option<String>,
    /// Print the answer as json or yaml instead of a table.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// What allowed the use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// `vaultitems` or `vaultsections`.
    pub resource: &'static str,
    pub name: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.resource, self.name)
    }
}

/// The answer, as `-o json|yaml` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanUseAnswer {
    pub namespace: String,
    pub item: String,
    pub section: String,
    /// The user asked about; absent for yourself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub allowed: bool,
    /// The grant that allows it: the item's, else its section's. Absent when not allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through: Option<Grant>,
}

impl CanUseAnswer {
    pub fn table(&self) -> String {
        output::table(
            &["namespace", "item", "section", "user", "use", "through"],
            &[vec![
                self.namespace.clone(),
                self.item.clone(),
                self.section.clone(),
                self.user.clone().unwrap_or_else(|| "(you)".to_owned()),
                if self.allowed { "yes" } else { "no" }.to_owned(),
                self.through
                    .as_ref()
                    .map(Grant::to_string)
                    .unwrap_or_default(),
            ]],
        )
    }

    /// What to do about a "no", for people (stderr).
    pub fn hint(&self) -> Option<String> {
        (!self.allowed).then(|| {
            format!(
                "{} may not use {}/{}: grant verb \"use\" on vaultitems/{} or vaultsections/{} (see docs/rbac.md)",
                self.user
                    .as_deref()
                    .map_or_else(|| "you".to_owned(), |u| format!("{u:?}")),
                self.namespace,
                self.item,
                self.item,
                self.section
            )
        })
    }
}

/// The grant through which `user` may use `item` of `section`, asked in the webhook's
/// order (the item, then its section); `None` if neither allows it.
pub async fn grant_for<A: Authorizer>(
    authorizer: &A,
    user: &UserInfo,
    namespace: &str,
    item: &str,
    section: &str,
) -> Result<Option<Grant>, AuthorizeError> {
    for (resource, name) in [
        (VaultResource::VaultItems, item),
        (VaultResource::VaultSections, section),
    ] {
        let check = AccessCheck {
            verb: USE_VERB,
            namespace,
            resource,
            name,
        };
        if authorizer.allowed(user, &check).await? {
            return Ok(Some(Grant {
                resource: resource.as_str(),
                name: name.to_owned(),
            }));
        }
    }
    Ok(None)
}

/// [`Authorizer`] for the caller: a SelfSubjectAccessReview of the webhook's resource
/// attributes. The `user` it is given is ignored: the API server knows who calls.
pub struct SelfAuthorizer {
    client: Client,
}

impl Authorizer for SelfAuthorizer {
    async fn allowed(
        &self,
        _user: &UserInfo,
        check: &AccessCheck<'_>,
    ) -> Result<bool, AuthorizeError> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(SubjectAccessReviewAuthorizer::resource_attributes(
                    check,
                )),
                non_resource_attributes: None,
            },
            ..SelfSubjectAccessReview::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthorizeError::Review {
                resource: check.resource,
                name: check.name.to_owned(),
                source,
            })?;
        Ok(review_allows(answer.status.as_ref()))
    }
}

/// The identity `--as`, `--as-group` and `--as-uid` describe.
pub fn user_info(args: &CanUseArgs) -> Option<UserInfo> {
    let user = args.as_user.clone()?;
    let mut groups = args.as_groups.clone();
    if user != "system:anonymous" && !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.to_owned());
    }
    Some(UserInfo {
        username: Some(user),
        uid: args.as_uid.clone(),
        groups: Some(groups),
        extra: None,
    })
}

/// Answers the question; exit code [`exit::YES`] or [`exit::NO`].
pub async fn run(args: CanUseArgs) -> Result<u8, PluginError> {
    let connection = args.kube.connect().await?;
    let namespace = connection.namespace(args.namespace.as_deref());
    let client = connection.client;
    let facts = KubeLookup::new(client.clone())
        .item(&namespace, &args.item)
        .await
        .map_err(|e| authorize_error(e, &args, "read VaultItems"))?
        .ok_or_else(|| PluginError::ItemNotFound {
            namespace: namespace.clone(),
            item: args.item.clone(),
        })?;
    let user = user_info(&args);
    let grant = match &user {
        Some(user) => {
            grant_for(
                &SubjectAccessReviewAuthorizer::new(client),
                user,
                &namespace,
                &args.item,
                &facts.section,
            )
            .await
        }
        None => {
            grant_for(
                &SelfAuthorizer { client },
                &UserInfo::default(),
                &namespace,
                &args.item,
                &facts.section,
            )
            .await
        }
    }
    .map_err(|e| authorize_error(e, &args, "ask the API server's authorizers"))?;
    let answer = CanUseAnswer {
        namespace,
        item: args.item.clone(),
        section: facts.section,
        user: user.as_ref().and_then(|u| u.username.clone()),
        groups: user.and_then(|u| u.groups).unwrap_or_default(),
        allowed: grant.is_some(),
        through: grant,
    };
    output::print(&output::render(args.output, &answer, || answer.table())?)?;
    if let Some(hint) = answer.hint() {
        eprintln!("{hint}");
    }
    Ok(if answer.allowed { exit::YES } else { exit::NO })
}

/// A failed lookup or review, with what to do about a 403.
fn authorize_error(error: AuthorizeError, args: &CanUseArgs, what: &str) -> PluginError {
    let (source, action) = match error {
        AuthorizeError::Review { source, .. } => (source, "create subjectaccessreviews"),
        AuthorizeError::Lookup { source, .. } => (source, "get vaultitems"),
        AuthorizeError::Other(message) => {
            return PluginError::Forbidden {
                action: what.to_owned(),
                message,
                hint: "try again".to_owned(),
            };
        }
    };
    if api_code(&source) == Some(403) {
        let hint = if action == "create subjectaccessreviews" && args.as_user.is_some() {
            "asking about another user (--as) needs create on subjectaccessreviews.authorization.k8s.io; leave out --as to ask about yourself"
        } else {
            "ask for get on vaultitems in this namespace (the monivault-view ClusterRole has it)"
        };
        return PluginError::Forbidden {
            action: action.to_owned(),
            message: super::api_message(&source)
                .unwrap_or("forbidden")
                .to_owned(),
            hint: hint.to_owned(),
        };
    }
    PluginError::Api {
        what: what.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use super::*;

    /// Grants by `resource/name`, and remembers every question.
    struct Grants {
        allowed: BTreeSet<String>,
        asked: Mutex<Vec<String>>,
    }

    impl Grants {
        fn new(allowed: &[&str]) -> Self {
            Grants {
                allowed: allowed.iter().map(|s| s.to_string()).collect(),
                asked: Mutex::new(Vec::new()),
            }
        }
    }

    impl Authorizer for Grants {
        async fn allowed(
            &self,
            _user: &UserInfo,
            check: &AccessCheck<'_>,
        ) -> Result<bool, AuthorizeError> {
            assert_eq!(check.verb, "use");
            assert_eq!(check.namespace, "shop");
            let key = format!("{}/{}", check.resource, check.name);
            self.asked.lock().expect("lock").push(key.clone());
            Ok(self.allowed.contains(&key))
        }
    }

    async fn ask(allowed: &[&str]) -> (Option<Grant>, Vec<String>) {
        let grants = Grants::new(allowed);
        let grant = grant_for(&grants, &UserInfo::default(), "shop", "login", "checkout")
            .await
            .expect("answer");
        (grant, grants.asked.into_inner().expect("lock"))
    }

    #[tokio::test]
    async fn the_item_is_asked_first_then_its_section_as_the_webhook_does() {
        let (grant, asked) = ask(&["vaultitems/login", "vaultsections/checkout"]).await;
        assert_eq!(grant.expect("allowed").to_string(), "vaultitems/login");
        assert_eq!(asked, ["vaultitems/login"]);

        let (grant, asked) = ask(&["vaultsections/checkout"]).await;
        assert_eq!(
            grant.expect("allowed").to_string(),
            "vaultsections/checkout"
        );
        assert_eq!(asked, ["vaultitems/login", "vaultsections/checkout"]);

        let (grant, _) = ask(&["vaultitems/other", "vaultsections/other"]).await;
        assert_eq!(grant, None);
    }

    fn args(extra: &[&str]) -> CanUseArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: CanUseArgs,
        }
        let mut all = vec!["can-use", "login"];
        all.extend_from_slice(extra);
        Wrap::try_parse_from(all).expect("parses").args
    }

    #[test]
    fn as_user_gets_system_authenticated_like_an_impersonated_user() {
        assert_eq!(user_info(&args(&[])), None, "without --as: yourself");
        let user = user_info(&args(&["--as", "alice", "--as-group", "dev"])).expect("user");
        assert_eq!(user.username.as_deref(), Some("alice"));
        assert_eq!(
            user.groups.as_deref(),
            Some(&["dev".to_owned(), AUTHENTICATED.to_owned()][..])
        );
        let anonymous = user_info(&args(&["--as", "system:anonymous"])).expect("user");
        assert_eq!(anonymous.groups.as_deref(), Some(&[][..]));
    }

    #[test]
    fn the_answer_prints_as_a_table_and_says_what_to_grant() {
        let mut answer = CanUseAnswer {
            namespace: "shop".into(),
            item: "login".into(),
            section: "checkout".into(),
            user: Some("alice".into()),
            groups: vec![AUTHENTICATED.into()],
            allowed: true,
            through: Some(Grant {
                resource: "vaultsections",
                name: "checkout".into(),
            }),
        };
        let table = answer.table();
        assert!(table.starts_with("NAMESPACE   ITEM    SECTION    USER    USE   THROUGH\n"));
        assert!(
            table.contains("alice   yes   vaultsections/checkout"),
            "{table}"
        );
        assert_eq!(answer.hint(), None);
        let json: serde_json::Value = serde_json::to_value(&answer).expect("json");
        assert_eq!(json["through"]["resource"], "vaultsections");
        assert_eq!(json["allowed"], true);

        answer.allowed = false;
        answer.through = None;
        answer.user = None;
        assert!(answer.table().contains("(you)   no    <none>"));
        let hint = answer.hint().expect("a hint");
        assert!(
            hint.contains("vaultitems/login or vaultsections/checkout"),
            "{hint}"
        );
        let json: serde_json::Value = serde_json::to_value(&answer).expect("json");
        assert!(json.get("through").is_none() && json.get("user").is_none());
    }
}
