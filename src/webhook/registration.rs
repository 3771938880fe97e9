//! monivault's webhook configurations: which requests the API server sends to which
//! [`Route`], and what it does when the webhook cannot answer.
//!
//! One `MutatingWebhookConfiguration` and one `ValidatingWebhookConfiguration`, both named
//! [`Registration::name`]. Every webhook fails closed (`failurePolicy: Fail`): with the
//! webhook down, a plaintext write is refused rather than stored, and a monitor write
//! rather than let through unauthorized.
//!
//! Built here, applied with server-side apply by [`Registration::apply`] (`monivault run`
//! pointing at itself), or printed by [`Registration::to_yaml`] (`monivault webhooks`).
//! The Helm chart renders the same configurations; `tests/chart.rs` checks that they agree.
//!
//! No webhook ever covers `kube-system` or the operator's own namespace: a monivault that
//! is down must never lock the cluster's components, nor the namespace it needs mended to
//! start again.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use super::Route;

/// The field manager of the configurations, for server-side apply.
pub const FIELD_MANAGER: &str = "monivault";
/// The API server's own limit for `timeoutSeconds`, and its default.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 10;

const GROUP: &str = "monivault.io";
const VERSION: &str = "v1alpha1";
/// The label every namespace carries with its own name (Kubernetes sets it, users cannot
/// change it), so a selector on it restricts webhooks to named namespaces.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Never covered by a webhook, whatever the registration, beside the operator's namespace.
pub const SYSTEM_NAMESPACE: &str = "kube-system";

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("cannot apply the {kind} {name}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot render the webhook configurations as YAML")]
    Yaml(#[source] serde_saphyr::SerializeError),
}

/// Where the API server sends admission requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTarget {
    /// A base URL such as `https://127.0.0.1:8443`; the route's path is appended. What the
    /// local control plane uses, with no Service in front.
    Url(String),
    /// A Service in the cluster.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

/// monivault's webhook configurations, as one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The name of both configuration objects, e.g. `monivault`.
    pub name: String,
    pub target: ClientTarget,
    /// PEM of the CA that signed the serving certificate; `None` when the API server
    /// trusts it already (or cert-manager's CA injector fills it in).
    pub ca_bundle: Option<Vec<u8>>,
    /// The operator's own namespace, which no webhook covers (nor [`SYSTEM_NAMESPACE`]).
    pub operator_namespace: String,
    /// Only requests in these namespaces reach the webhooks; `None` for all (but the two
    /// above).
    pub namespaces: Option<Vec<String>>,
    /// The API server's timeout per call, 1 to 30 seconds.
    pub timeout_seconds: i32,
}

impl Registration {
    /// A registration of every namespace but `kube-system` and `operator_namespace`, with
    /// no CA bundle and the default timeout.
    pub fn new(
        name: impl Into<String>,
        target: ClientTarget,
        operator_namespace: impl Into<String>,
    ) -> Self {
        Registration {
            name: name.into(),
            target,
            ca_bundle: None,
            operator_namespace: operator_namespace.into(),
            namespaces: None,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        }
    }

