//! The runner as a service on the leader: scheduled checks of every `Monitor`, and "Test
//! Now" `MonitorRun`s ([`super::runs`]), through one path: verify the admission stamp,
//! resolve the items it names, run the check, report what it saw.
//!
//! Scheduling: one queue of due times ([`super::schedule`]); a monitor never runs twice at
//! once (a tick that finds the last check still running is skipped), checks share a
//! global concurrency bound, and each check has its own timeout. A spec change takes
//! effect at the next tick (the check reads the monitor as cached then); a deletion stops
//! the monitor at once, in-flight check included.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store as Cache};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::time::DelayQueue;

use super::check::run_check;
use super::metrics::RunnerMetrics;
use super::network::NetworkPolicy;
use super::report::CheckReport;
use super::resolve::{ResolveError, StoreCache, resolve};
use super::schedule::{next_due, phase};
use crate::api::condition::{ConditionStatus, READY, new_condition, set_condition};
use crate::api::{Monitor, MonitorSpec, MonitorState, MonitorStatus, VaultItem};
use crate::stamp::{AuthorizedRefs, StampError, verify};
use crate::store::{Keys, Store, layout};

/// The server-side apply field manager of every status the runner writes.
pub const FIELD_MANAGER: &str = "monivault-runner";

/// A status that did not change state is written at most this often.
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// How the runner runs.
#[derive(Clone, Debug)]
pub struct RunnerSettings {
    /// Act on this namespace only (default: every namespace).
    pub watch_namespace: Option<String>,
    /// This replica's name, for Events.
    pub instance: String,
    /// Checks (scheduled and Test Now) running at once, at most.
    pub concurrency: usize,
    /// Where checks may connect.
    pub network: NetworkPolicy,
    /// Finished MonitorRuns kept per monitor; older ones are deleted.
    pub runs_kept_per_monitor: usize,
    /// The operator's namespace, where the store's records live (watched, so a check reads
    /// its record from memory); `None` reads every record from the API server.
    pub store_namespace: Option<String>,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            watch_namespace: None,
            instance: "monivault".to_owned(),
            concurrency: 64,
            network: NetworkPolicy::default(),
            runs_kept_per_monitor: 10,
            store_namespace: None,
        }
    }
}

/// What every check shares.
pub struct Runner<S> {
    pub(crate) client: Client,
    pub(crate) keys: Arc<Keys<S>>,
    pub(crate) items: Cache<VaultItem>,
    pub(crate) stored: StoreCache,
    pub(crate) monitors: Cache<Monitor>,
    pub(crate) network: NetworkPolicy,
    pub(crate) permits: Semaphore,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: Option<Arc<RunnerMetrics>>,
    pub(crate) settings: RunnerSettings,
    memory: Mutex<HashMap<ObjectRef<Monitor>, Memory>>,
}

/// What the runner remembers of a monitor between its checks.
#[derive(Clone, Debug, Default)]
struct Memory {
    /// The state last written to status, and when.
    written: Option<(MonitorState, Instant)>,
    consecutive_failures: u32,
    /// The MAC of the stamp the last check that sent items ran under.
    stamp_mac: Option<String>,
}

/// How one execution ended before or after the check.
pub(crate) enum Execution {
    /// No request was sent: the stamp or an item refused it.
    Refused {
        state: MonitorState,
        reason: &'static str,
        message: String,
    },
    /// The check ran (requests may or may not have gone out: see the report).
    Checked {
        report: Box<CheckReport>,
        refs: AuthorizedRefs,
    },
}

impl Execution {
    pub(crate) fn passed(&self) -> bool {
        matches!(self, Execution::Checked { report, .. } if report.result.passed())
    }

    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Execution::Refused { reason, .. } => reason,
            Execution::Checked { report, .. } => report.result.reason(),
        }
    }
}

impl<S: Store> Runner<S> {
    /// Resolves what `refs` authorizes and runs the check of `spec`: the one path of
    /// scheduled checks and Test Now.
    pub(crate) async fn execute(
        &self,
        namespace: &str,
        spec: &MonitorSpec,
        refs: AuthorizedRefs,
    ) -> Execution {
        let resolved = match resolve(
            &self.keys,
            &self.stored,
            &self.items,
            namespace,
            spec,
            &refs,
        )
        .await
        {
            Ok(resolved) => resolved,
            Err(e) => return refused_by_resolution(e),
        };
        let report = run_check(spec, &resolved.items, &resolved.trust, &self.network).await;
        // `resolved` is dropped here: every plaintext is wiped.
        Execution::Checked {
            report: Box::new(report),
            refs,
        }
    }

