//! The admission stamp (DESIGN.md, Flow 5): what the monitor webhooks write on an
//! authorized `Monitor` or `MonitorRun`, and what the runner checks before it puts any
//! secret into one.
//!
//! - The mutating webhook authorizes a write and stamps the object: an HMAC, under a key
//!   derived from the current root key, over the kind, namespace, name, spec digest, the
//!   items the object carries and the authorizing user ([`make_stamp`]).
//! - The validating webhook checks that the stamp still matches the final object: another
//!   mutating webhook may have changed the spec after ours ([`check_stamp`]).
//! - The runner puts secrets only into an object whose current spec matches a valid stamp
//!   ([`verify`], [`verify_run`]). A monitor written while the webhook was bypassed, or
//!   restored from a backup, has no valid stamp and carries no secret until someone
//!   permitted applies it again.
//!
//! The stamp lives in the annotation [`STAMP_ANNOTATION`], as compact JSON that names the
//! user and items in the clear (both are visible facts, not secrets) and the root key
//! version. Old root key versions stay stored, so a root key rotation keeps stamps valid.
//!
//! A room of its own because both the webhook and the runner need it, and neither may
//! import the other. It imports `api`, `crypto` and `store`, and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube::core::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::template::referenced_items;
use crate::api::{Monitor, MonitorRun};
use crate::crypto::{StampClaims, StampedName};
use crate::store::{KeyError, Keys, Store};

/// The two kinds of object a stamp is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StampKind {
    Monitor,
    MonitorRun,
}

impl StampKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StampKind::Monitor => "Monitor",
            StampKind::MonitorRun => "MonitorRun",
        }
    }
}

/// The annotation that holds the stamp.
pub const STAMP_ANNOTATION: &str = "monivault.io/admission-stamp";
/// 2: items carry their uids, and the stamp its time of issue.
const STAMP_FORMAT: u32 = 2;

/// What a valid stamp authorizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizedRefs {
    /// Who was allowed to have the object carry the items.
    pub user: String,
    /// The items the object may carry, each with its uid at admission: the runner uses an
    /// item only while it is that same object. An empty uid marks an item that did not
    /// exist then, so only a grant on its name can have allowed it, and that grant covers
    /// whatever item later takes the name. For a `MonitorRun` of a saved monitor, the items
    /// that monitor carried when the run was created.
    pub items: BTreeMap<String, String>,
    /// When the stamp was made (Unix seconds).
    pub issued_at: i64,
    /// The MAC, which identifies this stamp: a run's stamp is used by one run only.
    pub mac: String,
}

