//! The vault engine on a 1 KiB secret: seal, open, encrypt, decrypt, against raw
//! AES-256-GCM over the same bytes with the same crate, in the same run.
//!
//! `cargo bench --bench engine` prints criterion's figures, then a summary with
//! operations per second and the ratio of the engine's encrypt/decrypt to the raw cipher.
//! The summary reads only what criterion wrote in this run, and fails if any is missing.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use criterion::{Criterion, Throughput};
use monivault::crypto::{ItemBinding, Keyring, RootKey, SealBinding, UnixMillis, seal};

const GROUP: &str = "engine_1KiB";
const NOW: UnixMillis = UnixMillis::from_secs(1_800_000_000);

fn bench(c: &mut Criterion) {
    let secret = vec![0x5au8; 1024];
    let root = RootKey::generate(1).expect("root key");
    let mut keyring = Keyring::new(&root, NOW);
    keyring
        .ensure_environment(&root, "team-a", NOW)
        .expect("environment");
    let cipher = keyring
        .current_data_cipher(&root, "team-a")
        .expect("cipher");
    let opener = keyring.sealing_opener(&root, "team-a", 1).expect("opener");
    let public_key = keyring
        .sealing_public_key(&root, "team-a")
        .expect("public key");
    let item = ItemBinding {
        namespace: "team-a",
        item: "shop-login",
        uid: "6a1e0c7e-0000-4000-8000-000000000001",
        field: "password",
    };
    let sealed_binding = SealBinding {
        namespace: "team-a",
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    };
    let stored = cipher.encrypt(&item, &secret).expect("encrypt");
    let sealed = seal(&public_key, &sealed_binding, &secret).expect("seal");

    // The baseline: the same crate, key size, nonce source and AAD length, no engine.
    let raw = Aes256Gcm::new(&Key::<Aes256Gcm>::from([7u8; 32]));
    let aad = [0u8; 80];

    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Bytes(secret.len() as u64));
    group.bench_function("raw_aes_gcm_encrypt", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).expect("random");
            raw.encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: black_box(&secret),
                    aad: &aad,
                },
            )
            .expect("raw encrypt")
        })
    });
    group.bench_function("encrypt", |b| {
        b.iter(|| {
            cipher
                .encrypt(black_box(&item), black_box(&secret))
                .expect("encrypt")
        })
    });
    group.bench_function("decrypt", |b| {
        b.iter(|| {
            cipher
                .decrypt(black_box(&item), black_box(&stored))
                .expect("decrypt")
        })
    });
    group.bench_function("seal", |b| {
        b.iter(|| seal(&public_key, black_box(&sealed_binding), black_box(&secret)).expect("seal"))
    });
    group.bench_function("open", |b| {
        b.iter(|| {
            opener
                .open(black_box(&sealed_binding), black_box(&sealed))
                .expect("open")
        })
    });
    group.finish();
}

const BENCHES: [&str; 5] = ["raw_aes_gcm_encrypt", "encrypt", "decrypt", "seal", "open"];

/// Where criterion keeps its results: chosen here and handed to criterion, so the summary
/// reads the directory criterion wrote to (criterion's own order of preference).
fn output_directory() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

fn estimates_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(GROUP)
        .join(name)
        .join("new")
        .join("estimates.json")
}

/// Whether criterion measures in this run, as it decides from the arguments: `cargo bench`
/// passes `--bench`; `cargo test --benches`, `--test`, `--list` and `--profile-time` run
/// without writing estimates.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"))
}

/// Mean time per iteration in ns, from the estimates criterion wrote in this run. Their
/// earlier copies were removed before the run, so a file that is there is this run's.
fn mean_ns(dir: &Path, name: &str) -> f64 {
    let path = estimates_file(dir, name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "criterion wrote no estimates for {GROUP}/{name} in this run ({}: {e}); the summary needs all of {BENCHES:?}, so run them unfiltered",
            path.display()
        )
    });
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    json["mean"]["point_estimate"]
        .as_f64()
        .filter(|ns| ns.is_finite() && *ns > 0.0)
        .unwrap_or_else(|| panic!("{} has no positive mean.point_estimate", path.display()))
}

fn main() {
    let dir = output_directory();
    let measuring = measuring();
    if measuring {
        // A result left by an earlier run must never pass for this run's.
        for name in BENCHES {
            let path = estimates_file(&dir, name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("cannot remove the earlier {}: {e}", path.display()),
            }
        }
    }
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    if !measuring {
        println!("\n== {GROUP}: nothing measured in this mode, so no summary ==");
        return;
    }

    println!("\n== {GROUP} summary (this run) ==");
    let means: Vec<f64> = BENCHES.iter().map(|name| mean_ns(&dir, name)).collect();
    for (name, ns) in BENCHES.iter().zip(&means) {
        println!("{name:>20}: {:>12.0} ops/s  ({ns:.0} ns/op)", 1e9 / ns);
    }
    let (raw, enc, dec) = (means[0], means[1], means[2]);
    println!("encrypt / raw AES-256-GCM: {:.2}x", enc / raw);
    println!("decrypt / raw AES-256-GCM: {:.2}x", dec / raw);
}
