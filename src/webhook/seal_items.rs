//! The mutating webhook for `VaultItem` (create and update): plaintext in, sealed out.
//!
//! For every write-only field that holds a plaintext it seals the value to the
//! environment's current sealing key, bound to namespace, item name and field, puts it in
//! `spec.sealed.<field>` and leaves `*****` in the field. It does the same to the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, where a client-side
//! `kubectl apply` keeps a copy of everything it sent.
//!
//! A sealed value written by hand (GitOps) is opened once to check it belongs to this
//! namespace, section, item and field under a key the environment still has; the plaintext
//! is dropped at once. An item that carries only sealed values gets no patch at all, so a
//! GitOps tool sees exactly what it applied.
//!
//! A plaintext applied again keeps the stored sealed value only for a requester who may
//! `use` the item: for anyone else, keeping it would answer "is this the password?" (a
//! dry run shows whether the sealed value changed), so they always get a fresh seal.
//!
//! Its one side effect: creating the environment's keys when the first item arrives before
//! any VaultSection, never on a dry run.

use kube::core::admission::{AdmissionResponse, Operation};
use serde_json::{Value, json};

use super::authorize::{AuthorizeError, Authorizer, USE_VERB, may_on_item};
use super::last_applied::{
    LAST_APPLIED, LAST_APPLIED_POINTER, LastApplied, replacement, review_last_applied,
};
use super::{Request, dotted, parse_part, redact_parse_error, refuse};
use crate::api::{GROUP, ItemType, SECRET_MASK, SecretField, VaultItemSpec};
use crate::crypto::{CryptoError, Keyring, RootKey, SealBinding, seal};
use crate::store::Store;
use crate::store::{KeyError, Keys};

/// Why a VaultItem write was refused. No variant holds a plaintext: they name fields.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("monivault's VaultItem webhook got {0}; it handles monivault.io VaultItems only")]
    WrongKind(String),
    #[error("the admission request carries no object")]
    NoObject,
    #[error("the VaultItem has no namespace, or one that is not a namespace name")]
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
    #[error("spec.sealed.{field} is too long: at most {limit} characters")]
    SealedTooLong { field: SecretField, limit: usize },
    #[error(
        "spec.sealed.{field} holds a value longer than {path} accepts: at most {limit} bytes. monivault seal checks this limit"
    )]
    SealedPlaintextTooLong {
        field: SecretField,
        path: String,
        limit: usize,
    },
    #[error(
        "spec.sealed.{field} does not open for namespace {namespace:?}, section {section:?}, item {item:?}, field \"{field}\": {reason}. Seal it for this item: monivault seal -n {namespace} --section {section} --item {item} --field {field}"
    )]
    SealedRefused {
        field: SecretField,
        namespace: String,
        section: String,
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
    #[error("{0}")]
    Authorize(#[from] AuthorizeError),
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
            | SealError::SealedTooLong { .. }
            | SealError::SealedPlaintextTooLong { .. }
            | SealError::SealedRefused { .. } => (422, "Invalid"),
            SealError::Keys(_)
            | SealError::SealingKey { .. }
            | SealError::Seal { .. }
            | SealError::Patch(_)
            | SealError::Authorize(_) => (500, "InternalError"),
        }
    }
}

