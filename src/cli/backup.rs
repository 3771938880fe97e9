//! `monivault recovery-key new`, `monivault backup` and `monivault restore`: the store
//! sealed to an offline recovery key, and brought back from it.
//!
//! The format and the restore logic are the store's ([`monivault::store::backup`]); the
//! sealing is the engine's. This file reads and writes files and streams, and talks to
//! the cluster.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use monivault::api::vault_section::VaultSection;
use monivault::crypto::{self, RecoveryPrivateKey, RecoveryPublicKey};
use monivault::store::SecretStore;
use monivault::store::backup::{self, BackupError, MAX_BACKUP_BYTES, PublishedSealingKey};
use zeroize::Zeroizing;

/// The largest key file read (a key's text is under 2 KiB).
const MAX_KEY_FILE_BYTES: usize = 64 * 1024;
/// VaultSections read per request when looking for published sealing keys.
const SECTION_PAGE: u32 = 500;

#[derive(clap::Args)]
pub struct RecoveryKeyArgs {
    #[command(subcommand)]
    pub command: RecoveryKeyCommand,
}

#[derive(clap::Subcommand)]
pub enum RecoveryKeyCommand {
    /// Make a new recovery key pair: NAME.pub (backups are sealed to it; keep it where
    /// backups are taken) and NAME.private (opens them; keep it offline).
    New {
        /// The file name to write NAME.pub and NAME.private under. Existing files are
        /// never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The recovery public key (NAME.pub from `monivault recovery-key new`).
    #[arg(long)]
    pub recovery_key: PathBuf,
    /// The operator's namespace, which holds the store.
    #[arg(long, env = "MONIVAULT_NAMESPACE", default_value = "monivault-system")]
    pub namespace: String,
    /// Write the backup to this file (created; never overwritten) instead of standard
    /// output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The recovery private key (NAME.private) the backup was sealed to.
    #[arg(long)]
    pub recovery_private_key: PathBuf,
    /// The operator's namespace to restore the store into. Stop the operator first.
    #[arg(long, env = "MONIVAULT_NAMESPACE", default_value = "monivault-system")]
    pub namespace: String,
    /// Read the backup from this file instead of standard input.
    #[arg(long = "from")]
    pub from: Option<PathBuf>,
    /// Replace what the namespace holds where it differs from the backup, even another
    /// installation's keys (which then open nothing stored under them); and restore into
    /// an empty namespace although no VaultSection in the cluster confirms the backup's
    /// sealing keys, or they disagree (check the file's provenance first).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupCliError {
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} already exists: refusing to overwrite it (a recovery key or backup there may be the only one)"
    )]
    Exists { path: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} in {path}: {source}")]
    Key {
        what: &'static str,
        path: String,
        #[source]
        source: crypto::CryptoError,
    },
    #[error("the backup is over the {MAX_BACKUP_BYTES}-byte limit restore reads")]
    TooLarge,
    #[error("{path} is over the {MAX_KEY_FILE_BYTES}-byte limit of a key file: it is not {what}")]
    KeyFileTooLarge { what: &'static str, path: String },
    #[error(
        "cannot read the VaultSections in the cluster, whose published sealing keys confirm the backup: {0}"
    )]
    Sections(#[source] kube::Error),
    #[error("{0}")]
    Backup(#[from] BackupError),
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[source] kube::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Writes NAME.pub and NAME.private; returns what to tell the user.
pub fn new_recovery_key(out: &Path) -> Result<String, BackupCliError> {
    let public_path = with_suffix(out, "pub");
    let private_path = with_suffix(out, "private");
    // Refuse before writing either, so a refusal leaves no half pair behind.
    for path in [&public_path, &private_path] {
        if path.exists() {
            return Err(BackupCliError::Exists {
                path: path.display().to_string(),
            });
        }
    }
    let (public, private) = crypto::new_recovery_key().map_err(|source| BackupCliError::Key {
        what: "cannot make a recovery key",
        path: out.display().to_string(),
        source,
    })?;
    let mut private_text = private.to_text();
    private_text.push('\n');
    write_new(&private_path, private_text.as_bytes(), 0o600)?;
    write_new(&public_path, format!("{public}\n").as_bytes(), 0o644)?;
    Ok(format!(
        "wrote {} (seal backups to it: monivault backup --recovery-key {})\n\
         wrote {} (mode 0600): it opens every backup sealed to this key. Keep it OFFLINE \
         (a password manager, a safe, a hardware token), never in the cluster or in Git, \
         and delete this copy once it is stored there. Recovery key fingerprint: {}",
        public_path.display(),
        public_path.display(),
        private_path.display(),
        public.fingerprint()
    ))
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` (never replacing an existing file) with `mode`, and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BackupCliError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            BackupCliError::Exists {
                path: path.display().to_string(),
            }
        } else {
            BackupCliError::Write {
                path: path.display().to_string(),
                source,
            }
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| BackupCliError::Write {
            path: path.display().to_string(),
            source,
        })
}

/// Reads a key file into a buffer wiped on drop, sized up front so it never reallocates
/// (a reallocation would leave an unwiped copy of a private key behind).
fn read_text(path: &Path, what: &'static str) -> Result<Zeroizing<String>, BackupCliError> {
    let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_FILE_BYTES + 1));
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_KEY_FILE_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|source| BackupCliError::Read {
            what,
            path: path.display().to_string(),
            source,
        })?;
    if text.len() > MAX_KEY_FILE_BYTES {
        return Err(BackupCliError::KeyFileTooLarge {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(text)
}

/// The sealing keys that VaultSections in the backup's environments publish in their
/// status (written only by the operator), every page of them. A cluster without the
/// VaultSection resource has none.
async fn published_sealing_keys(
    client: &kube::Client,
    environments: &BTreeSet<String>,
) -> Result<Vec<PublishedSealingKey>, BackupCliError> {
    let api: Api<VaultSection> = Api::all(client.clone());
    let mut published = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(SECTION_PAGE);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(published),
            Err(e) => return Err(BackupCliError::Sections(e)),
        };
        for section in &page.items {
            let Some(namespace) = section.namespace() else {
                continue;
            };
            if !environments.contains(&namespace) {
                continue;
            }
            let Some(status) = &section.status else {
                continue;
            };
            if let Some(public_key) = &status.sealing_public_key {
                published.push(PublishedSealingKey {
                    namespace,
                    section: section.name_any(),
                    key_version: status.key_version,
                    public_key: public_key.clone(),
                });
            }
        }
        match page.metadata.continue_ {
            Some(next) if !next.is_empty() => token = Some(next),
            _ => return Ok(published),
        }
    }
}

/// Takes the backup; returns the summary for standard error.
pub fn backup(args: &BackupArgs) -> Result<String, BackupCliError> {
    let key_text = read_text(&args.recovery_key, "the recovery public key")?;
    let recipient = RecoveryPublicKey::parse(&key_text).map_err(|source| BackupCliError::Key {
        what: "not a recovery public key",
        path: args.recovery_key.display().to_string(),
        source,
    })?;
    let runtime = tokio::runtime::Runtime::new().map_err(BackupCliError::Runtime)?;
    let (file, contents) = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(BackupCliError::Kube)?;
        let store = SecretStore::new(client, &args.namespace);
        let contents = backup::read_backup(&store).await?;
        let file = backup::seal_backup(
            &contents,
            &recipient,
            &args.namespace,
            monivault::store::unix_now(),
        )?;
        Ok::<_, BackupCliError>((file, contents))
    })?;
    match &args.out {
        Some(path) => write_new(path, &file, 0o600)?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&file)
                .and_then(|()| stdout.flush())
                .map_err(|source| BackupCliError::Write {
                    path: "standard output".into(),
                    source,
                })?;
        }
    }
    Ok(format!(
        "backed up namespace {}: root key versions {:?}, {} environments, {} item records ({} bytes), sealed to recovery key {}; record the root key ids {:?} to check this file before a restore with --force",
        args.namespace,
        contents.root_key_ids()?.keys().collect::<Vec<_>>(),
        contents.environment_count(),
        contents.record_count(),
        file.len(),
        recipient.fingerprint(),
        contents.root_key_ids()?,
    ))
}

/// Restores a backup; returns the summary.
pub fn restore(args: &RestoreArgs) -> Result<String, BackupCliError> {
    let key_text = read_text(&args.recovery_private_key, "the recovery private key")?;
    let key = RecoveryPrivateKey::parse(&key_text).map_err(|source| BackupCliError::Key {
        what: "not a recovery private key",
        path: args.recovery_private_key.display().to_string(),
        source,
    })?;
    let (source_name, file) = match &args.from {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|source| BackupCliError::Read {
                what: "the backup",
                path: path.display().to_string(),
                source,
            })?;
            (path.display().to_string(), read_bounded(file, path)?)
        }
        None => (
            "standard input".to_owned(),
            read_bounded(std::io::stdin().lock(), Path::new("standard input"))?,
        ),
    };
    let (header, contents) = backup::open_backup(&file, &key)?;
    let runtime = tokio::runtime::Runtime::new().map_err(BackupCliError::Runtime)?;
    let report = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(BackupCliError::Kube)?;
        // Read before anything is written, like every other check of a restore.
        let published = published_sealing_keys(&client, &contents.environment_names()).await?;
        let store = SecretStore::new(client, &args.namespace);
        Ok::<_, BackupCliError>(backup::restore(&store, &contents, &published, args.force).await?)
    })?;
    let mut summary = format!(
        "restored the backup from {source_name} (taken from namespace {} at unix time {}) into namespace {}: {} objects written, {} already restored",
        header.source_namespace,
        header.created_at,
        args.namespace,
        report.written,
        report.unchanged
    );
    if report.left_alone > 0 {
        summary.push_str(&format!(
            "; {} environments or records the backup does not hold were left in place",
            report.left_alone
        ));
    }
    summary.push_str(". Start the operator now.");
    for warning in &report.warnings {
        summary.push_str(&format!("\n\nWARNING: {warning}"));
    }
    Ok(summary)
}

fn read_bounded(source: impl Read, path: &Path) -> Result<Vec<u8>, BackupCliError> {
    let mut bytes = Vec::new();
    source
        .take(MAX_BACKUP_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| BackupCliError::Read {
            what: "the backup",
            path: path.display().to_string(),
            source,
        })?;
    if bytes.len() > MAX_BACKUP_BYTES {
        return Err(BackupCliError::TooLarge);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_recovery_key_is_private_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("mv-rk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let out = dir.join("rk");
        let message = new_recovery_key(&out).expect("new");
        assert!(message.contains("OFFLINE"), "{message}");
        let private = std::fs::read_to_string(dir.join("rk.private")).expect("private");
        let public = std::fs::read_to_string(dir.join("rk.pub")).expect("public");
        let key = RecoveryPrivateKey::parse(&private).expect("parses");
        assert_eq!(key.public_key().to_string(), public.trim());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("rk.private"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            new_recovery_key(&out),
            Err(BackupCliError::Exists { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(dir.join("rk.private")).expect("private"),
            private,
            "the refused run changed nothing"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_file_is_read_into_one_presized_buffer_and_bounded() {
        let dir = std::env::temp_dir().join(format!("mv-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (_, private) = crypto::new_recovery_key().expect("key");
        let small = dir.join("rk.private");
        std::fs::write(&small, private.to_text().as_bytes()).expect("write");
        let text = read_text(&small, "the recovery private key").expect("read");
        assert_eq!(text.as_str(), private.to_text().as_str());
        // Never reallocated: the buffer is the one sized before reading.
        assert_eq!(text.capacity(), MAX_KEY_FILE_BYTES + 1);

        let huge = dir.join("huge.private");
        std::fs::write(&huge, vec![b'x'; MAX_KEY_FILE_BYTES + 1]).expect("write");
        assert!(matches!(
            read_text(&huge, "the recovery private key"),
            Err(BackupCliError::KeyFileTooLarge { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
