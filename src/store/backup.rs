//! Sealed backups of the store, and their restore.
//!
//! A backup is one file holding the root key versions, the keyring (its head's date and
//! every environment) and every item record, sealed to an offline recovery key
//! ([`crate::crypto::seal_backup`]). Nothing in it is in the clear but a header naming
//! the installation (its root keys' public ids), the recovery key's fingerprint and the
//! counts; the header is bound to the sealed payload, so it cannot be altered either.
//!
//! ```text
//! monivault-backup/1
//! {"format":1,"createdAt":…,"sourceNamespace":…,"rootKeyIds":{"1":"…"},"recoveryKey":"…",…}
//! <base64url: X-Wing encapsulated key ‖ AES-256-GCM(payload JSON)>
//! ```
//!
//! The whole backup is built and opened in memory: about 1.4 KB per record and 2 KB per
//! environment, so 10,000 items make a file of some 20 MB. Files over
//! [`MAX_BACKUP_BYTES`] are refused.
//!
//! A backup is checked before it is written and again before it is restored: every
//! environment must open under a root key it holds, and every record's envelopes must
//! name a data key its environment holds. A backup that passes restores a working vault.
//!
//! Restore writes records and environments first, then the root key Secret, and the
//! keyring head last: until the head exists, the operator refuses to start (it sees data
//! without a keyring), so an interrupted restore is never taken for a fresh store, and
//! running it again completes it.
//!
//! What it must never do: put a root key, a wrapped key or a record in an error or a log,
//! or overwrite a different store's objects without `force`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::root_keys::{RootKeyBytes, root_key_bytes};
use super::{
    ItemKey, ItemRecord, KeyringHead, Listing, RootKeySet, Store, StoreError, StoredKeyring,
    unix_now,
};
use crate::crypto::{
    self, CryptoError, EnvelopeKind, Keyring, RecoveryPrivateKey, RecoveryPublicKey,
    SealingPublicKey, UnixMillis,
};

/// The first line of every backup file.
pub const BACKUP_MAGIC: &str = "monivault-backup/1";
/// The backup format this version writes and reads.
pub const BACKUP_FORMAT: u32 = 1;
/// The largest backup file restore reads (some 180,000 records).
pub const MAX_BACKUP_BYTES: usize = 256 * 1024 * 1024;
/// The largest header line.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Kubernetes name limits: a namespace is a DNS label, an object name a subdomain.
const MAX_NAMESPACE_LEN: usize = 63;
const MAX_NAME_LEN: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "there is nothing to back up in this namespace: it holds no root key Secret (is --namespace the operator's namespace?)"
    )]
    NoStore,
    #[error(
        "the keyring is still in the one-Secret format of an earlier version: start the operator once (it splits the keyring), then take the backup"
    )]
    LegacyKeyring,
    #[error(
        "refusing to write an incomplete backup: these store Secrets cannot be read: {0}. Fix or remove them first"
    )]
    Unreadable(String),
    #[error(
        "the store changed while it was read ({0}); a key rotation probably ran: take the backup again"
    )]
    ChangedDuringBackup(String),
    #[error("not a monivault backup: {0}")]
    Malformed(String),
    #[error(
        "the backup is over the {MAX_BACKUP_BYTES}-byte limit restore reads; it is not a backup this version wrote"
    )]
    TooLarge,
    #[error(
        "this backup was sealed to recovery key {wanted}, not to the given one ({given}): give the NAME.private that belongs to the NAME.pub the backup was taken with"
    )]
    WrongRecoveryKey { wanted: String, given: String },
    #[error("the backup does not open: {0}. It was altered or truncated")]
    DoesNotOpen(#[source] CryptoError),
    #[error("the backup is inconsistent, refusing to restore it: {0}")]
    Inconsistent(String),
    #[error(
        "the operator namespace holds the keys of another installation ({found}), not those of this backup (root key ids {wanted}): restoring over them would make everything stored under them unreadable. Restore into an empty namespace, or re-run with --force to replace them"
    )]
    DifferentInstallation { found: String, wanted: String },
    #[error(
        "the operator namespace already holds {0}, which differs from the backup: it changed after the backup was taken, and restoring would roll it back. Re-run with --force to replace it with the backup's"
    )]
    Diverged(String),
    #[error(
        "refusing to restore into an empty store: the sealing keys the operator publishes in VaultSection status disagree with this backup's ({0}). This backup is not of the installation that runs in this cluster: it is of another one, or it was forged by someone holding the recovery public key (NAME.pub), and restoring it would make the operator run on its keys. Check where the file came from; --force restores it anyway"
    )]
    Contradicted(String),
    #[error(
        "refusing to restore into an empty store: nothing in the cluster confirms this backup came from this installation ({0}). Anyone holding the recovery public key (NAME.pub) can make a file that opens with NAME.private, so check the file's provenance (where it was kept, who wrote it); if you trust it, re-run with --force. After losing the whole cluster, VaultSections re-applied from Git have no status yet, so such a restore always needs --force"
    )]
    NotVouched(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Crypto(#[from] CryptoError),
}

/// What a backup says about itself in the clear (and binds to its sealed payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupHeader {
    pub format: u32,
    /// Unix seconds when the backup was taken.
    pub created_at: i64,
    /// The operator namespace it was taken from.
    pub source_namespace: String,
    /// Root key version → its public id ([`crate::crypto::RootKey::id`]): the
    /// installation the backup belongs to.
    pub root_key_ids: BTreeMap<u32, String>,
    /// The fingerprint of the recovery key it is sealed to.
    pub recovery_key: String,
    pub environments: usize,
    pub records: usize,
}

/// Everything a backup holds, in memory. Not `Clone`; `Debug` prints counts only.
pub struct BackupContents {
    roots: RootKeySet,
    keyring_created_at: i64,
    environments: BTreeMap<String, Keyring>,
    records: BTreeMap<ItemKey, ItemRecord>,
}

