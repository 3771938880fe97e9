//! [`Webhooks`]: every route's decision behind the one [`Admission`] interface the server
//! calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::Client;
use kube::core::admission::AdmissionResponse;

use super::hosts::check_vault_item;
use super::metrics::AdmissionMetrics;
use super::{
    Admission, Authorizer, DeleteLookup, ItemLookup, KubeLookup, MonitorLookup, Request, Route,
    SubjectAccessReviewAuthorizer, check_monitor_write, guard_delete, seal_vault_item,
    stamp_monitor_write,
};
use crate::store::Keys;
use crate::store::Store;
use crate::webhook::review_cache::CachingAuthorizer;

/// The admission decisions, with what they need: the keys (sealing, stamps), an authorizer
/// and lookups. Production uses SubjectAccessReviews and the API server; tests use tables.
pub struct Webhooks<S, A = SubjectAccessReviewAuthorizer, L = KubeLookup> {
    keys: Arc<Keys<S>>,
    /// Cached answers serve Monitor and MonitorRun writes only: the hot path, whose
    /// stamps the runner checks again. Widening `allowedHosts`, replacing a secret and the
    /// delete guards ask afresh every time.
    authorizer: CachingAuthorizer<A>,
    lookup: L,
    metrics: Option<Arc<AdmissionMetrics>>,
}

impl<S: Store> Webhooks<S> {
    /// Access review answers for monitor writes are kept for `review_cache_ttl`
    /// ([`CachingAuthorizer`]).
    pub fn new(client: Client, keys: Arc<Keys<S>>, review_cache_ttl: Duration) -> Self {
        Webhooks::with(
            keys,
            SubjectAccessReviewAuthorizer::new(client.clone()),
            KubeLookup::new(client),
        )
        .with_review_cache(review_cache_ttl)
    }
}

impl<S, A, L> Webhooks<S, A, L> {
    /// Without a review cache; see [`Webhooks::with_review_cache`].
    pub fn with(keys: Arc<Keys<S>>, authorizer: A, lookup: L) -> Self {
        Webhooks {
            keys,
            authorizer: CachingAuthorizer::new(authorizer, Duration::ZERO),
            lookup,
            metrics: None,
        }
    }

    /// Keeps access review answers for monitor writes for `ttl` (zero: not at all).
    pub fn with_review_cache(self, ttl: Duration) -> Self {
        Webhooks {
            authorizer: CachingAuthorizer::new(self.authorizer.into_inner(), ttl),
            ..self
        }
    }

    /// Counts every answer and its latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<AdmissionMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<S, A, L> Webhooks<S, A, L> {
    /// The keys the stamps are made under; the runner verifies with the same.
    pub fn keys(&self) -> &Keys<S> {
        &self.keys
    }
}

impl<S, A, L> Admission for Webhooks<S, A, L>
where
    S: Store,
    A: Authorizer + 'static,
    L: ItemLookup + MonitorLookup + DeleteLookup + 'static,
{
    fn admit(&self, route: Route, request: Request) -> BoxFuture<'_, AdmissionResponse> {
        Box::pin(async move {
            let started = Instant::now();
            let keys = self.keys.as_ref();
            let (cached, lookup) = (&self.authorizer, &self.lookup);
            let fresh = cached.uncached();
            let response = match route {
                Route::MutateVaultItems => seal_vault_item(keys, fresh, &request).await,
                Route::ValidateVaultItems => check_vault_item(fresh, &request).await,
                Route::MutateMonitors => {
                    stamp_monitor_write(keys, cached, lookup, lookup, &request).await
                }
                Route::ValidateMonitors => check_monitor_write(keys, &request).await,
                Route::ValidateDeletes => guard_delete(fresh, lookup, &request).await,
            };
            if let Some(metrics) = &self.metrics {
                metrics.observe(
                    route,
                    response.allowed,
                    response.result.code,
                    started.elapsed(),
                );
            }
            tracing::debug!(
                uid = %request.uid,
                route = route.path(),
                allowed = response.allowed,
                code = response.result.code,
                "admission"
            );
            response
        })
    }
}