    /// One scheduled check of the monitor at `key`, as it is cached now.
    async fn check_monitor(&self, key: &ObjectRef<Monitor>) {
        let Ok(_permit) = self.permits.acquire().await else {
            return;
        };
        let Some(monitor) = self.monitors.get(key) else {
            return;
        };
        let namespace = monitor.namespace().unwrap_or_default();
        let started = SystemTime::now();
        if monitor.spec.paused {
            let paused = Execution::Refused {
                state: MonitorState::Paused,
                reason: "Paused",
                message: "spec.paused is set: no scheduled check runs (MonitorRuns still do)"
                    .to_owned(),
            };
            self.report(&monitor, started, &paused).await;
            return;
        }
        if let Some(metrics) = &self.metrics {
            metrics.started();
        }
        let execution = match verify(&self.keys, &monitor).await {
            Ok(refs) => self.execute(&namespace, &monitor.spec, refs).await,
            Err(e) => refused_by_stamp(e),
        };
        if let Some(metrics) = &self.metrics {
            metrics.finished();
            let took = match &execution {
                Execution::Checked { report, .. } => report.response_time,
                Execution::Refused { .. } => None,
            };
            metrics.checked(
                &namespace,
                &monitor.name_any(),
                execution.reason(),
                execution.passed(),
                took,
            );
        }
        self.audit(&monitor, &execution).await;
        self.report(&monitor, started, &execution).await;
    }

    /// The audit trail of a check that sent vault items: a structured log line always,
    /// and an Event the first time the monitor uses items under a new stamp.
    async fn audit(&self, monitor: &Monitor, execution: &Execution) {
        let Execution::Checked { report, refs } = execution else {
            return;
        };
        if report.items_sent.is_empty() {
            return;
        }
        let items: BTreeSet<&str> = report.items_sent.keys().map(String::as_str).collect();
        let hosts: BTreeSet<&str> = report
            .items_sent
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        tracing::info!(
            target: "monivault::audit",
            namespace = monitor.namespace().unwrap_or_default(),
            monitor = monitor.name_any(),
            user = %refs.user,
            items = ?items,
            hosts = ?hosts,
            result = report.result.reason(),
            "a check sent vault items"
        );
        let key = ObjectRef::from_obj(monitor);
        let first_under_stamp = {
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            let entry = memory.entry(key).or_default();
            let first = entry.stamp_mac.as_deref() != Some(refs.mac.as_str());
            entry.stamp_mac = Some(refs.mac.clone());
            first
        };
        if first_under_stamp {
            let note = format!(
                "sent vault item(s) {} to {}, as authorized for {:?}",
                items.into_iter().collect::<Vec<_>>().join(", "),
                hosts.into_iter().collect::<Vec<_>>().join(", "),
                refs.user
            );
            self.event(monitor, EventType::Normal, "VaultItemsUsed", note)
                .await;
        }
    }

