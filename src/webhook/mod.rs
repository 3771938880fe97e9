//! The admission webhooks: decisions only, from a parsed `AdmissionRequest` to an
//! `AdmissionResponse`. Serving them over HTTPS is the job of the server that wraps them.
//!
//! - [`seal_items`]: the mutating webhook for `VaultItem`. It seals every plaintext
//!   write-only field into `spec.sealed.<field>`, masks the plaintext with `*****` in the spec
//!   and in the `last-applied-configuration` annotation, and checks sealed values written
//!   by hand.
//! - [`authorize`]: the decision for `Monitor` and `MonitorRun` writes: the requesting user
//!   needs the `use` verb on every vault item the object carries, before and after the
//!   change, or on the item's section.
//! - [`hosts`]: the validating webhook for `VaultItem`: widening `allowedHosts` needs the
//!   `allowhosts` verb.
//! - [`deletes`]: the delete guards.
//! - [`parse_review`]: raw body bytes to a request, or to a clean error for bad input.
//! - [`server`]: the routes over HTTPS (rustls, HTTP/1.1 and HTTP/2), with body, concurrency
//!   and time limits, in front of an [`Admission`].
//! - [`registration`]: the webhook configurations that send the API server's requests here.
//!
//! What it must never do:
//! - return or log a plaintext: messages name fields and reasons, patches carry only the
//!   mask and sealed values, and parse errors are redacted ([`redact_parse_error`]) because
//!   serde quotes the values it could not read;
//! - write anything but an environment's missing keys (through
//!   [`Keys::ensure_environment`](crate::store::Keys::ensure_environment)), and
//!   never that on a dry run: the webhooks are registered with `sideEffects: NoneOnDryRun`;
//! - panic on any input.

pub mod archives;
pub mod authorize;
pub mod deletes;
pub mod handlers;
pub mod hosts;
pub mod last_applied;
pub mod metrics;
pub mod monitors;
pub mod registration;
pub mod review_cache;
pub mod seal_items;
pub mod server;
pub mod serving;
pub mod tls;

use std::future::Future;

use futures::future::BoxFuture;

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::{DynamicObject, Status};
use serde::de::DeserializeOwned;

pub use authorize::{
    ALLOW_HOSTS_VERB, AccessCheck, AuthorizeError, Authorizer, ItemFacts, ItemLookup, KubeLookup,
    MonitorLookup, SubjectAccessReviewAuthorizer, USE_VERB, VaultResource, authorize_monitor_write,
};
pub use deletes::{DeleteLookup, guard_delete};
pub use handlers::Webhooks;
pub use metrics::AdmissionMetrics;
pub use monitors::{check_monitor_write, stamp_monitor_write};
pub use seal_items::{SealError, seal_vault_item};
pub use server::Limits;
pub use serving::{RunningWebhooks, TlsSource, WebhookSettings, WebhookStartError, start};

/// The admission endpoints the server exposes, one per registered webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Mutating, `VaultItem` CREATE/UPDATE: seal plaintext, mask it.
    MutateVaultItems,
    /// Mutating, `Monitor`/`MonitorRun` CREATE/UPDATE: authorize the `use` of every item,
    /// then stamp the object.
    MutateMonitors,
    /// Validating, `VaultItem` CREATE/UPDATE: adding to `allowedHosts` needs `allowhosts`.
    ValidateVaultItems,
    /// Validating, `Monitor`/`MonitorRun` CREATE/UPDATE: the stamp still matches the final
    /// object (another mutating webhook may have run after ours).
    ValidateMonitors,
    /// Validating, `VaultItem`/`VaultSection` DELETE: nothing still needs the object.
    ValidateDeletes,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::MutateVaultItems,
        Route::MutateMonitors,
        Route::ValidateVaultItems,
        Route::ValidateMonitors,
        Route::ValidateDeletes,
    ];

    /// The URL path the API server posts to.
    pub fn path(self) -> &'static str {
        match self {
            Route::MutateVaultItems => "/mutate/vaultitems",
            Route::MutateMonitors => "/mutate/monitors",
            Route::ValidateVaultItems => "/validate/vaultitems",
            Route::ValidateMonitors => "/validate/monitors",
            Route::ValidateDeletes => "/validate/deletes",
        }
    }

    pub fn from_path(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|route| route.path() == path)
    }
}

