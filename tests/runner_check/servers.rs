//! The servers of the runner's check tests: HTTPS with certificates from a test CA (and
//! an optional client certificate it records), and plain HTTP; each records every
//! connection it accepts and every request it answers.

#![allow(dead_code)] // Each test binary that loads it uses its own subset.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

// ---------------------------------------------------------------------------------------
// Certificates

pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: Vec<u8>,
    pub client_ca: CertificateDer<'static>,
    pub client_chain: Vec<Vec<u8>>,
    pub client_key: Vec<u8>,
}

pub fn make_ca(name: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.der().clone(), Issuer::new(params, key))
}

pub fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    ips: &[IpAddr],
    usage: ExtendedKeyUsagePurpose,
) -> (CertificateDer<'static>, Vec<u8>) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("names");
    params
        .subject_alt_names
        .extend(ips.iter().copied().map(SanType::IpAddress));
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    (cert.der().clone(), key.serialize_der())
}

/// The PEM of a DER certificate, as a `Certificate` item or a `tls.caCertificate` holds it.
pub fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

pub static PKI: LazyLock<Pki> = LazyLock::new(|| {
    let (ca, issuer) = make_ca("runner test CA");
    let (server, server_key) = leaf(
        &issuer,
        &["shop.test", "api.test", "evil.test"],
        &["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_ca, client_issuer) = make_ca("runner test client CA");
    let (client, client_key) = leaf(
        &client_issuer,
        &["shop-monitor.test"],
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca,
        server_chain: vec![server],
        server_key,
        client_ca,
        client_chain: vec![client.to_vec()],
        client_key,
    }
});

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Asks for a client certificate, accepts connections without one, records it if given.
pub fn server_tls() -> TlsAcceptor {
    let mut client_roots = RootCertStore::empty();
    client_roots.add(PKI.client_ca.clone()).expect("client CA");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider())
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(PKI.server_key.clone()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(PKI.server_chain.clone(), key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

// ---------------------------------------------------------------------------------------
// Servers that record everything

/// One request as the server saw it.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The leaf certificate the client presented on this request's connection.
    pub client_cert: Option<Vec<u8>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Close the connection without answering.
    HangUp,
    /// Never answer.
    Never,
}

pub fn status(code: u16) -> Reply {
    Reply::Respond {
        status: code,
        headers: vec![],
        body: vec![],
    }
}

pub fn ok(body: &str) -> Reply {
    Reply::Respond {
        status: 200,
        headers: vec![],
        body: body.as_bytes().to_vec(),
    }
}

pub fn redirect(code: u16, location: impl Into<String>) -> Reply {
    Reply::Respond {
        status: code,
        headers: vec![("location".into(), location.into())],
        body: vec![],
    }
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

pub fn handler(f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Handler {
    Arc::new(f)
}

pub struct Server {
    pub port: u16,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub fn url(&self, scheme: &str, host: &str, path: &str) -> String {
        format!("{scheme}://{host}:{}{path}", self.port)
    }
}

pub async fn https(handler: Handler) -> Server {
    serve(Some(server_tls()), handler).await
}

pub async fn http(handler: Handler) -> Server {
    serve(None, handler).await
}

pub async fn serve(tls: Option<TlsAcceptor>, handler: Handler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let connections = connections.clone();
        let seen = seen.clone();
        async move {
            while let Ok((tcp, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                // Without it, Nagle and delayed ACKs hold small TLS records for ~40 ms.
                let _ = tcp.set_nodelay(true);
                let (tls, handler, seen) = (tls.clone(), handler.clone(), seen.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|c| c.to_vec());
                            serve_connection(TokioIo::new(stream), cert, handler, seen).await;
                        }
                        None => serve_connection(TokioIo::new(tcp), None, handler, seen).await,
                    }
                });
            }
        }
    });
    Server {
        port,
        connections,
        seen,
        task,
    }
}

pub async fn serve_connection<I>(
    io: I,
    cert: Option<Vec<u8>>,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let (handler, seen, cert) = (handler.clone(), seen.clone(), cert.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            let record = Seen {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect(),
                body,
                client_cert: cert,
            };
            seen.lock().expect("seen lock").push(record.clone());
            match handler(&record) {
                Reply::Respond {
                    status,
                    headers,
                    body,
                } => {
                    let mut response = Response::builder().status(status);
                    for (name, value) in headers {
                        response = response.header(name, value);
                    }
                    Ok(response
                        .body(Full::new(Bytes::from(body)))
                        .expect("response"))
                }
                Reply::HangUp => Err(std::io::Error::other("hang up")),
                Reply::Never => std::future::pending().await,
            }
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}