impl AuthorizedRefs {
    /// The names of the items.
    pub fn names(&self) -> BTreeSet<String> {
        self.items.keys().cloned().collect()
    }
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
    /// Item name → uid at admission (empty: no such item then).
    items: BTreeMap<String, String>,
    /// Unix seconds.
    iat: i64,
    /// Set when the object had only a `generateName` at admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generate_name: Option<String>,
    /// With `generate_name`: makes each admission's stamp its own ([`StampClaims::nonce`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
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

/// Checks a saved monitor's stamp against its current spec: the items it may carry, and
/// who allowed it. The runner calls this before it resolves any secret.
pub async fn verify<S: Store>(
    keys: &Keys<S>,
    monitor: &Monitor,
) -> Result<AuthorizedRefs, StampError> {
    let kind = StampKind::Monitor;
    let spec_error = |reason: String| StampError::Spec {
        kind: kind.as_str(),
        reason,
    };
    let digest = spec_digest(&monitor.spec).map_err(|e| spec_error(e.to_string()))?;
    let carried = referenced_items(&monitor.spec).map_err(|e| spec_error(e.to_string()))?;
    let namespace = monitor.metadata.namespace.as_deref().unwrap_or_default();
    let refs = check_stamp(keys, kind, namespace, &monitor.metadata, &digest, None).await?;
    if refs.names() != carried {
        return Err(StampError::ItemsDiffer {
            kind: kind.as_str(),
            stamped: refs.names(),
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
    let kind = StampKind::MonitorRun;
    let spec_error = |reason: String| StampError::Spec {
        kind: kind.as_str(),
        reason,
    };
    let digest = spec_digest(&run.spec).map_err(|e| spec_error(e.to_string()))?;
    let namespace = run.metadata.namespace.as_deref().unwrap_or_default();
    let refs = check_stamp(keys, kind, namespace, &run.metadata, &digest, None).await?;
    if let Some(inline) = &run.spec.monitor {
        let carried = referenced_items(inline).map_err(|e| spec_error(e.to_string()))?;
        if carried != refs.names() {
            return Err(StampError::ItemsDiffer {
                kind: kind.as_str(),
                stamped: refs.names(),
                carried,
            });
        }
    }
    Ok(refs)
}

/// What a new stamp vouches for.
pub struct NewStamp<'a> {
    pub kind: StampKind,
    pub namespace: &'a str,
    pub name: StampedName<'a>,
    pub spec_digest: &'a [u8; 32],
    /// Item name → uid at admission (empty: no such item).
    pub items: BTreeMap<String, String>,
    pub user: String,
    /// Unix seconds.
    pub issued_at: i64,
}

/// Signs `stamp` under the current root key: the annotation's text.
pub async fn make_stamp<S: Store>(
    keys: &Keys<S>,
    stamp: NewStamp<'_>,
) -> Result<String, StampError> {
    let NewStamp {
        kind,
        namespace,
        name,
        spec_digest,
        items,
        user,
        issued_at,
    } = stamp;
    let root = keys.current_root().await?;
    let nonce = match name {
        StampedName::GenerateName(_) => Some(new_nonce().map_err(|e| StampError::Malformed {
            kind: kind.as_str(),
            reason: e.to_string(),
        })?),
        StampedName::Name(_) => None,
    };
    let claims = StampClaims {
        kind: kind.as_str(),
        namespace,
        name,
        spec_digest,
        items: &items,
        user: &user,
        issued_at,
        nonce: nonce.as_deref(),
    };
    let mac = URL_SAFE_NO_PAD.encode(claims.sign(&root));
    let text = StampText {
        v: STAMP_FORMAT,
        key: root.version(),
        user,
        items,
        iat: issued_at,
        generate_name: match name {
            StampedName::GenerateName(prefix) => Some(prefix.to_owned()),
            StampedName::Name(_) => None,
        },
        nonce,
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
pub async fn check_stamp<S: Store>(
    keys: &Keys<S>,
    kind: StampKind,
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
        return Err(malformed(
            "made by another version of monivault; someone allowed to use its vault items must apply it again",
        ));
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
    if stamp.nonce.is_some() && stamp.generate_name.is_none() {
        return Err(malformed(
            "a nonce belongs to a stamp made for a generateName",
        ));
    }
    let claims = StampClaims {
        kind: kind_name,
        namespace,
        name: stamped_name,
        spec_digest: digest,
        items: &stamp.items,
        user: &stamp.user,
        issued_at: stamp.iat,
        nonce: stamp.nonce.as_deref(),
    };
    if !claims.verify(&root, &mac) {
        return Err(StampError::Mismatch { kind: kind_name });
    }
    Ok(AuthorizedRefs {
        user: stamp.user,
        items: stamp.items,
        issued_at: stamp.iat,
        mac: stamp.mac,
    })
}

/// 16 random bytes, base64url.
fn new_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The name to bind: the object's, or its `generateName` while the API server has yet to
/// pick one (it names objects after mutating admission).
pub fn stamped_name(meta: &ObjectMeta) -> StampedName<'_> {
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => StampedName::Name(name),
        _ => StampedName::GenerateName(meta.generate_name.as_deref().unwrap_or_default()),
    }
}

/// The root key version a stamp on `meta` was made under, if it carries a readable one.
/// Root key rotation keeps every version a stored stamp still names.
pub fn root_version_of(meta: &ObjectMeta) -> Option<u32> {
    let text = stamp_of(meta)?;
    serde_json::from_str::<StampText>(text).ok().map(|s| s.key)
}

/// The stamp annotation's text on `meta`, if any.
pub fn stamp_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(STAMP_ANNOTATION))
        .map(String::as_str)
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
