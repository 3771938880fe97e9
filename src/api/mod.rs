//! The CRD types: monivault's public API (group `monivault.io`, version `v1alpha1`, all
//! namespaced, all in the kubectl category `monivault`).
//!
//! | kind | short name | module |
//! |---|---|---|
//! | `VaultSection` | `vsec` | [`vault_section`] |
//! | `VaultItem` | `vi` | [`vault_item`] |
//! | `Monitor` | `mon` | [`monitor`] |
//! | `MonitorRun` | `mrun` | [`monitor_run`] |
//!
//! This module owns the field names, the schema and its CEL rules, and [`crds`], the source
//! of the checked-in `crds/` YAML. It is pure data: no I/O, no crypto.
//!
//! It must never:
//! - hold a plaintext anywhere but a write-only field (`credentialSet.password`,
//!   `secret.value`, `certificateArchive.archive` and `.password`, `file.content`,
//!   `oneTimePassword.secret`), and only until the webhook swaps it for [`SECRET_MASK`];
//! - print one: `Debug` of any spec shows `*****` or `<set>`, never the value;
//! - let a plaintext persist: CEL rules refuse a write-only field that is not the mask, so
//!   if the webhook is bypassed the API server rejects the object instead of storing it;
//! - put a secret in a status: `VaultItemStatus::secret` is only ever the mask.

pub mod condition;
pub mod duration;
pub mod monitor;
pub mod monitor_run;
pub mod names;
pub mod template;
pub mod vault_item;
pub mod vault_section;

mod schema_formats;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use condition::{Condition, ConditionStatus, READY};
pub use duration::Duration;
pub use monitor::{
    Assertions, BasicAuth, BearerAuth, ClientCertificate, Header, HttpMethod, Monitor, MonitorAuth,
    MonitorSpec, MonitorState, MonitorStatus, MonitorTls, TypedItemRef,
};
pub use monitor_run::{
    AssertionResult, MonitorRef, MonitorRun, MonitorRunSpec, MonitorRunStatus, RunPhase, RunResult,
};
pub use names::ObjectName;
pub use vault_item::{
    CertificateArchiveSpec, CertificateInfo, CertificateSpec, CredentialSetSpec, FileInfo,
    FileSpec, ItemType, OneTimePasswordSpec, OtpAlgorithm, OtpEncoding, SealedFields, SecretField,
    SecretSpec, VaultItem, VaultItemSpec, VaultItemStatus,
};
pub use vault_section::{VaultSection, VaultSectionSpec, VaultSectionStatus};

/// The API group of every monivault resource.
pub const GROUP: &str = "monivault.io";
/// The API version of every monivault resource.
pub const VERSION: &str = "v1alpha1";
/// The kubectl category: `kubectl get monivault` lists every monivault object.
pub const CATEGORY: &str = "monivault";
/// What a write-only field shows once its value is sealed, and what `status.secret` shows
/// once a value is stored. A write-only field holding exactly this is "unchanged", so a
/// literal `*****` secret must be given through `monivault seal`.
pub const SECRET_MASK: &str = "*****";

/// Errors of this module. None carries a secret: values are named, never quoted, except
/// durations, which are public.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot render the CRDs as YAML")]
    Yaml(#[source] serde_saphyr::SerializeError),
    #[error("invalid duration {value:?}: {reason}; write e.g. 30s, 5m or 1h30m")]
    InvalidDuration { value: String, reason: &'static str },
    #[error("unknown write-only field {0:?}")]
    UnknownSecretField(String),
}

/// The CRDs of every monivault resource, sections first (items refer to them).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        VaultSection::crd(),
        VaultItem::crd(),
        Monitor::crd(),
        MonitorRun::crd(),
    ];
    for crd in &mut crds {
        schema_formats::use_kubernetes_formats(crd);
    }
    crds
}

/// What `monivault crds` prints and `crds/monivault.yaml` holds: every CRD, as YAML
/// documents separated by `---`.
pub fn crds_yaml() -> Result<String, ApiError> {
    let docs = serde_saphyr::to_string_multiple(&crds()).map_err(ApiError::Yaml)?;
    Ok(format!(
        "# Generated from the Rust types in src/api by `monivault crds`. Do not edit:\n\
         # change the types, then run `MONIVAULT_BLESS=1 cargo test --test crds`.\n{docs}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_is_namespaced_in_our_group_and_category() {
        let crds = crds();
        let short: Vec<_> = crds
            .iter()
            .map(|c| {
                c.spec
                    .names
                    .short_names
                    .clone()
                    .unwrap_or_default()
                    .join(",")
            })
            .collect();
        assert_eq!(short, ["vsec", "vi", "mon", "mrun"]);
        for crd in &crds {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&[CATEGORY.to_owned()][..])
            );
            assert_eq!(crd.spec.versions.len(), 1);
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION);
            let status = version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref());
            assert!(
                status.is_some(),
                "{} has a status subresource",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn the_secret_column_reads_status_not_spec() {
        let crd = VaultItem::crd();
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        let secret = columns
            .iter()
            .find(|c| c.name == "Secret")
            .map(|c| c.json_path.as_str());
        assert_eq!(secret, Some(".status.secret"));
    }

    #[test]
    fn crds_yaml_is_one_document_per_crd() {
        let yaml = crds_yaml().unwrap();
        assert_eq!(yaml.matches("\n---\n").count(), 3);
        assert!(yaml.contains("name: vaultitems.monivault.io"));
    }
}
