//! `Monitor` (`mon`): an HTTP(S) check that runs on an interval and may carry vault items,
//! through typed fields (`auth`, `clientCertificate`) or placeholders such as
//! `{{@VaultItem.shop-api-token.Value}}` in the URL, header values and body.
//!
//! `MonitorSpec` is also the inline spec of a `MonitorRun`, so its rules hold there too.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;
use super::duration::Duration;
use super::names::ObjectName;
use super::vault_item::ItemType;

/// Size limits of monitor fields; they also bound the cost of the CEL rules.
pub mod limits {
    /// `url`.
    pub const URL: usize = 2048;
    /// Entries in `headers`.
    pub const HEADERS: usize = 32;
    /// A header name.
    pub const HEADER_NAME: usize = 256;
    /// A header value.
    pub const HEADER_VALUE: usize = 8 * 1024;
    /// `body`.
    pub const BODY: usize = 64 * 1024;
    /// Entries in `assertions.statusCodes`, `bodyContains` and `bodyNotContains`.
    pub const ASSERTIONS: usize = 16;
    /// One `bodyContains` or `bodyNotContains` entry.
    pub const ASSERTION_TEXT: usize = 1024;
}

/// A monitor field over its limit. Names the field and the limit, never the value: a
/// header value or body may hold a literal token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct LimitError {
    /// The spec field, e.g. `headers[3].value`.
    pub field: String,
    /// What is over, e.g. `is 9000 characters long: at most 8192`.
    pub reason: String,
}

/// An HTTP(S) check on an interval.
// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "monivault.io",
    version = "v1alpha1",
    kind = "Monitor",
    namespaced,
    status = "MonitorStatus",
    derive = "PartialEq",
    shortname = "mon",
    category = "monivault",
    cel,
    doc = "An HTTP(S) check that runs on an interval and may carry vault items. Changing a monitor that uses an item needs the use verb on that item or its section.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Last Run", type_ = "date", json_path = ".status.lastRunAt"),
    printcolumn(
        name = "Response Time",
        type_ = "string",
        json_path = ".status.responseTime"
    ),
    printcolumn(name = "Interval", type_ = "string", json_path = ".spec.interval"),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.paused",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.timeout) || !has(self.interval) || duration(self.timeout) <= duration(self.interval)").message("timeout must not be longer than interval"))]
#[x_kube(validation = Rule::new("!has(self.assertions) || !has(self.assertions.maxResponseTime) || !has(self.timeout) || duration(self.assertions.maxResponseTime) <= duration(self.timeout)").message("assertions.maxResponseTime must not be longer than timeout"))]
#[x_kube(validation = Rule::new("!has(self.auth) || !has(self.headers) || !self.headers.exists(h, h.name.lowerAscii() == 'authorization')").message("headers must not set Authorization when auth is set"))]
#[serde(rename_all = "camelCase")]
pub struct MonitorSpec {
    /// The URL to request, `http://` or `https://`. Placeholders may appear in the path
    /// and query, never in the host.
    #[schemars(length(min = 1, max = limits::URL))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must start with http:// or https://"))]
    #[x_kube(validation = Rule::new("!(self.startsWith('https://') || self.startsWith('http://')) || self.matches('^https?://[^/?#{}]+([/?#]|$)')").message("url must name its host literally: no {{...}} placeholder before the path"))]
    #[x_kube(validation = Rule::new("!self.matches('^https?://[^/?#{]*[@\\\\\\\\]')").message("url must not hold user information (user@) or a backslash before the path: the host is what allowedHosts are checked against, and parsers disagree on such URLs"))]
    pub url: String,

    /// The HTTP method.
    #[serde(default)]
    pub method: HttpMethod,

    /// Request headers. Values may hold placeholders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::HEADERS))]
    #[x_kube(validation = Rule::new("self.all(h, h.name.lowerAscii() != 'host')").message("headers must not set Host: the host comes from url, which is what allowedHosts are checked against"))]
    pub headers: Vec<Header>,

