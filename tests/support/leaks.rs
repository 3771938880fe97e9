//! Secrets for end-to-end tests, and the leak scan that runs after every test.
//!
//! Every plaintext a test stores comes from [`secret`] (or, for material a test must make
//! itself, such as a PKCS#12 archive, is handed to [`adopt`]). The harness remembers each
//! one, and when a test's [`super::Operator`] is dropped it scans, for every secret this
//! process generated, in every form a leak takes ([`forms`]):
//! - etcd's data files (WAL, snapshots, the bbolt file): its whole keyspace, and the
//!   overwritten and deleted values that remain there;
//! - the API server's audit log since the operator started, rotated files included;
//! - the operator's own log;
//! - the Events and the monivault objects (spec and status) of the namespaces it watched.
//!
//! It also opens every record in the operator's store: a stored secret that the harness
//! did not generate fails the test, so no test can store a fixed plaintext unscanned.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// One secret the harness knows: what the test called it, its bytes, and when it was
/// made (no byte on disk before then can hold it).
#[derive(Clone)]
pub struct Generated {
    pub label: String,
    pub value: Vec<u8>,
    pub at: SystemTime,
    /// Its random part alone, when it has one: found however the value was nested,
    /// escaped twice or cut short.
    pub core: Option<Vec<u8>>,
}

impl Generated {
    pub fn new(label: &str, value: Vec<u8>) -> Generated {
        Generated {
            label: label.to_owned(),
            value,
            at: SystemTime::now(),
            core: None,
        }
    }
}

/// Never the value: a failing scan must not print the secret it found.
impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Generated({:?}, {} bytes)", self.label, self.value.len())
    }
}

static GENERATED: Mutex<Vec<Generated>> = Mutex::new(Vec::new());

fn remember(label: &str, value: Vec<u8>, core: Option<&str>) {
    let mut generated = Generated::new(label, value);
    generated.core = core.map(|c| c.as_bytes().to_vec());
    GENERATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(generated);
}

/// Every secret this test process generated or adopted so far.
pub fn generated() -> Vec<Generated> {
    GENERATED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    format!("{:016x}", u64::from_le_bytes(bytes))
}

/// A fresh plaintext, remembered for the leak scans. It ends in `+/&"`, characters that
/// base64, URL and JSON encodings all change (Go's JSON escapes `&`), so a scan that
/// looked only for the exact text would miss an encoded leak.
pub fn secret(label: &str) -> String {
    let core = random_hex();
    let value = format!("{label}-{core}+/&\"");
    remember(label, value.clone().into_bytes(), Some(&core));
    value
}

/// A fresh plaintext of letters, digits and `-` only, for places whose syntax takes no
/// other characters (a URL path, a header name). Remembered like [`secret`].
pub fn token(label: &str) -> String {
    let core = random_hex();
    let value = format!("{label}-{core}");
    remember(label, value.clone().into_bytes(), Some(&core));
    value
}

/// A fresh TOTP seed in Base32 (RFC 4648, no padding), 160 bits as RFC 4226 advises.
pub fn base32_seed(label: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("random");
    let value: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b % 32)] as char)
        .collect();
    remember(label, value.clone().into_bytes(), None);
    value
}

/// Remembers secret material the test had to make itself (an archive, a private key).
pub fn adopt(label: &str, value: &[u8]) {
    remember(label, value.to_vec(), None);
}

/// Where in a leak a form came from, for the failure message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Exact,
    Base64 {
        offset: usize,
    },
    Base64Url {
        offset: usize,
    },
    Hex,
    UrlEncoded,
    UrlComponent,
    JsonEscaped,
    GoJsonEscaped,
    /// The random part of a generated secret, wherever it sits.
    Core,
}

