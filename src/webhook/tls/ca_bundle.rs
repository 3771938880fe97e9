//! The CA bundle in the webhook configurations: how the API server learns to trust the
//! self-managed CA.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TlsError;
use super::self_managed::{FIELD_MANAGER, is_status};

/// Re-reads after a lost race before giving up until the next round.
const MAX_ATTEMPTS: u32 = 3;

/// A webhook configuration kind, seen as its list of client configs.
trait WebhookConfiguration:
    Resource<DynamicType = ()> + Clone + std::fmt::Debug + Serialize + DeserializeOwned
{
    const KIND: &'static str;
    fn client_configs(&mut self) -> impl Iterator<Item = &mut WebhookClientConfig>;
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    const KIND: &'static str = "MutatingWebhookConfiguration";
    fn client_configs(&mut self) -> impl Iterator<Item = &mut WebhookClientConfig> {
        self.webhooks
            .iter_mut()
            .flatten()
            .map(|webhook| &mut webhook.client_config)
    }
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    const KIND: &'static str = "ValidatingWebhookConfiguration";
    fn client_configs(&mut self) -> impl Iterator<Item = &mut WebhookClientConfig> {
        self.webhooks
            .iter_mut()
            .flatten()
            .map(|webhook| &mut webhook.client_config)
    }
}

/// Sets `clientConfig.caBundle` of every webhook in the MutatingWebhookConfiguration and
/// the ValidatingWebhookConfiguration named `config_name` to `ca_pem`. Writes only what
/// differs, by replace at the resourceVersion it read. A configuration that does not exist
/// is skipped (the caller tries again next round). Returns how many configurations it
/// updated.
pub async fn patch_ca_bundle(
    client: &Client,
    config_name: &str,
    ca_pem: &str,
) -> Result<usize, TlsError> {
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mutating = patch_one::<MutatingWebhookConfiguration>(client, config_name, &bundle).await?;
    let validating =
        patch_one::<ValidatingWebhookConfiguration>(client, config_name, &bundle).await?;
    Ok(usize::from(mutating) + usize::from(validating))
}

async fn patch_one<K: WebhookConfiguration>(
    client: &Client,
    name: &str,
    bundle: &ByteString,
) -> Result<bool, TlsError> {
    let api: Api<K> = Api::all(client.clone());
    let what = || format!("{} {name}", K::KIND);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    for _ in 0..MAX_ATTEMPTS {
        let found = api.get_opt(name).await.map_err(|source| TlsError::Kube {
            what: what(),
            source,
        })?;
        let Some(mut config) = found else {
            tracing::debug!(
                kind = K::KIND,
                name,
                "webhook configuration not found; CA bundle not set"
            );
            return Ok(false);
        };
        let mut changed = false;
        for client_config in config.client_configs() {
            if client_config.ca_bundle.as_ref() != Some(bundle) {
                client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        // The object carries the resourceVersion it was read at: a concurrent writer
        // makes this a 409, and the loop re-reads.
        match api.replace(name, &params, &config).await {
            Ok(_) => {
                tracing::info!(kind = K::KIND, name, "webhook CA bundle updated");
                return Ok(true);
            }
            Err(e) if is_status(&e, 409) => continue,
            Err(e) if is_status(&e, 404) => return Ok(false),
            Err(source) => {
                return Err(TlsError::Kube {
                    what: what(),
                    source,
                });
            }
        }
    }
    Err(TlsError::Conflict {
        what: what(),
        attempts: MAX_ATTEMPTS,
    })
}
