//! `kubectl monivault status`: per environment (namespace), where its keys stand.
//!
//! Read from the store in the operator's namespace through its typed interface
//! ([`SecretStore`]): the keyring (versions and times, never a key: the wrapped keys are
//! not opened, and the root key Secret is not read at all) and the record listing (only
//! each envelope's key version, via the rotation's own [`reencrypt_progress`]). Items not
//! Ready come from the VaultItems' status.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use monivault::api::VaultItem;
use monivault::api::condition::{ConditionStatus, READY, find_condition};
use monivault::controller::rotation::{ReencryptProgress, reencrypt_progress};
use monivault::crypto::{Keyring, UnixMillis};
use monivault::store::{ItemKey, ItemRecord, Listing, SecretStore, Store, StoreError};
use serde::Serialize;

use super::output::{self, Format};
use super::{KubeArgs, PluginError, api_code, exit};

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The environment (namespace) to show (default: the context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Show every environment.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// The operator's namespace, which holds the store.
    #[arg(
        long,
        env = "MONIVAULT_NAMESPACE",
        default_value = "monivault-system",
        value_name = "NS"
    )]
    pub operator_namespace: String,
    /// Print the status as json or yaml instead of a table.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// One key kind of an environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersions {
    pub current: u32,
    /// Every version still held, current included.
    pub held: Vec<u32>,
    /// When the current version was made (RFC 3339).
    pub current_since: Option<String>,
}

/// Records still to move onto the current data key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reencryption {
    /// Records with a field on an older data key.
    pub remaining: usize,
    /// Records whose key versions cannot be read: they keep every old key.
    pub unreadable: usize,
}

/// An item that is not Ready, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotReadyItem {
    pub name: String,
    pub reason: String,
    pub message: String,
}

/// One environment's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    pub namespace: String,
    /// The root key version this environment's keys are wrapped under.
    pub root_key_version: u32,
    pub data_key: KeyVersions,
    pub sealing_key: KeyVersions,
    pub reencryption: Reencryption,
    /// The newest of: the current data key, the current sealing key, the last re-wrap
    /// under a root key (RFC 3339).
    pub last_rotation: Option<String>,
    /// Set when the namespace was seen gone: its keys go after the operator's grace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphaned_since: Option<String>,
    pub items_not_ready: Vec<NotReadyItem>,
}

/// What `status` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub environments: Vec<EnvironmentStatus>,
    /// Environment Secrets of the store that cannot be read (by Secret name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_environments: Vec<String>,
}

fn time(at: UnixMillis) -> Option<String> {
    Timestamp::from_millisecond(at.as_millis())
        .ok()
        .map(|t| t.to_string())
}

/// The status of `namespace`'s environment, from its keys, the record listing and its
/// items. Pure.
pub fn environment_status(
    namespace: &str,
    keyring: &Keyring,
    records: &Listing<ItemKey, ItemRecord>,
    items: &[VaultItem],
) -> Option<EnvironmentStatus> {
    let env = keyring.environment(namespace).ok()?;
    let data_since = env.current_data_key_since();
    let sealing_since = env.current_sealing_key_since();
    let last = [data_since, sealing_since, Some(keyring.root_key_since)]
        .into_iter()
        .flatten()
        .max();
    let ReencryptProgress { remaining, unknown } =
        reencrypt_progress(records, namespace, env.current_data_key);
    Some(EnvironmentStatus {
        namespace: namespace.to_owned(),
        root_key_version: keyring.root_key_version,
        data_key: KeyVersions {
            current: env.current_data_key,
            held: env.data_keys.keys().copied().collect(),
            current_since: data_since.and_then(time),
        },
        sealing_key: KeyVersions {
            current: env.current_sealing_key,
            held: env.sealing_keys.keys().copied().collect(),
            current_since: sealing_since.and_then(time),
        },
        reencryption: Reencryption {
            remaining,
            unreadable: unknown,
        },
        last_rotation: last.and_then(time),
        orphaned_since: env.orphaned_since.and_then(time),
        items_not_ready: not_ready(namespace, items),
    })
}