/// What the HTTPS server calls for every parsed request: the decisions, behind one small
/// interface so the server knows nothing about keys or the API server.
pub trait Admission: Send + Sync + 'static {
    fn admit(&self, route: Route, request: Request) -> BoxFuture<'_, AdmissionResponse>;
}

/// The largest AdmissionReview body accepted. A review holds the object and, on update,
/// the old object; etcd caps each near 1.5 MiB, so 3 MiB covers both.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

const REVIEW_KIND: &str = "AdmissionReview";
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// The request every handler takes: the object stays untyped until the handler parses it,
/// so a bad object still gets a response that echoes the request's uid.
pub type Request = AdmissionRequest<DynamicObject>;

/// Why a body is not an AdmissionReview we can answer.
#[derive(Debug, thiserror::Error)]
pub enum MalformedReview {
    #[error("the AdmissionReview body is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the AdmissionReview body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "expected kind AdmissionReview of apiVersion admission.k8s.io/v1, got kind {kind:?} of apiVersion {api_version:?}"
    )]
    WrongType { kind: String, api_version: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request does not parse: {0}")]
    BadRequest(String),
}

/// A body that [`parse_review`] refused, with the request uid when one could be read (the
/// API server matches the response to the request by it).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct BadReview {
    pub uid: Option<String>,
    pub error: MalformedReview,
}

impl BadReview {
    /// The response that tells the caller what was wrong: `allowed: false`, code 400 (413
    /// for an oversized body).
    pub fn into_response(self) -> AdmissionResponse {
        let code = match self.error {
            MalformedReview::TooLarge { .. } => 413,
            _ => 400,
        };
        let mut response = AdmissionResponse::invalid(self.error.to_string());
        response.result = response.result.with_code(code);
        if let Some(uid) = self.uid {
            response.uid = uid;
        }
        response
    }
}

/// Parses an AdmissionReview body. Never panics: anything else becomes a [`BadReview`].
pub fn parse_review(body: &[u8]) -> Result<Request, BadReview> {
    let bad = |uid: Option<String>, error| BadReview { uid, error };
    if body.len() > MAX_BODY_BYTES {
        return Err(bad(
            None,
            MalformedReview::TooLarge {
                size: body.len(),
                limit: MAX_BODY_BYTES,
            },
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(None, MalformedReview::NotJson(redact_parse_error(&e))))?;
    let uid = value
        .pointer("/request/uid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let text = |key| {
        value
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (kind, api_version) = (text("kind"), text("apiVersion"));
    if kind != REVIEW_KIND || api_version != REVIEW_API_VERSION {
        return Err(bad(uid, MalformedReview::WrongType { kind, api_version }));
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(value).map_err(|e| {
        bad(
            uid.clone(),
            MalformedReview::BadRequest(redact_parse_error(&e)),
        )
    })?;
    review
        .try_into()
        .map_err(|_| bad(uid, MalformedReview::NoRequest))
}

/// Body bytes in, AdmissionReview out: a bad body gets its [`BadReview`] response, a good
/// one the response of `admit`. What a server calls per request.
pub async fn review<F, Fut>(body: &[u8], admit: F) -> AdmissionReview<DynamicObject>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = AdmissionResponse>,
{
    match parse_review(body) {
        Ok(request) => admit(request).await.into_review(),
        Err(bad) => bad.into_response().into_review(),
    }
}

/// A refusal of `request` with an HTTP status `code`, a Kubernetes `reason` and a message
/// for the user.
pub(crate) fn refuse(
    request: &Request,
    code: u16,
    reason: &str,
    message: &str,
) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(request);
    response.allowed = false;
    response.result = Status::failure(message, reason).with_code(code);
    response
}

/// Parses a part of an object (e.g. its `spec`) into `T`, with a redacted error.
pub(crate) fn parse_part<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    T::deserialize(value).map_err(|e| redact_parse_error(&e))
}

/// serde's message for a value it could not read, without the value. serde quotes what it
/// found (`invalid type: string "hunter2", expected struct SecretSpec`), and a user who
/// writes `secret: hunter2` instead of `secret: {value: hunter2}` would see the secret
/// come back in the error, which the API server passes on and may log. The part after
/// "expected" comes from our types and stays, so the message still says what to write.
pub fn redact_parse_error(error: &serde_json::Error) -> String {
    let message = error.to_string();
    // Field names come from our types, not from the input.
    if message.starts_with("missing field ") || message.starts_with("duplicate field ") {
        return message;
    }
    // The found value may hold anything, ", expected " included, while the expected list
    // of an unknown variant or field does not: cut at the last one.
    for what in ["unknown variant", "unknown field"] {
        if message.starts_with(what) {
            return match message.rfind(", expected ") {
                Some(at) => format!("{what} <redacted>{}", &message[at..]),
                None => format!("{what} <redacted>"),
            };
        }
    }
    redact_quoted(&message)
}

/// Replaces every `"…"` (as serde writes a string, with `\"` escapes) and `` `…` `` (a
/// number, boolean or name) before the first unquoted "expected " by `<redacted>`.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("expected ") {
            out.push_str(rest);
            return out;
        }
        match c {
            '"' => {
                rest = skip_quoted(&rest[1..]);
                out.push_str("<redacted>");
            }
            '`' => {
                rest = match rest[1..].find('`') {
                    Some(end) => &rest[end + 2..],
                    None => "",
                };
                out.push_str("<redacted>");
            }
            _ => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// The text after the closing quote of a Debug-escaped string whose opening quote is
/// already consumed; empty if it never closes.
fn skip_quoted(text: &str) -> &str {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return &text[i + 1..],
            _ => {}
        }
    }
    ""
}

