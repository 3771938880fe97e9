//! The harness's leak scan can fail: plaintexts planted on purpose, in the forms a leak
//! takes, are found where they were put; and a stored secret the harness did not
//! generate is named.
//!
//! The planted secrets are built by hand, not with `support::secret`: this process's
//! operators scan for every generated secret when they stop, and a planted one would
//! fail them.

mod support;

use std::time::SystemTime;

use base64::Engine as _;
use kube::api::{Api, DeleteParams, PostParams};
use monivault::api::vault_item::VaultItem;
use monivault::crypto::{SealBinding, seal};
use serde_json::json;
use support::{Form, Generated, Operator, Scanner, Scope, cluster, forms, scan_append_only};

fn planted(label: &str) -> Generated {
    // The same shape as support::secret, so the forms differ from the exact text.
    Generated::new(
        label,
        format!("{}+/&\"", support::fresh(label)).into_bytes(),
    )
}

#[test]
fn every_form_is_found_inside_a_longer_encoded_text() {
    let secret = planted("forms");
    let scanner = Scanner::new(std::slice::from_ref(&secret));
    for offset in 0..3 {
        let mut around = b"xyz"[..offset].to_vec();
        around.extend_from_slice(&secret.value);
        around.extend_from_slice(b"tail");
        for (engine, form) in [
            (
                &base64::engine::general_purpose::STANDARD,
                Form::Base64 { offset },
            ),
            (
                &base64::engine::general_purpose::URL_SAFE,
                Form::Base64Url { offset },
            ),
        ] {
            let text = format!("prefix {} suffix", engine.encode(&around));
            let found = scanner.scan("base64", text.as_bytes());
            // Where the URL-safe alphabet changes nothing, the two forms are one search.
            let same = Form::Base64 { offset };
            assert!(
                found
                    .iter()
                    .any(|leak| leak.form == form || leak.form == same),
                "{form:?} not found: {found:?}"
            );
        }
    }
    let text = std::str::from_utf8(&secret.value).unwrap();
    let json = serde_json::to_string(&json!({ "message": text })).unwrap();
    let found = scanner.scan("json", json.as_bytes());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].form, Form::JsonEscaped);
    let query = format!(
        "?q={}",
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
    );
    let found = scanner.scan("url", query.as_bytes());
    assert!(
        found.iter().any(|leak| leak.form == Form::UrlEncoded),
        "{found:?}"
    );
    assert!(scanner.scan("clean", b"nothing here").is_empty());
    // Each encoding differs from the exact text: each is a search of its own.
    let kinds: Vec<Form> = forms(&secret.value).into_iter().map(|(f, _)| f).collect();
    for form in [
        Form::Exact,
        Form::Base64 { offset: 0 },
        Form::Base64 { offset: 1 },
        Form::Base64 { offset: 2 },
        Form::UrlEncoded,
        Form::UrlComponent,
        Form::JsonEscaped,
        Form::GoJsonEscaped,
    ] {
        assert!(kinds.contains(&form), "{form:?} missing from {kinds:?}");
    }
}

/// The incremental scan of an append-only file (a WAL segment, preallocated with zeros)
/// finds what a whole scan would: a secret that straddles what the last scan read, and
/// one that was on disk before that scan but not yet in its list.
#[test]
fn an_append_only_file_is_searched_again_where_a_leak_can_be() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("segment.wal");
    let early = planted("early");
    let first = planted("first");
    let zeros = [0u8; 4096];
    let write = |parts: &[&[u8]]| std::fs::write(&path, parts.concat()).expect("write");

    // On disk: all of `early` (not yet in the list), far from the end, and the start of
    // `first`.
    let head = [b"start ".as_slice(), &early.value, &[b'.'; 2048]].concat();
    write(&[&head, &first.value[..10], &zeros]);
    let found = scan_append_only(&path, std::slice::from_ref(&first), "wal");
    assert!(found.is_empty(), "{found:?}");

    // The rest of `first` is appended; the list has grown by `early`.
    write(&[&head, &first.value, b" end", &zeros]);
    let list = [first.clone(), early.clone()];
    let found = scan_append_only(&path, &list, "wal");
    let labels: Vec<&str> = found.iter().map(|l| l.label.as_str()).collect();
    assert!(labels.contains(&"first"), "straddling the cut: {found:?}");
    assert!(labels.contains(&"early"), "in bytes read before: {found:?}");

    // A file that shrank was replaced: it is searched whole again.
    write(&[&first.value, &zeros]);
    let found = scan_append_only(&path, &list, "wal");
    assert!(found.iter().any(|l| l.label == "first"), "{found:?}");
}

/// A plaintext escaped twice (JSON inside a JSON string, as last-applied sits in its
/// object) matches none of the whole forms; its random core still finds it.
#[test]
fn a_secret_escaped_twice_is_found_by_its_core() {
    let core = "0123456789abcdef";
    let mut secret = Generated::new("nested", format!("nested-{core}+/&\"").into_bytes());
    secret.core = Some(core.as_bytes().to_vec());
    let text = std::str::from_utf8(&secret.value).unwrap();
    let once = serde_json::to_string(&json!({ "password": text })).unwrap();
    let twice = serde_json::to_string(&json!({ "annotation": once })).unwrap();
    let found = Scanner::new(std::slice::from_ref(&secret)).scan("twice", twice.as_bytes());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].form, Form::Core);
    // Whole, it is found as itself, not as its core.
    let found = Scanner::new(std::slice::from_ref(&secret)).scan("once", text.as_bytes());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].form, Form::Exact);
}

