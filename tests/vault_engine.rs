//! The vault engine's guarantees, through its public API: tampering never opens, a
//! ciphertext moved to another context never opens, and no sequence of rotation steps
//! loses a record.

use std::collections::{BTreeMap, BTreeSet};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::aes::cipher::BlockCipherEncrypt;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hpke::{Deserializable, Kem as _, Serializable};
use monivault::crypto::{
    CryptoError, ItemBinding, Keyring, RootKey, RotationPolicy, SealBinding, SealingPublicKey,
    UnixMillis, reencrypt, seal,
};
use proptest::prelude::*;
use serde_json::json;

const NOW: UnixMillis = UnixMillis::from_secs(1_800_000_000);
const SECRET: &[u8] = b"correct horse battery staple \x00\xff 1 KiB-ish";

fn keyring_with(namespaces: &[&str]) -> (RootKey, Keyring) {
    let root = RootKey::generate(1).expect("root key");
    let mut keyring = Keyring::new(&root, NOW);
    for ns in namespaces {
        keyring
            .ensure_environment(&root, ns, NOW)
            .expect("environment");
    }
    (root, keyring)
}

fn binding<'a>(namespace: &'a str, item: &'a str, field: &'a str) -> ItemBinding<'a> {
    ItemBinding {
        namespace,
        item,
        uid: "6a1e0c7e-0000-4000-8000-000000000001",
        field,
    }
}

/// Every single-byte change to the text, one at a time.
fn each_byte_flipped(text: &str) -> impl Iterator<Item = String> + '_ {
    (0..text.len()).flat_map(move |i| {
        [0x01u8, 0x20, 0x80].into_iter().filter_map(move |mask| {
            let mut bytes = text.as_bytes().to_vec();
            bytes[i] ^= mask;
            String::from_utf8(bytes).ok()
        })
    })
}

#[test]
fn tampered_stored_ciphertext_never_opens() {
    let (root, keyring) = keyring_with(&["team-a"]);
    let cipher = keyring
        .current_data_cipher(&root, "team-a")
        .expect("cipher");
    let b = binding("team-a", "shop-login", "password");
    let text = cipher.encrypt(&b, SECRET).expect("encrypt");
    assert_eq!(cipher.decrypt(&b, &text).expect("opens").expose(), SECRET);

    let mut tried = 0;
    for tampered in each_byte_flipped(&text) {
        tried += 1;
        let result = keyring.decrypt(&root, &b, &tampered);
        assert!(result.is_err(), "a tampered ciphertext opened: {tampered}");
    }
    assert!(tried > text.len(), "every byte was flipped");
}

#[test]
fn tampered_sealed_value_never_opens() {
    let (root, keyring) = keyring_with(&["team-a"]);
    let pk = keyring
        .sealing_public_key(&root, "team-a")
        .expect("public key");
    let b = SealBinding {
        namespace: "team-a",
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    };
    let sealed = seal(&pk, &b, SECRET).expect("seal");
    assert!(sealed.starts_with("mv2.s.1."));
    assert_eq!(
        keyring
            .open_sealed(&root, &b, &sealed)
            .expect("opens")
            .expose(),
        SECRET
    );
    let opener = keyring.sealing_opener(&root, "team-a", 1).expect("opener");
    // One mask per byte keeps this quick; X-Wing decapsulation dominates.
    for i in 0..sealed.len() {
        let mut bytes = sealed.as_bytes().to_vec();
        bytes[i] ^= 0x01;
        let Ok(tampered) = String::from_utf8(bytes) else {
            continue;
        };
        assert!(
            opener.open(&b, &tampered).is_err(),
            "a tampered sealed value opened (byte {i})"
        );
    }
}

/// Found by the `envelope` fuzz target: a key version written with a leading zero named the
/// same key, so one sealed value, or one stored ciphertext, had a second spelling that
/// opened too.
#[test]
fn a_key_version_with_a_leading_zero_is_refused() {
    let (root, keyring) = keyring_with(&["team-a"]);
    let pk = keyring
        .sealing_public_key(&root, "team-a")
        .expect("public key");
    let b = SealBinding {
        namespace: "team-a",
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    };
    let sealed = seal(&pk, &b, SECRET).expect("seal");
    let respelled = sealed.replacen("mv2.s.1.", "mv2.s.01.", 1);
    let error = keyring
        .open_sealed(&root, &b, &respelled)
        .expect_err("a second spelling must not open");
    assert!(error.to_string().contains("leading zero"), "{error}");

    let ib = binding("team-a", "shop-login", "password");
    let stored = keyring
        .current_data_cipher(&root, "team-a")
        .expect("cipher")
        .encrypt(&ib, SECRET)
        .expect("encrypt");
    let respelled = stored.replacen("mv1.d.1.", "mv1.d.001.", 1);
    let error = keyring
        .decrypt(&root, &ib, &respelled)
        .expect_err("a second spelling must not open");
    assert!(error.to_string().contains("leading zero"), "{error}");
}