/// RFC 3986's unreserved characters stay as they are (JavaScript's encodeURIComponent).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The texts that betray `value`, each with its form: the exact bytes; the base64
/// (standard and URL-safe) of the value at each of the three byte offsets it can sit at
/// inside a longer encoded string, cut to the characters that depend on the value alone;
/// its hex (either case); its percent-encodings; and its JSON string escapes (serde's, and Go's, which also
/// escapes `<`, `>` and `&`). Forms equal to one already listed are left out.
pub fn forms(value: &[u8]) -> Vec<(Form, Vec<u8>)> {
    let mut out: Vec<(Form, Vec<u8>)> = vec![(Form::Exact, value.to_vec())];
    let mut add = |form: Form, bytes: Vec<u8>| {
        if !bytes.is_empty() && !out.iter().any(|(_, b)| *b == bytes) {
            out.push((form, bytes));
        }
    };
    for offset in 0..3 {
        add(
            Form::Base64 { offset },
            base64_core(
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                value,
                offset,
            ),
        );
        add(
            Form::Base64Url { offset },
            base64_core(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                value,
                offset,
            ),
        );
    }
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    add(Form::Hex, hex.to_uppercase().into_bytes());
    add(Form::Hex, hex.into_bytes());
    if let Ok(text) = std::str::from_utf8(value) {
        add(
            Form::UrlEncoded,
            utf8_percent_encode(text, NON_ALPHANUMERIC)
                .to_string()
                .into_bytes(),
        );
        add(
            Form::UrlComponent,
            utf8_percent_encode(text, COMPONENT)
                .to_string()
                .into_bytes(),
        );
        let json = serde_json::to_string(text).expect("a string serializes");
        let json = json[1..json.len() - 1].to_owned();
        let go = json
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026");
        add(Form::JsonEscaped, json.into_bytes());
        add(Form::GoJsonEscaped, go.into_bytes());
    }
    out
}

/// The base64 characters that encode `value` alone when it starts `offset` bytes into
/// the encoded input: character i covers bits 6i..6i+6, and only those wholly inside the
/// value's bits do not depend on its neighbours.
fn base64_core(engine: &base64::engine::GeneralPurpose, value: &[u8], offset: usize) -> Vec<u8> {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(value);
    padded.extend_from_slice(&[0, 0]);
    let encoded = engine.encode(&padded).into_bytes();
    let start = (8 * offset).div_ceil(6);
    let end = (8 * (offset + value.len())) / 6;
    encoded.get(start..end).unwrap_or_default().to_vec()
}

/// A leak: which secret, in which form, found where.
#[derive(Debug)]
pub struct Leak {
    pub label: String,
    pub form: Form,
    pub place: String,
}

/// Finds `secrets` in haystacks, in every form of [`forms`].
pub struct Scanner {
    matcher: AhoCorasick,
    patterns: Vec<(String, Form)>,
    longest: usize,
}

impl Scanner {
    pub fn new(secrets: &[Generated]) -> Scanner {
        let mut texts = Vec::new();
        let mut patterns = Vec::new();
        for secret in secrets {
            for (form, text) in forms(&secret.value) {
                texts.push(text);
                patterns.push((secret.label.clone(), form));
            }
            if let Some(core) = &secret.core {
                texts.push(core.clone());
                patterns.push((secret.label.clone(), Form::Core));
            }
        }
        Scanner {
            // Leftmost-longest, not overlapping: a search that can skip ahead with its
            // prefilter runs at memory speed over hundreds of MB. Two forms never share
            // a position, so none hides another; a core is reported only where no whole
            // form around it is (that one starts earlier).
            longest: texts.iter().map(Vec::len).max().unwrap_or(0),
            matcher: AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&texts)
                .expect("leak patterns"),
            patterns,
        }
    }

    /// Every distinct secret and form found in `haystack`, said to be at `place`.
    pub fn scan(&self, place: &str, haystack: &[u8]) -> Vec<Leak> {
        let mut seen = std::collections::BTreeSet::new();
        self.matcher
            .find_iter(haystack)
            .filter(|m| seen.insert(m.pattern().as_usize()))
            .map(|m| {
                let (label, form) = &self.patterns[m.pattern().as_usize()];
                Leak {
                    label: label.clone(),
                    form: *form,
                    place: place.to_owned(),
                }
            })
            .collect()
    }

    /// The longest text it searches for: a leak can straddle a cut this long.
    fn longest(&self) -> usize {
        self.longest
    }
}

/// What earlier scans of an append-only file covered: its first `len` bytes, read by
/// `read_at`, searched for the first `secrets` secrets of a list whose prefix of that
/// length hashes to `prefix` (the registry only grows; a list that is not it starts over).
#[derive(Clone, Copy)]
struct Covered {
    len: usize,
    read_at: SystemTime,
    secrets: usize,
    prefix: u64,
}