    pub fn mutating(&self) -> MutatingWebhookConfiguration {
        let webhook =
            |name: &str, route, rules, side_effects: &str, reinvocation: &str| MutatingWebhook {
                name: name.to_owned(),
                client_config: self.client_config(route),
                rules: Some(rules),
                side_effects: side_effects.to_owned(),
                failure_policy: Some("Fail".to_owned()),
                match_policy: Some("Equivalent".to_owned()),
                reinvocation_policy: Some(reinvocation.to_owned()),
                admission_review_versions: vec!["v1".to_owned()],
                namespace_selector: self.namespace_selector(),
                timeout_seconds: Some(self.timeout_seconds),
                ..MutatingWebhook::default()
            };
        MutatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(vec![
                // Sealing creates an environment's missing keys, never on a dry run.
                webhook(
                    "vaultitems.mutate.monivault.io",
                    Route::MutateVaultItems,
                    rules(&["CREATE", "UPDATE"], &["vaultitems"]),
                    "NoneOnDryRun",
                    // Another webhook's change cannot bring plaintext back: sealing once
                    // is enough.
                    "Never",
                ),
                webhook(
                    "monitors.mutate.monivault.io",
                    Route::MutateMonitors,
                    rules(&["CREATE", "UPDATE"], &["monitors", "monitorruns"]),
                    "None",
                    // The stamp covers the final spec: re-stamp after a later webhook.
                    "IfNeeded",
                ),
            ]),
        }
    }

    pub fn validating(&self) -> ValidatingWebhookConfiguration {
        let webhook = |name: &str, route, rules| ValidatingWebhook {
            name: name.to_owned(),
            client_config: self.client_config(route),
            rules: Some(rules),
            side_effects: "None".to_owned(),
            failure_policy: Some("Fail".to_owned()),
            match_policy: Some("Equivalent".to_owned()),
            admission_review_versions: vec!["v1".to_owned()],
            namespace_selector: self.namespace_selector(),
            timeout_seconds: Some(self.timeout_seconds),
            ..ValidatingWebhook::default()
        };
        ValidatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(vec![
                webhook(
                    "monitors.validate.monivault.io",
                    Route::ValidateMonitors,
                    rules(&["CREATE", "UPDATE"], &["monitors", "monitorruns"]),
                ),
                webhook(
                    "deletes.validate.monivault.io",
                    Route::ValidateDeletes,
                    rules(&["DELETE"], &["vaultitems", "vaultsections"]),
                ),
                // Widening allowedHosts needs `allowhosts`, judged on the final object.
                webhook(
                    "vaultitems.validate.monivault.io",
                    Route::ValidateVaultItems,
                    rules(&["CREATE", "UPDATE"], &["vaultitems"]),
                ),
            ]),
        }
    }

    /// Server-side applies both configurations, taking over fields another manager set.
    pub async fn apply(&self, client: &kube::Client) -> Result<(), RegistrationError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        mutating
            .patch(&self.name, &params, &Patch::Apply(self.mutating()))
            .await
            .map_err(|source| RegistrationError::Apply {
                kind: "MutatingWebhookConfiguration",
                name: self.name.clone(),
                source,
            })?;
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        validating
            .patch(&self.name, &params, &Patch::Apply(self.validating()))
            .await
            .map_err(|source| RegistrationError::Apply {
                kind: "ValidatingWebhookConfiguration",
                name: self.name.clone(),
                source,
            })?;
        tracing::info!(name = %self.name, "webhook configurations applied");
        Ok(())
    }

    /// Both configurations as YAML documents, mutating first.
    pub fn to_yaml(&self) -> Result<String, RegistrationError> {
        let mutating =
            serde_saphyr::to_string(&self.mutating()).map_err(RegistrationError::Yaml)?;
        let validating =
            serde_saphyr::to_string(&self.validating()).map_err(RegistrationError::Yaml)?;
        Ok(format!("{mutating}---\n{validating}"))
    }

    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "monivault".to_owned(),
            )])),
            ..ObjectMeta::default()
        }
    }

    fn client_config(&self, route: Route) -> WebhookClientConfig {
        let (url, service) = match &self.target {
            ClientTarget::Url(base) => (
                Some(format!("{}{}", base.trim_end_matches('/'), route.path())),
                None,
            ),
            ClientTarget::Service {
                namespace,
                name,
                port,
            } => (
                None,
                Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    port: Some(*port),
                    path: Some(route.path().to_owned()),
                }),
            ),
        };
        WebhookClientConfig {
            url,
            service,
            ca_bundle: self.ca_bundle.clone().map(ByteString),
        }
    }

    /// The namespaces never covered, first (the chart renders them in the same order), then
    /// the ones asked for.
    fn namespace_selector(&self) -> Option<LabelSelector> {
        let mut excluded = vec![SYSTEM_NAMESPACE.to_owned()];
        if !self.operator_namespace.is_empty() && self.operator_namespace != SYSTEM_NAMESPACE {
            excluded.push(self.operator_namespace.clone());
        }
        let mut expressions = vec![LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.to_owned(),
            operator: "NotIn".to_owned(),
            values: Some(excluded),
        }];
        if let Some(namespaces) = &self.namespaces {
            expressions.push(LabelSelectorRequirement {
                key: NAMESPACE_NAME_LABEL.to_owned(),
                operator: "In".to_owned(),
                values: Some(namespaces.clone()),
            });
        }
        Some(LabelSelector {
            match_expressions: Some(expressions),
            match_labels: None,
        })
    }
}

