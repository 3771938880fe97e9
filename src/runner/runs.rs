//! Test Now: each new `MonitorRun` runs once, at once, through the same path as a scheduled
//! check ([`Runner::execute`]), with the same host checks and scrubbing.
//!
//! A run of a saved monitor (`monitorRef`) needs two stamps: the run's, and the monitor's
//! current one. It uses only items both name, each the same object in both: if the monitor
//! now carries an item the run was not authorized for, nothing runs. A run's stamp is used
//! by one run only: among runs carrying the same stamp, the one created first, within a
//! few minutes of the stamp, runs; a copy of it on another run opens nothing.
//!
//! Finished runs are deleted after `ttlSecondsAfterFinished` (default one hour), and at
//! most `runs_kept_per_monitor` finished runs are kept per monitor. At most
//! [`MAX_UNFINISHED_RUNS_PER_MONITOR`] runs of one monitor are in flight at once (the
//! webhook refuses more; one that gets past fails with `TooManyRuns`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store as Cache};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::service::{Execution, FIELD_MANAGER, Runner, refused_by_stamp, scoped, time};
use crate::api::monitor_run::MAX_UNFINISHED_RUNS_PER_MONITOR;
use crate::api::{
    AssertionResult, Monitor, MonitorRun, MonitorRunStatus, MonitorSpec, RunPhase, RunResult,
};
use crate::stamp::{AuthorizedRefs, verify, verify_run};
use crate::store::Store;

/// Finished runs are kept this long unless the run says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// A run's stamp must be this close to the run's creation: a stamp copied onto a run
/// created later opens nothing.
const STAMP_WINDOW: Duration = Duration::from_secs(300);

/// How often finished runs are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Runs Test Now until the watch ends.
pub(crate) async fn run<S: Store>(runner: Arc<Runner<S>>) {
    let namespace = runner.settings.watch_namespace.clone();
    let (runs, writer) = reflector::store::<MonitorRun>();
    let events = reflector::reflector(
        writer,
        watcher(
            scoped::<MonitorRun>(&runner.client, namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let mut events = std::pin::pin!(events);
    let started: Arc<Mutex<InFlight>> = Arc::default();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(run) | watcher::Event::InitApply(run))) => {
                    let pending = run.status.as_ref().and_then(|s| s.phase).is_none_or(|p| p == RunPhase::Pending);
                    let uid = run.uid().unwrap_or_default();
                    if !pending || uid.is_empty() {
                        continue;
                    }
                    let start = started.lock().unwrap_or_else(|e| e.into_inner()).start(&uid, run_key(&run));
                    if start == Start::AlreadyStarted {
                        continue;
                    }
                    let (runner, runs, started) = (runner.clone(), runs.clone(), started.clone());
                    tokio::spawn(async move {
                        match start {
                            Start::Full => refuse_over_limit(&runner, &run).await,
                            _ => test_now(&runner, &runs, &run).await,
                        }
                        started.lock().unwrap_or_else(|e| e.into_inner()).finish(&uid);
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watching MonitorRuns failed; retrying"),
                None => return,
            },
            _ = sweep.tick() => sweep_finished(&runner, &runs).await,
        }
    }
}

/// Which runs count together against [`MAX_UNFINISHED_RUNS_PER_MONITOR`]: those of one
/// saved monitor, or (`None`) the inline runs of a namespace.
type RunKey = (String, Option<String>);

fn run_key(run: &MonitorRun) -> RunKey {
    (
        run.namespace().unwrap_or_default(),
        run.spec
            .monitor_ref
            .as_ref()
            .map(|r| r.name.as_str().to_owned()),
    )
}

/// What [`InFlight::start`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// Run it.
    Started,
    /// It is already being handled.
    AlreadyStarted,
    /// Its monitor has as many runs in flight as it may: fail it.
    Full,
}

/// The runs being handled, by uid, and how many of each [`RunKey`] are running.
#[derive(Default)]
struct InFlight {
    /// `None`: being failed as over the limit, which does not count.
    runs: HashMap<String, Option<RunKey>>,
    per_monitor: HashMap<RunKey, usize>,
}

