//! The runner's Prometheus metrics, per monitor as blackbox_exporter reports per target:
//! labels `namespace` and `monitor` (object names, which users choose and see anyway), and
//! a fixed result word. Never a URL, a host or a message: those may hold anything.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MonitorLabels {
    namespace: String,
    monitor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    namespace: String,
    monitor: String,
    /// `CheckResult::reason`, or a resolution reason (`NotAuthorized`, `ItemMissing`, ...).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    /// `Succeeded` or `Failed`.
    phase: &'static str,
}

#[derive(Debug)]
pub struct RunnerMetrics {
    up: Family<MonitorLabels, Gauge>,
    duration: Family<MonitorLabels, Histogram>,
    checks: Family<ResultLabels, Counter>,
    runs: Family<PhaseLabel, Counter>,
    in_flight: Gauge,
}

impl RunnerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = RunnerMetrics {
            up: Family::default(),
            // 5 ms to ~40 s: a check is bounded by its timeout (at most 120 s).
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            checks: Family::default(),
            runs: Family::default(),
            in_flight: Gauge::default(),
        };
        registry.register(
            "monitor_up",
            "1 if the monitor's last check passed, 0 if not",
            metrics.up.clone(),
        );
        registry.register(
            "monitor_check_duration_seconds",
            "How long checks took, from the first request to the judged response",
            metrics.duration.clone(),
        );
        registry.register(
            "monitor_checks",
            "Scheduled checks, by monitor and result",
            metrics.checks.clone(),
        );
        registry.register(
            "monitor_runs",
            "Test Now runs finished, by phase",
            metrics.runs.clone(),
        );
        registry.register(
            "monitor_checks_in_flight",
            "Checks running now",
            metrics.in_flight.clone(),
        );
        metrics
    }

    pub(crate) fn checked(
        &self,
        namespace: &str,
        monitor: &str,
        result: &'static str,
        passed: bool,
        took: Option<Duration>,
    ) {
        let labels = MonitorLabels {
            namespace: namespace.to_owned(),
            monitor: monitor.to_owned(),
        };
        self.up.get_or_create(&labels).set(i64::from(passed));
        if let Some(took) = took {
            self.duration
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
        }
        self.checks
            .get_or_create(&ResultLabels {
                namespace: labels.namespace,
                monitor: labels.monitor,
                result,
            })
            .inc();
    }

    /// Drops a deleted monitor's series (counters included: the monitor is gone).
    pub(crate) fn forget(&self, namespace: &str, monitor: &str) {
        let labels = MonitorLabels {
            namespace: namespace.to_owned(),
            monitor: monitor.to_owned(),
        };
        self.up.remove(&labels);
        self.duration.remove(&labels);
    }

    pub(crate) fn run_finished(&self, succeeded: bool) {
        let phase = if succeeded { "Succeeded" } else { "Failed" };
        self.runs.get_or_create(&PhaseLabel { phase }).inc();
    }

    pub(crate) fn started(&self) {
        self.in_flight.inc();
    }

    pub(crate) fn finished(&self) {
        self.in_flight.dec();
    }
}
