//! The admission webhooks over HTTPS: TLS (rustls, `ring` provider) and HTTP/1.1 or HTTP/2
//! (ALPN) in front of an [`Admission`].
//!
//! warp 0.4 has no TLS, so the routes are a warp filter turned into a hyper service, served
//! by hyper-util's auto connection builder over `tokio_rustls` streams. The certificate
//! comes from a [`ResolvesServerCert`], so whoever owns it can rotate it without a restart.
//!
//! Routes:
//! - `POST` on each [`Route::path`]: an AdmissionReview in, an AdmissionReview out, always
//!   HTTP 200 once the route matched. Every refusal the server itself makes is a structured
//!   AdmissionReview (`allowed: false` with a `status.code`), so the API server shows the
//!   user why:
//!   - 400: the body is not an AdmissionReview ([`BadReview`](super::BadReview));
//!   - 413: the body is over [`Limits::max_body_bytes`], by `Content-Length` before any byte
//!     is read, or while a chunked body streams in;
//!   - 503: every admission slot stayed busy until the request's deadline;
//!   - 504: the admission did not answer before the deadline;
//!   - 500: the admission panicked.
//! - `GET /healthz`: 200 `ok`.
//! - Any other path is 404, a known path with another method 405 (plain HTTP, no review).
//!
//! A refusal made before the body was read (413 by size, 504 for a body that never came)
//! carries no uid: the API server then reports a uid mismatch, still as a refusal.
//!
//! Connections: at most [`Limits::max_connections`]; each must finish its TLS handshake
//! and start a request within [`Limits::handshake_timeout`]; shutdown stops accepting and
//! drains requests in flight for up to [`Limits::drain_timeout`].
//!
//! What it must never do: log a body (the object may hold a plaintext), or panic on input.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt as _, Stream, StreamExt as _};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kube::core::Status;
use kube::core::admission::AdmissionResponse;
use rustls::server::{ResolvesServerCert, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use warp::http::StatusCode;
use warp::reply::Reply as _;
use warp::{Buf, Filter};

use super::{Admission, BadReview, MAX_BODY_BYTES, MalformedReview, Route, parse_review, refuse};

/// How often an idle HTTP/2 connection is pinged.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// What one replica takes on at most, and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body read, at most [`MAX_BODY_BYTES`] (the parser's own limit).
    pub max_body_bytes: usize,
    /// Admissions evaluated at once; beyond that, requests queue until their deadline.
    pub max_in_flight: usize,
    /// The time from a request's headers to its answer, body read included. Under the API
    /// server's 10 s webhook timeout, so the user reads our message, not a timeout.
    pub request_timeout: Duration,
    /// The time a new connection has to finish the TLS handshake and send the first bytes
    /// of a request.
    pub handshake_timeout: Duration,
    /// HTTP/1.1: the time a client has to send a request's headers, which is also how long
    /// an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Open connections at once; past it the server stops accepting until one closes.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// On shutdown, the time in-flight requests get to finish before connections are cut.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: MAX_BODY_BYTES,
            max_in_flight: 128,
            request_timeout: Duration::from_secs(9),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_streams_per_connection: 64,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the address the webhook listener is bound to")]
    LocalAddr(#[source] std::io::Error),
    #[error("cannot build the webhook's TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("the webhook client CA is unusable: {0}")]
    ClientCa(String),
}

/// Live counts of what the server holds, for metrics and for tests that must know a
/// request is queued without watching the clock.
#[derive(Debug, Default)]
pub struct Load {
    connections: AtomicUsize,
    waiting: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Load {
    /// Open connections, TLS handshakes included.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests parsed and waiting for an admission slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Admissions being evaluated.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts one unit on a gauge of [`Load`] for as long as it lives, whatever way the task
/// ends (answer, timeout, cancellation).
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bound, not yet serving webhook server. Binding first lets the caller learn the port
/// (for port 0) and register `url:` webhooks before the first request can arrive.
pub struct Server {
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<State>,
}

/// What every request handler shares.
struct State {
    admission: Arc<dyn Admission>,
    limits: Limits,
    slots: Semaphore,
    load: Arc<Load>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        certs: Arc<dyn ResolvesServerCert>,
        admission: Arc<dyn Admission>,
        limits: Limits,
    ) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Server::new(listener, certs, admission, limits)
    }

    /// Wraps a listener the caller bound.
    pub fn new(
        listener: TcpListener,
        certs: Arc<dyn ResolvesServerCert>,
        admission: Arc<dyn Admission>,
        limits: Limits,
    ) -> Result<Server, ServeError> {
        let state = State {
            admission,
            slots: Semaphore::new(limits.max_in_flight),
            limits,
            load: Arc::default(),
        };
        Ok(Server {
            listener,
            tls: Arc::new(tls_config(certs)?),
            state: Arc::new(state),
        })
    }

    /// Answers only clients with a certificate signed by a CA of `ca_pem`: the API server,
    /// configured to present one (an AdmissionConfiguration's kubeConfigFile). Without it,
    /// anyone who can reach the port may post a review with any `userInfo`.
    pub fn require_client_certificates(
        mut self,
        certs: Arc<dyn ResolvesServerCert>,
        ca_pem: &[u8],
    ) -> Result<Server, ServeError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ServeError::ClientCa(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ServeError::ClientCa(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ServeError::ClientCa("it holds no certificate".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| ServeError::ClientCa(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ServeError::Tls)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certs);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        self.tls = Arc::new(config);
        Ok(self)
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener.local_addr().map_err(ServeError::LocalAddr)
    }

    /// The live counts of this server.
    pub fn load(&self) -> Arc<Load> {
        Arc::clone(&self.state.load)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight
    /// finish (up to [`Limits::drain_timeout`]) and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server {
            listener,
            tls,
            state,
        } = self;
        let limits = state.limits.clone();
        let acceptor = TlsAcceptor::from(tls);
        let service = TowerToHyperService::new(warp::service(routes(Arc::clone(&state))));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_connection)
            // A peer that vanished without a FIN must not hold a connection slot forever.
            .keep_alive_interval(HTTP2_KEEP_ALIVE);
        let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let shutdown = shutdown.fuse();
        tokio::pin!(shutdown);

        loop {
            let accept = async {
                // Past the cap, leave new connections in the kernel's backlog.
                let permit = Arc::clone(&connection_slots).acquire_owned().await;
                (permit, accept_connection(&listener).await)
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        tracing::error!("a webhook connection task panicked");
                    }
                }
                (permit, accepted) = accept => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "cannot accept a webhook connection");
                            // Out of file descriptors and the like: do not spin on it.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = permit else {
                        // The semaphore is never closed.
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let service = service.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    let load = Arc::clone(&state.load);
                    let handshake_timeout = limits.handshake_timeout;
                    connections.spawn(async move {
                        let _permit = permit;
                        let _open = Gauge::enter(&load.connections);
                        // One deadline for the handshake and the first bytes of a request:
                        // hyper's protocol detection and HTTP/2 preface have no timeout.
                        let deadline = Instant::now() + handshake_timeout;
                        let tls = match timeout_at(deadline, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "webhook TLS handshake timed out");
                                return;
                            }
                        };
                        let (io, spoke) = FirstRead::new(tls);
                        let connection =
                            watcher.watch(builder.serve_connection(TokioIo::new(io), service));
                        let silent = async {
                            tokio::time::sleep_until(deadline).await;
                            if spoke.load(Ordering::Relaxed) {
                                std::future::pending::<()>().await;
                            }
                        };
                        tokio::select! {
                            ended = connection => if let Err(error) = ended {
                                tracing::debug!(%peer, %error, "webhook connection ended with an error");
                            },
                            () = silent => {
                                tracing::debug!(%peer, "webhook client sent no request in time");
                            }
                        }
                    });
                }
            }
        }

        drop(listener);
        let drain = async {
            graceful.shutdown().await;
            while connections.join_next().await.is_some() {}
        };
        if timeout(limits.drain_timeout, drain).await.is_err() {
            tracing::warn!(
                "webhook connections still open after {:?}; closing them",
                limits.drain_timeout
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

/// A stream that notes when the client first sends anything.
struct FirstRead<S> {
    inner: S,
    spoke: Arc<AtomicBool>,
}

impl<S> FirstRead<S> {
    fn new(inner: S) -> (Self, Arc<AtomicBool>) {
        let spoke = Arc::new(AtomicBool::new(false));
        let stream = FirstRead {
            inner,
            spoke: Arc::clone(&spoke),
        };
        (stream, spoke)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.spoke.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstRead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Accepts one connection with `TCP_NODELAY` set. Without it, Nagle's algorithm holds the
/// end of a TLS response until the API server's delayed ACK (up to 40 ms per call).
async fn accept_connection(listener: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    // Slower, but still correct: never a reason to drop the connection or stall accepting.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY on a webhook connection");
    }
    Ok((stream, peer))
}

/// Binds nothing: serves `listener` until `shutdown`. See [`Server`] to learn the bound
/// address or the load first.
pub async fn serve(
    listener: TcpListener,
    certs: Arc<dyn ResolvesServerCert>,
    admission: Arc<dyn Admission>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::new(listener, certs, admission, limits)?
        .serve(shutdown)
        .await
}

/// TLS 1.2 and 1.3 with the `ring` provider, named explicitly so that no other provider
/// (aws-lc-rs needs cmake) is ever pulled in or picked by a process default; ALPN offers
/// HTTP/2 first.
pub fn tls_config(certs: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServeError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The routes, apart from the socket. Path first, then method, so an unknown path is 404
/// and a known path with the wrong method 405.
fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok", StatusCode::OK).into_response());
    let admission = warp::path::full()
        .and_then(|path: warp::path::FullPath| async move {
            Route::from_path(path.as_str()).ok_or_else(warp::reject::not_found)
        })
        .and(warp::post())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(move |route, content_length, body| {
            let state = Arc::clone(&state);
            async move {
                let review = answer(&state, route, content_length, body).await;
                warp::reply::json(&review.into_review()).into_response()
            }
        });
    healthz.or(admission).unify()
}

/// One admission request, start to end, under one deadline.
async fn answer<S, B>(
    state: &State,
    route: Route,
    content_length: Option<u64>,
    body: S,
) -> AdmissionResponse
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let started = Instant::now();
    let deadline = started + state.limits.request_timeout;
    let limit = state.limits.max_body_bytes;
    let response = match read_body(body, content_length, limit, deadline).await {
        Err(refused) => refused.into_response(),
        Ok(body) => match parse_review(&body) {
            Err(bad) => bad.into_response(),
            Ok(request) => {
                drop(body);
                admit(state, route, request, deadline).await
            }
        },
    };
    tracing::debug!(
        route = route.path(),
        uid = %response.uid,
        allowed = response.allowed,
        code = response.result.code,
        latency_ms = started.elapsed().as_millis() as u64,
        "admission answered"
    );
    response
}

/// Why a body was not read to the end.
#[derive(Debug, PartialEq, Eq)]
enum BodyRefusal {
    /// `Content-Length` over the limit: nothing was read.
    Declared { size: u64, limit: usize },
    /// A body without a declared size grew past the limit.
    TooLarge { limit: usize },
    /// The connection failed mid-body.
    Unreadable,
    /// The body did not arrive before the request's deadline.
    Late,
}

impl BodyRefusal {
    /// The refusal the API server receives; the uid is unknown, as the body was not read.
    fn into_response(self) -> AdmissionResponse {
        match self {
            BodyRefusal::Declared { size, limit } => BadReview {
                uid: None,
                error: MalformedReview::TooLarge {
                    size: usize::try_from(size).unwrap_or(usize::MAX),
                    limit,
                },
            }
            .into_response(),
            BodyRefusal::TooLarge { limit } => refusal(
                None,
                413,
                "RequestEntityTooLarge",
                &format!("the AdmissionReview body is over the limit of {limit} bytes"),
            ),
            BodyRefusal::Unreadable => {
                refusal(None, 400, "BadRequest", "cannot read the request body")
            }
            BodyRefusal::Late => refusal(
                None,
                504,
                "Timeout",
                "the request body did not arrive in time",
            ),
        }
    }
}

/// The body, at most `limit` bytes, read before `deadline`.
async fn read_body<S, B>(
    body: S,
    content_length: Option<u64>,
    limit: usize,
    deadline: Instant,
) -> Result<Vec<u8>, BodyRefusal>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    // A declared size over the limit is refused before a byte is read.
    if let Some(size) = content_length
        && size > limit as u64
    {
        return Err(BodyRefusal::Declared { size, limit });
    }
    let read = async {
        let mut bytes =
            Vec::with_capacity(content_length.map_or(0, |size| usize::try_from(size).unwrap_or(0)));
        futures::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|error| {
                tracing::debug!(%error, "cannot read an admission request body");
                BodyRefusal::Unreadable
            })?;
            while chunk.has_remaining() {
                let part = chunk.chunk();
                // Chunked bodies declare no size: stop at the first byte past the limit.
                if bytes.len() + part.len() > limit {
                    return Err(BodyRefusal::TooLarge { limit });
                }
                bytes.extend_from_slice(part);
                let read = part.len();
                chunk.advance(read);
            }
        }
        Ok(bytes)
    };
    timeout_at(deadline, read)
        .await
        .unwrap_or(Err(BodyRefusal::Late))
}

