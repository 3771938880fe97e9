//! The `kubectl.kubernetes.io/last-applied-configuration` annotation of a `VaultItem`.
//!
//! A client-side `kubectl apply` stores the whole submitted object in it, plaintext
//! included, before the request reaches the server. The annotation must leave admission as
//! exactly a masked copy of the admitted object, or be replaced by one: a plaintext could
//! hide in a duplicate key (a JSON reader keeps one of the two, the raw text keeps both) or
//! in a mistyped field (`Password`) that the API server prunes from `spec` but not from the
//! annotation, where anyone with `get` reads it.
//!
//! So the annotation is parsed strictly (a duplicate key anywhere, or a field `spec` does not
//! have, means "replace"), its write-only values are masked, and the result must equal the
//! admitted spec; anything else is replaced whole by the admitted object.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use crate::api::{GROUP, SECRET_MASK, SecretField, VERSION, VaultItemSpec};

/// The annotation a client-side `kubectl apply` writes with the whole applied object.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// [`LAST_APPLIED`] as a JSON-pointer segment (`/` escaped as `~1`).
pub(crate) const LAST_APPLIED_POINTER: &str =
    "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration";

/// Top-level members of a manifest; anything else may hide a value.
const MANIFEST_KEYS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// What becomes of the annotation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LastApplied {
    /// A masked copy of the admitted object already: left exactly as it was.
    Unchanged,
    /// Every write-only value masked and its sealed value set: the new text.
    Masked(String),
    /// Not a (masked) copy of the admitted object: it must be replaced as a whole.
    Replaced,
}

/// Decides the annotation's fate. `previous` is the stored object's annotation on an
/// update: the same text was checked when it was admitted, so it is left alone (a `kubectl
/// patch` or `edit` keeps the last apply's annotation, which differs from the new spec).
pub(crate) fn review_last_applied(
    text: &str,
    previous: Option<&str>,
    admitted: &VaultItemSpec,
) -> LastApplied {
    if previous == Some(text) {
        return LastApplied::Unchanged;
    }
    let Ok(StrictValue(mut doc)) = serde_json::from_str::<StrictValue>(text) else {
        return LastApplied::Replaced;
    };
    let Some(members) = doc.as_object() else {
        return LastApplied::Replaced;
    };
    if !members.keys().all(|k| MANIFEST_KEYS.contains(&k.as_str())) {
        return LastApplied::Replaced;
    }
    let Some(spec) = doc.get_mut("spec").filter(|s| s.is_object()) else {
        return LastApplied::Replaced;
    };
    let changed = match mask(spec, admitted) {
        Some(changed) => changed,
        None => return LastApplied::Replaced,
    };
    let Ok(typed) = VaultItemSpec::deserialize(&*spec) else {
        return LastApplied::Replaced;
    };
    let Ok(typed_value) = serde_json::to_value(&typed) else {
        return LastApplied::Replaced;
    };
    if !within(spec, &typed_value) || typed != *admitted {
        return LastApplied::Replaced;
    }
    if !changed {
        return LastApplied::Unchanged;
    }
    // kubectl ends the annotation with a newline; keep its form.
    let newline = if text.ends_with('\n') { "\n" } else { "" };
    LastApplied::Masked(format!("{doc}{newline}"))
}

/// What stands in for a replaced annotation: the object as admitted, only masks and sealed
/// values in it. Better than removing the annotation, which would leave kubectl's next
/// apply without a base to diff against.
pub(crate) fn replacement(spec: &VaultItemSpec, namespace: &str, name: &str) -> String {
    let doc = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "VaultItem",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    format!("{doc}\n")
}

/// Masks every write-only value in `spec` (any value but the mask becomes `*****`) and sets
/// its sealed value to the admitted one. `Some(changed)`, or `None` if the shape hides where
/// a write-only value would be.
fn mask(spec: &mut Value, admitted: &VaultItemSpec) -> Option<bool> {
    let mut changed = false;
    for field in SecretField::ALL {
        let (spec_path, sealed_path) = (
            relative(field.spec_pointer()),
            relative(field.sealed_pointer()),
        );
        lookup(spec, sealed_path)?;
        match lookup(spec, spec_path)? {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s == SECRET_MASK => continue,
            Some(_) => {}
        }
        set(spec, spec_path, json!(SECRET_MASK));
        match admitted.sealed_value(field) {
            Some(sealed) => set(spec, sealed_path, json!(sealed)),
            None => remove(spec, sealed_path),
        }
        changed = true;
    }
    Some(changed)
}

