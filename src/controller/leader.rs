//! Leader election on the Lease `monivault-leader` in the operator's namespace, so only
//! one replica reconciles and rotates keys at a time. The webhook does not wait for it:
//! every replica serves that.
//!
//! Every replica runs for the lease (kube-lease-manager: server-side apply, so two
//! replicas can never both take it); the holder renews it every `renew_every`, and a
//! follower takes it over once it has gone `duration` without renewal.
//!
//! A replica that loses the lease after holding it does not try to stop its work halfway:
//! [`Election::lost`] resolves and the process exits (linkerd's policy controller does the
//! same); restarted, it joins as a follower. Besides the library's own view, the holder
//! reads the Lease every `renew_every` and counts it lost as soon as someone else holds
//! it, or once its own renewals have not landed for `duration` (e.g. the API server is
//! unreachable): a follower may have taken over by then.
//!
//! Code that must act only on the leader awaits [`Leadership::acquired`]; it needs no
//! loss handling of its own, since loss ends the process.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::telemetry::Metrics;

/// The Lease's name, in the operator's namespace.
pub const LEASE_NAME: &str = "monivault-leader";

/// How long a graceful shutdown waits for the lease to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid lease settings: {0}")]
    Settings(String),
    #[error("cannot join the leader election on Lease {namespace}/{LEASE_NAME}: {source}")]
    Join {
        namespace: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("lost the leader Lease {namespace}/{LEASE_NAME}: {why}")]
    Lost { namespace: String, why: String },
    #[error("the leader election stopped")]
    Stopped,
}

/// Who runs for the lease, and its timing (whole seconds: the Lease counts in seconds).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The operator's namespace, which holds the Lease.
    pub namespace: String,
    /// This replica's name (the pod name); must differ between replicas.
    pub identity: String,
    /// How long the lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews; shorter than `duration`.
    pub renew_every: Duration,
}

impl LeaseSettings {
    /// The library's parameters. Checked here: `LeaseParams::new` panics on bad values.
    fn params(&self) -> Result<LeaseParams, LeaderError> {
        let duration = self.duration.as_secs();
        let renew = self.renew_every.as_secs();
        if self.identity.is_empty() {
            return Err(LeaderError::Settings("the identity is empty".into()));
        }
        if renew == 0 || renew >= duration {
            return Err(LeaderError::Settings(format!(
                "the renew period ({renew}s) must be at least 1s and shorter than the lease duration ({duration}s)"
            )));
        }
        // The library renews `grace` seconds before expiry.
        Ok(LeaseParams::new(
            self.identity.clone(),
            duration,
            duration - renew,
        ))
    }
}

/// A view of whether this replica holds the lease. Cheap to clone; hand one to every
/// loop that must act only on the leader.
#[derive(Clone, Debug)]
pub struct Leadership {
    held: watch::Receiver<bool>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        *self.held.borrow()
    }

    /// Waits until this replica holds the lease; at once if it does. An error means the
    /// election has ended, and the process with it.
    pub async fn acquired(&mut self) -> Result<(), LeaderError> {
        self.held
            .wait_for(|held| *held)
            .await
            .map(|_| ())
            .map_err(|_| LeaderError::Stopped)
    }

    /// The raw channel: `true` while the lease is held.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.held.clone()
    }
}

/// This replica's candidacy, running in the background from [`elect`] on.
pub struct Election {
    leadership: Leadership,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), LeaderError>>>,
}

/// Joins the election: creates the Lease if it is missing and starts running for it.
pub async fn elect(
    client: Client,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
) -> Result<Election, LeaderError> {
    let params = settings.params()?;
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(settings.namespace.clone())
        .with_parameters(params)
        .build()
        .await
        .map_err(|source| LeaderError::Join {
            namespace: settings.namespace.clone(),
            source,
        })?;
    let (lease, lease_task) = manager.watch().await;
    let (held_tx, held) = watch::channel(false);
    let (stop_tx, stop) = oneshot::channel();
    let leases = Api::namespaced(client, &settings.namespace);
    tracing::info!(
        lease = LEASE_NAME,
        identity = %settings.identity,
        "running for the leader lease"
    );
    let task = tokio::spawn(campaign(Campaign {
        settings,
        lease,
        lease_task,
        held: held_tx,
        stop,
        leases,
        metrics,
    }));
    Ok(Election {
        leadership: Leadership { held },
        stop: Some(stop_tx),
        task: Some(task),
    })
}

impl Election {
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Resolves only when the election is over for this process: the lease was lost after
    /// being held, or the election cannot go on. The caller should exit.
    pub async fn lost(&mut self) -> LeaderError {
        let Some(task) = self.task.as_mut() else {
            return LeaderError::Stopped;
        };
        let outcome = task.await;
        self.task = None;
        match outcome {
            Ok(Err(e)) => e,
            Ok(Ok(())) | Err(_) => LeaderError::Stopped,
        }
    }

