//! `docs/troubleshooting.md` explains every Event reason and condition reason monivault
//! writes, and nothing else.
//!
//! The reasons are string literals in the rooms that write Events and conditions: the
//! controller, the runner, and any other file that builds an Event or a condition. They are
//! passed around as `&'static str` (`reason: "SealedValueInvalid"`, `=> "RedirectBlocked"`,
//! `.event(…, "DataKeyRotated", …)`), so no one pattern finds them all. This test collects
//! every CamelCase string literal in the non-test code of those files instead, drops the
//! few that are known not to be reasons ([`NOT_REASONS`]), and compares the rest with the
//! reasons the page documents: the backticked words of its `### ` headings. A new reason
//! fails the test until it is documented (or, if it is no reason, listed below), and a
//! documented reason that the code no longer writes fails it too.

//!
//! It also checks that the Limits table of `docs/concepts.md` states each limit as the
//! code does ([`the_limits_table_states_each_limit_as_the_code_does`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The page that must explain every reason.
const PAGE: &str = "docs/troubleshooting.md";

/// The rooms whose every file is scanned: they write the Events and conditions.
const ROOMS: &[&str] = &["src/controller", "src/runner"];

/// A file elsewhere in `src/` that contains one of these builds an Event or a condition,
/// and is scanned too.
const EMITTER_MARKERS: &[&str] = &["EventType::", "new_condition(", "events::Event"];

/// CamelCase literals of the scanned files that are not reasons, and why.
const NOT_REASONS: &[(&str, &str)] = &[
    ("Ready", "the condition type"),
    ("True", "a condition status"),
    ("False", "a condition status"),
    ("Unknown", "a condition status"),
    ("Ingest", "an Event action"),
    ("Rotate", "an Event action"),
    ("Check", "an Event action"),
    ("Monitor", "a kind"),
    ("MonitorRun", "a kind"),
    ("Monitors", "a listing named in an error"),
    ("MonitorRuns", "a listing named in an error"),
    ("VaultSections", "a listing named in an error"),
    ("Namespaces", "a listing named in an error"),
    ("Succeeded", "a MonitorRun phase, as a metric label"),
    ("Failed", "a MonitorRun phase, as a metric label"),
    ("OtpSeed", "a type's name in its Debug output"),
    ("ResolvedItem", "a type's name in its Debug output"),
    ("Base32", "a TOTP seed encoding"),
    ("Hex", "a TOTP seed encoding"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files declared under `#[cfg(test)]` by their parent module.
fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name == "tests.rs" || name == "test_support.rs")
}

/// The files to scan, relative to the crate root, with their text.
fn scanned_files() -> Vec<(String, String)> {
    let root = root();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|path| !is_test_file(path))
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).expect("read source");
            let relative = path
                .strip_prefix(&root)
                .expect("under the crate root")
                .to_string_lossy()
                .replace('\\', "/");
            let in_room = ROOMS
                .iter()
                .any(|room| relative.starts_with(&format!("{room}/")));
            let emits = EMITTER_MARKERS.iter().any(|marker| text.contains(marker));
            (in_room || emits).then_some((relative, text))
        })
        .collect()
}

/// A Rust source, split into string literals and code: the code with every comment,
/// string and char literal blanked out (same length, so offsets agree), and each string
/// literal's contents with its offset.
struct Lexed {
    code: Vec<u8>,
    literals: Vec<(usize, String)>,
}