/// `/spec/credentialSet/password` relative to the spec: `credentialSet/password`.
fn relative(pointer: &str) -> &str {
    pointer.trim_start_matches("/spec/")
}

/// Whether every member of `raw` is a member of `typed` (the same spec read into our types
/// and written back), recursively. Members that hold nothing (null, `[]`, `{}`) may be
/// absent from `typed`, which leaves defaults out. A member our types do not have is where
/// a mistyped field's value would sit.
fn within(raw: &Value, typed: &Value) -> bool {
    match (raw, typed) {
        (Value::Object(raw), Value::Object(typed)) => {
            raw.iter().all(|(key, value)| match typed.get(key) {
                Some(typed) => within(value, typed),
                None => is_empty(value),
            })
        }
        (Value::Array(raw), Value::Array(typed)) => {
            raw.len() == typed.len() && raw.iter().zip(typed).all(|(r, t)| within(r, t))
        }
        (Value::Object(_) | Value::Array(_), _) => is_empty(raw),
        _ => true,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(members) => members.is_empty(),
        _ => false,
    }
}

/// The value at a `/`-separated path: `Some(None)` if absent (or under a null); `None` if
/// something on the way is neither an object nor null.
fn lookup<'a>(doc: &'a Value, path: &str) -> Option<Option<&'a Value>> {
    let mut node = doc;
    for segment in path.split('/') {
        node = match node {
            Value::Object(map) => match map.get(segment) {
                Some(next) => next,
                None => return Some(None),
            },
            Value::Null => return Some(None),
            _ => return None,
        };
    }
    Some(Some(node))
}

/// Sets the value at `path`, creating objects on the way (checked by [`lookup`] first).
fn set(doc: &mut Value, path: &str, value: Value) {
    let mut node = doc;
    let mut segments = path.split('/').peekable();
    while let Some(segment) = segments.next() {
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else {
            return;
        };
        if segments.peek().is_none() {
            map.insert(segment.to_owned(), value);
            return;
        }
        node = map
            .entry(segment)
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn remove(doc: &mut Value, path: &str) {
    let (parent, last) = match path.rsplit_once('/') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, path),
    };
    let node = match parent {
        Some(parent) => doc.pointer_mut(&format!("/{parent}")),
        None => Some(doc),
    };
    if let Some(Value::Object(map)) = node {
        map.remove(last);
    }
}

