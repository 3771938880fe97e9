//! `monivault seal` end to end: the binary seals what the operator's keyring opens.

use std::io::Write;
use std::process::{Command, Stdio};

use monivault::crypto::{Keyring, RootKey, SealBinding};

const NOW: i64 = 1_800_000_000;
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
    assert!(sealed.starts_with("mv1.s.1."), "{sealed}");
    assert!(!sealed.contains(PLAINTEXT));
    let binding = SealBinding {
        namespace: "team-a",
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