    /// Writes the monitor's status when its state changed, or at most once a minute, and
    /// an Event on every change between Up, Down and NotAuthorized.
    async fn report(&self, monitor: &Monitor, started: SystemTime, execution: &Execution) {
        let key = ObjectRef::from_obj(monitor);
        let previous = monitor.status.clone().unwrap_or_default();
        let (state, message) = match execution {
            Execution::Refused { state, message, .. } => (*state, message.clone()),
            Execution::Checked { report, .. } => {
                let state = if report.result.passed() {
                    MonitorState::Up
                } else {
                    MonitorState::Down
                };
                (state, report.message.clone())
            }
        };
        let (write, failures, old_state) = {
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            let entry = memory.entry(key).or_insert_with(|| Memory {
                consecutive_failures: previous.consecutive_failures,
                ..Memory::default()
            });
            entry.consecutive_failures = match state {
                MonitorState::Up | MonitorState::Paused => 0,
                _ => entry.consecutive_failures.saturating_add(1),
            };
            let old_state = entry
                .written
                .map(|(state, _)| state)
                .or(previous.state)
                .unwrap_or(MonitorState::Unknown);
            let due = entry
                .written
                .is_none_or(|(_, at)| at.elapsed() >= STATUS_EVERY);
            let generation_moved = previous.observed_generation != monitor.metadata.generation;
            let write = old_state != state || due || generation_moved;
            if write {
                entry.written = Some((state, Instant::now()));
            }
            (write, entry.consecutive_failures, old_state)
        };
        if old_state != state && state != MonitorState::Paused {
            let (kind, reason) = match state {
                MonitorState::Up => (EventType::Normal, "MonitorUp"),
                MonitorState::NotAuthorized => (EventType::Warning, "NotAuthorized"),
                _ => (EventType::Warning, "MonitorDown"),
            };
            self.event(monitor, kind, reason, message.clone()).await;
        }
        if !write {
            return;
        }
        let mut status = MonitorStatus {
            state: Some(state),
            conditions: previous.conditions.clone(),
            last_run_at: previous.last_run_at.clone(),
            response_time: previous.response_time.clone(),
            status_code: previous.status_code,
            consecutive_failures: failures,
            message: (!message.is_empty()).then_some(message.clone()),
            observed_generation: monitor.metadata.generation,
        };
        if let Execution::Checked { report, .. } = execution {
            status.last_run_at = Some(time(started));
            status.response_time = report.response_time.map(crate::api::Duration::from_std);
            status.status_code = report.status_code;
        }
        let ready = match state {
            MonitorState::Up => (ConditionStatus::True, "CheckPassed"),
            MonitorState::Down => (ConditionStatus::False, execution.reason()),
            MonitorState::NotAuthorized => (ConditionStatus::False, "NotAuthorized"),
            MonitorState::Paused => (ConditionStatus::False, "Paused"),
            MonitorState::Unknown => (ConditionStatus::Unknown, "NotRunYet"),
        };
        set_condition(
            &mut status.conditions,
            new_condition(
                READY,
                ready.0,
                ready.1,
                message,
                monitor.metadata.generation,
                time(SystemTime::now()),
            ),
        );
        let namespace = monitor.namespace().unwrap_or_default();
        let api: Api<Monitor> = Api::namespaced(self.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": "monivault.io/v1alpha1",
            "kind": "Monitor",
            "status": status,
        });
        if let Err(e) = api
            .patch_status(
                &monitor.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            tracing::warn!(
                namespace,
                monitor = monitor.name_any(),
                error = %e,
                "cannot write the monitor's status"
            );
            // Try again at the next check.
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = memory.get_mut(&ObjectRef::from_obj(monitor)) {
                entry.written = None;
            }
        }
    }

    pub(crate) async fn event<K>(&self, object: &K, kind: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: kind,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Check".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(error = %e, "cannot publish an event");
        }
    }

    fn forget(&self, key: &ObjectRef<Monitor>) {
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.remove(key);
        if let Some(metrics) = &self.metrics {
            metrics.forget(key.namespace.as_deref().unwrap_or_default(), &key.name);
        }
    }
}

pub(crate) fn refused_by_stamp(error: StampError) -> Execution {
    let state = match error {
        StampError::Keys(_) => MonitorState::Down,
        _ => MonitorState::NotAuthorized,
    };
    let reason = match error {
        StampError::Keys(_) => "KeysUnavailable",
        _ => "NotAuthorized",
    };
    Execution::Refused {
        state,
        reason,
        message: error.to_string(),
    }
}

pub(crate) fn refused_by_resolution(error: ResolveError) -> Execution {
    let state = if error.is_authorization() {
        MonitorState::NotAuthorized
    } else {
        MonitorState::Down
    };
    Execution::Refused {
        state,
        reason: error.reason(),
        message: error.to_string(),
    }
}