fn prefix_hash(secrets: &[Generated]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for secret in secrets {
        secret.value.hash(&mut hasher);
    }
    hasher.finish()
}

static COVERED: Mutex<BTreeMap<PathBuf, Covered>> = Mutex::new(BTreeMap::new());

/// Scans an append-only file (an etcd WAL segment, an audit log) for `secrets`, searching
/// only what earlier scans of this process did not: bytes added since, for every secret,
/// and bytes already searched, for secrets made before those bytes were read (a secret
/// made later cannot be in them). Scans stay proportional to what changed, not to the
/// hundreds of MB these files reach. A file that shrank was replaced: searched whole.
pub fn scan_append_only(path: &Path, secrets: &[Generated], place: &str) -> Vec<Leak> {
    scan_append_only_with(path, secrets, &Scanner::new(secrets), place)
}

/// [`scan_append_only`] with `all`, the scanner of `secrets`, already built. The lock is
/// held only to read and write what was covered: concurrent scans may search the same
/// new bytes twice, and whichever records last records something true.
fn scan_append_only_with(
    path: &Path,
    secrets: &[Generated],
    all: &Scanner,
    place: &str,
) -> Vec<Leak> {
    let covered = || COVERED.lock().unwrap_or_else(|e| e.into_inner());
    // etcd may remove a WAL segment between the listing and the read.
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let read_at = SystemTime::now();
    let end = written_len(&bytes);
    let before = covered().get(path).copied().filter(|c| {
        c.len <= end
            && secrets
                .get(..c.secrets)
                .is_some_and(|prefix| prefix_hash(prefix) == c.prefix)
    });
    let leaks = match before {
        None => all.scan(place, &bytes[..end]),
        Some(before) => {
            let later: Vec<Generated> = secrets
                .get(before.secrets..)
                .unwrap_or_default()
                .iter()
                .filter(|s| s.at <= before.read_at)
                .cloned()
                .collect();
            let mut leaks = if later.is_empty() {
                Vec::new()
            } else {
                Scanner::new(&later).scan(place, &bytes[..before.len])
            };
            let from = before.len.saturating_sub(all.longest());
            leaks.extend(all.scan(place, &bytes[from..end]));
            leaks
        }
    };
    covered().insert(
        path.to_path_buf(),
        Covered {
            len: end,
            read_at,
            secrets: secrets.len(),
            prefix: prefix_hash(secrets),
        },
    );
    leaks
}

/// The length of `bytes` without its trailing zeros: etcd preallocates WAL segments, and
/// only the bytes before the zeros are written. Whole pages are compared at once (this
/// runs unoptimized, over 64 MB segments).
fn written_len(bytes: &[u8]) -> usize {
    const PAGE: usize = 4096;
    let zeros = [0u8; PAGE];
    let mut end = bytes.len();
    while end >= PAGE && bytes[end - PAGE..end] == zeros {
        end -= PAGE;
    }
    while end > 0 && bytes[end - 1] == 0 {
        end -= 1;
    }
    end
}

/// Every file under etcd's data directory: WAL segments as append-only files, the rest
/// (the bbolt file, rewritten in place, and snapshots) whole.
fn scan_etcd_files(dir: &Path, secrets: &[Generated], scanner: &Scanner) -> Vec<Leak> {
    let mut leaks = Vec::new();
    for path in files_under(dir) {
        let place = path.display().to_string();
        if path.extension().is_some_and(|e| e == "wal") {
            leaks.extend(scan_append_only_with(&path, secrets, scanner, &place));
        } else if let Ok(bytes) = std::fs::read(&path) {
            leaks.extend(scanner.scan(&place, &bytes));
        }
    }
    leaks
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(path),
                // etcd's preallocated next WAL segment: zeros until it is renamed.
                Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "tmp") => {}
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

/// What one test's operator leaves for the scan: where it kept its store, what it
/// watched, what it logged, and since when.
pub struct Scope<'a> {
    pub store_namespace: Option<&'a str>,
    pub namespaces: Vec<&'a str>,
    pub operator_log: &'a str,
    pub since: SystemTime,
}

