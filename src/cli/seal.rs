//! `monivault seal`: seals one value for one item field, for GitOps.
//!
//! The value comes from standard input or a file, never from the command line (other users
//! can read the process list). It is read into one buffer of a bounded, exact capacity that
//! wipes itself, and typed at a terminal it is not echoed.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use base64::Engine as _;
use monivault::api::SecretField;
use monivault::api::vault_section::VaultSection;
use monivault::crypto::{self, Plaintext, SealBinding, SealingPublicKey};
use zeroize::Zeroizing;

#[derive(clap::Args)]
pub struct SealArgs {
    /// The namespace the item lives in (its environment).
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// The VaultSection the item is in. The sealed value opens only for an item of this
    /// section. Unless --public-key-file is given, the sealing key is read from this
    /// section's `status.sealingPublicKey` in the cluster (kubeconfig as for kubectl).
    #[arg(long)]
    pub section: String,
    /// The VaultItem's name.
    #[arg(long)]
    pub item: String,
    /// The write-only field: password, value, archive, archivePassword, content or secret.
    #[arg(long, value_parser = parse_field)]
    pub field: SecretField,
    /// Read the sealing public key (`mvpk1.…`) from this file instead of the cluster, e.g.
    /// to seal offline: save a VaultSection's `status.sealingPublicKey` to it.
    #[arg(long)]
    pub public_key_file: Option<PathBuf>,
    /// Read the value from this file instead of standard input. Its bytes are taken as
    /// they are; for `archive` and `content`, which hold base64, they are base64-encoded
    /// first, so a raw `.p12` or data file can be given directly.
    #[arg(long)]
    pub from_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the value to seal is empty")]
    EmptyValue,
    #[error("the value is longer than {field} accepts: at most {limit} bytes{hint}")]
    TooLong {
        field: SecretField,
        limit: usize,
        hint: &'static str,
    },
    #[error(
        "VaultSection {namespace}/{section} publishes no sealing key yet: is the monivault operator running?"
    )]
    NotPublished { namespace: String, section: String },
    #[error("cannot read VaultSection {namespace}/{section}: {source}")]
    Kube {
        namespace: String,
        section: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Crypto(#[from] crypto::CryptoError),
}

pub fn parse_field(s: &str) -> Result<SecretField, String> {
    SecretField::ALL
        .into_iter()
        .find(|f| f.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<_> = SecretField::ALL.iter().map(|f| f.as_str()).collect();
            format!("unknown field {s:?}; expected one of {}", names.join(", "))
        })
}

/// Seals the value and returns the `mv2.s.…` text for `spec.sealed.<field>`.
pub fn seal(args: &SealArgs) -> Result<String, SealError> {
    let key_text = match &args.public_key_file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| SealError::Read {
            what: "the public key",
            path: path.display().to_string(),
            source,
        })?,
        None => published_key(&args.namespace, &args.section)?,
    };
    let public_key = SealingPublicKey::parse(&key_text)?;
    let value = read_value(args)?;
    if value.is_empty() {
        return Err(SealError::EmptyValue);
    }
    let binding = SealBinding {
        namespace: &args.namespace,
        section: &args.section,
        item_type: args.field.item_type().as_str(),
        item: &args.item,
        field: args.field.as_str(),
    };
    Ok(crypto::seal(&public_key, &binding, value.expose())?)
}

/// The sealing public key a VaultSection publishes in its status.
fn published_key(namespace: &str, section: &str) -> Result<String, SealError> {
    let runtime = tokio::runtime::Runtime::new().map_err(SealError::Runtime)?;
    let kube_error = |source| SealError::Kube {
        namespace: namespace.to_owned(),
        section: section.to_owned(),
        source,
    };
    runtime.block_on(async {
        let client = kube::Client::try_default().await.map_err(kube_error)?;
        let sections: kube::Api<VaultSection> = kube::Api::namespaced(client, namespace);
        let found = sections.get(section).await.map_err(kube_error)?;
        found
            .status
            .and_then(|s| s.sealing_public_key)
            .ok_or_else(|| SealError::NotPublished {
                namespace: namespace.to_owned(),
                section: section.to_owned(),
            })
    })
}

/// Fields whose plaintext is base64 text of a binary file.
fn holds_base64(field: SecretField) -> bool {
    matches!(field, SecretField::Archive | SecretField::Content)
}

