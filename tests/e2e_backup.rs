//! Sealed backups, proved end to end on the real control plane: items and a monitor exist,
//! a backup is taken, a data key rotates, the store is lost, the operator refuses to start
//! over it (and over a lost keyring beside a surviving root key), forged backups sealed
//! to the same recovery public key are refused, the backup is restored, and the operator
//! starts with every item Ready on its key versions of the backup, and a value sealed
//! before the backup still opens.
//!
//! "The store is lost" is done by deleting every Secret in the operator's namespace (root
//! key, keyring head, environments, records, the webhook certificate): with no
//! kube-controller-manager here a deleted namespace never finishes deleting, and an empty
//! namespace of the same name is exactly what a recreated operator namespace looks like.

#[path = "runner_check/servers.rs"]
mod servers;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use monivault::api::monitor::Monitor;
use monivault::api::vault_item::VaultItem;
use monivault::crypto::{
    ItemBinding, RecoveryPublicKey, RootKey, SealBinding, SealingPublicKey, seal,
};
use monivault::store::{
    ItemKey, Keys, MemoryStore, RootKeySet, SecretStore, Store, backup, now_millis, unix_now,
};
use support::{
    Operator, cluster, credential_set, eventually, fresh, ready_condition, section_public_key,
    stderr, stdout,
};

/// Quick leader hand-over: a killed operator's Lease runs out in seconds.
const FAST_LEASE: [&str; 4] = [
    "--lease-duration-seconds",
    "3",
    "--lease-renew-seconds",
    "1",
];

fn monivault(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let c = cluster();
    let mut child = Command::new(env!("CARGO_BIN_EXE_monivault"))
        .args(args)
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run monivault");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(bytes).expect("write stdin");
    }
    child.wait_with_output().expect("monivault output")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn seal_password(key: &SealingPublicKey, ns: &str, item: &str, password: &str) -> String {
    let binding = SealBinding {
        namespace: ns,
        section: "checkout",
        item_type: "CredentialSet",
        item,
        field: "password",
    };
    seal(key, &binding, password.as_bytes()).expect("seal")
}

async fn key_version(items: &Api<VaultItem>, name: &str) -> Option<u32> {
    items.get(name).await.ok()?.status?.key_version
}