impl InFlight {
    fn start(&mut self, uid: &str, key: RunKey) -> Start {
        if self.runs.contains_key(uid) {
            return Start::AlreadyStarted;
        }
        let count = self.per_monitor.entry(key.clone()).or_default();
        if *count >= MAX_UNFINISHED_RUNS_PER_MONITOR {
            self.runs.insert(uid.to_owned(), None);
            return Start::Full;
        }
        *count += 1;
        self.runs.insert(uid.to_owned(), Some(key));
        Start::Started
    }

    fn finish(&mut self, uid: &str) {
        let Some(Some(key)) = self.runs.remove(uid) else {
            return;
        };
        if let Some(count) = self.per_monitor.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_monitor.remove(&key);
            }
        }
    }
}

/// Fails a run whose monitor already has [`MAX_UNFINISHED_RUNS_PER_MONITOR`] runs in
/// flight: it sends nothing, and says why.
async fn refuse_over_limit<S: Store>(runner: &Runner<S>, run: &MonitorRun) {
    let runs = match &run.spec.monitor_ref {
        Some(r) => format!("Monitor {:?}", r.name.as_str()),
        None => "the namespace's inline runs".to_owned(),
    };
    let status = MonitorRunStatus {
        phase: Some(RunPhase::Failed),
        finished_at: Some(time(SystemTime::now())),
        result: Some(RunResult {
            passed: false,
            reason: Some("TooManyRuns".to_owned()),
            message: Some(format!(
                "{runs} has {MAX_UNFINISHED_RUNS_PER_MONITOR} runs in flight, as many as may run at once: nothing was sent; create the run again once they finish"
            )),
            ..RunResult::default()
        }),
        ..MonitorRunStatus::default()
    };
    if let Some(metrics) = &runner.metrics {
        metrics.run_finished(false);
    }
    write_status(runner, run, &status).await;
}

/// One Test Now, start to finish.
async fn test_now<S: Store>(runner: &Runner<S>, runs: &Cache<MonitorRun>, run: &MonitorRun) {
    let Ok(_permit) = runner.permits.acquire().await else {
        return;
    };
    let namespace = run.namespace().unwrap_or_default();
    let started = SystemTime::now();
    let mut status = MonitorRunStatus {
        phase: Some(RunPhase::Running),
        started_at: Some(time(started)),
        ..MonitorRunStatus::default()
    };
    if !write_status(runner, run, &status).await {
        return;
    }
    let execution = match authorize(runner, runs, run).await {
        Ok((spec, refs)) => runner.execute(&namespace, &spec, refs).await,
        Err(refused) => refused,
    };
    let passed = execution.passed();
    status.phase = Some(if passed {
        RunPhase::Succeeded
    } else {
        RunPhase::Failed
    });
    status.finished_at = Some(time(SystemTime::now()));
    status.result = Some(result_of(&execution));
    if let Some(metrics) = &runner.metrics {
        metrics.run_finished(passed);
    }
    if let Execution::Checked { report, refs } = &execution
        && !report.items_sent.is_empty()
    {
        tracing::info!(
            target: "monivault::audit",
            namespace,
            run = run.name_any(),
            user = %refs.user,
            items = ?report.items_sent.keys().collect::<Vec<_>>(),
            hosts = ?report.items_sent.values().flatten().collect::<Vec<_>>(),
            result = report.result.reason(),
            "a Test Now sent vault items"
        );
    }
    if let Execution::Refused {
        reason, message, ..
    } = &execution
        && *reason == "NotAuthorized"
    {
        runner
            .event(run, EventType::Warning, "NotAuthorized", message.clone())
            .await;
    }
    write_status(runner, run, &status).await;
}