impl fmt::Debug for BackupContents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupContents")
            .field("root_keys", &self.roots)
            .field("environments", &self.environments.len())
            .field("records", &self.records.len())
            .finish()
    }
}

/// The sealed payload's JSON.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Payload {
    format: u32,
    root_keys: RootKeysPayload,
    keyring_created_at: i64,
    environments: BTreeMap<String, Keyring>,
    records: Vec<RecordPayload>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RootKeysPayload {
    current: u32,
    #[serde(default, rename = "sinceMs", skip_serializing_if = "Option::is_none")]
    since: Option<UnixMillis>,
    /// Whole seconds, as backups before millisecond key times wrote it; read only.
    #[serde(default, rename = "since", skip_serializing)]
    since_seconds: Option<i64>,
    /// Version → standard base64 of the 32 key bytes; wiped on drop.
    versions: BTreeMap<u32, String>,
}

impl Drop for RootKeysPayload {
    fn drop(&mut self) {
        for key in self.versions.values_mut() {
            key.zeroize();
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecordPayload {
    namespace: String,
    name: String,
    record: ItemRecord,
}

impl BackupContents {
    pub fn root_key_ids(&self) -> Result<BTreeMap<u32, String>, BackupError> {
        root_key_ids(&self.roots)
    }

    /// The namespaces of the environments it holds.
    pub fn environment_names(&self) -> BTreeSet<String> {
        self.environments.keys().cloned().collect()
    }

    pub fn environment_count(&self) -> usize {
        self.environments.len()
    }

    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Every environment opens under a root key held here, and every record's envelopes
    /// name a data key its environment holds.
    fn check(&self) -> Result<(), String> {
        for (namespace, keyring) in &self.environments {
            check_environment_names(namespace, keyring)?;
            if keyring.environments.len() != 1 || !keyring.environments.contains_key(namespace) {
                return Err(format!(
                    "the keys of environment {namespace} are not exactly that environment's"
                ));
            }
            let root = self
                .roots
                .key(keyring.root_key_version)
                .map_err(|_| {
                    format!(
                        "environment {namespace} is wrapped under root key version {}, which is not in it",
                        keyring.root_key_version
                    )
                })?;
            // Unwrapping the current data key proves the wrapping, not only the id.
            keyring
                .current_data_cipher(&root, namespace)
                .map_err(|e| format!("the keys of environment {namespace} do not open: {e}"))?;
        }
        for (key, record) in &self.records {
            check_names(key)?;
            let Some(keyring) = self.environments.get(&key.namespace) else {
                return Err(format!(
                    "record {key} has no keys for its environment {}",
                    key.namespace
                ));
            };
            let held: BTreeSet<u32> = keyring
                .environments
                .values()
                .flat_map(|env| env.data_keys.keys().copied())
                .collect();
            for (field, envelope) in &record.fields {
                match crypto::key_version_of(envelope) {
                    Ok((EnvelopeKind::Data, version)) if held.contains(&version) => {}
                    Ok((EnvelopeKind::Data, version)) => {
                        return Err(format!(
                            "record {key} field {field} is under data key version {version}, which its environment no longer holds"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "record {key} field {field} is not stored ciphertext"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn check_names(key: &ItemKey) -> Result<(), String> {
    if valid_name(&key.namespace, MAX_NAMESPACE_LEN) && valid_name(&key.name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err("a record names an item that is not a valid Kubernetes namespace and name".into())
    }
}

/// The same check for an environment's name (a namespace), and for the names inside its
/// keyring, before either is printed.
fn check_environment_names(namespace: &str, keyring: &Keyring) -> Result<(), String> {
    if valid_name(namespace, MAX_NAMESPACE_LEN)
        && keyring
            .environments
            .keys()
            .all(|ns| valid_name(ns, MAX_NAMESPACE_LEN))
    {
        Ok(())
    } else {
        Err("an environment is named other than a valid Kubernetes namespace".into())
    }
}

fn root_key_ids(roots: &RootKeySet) -> Result<BTreeMap<u32, String>, BackupError> {
    roots
        .versions()
        .into_iter()
        .map(|v| Ok((v, roots.key(v)?.id())))
        .collect()
}

fn describe_ids(ids: &BTreeMap<u32, String>) -> String {
    ids.iter()
        .map(|(v, id)| format!("v{v} {id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_unreadable<K, V>(listing: &Listing<K, V>) -> Result<(), BackupError> {
    if listing.unreadable.is_empty() {
        return Ok(());
    }
    Err(BackupError::Unreadable(
        listing
            .unreadable
            .iter()
            .map(|u| format!("{} ({})", u.secret, u.reason))
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

/// Reads the whole store, checked to be consistent. The root key Secret is read before
/// and after the rest, and both readings kept, so a root key rotation running meanwhile
/// cannot leave an environment under a version the backup lacks; any other change that
/// leaves it inconsistent is refused with a request to take it again.
pub async fn read_backup<S: Store>(store: &S) -> Result<BackupContents, BackupError> {
    let before = store.root_keys().await?.ok_or(BackupError::NoStore)?.value;
    let keyring_created_at = match store.keyring_head().await? {
        Some(head) => match head.value {
            StoredKeyring::Head(head) => head.created_at,
            StoredKeyring::Legacy(_) => return Err(BackupError::LegacyKeyring),
        },
        None => {
            return Err(BackupError::Malformed(
                "the store has a root key but no keyring Secret monivault-keyring".into(),
            ));
        }
    };
    let environments = store.list_environments().await?;
    no_unreadable(&environments)?;
    let records = store.list_records().await?;
    no_unreadable(&records)?;
    let mut roots = store.root_keys().await?.ok_or(BackupError::NoStore)?.value;
    for version in before.versions() {
        roots.insert(before.key(version)?)?;
    }
    let contents = BackupContents {
        roots,
        keyring_created_at,
        environments: environments
            .items
            .into_iter()
            .map(|(ns, v)| (ns, v.value))
            .collect(),
        records: records
            .items
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect(),
    };
    contents.check().map_err(BackupError::ChangedDuringBackup)?;
    Ok(contents)
}

/// A `Write` that only counts, to size a buffer exactly before serializing into it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_error(what: &str, e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Syntax => "is not valid JSON",
        serde_json::error::Category::Eof => "is truncated JSON",
        serde_json::error::Category::Data => "does not have the expected fields and types",
        serde_json::error::Category::Io => "could not be read",
    };
    format!("{what} {kind} (line {}, column {})", e.line(), e.column())
}

/// The backup file: its header, and the contents sealed to `recipient`.
pub fn seal_backup(
    contents: &BackupContents,
    recipient: &RecoveryPublicKey,
    source_namespace: &str,
    now: i64,
) -> Result<Vec<u8>, BackupError> {
    let header = BackupHeader {
        format: BACKUP_FORMAT,
        created_at: now,
        source_namespace: source_namespace.to_owned(),
        root_key_ids: contents.root_key_ids()?,
        recovery_key: recipient.fingerprint(),
        environments: contents.environments.len(),
        records: contents.records.len(),
    };
    let header_json = serde_json::to_vec(&header)
        .map_err(|e| BackupError::Malformed(json_error("the header", &e)))?;
    let payload = Payload {
        format: BACKUP_FORMAT,
        root_keys: RootKeysPayload {
            current: contents.roots.current(),
            since: contents.roots.since(),
            since_seconds: None,
            versions: contents
                .roots
                .raw_keys()
                .map(|(v, bytes)| (v, STANDARD.encode(bytes)))
                .collect(),
        },
        keyring_created_at: contents.keyring_created_at,
        environments: contents.environments.clone(),
        records: contents
            .records
            .iter()
            .map(|(key, record)| RecordPayload {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                record: record.clone(),
            })
            .collect(),
    };
    // Sized first, so the buffer holding the root keys never reallocates and leaves an
    // unwiped copy behind.
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, &payload)
        .map_err(|e| BackupError::Malformed(json_error("the payload", &e)))?;
    let mut plain = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *plain, &payload)
        .map_err(|e| BackupError::Malformed(json_error("the payload", &e)))?;
    let sealed = crypto::seal_backup(recipient, &header_json, &plain)?;
    let mut file = Vec::with_capacity(
        BACKUP_MAGIC.len() + header_json.len() + sealed.len().div_ceil(3) * 4 + 3,
    );
    file.extend_from_slice(BACKUP_MAGIC.as_bytes());
    file.push(b'\n');
    file.extend_from_slice(&header_json);
    file.push(b'\n');
    file.extend_from_slice(URL_SAFE_NO_PAD.encode(&sealed).as_bytes());
    file.push(b'\n');
    Ok(file)
}

/// The header line of a backup file, and the sealed part, without opening it.
fn split_file(file: &[u8]) -> Result<(&[u8], BackupHeader, &[u8]), BackupError> {
    if file.len() > MAX_BACKUP_BYTES {
        return Err(BackupError::TooLarge);
    }
    let malformed = |m: &str| BackupError::Malformed(m.to_owned());
    let rest = file
        .strip_prefix(BACKUP_MAGIC.as_bytes())
        .and_then(|r| r.strip_prefix(b"\n"))
        .ok_or_else(|| malformed("it does not start with the line monivault-backup/1"))?;
    let end = rest
        .iter()
        .take(MAX_HEADER_BYTES + 1)
        .position(|b| *b == b'\n')
        .ok_or_else(|| {
            malformed("its header line is missing or longer than the 64 KiB a header takes")
        })?;
    let (header_json, rest) = rest.split_at(end);
    let header: BackupHeader = serde_json::from_slice(header_json)
        .map_err(|e| BackupError::Malformed(json_error("its header", &e)))?;
    if header.format != BACKUP_FORMAT {
        return Err(BackupError::Malformed(format!(
            "it has format {}, and this version reads format {BACKUP_FORMAT}",
            header.format
        )));
    }
    check_header(&header)?;
    let body = rest.get(1..).unwrap_or_default();
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    Ok((header_json, header, body))
}

/// The header is read before anything authenticates it, and parts of it are printed: hold
/// every printed field to its exact format, and never echo one that fails.
fn check_header(header: &BackupHeader) -> Result<(), BackupError> {
    let malformed = |m: &str| Err(BackupError::Malformed(m.to_owned()));
    if !is_fingerprint(&header.recovery_key) {
        return malformed(
            "its header's recovery key fingerprint is not 32 lowercase hexadecimal digits",
        );
    }
    if !is_dns_label(&header.source_namespace) {
        return malformed("its header's source namespace is not a valid Kubernetes namespace");
    }
    if !header.root_key_ids.values().all(|id| is_fingerprint(id)) {
        return malformed("its header's root key ids are not 32 lowercase hexadecimal digits");
    }
    Ok(())
}

/// A public fingerprint as [`RecoveryPublicKey::fingerprint`] and
/// [`crate::crypto::RootKey::id`] write it: 16 bytes in lowercase hex.
fn is_fingerprint(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A Kubernetes namespace name (RFC 1123 DNS label).
fn is_dns_label(text: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !text.is_empty()
        && text.len() <= MAX_NAMESPACE_LEN
        && text.bytes().all(|b| alnum(b) || b == b'-')
        && text.bytes().next().is_some_and(alnum)
        && text.bytes().last().is_some_and(alnum)
}

/// Reads a backup file's header without opening it (e.g. to say what a file is).
pub fn backup_header(file: &[u8]) -> Result<BackupHeader, BackupError> {
    Ok(split_file(file)?.1)
}

/// Opens a backup file with the recovery private key, and checks what it holds. Treats
/// the file as hostile: sizes are bounded, and every error says what is wrong without
/// quoting the content.
pub fn open_backup(
    file: &[u8],
    key: &RecoveryPrivateKey,
) -> Result<(BackupHeader, BackupContents), BackupError> {
    let (header_json, header, body) = split_file(file)?;
    let given = key.public_key().fingerprint();
    if given != header.recovery_key {
        return Err(BackupError::WrongRecoveryKey {
            wanted: header.recovery_key,
            given,
        });
    }
    let sealed = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| BackupError::Malformed("its sealed part is not unpadded base64url".into()))?;
    let plain = crypto::open_backup(key, header_json, &sealed).map_err(BackupError::DoesNotOpen)?;
    let payload: Payload = serde_json::from_slice(plain.expose())
        .map_err(|e| BackupError::Inconsistent(json_error("its payload", &e)))?;
    drop(plain);
    let contents = contents_from(payload)?;
    if contents.root_key_ids()? != header.root_key_ids
        || contents.environments.len() != header.environments
        || contents.records.len() != header.records
    {
        return Err(BackupError::Inconsistent(
            "its payload does not match its header".into(),
        ));
    }
    contents.check().map_err(BackupError::Inconsistent)?;
    Ok((header, contents))
}

fn contents_from(payload: Payload) -> Result<BackupContents, BackupError> {
    let inconsistent = |m: String| BackupError::Inconsistent(m);
    if payload.format != BACKUP_FORMAT {
        return Err(inconsistent(format!(
            "its payload has format {}",
            payload.format
        )));
    }
    let mut keys: BTreeMap<u32, RootKeyBytes> = BTreeMap::new();
    for (version, text) in &payload.root_keys.versions {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text)
                .map_err(|_| inconsistent(format!("root key version {version} is not base64")))?,
        );
        let bytes: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| inconsistent(format!("root key version {version} is not 32 bytes")))?;
        keys.insert(*version, root_key_bytes(bytes));
    }
    let current = payload.root_keys.current;
    if !keys.contains_key(&current) {
        return Err(inconsistent(format!(
            "its current root key version {current} is not among its root keys"
        )));
    }
    let since =
        (payload.root_keys.since).or(payload.root_keys.since_seconds.map(UnixMillis::from_secs));
    let roots = RootKeySet::from_parts(current, since, keys);
    for (namespace, keyring) in &payload.environments {
        check_environment_names(namespace, keyring).map_err(inconsistent)?;
    }
    let mut records = BTreeMap::new();
    for entry in &payload.records {
        let key = ItemKey::new(entry.namespace.clone(), entry.name.clone());
        check_names(&key).map_err(inconsistent)?;
        if records.insert(key.clone(), entry.record.clone()).is_some() {
            return Err(inconsistent(format!("record {key} appears twice")));
        }
    }
    Ok(BackupContents {
        roots,
        keyring_created_at: payload.keyring_created_at,
        environments: payload.environments.clone(),
        records,
    })
}

/// A sealing public key that a VaultSection's status publishes: evidence, from the
/// cluster, of which keys this installation runs on. Only the operator writes status
/// (users cannot patch the status subresource), so it vouches for a backup whose keys
/// derive it, and a forger holding only the recovery public key cannot make one that does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedSealingKey {
    /// The section's namespace (its environment).
    pub namespace: String,
    /// The section's name.
    pub section: String,
    /// `status.keyVersion`.
    pub key_version: Option<u32>,
    /// `status.sealingPublicKey`, as published.
    pub public_key: String,
}

impl PublishedSealingKey {
    fn describe(&self) -> String {
        match self.key_version {
            Some(v) => format!("VaultSection {}/{} v{v}", self.namespace, self.section),
            None => format!("VaultSection {}/{}", self.namespace, self.section),
        }
    }
}

/// What the cluster's published sealing keys say about a backup
/// ([`BackupContents::vouching`]). Each list names sections (`ns/name vN`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Vouching {
    /// The backup holds the published version, and its private key derives exactly the
    /// published public key.
    pub confirmed: Vec<String>,
    /// The backup holds the published version, but its key is another, or does not open.
    pub contradicted: Vec<String>,
    /// In one of the backup's environments, but neither confirms nor contradicts: a
    /// version the backup does not hold (it predates a sealing key rotation), or a status
    /// that does not name one key and version consistently.
    pub unconfirmed: Vec<String>,
    /// How many environments the backup holds.
    pub environments: usize,
}

impl Vouching {
    /// `Ok` when some section confirms the backup and none contradicts it; otherwise the
    /// refusal, which `force` overrides.
    pub fn verdict(&self) -> Result<(), BackupError> {
        if !self.contradicted.is_empty() {
            return Err(BackupError::Contradicted(listed(&self.contradicted)));
        }
        if self.confirmed.is_empty() {
            let detail = if self.unconfirmed.is_empty() {
                format!(
                    "no VaultSection in the cluster publishes a sealing key for any of its {} environments",
                    self.environments
                )
            } else {
                format!(
                    "the VaultSections of its environments publish sealing key versions it does not hold ({}); it may predate a sealing key rotation",
                    listed(&self.unconfirmed)
                )
            };
            return Err(BackupError::NotVouched(detail));
        }
        Ok(())
    }
}

/// The first few of `names`, and how many more.
fn listed(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

impl BackupContents {
    /// Compares the sealing keys published in the cluster with the backup's: for each
    /// section in one of the backup's environments, does the backup's sealing private key
    /// of the published version (unwrapped with the backup's root key) derive exactly the
    /// published public key? Pure; sections of other namespaces are ignored.
    pub fn vouching(&self, published: &[PublishedSealingKey]) -> Vouching {
        let mut vouching = Vouching {
            environments: self.environments.len(),
            ..Vouching::default()
        };
        for evidence in published {
            let Some(keyring) = self.environments.get(&evidence.namespace) else {
                continue;
            };
            let what = evidence.describe();
            let parsed = match SealingPublicKey::parse(&evidence.public_key) {
                Ok(key)
                    if key.namespace() == evidence.namespace
                        && evidence.key_version.is_none_or(|v| v == key.version()) =>
                {
                    key
                }
                _ => {
                    vouching.unconfirmed.push(what);
                    continue;
                }
            };
            let held = keyring
                .environments
                .get(&evidence.namespace)
                .is_some_and(|env| env.sealing_keys.contains_key(&parsed.version()));
            if !held {
                vouching.unconfirmed.push(what);
                continue;
            }
            let derived = self
                .roots
                .key(keyring.root_key_version)
                .ok()
                .and_then(|root| {
                    keyring
                        .sealing_opener(&root, &evidence.namespace, parsed.version())
                        .ok()
                })
                .map(|opener| opener.public_key());
            if derived.as_ref() == Some(&parsed) {
                vouching.confirmed.push(what);
            } else {
                vouching.contradicted.push(what);
            }
        }
        vouching
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Objects written (created, or replaced with `force`).
    pub written: usize,
    /// Objects already as in the backup (an earlier, interrupted run wrote them).
    pub unchanged: usize,
    /// Environments and records in the namespace that the backup does not hold; left as
    /// they are.
    pub left_alone: usize,
    /// Refusals that `force` overrode, to tell the user loudly.
    pub warnings: Vec<String>,
}

/// One object's fate in a restore: create it, replace it at a resourceVersion, or leave
/// it (already as in the backup).
enum Step {
    Create,
    Replace(String),
    Keep,
}

fn step_for<T: PartialEq>(
    existing: Option<(&T, &str)>,
    wanted: &T,
    what: impl FnOnce() -> String,
    force: bool,
) -> Result<Step, BackupError> {
    match existing {
        None => Ok(Step::Create),
        Some((found, _)) if found == wanted => Ok(Step::Keep),
        Some((_, rv)) if force => Ok(Step::Replace(rv.to_owned())),
        Some(_) => Err(BackupError::Diverged(what())),
    }
}

fn same_root_keys(a: &RootKeySet, b: &RootKeySet) -> bool {
    a.current() == b.current() && a.since() == b.since() && a.raw_keys().eq(b.raw_keys())
}

/// Restores `contents` into `store`: creates what is missing, leaves what is already as in
/// the backup, and refuses, before writing anything, to change what differs (another
/// installation's keys, or a newer state of this one) unless `force`.
///
/// Into a store without a root key, `published` (the sealing keys VaultSections in the
/// cluster publish) must vouch for the backup ([`BackupContents::vouching`]): a backup
/// opens with the recovery private key, but anyone with the public half can make one.
/// Without `force`, it is refused when a published key disagrees with it, or when none
/// confirms it; with `force`, the reason is in [`RestoreReport::warnings`].
pub async fn restore<S: Store>(
    store: &S,
    contents: &BackupContents,
    published: &[PublishedSealingKey],
    force: bool,
) -> Result<RestoreReport, BackupError> {
    let wanted_ids = contents.root_key_ids()?;
    let mut report = RestoreReport::default();

    // Plan: read everything, decide every step, write nothing yet.
    let existing_roots = store.root_keys().await?;
    let roots_step = match &existing_roots {
        // Nothing in the store vouches for the backup (a root key of the same ids would):
        // the cluster must.
        None => match contents.vouching(published).verdict() {
            Ok(()) => Step::Create,
            Err(refusal) if force => {
                report
                    .warnings
                    .push(format!("--force overrode this refusal: {refusal}"));
                Step::Create
            }
            Err(refusal) => return Err(refusal),
        },
        Some(found) => {
            let found_ids = root_key_ids(&found.value)?;
            let shared = found_ids
                .iter()
                .filter(|(v, _)| wanted_ids.contains_key(v))
                .count();
            let differ = found_ids
                .iter()
                .any(|(v, id)| wanted_ids.get(v).is_some_and(|w| w != id));
            if (shared == 0 || differ) && !force {
                return Err(BackupError::DifferentInstallation {
                    found: format!("root key ids {}", describe_ids(&found_ids)),
                    wanted: describe_ids(&wanted_ids),
                });
            }
            if same_root_keys(&found.value, &contents.roots) {
                Step::Keep
            } else if force {
                Step::Replace(found.resource_version.clone())
            } else {
                return Err(BackupError::Diverged(format!(
                    "the root key Secret with versions {:?} (current {})",
                    found.value.versions(),
                    found.value.current()
                )));
            }
        }
    };

    let environments = store.list_environments().await?;
    if !force {
        no_unreadable(&environments)?;
    }
    let found_envs: BTreeMap<&String, (&Keyring, &str)> = environments
        .items
        .iter()
        .map(|(ns, v)| (ns, (&v.value, v.resource_version.as_str())))
        .collect();
    for (namespace, (keyring, _)) in &found_envs {
        let ours = wanted_ids.get(&keyring.root_key_version) == Some(&keyring.root_key_id);
        if !ours && !force {
            return Err(BackupError::DifferentInstallation {
                found: format!(
                    "environment {namespace} is wrapped under root key v{} {}",
                    keyring.root_key_version, keyring.root_key_id
                ),
                wanted: describe_ids(&wanted_ids),
            });
        }
    }
    let mut env_steps = Vec::new();
    for (namespace, keyring) in &contents.environments {
        let step = step_for(
            found_envs.get(namespace).copied(),
            keyring,
            || format!("the keys of environment {namespace}"),
            force,
        )?;
        env_steps.push((namespace, keyring, step));
    }
    report.left_alone += found_envs
        .keys()
        .filter(|ns| !contents.environments.contains_key(**ns))
        .count();

    let records = store.list_records().await?;
    if !force {
        no_unreadable(&records)?;
    }
    let found_records: BTreeMap<&ItemKey, (&ItemRecord, &str)> = records
        .items
        .iter()
        .map(|(k, v)| (k, (&v.value, v.resource_version.as_str())))
        .collect();
    let mut record_steps = Vec::new();
    for (key, record) in &contents.records {
        let step = step_for(
            found_records.get(key).copied(),
            record,
            || format!("the record of item {key}"),
            force,
        )?;
        record_steps.push((key, record, step));
    }
    report.left_alone += found_records
        .keys()
        .filter(|k| !contents.records.contains_key(**k))
        .count();

    let head_step = match store.keyring_head().await? {
        None => Step::Create,
        Some(found) => match found.value {
            StoredKeyring::Head(_) => Step::Keep,
            StoredKeyring::Legacy(_) if force => Step::Replace(found.resource_version),
            StoredKeyring::Legacy(_) => {
                return Err(BackupError::Diverged(
                    "a keyring in the one-Secret format of an earlier version".into(),
                ));
            }
        },
    };

    // Write: records and environments, then the root keys, then the head, which tells
    // the operator the store is whole.
    let mut count = |step: &Step| match step {
        Step::Keep => report.unchanged += 1,
        _ => report.written += 1,
    };
    for (key, record, step) in &record_steps {
        match step {
            Step::Create => store.put_record(key, record, None).await?,
            Step::Replace(rv) => store.put_record(key, record, Some(rv)).await?,
            Step::Keep => String::new(),
        };
        count(step);
    }
    for (namespace, keyring, step) in &env_steps {
        match step {
            Step::Create => store.put_environment(namespace, keyring, None).await?,
            Step::Replace(rv) => store.put_environment(namespace, keyring, Some(rv)).await?,
            Step::Keep => String::new(),
        };
        count(step);
    }
    match &roots_step {
        Step::Create => store.put_root_keys(&contents.roots, None).await?,
        Step::Replace(rv) => store.put_root_keys(&contents.roots, Some(rv)).await?,
        Step::Keep => String::new(),
    };
    count(&roots_step);
    let head = KeyringHead {
        created_at: contents.keyring_created_at,
        ..KeyringHead::new(unix_now())
    };
    match &head_step {
        Step::Create => store.put_keyring_head(&head, None).await?,
        Step::Replace(rv) => store.put_keyring_head(&head, Some(rv)).await?,
        Step::Keep => String::new(),
    };
    count(&head_step);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::{ItemBinding, new_recovery_key};
    use crate::store::{Keys, MemoryStore};

    const PLAINTEXT: &[u8] = b"hunter2-backup-plaintext";

    /// A store with one environment and one record holding `PLAINTEXT`.
    async fn populated() -> (Arc<MemoryStore>, String) {
        let store = Arc::new(MemoryStore::new());
        let keys = Keys::bootstrap(store.clone()).await.expect("bootstrap");
        let keyring = keys.ensure_environment("shop").await.expect("env");
        let root = keys.root_for(&keyring).await.expect("root");
        let cipher = keyring.current_data_cipher(&root, "shop").expect("cipher");
        let binding = ItemBinding {
            namespace: "shop",
            item: "db-login",
            uid: "uid-1",
            field: "password",
        };
        let envelope = cipher.encrypt(&binding, PLAINTEXT).expect("encrypt");
        let record = ItemRecord {
            uid: "uid-1".into(),
            key_version: cipher.version(),
            fields: BTreeMap::from([("password".into(), envelope)]),
            source_digest: "00".repeat(32),
            generation: Some(1),
        };
        store
            .put_record(&ItemKey::new("shop", "db-login"), &record, None)
            .await
            .expect("record");
        let root_b64 = STANDARD.encode(root.expose_bytes());
        (store, root_b64)
    }

    /// What the VaultSections of `store`'s installation publish for environment shop.
    async fn published(store: Arc<MemoryStore>) -> Vec<PublishedSealingKey> {
        let keys = Keys::bootstrap(store).await.expect("store opens");
        let keyring = keys.keyring_for("shop").await.expect("keyring");
        let root = keys.root_for(&keyring).await.expect("root");
        let key = keyring.sealing_public_key(&root, "shop").expect("public");
        vec![PublishedSealingKey {
            namespace: "shop".into(),
            section: "checkout".into(),
            key_version: Some(key.version()),
            public_key: key.to_string(),
        }]
    }

    /// A backup made by someone holding only the recovery public key: a fresh
    /// installation with the same environment, built with the crate's own functions.
    async fn forged() -> BackupContents {
        let store = Arc::new(MemoryStore::new());
        let keys = Keys::bootstrap(store.clone()).await.expect("bootstrap");
        keys.ensure_environment("shop").await.expect("env");
        read_backup(store.as_ref()).await.expect("forged backup")
    }

    async fn opens(store: Arc<MemoryStore>) -> Vec<u8> {
        let keys = Keys::bootstrap(store.clone())
            .await
            .expect("restored store starts");
        let keyring = keys.keyring_for("shop").await.expect("keyring");
        let root = keys.root_for(&keyring).await.expect("root");
        let record = store
            .record(&ItemKey::new("shop", "db-login"))
            .await
            .expect("read")
            .expect("record");
        let binding = ItemBinding {
            namespace: "shop",
            item: "db-login",
            uid: "uid-1",
            field: "password",
        };
        keyring
            .decrypt(&root, &binding, &record.value.fields["password"])
            .expect("decrypt")
            .expose()
            .to_vec()
    }

    #[tokio::test]
    async fn a_backup_restores_into_an_empty_store_and_every_record_opens() {
        let (source, root_b64) = populated().await;
        let (public, private) = new_recovery_key().expect("recovery key");
        let contents = read_backup(source.as_ref()).await.expect("backup");
        let file = seal_backup(&contents, &public, "monivault-system", 42).expect("seal");
        let text = String::from_utf8(file.clone()).expect("text");
        assert!(text.starts_with("monivault-backup/1\n"));
        assert!(
            !text.contains(&root_b64),
            "the root key is not in the clear"
        );
        assert!(!text.contains("hunter2"));

        let (header, opened) = open_backup(&file, &private).expect("open");
        assert_eq!((header.environments, header.records), (1, 1));
        assert_eq!(header.source_namespace, "monivault-system");
        let target = Arc::new(MemoryStore::new());
        let evidence = published(source.clone()).await;
        let report = restore(target.as_ref(), &opened, &evidence, false)
            .await
            .expect("restore");
        assert_eq!(report.written, 4, "{report:?}");
        assert!(report.warnings.is_empty(), "{report:?}");
        assert_eq!(opens(target.clone()).await, PLAINTEXT);

        // Running it again changes nothing and succeeds.
        let again = restore(target.as_ref(), &opened, &evidence, false)
            .await
            .expect("again");
        assert_eq!((again.written, again.unchanged), (0, 4));
    }

    #[tokio::test]
    async fn an_interrupted_restore_completes_when_run_again() {
        let (source, _) = populated().await;
        let contents = read_backup(source.as_ref()).await.expect("backup");
        // A first run that died after the records and environments: no root key, no head.
        let target = Arc::new(MemoryStore::new());
        for (key, record) in &contents.records {
            target.put_record(key, record, None).await.expect("record");
        }
        for (ns, keyring) in &contents.environments {
            target
                .put_environment(ns, keyring, None)
                .await
                .expect("env");
        }
        assert!(
            Keys::bootstrap(target.clone()).await.is_err(),
            "the operator does not start on a half-restored store"
        );
        let evidence = published(source.clone()).await;
        let report = restore(target.as_ref(), &contents, &evidence, false)
            .await
            .expect("restore");
        assert_eq!((report.written, report.unchanged), (2, 2));
        assert_eq!(opens(target).await, PLAINTEXT);
    }

    #[tokio::test]
    async fn another_installations_keys_are_kept_unless_forced() {
        let (source, _) = populated().await;
        let contents = read_backup(source.as_ref()).await.expect("backup");
        let other = Arc::new(MemoryStore::new());
        Keys::bootstrap(other.clone())
            .await
            .expect("another installation");
        let err = restore(other.as_ref(), &contents, &[], false)
            .await
            .expect_err("refused");
        assert!(matches!(err, BackupError::DifferentInstallation { .. }));
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(
            other
                .record(&ItemKey::new("shop", "db-login"))
                .await
                .expect("read")
                .is_none()
        );
        restore(other.as_ref(), &contents, &[], true)
            .await
            .expect("forced");
        assert_eq!(opens(other).await, PLAINTEXT);
    }

    #[tokio::test]
    async fn a_newer_state_of_the_same_installation_is_not_rolled_back() {
        let (source, _) = populated().await;
        let contents = read_backup(source.as_ref()).await.expect("backup");
        let key = ItemKey::new("shop", "db-login");
        let mut changed = source.record(&key).await.expect("read").expect("record");
        changed.value.generation = Some(2);
        source
            .put_record(&key, &changed.value, Some(&changed.resource_version))
            .await
            .expect("change");
        let err = restore(source.as_ref(), &contents, &[], false)
            .await
            .expect_err("refused");
        assert!(matches!(err, BackupError::Diverged(_)), "{err}");
        assert!(err.to_string().contains("shop/db-login"), "{err}");
    }

    #[tokio::test]
    async fn a_hostile_file_is_refused_with_a_reason() {
        let (source, _) = populated().await;
        let (public, private) = new_recovery_key().expect("key");
        let (_, stranger) = new_recovery_key().expect("key");
        let contents = read_backup(source.as_ref()).await.expect("backup");
        let file = seal_backup(&contents, &public, "ns", 1).expect("seal");
        let reason = |bytes: &[u8], key: &RecoveryPrivateKey| {
            open_backup(bytes, key).expect_err("refused").to_string()
        };
        assert!(reason(&file, &stranger).contains("sealed to recovery key"));
        assert!(reason(b"hello", &private).contains("monivault-backup/1"));
        assert!(
            reason(&file[..file.len() / 2], &private).contains("does not open")
                || reason(&file[..file.len() / 2], &private).contains("base64url")
        );
        // The header is bound: changing a count in the clear makes it not open.
        let text = String::from_utf8(file.clone()).expect("text");
        let tampered = text.replacen("\"records\":1", "\"records\":2", 1);
        assert_ne!(tampered, text);
        assert!(reason(tampered.as_bytes(), &private).contains("does not open"));
        let no_newline = format!("{BACKUP_MAGIC}\n{}", "x".repeat(MAX_HEADER_BYTES + 10));
        assert!(reason(no_newline.as_bytes(), &private).contains("header line"));
        let huge = vec![b'x'; MAX_BACKUP_BYTES + 1];
        assert!(matches!(
            open_backup(&huge, &private),
            Err(BackupError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn a_backup_refuses_a_store_it_could_not_restore() {
        let (source, _) = populated().await;
        let mut contents = read_backup(source.as_ref()).await.expect("backup");
        // A record whose data key its environment no longer holds.
        let record = contents
            .records
            .get_mut(&ItemKey::new("shop", "db-login"))
            .expect("record");
        let field = record.fields.get_mut("password").expect("field");
        *field = field.replacen("mv1.d.1.", "mv1.d.9.", 1);
        assert!(
            contents
                .check()
                .expect_err("inconsistent")
                .contains("version 9")
        );
        assert!(matches!(
            read_backup(&MemoryStore::new()).await,
            Err(BackupError::NoStore)
        ));
    }

    #[tokio::test]
    async fn published_sealing_keys_vouch_only_for_the_backup_that_derives_them() {
        let (source, _) = populated().await;
        let real = read_backup(source.as_ref()).await.expect("backup");
        let fake = forged().await;
        let evidence = published(source.clone()).await;

        // Matching: the backup's own sealing key is published.
        let vouching = real.vouching(&evidence);
        assert_eq!(vouching.confirmed, ["VaultSection shop/checkout v1"]);
        assert!(vouching.contradicted.is_empty() && vouching.unconfirmed.is_empty());
        vouching.verdict().expect("vouched for");

        // Mismatching: another key of the same version is published.
        let vouching = fake.vouching(&evidence);
        assert_eq!(vouching.contradicted, ["VaultSection shop/checkout v1"]);
        assert!(vouching.confirmed.is_empty());
        let err = vouching.verdict().expect_err("contradicted");
        assert!(matches!(err, BackupError::Contradicted(_)), "{err}");
        assert!(err.to_string().contains("shop/checkout"), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        // One disagreeing section outweighs one that agrees.
        let mut mixed = evidence.clone();
        mixed.extend(published_from(&fake, "other-section").await);
        assert!(matches!(
            real.vouching(&mixed).verdict(),
            Err(BackupError::Contradicted(_))
        ));

        // No evidence: nothing published, or only for other namespaces.
        let elsewhere = PublishedSealingKey {
            namespace: "elsewhere".into(),
            ..evidence[0].clone()
        };
        for none in [vec![], vec![elsewhere]] {
            let vouching = real.vouching(&none);
            assert_eq!(
                vouching,
                Vouching {
                    environments: 1,
                    ..Vouching::default()
                }
            );
            let err = vouching.verdict().expect_err("not vouched for");
            assert!(matches!(err, BackupError::NotVouched(_)), "{err}");
            assert!(err.to_string().contains("provenance"), "{err}");
            assert!(err.to_string().contains("--force"), "{err}");
        }

        // A version the backup does not hold (a rotation after it), or a status whose
        // version and key disagree, neither confirms nor contradicts.
        let newer = PublishedSealingKey {
            key_version: Some(2),
            public_key: evidence[0].public_key.replacen(".1.", ".2.", 1),
            ..evidence[0].clone()
        };
        let inconsistent = PublishedSealingKey {
            key_version: Some(7),
            ..evidence[0].clone()
        };
        let vouching = real.vouching(&[newer, inconsistent]);
        assert_eq!(vouching.unconfirmed.len(), 2, "{vouching:?}");
        let err = vouching.verdict().expect_err("not vouched for");
        assert!(err.to_string().contains("predate"), "{err}");
    }

    /// What `contents`' own sealing key for shop would publish, as section `section`.
    async fn published_from(contents: &BackupContents, section: &str) -> Vec<PublishedSealingKey> {
        let keyring = &contents.environments["shop"];
        let root = contents.roots.key(keyring.root_key_version).expect("root");
        let key = keyring.sealing_public_key(&root, "shop").expect("public");
        vec![PublishedSealingKey {
            namespace: "shop".into(),
            section: section.into(),
            key_version: Some(key.version()),
            public_key: key.to_string(),
        }]
    }

    #[tokio::test]
    async fn a_forged_backup_is_refused_into_an_empty_store_unless_forced() {
        let (source, _) = populated().await;
        let (public, private) = new_recovery_key().expect("recovery key");
        let evidence = published(source.clone()).await;
        // Sealed to the same recovery public key: it opens with the private half.
        let file = seal_backup(&forged().await, &public, "monivault-system", 1).expect("seal");
        let (_, opened) = open_backup(&file, &private).expect("a forged backup opens");

        let target = Arc::new(MemoryStore::new());
        for published in [evidence.clone(), vec![]] {
            let err = restore(target.as_ref(), &opened, &published, false)
                .await
                .expect_err("refused");
            assert!(
                matches!(
                    err,
                    BackupError::Contradicted(_) | BackupError::NotVouched(_)
                ),
                "{err}"
            );
            assert!(target.root_keys().await.expect("read").is_none());
            assert!(target.keyring_head().await.expect("read").is_none());
            assert!(
                target
                    .list_environments()
                    .await
                    .expect("read")
                    .items
                    .is_empty()
            );
        }

        // The real backup is accepted into the same empty store.
        let real = read_backup(source.as_ref()).await.expect("backup");
        let file = seal_backup(&real, &public, "monivault-system", 2).expect("seal");
        let (_, real) = open_backup(&file, &private).expect("open");
        restore(target.as_ref(), &real, &evidence, false)
            .await
            .expect("the real backup restores");
        assert_eq!(opens(target).await, PLAINTEXT);

        // --force overrides, and says why.
        let elsewhere = Arc::new(MemoryStore::new());
        let report = restore(elsewhere.as_ref(), &opened, &evidence, true)
            .await
            .expect("forced");
        assert_eq!(report.warnings.len(), 1, "{report:?}");
        assert!(report.warnings[0].contains("disagree"), "{report:?}");
    }

    #[tokio::test]
    async fn header_text_is_held_to_its_format_before_it_is_printed() {
        let (source, _) = populated().await;
        let (public, private) = new_recovery_key().expect("key");
        let contents = read_backup(source.as_ref()).await.expect("backup");
        let file = seal_backup(&contents, &public, "monivault-system", 1).expect("seal");
        let text = String::from_utf8(file).expect("text");
        let fingerprint = public.fingerprint();
        let hostile = [
            text.replacen(&fingerprint, "\\u001b]0;owned\\u0007", 1),
            text.replacen(&fingerprint, &fingerprint.to_uppercase(), 1),
            text.replacen("monivault-system", "evil\\u001b[2J", 1),
            text.replacen("monivault-system", "-system", 1),
        ];
        for bad in &hostile {
            assert_ne!(bad, &text);
            let err = open_backup(bad.as_bytes(), &private).expect_err("refused");
            let message = err.to_string();
            assert!(matches!(err, BackupError::Malformed(_)), "{message}");
            assert!(!message.contains('\u{1b}'), "{message:?}");
            assert!(!message.contains("owned") && !message.contains("evil"));
            assert!(backup_header(bad.as_bytes()).is_err());
        }
    }

    #[tokio::test]
    async fn environment_names_in_a_backup_are_checked_like_record_names() {
        let (source, _) = populated().await;
        let (public, private) = new_recovery_key().expect("key");
        let mut contents = read_backup(source.as_ref()).await.expect("backup");
        let bad = "shop\u{1b}[2J";
        let mut keyring = contents.environments.remove("shop").expect("env");
        let env = keyring.environments.remove("shop").expect("env");
        keyring.environments.insert(bad.into(), env);
        contents.environments.insert(bad.into(), keyring);
        contents.records.clear();
        let file = seal_backup(&contents, &public, "monivault-system", 1).expect("seal");
        let err = open_backup(&file, &private).expect_err("refused");
        let message = err.to_string();
        assert!(
            message.contains("valid Kubernetes namespace"),
            "{message:?}"
        );
        assert!(!message.contains('\u{1b}'), "{message:?}");
    }
}
