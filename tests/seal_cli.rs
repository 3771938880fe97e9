//! `monivault seal` end to end: the binary seals what the operator's keyring opens.

use std::io::Write;
use std::process::{Command, Stdio};

use monivault::crypto::{Keyring, RootKey, SealBinding, UnixMillis};

const NOW: UnixMillis = UnixMillis::from_secs(1_800_000_000);
const PLAINTEXT: &str = "s3al-me-offline-7f3a";

fn monivault_seal(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_monivault"))
        .arg("seal")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn monivault");
    // The binary may refuse its arguments and exit before reading: a broken pipe is fine.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    child.wait_with_output().expect("wait")
}

fn environment() -> (RootKey, Keyring, tempfile_path::TempPath) {
    let root = RootKey::generate(1).expect("root");
    let mut keyring = Keyring::new(&root, NOW);
    keyring
        .ensure_environment(&root, "team-a", NOW)
        .expect("env");
    let pk = keyring.sealing_public_key(&root, "team-a").expect("pk");
    let path = tempfile_path::TempPath::new("pk");
    std::fs::write(&path.0, format!("{pk}\n")).expect("write key file");
    (root, keyring, path)
}

#[test]
fn sealed_output_opens_in_the_operator() {
    let (root, keyring, pk) = environment();
    let pk = pk.0.to_str().expect("utf-8 path");
    let out = monivault_seal(
        &[
            "-n",
            "team-a",
            "--section",
            "checkout",
            "--item",
            "shop-login",
            "--field",
            "password",
            "--public-key-file",
            pk,
        ],
        format!("{PLAINTEXT}\n").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sealed = String::from_utf8(out.stdout).expect("utf-8");
    assert!(sealed.starts_with("mv2.s.1."), "{sealed}");
    assert!(!sealed.contains(PLAINTEXT));
    let binding = SealBinding {
        namespace: "team-a",
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    };
    let opened = keyring
        .open_sealed(&root, &binding, sealed.trim())
        .expect("opens");
    assert_eq!(
        opened.expose(),
        PLAINTEXT.as_bytes(),
        "the trailing newline is not sealed"
    );
}

#[test]
fn bad_arguments_get_clear_errors() {
    let (_, _, pk) = environment();
    let pk = pk.0.to_str().expect("utf-8 path");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "-n",
                "team-b",
                "--section",
                "checkout",
                "--item",
                "x",
                "--field",
                "password",
                "--public-key-file",
                pk,
            ],
            "sealing key is for namespace \"team-a\", not \"team-b\"",
        ),
        (
            &[
                "-n",
                "team-a",
                "--section",
                "checkout",
                "--item",
                "x",
                "--field",
                "username",
                "--public-key-file",
                pk,
            ],
            "unknown field \"username\"",
        ),
        (
            &[
                "-n",
                "team-a",
                "--section",
                "checkout",
                "--item",
                "x",
                "--field",
                "value",
                "--public-key-file",
                "/nonexistent/pk",
            ],
            "cannot read the public key from /nonexistent/pk",
        ),
    ];
    for (args, expected) in cases {
        let out = monivault_seal(args, PLAINTEXT.as_bytes());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains(PLAINTEXT), "the error echoes the secret");
    }
    let out = monivault_seal(
        &[
            "-n",
            "team-a",
            "--section",
            "checkout",
            "--item",
            "x",
            "--field",
            "value",
            "--public-key-file",
            pk,
        ],
        b"\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    // Without the section there is nothing to bind the value to.
    let out = monivault_seal(
        &[
            "-n",
            "team-a",
            "--item",
            "x",
            "--field",
            "value",
            "--public-key-file",
            pk,
        ],
        PLAINTEXT.as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--section"), "{stderr}");

    // Over the field's limit: refused with the limit, never echoed.
    let long = "x".repeat(2000);
    let out = monivault_seal(
        &[
            "-n",
            "team-a",
            "--section",
            "checkout",
            "--item",
            "x",
            "--field",
            "password",
            "--public-key-file",
            pk,
        ],
        long.as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("at most 1024 bytes"), "{stderr}");
    assert!(!stderr.contains(&long));
}

/// Seals `stdin` (or a file) with the test key and opens the result as the operator would.
fn seal_and_open(field: &str, item_type: &str, extra: &[&str], stdin: &[u8]) -> Vec<u8> {
    let (root, keyring, pk) = environment();
    let pk = pk.0.to_str().expect("utf-8 path");
    let mut args = vec![
        "-n",
        "team-a",
        "--section",
        "checkout",
        "--item",
        "x",
        "--field",
        field,
        "--public-key-file",
        pk,
    ];
    args.extend_from_slice(extra);
    let out = monivault_seal(&args, stdin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sealed = String::from_utf8(out.stdout).expect("utf-8");
    let binding = SealBinding {
        namespace: "team-a",
        section: "checkout",
        item_type,
        item: "x",
        field,
    };
    let opened = keyring
        .open_sealed(&root, &binding, sealed.trim())
        .expect("opens");
    // Bound to the section: another section of the same namespace does not open it.
    let elsewhere = SealBinding {
        section: "payments",
        ..binding
    };
    assert!(
        keyring
            .open_sealed(&root, &elsewhere, sealed.trim())
            .is_err()
    );
    opened.expose().to_vec()
}

#[test]
fn exactly_one_trailing_newline_is_dropped_from_standard_input() {
    assert_eq!(seal_and_open("value", "Secret", &[], b"tok\n\n"), b"tok\n");
    assert_eq!(seal_and_open("value", "Secret", &[], b"tok\r\n"), b"tok");
    assert_eq!(seal_and_open("value", "Secret", &[], b"tok"), b"tok");
}

#[test]
fn a_raw_file_is_base64_encoded_for_the_fields_that_hold_base64() {
    let file = tempfile_path::TempPath::new("p12");
    let raw: Vec<u8> = (0u8..=255).chain([0x30, 0x82, 0x0a]).collect();
    std::fs::write(&file.0, &raw).expect("write");
    let path = file.0.to_str().expect("utf-8 path");
    let opened = seal_and_open("archive", "CertificateArchive", &["--from-file", path], b"");
    use base64::Engine as _;
    assert_eq!(
        opened,
        base64::engine::general_purpose::STANDARD
            .encode(&raw)
            .into_bytes()
    );
    // A token file is taken as it is, trailing newline included.
    std::fs::write(&file.0, b"tok\n").expect("write");
    assert_eq!(
        seal_and_open("value", "Secret", &["--from-file", path], b""),
        b"tok\n"
    );
}

/// A file path removed on drop, so tests leave nothing behind.
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);

    impl TempPath {
        pub fn new(tag: &str) -> Self {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("random");
            let name = format!("monivault-{tag}-{:016x}", u64::from_le_bytes(bytes));
            TempPath(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
