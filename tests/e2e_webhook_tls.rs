//! The self-managed webhook certificate on the real control plane: replicas agree on one
//! CA through the Secret, renewals replace the serving certificate and reach the other
//! replicas, and the CA bundle lands in the webhook configurations.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use monivault::webhook::tls::{
    CertResolver, SECRET_NAME, SelfManaged, SelfManagedConfig, TlsError, patch_ca_bundle,
    run_self_managed,
};
use support::{cluster, eventually};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn replica(client: Client, ns: &str) -> SelfManaged {
    SelfManaged::new(client, ns, SelfManagedConfig::local()).expect("config")
}

#[tokio::test]
async fn two_replicas_starting_together_agree_on_one_ca() {
    let c = cluster();
    let ns = c.temp_namespace("tls-agree").await;
    let (a, b) = (replica(c.admin().await, &ns), replica(c.admin().await, &ns));
    let (first, second) = tokio::join!(a.ensure(), b.ensure());
    let (first, second) = (first.expect("replica a"), second.expect("replica b"));
    assert_eq!(first.ca_pem, second.ca_pem);
    assert_eq!(first.cert_pem, second.cert_pem);
    assert_eq!(first.key_pem(), second.key_pem());

    let secret = Api::<Secret>::namespaced(c.admin().await, &ns)
        .get(SECRET_NAME)
        .await
        .expect("the Secret exists");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let labels = secret.metadata.labels.expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "monivault");
    let data = secret.data.expect("data");
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    );
    assert_eq!(data["ca.crt"].0, first.ca_pem.as_bytes());

    // A restart reads the same, writing nothing.
    let again = replica(c.admin().await, &ns).ensure().await.expect("again");
    assert_eq!(again.resource_version, first.resource_version);
}

#[tokio::test]
async fn renewal_replaces_the_serving_certificate_once_for_all_replicas() {
    let c = cluster();
    let ns = c.temp_namespace("tls-renew").await;
    let (a, b) = (replica(c.admin().await, &ns), replica(c.admin().await, &ns));
    let issued = a.ensure().await.expect("create");

    // Six days into seven, both replicas find renewal due at once: one renews, the other
    // loses the compare-and-swap, re-reads and takes the new certificate.
    let later = SystemTime::now() + 6 * DAY;
    let (ra, rb) = tokio::join!(a.ensure_at(later), b.ensure_at(later));
    let (ra, rb) = (ra.expect("renew a"), rb.expect("renew b"));
    assert_eq!(ra.ca_pem, issued.ca_pem, "renewal keeps the CA");
    assert_ne!(ra.cert_pem, issued.cert_pem);
    assert_eq!(ra.cert_pem, rb.cert_pem);
    assert_ne!(ra.resource_version, issued.resource_version);

    // New names (the operator moved into the cluster): reissued, the same CA.
    let moved = SelfManaged::new(
        c.admin().await,
        &ns,
        SelfManagedConfig::in_cluster("monivault-webhook", &ns),
    )
    .expect("config");
    let reissued = moved.ensure().await.expect("reissue");
    assert_eq!(reissued.ca_pem, issued.ca_pem);
    assert_ne!(reissued.cert_pem, ra.cert_pem);
}

#[tokio::test]
async fn a_secret_of_someone_else_is_not_overwritten() {
    let c = cluster();
    let ns = c.temp_namespace("tls-foreign").await;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.to_owned()),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    };
    Api::<Secret>::namespaced(c.admin().await, &ns)
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create");
    let error = replica(c.admin().await, &ns).ensure().await.unwrap_err();
    assert!(matches!(error, TlsError::ForeignSecret { .. }), "{error}");
}

/// A webhook that can never be called: its URL is a closed port, and it selects only
/// namespaces with a label nobody has.
fn client_config() -> WebhookClientConfig {
    WebhookClientConfig {
        url: Some("https://127.0.0.1:1/x".to_owned()),
        ..WebhookClientConfig::default()
    }
}

fn no_namespace() -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "monivault.io/never".to_owned(),
            "true".to_owned(),
        )])),
        ..LabelSelector::default()
    })
}

