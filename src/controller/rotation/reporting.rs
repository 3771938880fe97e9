//! Where rotation reports: Events on an environment's VaultSections, and metrics.

use std::sync::Arc;

use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::api::vault_section::VaultSection;
use crate::crypto::Keyring;
use crate::store::Listing;
use crate::telemetry::Metrics;

use super::RotationMetrics;

/// The Event reporter of rotation Events.
const EVENT_CONTROLLER: &str = "monivault-rotation";

/// Where rotation reports: Events on the environment's VaultSections, and metrics.
/// Both optional, so the engine runs the same in unit tests and in `monivault rotate`.
#[derive(Clone, Default)]
pub struct Reporting {
    events: Option<(Client, Recorder)>,
    metrics: Option<Arc<RotationMetrics>>,
    /// Where the key version gauges go (`monivault_key_versions_in_use`).
    gauges: Option<Arc<Metrics>>,
}

impl Reporting {
    pub fn none() -> Self {
        Reporting::default()
    }

    pub fn new(client: Client, instance: String, metrics: Option<Arc<RotationMetrics>>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: EVENT_CONTROLLER.to_owned(),
                instance: Some(instance),
            },
        );
        Reporting {
            events: Some((client, recorder)),
            metrics,
            gauges: None,
        }
    }

    /// Also keeps `monivault_key_versions_in_use` from each check's listing (the leader
    /// has no cheaper way to count versions over every environment).
    pub fn with_key_gauges(mut self, gauges: Arc<Metrics>) -> Self {
        self.gauges = Some(gauges);
        self
    }

    /// Reports what a listing of environment Secrets found: each one that cannot be read
    /// in the log and their number in `monivault_unreadable_environments` (skipped, not
    /// fatal; the root key versions they could be under are kept), and the key versions
    /// held.
    pub(super) fn environments_listed(&self, listing: &Listing<String, Keyring>) {
        for unreadable in &listing.unreadable {
            tracing::warn!(
                secret = %unreadable.secret,
                namespace = unreadable.namespace.as_deref().unwrap_or("<unknown>"),
                reason = %unreadable.reason,
                "skipping an environment Secret that cannot be read; every root key version is kept"
            );
        }
        if let Some(m) = self.metrics() {
            m.unreadable_environments
                .set(i64::try_from(listing.unreadable.len()).unwrap_or(i64::MAX));
        }
        if let Some(gauges) = &self.gauges {
            let environments = listing
                .items
                .iter()
                .flat_map(|(_, stored)| stored.value.environments.values());
            let data = environments.clone().map(|e| e.data_keys.len()).sum();
            let sealing = environments.map(|e| e.sealing_keys.len()).sum();
            gauges.set_key_versions("data", data);
            gauges.set_key_versions("sealing", sealing);
        }
    }

    pub(super) fn metrics(&self) -> Option<&RotationMetrics> {
        self.metrics.as_deref()
    }

    /// A Normal Event on every VaultSection of `namespace`. Best effort: a rotation never
    /// fails because an Event could not be written.
    pub(super) async fn event(&self, namespace: &str, reason: &str, note: String) {
        let Some((client, recorder)) = &self.events else {
            return;
        };
        let api: Api<VaultSection> = Api::namespaced(client.clone(), namespace);
        let sections = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::debug!(namespace, error = %e, "cannot list sections for an event");
                return;
            }
        };
        let event = Event {
            type_: EventType::Normal,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Rotate".to_owned(),
            secondary: None,
        };
        for section in &sections {
            if let Err(e) = recorder.publish(&event, &section.object_ref(&())).await {
                tracing::debug!(namespace, error = %e, "cannot publish a rotation event");
            }
        }
    }
}
