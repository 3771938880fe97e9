//! The controller: ingests sealed values into the encrypted store, keeps environment keys,
//! and reports status.
//!
//! It owns the reconcile loops of `VaultItem` and `VaultSection`. It must never put a
//! plaintext in a status, an Event, a log line or an error: messages name fields and
//! reasons, and the types that hold secrets redact themselves.
//!
//! The loops run only on the replica that holds the leader Lease ([`leader`]).

pub mod certificate;
pub mod fresh_start;
pub mod leader;
pub mod rotation;
pub mod vault_item;
pub mod vault_section;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::api::condition::{READY, find_condition};
use crate::api::monitor::Monitor;
use crate::api::template::referenced_items;
use crate::api::vault_item::VaultItem;
use crate::api::vault_section::VaultSection;
use crate::crypto::CryptoError;
use crate::store::{KeyError, Keys};
use crate::store::{Store, StoreError, layout};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{ItemCounts, ItemState};

/// The server-side apply field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "monivault-controller";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("vault engine: {0}")]
    Crypto(#[from] CryptoError),
    #[error("the monitor cache stopped")]
    CacheClosed,
    #[error("data key version {version} was retired while the record was written; ingesting again")]
    DataKeyRetired { version: u32 },
    #[error("the monitor cache has not finished its first list after {0:?}; retrying")]
    CacheNotReady(std::time::Duration),
    #[error("another certificate archive is still being read after {0:?}; retrying")]
    ArchiveBusy(std::time::Duration),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A low-cardinality label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingField(_) => "invalid_object",
            Error::Kube(_) => "kube",
            Error::Keys(e) => e.category(),
            Error::Store(e) => e.category(),
            Error::Crypto(_) => "crypto",
            Error::Finalizer(_) => "finalizer",
            Error::CacheClosed | Error::CacheNotReady(_) => "cache",
            Error::DataKeyRetired { .. } => "key_retired",
            Error::ArchiveBusy(_) => "archive_busy",
        }
    }
}

