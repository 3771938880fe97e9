//! Where rotation reports: Events on an environment's VaultSections, and metrics.

use std::sync::Arc;

use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::api::vault_section::VaultSection;

use super::RotationMetrics;

/// The Event reporter of rotation Events.
const EVENT_CONTROLLER: &str = "monivault-rotation";

/// Where rotation reports: Events on the environment's VaultSections, and metrics.
/// Both optional, so the engine runs the same in unit tests and in `monivault rotate`.
#[derive(Clone, Default)]
pub struct Reporting {
    events: Option<(Client, Recorder)>,
    metrics: Option<Arc<RotationMetrics>>,
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