    /// The request body. May hold placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::BODY))]
    pub body: Option<String>,

    /// How often the check runs, from 10s to 24h.
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s') && duration(self) <= duration('24h')").message("interval must be between 10s and 24h"))]
    pub interval: Duration,

    /// How long one request may take, from 1s to 120s, and at most `interval`.
    #[serde(default = "default_timeout")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('120s')").message("timeout must be between 1s and 120s"))]
    pub timeout: Duration,

    /// Credentials from vault items, sent as the Authorization header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<MonitorAuth>,

    /// A TLS client certificate from a CertificateArchive item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificate>,

    /// Which certificate authorities to trust. Default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MonitorTls>,

    /// What the response must satisfy. Without `statusCodes`, any 2xx status passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertions: Option<Assertions>,

    /// Follow redirects. Secrets are never forwarded to another host.
    #[serde(default)]
    pub follow_redirects: bool,

    /// Stop scheduled runs; on-demand MonitorRuns still run.
    #[serde(default)]
    pub paused: bool,
}

fn default_interval() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(300))
}

fn default_timeout() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(30))
}

impl MonitorSpec {
    /// A GET of `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        MonitorSpec {
            url: url.into(),
            method: HttpMethod::default(),
            headers: Vec::new(),
            body: None,
            interval: default_interval(),
            timeout: default_timeout(),
            auth: None,
            client_certificate: None,
            tls: None,
            assertions: None,
            follow_redirects: false,
            paused: false,
        }
    }

    /// The items named in typed fields, with the type each must have. Placeholders are not
    /// included: find them in [`MonitorSpec::template_texts`].
    pub fn typed_item_refs(&self) -> Vec<TypedItemRef<'_>> {
        let mut refs = Vec::new();
        if let Some(auth) = &self.auth {
            if let Some(basic) = &auth.basic {
                refs.push(TypedItemRef {
                    field: "auth.basic.credentialSet",
                    name: &basic.credential_set,
                    item_type: ItemType::CredentialSet,
                });
            }
            if let Some(bearer) = &auth.bearer {
                refs.push(TypedItemRef {
                    field: "auth.bearer.secret",
                    name: &bearer.secret,
                    item_type: ItemType::Secret,
                });
            }
        }
        if let Some(cert) = &self.client_certificate {
            refs.push(TypedItemRef {
                field: "clientCertificate.certificateArchive",
                name: &cert.certificate_archive,
                item_type: ItemType::CertificateArchive,
            });
        }
        // A trust anchor holds no secret, but it decides who can read the secrets the
        // monitor sends: it is authorized, stamped and guarded like any carried item.
        if let Some(ca) = self.tls.as_ref().and_then(|t| t.ca_certificate.as_ref()) {
            refs.push(TypedItemRef {
                field: "tls.caCertificate",
                name: ca,
                item_type: ItemType::Certificate,
            });
        }
        refs
    }

    /// Checks the size limits of [`limits`], as the CRD schema states them (lengths in
    /// characters, as the API server counts). The schema is checked only after the
    /// mutating webhooks, and not at all for a spec the runner reads from elsewhere, so
    /// the webhook and the runner check again here.
    pub fn check_limits(&self) -> Result<(), LimitError> {
        check_len("url", &self.url, limits::URL)?;
        check_count("headers", self.headers.len(), limits::HEADERS)?;
        for (i, header) in self.headers.iter().enumerate() {
            check_len(
                &format!("headers[{i}].name"),
                &header.name,
                limits::HEADER_NAME,
            )?;
            check_len(
                &format!("headers[{i}].value"),
                &header.value,
                limits::HEADER_VALUE,
            )?;
        }
        if let Some(body) = &self.body {
            check_len("body", body, limits::BODY)?;
        }
        if let Some(assertions) = &self.assertions {
            check_count(
                "assertions.statusCodes",
                assertions.status_codes.len(),
                limits::ASSERTIONS,
            )?;
            for (name, texts) in [
                ("bodyContains", &assertions.body_contains),
                ("bodyNotContains", &assertions.body_not_contains),
            ] {
                check_count(
                    &format!("assertions.{name}"),
                    texts.len(),
                    limits::ASSERTIONS,
                )?;
                for (i, text) in texts.iter().enumerate() {
                    check_len(
                        &format!("assertions.{name}[{i}]"),
                        text,
                        limits::ASSERTION_TEXT,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Every text where placeholders may appear, with its field path: `url`,
    /// `headers[i].value` and `body`.
    pub fn template_texts(&self) -> Vec<(String, &str)> {
        let mut texts = vec![("url".to_owned(), self.url.as_str())];
        for (i, header) in self.headers.iter().enumerate() {
            texts.push((format!("headers[{i}].value"), header.value.as_str()));
        }
        if let Some(body) = &self.body {
            texts.push(("body".to_owned(), body.as_str()));
        }
        texts
    }
}

fn check_len(field: &str, text: &str, limit: usize) -> Result<(), LimitError> {
    // Bytes bound characters from above: count characters only when it can matter.
    if text.len() <= limit {
        return Ok(());
    }
    let length = text.chars().count();
    if length <= limit {
        return Ok(());
    }
    Err(LimitError {
        field: field.to_owned(),
        reason: format!("is {length} characters long: at most {limit}"),
    })
}

fn check_count(field: &str, count: usize, limit: usize) -> Result<(), LimitError> {
    if count <= limit {
        return Ok(());
    }
    Err(LimitError {
        field: field.to_owned(),
        reason: format!("has {count} entries: at most {limit}"),
    })
}

/// A vault item named in a typed field of a monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypedItemRef<'a> {
    /// Where it is named, e.g. `auth.basic.credentialSet`.
    pub field: &'static str,
    /// The item's name, in the monitor's namespace.
    pub name: &'a ObjectName,
    /// The type the item must have to be used there.
    pub item_type: ItemType,
}

/// HTTP methods a check may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Options => "OPTIONS",
        }
    }
}

