//! The webhook server as the API server meets it: real HTTPS on 127.0.0.1, HTTP/1.1 and
//! HTTP/2 by ALPN, a self-signed certificate from rcgen, and a test `Admission` whose
//! behaviour is picked by the object's name.
//!
//! No test asserts on wall-clock time: a queued request is proven by the server's own
//! `Load` gauges and the admission's max-in-flight counter, and short timeouts are only
//! ever the thing under test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::core::admission::AdmissionResponse;
use monivault::webhook::server::{Limits, Load, ServeError, Server};
use monivault::webhook::{self, Admission, MAX_BODY_BYTES, Route};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const UID: &str = "5b1f0c2e-uid";

// ---------------------------------------------------------------------------------------
// Harness

/// The admission under test: answers `allowed` with a warning naming the route, except for
/// objects named `slow` (never answers), `gated` (waits for a permit of `gate`, counting
/// how many wait at once) and `panics`.
struct TestAdmission {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    entered: AtomicUsize,
    gate: Semaphore,
}

impl Default for TestAdmission {
    fn default() -> Self {
        TestAdmission {
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

impl Admission for TestAdmission {
    fn admit(&self, route: Route, request: webhook::Request) -> BoxFuture<'_, AdmissionResponse> {
        Box::pin(async move {
            let mut response = AdmissionResponse::from(&request);
            response.warnings = Some(vec![format!("route {}", route.path())]);
            match request.name.as_str() {
                "slow" => std::future::pending::<()>().await,
                "gated" => {
                    self.entered.fetch_add(1, Ordering::SeqCst);
                    let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    self.gate.acquire().await.expect("gate open").forget();
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                "panics" => panic!("the test admission panics on purpose"),
                _ => {}
            }
            response
        })
    }
}

struct Harness {
    addr: SocketAddr,
    load: Arc<Load>,
    admission: Arc<TestAdmission>,
    roots: RootCertStore,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ServeError>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn start(limits: Limits) -> Harness {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let cert: CertificateDer<'static> = issued.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
    let certified = rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key, &provider())
        .expect("certified key");
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("trust the test certificate");

    let admission = Arc::new(TestAdmission::default());
    let server = Server::bind(
        "127.0.0.1:0".parse().expect("address"),
        resolver,
        admission.clone(),
        limits,
    )
    .await
    .expect("bind");
    let addr = server.local_addr().expect("bound address");
    let load = server.load();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Harness {
        addr,
        load,
        admission,
        roots,
        stop: Some(stop),
        server,
    }
}

impl Harness {
    async fn tls(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }

    async fn http1<B>(&self) -> hyper::client::conn::http1::SendRequest<B>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tls = self.tls(b"http/1.1").await;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        sender
    }

    async fn http2(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let tls = self.tls(b"h2").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        sender
    }

    /// Stops the server and waits for it to return.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server)
            .await
            .expect("server task")
            .expect("server result");
    }
}

fn review(uid: &str, name: &str) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "monivault.io", "version": "v1alpha1", "kind": "Monitor"},
            "resource": {"group": "monivault.io", "version": "v1alpha1", "resource": "monitors"},
            "name": name,
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": {
                "apiVersion": "monivault.io/v1alpha1",
                "kind": "Monitor",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"url": "https://shop.example.com/"},
            },
            "oldObject": null,
            "dryRun": false,
        }
    })
    .to_string()
    .into_bytes()
}

fn post<B>(path: &str, body: B) -> Request<B> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(body)
        .expect("request")
}

fn full(body: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(body.into())
}

/// The response of an AdmissionReview that came back with HTTP 200.
async fn response_of(response: hyper::Response<hyper::body::Incoming>) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    let review: Value = serde_json::from_slice(&bytes).expect("an AdmissionReview");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    review["response"].clone()
}

async fn send1(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    body: Vec<u8>,
) -> Value {
    sender.ready().await.expect("connection ready");
    let response = sender
        .send_request(post(path, full(body)))
        .await
        .expect("response");
    response_of(response).await
}

/// Waits for a condition the server reaches on its own; a guard, not a measurement.
async fn until(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..2000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never saw: {what}");
}

/// A request body that sends `chunks` chunks of 64 KiB, then never ends: the server must
/// answer without the rest. `declared` sets a Content-Length; without it, the body is
/// chunked.
struct Endless {
    chunks: usize,
    declared: Option<u64>,
}

const CHUNK: usize = 64 * 1024;

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.chunks == 0 {
            return Poll::Pending;
        }
        self.chunks -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; CHUNK])))))
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(size) => SizeHint::with_exact(size),
            None => SizeHint::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[tokio::test]
