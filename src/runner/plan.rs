//! A check's plan, made before any I/O: every placeholder parsed once, every item the
//! monitor names resolved and fit for its use; and, per hop, the request parts that may go
//! out (headers, body, typed auth) with the items each carries.
//!
//! Substitution is one pass over the spans the parser found: a value is copied in as
//! bytes and never read again, so a secret that looks like `{{@VaultItem.x.Password}}` is
//! sent as those characters. In the URL a value is percent-encoded (everything but RFC 3986
//! unreserved characters), so it can never end a path segment or start a new query
//! parameter; in a header a value with CR, LF or another control byte is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::percent_encode;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use crate::api::monitor::{HttpMethod, MonitorSpec};
use crate::api::template::{self, Placeholder, PlaceholderField};
use crate::api::vault_item::ItemType;

use super::items::{ResolvedItem, ResolvedItems};
use super::report::CheckResult;
use super::scrub::{Scrubber, ScrubberBuilder, URL_VALUE, basic_pair};
use super::totp;

/// Why a check ends before (or instead of) a request: the result and a message for people.
/// Both are scrubbed before they leave the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub result: CheckResult,
    pub message: String,
}

impl Refusal {
    pub fn new(result: CheckResult, message: impl Into<String>) -> Self {
        Refusal {
            result,
            message: message.into(),
        }
    }

    fn unusable(item: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Refusal::new(
            CheckResult::ItemUnusable {
                item: item.to_owned(),
                reason: reason.clone(),
            },
            format!("vault item {item} cannot be used: {reason}"),
        )
    }

    fn invalid(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Refusal::new(
            CheckResult::InvalidRequest {
                field: field.to_owned(),
                reason: reason.clone(),
            },
            format!("{field} {reason}"),
        )
    }
}

/// Headers the runner sets itself, or that would let a header value reshape the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
];

/// Headers that describe a body; dropped with the body when a redirect turns the request
/// into a GET.
const BODY_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "content-location",
];

/// A text that may hold placeholders.
#[derive(Debug)]
struct Templated {
    field: String,
    position: Position,
    text: String,
    placeholders: Vec<Placeholder>,
    items: BTreeSet<String>,
}

impl Templated {
    fn parse(field: String, position: Position, text: &str) -> Result<Self, Refusal> {
        let placeholders = template::parse(text).map_err(|e| {
            Refusal::new(
                CheckResult::Template {
                    field: field.clone(),
                },
                format!("{field}: {e}"),
            )
        })?;
        let items = placeholders.iter().map(|p| p.item.clone()).collect();
        Ok(Templated {
            field,
            position,
            text: text.to_owned(),
            placeholders,
            items,
        })
    }
}

/// How `auth` is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthUse {
    Basic(String),
    Bearer(String),
}

impl AuthUse {
    fn item(&self) -> &str {
        match self {
            AuthUse::Basic(item) | AuthUse::Bearer(item) => item,
        }
    }
}

/// Where a substituted value goes, which decides how it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    Url,
    Header,
    Body,
}

/// The request parts of one hop.
pub struct Parts {
    pub headers: HeaderMap,
    pub body: Option<Zeroizing<Vec<u8>>>,
    /// Items whose secrets these parts carry (not counting the client certificate).
    pub items: BTreeSet<String>,
}

/// The validated plan of one check.
#[derive(Debug)]
pub struct Plan<'a> {
    spec: &'a MonitorSpec,
    items: &'a ResolvedItems,
    url: Templated,
    headers: Vec<(HeaderName, Templated)>,
    body: Option<Templated>,
    auth: Option<AuthUse>,
    certificate: Option<String>,
    referenced: BTreeSet<String>,
}