#[test]
fn truncated_and_garbage_inputs_give_typed_errors() {
    let (root, keyring) = keyring_with(&["team-a"]);
    let b = binding("team-a", "x", "value");
    let sb = SealBinding {
        namespace: "team-a",
        section: "checkout",
        item_type: "Secret",
        item: "x",
        field: "value",
    };
    for bad in [
        "",
        "*****",
        "mv1.d.1.",
        "mv1.s.1.",
        "mv1.d.1.AAAA",
        "mv1.s.1.AAAA",
        "mv1.d.4294967295.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "mv1.s.1.\u{1F600}",
    ] {
        assert!(keyring.decrypt(&root, &b, bad).is_err(), "{bad:?}");
        assert!(keyring.open_sealed(&root, &sb, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn stored_ciphertext_is_bound_to_its_item() {
    let (root, keyring) = keyring_with(&["team-a", "team-b"]);
    let a = keyring
        .current_data_cipher(&root, "team-a")
        .expect("cipher");
    let original = binding("team-a", "shop-login", "password");
    let text = a.encrypt(&original, SECRET).expect("encrypt");

    let moved = [
        (
            "another item",
            ItemBinding {
                item: "other-login",
                ..original
            },
        ),
        (
            "another uid",
            ItemBinding {
                uid: "6a1e0c7e-0000-4000-8000-000000000002",
                ..original
            },
        ),
        (
            "another field",
            ItemBinding {
                field: "username",
                ..original
            },
        ),
    ];
    for (case, b) in moved {
        assert_eq!(
            keyring.decrypt(&root, &b, &text).err(),
            Some(CryptoError::OpenFailed {
                what: "stored ciphertext"
            }),
            "{case}"
        );
    }
    // Another namespace has its own keys, and a cipher refuses foreign items outright.
    let other_ns = ItemBinding {
        namespace: "team-b",
        ..original
    };
    assert!(keyring.decrypt(&root, &other_ns, &text).is_err());
    assert!(matches!(
        a.decrypt(&other_ns, &text),
        Err(CryptoError::NamespaceMismatch { .. })
    ));
}

#[test]
fn stored_ciphertext_is_bound_to_its_key_version() {
    let (root, mut keyring) = keyring_with(&["team-a"]);
    let b = binding("team-a", "shop-login", "password");
    let v1 = keyring.current_data_cipher(&root, "team-a").expect("v1");
    let text = v1.encrypt(&b, SECRET).expect("encrypt");
    assert_eq!(
        keyring
            .rotate_data_key(&root, "team-a", NOW)
            .expect("rotate"),
        2
    );
    // Relabel the envelope as version 2: the v2 key and the v2 AAD both refuse it.
    let relabelled = text.replacen("mv1.d.1.", "mv1.d.2.", 1);
    assert!(matches!(
        keyring.decrypt(&root, &b, &relabelled),
        Err(CryptoError::OpenFailed { .. })
    ));
    assert_eq!(
        keyring
            .decrypt(&root, &b, &text)
            .expect("v1 opens")
            .expose(),
        SECRET
    );
}

#[test]
fn sealed_value_is_bound_to_namespace_section_type_item_field_and_version() {
    let (root, mut keyring) = keyring_with(&["team-a", "team-b"]);
    let pk = keyring
        .sealing_public_key(&root, "team-a")
        .expect("public key");
    let original = SealBinding {
        namespace: "team-a",
        section: "checkout",
        item_type: "CredentialSet",
        item: "shop-login",
        field: "password",
    };
    let sealed = seal(&pk, &original, SECRET).expect("seal");

    for (case, b) in [
        (
            "another item",
            SealBinding {
                item: "other",
                ..original
            },
        ),
        (
            "another field",
            SealBinding {
                field: "value",
                ..original
            },
        ),
        (
            // A value copied into an item recreated in a section the copier may use.
            "another section",
            SealBinding {
                section: "payments",
                ..original
            },
        ),
        (
            "another item type",
            SealBinding {
                item_type: "Secret",
                ..original
            },
        ),
    ] {
        assert_eq!(
            keyring.open_sealed(&root, &b, &sealed).err(),
            Some(CryptoError::OpenFailed {
                what: "sealed value"
            }),
            "{case}"
        );
    }
    let other_ns = SealBinding {
        namespace: "team-b",
        ..original
    };
    assert!(keyring.open_sealed(&root, &other_ns, &sealed).is_err());
    // Sealing for one namespace with another's key is refused up front.
    assert!(matches!(
        seal(&pk, &other_ns, SECRET),
        Err(CryptoError::NamespaceMismatch { .. })
    ));

    keyring
        .rotate_sealing_key(&root, "team-a", NOW)
        .expect("rotate");
    let relabelled = sealed.replacen("mv2.s.1.", "mv2.s.2.", 1);
    assert_ne!(relabelled, sealed);
    assert!(keyring.open_sealed(&root, &original, &relabelled).is_err());
    // The format of before the section was bound is refused with a way out.
    let outdated = sealed.replacen("mv2.s.", "mv1.s.", 1);
    assert_eq!(
        keyring.open_sealed(&root, &original, &outdated).err(),
        Some(CryptoError::OutdatedSealedFormat)
    );
    // The old version is retained, so the original still opens.
    assert_eq!(
        keyring
            .open_sealed(&root, &original, &sealed)
            .expect("opens")
            .expose(),
        SECRET
    );
}

#[test]
fn public_key_text_round_trips_and_rejects_garbage() {
    let (root, keyring) = keyring_with(&["team-a"]);
    let pk = keyring
        .sealing_public_key(&root, "team-a")
        .expect("public key");
    let text = pk.to_string();
    assert!(text.starts_with("mvpk1.team-a.1."));
    assert_eq!(SealingPublicKey::parse(&text).expect("parses"), pk);
    for bad in [
        "",
        "mvpk1.team-a.1.AAAA",
        "mvpk2.team-a.1.x",
        "mvpk1..1.AAAA",
        "mvpk1.a.b.c",
    ] {
        assert!(SealingPublicKey::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_wrong_root_key_is_refused_before_anything_opens() {
    let (_, keyring) = keyring_with(&["team-a"]);
    let intruder = RootKey::generate(1).expect("key");
    assert!(matches!(
        keyring.current_data_cipher(&intruder, "team-a"),
        Err(CryptoError::WrongRootKey { .. })
    ));
    let message = keyring
        .check_root(&intruder)
        .expect_err("wrong key")
        .to_string();
    assert!(message.contains("does not match the keyring"), "{message}");
}

#[test]
fn sealing_keys_are_pruned_only_after_retention() {
    let (root, mut keyring) = keyring_with(&["team-a"]);
    let policy = RotationPolicy::default();
    keyring
        .rotate_sealing_key(&root, "team-a", NOW)
        .expect("rotate");
    let later = UnixMillis::from_secs(NOW.as_secs() + policy.sealing_key_retention - 1);
    assert!(
        keyring
            .prune_sealing_keys("team-a", later, &policy)
            .expect("prune")
            .is_empty()
    );
    let dropped = keyring
        .prune_sealing_keys(
            "team-a",
            UnixMillis::from_secs(NOW.as_secs() + policy.sealing_key_retention),
            &policy,
        )
        .expect("prune");
    assert_eq!(dropped, vec![1]);
    assert!(keyring.sealing_opener(&root, "team-a", 1).is_err());
    assert!(keyring.sealing_opener(&root, "team-a", 2).is_ok());
}

#[test]
fn a_keyring_split_per_environment_keeps_every_key_and_no_other_namespace() {
    let (root, keyring) = keyring_with(&["team-a", "team-b"]);
    let cipher = keyring
        .current_data_cipher(&root, "team-a")
        .expect("cipher");
    let b = binding("team-a", "shop-login", "password");
    let text = cipher.encrypt(&b, SECRET).expect("encrypt");
    let split = keyring.split();
    assert_eq!(
        split.iter().map(|(ns, _)| ns.as_str()).collect::<Vec<_>>(),
        ["team-a", "team-b"]
    );
    for (namespace, one) in &split {
        assert_eq!(one.environments.keys().collect::<Vec<_>>(), [namespace]);
        assert_eq!(one.root_key_version, keyring.root_key_version);
        one.check_root(&root).expect("same root key");
        assert_eq!(
            one.sealing_public_key(&root, namespace).expect("key"),
            keyring.sealing_public_key(&root, namespace).expect("key")
        );
    }
    let team_a = &split[0].1;
    assert_eq!(
        team_a.decrypt(&root, &b, &text).expect("opens").expose(),
        SECRET
    );
    assert!(
        split[1].1.decrypt(&root, &b, &text).is_err(),
        "team-b has no team-a keys"
    );
}

#[test]
fn keyring_serializes_without_key_material_in_the_clear() {
    let (root, mut keyring) = keyring_with(&["team-a"]);
    // Two versions of each kind, one sealing key superseded: every field the format has.
    assert_eq!(keyring.rotate_data_key(&root, "team-a", NOW), Ok(2));
    assert_eq!(keyring.rotate_sealing_key(&root, "team-a", NOW), Ok(2));
    let json = serde_json::to_string(&keyring).expect("json");

    // The key material this test can reach: the root key's bytes, and for each data key
    // and sealing seed a way to recognise it (they never leave the engine unwrapped).
    let probes = KeyProbes {
        data: (1..=2)
            .map(|v| {
                let cipher = keyring.data_cipher(&root, "team-a", v).expect("cipher");
                DataKeySample::from_envelope(
                    &cipher
                        .encrypt(&binding("team-a", "x", "value"), SECRET)
                        .expect("encrypt"),
                )
            })
            .collect(),
        sealing: (1..=2)
            .map(|v| {
                let opener = keyring.sealing_opener(&root, "team-a", v).expect("opener");
                public_key_bytes(&opener.public_key())
            })
            .collect(),
    };
    assert_eq!(
        find_key(&json, root.expose_bytes()),
        None,
        "root key bytes in the keyring: {json}"
    );
    assert_eq!(
        probes.find_in(&json),
        None,
        "a data key or sealing seed in the keyring: {json}"
    );

    // The structure, field by field: nothing else rides along.
    let doc: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(
        members(&doc),
        [
            "environments",
            "format",
            "rootKeyId",
            "rootKeySinceMs",
            "rootKeyVersion"
        ]
    );
    assert_eq!(doc["format"], 2);
    assert_eq!(doc["rootKeyVersion"], 1);
    assert_eq!(doc["rootKeyId"], root.id());
    assert_eq!(doc["rootKeySinceMs"], NOW.as_millis());
    assert_eq!(members(&doc["environments"]), ["team-a"]);
    let env = &doc["environments"]["team-a"];
    assert_eq!(
        members(env),
        [
            "currentDataKey",
            "currentSealingKey",
            "dataKeys",
            "sealingKeys"
        ]
    );
    assert_eq!(env["currentDataKey"], 2);
    assert_eq!(env["currentSealingKey"], 2);
    assert_eq!(members(&env["dataKeys"]), ["1", "2"]);
    assert_eq!(members(&env["sealingKeys"]), ["1", "2"]);
    let mut wrapped = BTreeSet::new();
    for v in ["1", "2"] {
        let data = &env["dataKeys"][v];
        assert_eq!(members(data), ["createdAtMs", "encryptions", "wrapped"]);
        assert_eq!(data["createdAtMs"], NOW.as_millis());
        assert_eq!(data["encryptions"], 0);
        let sealing = &env["sealingKeys"][v];
        let superseded: &[&str] = if v == "1" {
            &["createdAtMs", "supersededAtMs", "wrappedSeed"]
        } else {
            &["createdAtMs", "wrappedSeed"]
        };
        assert_eq!(members(sealing), superseded);
        for text in [&data["wrapped"], &sealing["wrappedSeed"]] {
            let text = text.as_str().expect("wrapped keys are strings");
            let bytes = STANDARD.decode(text).expect("wrapped keys are base64");
            // nonce || AES-256-GCM(32-byte key) || tag: a ciphertext, longer than a key.
            assert_eq!(bytes.len(), 12 + 32 + 16, "{text}");
            assert!(wrapped.insert(bytes), "each key is wrapped apart: {text}");
        }
    }

    let back: Keyring = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, keyring);
    let cipher = back.current_data_cipher(&root, "team-a").expect("cipher");
    let b = binding("team-a", "x", "value");
    let text = cipher.encrypt(&b, SECRET).expect("encrypt");
    assert_eq!(
        keyring.decrypt(&root, &b, &text).expect("opens").expose(),
        SECRET
    );
}

/// The key finders above find a key that is there, in every form they look for.
#[test]
fn the_key_finders_find_planted_keys_in_every_encoding() {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("random");
    // A data key: what an envelope under it looks like (nonce || ciphertext || tag).
    let nonce = [9u8; 12];
    let payload: Vec<u8> = nonce
        .iter()
        .copied()
        .chain(
            Aes256Gcm::new(&key.into())
                .encrypt(&nonce.into(), SECRET)
                .expect("encrypt"),
        )
        .collect();
    let as_data_key = KeyProbes {
        data: vec![DataKeySample::from_envelope(&format!(
            "mv1.d.1.{}",
            URL_SAFE_NO_PAD.encode(&payload)
        ))],
        sealing: vec![],
    };
    // A sealing seed: its public key.
    let seed = <XWing as hpke::Kem>::PrivateKey::from_bytes(&key).expect("any 32 bytes");
    let as_seed = KeyProbes {
        data: vec![],
        sealing: vec![XWing::sk_to_pk(&seed).to_bytes().to_vec()],
    };
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let planted = [
        json!({"wrapped": key.to_vec()}).to_string(),
        json!({"wrapped": key.iter().map(|&b| char::from(b)).collect::<String>()}).to_string(),
        json!({"wrapped": STANDARD.encode(key)}).to_string(),
        json!({"wrapped": format!("v1:{}", STANDARD_NO_PAD.encode([&b"x"[..], &key].concat()))})
            .to_string(),
        json!({"wrapped": URL_SAFE_NO_PAD.encode([&b"xy"[..], &key].concat())}).to_string(),
        json!({"wrapped": format!("ab{}", STANDARD.encode(key))}).to_string(),
        json!({"wrapped": hex.to_uppercase()}).to_string(),
        json!({"wrapped": format!("0{hex}")}).to_string(),
    ];
    for text in &planted {
        assert!(find_key(text, &key).is_some(), "root key missed in {text}");
        assert!(
            as_data_key.find_in(text).is_some(),
            "data key missed in {text}"
        );
        assert!(as_seed.find_in(text).is_some(), "seed missed in {text}");
    }
    // A random key is in none of them.
    let mut other = [0u8; 32];
    getrandom::fill(&mut other).expect("random");
    for text in &planted {
        assert_eq!(find_key(text, &other), None, "{text}");
    }
    let clean = json!({"wrapped": STANDARD.encode(other)}).to_string();
    assert_eq!(as_data_key.find_in(&clean), None);
    assert_eq!(as_seed.find_in(&clean), None);
}

type XWing = hpke::kem::XWing;

/// The member names of a JSON object, in order.
fn members(value: &serde_json::Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn public_key_bytes(pk: &SealingPublicKey) -> Vec<u8> {
    let text = pk.to_string();
    let (_, key) = text.rsplit_once('.').expect("mvpk1.<ns>.<version>.<key>");
    URL_SAFE_NO_PAD.decode(key).expect("base64url")
}

/// Every byte string a JSON text could hide key material in: the text itself; each
/// string in it, as UTF-8 and as Latin-1 (bytes written as `\u00XX`); each array of byte
/// values; and every run of base64 (standard or URL-safe, at each of the four character
/// offsets) or hex (at each of the two) in the text, decoded.
fn decodings(json: &str) -> Vec<Vec<u8>> {
    fn walk(value: &serde_json::Value, strings: &mut Vec<String>, out: &mut Vec<Vec<u8>>) {
        match value {
            serde_json::Value::String(s) => strings.push(s.clone()),
            serde_json::Value::Array(items) => {
                let bytes: Option<Vec<u8>> = items
                    .iter()
                    .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
                    .collect();
                out.extend(bytes.filter(|b| !b.is_empty()));
                items.iter().for_each(|v| walk(v, strings, out));
            }
            serde_json::Value::Object(members) => {
                for (name, v) in members {
                    strings.push(name.clone());
                    walk(v, strings, out);
                }
            }
            _ => {}
        }
    }
    let value: serde_json::Value = serde_json::from_str(json).expect("json");
    let mut strings = vec![json.to_owned()];
    let mut out = Vec::new();
    walk(&value, &mut strings, &mut out);
    for text in &strings {
        out.push(text.as_bytes().to_vec());
        out.extend(
            text.chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect::<Option<Vec<u8>>>(),
        );
        let runs = |in_alphabet: fn(char) -> bool| -> Vec<Vec<char>> {
            text.split(|c| !in_alphabet(c))
                .filter(|run| !run.is_empty())
                .map(|run| run.chars().collect())
                .collect()
        };
        // Unpadded, and lenient about the bits of a last partial group.
        let config = GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true);
        for (alphabet, in_alphabet) in [
            (
                &alphabet::STANDARD,
                (|c| c.is_ascii_alphanumeric() || c == '+' || c == '/') as fn(char) -> bool,
            ),
            (&alphabet::URL_SAFE, |c| {
                c.is_ascii_alphanumeric() || c == '-' || c == '_'
            }),
        ] {
            let engine = GeneralPurpose::new(alphabet, config);
            for run in runs(in_alphabet) {
                for offset in 0..4.min(run.len()) {
                    let rest = &run[offset..];
                    // A last group of one character holds no whole byte.
                    let usable = rest.len() - usize::from(rest.len() % 4 == 1);
                    let text: String = rest[..usable].iter().collect();
                    out.extend(engine.decode(text).ok());
                }
            }
        }
        for run in runs(|c| c.is_ascii_hexdigit()) {
            for offset in 0..2.min(run.len()) {
                let digits = &run[offset..];
                let bytes: Option<Vec<u8>> = digits
                    .chunks_exact(2)
                    .map(|pair| {
                        let pair: String = pair.iter().collect();
                        u8::from_str_radix(&pair, 16).ok()
                    })
                    .collect();
                out.extend(bytes);
            }
        }
    }
    out
}

/// Where any 16 consecutive bytes of `key` appear in `json`, in any form [`decodings`]
/// knows.
fn find_key(json: &str, key: &[u8]) -> Option<String> {
    decodings(json).into_iter().find_map(|bytes| {
        key.windows(16).find_map(|part| {
            bytes
                .windows(part.len())
                .any(|w| w == part)
                .then(|| format!("{} key bytes in {bytes:02x?}", part.len()))
        })
    })
}

/// One block of a data key's keystream, known from an envelope of [`SECRET`]: AES-GCM
/// encrypts the first block with counter 2 after a 96-bit nonce.
struct DataKeySample {
    counter_block: [u8; 16],
    keystream: [u8; 16],
}

impl DataKeySample {
    fn from_envelope(envelope: &str) -> Self {
        let (_, payload) = envelope
            .rsplit_once('.')
            .expect("mv1.d.<version>.<payload>");
        let payload = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
        let mut counter_block = [0u8; 16];
        counter_block[..12].copy_from_slice(&payload[..12]);
        counter_block[15] = 2;
        let mut keystream = [0u8; 16];
        for (i, k) in keystream.iter_mut().enumerate() {
            *k = payload[12 + i] ^ SECRET[i];
        }
        DataKeySample {
            counter_block,
            keystream,
        }
    }

    fn is_key(&self, candidate: &[u8; 32]) -> bool {
        let mut block = self.counter_block.into();
        Aes256::new(candidate.into()).encrypt_block(&mut block);
        block[..] == self.keystream
    }
}

/// Recognises data keys (by a block of their keystream) and sealing seeds (by their public
/// keys) among every 32-byte window of every decoding of a text.
struct KeyProbes {
    data: Vec<DataKeySample>,
    sealing: Vec<Vec<u8>>,
}

impl KeyProbes {
    fn find_in(&self, json: &str) -> Option<String> {
        let windows: BTreeSet<[u8; 32]> = decodings(json)
            .iter()
            .flat_map(|bytes| bytes.windows(32))
            .map(|w| w.try_into().expect("32 bytes"))
            .collect();
        windows.iter().find_map(|w| {
            if self.data.iter().any(|sample| sample.is_key(w)) {
                return Some(format!("a data key: {w:02x?}"));
            }
            if self.sealing.is_empty() {
                return None;
            }
            let seed = <XWing as hpke::Kem>::PrivateKey::from_bytes(w).ok()?;
            let public = XWing::sk_to_pk(&seed).to_bytes();
            self.sealing
                .iter()
                .any(|pk| pk[..] == public[..])
                .then(|| format!("a sealing seed: {w:02x?}"))
        })
    }
}

// ---- Rotation as a property ----

#[derive(Debug, Clone)]
enum Step {
    Write {
        ns: usize,
        item: usize,
        secret: Vec<u8>,
    },
    RotateDataKey {
        ns: usize,
    },
    Reencrypt {
        ns: usize,
        item: usize,
    },
    Retire {
        ns: usize,
        version: u32,
    },
    RetireUnused {
        ns: usize,
    },
    RotateRootKey,
    RotateSealingKey {
        ns: usize,
    },
}

const NAMESPACES: [&str; 3] = ["team-a", "team-b", "team-c"];
/// Few items and low retire versions, so that records move off old keys and retires meet
/// versions in use; sequences of 16 steps or more. Over 1,000 cases each state [`Reached`]
/// counts came up in at least a third of them, so 48 cases all miss one with odds below
/// 1 in 10^8.
const ITEMS: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    let ns = 0..NAMESPACES.len();
    prop_oneof![
        4 => (ns.clone(), 0..ITEMS, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(ns, item, secret)| Step::Write { ns, item, secret }),
        2 => ns.clone().prop_map(|ns| Step::RotateDataKey { ns }),
        4 => (ns.clone(), 0..ITEMS).prop_map(|(ns, item)| Step::Reencrypt { ns, item }),
        4 => (ns.clone(), 1..4u32).prop_map(|(ns, version)| Step::Retire { ns, version }),
        2 => ns.clone().prop_map(|ns| Step::RetireUnused { ns }),
        1 => Just(Step::RotateRootKey),
        1 => ns.prop_map(|ns| Step::RotateSealingKey { ns }),
    ]
}

struct Record {
    ciphertext: String,
    plaintext: Vec<u8>,
}

/// One environment's key versions as the test expects them, kept apart from the keyring.
#[derive(Debug, Clone)]
struct ModelEnvironment {
    data: BTreeSet<u32>,
    current_data: u32,
    sealing: BTreeSet<u32>,
    current_sealing: u32,
}

impl ModelEnvironment {
    fn new() -> Self {
        ModelEnvironment {
            data: BTreeSet::from([1]),
            current_data: 1,
            sealing: BTreeSet::from([1]),
            current_sealing: 1,
        }
    }
}

/// The states one sequence reached. Counted over all cases: the test fails if the
/// generator stops reaching any of them, since the property would then say nothing.
#[derive(Debug, Clone, Copy, Default)]
struct Reached {
    /// A data key version was destroyed while the namespace kept records.
    retired_with_records: bool,
    /// A retire was refused because records still use the version.
    refused_in_use: bool,
    /// A retire of the current version was refused.
    refused_current: bool,
    /// A retire named a version that does not exist (never made, or retired already).
    refused_unknown_version: bool,
    /// A rotation or retire came before the namespace had keys.
    refused_unknown_environment: bool,
    /// A record moved to a newer data key.
    reencrypted: bool,
    /// The root key was replaced while records existed.
    root_rotated_with_records: bool,
    /// A sealing key was replaced after a value was sealed to the old one.
    sealing_rotated: bool,
}

impl Reached {
    fn names(&self) -> [(&'static str, bool); 8] {
        [
            ("retired_with_records", self.retired_with_records),
            ("refused_in_use", self.refused_in_use),
            ("refused_current", self.refused_current),
            ("refused_unknown_version", self.refused_unknown_version),
            (
                "refused_unknown_environment",
                self.refused_unknown_environment,
            ),
            ("reencrypted", self.reencrypted),
            ("root_rotated_with_records", self.root_rotated_with_records),
            ("sealing_rotated", self.sealing_rotated),
        ]
    }
}

struct World {
    root: RootKey,
    keyring: Keyring,
    /// What the store would hold: (namespace, item) → record.
    records: BTreeMap<(usize, usize), Record>,
    /// One sealed value per namespace, sealed before any rotation, that must keep opening.
    sealed: BTreeMap<usize, String>,
    /// The key versions each namespace should have.
    model: BTreeMap<usize, ModelEnvironment>,
    reached: Reached,
}

fn item_name(item: usize) -> String {
    format!("item-{item}")
}

fn unknown_environment(ns: usize) -> CryptoError {
    CryptoError::UnknownEnvironment {
        namespace: NAMESPACES[ns].to_owned(),
    }
}

impl World {
    fn new() -> Self {
        let root = RootKey::generate(1).expect("root");
        let keyring = Keyring::new(&root, NOW);
        World {
            root,
            keyring,
            records: BTreeMap::new(),
            sealed: BTreeMap::new(),
            model: BTreeMap::new(),
            reached: Reached::default(),
        }
    }

    fn in_use(&self, ns: usize) -> BTreeSet<u32> {
        self.records
            .iter()
            .filter(|((n, _), _)| *n == ns)
            .map(|(_, r)| {
                monivault::crypto::key_version_of(&r.ciphertext)
                    .expect("stored records are well-formed")
                    .1
            })
            .collect()
    }

    fn has_records(&self, ns: usize) -> bool {
        self.records.keys().any(|(n, _)| *n == ns)
    }

    fn apply(&mut self, step: &Step) {
        let root = &self.root;
        match step {
            Step::Write { ns, item, secret } => {
                let namespace = NAMESPACES[*ns];
                let made = self
                    .keyring
                    .ensure_environment(root, namespace, NOW)
                    .expect("ensure");
                assert_eq!(made, !self.model.contains_key(ns), "{step:?}");
                if made {
                    self.model.insert(*ns, ModelEnvironment::new());
                    let pk = self
                        .keyring
                        .sealing_public_key(root, namespace)
                        .expect("pk");
                    let b = SealBinding {
                        namespace,
                        section: "checkout",
                        item_type: "Secret",
                        item: "sealed",
                        field: "value",
                    };
                    self.sealed
                        .insert(*ns, seal(&pk, &b, b"from git").expect("seal"));
                }
                let cipher = self
                    .keyring
                    .current_data_cipher(root, namespace)
                    .expect("cipher");
                let name = item_name(*item);
                let ciphertext = cipher
                    .encrypt(&binding(namespace, &name, "value"), secret)
                    .expect("encrypt");
                self.keyring
                    .record_encryptions(namespace, 1)
                    .expect("count");
                self.records.insert(
                    (*ns, *item),
                    Record {
                        ciphertext,
                        plaintext: secret.clone(),
                    },
                );
            }
            Step::RotateDataKey { ns } => {
                let result = self.keyring.rotate_data_key(root, NAMESPACES[*ns], NOW);
                match self.model.get_mut(ns) {
                    None => {
                        assert_eq!(result, Err(unknown_environment(*ns)), "{step:?}");
                        self.reached.refused_unknown_environment = true;
                    }
                    Some(env) => {
                        let next = env.data.last().expect("a current key") + 1;
                        assert_eq!(result, Ok(next), "{step:?}");
                        env.data.insert(next);
                        env.current_data = next;
                    }
                }
            }
            Step::Reencrypt { ns, item } => {
                let namespace = NAMESPACES[*ns];
                let Some(record) = self.records.get_mut(&(*ns, *item)) else {
                    return;
                };
                let name = item_name(*item);
                let b = binding(namespace, &name, "value");
                let (_, version) =
                    monivault::crypto::key_version_of(&record.ciphertext).expect("version");
                let from = self
                    .keyring
                    .data_cipher(root, namespace, version)
                    .expect("from");
                let to = self
                    .keyring
                    .current_data_cipher(root, namespace)
                    .expect("to");
                let again = reencrypt(&from, &to, &b, &record.ciphertext).expect("reencrypt");
                assert_eq!(
                    again.is_some(),
                    version != to.version(),
                    "a record moves exactly when it is on an older key: {step:?}"
                );
                if let Some(text) = again {
                    record.ciphertext = text;
                    self.reached.reencrypted = true;
                    // Re-running the step on the result is a no-op.
                    assert_eq!(reencrypt(&from, &to, &b, &record.ciphertext), Ok(None));
                }
            }
            Step::Retire { ns, version } => {
                let namespace = NAMESPACES[*ns];
                let in_use = self.in_use(*ns);
                let current = self
                    .keyring
                    .environment(namespace)
                    .map(|e| e.current_data_key);
                let result = self.keyring.retire_data_key(namespace, *version, &in_use);
                if in_use.contains(version) || current == Ok(*version) {
                    assert!(result.is_err(), "retired version {version} while in use");
                }
                // Exactly the refusal the state calls for, and no other error.
                let expected = match self.model.get(ns) {
                    None => Err(unknown_environment(*ns)),
                    Some(env) if env.current_data == *version => Err(CryptoError::RetireCurrent {
                        namespace: namespace.to_owned(),
                        version: *version,
                    }),
                    Some(_) if in_use.contains(version) => Err(CryptoError::KeyInUse {
                        namespace: namespace.to_owned(),
                        version: *version,
                    }),
                    Some(env) if !env.data.contains(version) => {
                        Err(CryptoError::UnknownKeyVersion {
                            namespace: namespace.to_owned(),
                            kind: "data",
                            version: *version,
                        })
                    }
                    Some(_) => Ok(()),
                };
                assert_eq!(result, expected, "{step:?}");
                match result {
                    Ok(()) => {
                        if let Some(env) = self.model.get_mut(ns) {
                            env.data.remove(version);
                        }
                        self.reached.retired_with_records |= self.has_records(*ns);
                    }
                    Err(CryptoError::UnknownEnvironment { .. }) => {
                        self.reached.refused_unknown_environment = true;
                    }
                    Err(CryptoError::RetireCurrent { .. }) => self.reached.refused_current = true,
                    Err(CryptoError::KeyInUse { .. }) => self.reached.refused_in_use = true,
                    Err(CryptoError::UnknownKeyVersion { .. }) => {
                        self.reached.refused_unknown_version = true;
                    }
                    Err(other) => panic!("unexpected refusal {other:?} of {step:?}"),
                }
            }
            Step::RetireUnused { ns } => {
                let namespace = NAMESPACES[*ns];
                let in_use = self.in_use(*ns);
                let retirable = self.keyring.retirable_data_keys(namespace, &in_use);
                let expected: Vec<u32> = self.model.get(ns).map_or_else(Vec::new, |env| {
                    env.data
                        .iter()
                        .copied()
                        .filter(|v| *v != env.current_data && !in_use.contains(v))
                        .collect()
                });
                assert_eq!(retirable, expected, "{step:?}");
                for version in retirable {
                    assert!(!in_use.contains(&version));
                    self.keyring
                        .retire_data_key(namespace, version, &in_use)
                        .expect("retirable version retires");
                    if let Some(env) = self.model.get_mut(ns) {
                        env.data.remove(&version);
                    }
                    self.reached.retired_with_records |= self.has_records(*ns);
                }
            }
            Step::RotateRootKey => {
                let new_root = RootKey::generate(root.version() + 1).expect("root");
                self.keyring = self.keyring.rewrap(root, &new_root, NOW).expect("rewrap");
                assert!(
                    self.keyring.check_root(root).is_err(),
                    "old root no longer fits"
                );
                self.root = new_root;
                self.reached.root_rotated_with_records |= !self.records.is_empty();
            }
            Step::RotateSealingKey { ns } => {
                let result = self.keyring.rotate_sealing_key(root, NAMESPACES[*ns], NOW);
                match self.model.get_mut(ns) {
                    None => {
                        assert_eq!(result, Err(unknown_environment(*ns)), "{step:?}");
                        self.reached.refused_unknown_environment = true;
                    }
                    Some(env) => {
                        let next = env.sealing.last().expect("a current key") + 1;
                        assert_eq!(result, Ok(next), "{step:?}");
                        env.sealing.insert(next);
                        env.current_sealing = next;
                        // The value sealed when the environment was made is on an old key.
                        self.reached.sealing_rotated = true;
                    }
                }
            }
        }
    }

    fn check(&self) {
        for (ns, namespace) in NAMESPACES.iter().enumerate() {
            let env = self.keyring.environment(namespace);
            match self.model.get(&ns) {
                None => assert_eq!(env.err(), Some(unknown_environment(ns))),
                Some(model) => {
                    let env = env.expect("the environment exists");
                    assert_eq!(env.current_data_key, model.current_data, "{namespace}");
                    assert_eq!(
                        env.data_keys.keys().copied().collect::<BTreeSet<_>>(),
                        model.data,
                        "{namespace}"
                    );
                    assert_eq!(
                        env.current_sealing_key, model.current_sealing,
                        "{namespace}"
                    );
                    assert_eq!(
                        env.sealing_keys.keys().copied().collect::<BTreeSet<_>>(),
                        model.sealing,
                        "{namespace}"
                    );
                }
            }
        }
        for ((ns, item), record) in &self.records {
            let name = item_name(*item);
            let opened = self
                .keyring
                .decrypt(
                    &self.root,
                    &binding(NAMESPACES[*ns], &name, "value"),
                    &record.ciphertext,
                )
                .unwrap_or_else(|e| panic!("record {ns}/{name} no longer opens: {e}"));
            assert_eq!(opened.expose(), record.plaintext.as_slice());
        }
        for (ns, sealed) in &self.sealed {
            let b = SealBinding {
                namespace: NAMESPACES[*ns],
                section: "checkout",
                item_type: "Secret",
                item: "sealed",
                field: "value",
            };
            let opened = self
                .keyring
                .open_sealed(&self.root, &b, sealed)
                .expect("sealed opens");
            assert_eq!(opened.expose(), b"from git");
        }
    }
}

#[test]
fn no_rotation_sequence_loses_a_record() {
    let config = ProptestConfig {
        cases: 48,
        // Where the `proptest!` macro would keep failing cases.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let cases_reaching = std::cell::RefCell::new(BTreeMap::<&str, u32>::new());
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(step(), 16..56), |steps| {
        let mut world = World::new();
        for step in &steps {
            world.apply(step);
            // The keyring goes through its stored form between steps, as it does in the store.
            let json = serde_json::to_vec(&world.keyring).expect("json");
            world.keyring = serde_json::from_slice(&json).expect("parse");
            world.check();
        }
        let mut counts = cases_reaching.borrow_mut();
        for (state, reached) in world.reached.names() {
            *counts.entry(state).or_default() += u32::from(reached);
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let counts = cases_reaching.into_inner();
    for (state, _) in Reached::default().names() {
        assert!(
            counts.get(state).copied().unwrap_or(0) > 0,
            "no generated sequence reached {state}: {counts:?}"
        );
    }
}
