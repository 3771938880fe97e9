use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::authority::{self, Lifetimes, SubjectNames, TlsMaterial, Verdict};
use super::files::{CertFiles, Reload};
use super::self_managed::{parse_for_tests, secret_for_tests};
use super::*;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const LIFETIMES: Lifetimes = Lifetimes {
    ca: Duration::from_secs(3650 * 24 * 60 * 60),
    serving: Duration::from_secs(7 * 24 * 60 * 60),
};

fn local_names() -> SubjectNames {
    SubjectNames::new(["localhost"], [IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

fn material_at(now: SystemTime) -> TlsMaterial {
    authority::fresh(&local_names(), LIFETIMES, now).expect("material")
}

fn served_leaf(resolver: &CertResolver) -> Vec<u8> {
    resolver.current().expect("a certificate is loaded").cert[0].to_vec()
}

fn leaf_der(pem: &str) -> Vec<u8> {
    parse_chain("test", pem.as_bytes()).expect("pem")[0].to_vec()
}

#[test]
fn the_resolver_swaps_and_refuses_a_key_of_another_certificate() {
    let resolver = CertResolver::new();
    assert!(!resolver.is_loaded());
    let first = material_at(SystemTime::now());
    resolver
        .set(first.cert_pem.as_bytes(), first.key_pem.as_bytes())
        .expect("first pair");
    assert_eq!(served_leaf(&resolver), leaf_der(&first.cert_pem));

    let second = material_at(SystemTime::now());
    resolver
        .set(second.cert_pem.as_bytes(), second.key_pem.as_bytes())
        .expect("second pair");
    assert_eq!(served_leaf(&resolver), leaf_der(&second.cert_pem));

    // The first certificate with the second key: refused, the second pair stays.
    let error = resolver
        .set(first.cert_pem.as_bytes(), second.key_pem.as_bytes())
        .unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    assert_eq!(served_leaf(&resolver), leaf_der(&second.cert_pem));
}

#[test]
fn unreadable_pems_are_refused_without_quoting_them() {
    let resolver = CertResolver::new();
    let good = material_at(SystemTime::now());
    let garbage = "-----BEGIN PRIVATE KEY-----\nSENTINEL!!notbase64\n-----END PRIVATE KEY-----\n";
    let cases: [(&[u8], &[u8]); 4] = [
        (b"", good.key_pem.as_bytes()),
        (b"not pem at all", good.key_pem.as_bytes()),
        (good.cert_pem.as_bytes(), garbage.as_bytes()),
        (good.cert_pem.as_bytes(), good.cert_pem.as_bytes()),
    ];
    for (cert, key) in cases {
        let error = resolver.set(cert, key).unwrap_err();
        let message = format!("{error} {error:?}");
        assert!(matches!(error, TlsError::Pem { .. }), "{message}");
        assert!(!message.contains("SENTINEL"), "{message}");
        assert!(!message.contains("MII"), "{message}");
    }
    assert!(!resolver.is_loaded());
}

#[test]
fn debug_output_never_shows_a_private_key() {
    let material = material_at(SystemTime::now());
    let debug = format!("{material:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    let resolver = CertResolver::new();
    resolver
        .set(material.cert_pem.as_bytes(), material.key_pem.as_bytes())
        .expect("pair");
    assert_eq!(format!("{resolver:?}"), "CertResolver { loaded: true }");
}

#[test]
fn renewal_is_due_with_a_third_of_the_lifetime_left() {
    let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
    let end = start + 9 * DAY;
    assert!(!authority::renewal_due(start, end, start));
    assert!(!authority::renewal_due(
        start,
        end,
        start + 6 * DAY - Duration::from_secs(1)
    ));
    assert!(authority::renewal_due(
        start,
        end,
        start + 6 * DAY + Duration::from_secs(1)
    ));
    assert!(authority::renewal_due(start, end, end + DAY));
    // Not yet valid (a clock ahead of ours issued it): nothing to renew.
    assert!(!authority::renewal_due(start, end, start - DAY));
}

#[test]
fn stored_material_is_kept_until_renewal_is_due_then_reissued_from_the_same_ca() {
    let issued = SystemTime::now();
    let material = material_at(issued);
    let names = local_names();
    assert_eq!(authority::assess(&material, &names, issued), Verdict::Keep);
    assert_eq!(
        authority::assess(&material, &names, issued + 4 * DAY),
        Verdict::Keep
    );
    let later = issued + 5 * DAY;
    let Verdict::Reissue(reason) = authority::assess(&material, &names, later) else {
        panic!("expected a reissue five days into seven");
    };
    assert!(reason.contains("third"), "{reason}");

    let renewed = authority::reissue(&material, &names, LIFETIMES, later).expect("reissue");
    assert_eq!(renewed.ca_cert_pem, material.ca_cert_pem);
    assert_ne!(renewed.cert_pem, material.cert_pem);
    assert_eq!(authority::assess(&renewed, &names, later), Verdict::Keep);
    let facts = authority::cert_facts("tls.crt", &renewed.cert_pem).expect("facts");
    assert!(facts.not_after > later + 6 * DAY);
}

#[test]
fn changed_names_reissue_the_serving_certificate() {
    let now = SystemTime::now();
    let material = material_at(now);
    let in_cluster = SubjectNames::new(
        [
            "monivault-webhook.ops.svc",
            "monivault-webhook.ops.svc.cluster.local",
        ],
        [],
    );
    let Verdict::Reissue(reason) = authority::assess(&material, &in_cluster, now) else {
        panic!("expected a reissue for new names");
    };
    assert!(reason.contains("differ"), "{reason}");
    let renewed = authority::reissue(&material, &in_cluster, LIFETIMES, now).expect("reissue");
    assert_eq!(authority::assess(&renewed, &in_cluster, now), Verdict::Keep);
    // DNS names match without case, as clients match them.
    let shouting = SubjectNames::new(["LOCALHOST"], [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    assert_eq!(authority::assess(&material, &shouting, now), Verdict::Keep);
}

#[test]
fn a_broken_ca_starts_over_and_a_foreign_leaf_is_reissued() {
    let now = SystemTime::now();
    let material = material_at(now);
    let other = material_at(now);
    let names = local_names();

    let mut wrong_ca_key = material.clone();
    wrong_ca_key.ca_key_pem = other.ca_key_pem.clone();
    assert!(matches!(
        authority::assess(&wrong_ca_key, &names, now),
        Verdict::NewCa(reason) if reason.contains("does not belong")
    ));

    let mut foreign_leaf = material.clone();
    foreign_leaf.cert_pem = other.cert_pem.clone();
    foreign_leaf.key_pem = other.key_pem.clone();
    assert!(matches!(
        authority::assess(&foreign_leaf, &names, now),
        Verdict::Reissue(reason) if reason.contains("not issued by")
    ));

    let mut mismatched = material.clone();
    mismatched.key_pem = other.key_pem.clone();
    assert!(matches!(
        authority::assess(&mismatched, &names, now),
        Verdict::Reissue(reason) if reason.contains("does not belong")
    ));

    // Ten years on, the CA itself is due.
    assert!(matches!(
        authority::assess(&material, &names, now + 3000 * DAY),
        Verdict::NewCa(_)
    ));
}

#[test]
fn the_secret_round_trips_and_a_missing_field_is_unreadable() {
    let material = material_at(SystemTime::now());
    let secret = secret_for_tests("monivault-webhook-tls", &material);
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let labels = secret.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "monivault");
    assert_eq!(labels["monivault.io/record"], "webhook-tls");
    let parsed = parse_for_tests(&secret).expect("parse");
    assert_eq!(parsed.cert_pem, material.cert_pem);
    assert_eq!(*parsed.key_pem, *material.key_pem);
    assert_eq!(*parsed.ca_key_pem, *material.ca_key_pem);

    let mut partial = secret;
    partial.data.as_mut().expect("data").remove("ca.key");
    let reason = parse_for_tests(&partial).unwrap_err();
    assert_eq!(reason, "data key ca.key is missing");
}

#[test]
fn config_checks_refuse_what_cannot_work() {
    let mut config = SelfManagedConfig::local();
    assert_eq!(config.serving_validity, 7 * DAY);
    assert_eq!(config.secret_name, "monivault-webhook-tls");
    config.check().expect("the local defaults are valid");
    config.dns_names.clear();
    config.ip_addresses.clear();
    assert!(matches!(config.check(), Err(TlsError::Config { .. })));
    let mut short = SelfManagedConfig::local();
    short.ca_validity = short.serving_validity;
    assert!(matches!(short.check(), Err(TlsError::Config { .. })));
    let in_cluster = SelfManagedConfig::in_cluster(WEBHOOK_SERVICE, "ops");
    assert_eq!(
        in_cluster.dns_names,
        [
            "monivault-webhook.ops.svc",
            "monivault-webhook.ops.svc.cluster.local"
        ]
    );
    let error = authority::issue_serving(
        "unused",
        "unused",
        &SubjectNames::default(),
        SystemTime::now(),
        LIFETIMES,
    )
    .unwrap_err();
    assert!(matches!(error, TlsError::Config { .. }), "{error}");
}

/// A real handshake over an in-memory pipe: the client trusts only the CA and checks the
/// name it dialled.
async fn handshake(
    resolver: Arc<CertResolver>,
    ca_pem: &str,
    name: &str,
) -> Result<Vec<u8>, std::io::Error> {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(server_config(resolver).expect("server config")));
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_chain("ca", ca_pem.as_bytes()).expect("ca") {
        roots.add(cert).expect("root");
    }
    let client = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut stream = acceptor.accept(server_io).await?;
        stream.write_all(b"hello").await?;
        stream.shutdown().await
    });
    let server_name = ServerName::try_from(name.to_owned()).expect("server name");
    let result = async {
        let mut stream = connector.connect(server_name, client_io).await?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await?;
        let peer = stream.get_ref().1.peer_certificates().expect("peer")[0].to_vec();
        assert_eq!(received, b"hello");
        Ok(peer)
    }
    .await;
    // The server side fails too when the client refuses; only the client's view matters.
    let _ = server.await;
    result
}

#[tokio::test]
async fn a_served_certificate_verifies_against_its_ca_for_every_name() {
    let material = material_at(SystemTime::now());
    let resolver = Arc::new(CertResolver::new());
    resolver
        .set(material.cert_pem.as_bytes(), material.key_pem.as_bytes())
        .expect("pair");
    for name in ["localhost", "127.0.0.1"] {
        let peer = handshake(resolver.clone(), &material.ca_cert_pem, name)
            .await
            .unwrap_or_else(|e| panic!("handshake for {name}: {e}"));
        assert_eq!(peer, leaf_der(&material.cert_pem));
    }
    // A name the certificate does not carry, and a CA that did not issue it: refused.
    assert!(
        handshake(resolver.clone(), &material.ca_cert_pem, "example.com")
            .await
            .is_err()
    );
    let other = material_at(SystemTime::now());
    assert!(
        handshake(resolver.clone(), &other.ca_cert_pem, "localhost")
            .await
            .is_err()
    );

    // After a renewal the same resolver serves the new certificate, and clients with the
    // same CA bundle accept it.
    let renewed =
        authority::reissue(&material, &local_names(), LIFETIMES, SystemTime::now()).expect("renew");
    resolver
        .set(renewed.cert_pem.as_bytes(), renewed.key_pem.as_bytes())
        .expect("renewed pair");
    let peer = handshake(resolver, &material.ca_cert_pem, "localhost")
        .await
        .expect("handshake after renewal");
    assert_eq!(peer, leaf_der(&renewed.cert_pem));
}

#[tokio::test]
async fn a_resolver_without_a_certificate_refuses_handshakes() {
    let material = material_at(SystemTime::now());
    let resolver = Arc::new(CertResolver::new());
    assert!(
        handshake(resolver, &material.ca_cert_pem, "localhost")
            .await
            .is_err()
    );
}

fn write_pair(dir: &Path, material: &TlsMaterial) {
    std::fs::write(dir.join("tls.crt"), &material.cert_pem).expect("write cert");
    std::fs::write(dir.join("tls.key"), material.key_pem.as_bytes()).expect("write key");
}

#[tokio::test]
async fn files_mode_picks_up_a_rewritten_pair_and_keeps_the_old_on_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = material_at(SystemTime::now());
    write_pair(dir.path(), &first);
    let resolver = CertResolver::new();
    let mut files = CertFiles::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
    assert_eq!(files.poll(&resolver).await.expect("load"), Reload::Reloaded);
    assert_eq!(
        files.poll(&resolver).await.expect("poll"),
        Reload::Unchanged
    );
    assert_eq!(served_leaf(&resolver), leaf_der(&first.cert_pem));

    let second = material_at(SystemTime::now());
    write_pair(dir.path(), &second);
    assert_eq!(files.poll(&resolver).await.expect("poll"), Reload::Reloaded);
    assert_eq!(served_leaf(&resolver), leaf_der(&second.cert_pem));

    // Half a swap: the new certificate with the old key. Refused once, then quiet.
    let third = material_at(SystemTime::now());
    std::fs::write(dir.path().join("tls.crt"), &third.cert_pem).expect("write cert");
    let error = files.poll(&resolver).await.unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    assert!(error.to_string().contains("tls.key"), "{error}");
    assert_eq!(
        files.poll(&resolver).await.expect("poll"),
        Reload::Unchanged
    );
    assert_eq!(served_leaf(&resolver), leaf_der(&second.cert_pem));

    // The key arrives: served.
    std::fs::write(dir.path().join("tls.key"), third.key_pem.as_bytes()).expect("write key");
    assert_eq!(files.poll(&resolver).await.expect("poll"), Reload::Reloaded);
    assert_eq!(served_leaf(&resolver), leaf_der(&third.cert_pem));

    // A file gone: an error naming it, the pair stays.
    std::fs::remove_file(dir.path().join("tls.key")).expect("remove");
    let error = files.poll(&resolver).await.unwrap_err();
    assert!(matches!(error, TlsError::ReadFile { .. }), "{error}");
    assert_eq!(served_leaf(&resolver), leaf_der(&third.cert_pem));
}

/// The layout kubelet gives a mounted Secret: `tls.crt -> ..data/tls.crt`, and `..data`
/// a symlink to a timestamped directory, swapped by rename.
#[cfg(unix)]
#[tokio::test]
async fn files_mode_follows_a_kubernetes_symlink_swap() {
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let first = material_at(SystemTime::now());
    std::fs::create_dir(root.join("..2026_01_01")).expect("mkdir");
    write_pair(&root.join("..2026_01_01"), &first);
    symlink("..2026_01_01", root.join("..data")).expect("data link");
    symlink("..data/tls.crt", root.join("tls.crt")).expect("crt link");
    symlink("..data/tls.key", root.join("tls.key")).expect("key link");

    let resolver = Arc::new(CertResolver::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(watch_files(
        resolver.clone(),
        root.join("tls.crt"),
        root.join("tls.key"),
        Duration::from_millis(20),
        async move {
            let _ = stopped.await;
        },
    ));
    wait_for(&resolver, &first).await;

    let second = material_at(SystemTime::now());
    std::fs::create_dir(root.join("..2026_01_02")).expect("mkdir");
    write_pair(&root.join("..2026_01_02"), &second);
    symlink("..2026_01_02", root.join("..data_tmp")).expect("tmp link");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    std::fs::remove_dir_all(root.join("..2026_01_01")).expect("remove old");
    wait_for(&resolver, &second).await;

    let _ = stop.send(());
    watcher.await.expect("join").expect("watch ends cleanly");
}

#[tokio::test]
async fn files_mode_fails_at_start_when_the_files_are_unreadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = watch_files(
        Arc::new(CertResolver::new()),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        Duration::from_secs(60),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("tls.crt"), "{error}");
}

async fn wait_for(resolver: &CertResolver, material: &TlsMaterial) {
    let wanted = leaf_der(&material.cert_pem);
    for _ in 0..250 {
        if resolver
            .current()
            .is_some_and(|key| key.cert[0].as_ref() == wanted)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the watcher never served the expected certificate");
}

#[test]
fn an_address_among_the_webhook_names_becomes_an_ip_subject_name() {
    let config = self_managed::SelfManagedConfig::for_subject_names(&[
        "127.0.0.1".to_owned(),
        "monivault-webhook.ops.svc".to_owned(),
        "::1".to_owned(),
    ]);
    assert_eq!(config.dns_names, ["monivault-webhook.ops.svc"]);
    assert_eq!(
        config.ip_addresses,
        [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        ]
    );
}