impl<'a> Plan<'a> {
    /// Checks everything that can be checked without I/O. Fails with the first problem,
    /// naming the field, item or host.
    pub fn new(spec: &'a MonitorSpec, items: &'a ResolvedItems) -> Result<Self, Refusal> {
        // The webhook and the schema refuse a spec over its limits; a spec that got past
        // them is refused here, before any of it is parsed or rendered.
        spec.check_limits()
            .map_err(|e| Refusal::invalid(&e.field, e.reason))?;
        let url = Templated::parse("url".into(), Position::Url, &spec.url)?;
        check_url_positions(&url)?;
        let mut headers = Vec::with_capacity(spec.headers.len());
        for (i, header) in spec.headers.iter().enumerate() {
            let field = format!("headers[{i}].name");
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| Refusal::invalid(&field, "is not an HTTP header name"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(Refusal::invalid(
                    &field,
                    format!("may not set {}: the runner sets it", header.name),
                ));
            }
            if spec.auth.is_some() && name == reqwest::header::AUTHORIZATION {
                return Err(Refusal::invalid(
                    &field,
                    "may not set Authorization when auth is set",
                ));
            }
            let value = Templated::parse(
                format!("headers[{i}].value"),
                Position::Header,
                &header.value,
            )?;
            headers.push((name, value));
        }
        let body = match &spec.body {
            Some(text) => Some(Templated::parse("body".into(), Position::Body, text)?),
            None => None,
        };
        // Each text parsed; now the limits on the monitor as a whole (placeholders, items).
        template::referenced_items(spec).map_err(|e| {
            Refusal::new(
                CheckResult::Template {
                    field: e.field.clone(),
                },
                e.to_string(),
            )
        })?;
        let auth = spec
            .auth
            .as_ref()
            .and_then(|auth| match (&auth.basic, &auth.bearer) {
                (Some(basic), _) => Some(AuthUse::Basic(basic.credential_set.as_str().to_owned())),
                (None, Some(bearer)) => Some(AuthUse::Bearer(bearer.secret.as_str().to_owned())),
                (None, None) => None,
            });
        let certificate = spec
            .client_certificate
            .as_ref()
            .map(|c| c.certificate_archive.as_str().to_owned());

        // A CA certificate (`tls.caCertificate`) is trust, not a secret: the caller turns
        // it into the check's `Trust`, and nothing of it is carried.
        let mut referenced: BTreeSet<String> = spec
            .typed_item_refs()
            .iter()
            .filter(|r| r.item_type != ItemType::Certificate)
            .map(|r| r.name.as_str().to_owned())
            .collect();
        for t in std::iter::once(&url)
            .chain(headers.iter().map(|(_, t)| t))
            .chain(body.iter())
        {
            referenced.extend(t.items.iter().cloned());
        }
        for name in &referenced {
            if items.get(name).is_none() {
                return Err(Refusal::new(
                    CheckResult::ItemMissing { item: name.clone() },
                    format!("vault item {name} is used by the monitor but was not resolved"),
                ));
            }
        }

        let plan = Plan {
            spec,
            items,
            url,
            headers,
            body,
            auth,
            certificate,
            referenced,
        };
        plan.check_typed_uses()?;
        plan.check_placeholder_uses()?;
        Ok(plan)
    }

    /// Every item the monitor uses.
    pub fn referenced(&self) -> &BTreeSet<String> {
        &self.referenced
    }

    /// Items used in the URL template.
    pub fn url_items(&self) -> &BTreeSet<String> {
        &self.url.items
    }

    /// The CertificateArchive item presented as the client certificate, if any.
    pub fn certificate(&self) -> Option<&str> {
        self.certificate.as_deref()
    }

