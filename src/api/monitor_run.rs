//! `MonitorRun` (`mrun`): "Test Now", one on-demand run of a saved monitor or of an unsaved
//! monitor spec. The result goes in its status. The spec is immutable, so what was
//! authorized is what runs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;
use super::duration::Duration;
use super::monitor::MonitorSpec;
use super::names::ObjectName;

/// Unfinished runs (no phase yet, `Pending` or `Running`) that one saved monitor may have
/// at once; inline runs (`spec.monitor`) of a namespace count together, as one monitor's.
/// Each run is a request to the monitor's host and a task in the runner, so without a
/// bound whoever may create runs could flood that host and crowd out every other run.
/// The webhook refuses the run over the limit; the runner fails it if one gets past.
pub const MAX_UNFINISHED_RUNS_PER_MONITOR: usize = 10;

/// How long after its creation an unfinished run still counts against
/// [`MAX_UNFINISHED_RUNS_PER_MONITOR`]: far longer than a run takes (a check times out
/// within 120 s), so that runs a crashed leader left `Running` cannot lock their monitor
/// out for good.
pub const UNFINISHED_RUN_COUNTS_FOR_SECONDS: i64 = 600;

/// One on-demand run. Creating it needs the use verb on every item the monitor uses.
// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "monivault.io",
    version = "v1alpha1",
    kind = "MonitorRun",
    namespaced,
    status = "MonitorRunStatus",
    derive = "PartialEq",
    shortname = "mrun",
    category = "monivault",
    cel,
    doc = "One on-demand run (Test Now) of a saved Monitor or of an inline monitor spec. The result is in status.",
    selectable = ".spec.monitorRef.name",
    printcolumn(
        name = "Monitor",
        type_ = "string",
        json_path = ".spec.monitorRef.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Status Code",
        type_ = "integer",
        json_path = ".status.result.statusCode"
    ),
    printcolumn(
        name = "Response Time",
        type_ = "string",
        json_path = ".status.result.responseTime"
    ),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.result.reason"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.monitorRef) != has(self.monitor)").message("set exactly one of monitorRef (a saved Monitor) or monitor (an inline Monitor spec)"))]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: create a new MonitorRun to run again"))]
#[serde(rename_all = "camelCase")]
pub struct MonitorRunSpec {
    /// Run this saved Monitor, as it is when the run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_ref: Option<MonitorRef>,

    /// Run this monitor spec, which need not be saved as a Monitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<MonitorSpec>,

    /// How long the run is kept once finished, in seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604_800))]
    pub ttl_seconds_after_finished: Option<u32>,
}

impl MonitorRun {
    /// Whether the run has not finished.
    pub fn is_unfinished(&self) -> bool {
        !self
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(RunPhase::is_finished)
    }

    /// Whether the run counts against [`MAX_UNFINISHED_RUNS_PER_MONITOR`] at `now` (Unix
    /// seconds): unfinished, and created less than
    /// [`UNFINISHED_RUN_COUNTS_FOR_SECONDS`] ago.
    pub fn counts_as_waiting(&self, now: i64) -> bool {
        let created = self
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        self.is_unfinished()
            && created.is_none_or(|c| now.saturating_sub(c) < UNFINISHED_RUN_COUNTS_FOR_SECONDS)
    }
}

impl MonitorRunSpec {
    /// A run of the saved monitor `name`.
    pub fn of_monitor(name: impl Into<ObjectName>) -> Self {
        MonitorRunSpec {
            monitor_ref: Some(MonitorRef { name: name.into() }),
            monitor: None,
            ttl_seconds_after_finished: None,
        }
    }

    /// A run of an unsaved monitor spec.
    pub fn of_spec(spec: MonitorSpec) -> Self {
        MonitorRunSpec {
            monitor_ref: None,
            monitor: Some(spec),
            ttl_seconds_after_finished: None,
        }
    }
}

/// `monitorRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitorRef {
    /// The Monitor's name, in the run's namespace.
    pub name: ObjectName,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunPhase {
    /// Accepted, not started.
    Pending,
    /// The request is in flight.
    Running,
    /// Finished, and every assertion held.
    Succeeded,
    /// Finished with a failed assertion, or could not run; `result.message` says why.
    Failed,
}

impl RunPhase {
    /// Whether the run is over; the runner never touches a finished run again.
    pub fn is_finished(self) -> bool {
        matches!(self, RunPhase::Succeeded | RunPhase::Failed)
    }
}

/// Progress and result of a run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitorRunStatus {
    /// Where the run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,

    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// When the request started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// What the check saw. Scrubbed of every secret it used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
}

/// What one check saw.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// Whether every assertion held.
    pub passed: bool,

    /// A short, stable word for the outcome: `Passed`, `AssertionFailed`,
    /// `RedirectBlocked`, `InsecureTransport`, `HostNotAllowed`, `NotAuthorized`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// The HTTP status, if a response arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,

    /// How long the response took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time: Option<Duration>,

    /// Each assertion and whether it held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<AssertionResult>,

    /// Why it failed, for people. Scrubbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The start of the response body, at most 1 KiB. Scrubbed of every secret the run used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_excerpt: Option<String>,
}

/// One assertion of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssertionResult {
    /// Which assertion, e.g. `statusCodes` or `bodyContains[0]`.
    pub assertion: String,
    /// Whether it held.
    pub passed: bool,
    /// What was seen, for people. Scrubbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(created: Option<i64>, phase: Option<RunPhase>) -> MonitorRun {
        let mut run: MonitorRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
            "metadata": {"name": "r"}, "spec": {"monitorRef": {"name": "shop"}},
        }))
        .expect("run");
        run.metadata.creation_timestamp = created
            .map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("a valid time")));
        run.status = Some(MonitorRunStatus {
            phase,
            ..MonitorRunStatus::default()
        });
        run
    }

    #[test]
    fn a_run_stranded_unfinished_stops_counting_against_the_cap() {
        let now = 1_800_000_000;
        let fresh = now - UNFINISHED_RUN_COUNTS_FOR_SECONDS + 1;
        let stale = now - UNFINISHED_RUN_COUNTS_FOR_SECONDS;
        for phase in [None, Some(RunPhase::Pending), Some(RunPhase::Running)] {
            assert!(run(Some(fresh), phase).counts_as_waiting(now), "{phase:?}");
            assert!(
                run(None, phase).counts_as_waiting(now),
                "{phase:?}, no time yet"
            );
            assert!(
                !run(Some(stale), phase).counts_as_waiting(now),
                "{phase:?}: left by a leader that is gone"
            );
        }
        for phase in [RunPhase::Succeeded, RunPhase::Failed] {
            assert!(!run(Some(fresh), Some(phase)).counts_as_waiting(now));
        }
    }
}
