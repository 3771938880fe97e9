//! Judging a response against `assertions`. Pure: the status, the time taken and the
//! (bounded) body in, one outcome per assertion out. Details name the assertion and never
//! quote the body.

use std::time::Duration;

use aho_corasick::AhoCorasick;

use crate::api::monitor::Assertions;

use super::report::AssertionOutcome;

/// Assertion texts are shown at most this long in a detail.
const SHOWN_TEXT: usize = 64;

/// The outcome of every assertion: `statusCodes` always (empty means any 2xx), then
/// `maxResponseTime`, `bodyContains[i]`, `bodyNotContains[i]` when set.
pub fn evaluate(
    assertions: Option<&Assertions>,
    status: u16,
    elapsed: Duration,
    body: &[u8],
    body_truncated: bool,
) -> Vec<AssertionOutcome> {
    let default = Assertions::default();
    let a = assertions.unwrap_or(&default);
    let mut out = Vec::with_capacity(2 + a.body_contains.len() + a.body_not_contains.len());

    let status_ok = if a.status_codes.is_empty() {
        (200..300).contains(&status)
    } else {
        a.status_codes.contains(&status)
    };
    let expected = if a.status_codes.is_empty() {
        "any 2xx".to_owned()
    } else {
        let codes: Vec<String> = a.status_codes.iter().map(u16::to_string).collect();
        format!("one of {}", codes.join(", "))
    };
    out.push(AssertionOutcome {
        assertion: "statusCodes".into(),
        passed: status_ok,
        detail: format!("status {status}, expected {expected}"),
    });

    if let Some(max) = &a.max_response_time {
        let (passed, detail) = match max.to_std() {
            Ok(limit) => (
                elapsed <= limit,
                format!("took {} ms, at most {}", elapsed.as_millis(), max.as_str()),
            ),
            Err(_) => (false, "maxResponseTime is not a duration".to_owned()),
        };
        out.push(AssertionOutcome {
            assertion: "maxResponseTime".into(),
            passed,
            detail,
        });
    }

    let cut = if body_truncated {
        " (in the first 1 MiB read)"
    } else {
        ""
    };
    for (i, text) in a.body_contains.iter().enumerate() {
        let found = contains(body, text);
        out.push(AssertionOutcome {
            assertion: format!("bodyContains[{i}]"),
            passed: found,
            detail: if found {
                format!("body contains {}", shown(text))
            } else {
                format!("body does not contain {}{cut}", shown(text))
            },
        });
    }
    for (i, text) in a.body_not_contains.iter().enumerate() {
        let found = contains(body, text);
        out.push(AssertionOutcome {
            assertion: format!("bodyNotContains[{i}]"),
            passed: !found,
            detail: if found {
                format!("body contains {}", shown(text))
            } else {
                format!("body does not contain {}{cut}", shown(text))
            },
        });
    }
    out
}

fn contains(body: &[u8], text: &str) -> bool {
    if text.is_empty() {
        return true;
    }
    // Linear in the body, unlike a naive window search over 1 MiB.
    AhoCorasick::new([text]).is_ok_and(|ac| ac.is_match(body))
}

fn shown(text: &str) -> String {
    let mut s: String = text.chars().take(SHOWN_TEXT).collect();
    if text.chars().count() > SHOWN_TEXT {
        s.push('…');
    }
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Duration as SpecDuration;

    fn passed(outcomes: &[AssertionOutcome]) -> Vec<(&str, bool)> {
        outcomes
            .iter()
            .map(|o| (o.assertion.as_str(), o.passed))
            .collect()
    }

    #[test]
    fn without_assertions_any_2xx_passes() {
        let ms = Duration::from_millis(5);
        assert_eq!(
            passed(&evaluate(None, 204, ms, b"", false)),
            [("statusCodes", true)]
        );
        assert_eq!(
            passed(&evaluate(None, 302, ms, b"", false)),
            [("statusCodes", false)]
        );
        assert_eq!(
            passed(&evaluate(None, 500, ms, b"", false)),
            [("statusCodes", false)]
        );
    }

    #[test]
    fn listed_status_codes_are_the_only_ones_accepted() {
        let a = Assertions {
            status_codes: vec![200, 302],
            ..Assertions::default()
        };
        let ms = Duration::from_millis(5);
        assert!(evaluate(Some(&a), 302, ms, b"", false)[0].passed);
        let out = evaluate(Some(&a), 401, ms, b"", false);
        assert!(!out[0].passed);
        assert_eq!(out[0].detail, "status 401, expected one of 200, 302");
    }

    #[test]
    fn response_time_is_judged_against_the_limit() {
        let a = Assertions {
            max_response_time: Some(SpecDuration::new("2s").unwrap()),
            ..Assertions::default()
        };
        let fast = evaluate(Some(&a), 200, Duration::from_millis(1999), b"", false);
        let slow = evaluate(Some(&a), 200, Duration::from_millis(2001), b"", false);
        assert_eq!(
            passed(&fast),
            [("statusCodes", true), ("maxResponseTime", true)]
        );
        assert_eq!(
            passed(&slow),
            [("statusCodes", true), ("maxResponseTime", false)]
        );
        assert_eq!(slow[1].detail, "took 2001 ms, at most 2s");
    }

    #[test]
    fn body_texts_are_searched_and_the_detail_never_quotes_the_body() {
        let a = Assertions {
            body_contains: vec!["Welcome".into(), "Cart".into()],
            body_not_contains: vec!["Error".into(), "Welcome".into()],
            ..Assertions::default()
        };
        let body = b"<h1>Welcome back</h1> private-order-4711";
        let out = evaluate(Some(&a), 200, Duration::ZERO, body, false);
        assert_eq!(
            passed(&out),
            [
                ("statusCodes", true),
                ("bodyContains[0]", true),
                ("bodyContains[1]", false),
                ("bodyNotContains[0]", true),
                ("bodyNotContains[1]", false),
            ]
        );
        for o in &out {
            assert!(!o.detail.contains("private-order"), "{}", o.detail);
        }
    }

    #[test]
    fn a_binary_body_is_searched_as_bytes() {
        let a = Assertions {
            body_contains: vec!["ok".into()],
            ..Assertions::default()
        };
        let out = evaluate(Some(&a), 200, Duration::ZERO, b"\xff\x00ok\xfe", true);
        assert!(out[1].passed);
        let missing = Assertions {
            body_contains: vec!["absent".into()],
            ..Assertions::default()
        };
        let out = evaluate(Some(&missing), 200, Duration::ZERO, b"\xff", true);
        assert!(
            out[1].detail.ends_with("(in the first 1 MiB read)"),
            "{}",
            out[1].detail
        );
    }
}