pub(crate) fn time(at: SystemTime) -> Time {
    let nanos = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let timestamp = i128::try_from(nanos)
        .ok()
        .and_then(|n| k8s_openapi::jiff::Timestamp::from_nanosecond(n).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Time(timestamp)
}

/// An API over every namespace, or over the one the runner is scoped to.
pub(crate) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Where a monitor sits in the queue.
struct Slot {
    key: tokio_util::time::delay_queue::Key,
    interval: Duration,
    phase: Duration,
}

/// Runs scheduled checks and Test Now until `shutdown` resolves. Call it on the leader.
pub async fn run<S: Store>(
    client: Client,
    keys: Arc<Keys<S>>,
    settings: RunnerSettings,
    metrics: Option<Arc<RunnerMetrics>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let namespace = settings.watch_namespace.clone();
    let (items, item_writer) = reflector::store::<VaultItem>();
    let item_cache = reflector::reflector(
        item_writer,
        watcher(
            scoped::<VaultItem>(&client, namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .for_each(|_| futures::future::ready(()));
    // The item records, watched: a check reads its record from memory.
    let (record_cache, record_watch) = match settings.store_namespace.clone() {
        Some(store_namespace) => {
            let (records, writer) = reflector::store::<Secret>();
            let api: Api<Secret> = Api::namespaced(client.clone(), &store_namespace);
            let watch = reflector::reflector(
                writer,
                watcher(
                    api,
                    watcher::Config::default().labels(&layout::record_selector()),
                )
                .default_backoff(),
            )
            .for_each(|_| futures::future::ready(()));
            (
                Some((records, store_namespace)),
                futures::future::Either::Left(watch),
            )
        }
        None => (
            None,
            futures::future::Either::Right(std::future::pending::<()>()),
        ),
    };
    let (monitors, monitor_writer) = reflector::store::<Monitor>();
    let monitor_events = reflector::reflector(
        monitor_writer,
        watcher(
            scoped::<Monitor>(&client, namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(settings.instance.clone()),
        },
    );
    let runner = Arc::new(Runner {
        client: client.clone(),
        keys,
        items,
        stored: StoreCache::new(record_cache),
        monitors,
        network: settings.network.clone(),
        permits: Semaphore::new(settings.concurrency.max(1)),
        recorder,
        metrics,
        settings,
        memory: Mutex::new(HashMap::new()),
    });
    let runs = super::runs::run(runner.clone());
    tokio::select! {
        () = item_cache => tracing::error!("the runner's item cache stopped"),
        () = record_watch => tracing::error!("the runner's record cache stopped"),
        () = schedule(runner.clone(), monitor_events) => {},
        () = runs => {},
        () = shutdown => {},
    }
}

/// The scheduling loop over monitor watch events.
async fn schedule<S: Store>(
    runner: Arc<Runner<S>>,
    events: impl futures::Stream<Item = Result<watcher::Event<Monitor>, watcher::Error>>,
) {
    let mut events = std::pin::pin!(events);
    let mut queue: DelayQueue<ObjectRef<Monitor>> = DelayQueue::new();
    let mut slots: HashMap<ObjectRef<Monitor>, Slot> = HashMap::new();
    let mut in_flight: HashMap<ObjectRef<Monitor>, AbortHandle> = HashMap::new();
    let mut tasks: JoinSet<ObjectRef<Monitor>> = JoinSet::new();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(monitor) | watcher::Event::InitApply(monitor))) => {
                    place(&mut queue, &mut slots, &monitor);
                }
                Some(Ok(watcher::Event::Delete(monitor))) => {
                    let key = ObjectRef::from_obj(&monitor);
                    if let Some(slot) = slots.remove(&key) {
                        queue.remove(&slot.key);
                    }
                    if let Some(task) = in_flight.remove(&key) {
                        task.abort();
                    }
                    runner.forget(&key);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    // A relist: monitors deleted while the watch was down are gone from
                    // the cache.
                    let gone: Vec<_> = slots
                        .keys()
                        .filter(|key| runner.monitors.get(key).is_none())
                        .cloned()
                        .collect();
                    for key in gone {
                        if let Some(slot) = slots.remove(&key) {
                            queue.remove(&slot.key);
                        }
                        if let Some(task) = in_flight.remove(&key) {
                            task.abort();
                        }
                        runner.forget(&key);
                    }
                }
                Some(Ok(watcher::Event::Init)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watching Monitors failed; retrying"),
                None => return,
            },
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let key = expired.into_inner();
                let Some(slot) = slots.get_mut(&key) else {
                    continue;
                };
                let due = next_due(SystemTime::now() + Duration::from_millis(1), slot.interval, slot.phase);
                slot.key = queue.insert_at(key.clone(), instant_of(due));
                if in_flight.contains_key(&key) {
                    // The last check is still running: never twice at once.
                    continue;
                }
                let runner = runner.clone();
                let task_key = key.clone();
                let handle = tasks.spawn(async move {
                    runner.check_monitor(&task_key).await;
                    task_key
                });
                in_flight.insert(key, handle);
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(key) = done {
                    in_flight.remove(&key);
                }
            }
        }
        // Aborted tasks end as errors without their key: drop finished handles too.
        in_flight.retain(|_, handle| !handle.is_finished());
    }
}

/// Puts a monitor in the queue at its next due time, or moves it when its interval or uid
/// changed.
fn place(
    queue: &mut DelayQueue<ObjectRef<Monitor>>,
    slots: &mut HashMap<ObjectRef<Monitor>, Slot>,
    monitor: &Monitor,
) {
    let key = ObjectRef::from_obj(monitor);
    let Ok(interval) = monitor.spec.interval.to_std() else {
        tracing::warn!(monitor = %key, "spec.interval does not parse; not scheduled");
        return;
    };
    let interval = interval.max(Duration::from_secs(1));
    let phase = phase(&monitor.uid().unwrap_or_default(), interval);
    if let Some(slot) = slots.get(&key)
        && slot.interval == interval
        && slot.phase == phase
    {
        return;
    }
    if let Some(slot) = slots.remove(&key) {
        queue.remove(&slot.key);
    }
    let due = next_due(SystemTime::now(), interval, phase);
    let queued = queue.insert_at(key.clone(), instant_of(due));
    slots.insert(
        key,
        Slot {
            key: queued,
            interval,
            phase,
        },
    );
}

/// A wall-clock instant as a tokio instant.
fn instant_of(at: SystemTime) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(wait) => now + wait,
        Err(_) => now,
    }
}