/// What every reconcile shares.
pub struct Context<S> {
    pub client: Client,
    pub keys: Arc<Keys<S>>,
    /// Every Monitor, cached, to compute `usedBy`.
    pub monitors: reflector::Store<Monitor>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl<S> Context<S> {
    fn backoff(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        // 1s, 2s, 4s … capped at 5 minutes.
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

fn error_policy<K, S>(obj: Arc<K>, error: &Error, ctx: Arc<Context<S>>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    let key = backoff_key(obj.as_ref());
    ctx.metrics
        .reconcile_failed(kind_label::<K>(), error.category());
    let delay = ctx.backoff(key.clone());
    tracing::warn!(object = %key, category = error.category(), %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Kind, namespace and name: an item and a section of the same name back off apart.
fn backoff_key<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// An API over every namespace, or over the one the operator is scoped to.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The `kind` label of a reconciled type (the derived CRDs name theirs statically).
fn kind_label<K: kube::Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        Cow::Borrowed(kind) => kind,
        Cow::Owned(_) => "other",
    }
}

/// How often the leader recomputes the item and key gauges.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);

fn item_state(item: &VaultItem) -> ItemState {
    let ready = item
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, READY));
    match ready.map(|c| c.status.as_str()) {
        Some("True") => ItemState::Ready,
        Some("False") => ItemState::NotReady,
        _ => ItemState::Unknown,
    }
}

/// Keeps `monivault_items` current; never returns. (`monivault_key_versions_in_use` is
/// kept by the rotation check, which lists the environments anyway.)
async fn refresh_gauges<S: Store>(ctx: Arc<Context<S>>, items: reflector::Store<VaultItem>) {
    let mut tick = tokio::time::interval(GAUGE_REFRESH);
    loop {
        tick.tick().await;
        let mut counts = ItemCounts::default();
        for item in items.state() {
            counts.add(item_state(&item));
        }
        ctx.metrics.set_items(counts);
    }
}

/// Runs the VaultItem and VaultSection controllers until shutdown, over every namespace
/// or only `watch_namespace`. Call it on the leader only.
pub async fn run<S: Store>(
    client: Client,
    keys: Arc<Keys<S>>,
    store_namespace: String,
    watch_namespace: Option<String>,
    instance: String,
    metrics: Arc<Metrics>,
) {
    let watch_namespace = watch_namespace.as_deref();
    let (monitors, writer) = reflector::store::<Monitor>();
    let monitor_api = scoped::<Monitor>(&client, watch_namespace);
    // Errors are retried with backoff, but said: until the first list succeeds, no item
    // can be reconciled (usedBy needs it).
    let monitor_watch = watcher(monitor_api.clone(), watcher::Config::default())
        .inspect_err(|e| tracing::warn!(error = %e, "watching Monitors failed; retrying"));
    let monitor_cache = reflector::reflector(writer, monitor_watch)
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(instance),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        keys,
        monitors: monitors.clone(),
        recorder,
        metrics,
        failures: Mutex::new(HashMap::new()),
    });

    // A monitor change touches the items it references now and those it referenced
    // before, so `usedBy` drops a monitor as soon as the reference goes.
    let previous: Arc<Mutex<HashMap<ObjectRef<Monitor>, BTreeSet<String>>>> = Arc::default();
    let mapper = move |monitor: Monitor| {
        let namespace = monitor.namespace().unwrap_or_default();
        let now = referenced_items(&monitor.spec).unwrap_or_default();
        let mut previous = previous.lock().unwrap_or_else(|e| e.into_inner());
        let before = previous
            .insert(ObjectRef::from_obj(&monitor), now.clone())
            .unwrap_or_default();
        before
            .union(&now)
            .map(|name| ObjectRef::<VaultItem>::new(name).within(&namespace))
            .collect::<Vec<_>>()
    };

    let items = Controller::new(
        scoped::<VaultItem>(&client, watch_namespace),
        watcher::Config::default().any_semantic(),
    );
    let item_cache = items.store();
    // A record written behind the controller's back (re-encrypted by a rotation, possibly
    // in another process) touches its item, so `status.keyVersion` follows at once.
    let records = Api::<Secret>::namespaced(client.clone(), &store_namespace);
    let stale_items = item_cache.clone();
    let record_mapper = move |secret: Secret| {
        let Ok((key, record)) = layout::parse_record(&secret) else {
            return None;
        };
        let item = ObjectRef::<VaultItem>::new(&key.name).within(&key.namespace);
        let shown = stale_items
            .get(&item)
            .and_then(|i| i.status.as_ref().and_then(|s| s.key_version));
        (shown.is_some() && shown != Some(record.key_version)).then_some(item)
    };
    let items = items
        .watches(monitor_api, watcher::Config::default(), mapper)
        .watches(
            records,
            watcher::Config::default().labels(&layout::record_selector()),
            record_mapper,
        )
        .shutdown_on_signal();
    let items = items
        .run(
            |item, ctx: Arc<Context<S>>| async move {
                ctx.metrics.reconciled(kind_label::<VaultItem>());
                let key = backoff_key(item.as_ref());
                let action = vault_item::reconcile(item, ctx.clone()).await?;
                ctx.succeeded(&key);
                Ok(action)
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    let sections = Controller::new(
        scoped::<VaultSection>(&client, watch_namespace),
        watcher::Config::default().any_semantic(),
    );
    // A change to an environment's keys (a new sealing key, above all) republishes that
    // namespace's sections now, not at the next resync.
    let section_cache = sections.store();
    let environment_mapper = move |secret: Secret| {
        let namespace = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(layout::ITEM_NAMESPACE_ANNOTATION))
            .cloned();
        section_cache
            .state()
            .iter()
            .filter(|s| namespace.is_some() && s.namespace() == namespace)
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect::<Vec<_>>()
    };
    let sections = sections
        .watches(
            Api::<Secret>::namespaced(client.clone(), &store_namespace),
            watcher::Config::default().labels(&layout::environment_selector()),
            environment_mapper,
        )
        .shutdown_on_signal()
        .run(
            |section, ctx: Arc<Context<S>>| async move {
                ctx.metrics.reconciled(kind_label::<VaultSection>());
                let key = backoff_key(section.as_ref());
                let action = vault_section::reconcile(section, ctx.clone()).await?;
                ctx.succeeded(&key);
                Ok(action)
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    tokio::select! {
        () = async { tokio::join!(items, sections); } => {},
        () = monitor_cache => tracing::error!("the monitor cache stopped"),
        () = refresh_gauges(ctx.clone(), item_cache) => {},
    }
}

/// Writes `status` by server-side apply over the object exactly as this reconcile read
/// it: its resourceVersion is a precondition. A status computed from an older read (a
/// leader paused past its Lease and resumed, or a lagging cache) then conflicts instead
/// of replacing a newer one; the change that made it conflict brings another reconcile.
/// `Ok(false)` on that conflict.
///
/// A conflict caused by metadata alone (someone with `edit` touching an annotation in a
/// loop) must not keep the status from ever being written: while the object's generation
/// and status are still what this reconcile read, the write is retried at the new
/// resourceVersion, a few times.
async fn apply_status<K>(api: &Api<K>, obj: &K, status: serde_json::Value) -> Result<bool, Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    const ATTEMPTS: u32 = 4;
    let name = obj.name_any();
    let read_status = status_of(obj);
    let mut resource_version = obj
        .resource_version()
        .ok_or(Error::MissingField("metadata.resourceVersion"))?;
    for _ in 0..ATTEMPTS {
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": {"resourceVersion": resource_version},
            "status": status,
        });
        let params = kube::api::PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&name, &params, &kube::api::Patch::Apply(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(Error::Kube(e)),
        }
        let Some(fresh) = api.get_opt(&name).await.map_err(Error::Kube)? else {
            return Ok(false);
        };
        let unchanged = fresh.meta().generation == obj.meta().generation
            && fresh.meta().uid == obj.meta().uid
            && status_of(&fresh) == read_status;
        match fresh.resource_version() {
            Some(version) if unchanged => resource_version = version,
            _ => {
                tracing::debug!(
                    object = %backoff_key(obj),
                    "the object changed since it was read; its status is left to the next reconcile"
                );
                return Ok(false);
            }
        }
    }
    tracing::debug!(
        object = %backoff_key(obj),
        attempts = ATTEMPTS,
        "the object's metadata kept changing; its status is left to the next reconcile"
    );
    Ok(false)
}

/// The object's `status`, as JSON (`Null` without one).
fn status_of<K: serde::Serialize>(obj: &K) -> serde_json::Value {
    serde_json::to_value(obj)
        .ok()
        .and_then(|mut v| v.get_mut("status").map(serde_json::Value::take))
        .unwrap_or(serde_json::Value::Null)
}

pub(crate) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