/// The plaintext of an item's stored password, read the way the runner does.
async fn stored_password(
    client: &kube::Client,
    store_ns: &str,
    ns: &str,
    item: &VaultItem,
) -> String {
    let store = Arc::new(SecretStore::new(client.clone(), store_ns));
    let keys = Keys::bootstrap(store.clone())
        .await
        .expect("the store opens");
    let keyring = keys.keyring_for(ns).await.expect("keyring");
    let root = keys.root_for(&keyring).await.expect("root key");
    let name = item.metadata.name.clone().expect("name");
    let uid = item.metadata.uid.clone().expect("uid");
    let record = store
        .record(&ItemKey::new(ns, &name))
        .await
        .expect("read record")
        .expect("a record");
    let binding = ItemBinding {
        namespace: ns,
        item: &name,
        uid: &uid,
        field: "password",
    };
    let plain = keyring
        .decrypt(&root, &binding, &record.value.fields["password"])
        .expect("the record opens");
    String::from_utf8(plain.expose().to_vec()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_store_comes_back_from_a_sealed_backup_taken_before_a_rotation() {
    let c = cluster();
    let client = c.admin().await;
    let store_ns = c.temp_namespace("mvb-store").await;
    let ns = c.temp_namespace("mvb").await;
    let mut op = Operator::start_with_webhooks_and(c, &store_ns, &ns, &FAST_LEASE);

    // Items and a monitor exist.
    let public_key = section_public_key(&client, &ns).await;
    let (p1, p2, p3) = (
        support::secret("backup-pw-one"),
        support::secret("backup-pw-two"),
        support::secret("backup-pw-git"),
    );
    let items: Api<VaultItem> = Api::namespaced(client.clone(), &ns);
    for (name, password) in [("db-login", &p1), ("api-login", &p2)] {
        let item = credential_set(name, &seal_password(&public_key, &ns, name, password));
        items
            .create(&PostParams::default(), &item)
            .await
            .expect("create item");
    }
    // A value sealed for Git before the backup, applied only after the restore.
    let sealed_later = seal_password(&public_key, &ns, "later", &p3);
    let db = ready_condition(&items, "db-login", "True").await;
    ready_condition(&items, "api-login", "True").await;
    let before = db
        .status
        .as_ref()
        .and_then(|s| s.key_version)
        .expect("version");
    let monitor: Monitor = serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "shop"},
        "spec": {"url": "https://shop.example.com/", "paused": true,
                 "auth": {"basic": {"credentialSet": "db-login"}}}
    }))
    .expect("monitor");
    Api::<Monitor>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &monitor)
        .await
        .expect("create monitor");

    // A monitor that runs, logging in to a local HTTPS site with a secret of the store.
    let p4 = support::secret("backup-pw-runner");
    let logins = Arc::new(AtomicUsize::new(0));
    let expected = format!("Basic {}", STANDARD.encode(format!("bot:{p4}")));
    let counted = logins.clone();
    let site = servers::https(servers::handler(move |seen: &servers::Seen| {
        if seen.header("authorization") == Some(expected.as_str()) {
            counted.fetch_add(1, Ordering::SeqCst);
            servers::ok("welcome")
        } else {
            servers::status(401)
        }
    }))
    .await;
    let ca_pem = servers::pem(servers::PKI.ca.as_ref());
    for object in [
        serde_json::json!({"metadata": {"name": "test-ca"},
            "spec": {"type": "Certificate", "section": "checkout",
                     "certificate": {"pem": ca_pem}}}),
        serde_json::json!({"metadata": {"name": "site-login"},
            "spec": {"type": "CredentialSet", "section": "checkout",
                     "allowedHosts": ["shop.test"],
                     "credentialSet": {"username": "bot", "password": p4}}}),
    ] {
        let mut object = object;
        object["apiVersion"] = serde_json::json!("monivault.io/v1alpha1");
        object["kind"] = serde_json::json!("VaultItem");
        let item: VaultItem = serde_json::from_value(object).expect("item");
        items
            .create(&PostParams::default(), &item)
            .await
            .expect("create an item through the webhook");
    }
    ready_condition(&items, "site-login", "True").await;
    let runner: Monitor = serde_json::from_value(serde_json::json!({
        "apiVersion": "monivault.io/v1alpha1", "kind": "Monitor",
        "metadata": {"name": "site"},
        "spec": {"url": site.url("https", "shop.test", "/"), "interval": "10s",
                 "timeout": "5s", "tls": {"caCertificate": "test-ca"},
                 "auth": {"basic": {"credentialSet": "site-login"}}}
    }))
    .expect("monitor");
    Api::<Monitor>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &runner)
        .await
        .expect("create the running monitor");
    eventually("the monitor to log in before the backup", || async {
        (logins.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;

    // A recovery key: the private half is the owner's alone, and is never overwritten.
    let dir = std::env::temp_dir().join(fresh("monivault-e2e-backup"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rk = dir.join("recovery");
    let made = monivault(&["recovery-key", "new", "--out", path(&rk)], None);
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(stderr(&made).contains("OFFLINE"), "{}", stderr(&made));
    let private: PathBuf = dir.join("recovery.private");
    let public: PathBuf = dir.join("recovery.pub");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private)
            .expect("private")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "NAME.private is for its owner only");
    }
    let private_text = std::fs::read(&private).expect("read private");
    let again = monivault(&["recovery-key", "new", "--out", path(&rk)], None);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(&private).expect("read"),
        private_text,
        "unchanged"
    );

    // The backup: one file, nothing in the clear.
    let taken = monivault(
        &[
            "backup",
            "--recovery-key",
            path(&public),
            "--namespace",
            &store_ns,
        ],
        None,
    );
    assert!(taken.status.success(), "{}", stderr(&taken));
    let backup = taken.stdout.clone();
    let text = String::from_utf8(backup.clone()).expect("a backup is text");
    assert!(
        text.starts_with("monivault-backup/1\n"),
        "{}",
        &text[..40.min(text.len())]
    );
    assert!(
        stderr(&taken).contains("4 item records"),
        "{}",
        stderr(&taken)
    );
    let root_secret = Api::<Secret>::namespaced(client.clone(), &store_ns)
        .get("monivault-root-key")
        .await
        .expect("root key Secret");
    let root_bytes = root_secret.data.expect("data")["v1"].0.clone();
    let mut forbidden: Vec<String> = vec![
        STANDARD.encode(&root_bytes),
        URL_SAFE_NO_PAD.encode(&root_bytes),
        root_bytes.iter().map(|b| format!("{b:02x}")).collect(),
    ];
    for p in [&p1, &p2, &p3, &p4] {
        forbidden.push(p.to_string());
        forbidden.push(STANDARD.encode(p));
        forbidden.push(URL_SAFE_NO_PAD.encode(p));
    }
    for needle in &forbidden {
        assert!(
            !text.contains(needle.as_str()),
            "the backup holds a secret in the clear"
        );
    }
    assert!(
        !backup
            .windows(root_bytes.len())
            .any(|w| w == root_bytes.as_slice()),
        "the backup holds the raw root key"
    );

    // A data key rotation after the backup: records move to a new key, the old is destroyed.
    let rotated = monivault(
        &[
            "rotate",
            "data-key",
            "--namespace",
            &store_ns,
            "--environment",
            &ns,
            "--wait",
            "--data-key-retire-grace",
            "1s",
        ],
        None,
    );
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let store = SecretStore::new(client.clone(), &store_ns);
    let env = store.environment(&ns).await.expect("read").expect("env");
    let held: Vec<u32> = env.value.environments[&ns]
        .data_keys
        .keys()
        .copied()
        .collect();
    assert!(
        !held.contains(&before),
        "data key {before} destroyed, held {held:?}"
    );

    // The store is lost.
    drop(op);
    let wiped = c.kubectl(&["delete", "secrets", "--all", "-n", &store_ns, "--wait=true"]);
    assert!(wiped.status.success(), "{}", stderr(&wiped));
    assert!(store.root_keys().await.expect("read").is_none());

    // The operator refuses to start over it, and says to restore.
    op = Operator::start_with_webhooks_and(c, &store_ns, &ns, &FAST_LEASE);
    let (status, log) = op.exited().await;
    assert!(!status.success(), "the operator must not start: {log}");
    assert!(log.contains("monivault restore"), "{log}");
    assert!(log.contains("--allow-new-root-key"), "{log}");
    assert!(
        store.root_keys().await.expect("read").is_none(),
        "no new root key was made"
    );

    // It refuses too when the root key survived but the keyring did not: a new keyring
    // would open nothing either.
    store
        .put_root_keys(
            &RootKeySet::new(RootKey::generate(1).expect("root key"), now_millis()),
            None,
        )
        .await
        .expect("a surviving root key");
    op = Operator::start_with_webhooks_and(c, &store_ns, &ns, &FAST_LEASE);
    let (status, log) = op.exited().await;
    assert!(!status.success(), "the operator must not start: {log}");
    assert!(log.contains("lost its keyring"), "{log}");
    assert!(log.contains("monivault restore"), "{log}");
    assert!(
        store.keyring_head().await.expect("read").is_none(),
        "no new keyring was made"
    );
    let wiped = c.kubectl(&["delete", "secrets", "--all", "-n", &store_ns, "--wait=true"]);
    assert!(wiped.status.success(), "{}", stderr(&wiped));

    // A forged backup: anyone holding NAME.pub can seal one with keys of their own. Into
    // the empty store it is refused, whether its environment is one whose VaultSection
    // publishes another sealing key, or one nothing in the cluster speaks for.
    let restore_args = [
        "restore",
        "--recovery-private-key",
        path(&private),
        "--namespace",
        &store_ns,
    ];
    let recipient =
        RecoveryPublicKey::parse(&std::fs::read_to_string(&public).expect("read NAME.pub"))
            .expect("recovery public key");
    for (environment, reason) in [
        (ns.as_str(), "disagree"),
        ("mvb-nowhere", "nothing in the cluster confirms"),
    ] {
        let forger = Arc::new(MemoryStore::new());
        Keys::bootstrap(forger.clone())
            .await
            .expect("the forger's installation")
            .ensure_environment(environment)
            .await
            .expect("the forger's environment");
        let contents = backup::read_backup(forger.as_ref())
            .await
            .expect("read the forger's store");
        let forged = backup::seal_backup(&contents, &recipient, &store_ns, unix_now())
            .expect("seal the forged backup");
        let refused = monivault(&restore_args, Some(&forged));
        assert!(!refused.status.success(), "a forged backup restored");
        assert!(stderr(&refused).contains(reason), "{}", stderr(&refused));
        assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
        assert!(store.root_keys().await.expect("read").is_none());
        assert!(store.keyring_head().await.expect("read").is_none());
        assert!(
            store
                .list_environments()
                .await
                .expect("read")
                .items
                .is_empty(),
            "nothing written before the refusal"
        );
    }

    // A restore with another recovery key is refused.
    let other_rk = dir.join("other");
    assert!(
        monivault(&["recovery-key", "new", "--out", path(&other_rk)], None)
            .status
            .success()
    );
    let wrong = monivault(
        &[
            "restore",
            "--recovery-private-key",
            path(&dir.join("other.private")),
            "--namespace",
            &store_ns,
        ],
        Some(&backup),
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("sealed to recovery key"),
        "{}",
        stderr(&wrong)
    );

    // Restore (the VaultSection's published sealing key vouches for the real backup);
    // running it again changes nothing.
    let restored = monivault(&restore_args, Some(&backup));
    assert!(restored.status.success(), "{}", stderr(&restored));
    let rerun = monivault(&restore_args, Some(&backup));
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert!(
        stderr(&rerun).contains("0 objects written"),
        "{}",
        stderr(&rerun)
    );

    // Another installation's keys are not overwritten without --force.
    let other_ns = c.temp_namespace("mvb-other").await;
    Keys::bootstrap(Arc::new(SecretStore::new(client.clone(), &other_ns)))
        .await
        .expect("another installation");
    let refused = monivault(
        &[
            "restore",
            "--recovery-private-key",
            path(&private),
            "--namespace",
            &other_ns,
        ],
        Some(&backup),
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("another installation"),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));

    // The operator starts; every item is Ready on its key version of the backup.
    op = Operator::start_with_webhooks_and(c, &store_ns, &ns, &FAST_LEASE);
    for name in ["db-login", "api-login"] {
        eventually(&format!("{name} Ready on key version {before}"), || async {
            (key_version(&items, name).await == Some(before)).then_some(())
        })
        .await;
        ready_condition(&items, name, "True").await;
    }
    assert!(op.is_running(), "{}", op.stderr());

    // The restored records open, and a value sealed before the backup still opens.
    let db = items.get("db-login").await.expect("db-login");
    assert_eq!(stored_password(&client, &store_ns, &ns, &db).await, p1);
    items
        .create(
            &PostParams::default(),
            &credential_set("later", &sealed_later),
        )
        .await
        .expect("create the item from Git");
    let later = ready_condition(&items, "later", "True").await;
    assert_eq!(stored_password(&client, &store_ns, &ns, &later).await, p3);

    // The runner logs in with the restored secret, under the monitor's old stamp.
    let before_restart = logins.load(Ordering::SeqCst);
    eventually("the monitor to log in with the restored secret", || async {
        (logins.load(Ordering::SeqCst) > before_restart).then_some(())
    })
    .await;
    let monitors: Api<Monitor> = Api::namespaced(client.clone(), &ns);
    eventually("the monitor to be Up after the restore", || async {
        let status = monitors.get("site").await.ok()?.status?;
        (status.state == Some(monivault::api::MonitorState::Up)).then_some(())
    })
    .await;

    let _ = std::fs::remove_dir_all(&dir);
    drop(op);
    c.assert_not_in_etcd(&[&p1, &p2, &p3, &p4]);
}

#[test]
fn a_backup_with_an_unreadable_recovery_key_fails_naming_the_file() {
    // `backup` with a bad key file fails before touching the cluster, naming the file.
    let out = monivault(&["backup", "--recovery-key", "/nonexistent/rk.pub"], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/rk.pub"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}
