//! The admission stamp (DESIGN.md, Flow 5): the `Monitor` and `MonitorRun` webhooks, and
//! [`verify`] for the runner.
//!
//! - The mutating webhook authorizes the write ([`super::authorize`]) and stamps the
//!   object: an HMAC, under a key derived from the current root key, over the kind,
//!   namespace, name, spec digest, the items the object carries and the authorizing user.
//!   Only a mutating webhook can add it, so authorization happens there.
//! - The validating webhook checks that the stamp still matches the final object: another
//!   mutating webhook may have changed the spec after ours.
//! - The runner puts secrets only into an object whose current spec matches a valid stamp.
//!   A monitor written while the webhook was bypassed, or restored from a backup, has no
//!   valid stamp and carries no secret until someone permitted applies it again.
//!
//! The stamp lives in the annotation [`STAMP_ANNOTATION`], as compact JSON that names the
//! user and items in the clear (both are visible facts, not secrets) and the root key
//! version. Old root key versions stay stored, so a root key rotation keeps stamps valid.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube::core::admission::{AdmissionResponse, Operation};
use kube::core::{DynamicObject, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::authorize::{
    Authorizer, Decision, ItemSectionLookup, Kind, MonitorLookup, Refusal, decide, namespace_of,
    own_references,
};
use super::{Request, refuse};
use crate::api::{Monitor, MonitorRun};
use crate::controller::keys::{KeyError, Keys};
use crate::crypto::{StampClaims, StampedName};
use crate::runner::template::referenced_items;
use crate::store::Store;

/// The annotation that holds the stamp.
pub const STAMP_ANNOTATION: &str = "monivault.io/admission-stamp";
const STAMP_POINTER: &str = "/metadata/annotations/monivault.io~1admission-stamp";
const STAMP_FORMAT: u32 = 1;

/// What a valid stamp authorizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizedRefs {
    /// Who was allowed to have the object carry the items.
    pub user: String,
    /// The items the object may carry. For a `MonitorRun` of a saved monitor, the items
    /// that monitor carried when the run was created.
    pub items: BTreeSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error(
        "the {kind} has no admission stamp: it was written while monivault's webhook was not called (bypassed, or restored from a backup). Someone allowed to use its vault items must apply it again"
    )]
    Missing { kind: &'static str },
    #[error("the {kind}'s admission stamp does not parse: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("the {kind}'s admission stamp is under root key version {version}, which is gone")]
    UnknownKey {
        kind: &'static str,
        version: u32,
        #[source]
        source: KeyError,
    },
    #[error(
        "the {kind}'s admission stamp does not match its namespace, name, spec and user: the spec changed after monivault authorized it, or the stamp was copied or forged"
    )]
    Mismatch { kind: &'static str },
    #[error(
        "the {kind} carries vault items its admission stamp does not cover: stamped {stamped:?}, carried {carried:?}"
    )]
    ItemsDiffer {
        kind: &'static str,
        stamped: BTreeSet<String>,
        carried: BTreeSet<String>,
    },
    #[error("the {kind}'s spec: {reason}")]
    Spec { kind: &'static str, reason: String },
    #[error("admission stamp key: {0}")]
    Keys(#[from] KeyError),
}

/// The stamp as stored in the annotation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StampText {
    v: u32,
    /// The root key version the MAC key is derived from.
    key: u32,
    user: String,
    items: BTreeSet<String>,
    /// Set when the object had only a `generateName` at admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generate_name: Option<String>,
    mac: String,
}

/// SHA-256 of the spec's canonical JSON (object keys sorted at every level), so the digest
/// does not depend on how a client or the API server ordered the fields. Digesting the
/// typed spec, not the raw one, makes the webhook and the runner agree on defaults.
pub fn spec_digest<T: Serialize>(spec: &T) -> Result<[u8; 32], serde_json::Error> {
    let value = serde_json::to_value(spec)?;
    let mut hasher = Sha256::new();
    canonical(&value, &mut hasher)?;
    Ok(hasher.finalize().into())
}