#[test]
fn a_generated_secret_never_prints_its_value() {
    let secret = planted("debug");
    let text = format!("{secret:?}");
    assert!(
        !text.contains(std::str::from_utf8(&secret.value).unwrap()),
        "{text}"
    );
}

/// Plants one plaintext in a ConfigMap (etcd keeps built-in objects as protobuf: the
/// exact bytes), one in a section's description (etcd keeps custom objects as Go's JSON:
/// only the escaped form is there) and one as base64 at an odd offset, and scans for them.
#[tokio::test]
async fn plaintexts_planted_on_purpose_are_found_in_etcd_its_files_and_the_audit_log() {
    let c = cluster();
    let since = SystemTime::now();
    let ns = c.temp_namespace("leak-scan").await;
    let (exact, escaped, encoded, absent) = (
        planted("exact"),
        planted("escaped"),
        planted("encoded"),
        planted("absent"),
    );
    let text = |g: &Generated| String::from_utf8(g.value.clone()).unwrap();
    let mut wrapped = b"a".to_vec();
    wrapped.extend_from_slice(&encoded.value);
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "planted", "namespace": ns},
        "data": {"exact": text(&exact),
                 "blob": base64::engine::general_purpose::STANDARD.encode(&wrapped)}
    });
    let out = c.kubectl_stdin(&["create", "-f", "-"], &config_map.to_string());
    assert!(out.status.success(), "{}", support::stderr(&out));
    let section = json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "VaultSection",
        "metadata": {"name": "planted", "namespace": ns},
        "spec": {"description": text(&escaped)}
    });
    let out = c.kubectl_stdin(&["create", "-f", "-"], &section.to_string());
    assert!(out.status.success(), "{}", support::stderr(&out));

    let secrets = [exact, escaped, encoded, absent];
    let leaks = c.leaks(
        &secrets,
        &Scope {
            store_namespace: None,
            namespaces: vec![ns.as_str()],
            operator_log: "",
            since,
        },
    );
    let found = |label: &str, form: Form, place: &str| {
        leaks
            .iter()
            .any(|l| l.label == label && l.form == form && l.place.contains(place))
    };
    // The audit log is JSON (Go's, which escapes `&`); a ConfigMap is protobuf in etcd.
    for (place, form) in [
        ("etcd/member/wal", Form::Exact),
        ("etcd/member/snap", Form::Exact),
        ("the audit log", Form::GoJsonEscaped),
    ] {
        assert!(found("exact", form, place), "exact in {place}: {leaks:#?}");
        assert!(
            found("encoded", Form::Base64 { offset: 1 }, place),
            "base64 at offset 1 in {place}: {leaks:#?}"
        );
    }
    // A custom object is Go's JSON everywhere: only the form with `\u0026` finds it.
    let objects = format!("the objects and Events of {ns}");
    for place in ["etcd/member/wal", "the audit log", objects.as_str()] {
        assert!(
            found("escaped", Form::GoJsonEscaped, place),
            "escaped in {place}: {leaks:#?}"
        );
        assert!(!found("escaped", Form::Exact, place), "{leaks:#?}");
        assert!(!found("escaped", Form::JsonEscaped, place), "{leaks:#?}");
    }
    assert!(leaks.iter().all(|l| l.label != "absent"), "{leaks:#?}");
}

/// A plaintext the harness did not generate, stored by the operator, is named by the
/// store check that every operator's drop runs; a generated one is not.
#[tokio::test]
async fn a_stored_secret_the_harness_did_not_generate_is_named() {
    let c = cluster();
    let ns = c.temp_namespace("leak-store").await;
    let store = c.temp_namespace("leak-store-sys").await;
    let operator = Operator::start(c, &store, &ns);
    let admin = c.admin().await;
    let key = support::section_public_key(&admin, &ns).await;
    let items: Api<VaultItem> = Api::namespaced(admin.clone(), &ns);
    let generated = support::secret("leak-store-generated");
    let stranger = support::fresh("leak-store-not-generated");
    for (name, plaintext) in [("generated", &generated), ("stranger", &stranger)] {
        let binding = SealBinding {
            namespace: &ns,
            section: "checkout",
            item_type: "CredentialSet",
            item: name,
            field: "password",
        };
        let sealed = seal(&key, &binding, plaintext.as_bytes()).expect("seal");
        items
            .create(
                &PostParams::default(),
                &support::credential_set(name, &sealed),
            )
            .await
            .expect("create the item");
        support::ready_condition(&items, name, "True").await;
    }

    let named = c.stored_secrets_not_generated(&store, &support::generated());
    assert_eq!(named, vec![format!("{ns}/stranger password")]);

    // Gone again before the operator stops, or its own scan would fail this test.
    items
        .delete("stranger", &DeleteParams::default())
        .await
        .expect("delete the stranger");
    support::eventually("the stranger's record to go", || async {
        c.stored_secrets_not_generated(&store, &support::generated())
            .is_empty()
            .then_some(())
    })
    .await;
    drop(operator);
}