/// The spec to run and the items it may carry, or why nothing runs.
async fn authorize<S: Store>(
    runner: &Runner<S>,
    runs: &Cache<MonitorRun>,
    run: &MonitorRun,
) -> Result<(MonitorSpec, AuthorizedRefs), Execution> {
    let not_authorized = |message: String| Execution::Refused {
        state: crate::api::MonitorState::NotAuthorized,
        reason: "NotAuthorized",
        message,
    };
    let run_refs = verify_run(&runner.keys, run)
        .await
        .map_err(refused_by_stamp)?;
    if let Some(message) = stamp_used_elsewhere(&runs.state(), run, &run_refs) {
        return Err(not_authorized(message));
    }
    if let Some(spec) = &run.spec.monitor {
        return Ok((spec.clone(), run_refs));
    }
    let Some(reference) = &run.spec.monitor_ref else {
        return Err(not_authorized("the run names no monitor".to_owned()));
    };
    let namespace = run.namespace().unwrap_or_default();
    let monitor = runner
        .monitors
        .get(&ObjectRef::<Monitor>::new(reference.name.as_str()).within(&namespace))
        .ok_or_else(|| Execution::Refused {
            state: crate::api::MonitorState::Down,
            reason: "MonitorMissing",
            message: format!("Monitor {:?} does not exist", reference.name.as_str()),
        })?;
    let monitor_refs = verify(&runner.keys, &monitor)
        .await
        .map_err(refused_by_stamp)?;
    // Only items both stamps name, each the very object both authorized.
    let outside: Vec<&str> = monitor_refs
        .items
        .iter()
        .filter(|(item, uid)| run_refs.items.get(*item) != Some(uid))
        .map(|(item, _)| item.as_str())
        .collect();
    if !outside.is_empty() {
        return Err(not_authorized(format!(
            "Monitor {:?} now carries vault item(s) {} that this run was not authorized for: create a new run",
            reference.name.as_str(),
            outside.join(", ")
        )));
    }
    Ok((monitor.spec.clone(), monitor_refs))
}

/// Why this run may not use its stamp: another run created first carries the same one, or
/// the stamp is older than the run by more than [`STAMP_WINDOW`].
fn stamp_used_elsewhere(
    runs: &[Arc<MonitorRun>],
    run: &MonitorRun,
    refs: &AuthorizedRefs,
) -> Option<String> {
    let created = run
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    let age = created.saturating_sub(refs.issued_at);
    if age < -30 || age > STAMP_WINDOW.as_secs() as i64 {
        return Some(
            "the run's admission stamp was not made for this run (it is older than the run by more than 5 minutes): create a new run".to_owned(),
        );
    }
    let first = runs
        .iter()
        .filter(|other| other.namespace() == run.namespace())
        .filter(|other| {
            crate::stamp::stamp_of(&other.metadata).is_some_and(|text| text.contains(&refs.mac))
        })
        .min_by_key(|other| {
            (
                other
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second())
                    .unwrap_or(i64::MAX),
                other.uid().unwrap_or_default(),
            )
        })?;
    (first.uid() != run.uid()).then(|| {
        format!(
            "the run's admission stamp belongs to MonitorRun {:?}: each stamp runs once",
            first.name_any()
        )
    })
}

fn result_of(execution: &Execution) -> RunResult {
    match execution {
        Execution::Refused {
            reason, message, ..
        } => RunResult {
            passed: false,
            reason: Some((*reason).to_owned()),
            message: Some(message.clone()),
            ..RunResult::default()
        },
        Execution::Checked { report, .. } => RunResult {
            passed: report.result.passed(),
            reason: Some(report.result.reason().to_owned()),
            status_code: report.status_code,
            response_time: report.response_time.map(crate::api::Duration::from_std),
            assertions: report
                .assertions
                .iter()
                .map(|a| AssertionResult {
                    assertion: a.assertion.clone(),
                    passed: a.passed,
                    message: (!a.detail.is_empty()).then(|| a.detail.clone()),
                })
                .collect(),
            message: (!report.message.is_empty()).then(|| report.message.clone()),
            body_excerpt: report.body_excerpt.clone(),
        },
    }
}

/// Writes the run's status; false if the run is gone.
async fn write_status<S: Store>(
    runner: &Runner<S>,
    run: &MonitorRun,
    status: &MonitorRunStatus,
) -> bool {
    let namespace = run.namespace().unwrap_or_default();
    let api: Api<MonitorRun> = Api::namespaced(runner.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": "monivault.io/v1alpha1",
        "kind": "MonitorRun",
        "status": status,
    });
    match api
        .patch_status(
            &run.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(namespace, run = run.name_any(), error = %e, "cannot write the run's status");
            false
        }
    }
}

