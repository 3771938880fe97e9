//! The mutating webhook for `VaultItem` (create and update): plaintext in, sealed out.
//!
//! For every write-only field that holds a plaintext it seals the value to the
//! environment's current sealing key, bound to namespace, item name and field, puts it in
//! `spec.sealed.<field>` and leaves `*****` in the field. It does the same to the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, where a client-side
//! `kubectl apply` keeps a copy of everything it sent.
//!
//! A sealed value written by hand (GitOps) is opened once to check it belongs to this
//! namespace, item and field under a key the environment still has; the plaintext is
//! dropped at once. An item that carries only sealed values gets no patch at all, so a
//! GitOps tool sees exactly what it applied.
//!
//! Its one side effect: creating the environment's keys when the first item arrives before
//! any VaultSection, never on a dry run.

use kube::core::admission::{AdmissionResponse, Operation};
use serde_json::{Map, Value, json};

use super::{Request, dotted, parse_part, redact_parse_error, refuse};
use crate::api::{GROUP, ItemType, SECRET_MASK, SecretField, VERSION, VaultItemSpec};
use crate::crypto::{CryptoError, Keyring, RootKey, SealBinding, seal};
use crate::store::Store;
use crate::store::{KeyError, Keys};

/// The annotation a client-side `kubectl apply` writes with the whole applied object.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// [`LAST_APPLIED`] as a JSON-pointer segment (`/` escaped as `~1`).
const LAST_APPLIED_POINTER: &str =
    "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration";

/// Why a VaultItem write was refused. No variant holds a plaintext: they name fields.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("monivault's VaultItem webhook got a {0}; it handles monivault.io VaultItems only")]
    WrongKind(String),
    #[error("the admission request carries no object")]
    NoObject,
    #[error("the VaultItem has no namespace")]
    NoNamespace,
    #[error(
        "the VaultItem needs metadata.name: sealed values are bound to the item's name, so generateName cannot be used"
    )]
    NoName,
    #[error("spec is not a valid VaultItem spec: {0}")]
    InvalidSpec(String),
    #[error("{path} is set, but a {item_type} item has no such field: remove it")]
    FieldOfOtherType { path: String, item_type: ItemType },
    #[error("{path} is empty: write the value, or leave the field out to keep the stored one")]
    EmptyPlaintext { path: String },
    #[error("{path} is too long: at most {limit} bytes")]
    PlaintextTooLong { path: String, limit: usize },
    #[error(
        "spec.sealed.{field} does not open for namespace {namespace:?}, item {item:?}, field {field:?}: {reason}. Seal it for this item: monivault seal -n {namespace} --item {item} --field {field}"
    )]
    SealedRefused {
        field: SecretField,
        namespace: String,
        item: String,
        #[source]
        reason: CryptoError,
    },
    #[error(
        "environment keys of namespace {namespace:?} do not exist yet; retry without --dry-run or create a VaultSection first"
    )]
    DryRunWithoutKeys { namespace: String },
    #[error("the keyring is unavailable: {0}")]
    Keys(#[from] KeyError),
    #[error("the sealing key of namespace {namespace:?} is unusable: {source}")]
    SealingKey {
        namespace: String,
        #[source]
        source: CryptoError,
    },
    #[error("sealing spec.sealed.{field} failed: {source}")]
    Seal {
        field: SecretField,
        #[source]
        source: CryptoError,
    },
    #[error("cannot encode the patch: {0}")]
    Patch(String),
}

impl SealError {
    /// HTTP status code and Kubernetes reason of the refusal.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            SealError::WrongKind(_)
            | SealError::NoObject
            | SealError::NoNamespace
            | SealError::DryRunWithoutKeys { .. } => (400, "BadRequest"),
            SealError::NoName
            | SealError::InvalidSpec(_)
            | SealError::FieldOfOtherType { .. }
            | SealError::EmptyPlaintext { .. }
            | SealError::PlaintextTooLong { .. }
            | SealError::SealedRefused { .. } => (422, "Invalid"),
            SealError::Keys(_)
            | SealError::SealingKey { .. }
            | SealError::Seal { .. }
            | SealError::Patch(_) => (500, "InternalError"),
        }
    }
}

/// The mutating webhook's decision for one VaultItem request: allowed with a JSONPatch
/// (plaintext sealed and masked), allowed unchanged (nothing to seal), or refused with a
/// message naming the field and the reason.
pub async fn seal_vault_item<S: Store>(keys: &Keys<S>, request: &Request) -> AdmissionResponse {
    match admit(keys, request).await {
        Ok(response) => response,
        Err(error) => {
            let (code, reason) = error.status();
            if code >= 500 {
                tracing::warn!(uid = %request.uid, error = %error, "VaultItem admission failed");
            }
            refuse(request, code, reason, &error.to_string())
        }
    }
}

