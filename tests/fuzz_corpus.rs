//! The fuzz corpus, replayed in the normal suite: every file under `fuzz/corpus/<target>/`
//! goes through the same check as that fuzz target (the file is shared), so what the
//! fuzzer once found, crashes included, is tested on stable Rust without cargo-fuzz.
//! `tests/fuzz` runs the fuzzer itself; `fuzz/README.md` says how.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
}

/// Replays one target's corpus; a failing file is named, so it can be rerun with
/// `tests/fuzz --replay <target> <file>`.
fn replay(target: &str) {
    let files = corpus(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
    for file in files {
        let data = std::fs::read(&file).expect("read a corpus file");
        let outcome = std::panic::catch_unwind(|| checks::check(target, &data));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
}

#[test]
fn every_target_has_a_corpus() {
    for target in checks::TARGETS {
        assert!(!corpus(target).is_empty(), "{target}");
    }
}

#[test]
fn admission_raw() {
    replay("admission_raw");
}

#[test]
fn admission_structured() {
    replay("admission_structured");
}

#[test]
fn envelope() {
    replay("envelope");
}

#[test]
fn placeholder() {
    replay("placeholder");
}

#[test]
fn pkcs12() {
    replay("pkcs12");
}

#[test]
fn crd() {
    replay("crd");
}

#[test]
fn scrub() {
    replay("scrub");
}

#[test]
fn response() {
    replay("response");
}

/// The planted plaintext really is searched for: the check that every target relies on
/// fails on each form it claims to find.
#[test]
fn the_leak_check_can_fail() {
    for form in checks::leak_forms(checks::PLANTED) {
        let text = format!("before {form} after");
        let caught = std::panic::catch_unwind(|| checks::assert_no_leak("a test", &text));
        assert!(caught.is_err(), "{form} was not caught");
    }
}