/// Deletes finished runs past their time to live, and the oldest finished runs of a
/// monitor beyond the number kept.
async fn sweep_finished<S: Store>(runner: &Runner<S>, runs: &Cache<MonitorRun>) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let expired = runs_to_delete(&runs.state(), now, runner.settings.runs_kept_per_monitor);
    for run in expired {
        let api: Api<MonitorRun> =
            Api::namespaced(runner.client.clone(), &run.namespace().unwrap_or_default());
        if let Err(e) = api.delete(&run.name_any(), &DeleteParams::default()).await {
            tracing::debug!(run = run.name_any(), error = %e, "cannot delete a finished run");
        }
    }
}

/// The finished runs to delete at `now` (Unix seconds): those past their time to live,
/// and, per monitor (the inline runs of a namespace together), the oldest beyond `kept`.
/// Unfinished runs are never deleted.
fn runs_to_delete(runs: &[Arc<MonitorRun>], now: i64, kept: usize) -> Vec<Arc<MonitorRun>> {
    // (namespace, monitor) → (finished at, run).
    type Finished = Vec<(i64, Arc<MonitorRun>)>;
    let mut finished: BTreeMap<(String, String), Finished> = BTreeMap::new();
    let mut expired = Vec::new();
    for run in runs {
        let Some(status) = &run.status else { continue };
        if !status.phase.is_some_and(RunPhase::is_finished) {
            continue;
        }
        let finished_at = status
            .finished_at
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0);
        let ttl = run
            .spec
            .ttl_seconds_after_finished
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(DEFAULT_TTL);
        let age = now.saturating_sub(finished_at);
        if age >= ttl.as_secs() as i64 {
            expired.push(run.clone());
            continue;
        }
        let monitor = run
            .spec
            .monitor_ref
            .as_ref()
            .map(|r| r.name.as_str().to_owned())
            .unwrap_or_default();
        finished
            .entry((run.namespace().unwrap_or_default(), monitor))
            .or_default()
            .push((finished_at, run.clone()));
    }
    for (_, mut group) in finished {
        group.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        expired.extend(group.into_iter().skip(kept).map(|(_, run)| run));
    }
    expired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, uid: &str, created: &str, stamp: &str) -> Arc<MonitorRun> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
                "metadata": {"name": name, "namespace": "shop", "uid": uid,
                             "creationTimestamp": created,
                             "annotations": {crate::stamp::STAMP_ANNOTATION: stamp}},
                "spec": {"monitorRef": {"name": "shop"}},
            }))
            .expect("run"),
        )
    }

    fn refs(mac: &str, issued_at: i64) -> AuthorizedRefs {
        AuthorizedRefs {
            user: "alice".into(),
            items: Default::default(),
            issued_at,
            mac: mac.into(),
        }
    }

    /// 2026-12-03T10:00:00Z.
    const ISSUED: i64 = 1_796_292_000;

    #[test]
    fn at_most_the_limit_of_one_monitors_runs_are_in_flight() {
        let mut flight = InFlight::default();
        let shop = || ("shop".to_owned(), Some("shop".to_owned()));
        for i in 0..MAX_UNFINISHED_RUNS_PER_MONITOR {
            assert_eq!(flight.start(&format!("uid-{i}"), shop()), Start::Started);
        }
        assert_eq!(flight.start("uid-0", shop()), Start::AlreadyStarted);
        assert_eq!(flight.start("uid-over", shop()), Start::Full);
        assert_eq!(flight.start("uid-over", shop()), Start::AlreadyStarted);
        // Other monitors, the inline runs and other namespaces count apart.
        let other = ("shop".to_owned(), Some("other".to_owned()));
        assert_eq!(flight.start("uid-other", other), Start::Started);
        assert_eq!(
            flight.start("uid-inline", ("shop".into(), None)),
            Start::Started
        );
        assert_eq!(
            flight.start("uid-ns", ("bank".into(), Some("shop".into()))),
            Start::Started
        );
        // A refused run frees no place; a finished one does.
        flight.finish("uid-over");
        assert_eq!(flight.start("uid-next", shop()), Start::Full);
        flight.finish("uid-3");
        assert_eq!(flight.start("uid-last", shop()), Start::Started);
    }

    fn finished(
        name: &str,
        monitor: Option<&str>,
        finished_at: i64,
        ttl: Option<u32>,
    ) -> Arc<MonitorRun> {
        let spec = match monitor {
            Some(m) => json!({"monitorRef": {"name": m}, "ttlSecondsAfterFinished": ttl}),
            None => {
                json!({"monitor": {"url": "https://shop.example.com/"}, "ttlSecondsAfterFinished": ttl})
            }
        };
        let mut run: MonitorRun = serde_json::from_value(json!({
            "apiVersion": "monivault.io/v1alpha1", "kind": "MonitorRun",
            "metadata": {"name": name, "namespace": "shop", "uid": name},
            "spec": spec,
        }))
        .expect("run");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(finished_at as u64);
        run.status = Some(MonitorRunStatus {
            phase: Some(RunPhase::Succeeded),
            finished_at: Some(time(at)),
            ..MonitorRunStatus::default()
        });
        Arc::new(run)
    }

    #[test]
    fn finished_runs_past_their_ttl_or_beyond_the_kept_number_are_deleted() {
        let now = ISSUED;
        let mut runs: Vec<Arc<MonitorRun>> = (0..12)
            .map(|i| finished(&format!("shop-{i}"), Some("shop"), now - 100 + i, None))
            .collect();
        runs.push(finished("expired", Some("other"), now - 61, Some(60)));
        runs.push(finished("young", Some("other"), now - 59, Some(60)));
        runs.extend((0..3).map(|i| finished(&format!("inline-{i}"), None, now - i, None)));
        let mut unfinished = (*finished("running", Some("shop"), 0, Some(0))).clone();
        unfinished.status = Some(MonitorRunStatus {
            phase: Some(RunPhase::Running),
            ..MonitorRunStatus::default()
        });
        runs.push(Arc::new(unfinished));

        let deleted = |kept| {
            let mut names: Vec<String> = runs_to_delete(&runs, now, kept)
                .iter()
                .map(|r| r.name_any())
                .collect();
            names.sort();
            names
        };
        // Ten kept per monitor: the two oldest of shop's twelve go.
        assert_eq!(deleted(10), ["expired", "shop-0", "shop-1"]);
        // Inline runs count together, as one monitor's.
        assert_eq!(
            deleted(2),
            [
                "expired", "inline-2", "shop-0", "shop-1", "shop-2", "shop-3", "shop-4", "shop-5",
                "shop-6", "shop-7", "shop-8", "shop-9"
            ]
        );
    }

    #[test]
    fn a_stamp_runs_once_on_the_run_created_first() {
        let stamp = r#"{"mac":"MAC-A"}"#;
        let original = run("now-x1", "uid-1", "2026-12-03T10:00:01Z", stamp);
        let copy = run("now-x2", "uid-2", "2026-12-03T10:00:05Z", stamp);
        let other = run(
            "other",
            "uid-3",
            "2026-12-03T09:59:00Z",
            r#"{"mac":"MAC-B"}"#,
        );
        let all = vec![copy.clone(), original.clone(), other];
        let refs = refs("MAC-A", ISSUED);
        assert_eq!(stamp_used_elsewhere(&all, &original, &refs), None);
        let refused = stamp_used_elsewhere(&all, &copy, &refs).expect("refused");
        assert!(refused.contains("now-x1"), "{refused}");
    }

    #[test]
    fn a_stamp_older_than_its_run_by_more_than_the_window_opens_nothing() {
        let late = run(
            "late",
            "uid-1",
            "2026-12-03T10:06:00Z",
            r#"{"mac":"MAC-A"}"#,
        );
        let all = vec![late.clone()];
        assert!(stamp_used_elsewhere(&all, &late, &refs("MAC-A", ISSUED)).is_some());
        let soon = run(
            "soon",
            "uid-2",
            "2026-12-03T10:04:00Z",
            r#"{"mac":"MAC-A"}"#,
        );
        assert_eq!(
            stamp_used_elsewhere(std::slice::from_ref(&soon), &soon, &refs("MAC-A", ISSUED)),
            None
        );
    }
}