fn canonical(value: &Value, out: &mut Sha256) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.update(b"{");
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                out.update(serde_json::to_string(key)?.as_bytes());
                out.update(b":");
                canonical(&map[key], out)?;
            }
            out.update(b"}");
        }
        Value::Array(values) => {
            out.update(b"[");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                canonical(value, out)?;
            }
            out.update(b"]");
        }
        scalar => out.update(serde_json::to_string(scalar)?.as_bytes()),
    }
    Ok(())
}

/// The mutating webhook for `Monitor` and `MonitorRun`: authorizes the write, then stamps
/// it. A metadata-only update keeps the stored stamp, which the request may not change.
pub async fn stamp_monitor_write<S, A, I, M>(
    keys: &Keys<S>,
    authorizer: &A,
    sections: &I,
    monitors: &M,
    request: &Request,
) -> AdmissionResponse
where
    S: Store,
    A: Authorizer,
    I: ItemSectionLookup,
    M: MonitorLookup,
{
    let decision = match decide(authorizer, sections, monitors, request).await {
        Ok(decision) => decision,
        Err(refusal) => return refusal.into_response(request),
    };
    let op = match decision {
        Decision::Authorized(authorized) => {
            let Some(object) = request.object.as_ref() else {
                return Refusal::NoObject.into_response(request);
            };
            let user = request.user_info.username.clone().unwrap_or_default();
            let name = stamped_name(&object.metadata);
            let text = match make_stamp(
                keys,
                authorized.kind,
                &authorized.namespace,
                name,
                &authorized.spec_digest,
                authorized.items,
                user,
            )
            .await
            {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(uid = %request.uid, error = %e, "stamping a monitor failed");
                    return refuse(request, 500, "InternalError", &e.to_string());
                }
            };
            set_annotation(object, Some(&text))
        }
        Decision::Unchecked => match (&request.operation, &request.object, &request.old_object) {
            // The stamp belongs to the spec the old object was authorized with; a
            // metadata-only write may not change or drop it.
            (Operation::Update, Some(object), Some(old))
                if request.sub_resource.is_none() && stamp_of(object) != stamp_of(old) =>
            {
                set_annotation(object, stamp_of(old))
            }
            _ => None,
        },
    };
    let response = AdmissionResponse::from(request);
    let Some(op) = op else {
        return response;
    };
    let patch = match serde_json::from_value(Value::Array(vec![op])) {
        Ok(patch) => patch,
        Err(e) => return refuse(request, 500, "InternalError", &e.to_string()),
    };
    match response.with_patch(patch) {
        Ok(response) => response,
        Err(e) => refuse(request, 500, "InternalError", &e.to_string()),
    }
}

/// The validating webhook for `Monitor` and `MonitorRun`: the stamp our mutating webhook
/// made still matches the object as it will be stored, for this request's user.
pub async fn check_monitor_write<S: Store>(keys: &Keys<S>, request: &Request) -> AdmissionResponse {
    let kind = match Kind::of(request) {
        Ok(kind) => kind,
        Err(refusal) => return refusal.into_response(request),
    };
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request.sub_resource.is_some()
    {
        return AdmissionResponse::from(request);
    }
    let Some(object) = request.object.as_ref() else {
        return Refusal::NoObject.into_response(request);
    };
    if let Some(old) = request.old_object.as_ref()
        && old.data.get("spec") == object.data.get("spec")
    {
        return AdmissionResponse::from(request);
    }
    let namespace = match namespace_of(request, kind) {
        Ok(namespace) => namespace,
        Err(refusal) => return refusal.into_response(request),
    };
    // The stamp already covers a run's saved monitor: no need to look it up again.
    let carried = match own_references(kind, object, "") {
        Ok(carried) => carried,
        Err(refusal) => return refusal.into_response(request),
    };
    let user = request.user_info.username.as_deref().unwrap_or_default();
    let checked = check_stamp(
        keys,
        kind,
        namespace,
        &object.metadata,
        &carried.spec_digest,
        Some(user),
    )
    .await
    .and_then(|refs| {
        // A run of a saved monitor was stamped with that monitor's items then; compare
        // only what the object itself determines.
        if carried.monitor_ref.is_none() && refs.items != carried.items {
            return Err(StampError::ItemsDiffer {
                kind: kind.as_str(),
                stamped: refs.items,
                carried: carried.items,
            });
        }
        Ok(refs)
    });
    match checked {
        Ok(_) => AdmissionResponse::from(request),
        Err(StampError::Keys(e)) => {
            tracing::warn!(uid = %request.uid, error = %e, "checking a monitor stamp failed");
            refuse(
                request,
                500,
                "InternalError",
                &format!("admission stamp key: {e}"),
            )
        }
        Err(e) => refuse(
            request,
            403,
            "Forbidden",
            &format!(
                "{e}. If another mutating webhook changed the {} after monivault's, let it run first or exclude monivault.io resources from it",
                kind.as_str()
            ),
        ),
    }
}

