//! The vault engine's guarantees, through its public API: tampering never opens, a
//! ciphertext moved to another context never opens, and no sequence of rotation steps
//! loses a record.

use std::collections::{BTreeMap, BTreeSet};

use monivault::crypto::{
    CryptoError, ItemBinding, Keyring, RootKey, RotationPolicy, SealBinding, SealingPublicKey,
    UnixMillis, reencrypt, seal,
};
use proptest::prelude::*;

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
    let (root, keyring) = keyring_with(&["team-a"]);
    let json = serde_json::to_string(&keyring).expect("json");
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

fn step() -> impl Strategy<Value = Step> {
    let ns = 0..NAMESPACES.len();
    prop_oneof![
        4 => (ns.clone(), 0..6usize, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(ns, item, secret)| Step::Write { ns, item, secret }),
        2 => ns.clone().prop_map(|ns| Step::RotateDataKey { ns }),
        3 => (ns.clone(), 0..6usize).prop_map(|(ns, item)| Step::Reencrypt { ns, item }),
        2 => (ns.clone(), 1..6u32).prop_map(|(ns, version)| Step::Retire { ns, version }),
        1 => ns.clone().prop_map(|ns| Step::RetireUnused { ns }),
        1 => Just(Step::RotateRootKey),
        1 => ns.prop_map(|ns| Step::RotateSealingKey { ns }),
    ]
}

struct Record {
    ciphertext: String,
    plaintext: Vec<u8>,
}

struct World {
    root: RootKey,
    keyring: Keyring,
    /// What the store would hold: (namespace, item) → record.
    records: BTreeMap<(usize, usize), Record>,
    /// One sealed value per namespace, sealed before any rotation, that must keep opening.
    sealed: BTreeMap<usize, String>,
}

fn item_name(item: usize) -> String {
    format!("item-{item}")
}

impl World {
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

    fn apply(&mut self, step: &Step) {
        let root = &self.root;
        match step {
            Step::Write { ns, item, secret } => {
                let namespace = NAMESPACES[*ns];
                if self
                    .keyring
                    .ensure_environment(root, namespace, NOW)
                    .expect("ensure")
                {
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
                let _ = self.keyring.rotate_data_key(root, NAMESPACES[*ns], NOW);
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
                if let Some(text) = again {
                    record.ciphertext = text;
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
            }
            Step::RetireUnused { ns } => {
                let namespace = NAMESPACES[*ns];
                let in_use = self.in_use(*ns);
                for version in self.keyring.retirable_data_keys(namespace, &in_use) {
                    assert!(!in_use.contains(&version));
                    self.keyring
                        .retire_data_key(namespace, version, &in_use)
                        .expect("retirable version retires");
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
            }
            Step::RotateSealingKey { ns } => {
                let _ = self.keyring.rotate_sealing_key(root, NAMESPACES[*ns], NOW);
            }
        }
    }

    fn check(&self) {
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_rotation_sequence_loses_a_record(steps in proptest::collection::vec(step(), 1..40)) {
        let root = RootKey::generate(1).expect("root");
        let keyring = Keyring::new(&root, NOW);
        let mut world = World { root, keyring, records: BTreeMap::new(), sealed: BTreeMap::new() };
        for step in &steps {
            world.apply(step);
            // The keyring goes through its stored form between steps, as it does in the store.
            let json = serde_json::to_vec(&world.keyring).expect("json");
            world.keyring = serde_json::from_slice(&json).expect("parse");
            world.check();
        }
    }
}