fn lex(source: &str) -> Lexed {
    let bytes = source.as_bytes();
    let mut code = bytes.to_vec();
    let mut literals = Vec::new();
    let blank = |code: &mut Vec<u8>, from: usize, to: usize| {
        for byte in &mut code[from..to.min(bytes.len())] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    };
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let end = source[i..].find('\n').map_or(bytes.len(), |n| i + n);
                blank(&mut code, i, end);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest in Rust.
                let (mut depth, mut j) = (1, i + 2);
                while j < bytes.len() && depth > 0 {
                    if bytes[j..].starts_with(b"/*") {
                        depth += 1;
                        j += 2;
                    } else if bytes[j..].starts_with(b"*/") {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank(&mut code, i, j);
                i = j;
            }
            b'"' => {
                // A raw string: `r"…"`, `r#"…"#`, `br#"…"#`.
                let mut hashes = 0;
                while i > hashes && bytes[i - 1 - hashes] == b'#' {
                    hashes += 1;
                }
                let prefix = i - hashes;
                let raw = prefix > 0
                    && bytes[prefix - 1] == b'r'
                    && (prefix < 2
                        || !ident(bytes[prefix - 2])
                        || (bytes[prefix - 2] == b'b'
                            && (prefix < 3 || !ident(bytes[prefix - 3]))));
                let start = i + 1;
                let end = if raw {
                    let mut closing = vec![b'"'];
                    closing.extend(std::iter::repeat_n(b'#', hashes));
                    let mut j = start;
                    while j < bytes.len() && !bytes[j..].starts_with(&closing) {
                        j += 1;
                    }
                    j
                } else {
                    let mut j = start;
                    while j < bytes.len() && bytes[j] != b'"' {
                        j += if bytes[j] == b'\\' { 2 } else { 1 };
                    }
                    j.min(bytes.len())
                };
                literals.push((i, source[start..end].to_owned()));
                let after = (end + 1 + if raw { hashes } else { 0 }).min(bytes.len());
                blank(&mut code, i, after);
                i = after;
            }
            b'\'' => {
                // A char literal ('{', '\'', '\u{7b}') or a lifetime ('a).
                let close = if bytes.get(i + 1) == Some(&b'\\') {
                    // The escaped character may itself be a quote: `'\''`.
                    source
                        .get(i + 3..)
                        .and_then(|rest| rest.find('\''))
                        .map(|n| i + 3 + n)
                } else {
                    let width = source[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (bytes.get(i + 1 + width) == Some(&b'\'')).then_some(i + 1 + width)
                };
                match close {
                    Some(end) => {
                        blank(&mut code, i, end + 1);
                        i = end + 1;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    Lexed { code, literals }
}

/// Byte ranges of the items under `#[cfg(test)]`: from the attribute to the `;` or the
/// closing brace of the item that follows it.
fn test_ranges(code: &[u8]) -> Vec<(usize, usize)> {
    const ATTRIBUTE: &[u8] = b"#[cfg(test)]";
    let mut ranges = Vec::new();
    let mut at = 0;
    while let Some(found) = code[at..]
        .windows(ATTRIBUTE.len())
        .position(|w| w == ATTRIBUTE)
    {
        let start = at + found;
        let mut j = start + ATTRIBUTE.len();
        let mut nesting = 0i32;
        let mut end = code.len();
        while j < code.len() {
            match code[j] {
                b'(' | b'[' => nesting += 1,
                b')' | b']' => nesting -= 1,
                b';' if nesting == 0 => {
                    end = j + 1;
                    break;
                }
                b'{' if nesting == 0 => {
                    let mut depth = 0;
                    while j < code.len() {
                        match code[j] {
                            b'{' => depth += 1,
                            b'}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    end = (j + 1).min(code.len());
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        ranges.push((start, end));
        at = end;
    }
    ranges
}

/// The string literals of `source` outside test code.
fn non_test_literals(source: &str) -> Vec<String> {
    let lexed = lex(source);
    let excluded = test_ranges(&lexed.code);
    lexed
        .literals
        .into_iter()
        .filter(|(at, _)| !excluded.iter().any(|(from, to)| (from..to).contains(&at)))
        .map(|(_, text)| text)
        .collect()
}

/// One word in CamelCase, as every Kubernetes reason is: `Stored`, `KeysReady`, `Tls`.
fn is_camel_case(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_uppercase()
        && bytes[1].is_ascii_lowercase()
        && bytes.iter().all(u8::is_ascii_alphanumeric)
}

/// Every CamelCase literal of the scanned code, with the first file that holds it.
fn camel_case_literals() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for (file, text) in scanned_files() {
        for literal in non_test_literals(&text) {
            if is_camel_case(&literal) {
                found.entry(literal).or_insert_with(|| file.clone());
            }
        }
    }
    found
}

/// The reasons the code writes: its CamelCase literals that are not known non-reasons.
fn reasons_in_code() -> BTreeMap<String, String> {
    let mut found = camel_case_literals();
    found.retain(|literal, _| !NOT_REASONS.iter().any(|(word, _)| word == literal));
    found
}

/// The reasons the page documents: the backticked words of its `### ` headings.
fn documented(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix("### "))
        .flat_map(|heading| {
            heading
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn page() -> String {
    std::fs::read_to_string(root().join(PAGE)).unwrap_or_else(|e| panic!("read {PAGE}: {e}"))
}

#[test]
fn troubleshooting_documents_every_reason_the_code_writes() {
    let documented = documented(&page());
    let missing: Vec<String> = reasons_in_code()
        .into_iter()
        .filter(|(reason, _)| !documented.contains(reason))
        .map(|(reason, file)| format!("{reason} (in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "{PAGE} does not explain these reasons; add a `### `Reason`` section with its cause \
         and fix for each (or, if one is no reason, add it to NOT_REASONS in tests/docs.rs):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn troubleshooting_documents_no_reason_the_code_no_longer_writes() {
    let in_code = reasons_in_code();
    let stale: Vec<String> = documented(&page())
        .into_iter()
        .filter(|reason| !in_code.contains_key(reason))
        .collect();
    assert!(
        stale.is_empty(),
        "{PAGE} explains reasons that no scanned file of src/ writes any more; remove them:\n  {}",
        stale.join("\n  ")
    );
}

#[test]
fn every_listed_non_reason_is_still_in_the_code() {
    let literals = camel_case_literals();
    let unused: Vec<&str> = NOT_REASONS
        .iter()
        .map(|(word, _)| *word)
        .filter(|word| !literals.contains_key(*word))
        .collect();
    assert!(
        unused.is_empty(),
        "NOT_REASONS in tests/docs.rs lists words the code no longer has; remove them: {unused:?}"
    );
}

#[test]
fn the_scan_finds_reasons_of_every_kind_and_place() {
    let reasons = reasons_in_code();
    for (reason, file) in [
        // A condition reason in a struct literal, and an Event reason passed as an argument.
        ("SealedValueInvalid", "src/controller/vault_item.rs"),
        ("StoreRecordInvalid", "src/controller/vault_item.rs"),
        ("KeysReady", "src/controller/vault_section.rs"),
        // Match arms of `reason()` functions.
        ("CertificateArchiveRefused", "src/controller/certificate.rs"),
        ("RedirectBlocked", "src/runner/report.rs"),
        ("ItemReplaced", "src/runner/resolve.rs"),
        // Rotation Events, one written over several lines.
        ("DataKeyRotated", "src/controller/rotation/environment.rs"),
        (
            "DataKeyRotationComplete",
            "src/controller/rotation/reencrypt.rs",
        ),
        // Tuples of the runner.
        ("CheckPassed", "src/runner/service.rs"),
        ("MonitorDown", "src/runner/service.rs"),
    ] {
        assert_eq!(
            reasons.get(reason).map(String::as_str),
            Some(file),
            "the scan misses {reason}"
        );
    }
    // Words only in `#[cfg(test)]` code, and no-reason words, are left out.
    for absent in ["SealedValueDoesNotOpen", "Ingested", "Ready", "Check"] {
        assert!(!reasons.contains_key(absent), "{absent} is not a reason");
    }
}

#[test]
fn the_lexer_skips_comments_tests_and_tricky_literals() {
    let source = r####"
// "CommentWord" in a line comment
/* "BlockWord" /* nested "NestedWord" */ still "BlockWord" */
const BRACE: char = '{';
const QUOTE: char = '"';
const APOSTROPHE: char = '\'';
fn kept<'a>(x: &'a str) -> &'a str {
    let _ = r#"Raw"Word"#; let _ = b"ByteWord"; "KeptWord\"Escaped"
}
#[cfg(test)]
fn only_in_tests(a: [u8; 4]) { let _ = "TestFnWord"; let _ = '}'; }
#[cfg(test)]
mod helpers;
fn after() -> &'static str { "AfterWord" }
#[cfg(test)]
mod tests {
    fn inner() { let _ = "TestModWord"; if true { let _ = "{"; } }
}
"####;
    let literals = non_test_literals(source);
    assert_eq!(
        literals,
        ["Raw\"Word", "ByteWord", "KeptWord\\\"Escaped", "AfterWord"]
    );
    assert_eq!(
        documented("### `A`, `B`\n## `C`\n### plain\n"),
        BTreeSet::from(["A".to_owned(), "B".to_owned()])
    );
    assert!(is_camel_case("KeysReady") && is_camel_case("Tls") && is_camel_case("Base32"));
    assert!(!is_camel_case("GET") && !is_camel_case("SHA1") && !is_camel_case("Not a word"));
}

/// `n` as the docs write it: `65,536`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The rows of the table under `## Limits` in `docs/concepts.md`: first cell → row.
fn limits_table() -> BTreeMap<String, String> {
    let page = "docs/concepts.md";
    let text = std::fs::read_to_string(root().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
    let section = text
        .split("\n## Limits\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{page} has a ## Limits section"));
    section
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| line.starts_with("| ") && !line.starts_with("| input |"))
        .filter_map(|line| {
            let first = line.trim_start_matches("| ").split(" | ").next()?;
            Some((first.to_owned(), line.to_owned()))
        })
        .collect()
}

#[test]
fn the_limits_table_states_each_limit_as_the_code_does() {
    use monivault::api::monitor::limits as monitor;
    use monivault::api::monitor_run::MAX_UNFINISHED_RUNS_PER_MONITOR;
    use monivault::api::template::{
        MAX_ITEMS_PER_MONITOR, MAX_PLACEHOLDERS_PER_MONITOR, MAX_PLACEHOLDERS_PER_TEXT,
    };
    use monivault::api::vault_item::limits as item;
    use monivault::crypto::pkcs12;
    use monivault::runner::report::MAX_MESSAGE_BYTES;
    use monivault::runner::{
        BODY_EXCERPT_BYTES, MAX_REDIRECTS, MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS,
        RunnerSettings,
    };

    let n = |v: usize| thousands(v as u64);
    let expected: Vec<(&str, String)> = vec![
        ("`Monitor` `url`", n(monitor::URL)),
        ("`Monitor` `headers`", n(monitor::HEADERS)),
        ("`Monitor` `headers[].name`", n(monitor::HEADER_NAME)),
        ("`Monitor` `headers[].value`", n(monitor::HEADER_VALUE)),
        ("`Monitor` `body`", n(monitor::BODY)),
        (
            "`Monitor` `assertions.statusCodes`, `bodyContains`, `bodyNotContains`",
            n(monitor::ASSERTIONS),
        ),
        (
            "`Monitor` `assertions.bodyContains[]`, `bodyNotContains[]`",
            n(monitor::ASSERTION_TEXT),
        ),
        (
            "placeholders in one field (`url`, a header value, `body`)",
            n(MAX_PLACEHOLDERS_PER_TEXT),
        ),
        (
            "placeholders in one monitor, all fields together",
            n(MAX_PLACEHOLDERS_PER_MONITOR),
        ),
        ("vault items one monitor carries", n(MAX_ITEMS_PER_MONITOR)),
        (
            "unfinished `MonitorRun`s of one monitor (inline runs of a namespace count together)",
            n(MAX_UNFINISHED_RUNS_PER_MONITOR),
        ),
        (
            "finished `MonitorRun`s kept per monitor",
            n(RunnerSettings::default().runs_kept_per_monitor),
        ),
        ("`VaultItem` `description`", n(item::DESCRIPTION)),
        ("`VaultItem` `allowedHosts`", n(item::ALLOWED_HOSTS)),
        ("`credentialSet.username`", n(item::USERNAME)),
        (
            "`credentialSet.password`, `certificateArchive.password`",
            n(item::PASSWORD),
        ),
        ("`secret.value`", n(item::SECRET_VALUE)),
        ("`certificateArchive.archive`", n(item::ARCHIVE)),
        ("`file.content`", n(item::FILE_CONTENT)),
        ("`file.name`", n(item::FILE_NAME)),
        ("`oneTimePassword.secret`", n(item::OTP_SECRET)),
        ("`certificate.pem`", n(item::PEM)),
        (
            "`sealed.password`, `sealed.archivePassword`, `sealed.secret`",
            n(item::SEALED_SHORT),
        ),
        ("`sealed.value`", n(item::SEALED_VALUE)),
        ("`sealed.archive`", n(item::SEALED_ARCHIVE)),
        ("`sealed.content`", n(item::SEALED_CONTENT)),
        ("PKCS#12 archive", format!("{} bags", pkcs12::MAX_BAGS)),
        (
            "PKCS#12 archive",
            format!("nested {} deep", pkcs12::MAX_NESTING),
        ),
        ("PKCS#12 archive", thousands(pkcs12::MAX_ITERATIONS)),
        ("PKCS#12 archive", thousands(pkcs12::MAX_TOTAL_ITERATIONS)),
        (
            "AdmissionReview request body",
            format!("{} MiB", monivault::webhook::MAX_BODY_BYTES >> 20),
        ),
        (
            "response body read from a monitored site",
            format!("{} MiB", monivault::runner::MAX_BODY_BYTES >> 20),
        ),
        (
            "response body shown in a run's `bodyExcerpt`",
            n(BODY_EXCERPT_BYTES),
        ),
        (
            "response headers",
            format!("{} over HTTP/1.1", n(MAX_RESPONSE_HEADERS)),
        ),
        (
            "response headers",
            format!(
                "{} bytes over HTTP/2",
                thousands(u64::from(MAX_RESPONSE_HEADER_BYTES))
            ),
        ),
        ("redirects followed", n(MAX_REDIRECTS)),
        (
            "a check's `message`, and each assertion's message",
            n(MAX_MESSAGE_BYTES),
        ),
    ];
    let table = limits_table();
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(input, value)| {
            !table.get(*input).is_some_and(|row| {
                row.split(" | ")
                    .nth(1)
                    .is_some_and(|limit| limit.contains(value.as_str()))
            })
        })
        .map(|(input, value)| format!("{input}: {value}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "docs/concepts.md#limits must state these limits as the code does:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn thousands_are_separated_as_the_docs_write_them() {
    assert_eq!(thousands(64), "64");
    assert_eq!(thousands(1_024), "1,024");
    assert_eq!(thousands(262_144), "262,144");
    assert_eq!(thousands(4_000_000), "4,000,000");
}