/// One request header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// The header name, an HTTP token such as `X-Api-Key`.
    #[schemars(length(min = 1, max = limits::HEADER_NAME))]
    #[x_kube(validation = Rule::new(r#"self.matches("^[-!#$%&'*+.^_`|~0-9A-Za-z]+$")"#).message("headers[].name must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~ only"))]
    pub name: String,

    /// The header value. May hold placeholders such as `{{@VaultItem.shop-api-token.Value}}`.
    #[schemars(length(max = limits::HEADER_VALUE))]
    pub value: String,
}

/// Credentials for the Authorization header: exactly one of `basic` or `bearer`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.basic) != has(self.bearer)").message("auth must set exactly one of basic or bearer"))]
#[serde(rename_all = "camelCase")]
pub struct MonitorAuth {
    /// HTTP Basic authentication from a CredentialSet item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,

    /// A bearer token from a Secret item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
}

/// `auth.basic`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The CredentialSet item whose username and password are sent.
    pub credential_set: ObjectName,
}

/// `auth.bearer`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerAuth {
    /// The Secret item whose value is sent as `Authorization: Bearer <value>`.
    pub secret: ObjectName,
}

/// `clientCertificate`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    /// The CertificateArchive item that holds the client certificate and key.
    pub certificate_archive: ObjectName,
}

/// `tls`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitorTls {
    /// A Certificate item holding the CA (PEM) that signs the server's certificate; it
    /// replaces the system's roots. Verification is never skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<ObjectName>,
}