impl super::Cluster {
    /// Every place of the module docs, scanned for `secrets`. Returns what it found.
    pub fn leaks(&self, secrets: &[Generated], scope: &Scope<'_>) -> Vec<Leak> {
        let scanner = Scanner::new(secrets);
        // The keyspace is in these files (the WAL first, the bbolt file once committed),
        // with what was overwritten or deleted since: no etcdctl dump is needed.
        let dir = PathBuf::from(self.var("MONIVAULT_CLUSTER_DIR"));
        let mut leaks = scan_etcd_files(&dir.join("etcd"), secrets, &scanner);
        for path in self.audit_logs_since(scope.since) {
            leaks.extend(scan_append_only_with(
                &path,
                secrets,
                &scanner,
                "the audit log",
            ));
        }
        leaks.extend(scanner.scan("the operator's log", scope.operator_log.as_bytes()));
        for ns in &scope.namespaces {
            let out = self.kubectl(&[
                "get",
                "events,vaultitems,vaultsections,monitors,monitorruns",
                "-n",
                ns,
                "-o",
                "json",
            ]);
            assert!(
                out.status.success(),
                "kubectl get in {ns}: {}",
                super::stderr(&out)
            );
            leaks.extend(scanner.scan(&format!("the objects and Events of {ns}"), &out.stdout));
        }
        leaks
    }

    /// Fails the test if any secret this process generated leaked anywhere in `scope`, or
    /// if the store holds a secret that the harness did not generate.
    pub fn assert_no_leaks(&self, scope: &Scope<'_>) {
        let secrets = generated();
        let leaks = self.leaks(&secrets, scope);
        assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
        if let Some(store) = scope.store_namespace {
            let strangers = self.stored_secrets_not_generated(store, &secrets);
            assert!(
                strangers.is_empty(),
                "the store in {store} holds secrets the harness did not generate \
                 (use support::secret, token, base32_seed or adopt): {strangers:?}"
            );
        }
    }

    /// Opens every record in `store_ns` and names each field whose plaintext is not one
    /// of `secrets` ("namespace/item field"). Records that do not open (a test of a wrong
    /// root key, a record left behind) are skipped: they are not the test's plaintexts.
    /// Writes nothing: without a root key and a keyring head it reads nothing either.
    pub fn stored_secrets_not_generated(
        &self,
        store_ns: &str,
        secrets: &[Generated],
    ) -> Vec<String> {
        let kubeconfig = self.kubeconfig.clone();
        let store_ns = store_ns.to_owned();
        let known: std::collections::HashSet<Vec<u8>> =
            secrets.iter().map(|s| s.value.clone()).collect();
        // Called from Drop inside a test's runtime: a runtime of its own, on a thread.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(strangers_in(kubeconfig, store_ns, known))
        })
        .join()
        .expect("the store scan")
    }
}

async fn strangers_in(
    kubeconfig: kube::config::Kubeconfig,
    store_ns: String,
    known: std::collections::HashSet<Vec<u8>>,
) -> Vec<String> {
    use monivault::crypto::ItemBinding;
    use monivault::store::{Keys, SecretStore, Store, StoredKeyring};
    use std::sync::Arc;

    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("admin kubeconfig");
    let client = kube::Client::try_from(config).expect("admin client");
    let store = Arc::new(SecretStore::new(client, store_ns.clone()));
    // Only a store in today's format: bootstrap would create or split anything else.
    let ready = matches!(store.root_keys().await, Ok(Some(_)))
        && matches!(
            store.keyring_head().await,
            Ok(Some(head)) if matches!(head.value, StoredKeyring::Head(_))
        );
    if !ready {
        return Vec::new();
    }
    let Ok(keys) = Keys::bootstrap(store.clone()).await else {
        return Vec::new();
    };
    let records = store
        .list_records()
        .await
        .expect("list the store's records");
    let mut strangers = Vec::new();
    for (key, record) in records.items {
        let Ok(ring) = keys.keyring_for(&key.namespace).await else {
            continue;
        };
        let Ok(root) = keys.root_for(&ring).await else {
            continue;
        };
        for (field, text) in &record.value.fields {
            let binding = ItemBinding {
                namespace: &key.namespace,
                item: &key.name,
                uid: &record.value.uid,
                field,
            };
            if let Ok(plaintext) = ring.decrypt(&root, &binding, text)
                && !known.contains(plaintext.expose())
            {
                strangers.push(format!("{}/{} {field}", key.namespace, key.name));
            }
        }
    }
    strangers
}