    pub fn item(&self, name: &str) -> Option<&'a ResolvedItem> {
        self.items.get(name)
    }

    pub fn method(&self) -> Method {
        to_method(self.spec.method)
    }

    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    /// The URL with its placeholders filled in (values percent-encoded), as text.
    pub fn render_url(&self, secrets: &mut UsedSecrets) -> Result<String, Refusal> {
        let bytes = self.render(&self.url, secrets)?;
        // Every substituted byte was percent-encoded, and the template is the spec's
        // string: the result is UTF-8.
        String::from_utf8(bytes.to_vec()).map_err(|_| Refusal::invalid("url", "is not UTF-8"))
    }

    /// The items the parts of a hop would carry (headers, body, typed auth), leaving out
    /// every part that uses a `dropped` item, and the body unless `send_body`.
    pub fn carried(&self, dropped: &BTreeSet<String>, send_body: bool) -> BTreeSet<String> {
        let mut carried = BTreeSet::new();
        for (_, value) in &self.headers {
            if value.items.is_disjoint(dropped) {
                carried.extend(value.items.iter().cloned());
            }
        }
        if send_body
            && let Some(body) = &self.body
            && body.items.is_disjoint(dropped)
        {
            carried.extend(body.items.iter().cloned());
        }
        if let Some(auth) = &self.auth
            && !dropped.contains(auth.item())
        {
            carried.insert(auth.item().to_owned());
        }
        carried
    }

    /// The headers and body of a hop, rendered now (a TOTP code is the one current at
    /// send time). Parts that use a `dropped` item are left out whole.
    pub fn parts(
        &self,
        dropped: &BTreeSet<String>,
        send_body: bool,
        secrets: &mut UsedSecrets,
    ) -> Result<Parts, Refusal> {
        let mut headers = HeaderMap::new();
        let mut items = BTreeSet::new();
        let body_sent = send_body
            && self
                .body
                .as_ref()
                .is_some_and(|b| b.items.is_disjoint(dropped));
        for (name, value) in &self.headers {
            if !value.items.is_disjoint(dropped) {
                continue;
            }
            if !body_sent && BODY_HEADERS.contains(&name.as_str()) && self.body.is_some() {
                continue;
            }
            let bytes = self.render(value, secrets)?;
            let mut header = HeaderValue::from_bytes(&bytes).map_err(|_| {
                Refusal::invalid(
                    &value.field,
                    "holds a byte a header value cannot carry (CR, LF or another control byte)",
                )
            })?;
            if !value.items.is_empty() {
                header.set_sensitive(true);
                items.extend(value.items.iter().cloned());
            }
            headers.append(name.clone(), header);
        }
        if let Some(auth) = &self.auth
            && !dropped.contains(auth.item())
        {
            headers.insert(reqwest::header::AUTHORIZATION, self.auth_header(auth)?);
            items.insert(auth.item().to_owned());
        }
        let body = match &self.body {
            Some(body) if body_sent => {
                items.extend(body.items.iter().cloned());
                Some(self.render(body, secrets)?)
            }
            _ => None,
        };
        Ok(Parts {
            headers,
            body,
            items,
        })
    }

    fn auth_header(&self, auth: &AuthUse) -> Result<HeaderValue, Refusal> {
        let item = self.item_or_missing(auth.item())?;
        let mut value = match auth {
            AuthUse::Basic(_) => {
                let (user, pass) = basic_parts(item)?;
                let pair = basic_pair(user.as_bytes(), pass);
                let mut value = Zeroizing::new(b"Basic ".to_vec());
                value.extend_from_slice(STANDARD.encode(&*pair).as_bytes());
                HeaderValue::from_bytes(&value)
            }
            AuthUse::Bearer(_) => {
                let token = item
                    .secret
                    .as_ref()
                    .ok_or_else(|| Refusal::unusable(&item.name, "it has no value"))?;
                check_header_bytes(token.expose()).map_err(|reason| {
                    Refusal::unusable(&item.name, format!("auth.bearer: {reason}"))
                })?;
                let mut value = Zeroizing::new(b"Bearer ".to_vec());
                value.extend_from_slice(token.expose());
                HeaderValue::from_bytes(&value)
            }
        }
        .map_err(|_| Refusal::unusable(auth.item(), "its value cannot be sent in a header"))?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn item_or_missing(&self, name: &str) -> Result<&'a ResolvedItem, Refusal> {
        self.items.get(name).ok_or_else(|| {
            Refusal::new(
                CheckResult::ItemMissing {
                    item: name.to_owned(),
                },
                format!("vault item {name} is used by the monitor but was not resolved"),
            )
        })
    }

    fn render(
        &self,
        t: &Templated,
        secrets: &mut UsedSecrets,
    ) -> Result<Zeroizing<Vec<u8>>, Refusal> {
        let mut out = Zeroizing::new(Vec::with_capacity(t.text.len()));
        let mut at = 0;
        for p in &t.placeholders {
            out.extend_from_slice(&t.text.as_bytes()[at..p.span.start]);
            let value = self.value(&p.item, p.field, secrets)?;
            match t.position {
                Position::Url => {
                    out.extend(percent_encode(&value, URL_VALUE).flat_map(str::bytes));
                }
                Position::Header => {
                    check_header_bytes(&value).map_err(|reason| {
                        Refusal::unusable(&p.item, format!("{}: its {} {reason}", t.field, p.field))
                    })?;
                    out.extend_from_slice(&value);
                }
                Position::Body => out.extend_from_slice(&value),
            }
            at = p.span.end;
        }
        out.extend_from_slice(&t.text.as_bytes()[at..]);
        Ok(out)
    }

    /// The bytes a placeholder stands for.
    fn value(
        &self,
        name: &str,
        field: PlaceholderField,
        secrets: &mut UsedSecrets,
    ) -> Result<Zeroizing<Vec<u8>>, Refusal> {
        let item = self.item_or_missing(name)?;
        let missing = |what: &str| Refusal::unusable(name, format!("it has no {what}"));
        match field {
            PlaceholderField::Username => item
                .username
                .as_ref()
                .map(|u| Zeroizing::new(u.as_bytes().to_vec()))
                .ok_or_else(|| missing("username")),
            PlaceholderField::Password | PlaceholderField::Value => item
                .secret
                .as_ref()
                .map(|s| Zeroizing::new(s.expose().to_vec()))
                .ok_or_else(|| missing("value")),
            PlaceholderField::OneTimePassword => {
                let seed = item
                    .otp
                    .as_ref()
                    .ok_or_else(|| missing("one-time password seed"))?;
                let code =
                    totp::code_now(seed).map_err(|e| Refusal::unusable(name, e.to_string()))?;
                secrets.code(name, code.as_bytes());
                Ok(Zeroizing::new(code.as_bytes().to_vec()))
            }
        }
    }

    fn check_typed_uses(&self) -> Result<(), Refusal> {
        for r in self.spec.typed_item_refs() {
            if r.item_type == ItemType::Certificate {
                continue;
            }
            let item = self.item_or_missing(r.name.as_str())?;
            if item.item_type != r.item_type {
                return Err(Refusal::unusable(
                    &item.name,
                    format!(
                        "{} needs a {} item, and it is a {}",
                        r.field, r.item_type, item.item_type
                    ),
                ));
            }
        }
        if let Some(auth) = &self.auth {
            let item = self.item_or_missing(auth.item())?;
            match auth {
                AuthUse::Basic(_) => {
                    basic_parts(item)?;
                }
                AuthUse::Bearer(_) => {
                    self.auth_header(auth)?;
                }
            }
        }
        if let Some(name) = &self.certificate {
            let item = self.item_or_missing(name)?;
            if item.client_identity.is_none() {
                return Err(Refusal::unusable(
                    name,
                    "it has no client certificate and key",
                ));
            }
        }
        Ok(())
    }

    fn check_placeholder_uses(&self) -> Result<(), Refusal> {
        let texts = std::iter::once(&self.url)
            .chain(self.headers.iter().map(|(_, t)| t))
            .chain(self.body.iter());
        for t in texts {
            for p in &t.placeholders {
                let item = self.item_or_missing(&p.item)?;
                let fits = matches!(
                    (p.field, item.item_type),
                    (PlaceholderField::Username, ItemType::CredentialSet)
                        | (PlaceholderField::Password, ItemType::CredentialSet)
                        | (PlaceholderField::Value, ItemType::Secret)
                        | (PlaceholderField::OneTimePassword, ItemType::OneTimePassword)
                );
                if !fits {
                    return Err(Refusal::unusable(
                        &item.name,
                        format!(
                            "{}: a {} item has no {} field",
                            t.field, item.item_type, p.field
                        ),
                    ));
                }
                // Fails early for a missing value or a seed that does not decode.
                let mut scratch = UsedSecrets::default();
                let value = self.value(&p.item, p.field, &mut scratch)?;
                if t.position == Position::Header {
                    check_header_bytes(&value).map_err(|reason| {
                        Refusal::unusable(&p.item, format!("{}: its {} {reason}", t.field, p.field))
                    })?;
                }
            }
        }
        Ok(())
    }
}

