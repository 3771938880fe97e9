//! The `Monitor` and `MonitorRun` webhooks around the admission stamp ([`crate::stamp`]).
//!
//! - The mutating webhook authorizes the write ([`super::authorize`]) and stamps the
//!   object. Only a mutating webhook can add the stamp, so authorization happens there.
//! - The validating webhook checks that the stamp still matches the final object: another
//!   mutating webhook may have changed the spec after ours.
//! - A metadata-only update keeps the stored stamp: the request may not change or drop it.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, Operation};
use serde_json::{Value, json};

use super::authorize::{
    Authorizer, Decision, ItemLookup, MonitorLookup, Refusal, decide, kind_of, namespace_of,
    own_references,
};
use super::{Request, refuse};
use crate::stamp::{
    NewStamp, STAMP_ANNOTATION, StampError, check_stamp, make_stamp, stamp_of, stamped_name,
};
use crate::store::{Keys, Store, unix_now};

const STAMP_POINTER: &str = "/metadata/annotations/monivault.io~1admission-stamp";

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
    I: ItemLookup,
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
            let stamp = NewStamp {
                kind: authorized.kind,
                namespace: &authorized.namespace,
                name,
                spec_digest: &authorized.spec_digest,
                items: authorized.items,
                user,
                issued_at: unix_now(),
            };
            let text = match make_stamp(keys, stamp).await {
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
                if request.sub_resource.is_none()
                    && stamp_of(&object.metadata) != stamp_of(&old.metadata) =>
            {
                set_annotation(object, stamp_of(&old.metadata))
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
    let kind = match kind_of(request) {
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
        if carried.monitor_ref.is_none() && refs.names() != carried.items {
            return Err(StampError::ItemsDiffer {
                kind: kind.as_str(),
                stamped: refs.names(),
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
        None if stamp_of(&object.metadata).is_some() => {
            Some(json!({"op": "remove", "path": STAMP_POINTER}))
        }
        None => None,
    }
}
