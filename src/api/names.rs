//! `ObjectName`: the name of another object in the same namespace (a vault item, a monitor).
//!
//! One type for every reference, so every reference gets the same schema pattern and the
//! webhook and runner can tell a reference from free text.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A DNS-1123 subdomain: what Kubernetes accepts as an object name.
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The longest object name.
pub const OBJECT_NAME_MAX_LEN: usize = 253;

/// The name of an object in the same namespace as the referring one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectName(String);

impl ObjectName {
    pub fn new(name: impl Into<String>) -> Self {
        ObjectName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ObjectName {
    fn from(name: &str) -> Self {
        ObjectName(name.to_owned())
    }
}

impl From<String> for ObjectName {
    fn from(name: String) -> Self {
        ObjectName(name)
    }
}

impl AsRef<str> for ObjectName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl JsonSchema for ObjectName {
    fn schema_name() -> Cow<'static, str> {
        "ObjectName".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": OBJECT_NAME_MAX_LEN,
            "pattern": OBJECT_NAME_PATTERN,
        })
    }
}
