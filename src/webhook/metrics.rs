//! The webhooks' Prometheus metrics: requests by webhook and outcome, and how long the
//! decision took. Labels are the webhook's name and a fixed outcome word, never an object
//! name or a message.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Route;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    webhook: &'static str,
    /// `allowed`, `denied` (a decision) or `error` (code 500 and up: we could not decide).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabel {
    webhook: &'static str,
}

#[derive(Debug)]
pub struct AdmissionMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<WebhookLabel, Histogram>,
}

impl Route {
    /// The route as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Route::MutateVaultItems => "mutate_vaultitems",
            Route::MutateMonitors => "mutate_monitors",
            Route::ValidateVaultItems => "validate_vaultitems",
            Route::ValidateMonitors => "validate_monitors",
            Route::ValidateDeletes => "validate_deletes",
        }
    }
}

impl AdmissionMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = AdmissionMetrics {
            requests: Family::default(),
            // 1 ms to ~4 s: a decision is a few SubjectAccessReviews or one seal.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 13))
            }),
        };
        // Every webhook's series exist from the start, at 0.
        for route in Route::ALL {
            for outcome in ["allowed", "denied", "error"] {
                let _ = metrics.requests.get_or_create(&RequestLabels {
                    webhook: route.label(),
                    outcome,
                });
            }
        }
        registry.register(
            "admission_requests",
            "Admission requests answered, by webhook and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to decide an admission request, by webhook",
            metrics.duration.clone(),
        );
        metrics
    }

    pub(crate) fn observe(&self, route: Route, allowed: bool, code: u16, took: Duration) {
        let outcome = match (allowed, code) {
            (true, _) => "allowed",
            (false, 500..) => "error",
            (false, _) => "denied",
        };
        self.requests
            .get_or_create(&RequestLabels {
                webhook: route.label(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&WebhookLabel {
                webhook: route.label(),
            })
            .observe(took.as_secs_f64());
    }
}