/// Checks a saved monitor's stamp against its current spec: the items it may carry, and
/// who allowed it. The runner calls this before it resolves any secret.
pub async fn verify<S: Store>(
    keys: &Keys<S>,
    monitor: &Monitor,
) -> Result<AuthorizedRefs, StampError> {
    let kind = Kind::Monitor;
    let spec_error = |reason: String| StampError::Spec {
        kind: kind.as_str(),
        reason,
    };
    let digest = spec_digest(&monitor.spec).map_err(|e| spec_error(e.to_string()))?;
    let carried = referenced_items(&monitor.spec).map_err(|e| spec_error(e.to_string()))?;
    let namespace = monitor.metadata.namespace.as_deref().unwrap_or_default();
    let refs = check_stamp(keys, kind, namespace, &monitor.metadata, &digest, None).await?;
    if refs.items != carried {
        return Err(StampError::ItemsDiffer {
            kind: kind.as_str(),
            stamped: refs.items,
            carried,
        });
    }
    Ok(refs)
}

/// Checks a `MonitorRun`'s stamp against its spec. For a run of a saved monitor, the items
/// returned are those that monitor carried when the run was admitted: the runner must run
/// it only if the monitor's own stamp verifies and carries no item outside them.
pub async fn verify_run<S: Store>(
    keys: &Keys<S>,
    run: &MonitorRun,
) -> Result<AuthorizedRefs, StampError> {
    let kind = Kind::MonitorRun;
    let spec_error = |reason: String| StampError::Spec {
        kind: kind.as_str(),
        reason,
    };
    let digest = spec_digest(&run.spec).map_err(|e| spec_error(e.to_string()))?;
    let namespace = run.metadata.namespace.as_deref().unwrap_or_default();
    let refs = check_stamp(keys, kind, namespace, &run.metadata, &digest, None).await?;
    if let Some(inline) = &run.spec.monitor {
        let carried = referenced_items(inline).map_err(|e| spec_error(e.to_string()))?;
        if !carried.is_subset(&refs.items) {
            return Err(StampError::ItemsDiffer {
                kind: kind.as_str(),
                stamped: refs.items,
                carried,
            });
        }
    }
    Ok(refs)
}

async fn make_stamp<S: Store>(
    keys: &Keys<S>,
    kind: Kind,
    namespace: &str,
    name: StampedName<'_>,
    spec_digest: &[u8; 32],
    items: BTreeSet<String>,
    user: String,
) -> Result<String, StampError> {
    let root = keys.current_root().await?;
    let claims = StampClaims {
        kind: kind.as_str(),
        namespace,
        name,
        spec_digest,
        items: &items,
        user: &user,
    };
    let mac = URL_SAFE_NO_PAD.encode(claims.sign(&root));
    let text = StampText {
        v: STAMP_FORMAT,
        key: root.version(),
        user,
        items,
        generate_name: match name {
            StampedName::GenerateName(prefix) => Some(prefix.to_owned()),
            StampedName::Name(_) => None,
        },
        mac,
    };
    serde_json::to_string(&text).map_err(|e| StampError::Malformed {
        kind: kind.as_str(),
        reason: e.to_string(),
    })
}