async fn a_valid_review_gets_the_admissions_answer_with_its_uid_on_every_route() {
    let harness = start(Limits::default()).await;
    let mut sender = harness.http1().await;
    for route in Route::ALL {
        let response = send1(&mut sender, route.path(), review(UID, "shop-check")).await;
        assert_eq!(response["uid"], UID);
        assert_eq!(response["allowed"], true);
        assert_eq!(
            response["warnings"],
            json!([format!("route {}", route.path())])
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_malformed_body_is_a_400_refusal_and_the_connection_stays_usable() {
    let harness = start(Limits::default()).await;
    let mut sender = harness.http1().await;
    let path = Route::MutateVaultItems.path();

    let response = send1(&mut sender, path, b"{not json".to_vec()).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);

    // The wrong kind, with a uid the refusal echoes.
    let wrong = json!({"apiVersion": "v1", "kind": "Pod", "request": {"uid": UID}});
    let response = send1(&mut sender, path, wrong.to_string().into_bytes()).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    assert_eq!(response["uid"], UID);

    let response = send1(&mut sender, path, Vec::new()).await;
    assert_eq!(response["status"]["code"], 400);

    // Same connection, still answering.
    let response = send1(&mut sender, path, review(UID, "fine")).await;
    assert_eq!(response["allowed"], true);
    harness.stop().await;
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_it_is_read() {
    let harness = start(Limits::default()).await;
    let mut sender = harness.http1::<Endless>().await;
    // One chunk sent, then nothing: only a refusal by Content-Length can answer this.
    let body = Endless {
        chunks: 1,
        declared: Some(MAX_BODY_BYTES as u64 + 1),
    };
    let response = sender
        .send_request(post(Route::MutateVaultItems.path(), body))
        .await
        .expect("response");
    let response = response_of(response).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 413);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(message.contains("over the limit"), "{message}");
    harness.stop().await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_while_it_streams() {
    let harness = start(Limits::default()).await;
    let mut sender = harness.http1::<Endless>().await;
    // Past the limit, then nothing: the server must stop reading at the limit.
    let body = Endless {
        chunks: MAX_BODY_BYTES / CHUNK + 2,
        declared: None,
    };
    let response = sender
        .send_request(post(Route::MutateVaultItems.path(), body))
        .await
        .expect("response");
    let response = response_of(response).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 413);
    harness.stop().await;
}

#[tokio::test]
async fn a_slow_admission_is_a_504_refusal_with_the_request_uid() {
    let harness = start(Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let mut sender = harness.http1().await;
    let response = send1(
        &mut sender,
        Route::MutateMonitors.path(),
        review(UID, "slow"),
    )
    .await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 504);
    assert_eq!(response["uid"], UID);
    // The timed-out admission gave its slot back.
    assert_eq!(harness.load.in_flight(), 0);
    harness.stop().await;
}

#[tokio::test]
async fn admissions_beyond_the_limit_wait_for_a_slot() {
    let harness = start(Limits {
        max_in_flight: 2,
        ..Limits::default()
    })
    .await;
    let mut requests = Vec::new();
    for n in 0..3 {
        let mut sender = harness.http1().await;
        requests.push(tokio::spawn(async move {
            let uid = format!("uid-{n}");
            let response = send1(
                &mut sender,
                Route::ValidateMonitors.path(),
                review(&uid, "gated"),
            )
            .await;
            (uid, response)
        }));
    }
    let admission = &harness.admission;
    let load = &harness.load;
    until("two admissions blocked and a third queued", || {
        admission.in_flight.load(Ordering::SeqCst) == 2 && load.waiting() == 1
    })
    .await;
    // The third is queued in the server, not inside the admission.
    assert_eq!(admission.entered.load(Ordering::SeqCst), 2);
    assert_eq!(load.in_flight(), 2);

    admission.gate.add_permits(3);
    for request in requests {
        let (uid, response) = request.await.expect("request task");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["uid"], uid);
    }
    assert_eq!(admission.entered.load(Ordering::SeqCst), 3);
    assert_eq!(admission.max_in_flight.load(Ordering::SeqCst), 2);
    harness.stop().await;
}

#[tokio::test]
async fn when_no_slot_frees_up_in_time_the_request_is_a_503_refusal() {
    let harness = start(Limits {
        max_in_flight: 0,
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let mut sender = harness.http1().await;
    let response = send1(
        &mut sender,
        Route::MutateMonitors.path(),
        review(UID, "fine"),
    )
    .await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 503);
    assert_eq!(response["uid"], UID);
    assert_eq!(harness.load.waiting(), 0);
    harness.stop().await;
}

#[tokio::test]
async fn a_panicking_admission_is_a_500_refusal_and_the_connection_survives() {
    let harness = start(Limits::default()).await;
    let mut sender = harness.http1().await;
    let path = Route::MutateMonitors.path();
    let response = send1(&mut sender, path, review(UID, "panics")).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 500);
    assert_eq!(response["uid"], UID);
    let response = send1(&mut sender, path, review(UID, "fine")).await;
    assert_eq!(response["allowed"], true);
    harness.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_wrong_methods_405_and_healthz_answers() {
    let harness = start(Limits::default()).await;
    let mut sender = harness.http1::<Full<Bytes>>().await;
    let mut status = async |method: Method, path: &str| {
        sender.ready().await.expect("connection ready");
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(full(review(UID, "x")))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    };
    assert_eq!(
        status(Method::POST, "/mutate/pods").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(status(Method::POST, "/").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        status(Method::GET, "/mutate/vaultitems").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        status(Method::POST, "/healthz").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let (code, body) = status(Method::GET, "/healthz").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
    harness.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_carries_concurrent_reviews() {
    let harness = start(Limits::default()).await;
    let sender = harness.http2().await;
    let mut requests = Vec::new();
    for n in 0..4 {
        let mut sender = sender.clone();
        requests.push(tokio::spawn(async move {
            let uid = format!("h2-{n}");
            let request = post(
                "https://localhost/mutate/vaultitems",
                full(review(&uid, "x")),
            );
            let response = sender.send_request(request).await.expect("response");
            assert_eq!(response.version(), Version::HTTP_2);
            (uid, response_of(response).await)
        }));
    }
    for request in requests {
        let (uid, response) = request.await.expect("request task");
        assert_eq!(response["uid"], uid);
        assert_eq!(response["allowed"], true);
    }
    harness.stop().await;
}

#[tokio::test]
async fn silent_clients_are_dropped_and_block_no_one() {
    // Generous for the real client below, which must handshake and send within it.
    let harness = start(Limits {
        handshake_timeout: Duration::from_secs(2),
        ..Limits::default()
    })
    .await;
    // One never starts TLS, one finishes TLS (asking for HTTP/2) and never sends a byte.
    let mut no_handshake = TcpStream::connect(harness.addr).await.expect("connect");
    let mut no_request = harness.tls(b"h2").await;

    let mut sender = harness.http1().await;
    let response = send1(&mut sender, Route::ValidateDeletes.path(), review(UID, "x")).await;
    assert_eq!(response["allowed"], true);

    // The server hangs up on both: their reads end.
    let mut buffer = [0u8; 64];
    let read = no_handshake.read(&mut buffer).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    loop {
        // HTTP/2 servers speak first (SETTINGS); what matters is that the stream ends.
        match no_request.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    // The working client's connection is the only one left.
    let load = Arc::clone(&harness.load);
    until("the silent connections are closed", || {
        load.connections() == 1
    })
    .await;
    harness.stop().await;
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_then_stops() {
    let harness = start(Limits::default()).await;
    let mut sender = harness.http1().await;
    let request = tokio::spawn(async move {
        send1(
            &mut sender,
            Route::MutateMonitors.path(),
            review(UID, "gated"),
        )
        .await
    });
    let admission = Arc::clone(&harness.admission);
    until("the request is in the admission", || {
        admission.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;

    let Harness {
        addr,
        mut stop,
        server,
        ..
    } = harness;
    stop.take()
        .expect("stop")
        .send(())
        .expect("server listening for stop");
    // Stopped accepting: the listener is closed.
    let mut refused = false;
    for _ in 0..2000 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the listener never closed");
    assert!(!server.is_finished(), "the server returned before draining");

    admission.gate.add_permits(1);
    let response = request.await.expect("request task");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["uid"], UID);
    server.await.expect("server task").expect("server result");
}

/// A POST of a review over a TLS connection made with `config`: the HTTP status, or `None`
/// if the server refused the connection (at the handshake or right after).
async fn post_with(addr: SocketAddr, config: ClientConfig) -> Option<StatusCode> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::POST)
        .uri(Route::MutateMonitors.path())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review(UID, "shop"))))
        .expect("request");
    Some(sender.send_request(request).await.ok()?.status())
}

#[tokio::test]
async fn with_a_client_ca_only_callers_with_its_certificate_are_answered() {
    // The server's certificate, and a CA for the API server's client certificate.
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("server certificate");
    let server_cert: CertificateDer<'static> = issued.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
    let certified =
        rustls::sign::CertifiedKey::from_der(vec![server_cert.clone()], key, &provider())
            .expect("certified key");
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut client_params =
        rcgen::CertificateParams::new(vec!["kube-apiserver".to_owned()]).expect("params");
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = rcgen::KeyPair::generate().expect("client key");
    let client = client_params
        .signed_by(&client_key, &issuer)
        .expect("client certificate");

    let server = Server::bind(
        "127.0.0.1:0".parse().expect("address"),
        resolver.clone(),
        Arc::new(TestAdmission::default()),
        Limits::default(),
    )
    .await
    .expect("bind")
    .require_client_certificates(resolver, ca.pem().as_bytes())
    .expect("client CA");
    let addr = server.local_addr().expect("address");
    let _serving = tokio::spawn(server.serve(std::future::pending()));

    let mut roots = RootCertStore::empty();
    roots.add(server_cert).expect("trust the server");
    let builder = || {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
    };
    // A pod that reaches the port, with a forged review and no certificate: no answer.
    assert_eq!(post_with(addr, builder().with_no_client_auth()).await, None);
    // The API server with its client certificate: answered.
    let with_cert = builder()
        .with_client_auth_cert(
            vec![client.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der())),
        )
        .expect("client identity");
    assert_eq!(post_with(addr, with_cert).await, Some(StatusCode::OK));
}