async fn create_configurations(client: &Client, name: &str) {
    let mutating = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        webhooks: Some(
            ["one", "two"]
                .map(|w| MutatingWebhook {
                    name: format!("{w}.tls-test.monivault.io"),
                    client_config: client_config(),
                    namespace_selector: no_namespace(),
                    side_effects: "None".to_owned(),
                    admission_review_versions: vec!["v1".to_owned()],
                    failure_policy: Some("Ignore".to_owned()),
                    ..MutatingWebhook::default()
                })
                .to_vec(),
        ),
    };
    let validating = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: "three.tls-test.monivault.io".to_owned(),
            client_config: client_config(),
            namespace_selector: no_namespace(),
            side_effects: "None".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            failure_policy: Some("Ignore".to_owned()),
            ..ValidatingWebhook::default()
        }]),
    };
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .expect("create mutating");
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .expect("create validating");
}

async fn bundles(client: &Client, name: &str) -> Vec<Option<Vec<u8>>> {
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .expect("mutating");
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .expect("validating");
    let mut all: Vec<Option<Vec<u8>>> = mutating
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.map(|b| b.0))
        .collect();
    all.extend(
        validating
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.client_config.ca_bundle.map(|b| b.0)),
    );
    all
}

async fn delete_configurations(client: &Client, name: &str) {
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn the_ca_bundle_is_patched_into_every_webhook_only_when_it_differs() {
    let c = cluster();
    let ns = c.temp_namespace("tls-bundle").await;
    let admin = c.admin().await;
    let name = format!("monivault-tls-test-{ns}");
    create_configurations(&admin, &name).await;

    let served = replica(admin.clone(), &ns).ensure().await.expect("ensure");
    let updated = patch_ca_bundle(&admin, &name, &served.ca_pem)
        .await
        .expect("patch");
    assert_eq!(updated, 2);
    let wanted = Some(served.ca_pem.as_bytes().to_vec());
    assert_eq!(bundles(&admin, &name).await, vec![wanted.clone(); 3]);
    // Already there: nothing written.
    let updated = patch_ca_bundle(&admin, &name, &served.ca_pem)
        .await
        .expect("patch again");
    assert_eq!(updated, 0);
    // A configuration that does not exist (yet) is not an error.
    let missing = patch_ca_bundle(&admin, &format!("{name}-absent"), &served.ca_pem)
        .await
        .expect("missing");
    assert_eq!(missing, 0);
    delete_configurations(&admin, &name).await;
}

#[tokio::test]
async fn a_running_replica_serves_another_replicas_renewal_and_fixes_the_bundle() {
    let c = cluster();
    let ns = c.temp_namespace("tls-run").await;
    let admin = c.admin().await;
    let name = format!("monivault-tls-test-{ns}");
    create_configurations(&admin, &name).await;

    let mut config = SelfManagedConfig::local();
    config.reload_interval = Duration::from_millis(200);
    let resolver = Arc::new(CertResolver::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(run_self_managed(
        admin.clone(),
        ns.clone(),
        config,
        resolver.clone(),
        vec![name.clone()],
        async move {
            let _ = stopped.await;
        },
    ));

    let other = replica(admin.clone(), &ns);
    eventually("the first certificate is served", || async {
        resolver.is_loaded().then_some(())
    })
    .await;
    let current = other.ensure().await.expect("read");
    let wanted = Some(current.ca_pem.as_bytes().to_vec());
    eventually("the bundle is set", || async {
        (bundles(&admin, &name).await == vec![wanted.clone(); 3]).then_some(())
    })
    .await;

    // Another replica renews; this one picks it up on its next re-read.
    let renewed = other
        .ensure_at(SystemTime::now() + 6 * DAY)
        .await
        .expect("renew");
    assert_ne!(renewed.cert_pem, current.cert_pem);
    let renewed_der = pem_der(&renewed.cert_pem);
    eventually("the renewed certificate is served", || async {
        resolver
            .current()
            .is_some_and(|key| key.cert[0].as_ref() == renewed_der.as_slice())
            .then_some(())
    })
    .await;

    // Someone clears a bundle: the next round puts it back.
    let mutating = Api::<MutatingWebhookConfiguration>::all(admin.clone());
    let mut edited = mutating.get(&name).await.expect("get");
    for webhook in edited.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = None;
    }
    mutating
        .replace(&name, &PostParams::default(), &edited)
        .await
        .expect("clear");
    eventually("the bundle is restored", || async {
        (bundles(&admin, &name).await == vec![wanted.clone(); 3]).then_some(())
    })
    .await;

    let _ = stop.send(());
    runner.await.expect("join").expect("runs cleanly");
    delete_configurations(&admin, &name).await;
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}
