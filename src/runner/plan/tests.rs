use super::*;
use crate::runner::test_support::*;

fn items(list: Vec<ResolvedItem>) -> ResolvedItems {
    list.into_iter().collect()
}

fn refusal(spec: &MonitorSpec, items: &ResolvedItems) -> Refusal {
    Plan::new(spec, items).expect_err("the plan is refused")
}

#[test]
fn a_secret_that_looks_like_a_placeholder_is_sent_literally() {
    let items = items(vec![
        secret("t", "{{@VaultItem.other.Value}}", &["shop.test"]),
        secret("other", "do-not-send", &["shop.test"]),
    ]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.headers
        .push(header("X-Api-Key", "{{@VaultItem.t.Value}}"));
    spec.body = Some("key={{@VaultItem.t.Value}}".into());
    let plan = Plan::new(&spec, &items).unwrap();
    let mut used = UsedSecrets::from_items(&items);
    let parts = plan.parts(&BTreeSet::new(), true, &mut used).unwrap();
    assert_eq!(
        parts.headers["x-api-key"].as_bytes(),
        b"{{@VaultItem.other.Value}}"
    );
    assert_eq!(
        parts.body.as_deref().map(Vec::as_slice),
        Some(&b"key={{@VaultItem.other.Value}}"[..])
    );
    assert_eq!(parts.items, BTreeSet::from(["t".to_owned()]));
}

#[test]
fn url_values_are_percent_encoded_for_their_position() {
    let items = items(vec![secret("t", "a/b?c=d&e#f g+%é", &["shop.test"])]);
    let spec = MonitorSpec::new(
        "https://shop.test/p/{{@VaultItem.t.Value}}/x?k={{@VaultItem.t.Value}}&z=1",
    );
    let plan = Plan::new(&spec, &items).unwrap();
    let url = plan
        .render_url(&mut UsedSecrets::from_items(&items))
        .unwrap();
    let enc = "a%2Fb%3Fc%3Dd%26e%23f%20g%2B%25%C3%A9";
    assert_eq!(url, format!("https://shop.test/p/{enc}/x?k={enc}&z=1"));
    let parsed = crate::runner::hosts::parse_url(&url).unwrap();
    assert_eq!(parsed.path_segments().unwrap().count(), 3);
    assert_eq!(parsed.query_pairs().count(), 2);
}

#[test]
fn placeholders_may_not_name_the_host() {
    let items = items(vec![secret("t", "evil.test", &["shop.test"])]);
    for url in [
        "https://{{@VaultItem.t.Value}}/",
        "https://shop.test.{{@VaultItem.t.Value}}/",
        "https://shop.test:{{@VaultItem.t.Value}}/",
        "https://{{@VaultItem.t.Value}}@shop.test/",
    ] {
        let r = refusal(&MonitorSpec::new(url), &items);
        assert_eq!(r.result.reason(), "InvalidRequest", "{url}");
    }
}

#[test]
fn a_header_value_with_cr_or_lf_is_refused_naming_the_field_not_the_value() {
    for value in ["tok\r\nX-Injected: 1", "tok\nX", "tok\0", "tok\u{7f}"] {
        let items = items(vec![secret("t", value, &["shop.test"])]);
        let mut spec = MonitorSpec::new("https://shop.test/");
        spec.headers
            .push(header("X-Api-Key", "{{@VaultItem.t.Value}}"));
        let r = refusal(&spec, &items);
        match &r.result {
            CheckResult::ItemUnusable { item, reason } => {
                assert_eq!(item, "t");
                assert!(reason.starts_with("headers[0].value"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!r.message.contains("tok"), "{}", r.message);
        assert!(!r.message.contains("Injected"), "{}", r.message);
    }
    // The same value is fine in a body, where it is just bytes.
    let items = items(vec![secret("t", "a\r\nb", &["shop.test"])]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.body = Some("{{@VaultItem.t.Value}}".into());
    assert!(Plan::new(&spec, &items).is_ok());
}

#[test]
fn a_bearer_token_with_a_line_break_is_refused() {
    let items = items(vec![secret("t", "tok\r\nX: 1", &["shop.test"])]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    bearer(&mut spec, "t");
    let r = refusal(&spec, &items);
    assert_eq!(r.result.reason(), "ItemUnusable");
    assert!(!r.message.contains("tok"));
}

#[test]
fn every_named_item_must_be_resolved() {
    let items = items(vec![]);
    let mut spec = MonitorSpec::new("https://shop.test/?k={{@VaultItem.gone.Value}}");
    assert_eq!(
        refusal(&spec, &items).result,
        CheckResult::ItemMissing {
            item: "gone".into()
        }
    );
    spec.url = "https://shop.test/".into();
    basic(&mut spec, "login");
    assert_eq!(
        refusal(&spec, &items).result,
        CheckResult::ItemMissing {
            item: "login".into()
        }
    );
}

#[test]
fn fields_must_exist_on_the_item_type() {
    let items = items(vec![
        secret("t", "v", &["shop.test"]),
        credential_set("login", "bot", "pw", &["shop.test"]),
    ]);
    for (url, item) in [
        ("https://shop.test/?p={{@VaultItem.t.Password}}", "t"),
        ("https://shop.test/?p={{@VaultItem.login.Value}}", "login"),
        ("https://shop.test/?p={{@VaultItem.t.OneTimePassword}}", "t"),
    ] {
        match refusal(&MonitorSpec::new(url), &items).result {
            CheckResult::ItemUnusable { item: got, .. } => assert_eq!(got, item, "{url}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    let mut spec = MonitorSpec::new("https://shop.test/");
    bearer(&mut spec, "login");
    match refusal(&spec, &items).result {
        CheckResult::ItemUnusable { item, reason } => {
            assert_eq!(item, "login");
            assert!(
                reason.contains("auth.bearer.secret needs a Secret item"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_template_that_does_not_parse_names_its_field() {
    let items = items(vec![]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.headers.push(header("X-A", "ok"));
    spec.headers.push(header("X-B", "{{@VaultItem.t.Nope}}"));
    assert_eq!(
        refusal(&spec, &items).result,
        CheckResult::Template {
            field: "headers[1].value".into()
        }
    );
}

#[test]
fn a_spec_over_its_limits_is_refused_before_anything_is_rendered() {
    use crate::api::monitor::limits;
    use crate::api::template::{MAX_ITEMS_PER_MONITOR, MAX_PLACEHOLDERS_PER_MONITOR};
    let items = items(vec![secret("t", "v", &["shop.test"])]);

    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.headers = (0..limits::HEADERS).map(|_| header("X-A", "ok")).collect();
    assert!(Plan::new(&spec, &items).is_ok(), "at the limit");
    spec.headers.push(header("X-A", "ok"));
    assert_eq!(
        refusal(&spec, &items).result,
        CheckResult::InvalidRequest {
            field: "headers".into(),
            reason: "has 33 entries: at most 32".into()
        }
    );

    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.body = Some("x".repeat(limits::BODY + 1));
    assert_eq!(
        refusal(&spec, &items).result,
        CheckResult::InvalidRequest {
            field: "body".into(),
            reason: "is 65537 characters long: at most 65536".into()
        }
    );

    // 64 placeholders in each of two headers: 128 pass, one more in the body does not.
    let many = "{{@VaultItem.t.Value}}".repeat(MAX_PLACEHOLDERS_PER_MONITOR / 2);
    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.headers.push(header("X-A", &many));
    spec.headers.push(header("X-B", &many));
    assert!(Plan::new(&spec, &items).is_ok(), "at the limit");
    spec.body = Some("{{@VaultItem.t.Value}}".into());
    let refused = refusal(&spec, &items);
    assert_eq!(
        refused.result,
        CheckResult::Template {
            field: "body".into()
        }
    );
    assert!(
        refused.message.contains("more than 128 placeholders"),
        "{}",
        refused.message
    );

    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.body = Some(
        (0..=MAX_ITEMS_PER_MONITOR)
            .map(|i| format!("{{{{@VaultItem.i{i}.Value}}}}"))
            .collect(),
    );
    assert!(
        refusal(&spec, &items)
            .message
            .contains("more than 16 distinct vault items")
    );
}

#[test]
fn headers_the_runner_owns_are_refused() {
    let items = items(vec![secret("t", "v", &["shop.test"])]);
    for name in ["Host", "Content-Length", "Transfer-Encoding", "Connection"] {
        let mut spec = MonitorSpec::new("https://shop.test/");
        spec.headers.push(header(name, "x"));
        assert_eq!(
            refusal(&spec, &items).result.reason(),
            "InvalidRequest",
            "{name}"
        );
    }
    let mut spec = MonitorSpec::new("https://shop.test/");
    bearer(&mut spec, "t");
    spec.headers.push(header("authorization", "x"));
    assert_eq!(refusal(&spec, &items).result.reason(), "InvalidRequest");
    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.headers.push(header("Bad Name", "x"));
    assert_eq!(refusal(&spec, &items).result.reason(), "InvalidRequest");
}

#[test]
fn basic_auth_needs_a_username_without_a_colon() {
    let items = items(vec![credential_set("login", "a:b", "pw", &["shop.test"])]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    basic(&mut spec, "login");
    assert_eq!(refusal(&spec, &items).result.reason(), "ItemUnusable");
}

#[test]
fn basic_and_bearer_headers_are_built_and_marked_sensitive() {
    let items = items(vec![
        credential_set("login", "bot", "pw", &["shop.test"]),
        secret("t", "tok", &["shop.test"]),
    ]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    basic(&mut spec, "login");
    let plan = Plan::new(&spec, &items).unwrap();
    let parts = plan
        .parts(
            &BTreeSet::new(),
            false,
            &mut UsedSecrets::from_items(&items),
        )
        .unwrap();
    let auth = &parts.headers[reqwest::header::AUTHORIZATION];
    assert_eq!(auth.as_bytes(), b"Basic Ym90OnB3");
    assert!(auth.is_sensitive());
    bearer(&mut spec, "t");
    let plan = Plan::new(&spec, &items).unwrap();
    let parts = plan
        .parts(
            &BTreeSet::new(),
            false,
            &mut UsedSecrets::from_items(&items),
        )
        .unwrap();
    assert_eq!(
        parts.headers[reqwest::header::AUTHORIZATION].as_bytes(),
        b"Bearer tok"
    );
}

#[test]
fn dropped_items_take_their_whole_header_body_and_auth_with_them() {
    let items = items(vec![
        secret("a", "va", &["shop.test"]),
        secret("b", "vb", &["shop.test"]),
        credential_set("login", "bot", "pw", &["shop.test"]),
    ]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    basic(&mut spec, "login");
    spec.headers.push(header("X-A", "{{@VaultItem.a.Value}}"));
    spec.headers.push(header(
        "X-Both",
        "{{@VaultItem.a.Value}}/{{@VaultItem.b.Value}}",
    ));
    spec.headers.push(header("Content-Type", "text/plain"));
    spec.headers.push(header("X-Plain", "hello"));
    spec.body = Some("b={{@VaultItem.b.Value}}".into());
    let plan = Plan::new(&spec, &items).unwrap();
    let mut used = UsedSecrets::from_items(&items);

    let dropped = BTreeSet::from(["b".to_owned()]);
    assert_eq!(
        plan.carried(&dropped, true),
        BTreeSet::from(["a".to_owned(), "login".to_owned()])
    );
    let parts = plan.parts(&dropped, true, &mut used).unwrap();
    assert!(parts.headers.contains_key("x-a"));
    assert!(!parts.headers.contains_key("x-both"));
    assert!(
        !parts.headers.contains_key("content-type"),
        "no body, no Content-Type"
    );
    assert!(parts.headers.contains_key("x-plain"));
    assert!(parts.body.is_none());

    let all: BTreeSet<String> = ["a", "b", "login"].map(String::from).into();
    assert!(plan.carried(&all, true).is_empty());
    let parts = plan.parts(&all, true, &mut used).unwrap();
    assert!(parts.items.is_empty());
    assert!(!parts.headers.contains_key(reqwest::header::AUTHORIZATION));
    assert_eq!(
        parts.headers.len(),
        1,
        "only X-Plain: {:?}",
        parts.headers.keys()
    );
}

#[test]
fn one_time_passwords_are_made_at_send_time_and_remembered_for_scrubbing() {
    let items = items(vec![otp("otp", "JBSWY3DPEHPK3PXP", &["shop.test"])]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.body = Some("code={{@VaultItem.otp.OneTimePassword}}".into());
    let plan = Plan::new(&spec, &items).unwrap();
    let mut used = UsedSecrets::from_items(&items);
    let parts = plan.parts(&BTreeSet::new(), true, &mut used).unwrap();
    let body = String::from_utf8(parts.body.unwrap().to_vec()).unwrap();
    let code = body.strip_prefix("code=").unwrap().to_owned();
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(used.scrubber().scrub(&format!("got {code}")), "got *****");
    assert_eq!(used.item_scrubber("otp").scrub(&code), "*****");
}

#[test]
fn a_seed_that_does_not_decode_is_refused_before_any_request() {
    let items = items(vec![otp("otp", "not base32!", &["shop.test"])]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    spec.body = Some("{{@VaultItem.otp.OneTimePassword}}".into());
    let r = refusal(&spec, &items);
    assert_eq!(r.result.reason(), "ItemUnusable");
    assert!(!r.message.contains("base32!"));
}

#[test]
fn a_certificate_item_needs_an_identity() {
    let mut item = certificate("cert", &["shop.test"]);
    item.client_identity = None;
    let items = items(vec![item]);
    let mut spec = MonitorSpec::new("https://shop.test/");
    client_certificate(&mut spec, "cert");
    assert_eq!(refusal(&spec, &items).result.reason(), "ItemUnusable");
}
