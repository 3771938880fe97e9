//! Vault placeholders in monitor URLs, headers and bodies: `{{@VaultItem.<name>.<Field>}}`.
//!
//! The parser is the single authority on which items a text references: the webhook
//! authorizes exactly what it returns, and the runner substitutes exactly that. So it is
//! strict. Anything that opens like a placeholder (`{{` then `@`, spaces allowed between)
//! must be a well-formed one, or the whole text is refused; a near-miss is never let
//! through as literal text that some later step might read differently.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;

use thiserror::Error;

use super::monitor::MonitorSpec;

const OPEN: &str = "{{";
const CLOSE: &str = "}}";
const SOURCE: &str = "VaultItem";
/// Kubernetes object names are DNS-1123 subdomains: at most 253 characters.
const MAX_NAME_LEN: usize = 253;

/// Placeholders in one text at most. Each costs the webhook an authorization and the runner
/// a substitution; a real monitor needs a handful.
pub const MAX_PLACEHOLDERS_PER_TEXT: usize = 64;

/// Placeholders in one monitor at most, all texts together. Each is substituted on every
/// request, with a value of up to 8 KiB, so this also bounds what one check sends.
pub const MAX_PLACEHOLDERS_PER_MONITOR: usize = 128;

/// Distinct vault items one monitor may carry at most: each costs every write of it a
/// lookup and a SubjectAccessReview, so an unbounded count would let one write fan out
/// into thousands of API calls.
pub const MAX_ITEMS_PER_MONITOR: usize = 16;

/// The item field a placeholder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlaceholderField {
    Username,
    Password,
    Value,
    /// The current TOTP code computed from the item's seed, not the seed itself.
    OneTimePassword,
}

impl PlaceholderField {
    pub const ALL: [PlaceholderField; 4] = [
        PlaceholderField::Username,
        PlaceholderField::Password,
        PlaceholderField::Value,
        PlaceholderField::OneTimePassword,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlaceholderField::Username => "Username",
            PlaceholderField::Password => "Password",
            PlaceholderField::Value => "Value",
            PlaceholderField::OneTimePassword => "OneTimePassword",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl fmt::Display for PlaceholderField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reference found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub item: String,
    pub field: PlaceholderField,
    /// Byte range of the whole `{{…}}` in the text, for substitution.
    pub span: Range<usize>,
}

/// Why a text was refused. `offset` counts characters from 0, where the placeholder opens.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("placeholder at offset {offset}: {reason}")]
pub struct TemplateError {
    pub offset: usize,
    pub reason: TemplateErrorReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateErrorReason {
    #[error("unterminated: no closing }}}}")]
    Unterminated,
    #[error("placeholders cannot be nested")]
    Nested,
    #[error("spaces are not allowed inside a placeholder")]
    Whitespace,
    #[error("unknown source {0:?}: expected @VaultItem.<name>.<Field>")]
    UnknownSource(String),
    #[error("expected @VaultItem.<name>.<Field>")]
    Shape,
    #[error("the item name is empty")]
    EmptyName,
    #[error(
        "item name {0:?} is not a valid Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253)"
    )]
    InvalidName(String),
    #[error("unknown field {0:?}: expected one of Username, Password, Value, OneTimePassword")]
    UnknownField(String),
    #[error("more than {MAX_PLACEHOLDERS_PER_TEXT} placeholders in one field")]
    TooManyPlaceholders,
    #[error(
        "more than {MAX_PLACEHOLDERS_PER_MONITOR} placeholders in one monitor, all fields together"
    )]
    TooManyPlaceholdersInMonitor,
    #[error("more than {MAX_ITEMS_PER_MONITOR} distinct vault items in one monitor")]
    TooManyItems,
}