/// Waits for an admission slot, then for the decision, both before `deadline`.
async fn admit(
    state: &State,
    route: Route,
    request: super::Request,
    deadline: Instant,
) -> AdmissionResponse {
    let busy = refuse(
        &request,
        503,
        "ServiceUnavailable",
        "the monivault webhook is busy: too many admission requests at once; retry",
    );
    let slot = {
        let _waiting = Gauge::enter(&state.load.waiting);
        timeout_at(deadline, state.slots.acquire()).await
    };
    let Ok(Ok(_slot)) = slot else {
        return busy;
    };
    let _in_flight = Gauge::enter(&state.load.in_flight);
    let timed_out = refuse(
        &request,
        504,
        "Timeout",
        "the monivault webhook did not decide in time",
    );
    let crashed = refuse(
        &request,
        500,
        "InternalError",
        "the monivault webhook failed on this request",
    );
    // A panicking decision must not take the connection (and its other streams) down.
    let decision = AssertUnwindSafe(state.admission.admit(route, request)).catch_unwind();
    match timeout_at(deadline, decision).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => {
            tracing::error!(route = route.path(), "an admission panicked");
            crashed
        }
        Err(_) => timed_out,
    }
}

/// A refusal for a request whose uid may be unknown (the body was not read).
fn refusal(uid: Option<String>, code: u16, reason: &str, message: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(message);
    response.result = Status::failure(message, reason).with_code(code);
    if let Some(uid) = uid {
        response.uid = uid;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        sizes: &[usize],
    ) -> impl Stream<Item = Result<std::io::Cursor<Vec<u8>>, warp::Error>> {
        let chunks: Vec<_> = sizes
            .iter()
            .map(|&size| Ok(std::io::Cursor::new(vec![b' '; size])))
            .collect();
        futures::stream::iter(chunks)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_an_ack() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, _) = accept_connection(&listener).await.unwrap();
        client.await.unwrap().unwrap();
        // A fresh socket has Nagle's algorithm on: this is the accept path's doing.
        assert!(stream.nodelay().unwrap(), "TCP_NODELAY is set");
    }

    #[test]
    fn the_defaults_answer_before_the_api_server_gives_up() {
        let limits = Limits::default();
        assert!(limits.request_timeout < Duration::from_secs(10));
        assert_eq!(limits.max_body_bytes, MAX_BODY_BYTES);
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not() {
        let body = read_body(chunks(&[6, 4]), None, 10, far()).await;
        assert_eq!(body.expect("at the limit").len(), 10);

        let refused = read_body(chunks(&[6, 5]), None, 10, far()).await;
        let refused = refused.expect_err("one byte over");
        assert_eq!(refused, BodyRefusal::TooLarge { limit: 10 });
        let response = refused.into_response();
        assert_eq!(response.result.code, 413);
        assert!(!response.allowed);

        let refused = read_body(chunks(&[]), Some(11), 10, far()).await;
        let refused = refused.expect_err("declared too large");
        assert_eq!(
            refused,
            BodyRefusal::Declared {
                size: 11,
                limit: 10
            }
        );
        assert_eq!(refused.into_response().result.code, 413);
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_a_504() {
        let never = futures::stream::pending::<Result<std::io::Cursor<Vec<u8>>, warp::Error>>();
        let refused = read_body(never, None, 10, Instant::now()).await;
        let refused = refused.expect_err("timed out");
        assert_eq!(refused, BodyRefusal::Late);
        assert_eq!(refused.into_response().result.code, 504);
    }
}