/// A JSON value whose objects may not repeat a key: `serde_json::Value` keeps the last of
/// two, while the text still holds the first.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON without duplicate keys")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let StrictValue(value) = access.next_value()?;
            if map.insert(key, value).is_some() {
                // Never the key itself in the message: it comes from the input.
                return Err(de::Error::custom("duplicate key"));
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SealedFields;

    const PLAINTEXT: &str = "hunter2-plaintext";
    const SEALED: &str = "mv2.s.1.AAAA";

    fn sealed_spec() -> VaultItemSpec {
        serde_json::from_value(json!({
            "type": "CredentialSet",
            "section": "checkout",
            "credentialSet": {"username": "bot", "password": SECRET_MASK},
            "sealed": {"password": SEALED},
        }))
        .unwrap()
    }

    fn manifest(spec: Value) -> String {
        format!(
            "{}\n",
            json!({"apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
                   "metadata": {"name": "shop-login", "namespace": "shop"}, "spec": spec})
        )
    }

    #[test]
    fn a_plaintext_in_last_applied_is_masked_and_points_at_the_sealed_value() {
        let text = manifest(json!({"type": "CredentialSet", "section": "checkout",
            "credentialSet": {"username": "bot", "password": PLAINTEXT}}));
        let LastApplied::Masked(masked) = review_last_applied(&text, None, &sealed_spec()) else {
            panic!("expected a masked annotation");
        };
        assert!(!masked.contains(PLAINTEXT), "{masked}");
        assert!(masked.ends_with('\n'));
        let doc: Value = serde_json::from_str(&masked).unwrap();
        assert_eq!(doc["spec"]["credentialSet"]["password"], SECRET_MASK);
        assert_eq!(doc["spec"]["sealed"]["password"], SEALED);
        assert_eq!(doc["spec"]["credentialSet"]["username"], "bot");
    }

    #[test]
    fn a_masked_copy_is_left_alone() {
        let text = manifest(json!({"type": "CredentialSet", "section": "checkout",
            "credentialSet": {"username": "bot", "password": SECRET_MASK},
            "sealed": {"password": SEALED}, "allowedHosts": []}));
        assert_eq!(
            review_last_applied(&text, None, &sealed_spec()),
            LastApplied::Unchanged
        );
    }

    #[test]
    fn a_duplicate_key_is_replaced_even_when_the_last_copy_is_masked() {
        let text = format!(
            r#"{{"apiVersion":"monivault.io/v1alpha1","kind":"VaultItem","spec":{{"type":"CredentialSet","section":"checkout","credentialSet":{{"username":"bot","password":"{PLAINTEXT}","password":"*****"}},"sealed":{{"password":"{SEALED}"}}}}}}"#
        );
        // A lenient reader sees only the mask.
        let lenient: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(lenient["spec"]["credentialSet"]["password"], SECRET_MASK);
        assert_eq!(
            review_last_applied(&text, None, &sealed_spec()),
            LastApplied::Replaced
        );
    }

    #[test]
    fn a_mistyped_field_is_replaced() {
        let text = manifest(json!({"type": "CredentialSet", "section": "checkout",
            "credentialSet": {"username": "bot", "Password": PLAINTEXT},
            "sealed": {"password": SEALED}}));
        assert_eq!(
            review_last_applied(&text, None, &sealed_spec()),
            LastApplied::Replaced
        );
        let top = format!(
            "{}",
            json!({"kind": "VaultItem", "Spec": {"password": PLAINTEXT},
                   "spec": {"type": "CredentialSet", "section": "checkout",
                            "credentialSet": {"username": "bot", "password": SECRET_MASK},
                            "sealed": {"password": SEALED}}})
        );
        assert_eq!(
            review_last_applied(&top, None, &sealed_spec()),
            LastApplied::Replaced
        );
    }

    #[test]
    fn a_copy_of_another_object_is_replaced() {
        let text = manifest(json!({"type": "CredentialSet", "section": "payments",
            "credentialSet": {"username": "bot", "password": SECRET_MASK},
            "sealed": {"password": SEALED}}));
        assert_eq!(
            review_last_applied(&text, None, &sealed_spec()),
            LastApplied::Replaced
        );
    }

    #[test]
    fn the_stored_annotation_is_not_judged_again() {
        let text = manifest(json!({"type": "CredentialSet", "section": "checkout",
            "description": "before a kubectl patch",
            "credentialSet": {"username": "bot", "password": SECRET_MASK},
            "sealed": {"password": SEALED}}));
        assert_eq!(
            review_last_applied(&text, Some(&text), &sealed_spec()),
            LastApplied::Unchanged
        );
        assert_eq!(
            review_last_applied(&text, None, &sealed_spec()),
            LastApplied::Replaced
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
                review_last_applied(&text, None, &sealed_spec()),
                LastApplied::Replaced,
                "{text}"
            );
        }
        let replacement = replacement(&sealed_spec(), "shop", "shop-login");
        let doc: Value = serde_json::from_str(&replacement).unwrap();
        assert_eq!(doc["spec"]["sealed"]["password"], SEALED);
        assert_eq!(doc["spec"]["credentialSet"]["password"], SECRET_MASK);
    }

    #[test]
    fn a_number_in_a_write_only_field_is_masked_too() {
        let mut spec = sealed_spec();
        spec.item_type = crate::api::ItemType::Secret;
        spec.credential_set = None;
        spec.secret = Some(crate::api::SecretSpec {
            value: Some(SECRET_MASK.into()),
        });
        spec.sealed = Some(SealedFields::default());
        spec.sealed
            .as_mut()
            .unwrap()
            .set(SecretField::Value, SEALED.into());
        let text = manifest(json!({"type": "Secret", "section": "checkout",
            "secret": {"value": 123456}}));
        let LastApplied::Masked(masked) = review_last_applied(&text, None, &spec) else {
            panic!("expected a masked annotation");
        };
        assert!(!masked.contains("123456"), "{masked}");
    }
}