async fn admit<S: Store>(
    keys: &Keys<S>,
    request: &Request,
) -> Result<AdmissionResponse, SealError> {
    if request.kind.group != GROUP || request.kind.kind != "VaultItem" {
        return Err(SealError::WrongKind(format!(
            "{}/{}",
            request.kind.group, request.kind.kind
        )));
    }
    let mut response = AdmissionResponse::from(request);
    // Deletes carry nothing to seal; a status write cannot change the spec.
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request.sub_resource.is_some()
    {
        return Ok(response);
    }
    let object = request.object.as_ref().ok_or(SealError::NoObject)?;
    let namespace = non_empty(request.namespace.as_deref())
        .or(non_empty(object.metadata.namespace.as_deref()))
        .ok_or(SealError::NoNamespace)?;
    let name = non_empty(object.metadata.name.as_deref())
        .or(non_empty(Some(request.name.as_str())))
        .ok_or(SealError::NoName)?;
    let raw_spec = object.data.get("spec").unwrap_or(&Value::Null);
    let mut spec: VaultItemSpec = parse_part(raw_spec).map_err(SealError::InvalidSpec)?;

    // A plaintext in another type's field would be neither sealed nor masked here; the
    // CEL rules would refuse it too, but only after it has passed through the webhook.
    for field in SecretField::ALL {
        if field.item_type() != spec.item_type
            && spec.write_only(field).is_some_and(|v| v != SECRET_MASK)
        {
            return Err(SealError::FieldOfOtherType {
                path: dotted(field.spec_pointer()),
                item_type: spec.item_type,
            });
        }
    }
    let plaintext_fields = spec.plaintext_fields();
    for &field in &plaintext_fields {
        let length = spec.write_only(field).map_or(0, str::len);
        let path = dotted(field.spec_pointer());
        if length == 0 {
            return Err(SealError::EmptyPlaintext { path });
        }
        if length > field.max_plaintext_len() {
            return Err(SealError::PlaintextTooLong {
                path,
                limit: field.max_plaintext_len(),
            });
        }
    }

    // Sealed values written by hand. One left as it was is not checked again: it was
    // admitted before, and re-checking would lock an item out of every update once its
    // sealing key passes retention.
    let old_spec: Option<VaultItemSpec> = request
        .old_object
        .as_ref()
        .and_then(|old| old.data.get("spec"))
        .and_then(|s| parse_part(s).ok());
    let to_verify: Vec<(SecretField, String)> = spec
        .secret_fields()
        .iter()
        .copied()
        .filter(|field| !plaintext_fields.contains(field))
        .filter_map(|field| Some((field, spec.sealed_value(field)?.to_owned())))
        .filter(|(field, sealed)| {
            old_spec.as_ref().and_then(|old| old.sealed_value(*field)) != Some(sealed.as_str())
        })
        .collect();
    let mut keyring = None;
    if !to_verify.is_empty() {
        let ring = keys.keyring_for(namespace).await?;
        let root = keys.root_for(&ring).await?;
        for (field, sealed) in &to_verify {
            let binding = SealBinding {
                namespace,
                item: name,
                field: field.as_str(),
            };
            // Only whether it opens matters: the plaintext is dropped (and wiped) here.
            if let Err(reason) = ring.open_sealed(&root, &binding, sealed) {
                return Err(SealError::SealedRefused {
                    field: *field,
                    namespace: namespace.to_owned(),
                    item: name.to_owned(),
                    reason,
                });
            }
        }
        keyring = Some(ring);
    }

    let mut ops: Vec<Value> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    if !plaintext_fields.is_empty() {
        let ring = if request.dry_run {
            // A dry run writes nothing, so it can seal only if the keys already exist.
            let ring = match keyring {
                Some(ring) => ring,
                None => keys.keyring_for(namespace).await?,
            };
            if !ring.environments.contains_key(namespace) {
                return Err(SealError::DryRunWithoutKeys {
                    namespace: namespace.to_owned(),
                });
            }
            ring
        } else {
            keys.ensure_environment(namespace).await?
        };
        let root = keys.root_for(&ring).await?;
        let public_key = ring
            .sealing_public_key(&root, namespace)
            .map_err(|source| SealError::SealingKey {
                namespace: namespace.to_owned(),
                source,
            })?;
        for &field in &plaintext_fields {
            let Some(plaintext) = spec.take_plaintext(field) else {
                continue;
            };
            let binding = SealBinding {
                namespace,
                item: name,
                field: field.as_str(),
            };
            // The same plaintext applied again (a repeated `kubectl apply`) keeps the sealed
            // value already stored: sealing is randomized, and a fresh one would change the
            // object and make the controller ingest it again for nothing.
            let kept = old_spec
                .as_ref()
                .and_then(|old| old.sealed_value(field))
                .filter(|old| opens_to(&ring, &root, &binding, old, plaintext.as_bytes()));
            let sealed = match kept {
                Some(old) => old.to_owned(),
                None => seal(&public_key, &binding, plaintext.as_bytes())
                    .map_err(|source| SealError::Seal { field, source })?,
            };
            spec.set_sealed(field, sealed);
            ops.push(json!({"op": "replace", "path": field.spec_pointer(), "value": SECRET_MASK}));
        }
        if raw_spec.get("sealed").is_some_and(Value::is_object) {
            for &field in &plaintext_fields {
                if let Some(sealed) = spec.sealed_value(field) {
                    ops.push(json!({"op": "add", "path": field.sealed_pointer(), "value": sealed}));
                }
            }
        } else {
            // `add` of a member needs its parent: create `spec.sealed` whole.
            ops.push(json!({"op": "add", "path": "/spec/sealed", "value": spec.sealed}));
        }
    }

    let last_applied = object
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(LAST_APPLIED));
    if let Some(text) = last_applied {
        let rewritten = match mask_last_applied(text, &spec) {
            LastApplied::Unchanged => None,
            LastApplied::Masked(text) => Some(text),
            LastApplied::Replaced => {
                warnings.push(format!(
                    "the {LAST_APPLIED} annotation could not be read as a VaultItem, so it may hold a plaintext: monivault replaced it with the sealed object"
                ));
                Some(replacement_last_applied(&spec, namespace, name))
            }
        };
        if let Some(text) = rewritten {
            ops.push(json!({"op": "replace", "path": LAST_APPLIED_POINTER, "value": text}));
        }
    }

    if spec.allowed_hosts.is_empty() {
        warnings.push(format!(
            "VaultItem {namespace}/{name} has no allowedHosts: no monitor may send it anywhere until you list the hosts it may go to"
        ));
    }
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    if ops.is_empty() {
        return Ok(response);
    }
    tracing::info!(
        namespace,
        name,
        dry_run = request.dry_run,
        sealed = ?plaintext_fields.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        "sealed VaultItem fields"
    );
    // kube takes a `json_patch::Patch`; we build it from JSON so that json-patch need not
    // be a direct dependency (the type is inferred from `with_patch`).
    let patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| SealError::Patch(redact_parse_error(&e)))?;
    response
        .with_patch(patch)
        .map_err(|e| SealError::Patch(e.to_string()))
}