/// What a response must satisfy for the check to pass.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Assertions {
    /// Accepted status codes. Empty: any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::ASSERTIONS))]
    #[x_kube(validation = Rule::new("self.all(c, c >= 100 && c <= 599)").message("assertions.statusCodes must be HTTP status codes between 100 and 599"))]
    pub status_codes: Vec<u16>,

    /// The longest acceptable response time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("assertions.maxResponseTime must be longer than 0s"))]
    pub max_response_time: Option<Duration>,

    /// Texts the body must contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::ASSERTIONS), inner(length(min = 1, max = limits::ASSERTION_TEXT)))]
    pub body_contains: Vec<String>,

    /// Texts the body must not contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::ASSERTIONS), inner(length(min = 1, max = limits::ASSERTION_TEXT)))]
    pub body_not_contains: Vec<String>,
}

/// What the runner last concluded about a monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MonitorState {
    /// The last check passed.
    Up,
    /// The last check failed: an assertion, or the request could not be made.
    Down,
    /// `paused` is set: no scheduled check runs.
    Paused,
    /// The monitor carries vault items but has no valid admission stamp for its spec (it
    /// was written past the webhook, or restored from a backup), or an item is not the one
    /// authorized: no request is sent until someone allowed to use its items applies it.
    NotAuthorized,
    /// No check has run yet.
    Unknown,
}

impl MonitorState {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorState::Up => "Up",
            MonitorState::Down => "Down",
            MonitorState::Paused => "Paused",
            MonitorState::NotAuthorized => "NotAuthorized",
            MonitorState::Unknown => "Unknown",
        }
    }
}

