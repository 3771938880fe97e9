//! `Duration`: a Go-style duration string (`30s`, `5m`, `1h30m`, `250ms`).
//!
//! Kept as the text the user wrote, so reading and writing an object never rewrites `5m`
//! as `300s` (GitOps tools would see drift). The CRD schema gives the pattern; the bounds
//! of each use (interval, timeout, ...) are CEL rules on the field that uses it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::ApiError;

/// The schema pattern: one or more `<number><unit>` with units `h`, `m`, `s`, `ms`. Go also
/// accepts `us` and `ns`, which no monitor setting needs, and a sign, which none may have.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Longest accepted duration text; bounds the cost of the CEL rules that parse it.
pub const DURATION_MAX_LEN: usize = 32;

/// A non-negative duration written in Go's `time.ParseDuration` syntax, e.g. `5m` or `1h30m`.
///
/// Deserializing accepts any string, so one malformed object never stops a watch; the API
/// server enforces [`DURATION_PATTERN`], and [`Duration::to_std`] reports text that does not
/// parse.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(String);

impl Duration {
    /// Checks `text` against the duration syntax.
    pub fn new(text: impl Into<String>) -> Result<Self, ApiError> {
        let text = text.into();
        parse(&text)?;
        Ok(Duration(text))
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The length of time this text names.
    pub fn to_std(&self) -> Result<std::time::Duration, ApiError> {
        parse(&self.0)
    }

    /// The shortest exact text for `d`, at millisecond resolution (`90s` becomes `90s`,
    /// `120s` becomes `2m`). Sub-millisecond parts are dropped.
    pub fn from_std(d: std::time::Duration) -> Self {
        let ms = d.as_millis();
        let text = if ms == 0 {
            "0s".to_owned()
        } else if ms.is_multiple_of(3_600_000) {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            format!("{}s", ms / 1_000)
        } else {
            format!("{ms}ms")
        };
        Duration(text)
    }
}

impl FromStr for Duration {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::new(s)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Not `format: duration`: in OpenAPI that means ISO 8601 (`PT5M`), not Go syntax.
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_LEN,
        })
    }
}

/// Parses exactly the language of [`DURATION_PATTERN`].
fn parse(text: &str) -> Result<std::time::Duration, ApiError> {
    let invalid = |reason: &'static str| ApiError::InvalidDuration {
        value: text.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    if text.len() > DURATION_MAX_LEN {
        return Err(invalid("it is longer than 32 characters"));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if int_len == 0 {
            return Err(invalid("each part must start with a number"));
        }
        let mut number_len = int_len;
        if rest[int_len..].starts_with('.') {
            let frac_len = rest[int_len + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - int_len - 1);
            if frac_len == 0 {
                return Err(invalid("a decimal point must be followed by digits"));
            }
            number_len = int_len + 1 + frac_len;
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| invalid("a number does not parse"))?;
        rest = &rest[number_len..];
        let (unit_secs, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(invalid("each number needs a unit: h, m, s or ms"));
        };
        rest = &rest[unit_len..];
        let part = std::time::Duration::try_from_secs_f64(number * unit_secs)
            .map_err(|_| invalid("it is out of range"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| invalid("it is out of range"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    #[test]
    fn parses_go_style_durations() {
        let cases = [
            ("30s", StdDuration::from_secs(30)),
            ("5m", StdDuration::from_secs(300)),
            ("24h", StdDuration::from_secs(86_400)),
            ("1h30m", StdDuration::from_secs(5_400)),
            ("250ms", StdDuration::from_millis(250)),
            ("1.5s", StdDuration::from_millis(1_500)),
            ("2m0s", StdDuration::from_secs(120)),
        ];
        for (text, want) in cases {
            let got = Duration::new(text).and_then(|d| d.to_std());
            assert_eq!(got.ok(), Some(want), "{text}");
        }
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for text in [
            "", "5", "m", "-5m", "5 m", "5min", "1.s", ".5s", "5us", "1d", "PT5M",
        ] {
            assert!(Duration::new(text).is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn keeps_the_text_as_written() {
        let d: Duration = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"5m\"");
        assert_eq!(d.to_string(), "5m");
    }

    #[test]
    fn from_std_picks_the_largest_exact_unit() {
        assert_eq!(
            Duration::from_std(StdDuration::from_secs(7_200)).as_str(),
            "2h"
        );
        assert_eq!(
            Duration::from_std(StdDuration::from_secs(120)).as_str(),
            "2m"
        );
        assert_eq!(
            Duration::from_std(StdDuration::from_secs(90)).as_str(),
            "90s"
        );
        assert_eq!(
            Duration::from_std(StdDuration::from_millis(153)).as_str(),
            "153ms"
        );
        assert_eq!(Duration::from_std(StdDuration::ZERO).as_str(), "0s");
    }
}