/// Reads and checks the stamp on `meta` for an object of `kind` whose spec digest is
/// `digest`. `user`, when given, must be the stamp's user (the validating webhook passes
/// the requester, so a stamp made for someone else's request does not pass).
async fn check_stamp<S: Store>(
    keys: &Keys<S>,
    kind: Kind,
    namespace: &str,
    meta: &ObjectMeta,
    digest: &[u8; 32],
    user: Option<&str>,
) -> Result<AuthorizedRefs, StampError> {
    let kind_name = kind.as_str();
    let malformed = |reason: &str| StampError::Malformed {
        kind: kind_name,
        reason: reason.to_owned(),
    };
    let text = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(STAMP_ANNOTATION))
        .ok_or(StampError::Missing { kind: kind_name })?;
    let stamp: StampText = serde_json::from_str(text)
        .map_err(|_| malformed("expected the JSON that monivault writes"))?;
    if stamp.v != STAMP_FORMAT {
        return Err(malformed("unknown stamp format"));
    }
    let mac = URL_SAFE_NO_PAD
        .decode(&stamp.mac)
        .map_err(|_| malformed("the mac is not base64url"))?;
    let name = meta.name.as_deref().unwrap_or_default();
    let stamped_name = match &stamp.generate_name {
        Some(prefix) if name.starts_with(prefix.as_str()) => StampedName::GenerateName(prefix),
        Some(_) => return Err(StampError::Mismatch { kind: kind_name }),
        None => StampedName::Name(name),
    };
    if user.is_some_and(|user| user != stamp.user) {
        return Err(StampError::Mismatch { kind: kind_name });
    }
    let root = keys
        .root_key(stamp.key)
        .await
        .map_err(|source| StampError::UnknownKey {
            kind: kind_name,
            version: stamp.key,
            source,
        })?;
    let claims = StampClaims {
        kind: kind_name,
        namespace,
        name: stamped_name,
        spec_digest: digest,
        items: &stamp.items,
        user: &stamp.user,
    };
    if !claims.verify(&root, &mac) {
        return Err(StampError::Mismatch { kind: kind_name });
    }
    Ok(AuthorizedRefs {
        user: stamp.user,
        items: stamp.items,
    })
}

/// The name to bind: the object's, or its `generateName` while the API server has yet to
/// pick one (it names objects after mutating admission).
fn stamped_name(meta: &ObjectMeta) -> StampedName<'_> {
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => StampedName::Name(name),
        _ => StampedName::GenerateName(meta.generate_name.as_deref().unwrap_or_default()),
    }
}

fn stamp_of(object: &DynamicObject) -> Option<&str> {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STAMP_ANNOTATION))
        .map(String::as_str)
}

/// The JSONPatch operation that makes the stamp annotation `value` (or removes it).
fn set_annotation(object: &DynamicObject, value: Option<&str>) -> Option<Value> {
    let has_annotations = object.metadata.annotations.is_some();
    match value {
        Some(text) if has_annotations => {
            Some(json!({"op": "add", "path": STAMP_POINTER, "value": text}))
        }
        Some(text) => Some(json!({
            "op": "add",
            "path": "/metadata/annotations",
            "value": {STAMP_ANNOTATION: text},
        })),
        None if stamp_of(object).is_some() => Some(json!({"op": "remove", "path": STAMP_POINTER})),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_ignores_key_order_but_not_values() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "é"}], "a": null}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a": null, "b": [1, {"x": "é", "y": 2}]}"#).unwrap();
        let c: Value =
            serde_json::from_str(r#"{"a": null, "b": [{"x": "é", "y": 2}, 1]}"#).unwrap();
        assert_eq!(spec_digest(&a).unwrap(), spec_digest(&b).unwrap());
        assert_ne!(spec_digest(&a).unwrap(), spec_digest(&c).unwrap());
    }
}