/// Whether `sealed` opens, for `binding`, to exactly `plaintext`. Compared in constant
/// time; the opened value is wiped on drop.
fn opens_to(
    ring: &Keyring,
    root: &RootKey,
    binding: &SealBinding<'_>,
    sealed: &str,
    plaintext: &[u8],
) -> bool {
    ring.open_sealed(root, binding, sealed).is_ok_and(|opened| {
        let opened = opened.expose();
        opened.len() == plaintext.len()
            && opened
                .iter()
                .zip(plaintext)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    })
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.is_empty())
}

/// What became of the last-applied annotation.
#[derive(Debug, PartialEq, Eq)]
enum LastApplied {
    /// No plaintext in it: left exactly as it was.
    Unchanged,
    /// Every write-only value masked and its sealed value set: the new text.
    Masked(String),
    /// Not readable as a VaultItem, so it may hide a plaintext where we cannot find it:
    /// it must be replaced as a whole.
    Replaced,
}

/// Masks the write-only values in a last-applied annotation. Any value other than the
/// mask becomes `*****`, and `spec.sealed.<field>` becomes what the object itself now
/// holds, so the annotation mirrors the object and kubectl's next three-way diff behaves.
fn mask_last_applied(text: &str, spec: &VaultItemSpec) -> LastApplied {
    let Ok(mut doc) = serde_json::from_str::<Value>(text) else {
        return LastApplied::Replaced;
    };
    if !doc.is_object() {
        return LastApplied::Replaced;
    }
    let mut changed = false;
    for field in SecretField::ALL {
        let (Ok(current), Ok(_)) = (
            lookup(&doc, field.spec_pointer()),
            lookup(&doc, field.sealed_pointer()),
        ) else {
            return LastApplied::Replaced;
        };
        match current {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s == SECRET_MASK => continue,
            Some(_) => {}
        }
        set(&mut doc, field.spec_pointer(), json!(SECRET_MASK));
        match spec.sealed_value(field) {
            Some(sealed) => set(&mut doc, field.sealed_pointer(), json!(sealed)),
            None => remove(&mut doc, field.sealed_pointer()),
        }
        changed = true;
    }
    if !changed {
        return LastApplied::Unchanged;
    }
    // kubectl ends the annotation with a newline; keep its form.
    let newline = if text.ends_with('\n') { "\n" } else { "" };
    LastApplied::Masked(format!("{doc}{newline}"))
}