/// The mutating webhook's decision for one VaultItem request: allowed with a JSONPatch
/// (plaintext sealed and masked), allowed unchanged (nothing to seal), or refused with a
/// message naming the field and the reason.
pub async fn seal_vault_item<S: Store, A: Authorizer>(
    keys: &Keys<S>,
    authorizer: &A,
    request: &Request,
) -> AdmissionResponse {
    match admit(keys, authorizer, request).await {
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

async fn admit<S: Store, A: Authorizer>(
    keys: &Keys<S>,
    authorizer: &A,
    request: &Request,
) -> Result<AdmissionResponse, SealError> {
    if request.kind.group != GROUP || request.kind.kind != "VaultItem" {
        return Err(SealError::WrongKind(super::foreign_kind(
            &request.kind.kind,
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
    // Environment keys are made for this name: only a real namespace name may make them.
    if !is_dns_label(namespace) {
        return Err(SealError::NoNamespace);
    }
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
    // Before opening anything: the schema's lengths are checked only after this webhook.
    for (field, sealed) in &to_verify {
        if sealed.len() > field.max_sealed_len() {
            return Err(SealError::SealedTooLong {
                field: *field,
                limit: field.max_sealed_len(),
            });
        }
    }
    let mut keyring = None;
    if !to_verify.is_empty() {
        let ring = keys.keyring_for(namespace).await?;
        let root = keys.root_for(&ring).await?;
        for (field, sealed) in &to_verify {
            let binding = SealBinding {
                namespace,
                section: &spec.section,
                item_type: spec.item_type.as_str(),
                item: name,
                field: field.as_str(),
            };
            // Only whether it opens, and to a value the field accepts, matters: the
            // plaintext is dropped (and wiped) here. A sealer other than `monivault seal`
            // may have sealed more than the field's limit.
            match ring.open_sealed(&root, &binding, sealed) {
                Ok(opened) if opened.expose().len() > field.max_plaintext_len() => {
                    return Err(SealError::SealedPlaintextTooLong {
                        field: *field,
                        path: dotted(field.spec_pointer()),
                        limit: field.max_plaintext_len(),
                    });
                }
                Ok(_) => {}
                Err(reason) => {
                    return Err(SealError::SealedRefused {
                        field: *field,
                        namespace: namespace.to_owned(),
                        section: spec.section.clone(),
                        item: name.to_owned(),
                        reason,
                    });
                }
            }
        }
        keyring = Some(ring);
    }
    super::archives::refuse_costly_archive(keys, namespace, name, &spec, old_spec.as_ref()).await?;

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
        // Asked once, and only when there is a stored value to keep: see the module docs.
        let has_stored = plaintext_fields.iter().any(|&field| {
            old_spec
                .as_ref()
                .is_some_and(|old| old.sealed_value(field).is_some())
        });
        let may_keep = has_stored
            && may_on_item(
                authorizer,
                &request.user_info,
                USE_VERB,
                namespace,
                name,
                &spec.section,
            )
            .await?;
        let section = spec.section.clone();
        let item_type = spec.item_type;
        for &field in &plaintext_fields {
            let Some(plaintext) = spec.take_plaintext(field) else {
                continue;
            };
            let binding = SealBinding {
                namespace,
                section: &section,
                item_type: item_type.as_str(),
                item: name,
                field: field.as_str(),
            };
            // The same plaintext applied again (a repeated `kubectl apply`) keeps the sealed
            // value already stored: sealing is randomized, and a fresh one would change the
            // object and make the controller ingest it again for nothing.
            let kept = old_spec
                .as_ref()
                .and_then(|old| old.sealed_value(field))
                .filter(|_| may_keep)
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
    let previous = request
        .old_object
        .as_ref()
        .and_then(|old| old.metadata.annotations.as_ref())
        .and_then(|annotations| annotations.get(LAST_APPLIED))
        .map(String::as_str);
    if let Some(text) = last_applied {
        let rewritten = match review_last_applied(text, previous, &spec) {
            LastApplied::Unchanged => None,
            LastApplied::Masked(text) => Some(text),
            LastApplied::Replaced => {
                warnings.push(format!(
                    "the {LAST_APPLIED} annotation was not exactly a copy of this VaultItem (a duplicate key, a field VaultItem does not have, or other values), so it could hold a plaintext: monivault replaced it with the admitted object, secrets masked"
                ));
                Some(replacement(&spec, namespace, name))
            }
        };
        if let Some(text) = rewritten {
            ops.push(json!({"op": "replace", "path": LAST_APPLIED_POINTER, "value": text}));
        }
    }

    // A public Certificate item is never sent anywhere: only items with secrets need hosts.
    if spec.allowed_hosts.is_empty() && !spec.secret_fields().is_empty() {
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

/// A DNS-1123 label, as every namespace name is: at most 63 characters.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.is_empty())
}
