//! `VaultSection` (`vsec`): a named group of items. Granting `use` on a section grants use of
//! every item in it. Its status publishes the environment's sealing public key, which is
//! where `monivault seal` reads it from.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::condition::Condition;

/// A named group of vault items, and the unit of `use` permission.
// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "monivault.io",
    version = "v1alpha1",
    kind = "VaultSection",
    namespaced,
    status = "VaultSectionStatus",
    derive = "PartialEq",
    shortname = "vsec",
    category = "monivault",
    cel,
    doc = "A named group of vault items. Granting the use verb on a section grants use of every item in it.",
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description"
    ),
    printcolumn(
        name = "KeyVersion",
        type_ = "integer",
        json_path = ".status.keyVersion"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VaultSectionSpec {
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// The environment's keys as far as anyone may see them: versions and the public sealing key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VaultSectionStatus {
    /// `Ready` is `True` once the namespace's environment keys exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The version of the environment's current sealing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,

    /// The environment's current sealing public key, as opaque text: exactly what
    /// `monivault seal` reads from a file when offline. Public by design.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing_public_key: Option<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