/// Every vault placeholder in `text`, in order, or the first error.
pub fn parse(text: &str) -> Result<Vec<Placeholder>, TemplateError> {
    let mut found = Vec::new();
    let mut cursor = 0;
    while let Some(rel) = text[cursor..].find(OPEN) {
        let start = cursor + rel;
        if found.len() == MAX_PLACEHOLDERS_PER_TEXT
            && text[start + OPEN.len()..].trim_start().starts_with('@')
        {
            return Err(TemplateError {
                offset: text[..start].chars().count(),
                reason: TemplateErrorReason::TooManyPlaceholders,
            });
        }
        let after_open = start + OPEN.len();
        let rest = &text[after_open..];
        let trimmed = rest.trim_start();
        if !trimmed.starts_with('@') {
            // Literal braces (e.g. in a JSON body); skip one '{' so "{{{@…" is still seen.
            cursor = start + 1;
            continue;
        }
        let err = |reason| TemplateError {
            offset: text[..start].chars().count(),
            reason,
        };
        if trimmed.len() != rest.len() {
            return Err(err(TemplateErrorReason::Whitespace));
        }
        let close = rest
            .find(CLOSE)
            .ok_or(err(TemplateErrorReason::Unterminated))?;
        let inner = &rest[..close];
        if inner.contains(OPEN) {
            return Err(err(TemplateErrorReason::Nested));
        }
        let (item, field) = parse_inner(inner).map_err(err)?;
        let end = after_open + close + CLOSE.len();
        found.push(Placeholder {
            item,
            field,
            span: start..end,
        });
        cursor = end;
    }
    Ok(found)
}

/// A placeholder error in one field of a monitor spec.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {source}")]
pub struct ReferenceError {
    /// The spec field, e.g. `headers[0].value`.
    pub field: String,
    #[source]
    pub source: TemplateError,
}

/// Every vault item a monitor spec uses, through typed fields and placeholders. This is
/// the set the webhook authorizes, the runner resolves, and `usedBy` reports.
pub fn referenced_items(spec: &MonitorSpec) -> Result<BTreeSet<String>, ReferenceError> {
    let mut items: BTreeSet<String> = spec
        .typed_item_refs()
        .iter()
        .map(|r| r.name.as_str().to_owned())
        .collect();
    let mut placeholders = 0;
    for (field, text) in spec.template_texts() {
        let found = parse(text).map_err(|source| ReferenceError {
            field: field.clone(),
            source,
        })?;
        placeholders += found.len();
        if placeholders > MAX_PLACEHOLDERS_PER_MONITOR {
            return Err(ReferenceError {
                field,
                source: TemplateError {
                    offset: 0,
                    reason: TemplateErrorReason::TooManyPlaceholdersInMonitor,
                },
            });
        }
        items.extend(found.into_iter().map(|p| p.item));
        if items.len() > MAX_ITEMS_PER_MONITOR {
            return Err(ReferenceError {
                field,
                source: TemplateError {
                    offset: 0,
                    reason: TemplateErrorReason::TooManyItems,
                },
            });
        }
    }
    if items.len() > MAX_ITEMS_PER_MONITOR {
        return Err(ReferenceError {
            field: "spec".to_owned(),
            source: TemplateError {
                offset: 0,
                reason: TemplateErrorReason::TooManyItems,
            },
        });
    }
    Ok(items)
}

/// Parses `@VaultItem.<name>.<Field>`. The name may contain dots; the field is the last
/// segment.
fn parse_inner(inner: &str) -> Result<(String, PlaceholderField), TemplateErrorReason> {
    if inner.chars().any(char::is_whitespace) {
        return Err(TemplateErrorReason::Whitespace);
    }
    let body = inner.strip_prefix('@').ok_or(TemplateErrorReason::Shape)?;
    let (source, rest) = body.split_once('.').ok_or(TemplateErrorReason::Shape)?;
    if source != SOURCE {
        return Err(TemplateErrorReason::UnknownSource(truncate(source)));
    }
    let (name, field) = rest.rsplit_once('.').ok_or(TemplateErrorReason::Shape)?;
    if name.is_empty() {
        return Err(TemplateErrorReason::EmptyName);
    }
    if !is_object_name(name) {
        return Err(TemplateErrorReason::InvalidName(truncate(name)));
    }
    let field = PlaceholderField::parse(field)
        .ok_or_else(|| TemplateErrorReason::UnknownField(truncate(field)))?;
    Ok((name.to_owned(), field))
}

/// DNS-1123 subdomain, as Kubernetes requires of object names.
fn is_object_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

