//! The validating webhook for `VaultItem` writes: who may widen where a secret may go, and
//! who may replace a stored secret (`use`, as for deleting it).
//!
//! `allowedHosts` stops exfiltration even by people who may use an item. So adding a host
//! (on create, or by widening on update) needs a verb of its own, `allowhosts`, on
//! `vaultitems/<item>` or on `vaultsections/<its section>`, which `edit` and `admin` never
//! grant. Narrowing the list needs nothing extra. Validating, not mutating: it judges the
//! object as it will be stored, after every mutating webhook.
//!
//! Creating a `Certificate` item, or changing its PEM, needs the same verb: a monitor may
//! trust it as its CA (`tls.caCertificate`), and whoever picks the trust anchor of a monitor
//! that carries secrets picks who can read them.

use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::admission::{AdmissionResponse, Operation};

use super::authorize::{ALLOW_HOSTS_VERB, Authorizer, USE_VERB, may_on_item};
use super::{Request, parse_part, refuse};
use crate::api::{GROUP, ItemType, VaultItemSpec};

/// The validating webhook's decision for one VaultItem create or update.
pub async fn check_vault_item<A: Authorizer>(
    authorizer: &A,
    request: &Request,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    if request.kind.group != GROUP || request.kind.kind != "VaultItem" {
        return refuse(
            request,
            400,
            "BadRequest",
            &format!(
                "monivault's VaultItem webhook got {}; it handles monivault.io VaultItems only",
                super::foreign_kind(&request.kind.kind)
            ),
        );
    }
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request.sub_resource.is_some()
    {
        return allowed;
    }
    let Some(object) = request.object.as_ref() else {
        return refuse(
            request,
            400,
            "BadRequest",
            "the admission request carries no object",
        );
    };
    let spec = match object.data.get("spec").map(parse_part::<VaultItemSpec>) {
        Some(Ok(spec)) => spec,
        Some(Err(e)) => {
            return refuse(
                request,
                422,
                "Invalid",
                &format!("spec is not a valid VaultItem spec: {e}"),
            );
        }
        None => return refuse(request, 422, "Invalid", "the VaultItem has no spec"),
    };
    let old = request
        .old_object
        .as_ref()
        .and_then(|old| old.data.get("spec"))
        .and_then(|s| parse_part::<VaultItemSpec>(s).ok());
    let namespace = request
        .namespace
        .as_deref()
        .or(object.metadata.namespace.as_deref())
        .unwrap_or_default();
    let name = object
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(request.name.as_str());
    let user = &request.user_info;
    // Replacing a stored secret needs `use`, as deleting it does: otherwise an editor
    // could swap one part (an archive beside its stored password) or probe with it.
    if let Some(old) = &old {
        let replaced: Vec<&str> = spec
            .secret_fields()
            .iter()
            .filter(|field| old.sealed_value(**field) != spec.sealed_value(**field))
            .map(|field| field.as_str())
            .collect();
        if !replaced.is_empty() {
            match may_on_item(authorizer, user, USE_VERB, namespace, name, &spec.section).await {
                Ok(true) => {}
                Ok(false) => {
                    return refuse(
                        request,
                        403,
                        "Forbidden",
                        &format!(
                            "{} may not replace the secret ({}) of VaultItem {namespace}/{name}: that needs verb \"use\" on vaultitems/{name} or on vaultsections/{}",
                            user_label(user),
                            replaced.join(", "),
                            spec.section
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!(uid = %request.uid, error = %e, "secret replacement check failed");
                    return refuse(
                        request,
                        500,
                        "InternalError",
                        &format!("checking who may replace the secret failed: {e}"),
                    );
                }
            }
        }
    }
    let old_hosts = old
        .as_ref()
        .map(|o| o.allowed_hosts.clone())
        .unwrap_or_default();
    let mut added = widened(&old_hosts, &spec.allowed_hosts);
    // A new Certificate item, or a new PEM in one: a trust anchor a monitor may name.
    let pem = |spec: &VaultItemSpec| spec.certificate.as_ref().map(|c| c.pem.clone());
    if spec.item_type == ItemType::Certificate
        && old.as_ref().is_none_or(|old| pem(old) != pem(&spec))
    {
        added.push("a CA certificate (spec.certificate.pem)".to_owned());
    }
    if added.is_empty() {
        return allowed;
    }
    match may_on_item(
        authorizer,
        user,
        ALLOW_HOSTS_VERB,
        namespace,
        name,
        &spec.section,
    )
    .await
    {
        Ok(true) => allowed,
        Ok(false) => refuse(
            request,
            403,
            "Forbidden",
            &format!(
                "{} may not add {} to VaultItem {namespace}/{name}: widening where a secret may be sent (spec.allowedHosts, or the CA a monitor trusts) needs verb \"{ALLOW_HOSTS_VERB}\" on vaultitems/{name} or on vaultsections/{} (ClusterRole monivault-allowhosts); narrowing needs nothing",
                user_label(user),
                added.join(", "),
                spec.section,
            ),
        ),
        Err(e) => {
            tracing::warn!(uid = %request.uid, error = %e, "allowedHosts check failed");
            refuse(
                request,
                500,
                "InternalError",
                &format!("checking who may widen spec.allowedHosts failed: {e}"),
            )
        }
    }
}

fn user_label(user: &UserInfo) -> String {
    match user.username.as_deref() {
        Some(name) if !name.is_empty() => format!("user {name:?}"),
        _ => "the requesting user".to_owned(),
    }
}

/// The entries of `new` that `old` does not already cover, in order. An entry is covered by
/// an equal one, or by a wildcard `*.<domain>` of which it is a subdomain (a host) or a
/// narrower wildcard.
pub fn widened(old: &[String], new: &[String]) -> Vec<String> {
    new.iter()
        .filter(|host| !old.iter().any(|entry| covers(entry, host)))
        .cloned()
        .collect()
}

fn covers(entry: &str, host: &str) -> bool {
    if entry == host {
        return true;
    }
    let Some(domain) = entry.strip_prefix("*.") else {
        return false;
    };
    let name = host.strip_prefix("*.").unwrap_or(host);
    name.len() > domain.len()
        && name.ends_with(domain)
        && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn adding_a_host_is_widening_and_narrowing_is_not() {
        let old = hosts(&["shop.example.com", "*.api.example.com"]);
        assert!(widened(&old, &hosts(&["shop.example.com"])).is_empty());
        assert!(widened(&old, &[]).is_empty());
        assert_eq!(
            widened(&old, &hosts(&["shop.example.com", "evil.example"])),
            ["evil.example"]
        );
        assert_eq!(widened(&[], &hosts(&["a.example"])), ["a.example"]);
    }

    #[test]
    fn a_wildcard_covers_its_subdomains_but_not_its_apex_or_lookalikes() {
        let old = hosts(&["*.example.com"]);
        assert!(widened(&old, &hosts(&["a.example.com", "*.b.example.com"])).is_empty());
        assert_eq!(widened(&old, &hosts(&["example.com"])), ["example.com"]);
        assert_eq!(
            widened(&old, &hosts(&["badexample.com", "*.com"])),
            ["badexample.com", "*.com"]
        );
    }
}