/// The items of `namespace` whose Ready condition is not True for their current
/// generation, sorted by name.
pub fn not_ready(namespace: &str, items: &[VaultItem]) -> Vec<NotReadyItem> {
    let mut found: Vec<NotReadyItem> = items
        .iter()
        .filter(|item| item.namespace().as_deref() == Some(namespace))
        .filter_map(|item| {
            let status = item.status.as_ref();
            let ready = status.and_then(|s| find_condition(&s.conditions, READY));
            let current = status.and_then(|s| s.observed_generation) == item.metadata.generation;
            match ready {
                Some(c) if c.status == ConditionStatus::True.as_str() && current => None,
                Some(c) if current => Some(NotReadyItem {
                    name: item.name_any(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                }),
                _ => Some(NotReadyItem {
                    name: item.name_any(),
                    reason: "Pending".to_owned(),
                    message:
                        "not ingested yet (its latest change); is the monivault operator running?"
                            .to_owned(),
                }),
            }
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn versions(held: &[u32]) -> String {
    held.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Status {
    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .environments
            .iter()
            .map(|e| {
                vec![
                    e.namespace.clone(),
                    e.root_key_version.to_string(),
                    e.data_key.current.to_string(),
                    versions(&e.data_key.held),
                    e.sealing_key.current.to_string(),
                    versions(&e.sealing_key.held),
                    if e.reencryption.unreadable > 0 {
                        format!(
                            "{} (+{} unreadable)",
                            e.reencryption.remaining, e.reencryption.unreadable
                        )
                    } else {
                        e.reencryption.remaining.to_string()
                    },
                    e.items_not_ready.len().to_string(),
                    e.last_rotation.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let mut text = output::table(
            &[
                "environment",
                "root key",
                "data key",
                "data keys held",
                "sealing key",
                "sealing keys held",
                "to re-encrypt",
                "not ready",
                "last rotation",
            ],
            &rows,
        );
        let not_ready: Vec<Vec<String>> = self
            .environments
            .iter()
            .flat_map(|e| {
                e.items_not_ready.iter().map(|i| {
                    vec![
                        e.namespace.clone(),
                        i.name.clone(),
                        i.reason.clone(),
                        i.message.clone(),
                    ]
                })
            })
            .collect();
        if !not_ready.is_empty() {
            text.push_str("\nItems not Ready:\n");
            text.push_str(&output::table(
                &["namespace", "item", "reason", "message"],
                &not_ready,
            ));
        }
        text
    }
}

/// A store error, with what to do about a 403.
fn store_error(error: StoreError, operator_namespace: &str) -> PluginError {
    match &error {
        StoreError::Kube { source, .. } if api_code(source) == Some(403) => {
            PluginError::StoreForbidden {
                operator_namespace: operator_namespace.to_owned(),
            }
        }
        _ => PluginError::Store(error),
    }
}

/// Prints the status; [`exit::YES`] when it could be read.
pub async fn run(args: StatusArgs) -> Result<u8, PluginError> {
    let connection = args.kube.connect().await?;
    let scope = (!args.all_namespaces).then(|| connection.namespace(args.namespace.as_deref()));
    let client = connection.client;
    let store = SecretStore::new(client.clone(), &args.operator_namespace);
    let forbidden = |e| store_error(e, &args.operator_namespace);

    let mut keyrings: BTreeMap<String, Keyring> = BTreeMap::new();
    let mut unreadable_environments = Vec::new();
    match &scope {
        Some(namespace) => {
            if let Some(stored) = store.environment(namespace).await.map_err(forbidden)? {
                keyrings.insert(namespace.clone(), stored.value);
            }
        }
        None => {
            let listing = store.list_environments().await.map_err(forbidden)?;
            unreadable_environments = listing.unreadable.into_iter().map(|u| u.secret).collect();
            keyrings.extend(listing.items.into_iter().map(|(ns, v)| (ns, v.value)));
        }
    }
    let records = if keyrings.is_empty() {
        Listing {
            items: Vec::new(),
            unreadable: Vec::new(),
        }
    } else {
        store.list_records().await.map_err(forbidden)?
    };
    let items_api: Api<VaultItem> = match &scope {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let items = if keyrings.is_empty() {
        Vec::new()
    } else {
        items_api
            .list(&ListParams::default())
            .await
            .map_err(|source| PluginError::Api {
                what: "listing VaultItems".to_owned(),
                source,
            })?
            .items
    };
    let status = Status {
        environments: keyrings
            .iter()
            .filter_map(|(ns, keyring)| environment_status(ns, keyring, &records, &items))
            .collect(),
        unreadable_environments,
    };
    if status.environments.is_empty() && args.output.is_none() {
        match &scope {
            Some(ns) => eprintln!(
                "No monivault environment in namespace {ns}: its keys are made when its first VaultSection or VaultItem appears (is the operator's store in {}? see --operator-namespace).",
                args.operator_namespace
            ),
            None => eprintln!(
                "No monivault environments in the store in namespace {}.",
                args.operator_namespace
            ),
        }
        return Ok(exit::YES);
    }
    for secret in &status.unreadable_environments {
        eprintln!(
            "warning: the store's environment Secret {}/{secret} cannot be read; see the operator's log",
            args.operator_namespace
        );
    }
    output::print(&output::render(args.output, &status, || status.table())?)?;
    Ok(exit::YES)
}

#[cfg(test)]
mod tests {
    use monivault::crypto::RootKey;

    use super::*;

    fn item(name: &str, generation: i64, ready: Option<(&str, &str, i64)>) -> VaultItem {
        let conditions = ready.map_or_else(Vec::new, |(status, reason, observed)| {
            vec![
                serde_json::json!({"type": "Ready", "status": status, "reason": reason,
                "message": format!("{reason} says why"),
                "lastTransitionTime": "2026-11-27T22:00:00Z", "observedGeneration": observed}),
            ]
        });
        let observed = ready.map(|(_, _, o)| o);
        serde_json::from_value(serde_json::json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "VaultItem",
            "metadata": {"name": name, "namespace": "shop", "generation": generation},
            "spec": {"type": "Secret", "section": "checkout", "secret": {"value": "*****"}},
            "status": {"conditions": conditions, "observedGeneration": observed},
        }))
        .expect("item")
    }

    #[test]
    fn items_not_ready_for_their_generation_are_listed_with_their_reason() {
        let items = [
            item("ok", 1, Some(("True", "Ingested", 1))),
            item("tampered", 1, Some(("False", "SealedValueInvalid", 1))),
            item("changed", 2, Some(("True", "Ingested", 1))),
            item("new", 1, None),
        ];
        let found = not_ready("shop", &items);
        let names: Vec<&str> = found.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["changed", "new", "tampered"]);
        assert_eq!(found[2].reason, "SealedValueInvalid");
        assert_eq!(found[2].message, "SealedValueInvalid says why");
        assert_eq!(found[0].reason, "Pending");
        assert!(not_ready("elsewhere", &items).is_empty());
    }

    #[test]
    fn an_environment_shows_its_versions_progress_and_last_rotation() {
        let root = RootKey::generate(1).expect("root");
        let mut keyring = Keyring::new(&root, UnixMillis::from_millis(1_000_250));
        keyring
            .ensure_environment(&root, "shop", UnixMillis::from_millis(1_000_250))
            .expect("environment");
        let records = Listing {
            items: Vec::new(),
            unreadable: Vec::new(),
        };
        let items = [item(
            "tampered",
            1,
            Some(("False", "SealedValueInvalid", 1)),
        )];
        let status = environment_status("shop", &keyring, &records, &items).expect("status");
        assert_eq!(status.data_key.current, 1);
        assert_eq!(status.data_key.held, [1]);
        assert_eq!(status.sealing_key.held, [1]);
        assert_eq!(status.root_key_version, 1);
        assert_eq!(status.reencryption.remaining, 0);
        assert_eq!(
            status.last_rotation.as_deref(),
            Some("1970-01-01T00:16:40.25Z")
        );
        assert!(environment_status("other", &keyring, &records, &items).is_none());

        let all = Status {
            environments: vec![status],
            unreadable_environments: Vec::new(),
        };
        let table = all.table();
        let mut lines = table.lines();
        let header = lines.next().expect("header");
        assert!(
            header.starts_with("ENVIRONMENT   ROOT KEY   DATA KEY"),
            "{header}"
        );
        assert!(header.ends_with("NOT READY   LAST ROTATION"), "{header}");
        assert!(table.contains("Items not Ready:"), "{table}");
        assert!(
            table.contains(
                "shop        tampered   SealedValueInvalid   SealedValueInvalid says why"
            ),
            "{table}"
        );
        let json: serde_json::Value = serde_json::to_value(&all).expect("json");
        let env = &json["environments"][0];
        assert_eq!(env["dataKey"]["current"], 1);
        assert_eq!(env["reencryption"]["remaining"], 0);
        assert_eq!(env["itemsNotReady"][0]["reason"], "SealedValueInvalid");
    }
}
