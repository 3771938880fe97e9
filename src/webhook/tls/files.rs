//! cert-manager mode: the certificate and key come from files (a mounted Secret's
//! `tls.crt` and `tls.key`) and are polled for changes.
//!
//! Kubernetes updates a mounted Secret by writing a new directory and swapping the
//! `..data` symlink. Watchers of the files themselves may get no event for that, and
//! mtimes may not move, so the poll compares a digest of the contents.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{CertResolver, TlsError};

/// The two files and the digest of the pair last tried, good or bad, so an unchanged bad
/// pair is not retried (and reported) on every poll.
#[derive(Debug)]
pub struct CertFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    last_tried: Option<[u8; 32]>,
}

/// What a poll did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what was tried last time.
    Unchanged,
    /// A new pair is being served.
    Reloaded,
}

impl CertFiles {
    pub fn new(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        CertFiles {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            last_tried: None,
        }
    }

    /// Reads both files and, if they changed since the last poll, hands the pair to
    /// `resolver`. A bad pair is an error and leaves the resolver as it was; it is not
    /// tried again until the files change.
    pub async fn poll(&mut self, resolver: &CertResolver) -> Result<Reload, TlsError> {
        let cert = read(&self.cert_path).await?;
        let key = read(&self.key_path).await?;
        let digest = pair_digest(&cert, &key);
        if self.last_tried == Some(digest) {
            return Ok(Reload::Unchanged);
        }
        self.last_tried = Some(digest);
        // Two reads are not atomic: a poll during a swap may pair a new certificate with
        // the old key. That pair fails here, and the next poll sees the settled files.
        resolver.set_from(
            &format!("certificate file {}", self.cert_path.display()),
            &format!("key file {}", self.key_path.display()),
            &cert,
            &key,
        )?;
        Ok(Reload::Reloaded)
    }

    /// Polls every `interval` until `shutdown`, logging reloads and failures (once per
    /// distinct failure). A failure keeps the pair being served.
    pub async fn watch(
        mut self,
        resolver: Arc<CertResolver>,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.poll(&resolver).await {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Reloaded) => {
                    failing = None;
                    tracing::info!(
                        cert = %self.cert_path.display(),
                        key = %self.key_path.display(),
                        "webhook certificate reloaded from files"
                    );
                }
                Err(error) => {
                    let message = error.to_string();
                    if failing.as_ref() != Some(&message) {
                        tracing::warn!(
                            error = %message,
                            "webhook certificate files not reloaded; still serving the previous pair"
                        );
                        failing = Some(message);
                    }
                }
            }
        }
    }
}

/// Loads the pair into `resolver` (an error if it cannot, so the process fails at start),
/// then polls every `interval` until `shutdown`.
pub async fn watch_files(
    resolver: Arc<CertResolver>,
    cert_path: PathBuf,
    key_path: PathBuf,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TlsError> {
    let mut files = CertFiles::new(cert_path, key_path);
    files.poll(&resolver).await?;
    tracing::info!(
        cert = %files.cert_path.display(),
        key = %files.key_path.display(),
        "webhook certificate loaded from files"
    );
    files.watch(resolver, interval, shutdown).await;
    Ok(())
}

async fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    tokio::fs::read(path)
        .await
        .map(Zeroizing::new)
        .map_err(|source| TlsError::ReadFile {
            path: path.to_owned(),
            source,
        })
}

/// Length-prefixed, so moving bytes from one file to the other changes the digest.
fn pair_digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((cert.len() as u64).to_be_bytes());
    hasher.update(cert);
    hasher.update(key);
    hasher.finalize().into()
}