fn read_value(args: &SealArgs) -> Result<Plaintext, SealError> {
    let field = args.field;
    let limit = field.max_plaintext_len();
    match &args.from_file {
        Some(path) => {
            let read_error = |source| SealError::Read {
                what: "the value",
                path: path.display().to_string(),
                source,
            };
            let file = std::fs::File::open(path).map_err(read_error)?;
            if !holds_base64(field) {
                let bytes = read_bounded(file, limit, field).map_err(|e| e.or_read(read_error))?;
                return Ok(Plaintext::from_zeroizing(bytes));
            }
            // base64 is 4/3 of the file: the raw file may be at most 3/4 of the limit.
            let raw =
                read_bounded(file, limit / 4 * 3, field).map_err(|e| e.or_read(read_error))?;
            let mut text = Zeroizing::new(vec![0u8; raw.len().div_ceil(3) * 4]);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(raw.as_slice(), text.as_mut_slice())
                .map_err(|_| SealError::TooLong {
                    field,
                    limit,
                    hint: "",
                })?;
            text.truncate(written);
            Ok(Plaintext::from_zeroizing(text))
        }
        None => {
            let stdin = std::io::stdin();
            let read_error = |source| SealError::Read {
                what: "the value",
                path: "standard input".to_owned(),
                source,
            };
            let bytes = if stdin.is_terminal() {
                let _echo_off = EchoOff::on_stdin();
                eprint!("Value for {} (not shown; end with Enter): ", field.as_str());
                let _ = std::io::stderr().flush();
                let line = read_line_bounded(stdin.lock(), limit, field)
                    .map_err(|e| e.or_read(read_error));
                eprintln!();
                line?
            } else {
                // Room for the line end that is dropped below.
                let mut bytes =
                    read_bounded(stdin.lock(), limit + 2, field).map_err(|e| match e {
                        ReadFailure::Io(e) => read_error(e),
                        ReadFailure::TooLong(_) => too_long(field, limit),
                    })?;
                // `echo` and here-strings end the value with one newline that is not part of
                // it; exactly one LF or CRLF is dropped, nothing else.
                let end = if bytes.ends_with(b"\r\n") {
                    2
                } else {
                    usize::from(bytes.ends_with(b"\n"))
                };
                let keep = bytes.len() - end;
                bytes.truncate(keep);
                if bytes.len() > limit {
                    return Err(too_long(field, limit));
                }
                bytes
            };
            Ok(Plaintext::from_zeroizing(bytes))
        }
    }
}

fn too_long(field: SecretField, limit: usize) -> SealError {
    SealError::TooLong {
        field,
        limit,
        hint: if holds_base64(field) {
            " of base64"
        } else {
            ""
        },
    }
}

/// A read that failed either way.
enum ReadFailure {
    Io(std::io::Error),
    TooLong(SealError),
}

impl ReadFailure {
    fn or_read(self, read_error: impl FnOnce(std::io::Error) -> SealError) -> SealError {
        match self {
            ReadFailure::Io(e) => read_error(e),
            ReadFailure::TooLong(e) => e,
        }
    }
}

/// Reads all of `source`, at most `limit` bytes, into one buffer allocated once (so no
/// reallocation leaves a copy behind) that is wiped on drop.
fn read_bounded(
    source: impl Read,
    limit: usize,
    field: SecretField,
) -> Result<Zeroizing<Vec<u8>>, ReadFailure> {
    // Room for one byte past the limit (to see that it was exceeded) and for std's probe read.
    let mut bytes = Zeroizing::new(Vec::with_capacity(limit + 64));
    source
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadFailure::Io)?;
    if bytes.len() > limit {
        return Err(ReadFailure::TooLong(too_long(field, limit)));
    }
    Ok(bytes)
}

/// Reads one line (without its end) from a terminal, byte by byte into a fixed buffer.
fn read_line_bounded(
    mut source: impl Read,
    limit: usize,
    field: SecretField,
) -> Result<Zeroizing<Vec<u8>>, ReadFailure> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(limit + 1));
    let mut byte = Zeroizing::new([0u8; 1]);
    loop {
        match source.read(byte.as_mut()) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                if bytes.len() == limit {
                    return Err(ReadFailure::TooLong(too_long(field, limit)));
                }
                bytes.push(byte[0]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFailure::Io(e)),
        }
    }
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

/// Turns terminal echo off on standard input until dropped.
struct EchoOff {
    #[cfg(unix)]
    saved: Option<rustix::termios::Termios>,
}

impl EchoOff {
    fn on_stdin() -> Self {
        #[cfg(unix)]
        {
            use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
            let stdin = std::io::stdin();
            let saved = tcgetattr(&stdin).ok();
            if let Some(saved) = &saved {
                let mut quiet = saved.clone();
                quiet.local_modes.remove(LocalModes::ECHO);
                let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
            }
            EchoOff { saved }
        }
        #[cfg(not(unix))]
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            use rustix::termios::{OptionalActions, tcsetattr};
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_read_refuses_one_byte_too_many() {
        let ok = read_bounded(&b"abcd"[..], 4, SecretField::Password).ok();
        assert_eq!(ok.as_deref().map(Vec::as_slice), Some(&b"abcd"[..]));
        assert!(read_bounded(&b"abcde"[..], 4, SecretField::Password).is_err());
    }

    #[test]
    fn a_terminal_line_ends_at_enter_without_its_cr() {
        let line = read_line_bounded(&b"s3cret\r\nrest"[..], 16, SecretField::Password).ok();
        assert_eq!(line.as_deref().map(Vec::as_slice), Some(&b"s3cret"[..]));
        assert!(read_line_bounded(&b"toolong\n"[..], 3, SecretField::Password).is_err());
    }
}