    /// Leaves the election on shutdown, releasing the lease if held, so the next replica to
    /// look (e.g. the new pod of a rollout) finds it free. A follower that is already
    /// waiting still sleeps until the old expiry: kube-lease-manager does not watch.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && tokio::time::timeout(RELEASE_TIMEOUT, task).await.is_err()
        {
            tracing::warn!("the leader lease was not released in time; it will expire");
        }
    }
}

struct Campaign {
    settings: LeaseSettings,
    /// The library's view: `true` while it holds the lease.
    lease: watch::Receiver<bool>,
    lease_task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    held: watch::Sender<bool>,
    stop: oneshot::Receiver<()>,
    leases: Api<Lease>,
    metrics: Arc<Metrics>,
}

/// `Ok(())` after a requested stop (lease released); an error when the lease is lost or
/// the library's task ended.
async fn campaign(mut c: Campaign) -> Result<(), LeaderError> {
    let stop = tokio::select! {
        held = c.lease.wait_for(|held| *held) => {
            if held.is_err() {
                return Err(LeaderError::Stopped);
            }
            false
        }
        _ = &mut c.stop => true,
    };
    if stop {
        return release(c).await;
    }

    let acquired_at = SystemTime::now();
    tracing::info!(
        lease = LEASE_NAME,
        identity = %c.settings.identity,
        "acquired the leader lease; this replica now acts as the leader"
    );
    c.metrics.set_leader(true);
    c.held.send_replace(true);

    // `None`: asked to stop while holding the lease.
    let over = tokio::select! {
        held = c.lease.wait_for(|held| !*held) => Some(match held {
            Ok(_) => lost(&c.settings, "another replica took it over".into()),
            Err(_) => LeaderError::Stopped,
        }),
        e = watchdog(&c.leases, &c.settings, acquired_at) => Some(e),
        _ = &mut c.stop => None,
    };
    c.metrics.set_leader(false);
    c.held.send_replace(false);
    match over {
        Some(e) => Err(e),
        None => release(c).await,
    }
}

/// Closing the library's channel makes its task release the lease and end.
async fn release(c: Campaign) -> Result<(), LeaderError> {
    drop(c.lease);
    match c.lease_task.await {
        Ok(Ok(_)) => tracing::info!(lease = LEASE_NAME, "left the leader election"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the leader lease"),
        Err(e) => tracing::warn!(error = %e, "the leader election task failed"),
    }
    Ok(())
}

fn lost(settings: &LeaseSettings, why: String) -> LeaderError {
    LeaderError::Lost {
        namespace: settings.namespace.clone(),
        why,
    }
}

/// Resolves once the lease is no longer provably ours: someone else holds it, or our
/// renewals have not landed for the lease duration.
async fn watchdog(
    leases: &Api<Lease>,
    settings: &LeaseSettings,
    acquired_at: SystemTime,
) -> LeaderError {
    let mut valid_until = acquired_at + settings.duration;
    loop {
        tokio::time::sleep(settings.renew_every).await;
        match leases.get(LEASE_NAME).await {
            Ok(lease) => {
                let spec = lease.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
                    let holder = spec.holder_identity.unwrap_or_else(|| "nobody".into());
                    return lost(settings, format!("it is now held by {holder}"));
                }
                if let (Some(renewed), Some(seconds)) =
                    (spec.renew_time, spec.lease_duration_seconds)
                {
                    let seconds = u64::try_from(seconds).unwrap_or(0);
                    let until = SystemTime::from(renewed.0) + Duration::from_secs(seconds);
                    valid_until = valid_until.max(until);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the leader Lease to confirm it is ours");
            }
        }
        if SystemTime::now() > valid_until {
            return lost(
                settings,
                format!(
                    "it was not renewed within {}s; another replica may hold it",
                    settings.duration.as_secs()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(duration: u64, renew: u64) -> LeaseSettings {
        LeaseSettings {
            namespace: "ops".into(),
            identity: "replica-a".into(),
            duration: Duration::from_secs(duration),
            renew_every: Duration::from_secs(renew),
        }
    }

    #[test]
    fn renewal_must_come_before_expiry() {
        assert!(settings(15, 5).params().is_ok());
        assert!(settings(2, 1).params().is_ok());
        for (duration, renew) in [(15, 15), (15, 20), (15, 0), (0, 0), (1, 1)] {
            assert!(
                matches!(
                    settings(duration, renew).params(),
                    Err(LeaderError::Settings(_))
                ),
                "duration {duration}s, renew {renew}s"
            );
        }
    }

    #[test]
    fn an_empty_identity_is_refused() {
        let mut s = settings(15, 5);
        s.identity.clear();
        assert!(matches!(s.params(), Err(LeaderError::Settings(_))));
    }
}