fn to_method(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
    }
}

/// A CredentialSet's username and password, fit for Basic authentication.
fn basic_parts(item: &ResolvedItem) -> Result<(&str, &[u8]), Refusal> {
    let user = item
        .username
        .as_deref()
        .ok_or_else(|| Refusal::unusable(&item.name, "it has no username"))?;
    if user.contains(':') {
        return Err(Refusal::unusable(
            &item.name,
            "auth.basic: its username holds ':', which Basic authentication cannot carry",
        ));
    }
    let pass = item
        .secret
        .as_ref()
        .ok_or_else(|| Refusal::unusable(&item.name, "it has no password"))?;
    Ok((user, pass.expose()))
}

/// A header value may hold tabs and visible bytes, never CR, LF or other control bytes.
fn check_header_bytes(value: &[u8]) -> Result<(), &'static str> {
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        Err("holds a CR, LF or other control byte, which a header value cannot carry")
    } else {
        Ok(())
    }
}

/// Placeholders may fill the path and query only: the host a URL names is fixed by the
/// spec's text, so the host checked is the host written.
fn check_url_positions(url: &Templated) -> Result<(), Refusal> {
    let Some(first) = url.placeholders.first() else {
        return Ok(());
    };
    let authority = authority_range(&url.text);
    if first.span.start < authority.end {
        return Err(Refusal::invalid(
            "url",
            "may hold placeholders only in its path and query, never in its scheme, host or port",
        ));
    }
    Ok(())
}

