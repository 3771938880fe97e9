//! Durations, in one place: [`Duration`], the Go-style text of CRD fields (`30s`, `5m`,
//! `1h30m`, `250ms`), and [`parse_period`], the flags' periods, which also take days
//! (`30d`). Both are read by the same scanner, and the number by kube's Go-compatible
//! parser ([`kube::core::Duration`]), so the operator reads `1h30m` exactly as the API
//! server's CEL `duration()` does.
//!
//! A CRD value is kept as the text the user wrote, so reading and writing an object never
//! rewrites `5m` as `300s` (GitOps tools would see drift). The CRD schema gives the
//! pattern; the bounds of each use (interval, timeout, ...) are CEL rules on the field that
//! uses it.
//!
//! What it must never do: panic on any text. kube's parser panics on a number too large
//! for `std::time::Duration`, so the scanner bounds every number before it gets there.

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

/// Longest accepted flag text; bounds the sum of its parts.
const PERIOD_MAX_LEN: usize = 64;

/// Integer digits allowed in one part: 10^12 days is still far inside `std::time::Duration`,
/// and kube's parser panics on a part too large for it, so larger numbers never reach it.
const MAX_DIGITS: usize = 12;

/// Parses a period flag such as `30d`, `12h`, `90s`, `500ms` or `1d12h`: units `d`, `h`, `m`,
/// `s`, `ms`, whole numbers only. The same code as [`Duration`], plus days (a day is 24 h
/// here: these are ages of keys, not calendar days).
pub fn parse_period(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("invalid period {text:?}: expected e.g. 30d, 12h, 5m, 90s or 500ms");
    let text = text.trim();
    if text.len() > PERIOD_MAX_LEN {
        return Err(invalid());
    }
    let parts = scan(text, Syntax::Period).map_err(|_| invalid())?;
    to_std(&parts).map_err(|_| invalid())
}

/// Parses exactly the language of [`DURATION_PATTERN`].
fn parse(text: &str) -> Result<std::time::Duration, ApiError> {
    let invalid = |reason: &'static str| ApiError::InvalidDuration {
        value: text.to_owned(),
        reason,
    };
    if text.len() > DURATION_MAX_LEN {
        return Err(invalid("it is longer than 32 characters"));
    }
    let parts = scan(text, Syntax::Go).map_err(invalid)?;
    to_std(&parts).map_err(invalid)
}

/// Which language a text is read in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// Go's `time.ParseDuration`, less `us`, `ns` and the sign: what CRD fields take.
    Go,
    /// Whole numbers, and days as well: what the rotation flags take.
    Period,
}

/// One `<number><unit>` of a duration text.
struct Part<'a> {
    number: &'a str,
    unit: &'static str,
}

/// Splits `text` into checked parts, so that what reaches kube's parser is in its language
/// and small enough for it.
fn scan(text: &str, syntax: Syntax) -> Result<Vec<Part<'_>>, &'static str> {
    if text.is_empty() {
        return Err("it is empty");
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if int_len == 0 {
            return Err("each part must start with a number");
        }
        if int_len > MAX_DIGITS {
            return Err("it is out of range");
        }
        let mut number_len = int_len;
        if rest[int_len..].starts_with('.') {
            if syntax == Syntax::Period {
                return Err("whole numbers only");
            }
            let frac_len = rest[int_len + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - int_len - 1);
            if frac_len == 0 {
                return Err("a decimal point must be followed by digits");
            }
            number_len = int_len + 1 + frac_len;
        }
        let number = &rest[..number_len];
        rest = &rest[number_len..];
        // `ms` before `m`: the longest unit that matches.
        let unit = ["ms", "h", "m", "s", "d"]
            .into_iter()
            .find(|u| rest.starts_with(u) && (*u != "d" || syntax == Syntax::Period))
            .ok_or("each number needs a unit: h, m, s or ms")?;
        rest = &rest[unit.len()..];
        parts.push(Part { number, unit });
    }
    Ok(parts)
}

/// The length of time of checked parts, by kube's Go-compatible parser (days become hours,
/// which it knows).
fn to_std(parts: &[Part<'_>]) -> Result<std::time::Duration, &'static str> {
    let mut go = String::new();
    for part in parts {
        if part.unit == "d" {
            let days: u64 = part.number.parse().map_err(|_| "a number does not parse")?;
            go.push_str(&days.saturating_mul(24).to_string());
            go.push('h');
        } else {
            go.push_str(part.number);
            go.push_str(part.unit);
        }
    }
    let parsed: kube::core::Duration = go.parse().map_err(|_| "a number does not parse")?;
    if parsed.is_negative() {
        return Err("it is negative");
    }
    Ok(parsed.into())
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

    #[test]
    fn huge_numbers_are_out_of_range_not_a_panic() {
        for text in [
            "9999999999999999999999999999h",
            "999999999999999.5s",
            "1e400h",
        ] {
            assert!(Duration::new(text).is_err(), "{text:?}");
        }
        assert!(parse_period("99999999999999999999d").is_err());
        assert!(
            parse_period(&"999999999999d".repeat(4)).is_ok(),
            "bounded parts add up"
        );
    }

    #[test]
    fn periods_parse_with_days() {
        assert_eq!(parse_period("30d"), Ok(StdDuration::from_secs(30 * 86_400)));
        assert_eq!(parse_period("12h"), Ok(StdDuration::from_secs(12 * 3600)));
        assert_eq!(parse_period("90s"), Ok(StdDuration::from_secs(90)));
        assert_eq!(parse_period("1m"), Ok(StdDuration::from_secs(60)));
        assert_eq!(parse_period("250ms"), Ok(StdDuration::from_millis(250)));
        assert_eq!(parse_period("1d12h"), Ok(StdDuration::from_secs(36 * 3600)));
        assert_eq!(parse_period(" 5m "), Ok(StdDuration::from_secs(300)));
        for bad in [
            "",
            "d",
            "30",
            "30x",
            "-1d",
            "1.5h",
            "99999999999999999999d",
            "5us",
        ] {
            assert!(parse_period(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn days_are_only_for_periods() {
        assert!(Duration::new("1d").is_err());
        assert_eq!(parse_period("1d"), parse_period("24h"));
    }
}