/// What the runner last saw. Scrubbed of every secret the check used.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitorStatus {
    /// Up, Down, Paused, NotAuthorized or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MonitorState>,

    /// `Ready` is `True` while the monitor is authorized (its stamp is valid) and its last
    /// check ran; its reason says why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// When the last scheduled check started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<Time>,

    /// How long the last response took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time: Option<Duration>,

    /// The HTTP status of the last response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,

    /// Checks that failed in a row, up to the last one.
    #[serde(default)]
    pub consecutive_failures: u32,

    /// Why the last check failed, or what it found, for people. Scrubbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let spec: MonitorSpec =
            serde_json::from_value(serde_json::json!({"url": "https://shop.example.com/"}))
                .unwrap();
        assert_eq!(spec, MonitorSpec::new("https://shop.example.com/"));
        assert_eq!(spec.method, HttpMethod::Get);
        assert_eq!(spec.interval.as_str(), "5m");
        assert_eq!(spec.timeout.as_str(), "30s");
        assert!(!spec.follow_redirects);
        assert!(!spec.paused);
    }

    #[test]
    fn typed_item_refs_name_each_item_with_its_type() {
        let mut spec = MonitorSpec::new("https://shop.example.com/");
        spec.auth = Some(MonitorAuth {
            basic: Some(BasicAuth {
                credential_set: "shop-login".into(),
            }),
            bearer: None,
        });
        spec.client_certificate = Some(ClientCertificate {
            certificate_archive: "shop-client-cert".into(),
        });
        let refs: Vec<_> = spec
            .typed_item_refs()
            .into_iter()
            .map(|r| (r.field, r.name.as_str(), r.item_type))
            .collect();
        assert_eq!(
            refs,
            [
                (
                    "auth.basic.credentialSet",
                    "shop-login",
                    ItemType::CredentialSet
                ),
                (
                    "clientCertificate.certificateArchive",
                    "shop-client-cert",
                    ItemType::CertificateArchive
                ),
            ]
        );
    }

    #[test]
    fn template_texts_cover_url_header_values_and_body() {
        let mut spec = MonitorSpec::new("https://shop.example.com/?k={{@VaultItem.k.Value}}");
        spec.headers.push(Header {
            name: "X-Api-Key".into(),
            value: "{{@VaultItem.shop-api-token.Value}}".into(),
        });
        spec.body = Some("{}".into());
        let fields: Vec<_> = spec.template_texts().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["url", "headers[0].value", "body"]);
    }

    /// A spec with every limited field exactly at its limit, in multi-byte characters
    /// where a length is counted.
    fn spec_at_limits() -> MonitorSpec {
        let text = |n: usize| "é".repeat(n);
        let mut spec = MonitorSpec::new(format!(
            "https://shop.example.com/{}",
            "a".repeat(limits::URL - 25)
        ));
        spec.headers = (0..limits::HEADERS)
            .map(|_| Header {
                name: "X".repeat(limits::HEADER_NAME),
                value: text(limits::HEADER_VALUE),
            })
            .collect();
        spec.body = Some(text(limits::BODY));
        spec.assertions = Some(Assertions {
            status_codes: vec![200; limits::ASSERTIONS],
            max_response_time: None,
            body_contains: vec![text(limits::ASSERTION_TEXT); limits::ASSERTIONS],
            body_not_contains: vec![text(limits::ASSERTION_TEXT); limits::ASSERTIONS],
        });
        spec
    }

    #[test]
    fn every_field_at_its_limit_passes_and_one_over_is_refused_by_name() {
        let spec = spec_at_limits();
        assert_eq!(spec.url.chars().count(), limits::URL);
        assert_eq!(spec.check_limits(), Ok(()));

        type Grow = fn(&mut MonitorSpec);
        let cases: [(&str, &str, Grow); 10] = [
            ("url", "is 2049 characters long: at most 2048", |s| {
                s.url.push('a')
            }),
            ("headers", "has 33 entries: at most 32", |s| {
                let h = s.headers[0].clone();
                s.headers.push(h)
            }),
            ("headers[31].name", "at most 256", |s| {
                s.headers[31].name.push('X')
            }),
            (
                "headers[5].value",
                "is 8193 characters long: at most 8192",
                |s| s.headers[5].value.push('x'),
            ),
            ("body", "is 65537 characters long: at most 65536", |s| {
                if let Some(b) = s.body.as_mut() {
                    b.push('x')
                }
            }),
            (
                "assertions.statusCodes",
                "has 17 entries: at most 16",
                |s| {
                    if let Some(a) = s.assertions.as_mut() {
                        a.status_codes.push(200)
                    }
                },
            ),
            ("assertions.bodyContains", "has 17 entries", |s| {
                if let Some(a) = s.assertions.as_mut() {
                    a.body_contains.push("x".into())
                }
            }),
            ("assertions.bodyContains[15]", "at most 1024", |s| {
                if let Some(a) = s.assertions.as_mut() {
                    a.body_contains[15].push('x')
                }
            }),
            ("assertions.bodyNotContains", "has 17 entries", |s| {
                if let Some(a) = s.assertions.as_mut() {
                    a.body_not_contains.push("x".into())
                }
            }),
            ("assertions.bodyNotContains[0]", "at most 1024", |s| {
                if let Some(a) = s.assertions.as_mut() {
                    a.body_not_contains[0].push('x')
                }
            }),
        ];
        for (field, reason, grow) in cases {
            let mut spec = spec_at_limits();
            grow(&mut spec);
            let error = spec.check_limits().expect_err(field);
            assert_eq!(error.field, field);
            assert!(error.reason.contains(reason), "{field}: {error}");
        }
    }

    #[test]
    fn a_limit_error_never_quotes_the_value() {
        let mut spec = MonitorSpec::new("https://shop.example.com/");
        let token = format!("tok-{}", "s3cret".repeat(2000));
        spec.headers.push(Header {
            name: "X-Api-Key".into(),
            value: token.clone(),
        });
        let message = spec.check_limits().expect_err("too long").to_string();
        assert!(!message.contains("s3cret"), "{message}");
        assert!(
            message.starts_with("headers[0].value is 12004"),
            "{message}"
        );
    }

    #[test]
    fn methods_are_upper_case_on_the_wire() {
        assert_eq!(
            serde_json::to_value(HttpMethod::Options).unwrap(),
            "OPTIONS"
        );
        assert!(serde_json::from_value::<HttpMethod>(serde_json::json!("get")).is_err());
    }
}