/// Echoed input stays short, so a hostile template cannot blow up an error message.
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::PlaceholderField::*;
    use super::TemplateErrorReason as R;
    use super::*;

    fn refs(text: &str) -> Vec<(String, PlaceholderField)> {
        parse(text)
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
            .into_iter()
            .map(|p| (p.item, p.field))
            .collect()
    }

    #[test]
    fn placeholders_and_items_are_bounded() {
        let one = "{{@VaultItem.a.Value}}";
        let at_limit = one.repeat(MAX_PLACEHOLDERS_PER_TEXT);
        assert_eq!(
            parse(&at_limit).map(|p| p.len()),
            Ok(MAX_PLACEHOLDERS_PER_TEXT)
        );
        let over = one.repeat(MAX_PLACEHOLDERS_PER_TEXT + 1);
        assert_eq!(
            parse(&over).map_err(|e| e.reason),
            Err(TemplateErrorReason::TooManyPlaceholders)
        );
        let mut spec = MonitorSpec::new("https://shop.example.com/");
        spec.body = Some(
            (0..=MAX_ITEMS_PER_MONITOR)
                .map(|i| format!("{{{{@VaultItem.item-{i}.Value}}}}"))
                .collect(),
        );
        let error = referenced_items(&spec).unwrap_err();
        assert_eq!(error.source.reason, TemplateErrorReason::TooManyItems);
        assert!(error.to_string().contains("more than 16"), "{error}");
        spec.body = Some(
            (0..MAX_ITEMS_PER_MONITOR)
                .map(|i| format!("{{{{@VaultItem.item-{i}.Value}}}}"))
                .collect(),
        );
        assert_eq!(
            referenced_items(&spec).map(|i| i.len()),
            Ok(MAX_ITEMS_PER_MONITOR)
        );
    }

    #[test]
    fn placeholders_are_bounded_per_monitor_across_fields() {
        use crate::api::monitor::Header;
        let texts = |n: usize| "{{@VaultItem.a.Value}}".repeat(n);
        let mut spec = MonitorSpec::new("https://shop.example.com/");
        // 128 = 64 in the body and 32 in each of two headers: each text within its own
        // limit, the monitor exactly at its own.
        spec.body = Some(texts(MAX_PLACEHOLDERS_PER_TEXT));
        for name in ["A", "B"] {
            spec.headers.push(Header {
                name: name.into(),
                value: texts(32),
            });
        }
        assert_eq!(
            MAX_PLACEHOLDERS_PER_MONITOR,
            MAX_PLACEHOLDERS_PER_TEXT + 2 * 32
        );
        assert_eq!(referenced_items(&spec).map(|i| i.len()), Ok(1));
        spec.url.push_str("?k={{@VaultItem.a.Value}}");
        let error = referenced_items(&spec).unwrap_err();
        assert_eq!(
            error.source.reason,
            TemplateErrorReason::TooManyPlaceholdersInMonitor
        );
        // Counted in the order the texts come: the URL first, so the body tips it over.
        assert_eq!(error.field, "body");
        assert!(error.to_string().contains("more than 128"), "{error}");
    }

    #[test]
    fn good_inputs() {
        let cases: &[(&str, &[(&str, PlaceholderField)])] = &[
            ("https://shop.example.com/", &[]),
            ("", &[]),
            (
                "{{@VaultItem.shop-login.Password}}",
                &[("shop-login", Password)],
            ),
            (
                "{{@VaultItem.shop-login.Username}}",
                &[("shop-login", Username)],
            ),
            (
                "Bearer {{@VaultItem.api-token.Value}}",
                &[("api-token", Value)],
            ),
            (
                "{{@VaultItem.otp.OneTimePassword}}",
                &[("otp", OneTimePassword)],
            ),
            ("{{@VaultItem.a.b.c.Value}}", &[("a.b.c", Value)]),
            (
                "u={{@VaultItem.a.Username}}&p={{@VaultItem.a.Password}}",
                &[("a", Username), ("a", Password)],
            ),
            (r#"{"a": {{"b": 1}}}"#, &[]),
            ("{{not a placeholder}}", &[]),
            ("{{{@VaultItem.x.Value}}}", &[("x", Value)]),
            ("}}{{@VaultItem.x.Value}}", &[("x", Value)]),
            ("ünïcode {{@VaultItem.x1.Value}}", &[("x1", Value)]),
        ];
        for (text, want) in cases {
            let want: Vec<_> = want.iter().map(|(n, f)| (n.to_string(), *f)).collect();
            assert_eq!(refs(text), want, "{text:?}");
        }
    }

    #[test]
    fn bad_inputs() {
        let long = format!("{{{{@VaultItem.{}.Value}}}}", "a".repeat(254));
        let cases: &[(&str, usize, R)] = &[
            ("{{@VaultItem.shop.Password", 0, R::Unterminated),
            ("x {{@VaultItem.shop.Password}", 2, R::Unterminated),
            (
                "{{@VaultItem.{{@VaultItem.a.Value}}.Password}}",
                0,
                R::Nested,
            ),
            ("{{@VaultItem..Password}}", 0, R::EmptyName),
            (
                "{{@VaultItem.shop.Passwort}}",
                0,
                R::UnknownField("Passwort".into()),
            ),
            (
                "{{@VaultItem.shop.password}}",
                0,
                R::UnknownField("password".into()),
            ),
            ("{{@VaultItem.shop.}}", 0, R::UnknownField(String::new())),
            ("{{@VaultItem.shop}}", 0, R::Shape),
            ("{{@VaultItem}}", 0, R::Shape),
            ("{{@}}", 0, R::Shape),
            (
                "{{@Secret.shop.Value}}",
                0,
                R::UnknownSource("Secret".into()),
            ),
            (
                "{{@vaultitem.shop.Value}}",
                0,
                R::UnknownSource("vaultitem".into()),
            ),
            ("{{ @VaultItem.shop.Value}}", 0, R::Whitespace),
            ("{{@VaultItem.shop .Value}}", 0, R::Whitespace),
            (
                "{{@VaultItem.Shop.Value}}",
                0,
                R::InvalidName("Shop".into()),
            ),
            (
                "{{@VaultItem.-shop.Value}}",
                0,
                R::InvalidName("-shop".into()),
            ),
            (
                "{{@VaultItem.a..b.Value}}",
                0,
                R::InvalidName("a..b".into()),
            ),
            ("{{@VaultItem.a/b.Value}}", 0, R::InvalidName("a/b".into())),
            (
                "ok {{@VaultItem.a.Value}} ü {{@VaultItem.b.Nope}}",
                28,
                R::UnknownField("Nope".into()),
            ),
        ];
        for (text, offset, reason) in cases {
            assert_eq!(
                parse(text),
                Err(TemplateError {
                    offset: *offset,
                    reason: reason.clone()
                }),
                "{text:?}"
            );
        }
        assert!(matches!(
            parse(&long),
            Err(TemplateError {
                reason: R::InvalidName(_),
                ..
            })
        ));
    }

    #[test]
    fn a_monitor_references_typed_and_placeholder_items() {
        use crate::api::monitor::{BasicAuth, Header, MonitorAuth};
        use crate::api::names::ObjectName;

        let mut spec =
            MonitorSpec::new("https://shop.example.com/?u={{@VaultItem.login.Username}}");
        spec.auth = Some(MonitorAuth {
            basic: Some(BasicAuth {
                credential_set: ObjectName::new("login"),
            }),
            bearer: None,
        });
        spec.headers.push(Header {
            name: "X-Api-Key".into(),
            value: "{{@VaultItem.api-token.Value}}".into(),
        });
        spec.body = Some("otp={{@VaultItem.otp.OneTimePassword}}".into());
        let items = referenced_items(&spec).expect("parses");
        assert_eq!(
            items.into_iter().collect::<Vec<_>>(),
            ["api-token", "login", "otp"]
        );

        spec.headers[0].value = "{{@VaultItem.api-token.Nope}}".into();
        let err = referenced_items(&spec).expect_err("bad field");
        assert_eq!(err.field, "headers[0].value");
        assert!(
            err.to_string()
                .starts_with("headers[0].value: placeholder at offset 0")
        );
    }

    #[test]
    fn spans_cover_the_placeholder() {
        let text = "a{{@VaultItem.x.Value}}b";
        let found = parse(text).expect("parses");
        assert_eq!(&text[found[0].span.clone()], "{{@VaultItem.x.Value}}");
    }

    #[test]
    fn errors_echo_bounded_input() {
        let text = format!("{{{{@VaultItem.x.{}}}}}", "F".repeat(10_000));
        let msg = parse(&text).expect_err("unknown field").to_string();
        assert!(msg.len() < 300, "{msg}");
    }
}
