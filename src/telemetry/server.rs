//! The operations HTTP server, on every replica:
//! - `/metrics`: the registry in the OpenMetrics text format;
//! - `/healthz`: 200 while the process serves at all;
//! - `/readyz`: 200 once [`Readiness::set_ready`] was called (the keys are loaded), 503
//!   before. Followers are ready too: the webhook is served by every replica.
//!
//! Plain HTTP: it carries counts and states, nothing secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use warp::Filter;
use warp::http::{Response, StatusCode};

/// The content type of prometheus-client's text encoding.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Whether this replica may take traffic; shared between the server and whoever gets the
/// process ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Binds `addr` (port 0 picks a free port), logs the address it got and serves in a
/// background task for the life of the process. Returns the bound address.
pub async fn start(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
) -> Result<SocketAddr, ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    // The address is in the message text, so tests that pass port 0 can read it.
    tracing::info!("serving metrics on http://{bound}/metrics (and /healthz, /readyz)");
    tokio::spawn(
        warp::serve(routes(registry, readiness))
            .incoming(listener)
            .run(),
    );
    Ok(bound)
}

/// The routes, apart from the socket, so they can be driven in-process.
pub fn routes(
    registry: Arc<Registry>,
    readiness: Readiness,
) -> impl Filter<Extract = (Response<String>,), Error = warp::Rejection> + Clone {
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .map(move || metrics_response(&registry));
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| text(StatusCode::OK, "ok\n"));
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        if readiness.is_ready() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
    });
    metrics.or(healthz).unify().or(readyz).unify()
}

fn metrics_response(registry: &Registry) -> Response<String> {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => response(StatusCode::OK, OPENMETRICS, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<String> {
    response(status, "text/plain; charset=utf-8", body.to_owned())
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(warp::http::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{self, Metrics};

    fn app() -> (
        impl Filter<Extract = (Response<String>,), Error = warp::Rejection> + Clone,
        Readiness,
    ) {
        let mut registry = metrics::registry();
        let _metrics = Metrics::new(&mut registry);
        let readiness = Readiness::default();
        (routes(Arc::new(registry), readiness.clone()), readiness)
    }

    #[tokio::test]
    async fn healthz_answers_at_once_and_readyz_only_once_ready() {
        let (app, readiness) = app();
        let get = |path: &'static str| warp::test::request().method("GET").path(path);
        assert_eq!(get("/healthz").reply(&app).await.status(), 200);
        assert_eq!(get("/readyz").reply(&app).await.status(), 503);
        readiness.set_ready();
        assert_eq!(get("/readyz").reply(&app).await.status(), 200);
        assert_eq!(get("/nothing").reply(&app).await.status(), 404);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let (app, _) = app();
        let res = warp::test::request()
            .method("GET")
            .path("/metrics")
            .reply(&app)
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], OPENMETRICS);
        let body = String::from_utf8_lossy(res.body());
        assert!(body.contains("monivault_is_leader 0"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