/// Byte range of `scheme://authority` in a URL text: up to the first `/`, `\`, `?` or `#`
/// after `//` (WHATWG ends the authority of http(s) URLs at a backslash too).
fn authority_range(text: &str) -> Range<usize> {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '\\', '?', '#'])
        .map_or(text.len(), |i| start + i);
    0..end
}

/// The secrets one check uses, for scrubbing: every value of every resolved item, the
/// Basic and Bearer forms, and each TOTP code made, per item and all together.
#[derive(Debug, Default)]
pub struct UsedSecrets {
    by_item: BTreeMap<String, ScrubberBuilder>,
}

impl UsedSecrets {
    pub fn from_items(items: &ResolvedItems) -> Self {
        let mut used = UsedSecrets::default();
        for item in items.iter() {
            let b = used.by_item.entry(item.name.clone()).or_default();
            if let Some(secret) = &item.secret {
                b.secret(secret.expose());
                match item.item_type {
                    ItemType::CredentialSet => {
                        if let Some(user) = &item.username {
                            b.basic(user.as_bytes(), secret.expose());
                        }
                    }
                    _ => {
                        b.bearer(secret.expose());
                    }
                }
            }
            if let Some(otp) = &item.otp {
                b.secret(otp.seed.expose());
            }
        }
        used
    }

    /// Records a TOTP code made for `item`.
    pub fn code(&mut self, item: &str, code: &[u8]) {
        self.by_item
            .entry(item.to_owned())
            .or_default()
            .secret(code);
    }

    /// A scrubber for every secret of every item.
    pub fn scrubber(&self) -> Scrubber {
        let mut all = ScrubberBuilder::new();
        for b in self.by_item.values() {
            all.extend(b);
        }
        all.build()
    }

    /// A scrubber for `item`'s secrets only.
    pub fn item_scrubber(&self, item: &str) -> Scrubber {
        self.by_item
            .get(item)
            .map(ScrubberBuilder::build)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