/// Operations on resources of our group and version, namespaced, main resource only (a
/// `status` write carries no new secret or item reference).
fn rules(operations: &[&str], resources: &[&str]) -> Vec<RuleWithOperations> {
    let strings = |values: &[&str]| values.iter().map(|v| (*v).to_owned()).collect();
    vec![RuleWithOperations {
        api_groups: Some(vec![GROUP.to_owned()]),
        api_versions: Some(vec![VERSION.to_owned()]),
        operations: Some(strings(operations)),
        resources: Some(strings(resources)),
        scope: Some("Namespaced".to_owned()),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_registration() -> Registration {
        Registration::new(
            "monivault",
            ClientTarget::Url("https://127.0.0.1:8443/".into()),
            "monivault-system",
        )
    }

    fn excluded(namespaces: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(namespaces.iter().map(|ns| (*ns).to_owned()).collect()),
        }
    }

    /// Every webhook's selector, mutating ones first.
    fn selectors(registration: &Registration) -> Vec<LabelSelector> {
        let mutating = registration.mutating().webhooks.expect("webhooks");
        let validating = registration.validating().webhooks.expect("webhooks");
        mutating
            .into_iter()
            .map(|w| w.namespace_selector)
            .chain(validating.into_iter().map(|w| w.namespace_selector))
            .map(|s| s.expect("a namespace selector"))
            .collect()
    }

    fn rule(rules: &Option<Vec<RuleWithOperations>>) -> (Vec<String>, Vec<String>) {
        let rules = rules.as_ref().expect("rules");
        assert_eq!(rules.len(), 1);
        let rule = &rules[0];
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&["monivault.io".to_owned()][..])
        );
        assert_eq!(
            rule.api_versions.as_deref(),
            Some(&["v1alpha1".to_owned()][..])
        );
        assert_eq!(rule.scope.as_deref(), Some("Namespaced"));
        (
            rule.operations.clone().expect("operations"),
            rule.resources.clone().expect("resources"),
        )
    }

    #[test]
    fn the_item_mutation_seals_on_create_and_update_and_is_honest_about_dry_runs() {
        let config = url_registration().mutating();
        assert_eq!(config.metadata.name.as_deref(), Some("monivault"));
        let labels = config.metadata.labels.expect("labels");
        assert_eq!(labels["app.kubernetes.io/name"], "monivault");
        let webhooks = config.webhooks.expect("webhooks");
        assert_eq!(webhooks.len(), 2);
        let items = &webhooks[0];
        assert_eq!(items.name, "vaultitems.mutate.monivault.io");
        assert_eq!(
            rule(&items.rules),
            (
                vec!["CREATE".into(), "UPDATE".into()],
                vec!["vaultitems".into()]
            )
        );
        assert_eq!(items.side_effects, "NoneOnDryRun");
        assert_eq!(items.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(items.reinvocation_policy.as_deref(), Some("Never"));
        assert_eq!(items.match_policy.as_deref(), Some("Equivalent"));
        assert_eq!(items.admission_review_versions, vec!["v1".to_owned()]);
        assert_eq!(items.timeout_seconds, Some(10));
        assert_eq!(
            items.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/mutate/vaultitems")
        );

        let monitors = &webhooks[1];
        assert_eq!(monitors.name, "monitors.mutate.monivault.io");
        assert_eq!(
            rule(&monitors.rules),
            (
                vec!["CREATE".into(), "UPDATE".into()],
                vec!["monitors".into(), "monitorruns".into()]
            )
        );
        assert_eq!(monitors.side_effects, "None");
        assert_eq!(monitors.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(monitors.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(
            monitors.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/mutate/monitors")
        );
    }

    #[test]
    fn the_validations_check_monitor_writes_guard_deletes_and_widened_hosts() {
        let config = url_registration().validating();
        assert_eq!(config.metadata.name.as_deref(), Some("monivault"));
        let webhooks = config.webhooks.expect("webhooks");
        assert_eq!(webhooks.len(), 3);
        let monitors = &webhooks[0];
        assert_eq!(monitors.name, "monitors.validate.monivault.io");
        assert_eq!(
            rule(&monitors.rules),
            (
                vec!["CREATE".into(), "UPDATE".into()],
                vec!["monitors".into(), "monitorruns".into()]
            )
        );
        assert_eq!(
            monitors.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/validate/monitors")
        );
        let deletes = &webhooks[1];
        assert_eq!(deletes.name, "deletes.validate.monivault.io");
        assert_eq!(
            rule(&deletes.rules),
            (
                vec!["DELETE".into()],
                vec!["vaultitems".into(), "vaultsections".into()]
            )
        );
        assert_eq!(
            deletes.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/validate/deletes")
        );
        let items = &webhooks[2];
        assert_eq!(items.name, "vaultitems.validate.monivault.io");
        assert_eq!(
            rule(&items.rules),
            (
                vec!["CREATE".into(), "UPDATE".into()],
                vec!["vaultitems".into()]
            )
        );
        assert_eq!(
            items.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/validate/vaultitems")
        );
        for webhook in &webhooks {
            assert_eq!(webhook.side_effects, "None");
            assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(webhook.admission_review_versions, vec!["v1".to_owned()]);
        }
    }

    #[test]
    fn webhook_names_are_unique_and_dns_like() {
        let registration = url_registration();
        let mut names: Vec<String> = registration
            .mutating()
            .webhooks
            .into_iter()
            .flatten()
            .map(|w| w.name)
            .chain(
                registration
                    .validating()
                    .webhooks
                    .into_iter()
                    .flatten()
                    .map(|w| w.name),
            )
            .collect();
        for name in &names {
            assert!(name.split('.').count() >= 3, "{name}");
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 5);
    }

    #[test]
    fn a_service_target_names_the_service_and_the_route_path() {
        let mut registration = Registration::new(
            "monivault",
            ClientTarget::Service {
                namespace: "monivault-system".into(),
                name: "monivault-webhook".into(),
                port: 443,
            },
            "monivault-system",
        );
        registration.ca_bundle = Some(b"-----BEGIN CERTIFICATE-----\n".to_vec());
        registration.timeout_seconds = 5;
        let webhooks = registration.validating().webhooks.expect("webhooks");
        let config = &webhooks[1].client_config;
        assert!(config.url.is_none());
        let service = config.service.as_ref().expect("service");
        assert_eq!(service.namespace, "monivault-system");
        assert_eq!(service.name, "monivault-webhook");
        assert_eq!(service.port, Some(443));
        assert_eq!(service.path.as_deref(), Some("/validate/deletes"));
        assert_eq!(
            config.ca_bundle.as_ref().map(|b| b.0.as_slice()),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        assert_eq!(webhooks[1].timeout_seconds, Some(5));
    }

    #[test]
    fn no_webhook_ever_covers_kube_system_or_the_operators_namespace() {
        let registration = url_registration();
        for selector in selectors(&registration) {
            assert!(selector.match_labels.is_none());
            assert_eq!(
                selector.match_expressions,
                Some(vec![excluded(&["kube-system", "monivault-system"])])
            );
        }
        // An operator in kube-system itself names it once.
        let mut registration = url_registration();
        registration.operator_namespace = "kube-system".into();
        for selector in selectors(&registration) {
            assert_eq!(
                selector.match_expressions,
                Some(vec![excluded(&["kube-system"])])
            );
        }
    }

    #[test]
    fn listed_namespaces_narrow_the_selector_and_the_exclusions_stay() {
        let mut registration = url_registration();
        registration.namespaces = Some(vec!["shop".into(), "billing".into()]);
        for selector in selectors(&registration) {
            assert!(selector.match_labels.is_none());
            assert_eq!(
                selector.match_expressions,
                Some(vec![
                    excluded(&["kube-system", "monivault-system"]),
                    LabelSelectorRequirement {
                        key: "kubernetes.io/metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec!["shop".into(), "billing".into()]),
                    }
                ])
            );
        }
    }

    #[test]
    fn the_yaml_holds_both_configurations_with_the_ca_bundle_in_base64() {
        let mut registration = url_registration();
        registration.ca_bundle = Some(b"pem".to_vec());
        let yaml = registration.to_yaml().expect("yaml");
        assert!(
            yaml.contains("kind: MutatingWebhookConfiguration"),
            "{yaml}"
        );
        assert!(
            yaml.contains("kind: ValidatingWebhookConfiguration"),
            "{yaml}"
        );
        assert!(
            yaml.contains("apiVersion: admissionregistration.k8s.io/v1"),
            "{yaml}"
        );
        assert!(yaml.contains("caBundle: cGVt"), "{yaml}");
        assert!(yaml.contains("sideEffects: NoneOnDryRun"), "{yaml}");
        assert_eq!(yaml.matches("\n---\n").count(), 1, "{yaml}");
    }
}