/// `/spec/credentialSet/password` as a user reads it: `spec.credentialSet.password`.
pub(crate) fn dotted(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// How a refusal names the kind of a request this webhook does not handle: `a Deployment`
/// when the kind is a plausible kind name (letters and digits), else `an object of
/// another kind`. Nothing else of the request is echoed: it may hold anything, a
/// plaintext included, and an answer must never carry one.
pub(crate) fn foreign_kind(kind: &str) -> String {
    let plausible = (1..=63).contains(&kind.len())
        && kind.starts_with(|c: char| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    if plausible {
        format!("a {kind}")
    } else {
        "an object of another kind".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-s3cret";

    fn error_of<T: DeserializeOwned + std::fmt::Debug>(json: serde_json::Value) -> String {
        let error = serde_json::from_value::<T>(json).unwrap_err();
        redact_parse_error(&error)
    }

    #[test]
    fn a_secret_in_the_wrong_place_is_not_echoed() {
        use crate::api::VaultItemSpec;
        let cases = [
            serde_json::json!({"type": "Secret", "section": "s", "secret": SECRET}),
            serde_json::json!({"type": "Secret", "section": "s", "secret": {"value": 4242424242u64}}),
            serde_json::json!({"type": SECRET, "section": "s"}),
            serde_json::json!({"type": "Secret", "section": "s", "secret": format!("a\", expected {SECRET}")}),
            serde_json::json!({"type": "Secret", "section": ["x", SECRET]}),
        ];
        for case in cases {
            let message = error_of::<VaultItemSpec>(case);
            assert!(!message.contains(SECRET), "{message}");
            assert!(!message.contains("4242424242"), "{message}");
            assert!(message.contains("expected"), "{message}");
        }
    }

    #[test]
    fn the_expected_part_stays_to_help() {
        use crate::api::VaultItemSpec;
        let message = error_of::<VaultItemSpec>(
            serde_json::json!({"type": "Secret", "section": "s", "secret": SECRET}),
        );
        assert!(message.contains("struct SecretSpec"), "{message}");
        let message =
            error_of::<VaultItemSpec>(serde_json::json!({"type": "Password", "section": "s"}));
        assert!(
            message.starts_with("unknown variant <redacted>, expected one of"),
            "{message}"
        );
        assert!(message.contains("`CredentialSet`"), "{message}");
        let message = error_of::<VaultItemSpec>(serde_json::json!({"type": "Secret"}));
        assert_eq!(message, "missing field `section`");
    }

    #[test]
    fn skip_quoted_honours_escapes() {
        assert_eq!(skip_quoted(r#"a\"b" rest"#), " rest");
        assert_eq!(skip_quoted(r#"a\\" rest"#), " rest");
        assert_eq!(skip_quoted("never closed"), "");
        assert_eq!(redact_quoted("x `unterminated"), "x <redacted>");
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        let bad = parse_review(&body).unwrap_err();
        assert!(matches!(bad.error, MalformedReview::TooLarge { .. }));
        let response = bad.into_response();
        assert!(!response.allowed);
        assert_eq!(response.result.code, 413);
    }

    #[test]
    fn dotted_reads_like_a_field_path() {
        assert_eq!(
            dotted("/spec/credentialSet/password"),
            "spec.credentialSet.password"
        );
    }
}