/// What stands in for an unreadable last-applied annotation: the object as admitted, only
/// masks and sealed values in it. Better than removing the annotation, which would leave
/// kubectl's next apply without a base to diff against.
fn replacement_last_applied(spec: &VaultItemSpec, namespace: &str, name: &str) -> String {
    let doc = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "VaultItem",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    format!("{doc}\n")
}

/// Marks a document whose shape hides where a write-only value would be.
struct Unreadable;

/// The value at `pointer`: `Ok(None)` if absent (or under a null); `Err` if something on
/// the way is neither an object nor null.
fn lookup<'a>(doc: &'a Value, pointer: &str) -> Result<Option<&'a Value>, Unreadable> {
    let mut node = doc;
    for segment in pointer.trim_start_matches('/').split('/') {
        node = match node {
            Value::Object(map) => match map.get(segment) {
                Some(next) => next,
                None => return Ok(None),
            },
            Value::Null => return Ok(None),
            _ => return Err(Unreadable),
        };
    }
    Ok(Some(node))
}

/// Sets the value at `pointer`, creating objects on the way (checked by [`lookup`] first).
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let segments: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut node = doc;
    for segment in parents {
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else {
            return;
        };
        node = map
            .entry(*segment)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if node.is_null() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(map) = node {
        map.insert((*last).to_owned(), value);
    }
}

fn remove(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
        map.remove(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CredentialSetSpec, SealedFields};

    const PLAINTEXT: &str = "hunter2-plaintext";

    fn sealed_spec() -> VaultItemSpec {
        serde_json::from_value(json!({
            "type": "CredentialSet",
            "section": "checkout",
            "credentialSet": {"username": "bot", "password": SECRET_MASK},
            "sealed": {"password": "mv1.s.1.AAAA"},
        }))
        .unwrap()
    }

    #[test]
    fn a_plaintext_in_last_applied_is_masked_and_points_at_the_sealed_value() {
        let text = format!(
            "{}\n",
            json!({"apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
                   "spec": {"type": "CredentialSet", "credentialSet": {"username": "bot", "password": PLAINTEXT}}})
        );
        let LastApplied::Masked(masked) = mask_last_applied(&text, &sealed_spec()) else {
            panic!("expected a masked annotation");
        };
        assert!(!masked.contains(PLAINTEXT), "{masked}");
        assert!(masked.ends_with('\n'));
        let doc: Value = serde_json::from_str(&masked).unwrap();
        assert_eq!(doc["spec"]["credentialSet"]["password"], SECRET_MASK);
        assert_eq!(doc["spec"]["sealed"]["password"], "mv1.s.1.AAAA");
        assert_eq!(doc["spec"]["credentialSet"]["username"], "bot");
    }

    #[test]
    fn a_masked_last_applied_is_left_alone() {
        let text = json!({"spec": {"credentialSet": {"password": SECRET_MASK}, "sealed": {"password": "mv1.s.1.B"}}})
            .to_string();
        assert_eq!(
            mask_last_applied(&text, &sealed_spec()),
            LastApplied::Unchanged
        );
    }

    #[test]
    fn an_unreadable_last_applied_is_replaced() {
        for text in [
            format!("{{not json {PLAINTEXT}"),
            json!(PLAINTEXT).to_string(),
            json!({"spec": {"secret": PLAINTEXT}}).to_string(),
            json!({"spec": {"credentialSet": ["x", PLAINTEXT]}}).to_string(),
        ] {
            assert_eq!(
                mask_last_applied(&text, &sealed_spec()),
                LastApplied::Replaced,
                "{text}"
            );
        }
        let replacement = replacement_last_applied(&sealed_spec(), "shop", "shop-login");
        let doc: Value = serde_json::from_str(&replacement).unwrap();
        assert_eq!(doc["spec"]["sealed"]["password"], "mv1.s.1.AAAA");
        assert_eq!(doc["spec"]["credentialSet"]["password"], SECRET_MASK);
    }

    #[test]
    fn a_number_in_a_write_only_field_is_masked_too() {
        let text = json!({"spec": {"secret": {"value": 123456}, "sealed": null}}).to_string();
        let mut spec = sealed_spec();
        spec.sealed = Some(SealedFields::default());
        spec.credential_set = Some(CredentialSetSpec::default());
        let LastApplied::Masked(masked) = mask_last_applied(&text, &spec) else {
            panic!("expected a masked annotation");
        };
        assert!(!masked.contains("123456"), "{masked}");
    }
}
