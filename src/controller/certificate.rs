//! Public facts about certificates: subject, issuer and validity, read from a
//! `CertificateArchive` item's PKCS#12 archive at ingest, or from a `Certificate` item's PEM.
//!
//! The archive itself is read by [`crate::crypto::pkcs12`], which refuses an archive over
//! its limits before deriving any key. This adapter adds what only a long-running process
//! needs: one archive read at a time in the whole process, on a blocking thread, and a
//! deadline after which the item is refused rather than waited for. A read past its
//! deadline keeps the one permit until it ends, so a runaway read never runs beside another.
//!
//! Everything here takes hostile input. Every failure is a [`CertificateError`] whose message
//! names the field and the problem, never a password or a byte of the archive.

use std::time::Duration;

use der::DecodePem as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::Semaphore;

use crate::api::vault_item::{CertificateInfo, limits};
use crate::crypto::Plaintext;
use crate::crypto::pkcs12::{self, ArchiveError, CertificateFacts};

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// How long one archive may take to read (key derivations included) before its item is
/// refused; also how long a read waits for the one before it to finish.
pub const ARCHIVE_DEADLINE: Duration = Duration::from_secs(10);

/// One archive read at a time, process-wide: the limits bound one read, this bounds them all.
static ONE_ARCHIVE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

/// Why a certificate's facts cannot be read. Messages name fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(
        "certificateArchive.archive took too long to read: at most {} s per archive",
        ARCHIVE_DEADLINE.as_secs()
    )]
    ArchiveDeadline,
    /// Worth a retry: the archive before it is still being read.
    #[error(
        "another certificate archive is still being read after {} s; retrying",
        ARCHIVE_DEADLINE.as_secs()
    )]
    ArchiveBusy,
    #[error("certificateArchive.archive could not be read")]
    ArchiveUnreadable,
    #[error("certificate.pem is larger than {} bytes", limits::PEM)]
    PemTooLarge,
    #[error("certificate.pem holds no complete {PEM_BEGIN} ... {PEM_END} block")]
    PemNoCertificate,
    /// The certificate is public, so the parser's reason may be shown.
    #[error("certificate.pem: the first certificate is not valid X.509: {0}")]
    PemBadCertificate(String),
}

impl CertificateError {
    /// The Ready condition's reason for an archive that is refused: `CertificateArchiveRefused`
    /// for what it would cost to read (a limit or the deadline), `CertificateArchiveInvalid`
    /// for anything else.
    pub fn archive_reason(&self) -> &'static str {
        match self {
            CertificateError::Archive(e) if e.is_limit() => "CertificateArchiveRefused",
            CertificateError::ArchiveDeadline => "CertificateArchiveRefused",
            _ => "CertificateArchiveInvalid",
        }
    }
}

/// Reads the end-entity certificate of a PKCS#12 archive, given as written in
/// `certificateArchive.archive`: base64 text (line breaks allowed) or raw DER.
pub fn archive_info(archive: &[u8], password: &[u8]) -> Result<CertificateInfo, CertificateError> {
    let der = pkcs12::archive_der(archive)?;
    let facts = pkcs12::certificate_facts(&der, password)?;
    info(facts).ok_or(CertificateError::Archive(ArchiveError::BadCertificate))
}

/// [`archive_info`] of opened plaintexts: one at a time in the process, on a blocking
/// thread, within [`ARCHIVE_DEADLINE`]. A panic in a parser becomes an error, not a dead
/// controller.
pub async fn read_archive(
    archive: Plaintext,
    password: Option<Plaintext>,
) -> Result<CertificateInfo, CertificateError> {
    one_at_a_time(&ONE_ARCHIVE_AT_A_TIME, ARCHIVE_DEADLINE, move || {
        let password = password.as_ref().map(Plaintext::expose).unwrap_or_default();
        archive_info(archive.expose(), password)
    })
    .await
}

/// Runs `read` on a blocking thread once `gate` lets it, and waits at most `deadline` for
/// each. The permit moves into the blocking closure: a read that outlives its deadline
/// still holds it, so the next one waits (and, after `deadline`, is told to retry).
async fn one_at_a_time<T, F>(
    gate: &'static Semaphore,
    deadline: Duration,
    read: F,
) -> Result<T, CertificateError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, CertificateError> + Send + 'static,
{
    let permit = match tokio::time::timeout(deadline, gate.acquire()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_closed)) => return Err(CertificateError::ArchiveUnreadable),
        Err(_elapsed) => return Err(CertificateError::ArchiveBusy),
    };
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        read()
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(_panicked)) => Err(CertificateError::ArchiveUnreadable),
        Err(_elapsed) => Err(CertificateError::ArchiveDeadline),
    }
}

/// Reads the first certificate of `certificate.pem`. Text around and between the PEM blocks
/// (e.g. `openssl` bag attributes) is ignored.
pub fn pem_info(pem: &str) -> Result<CertificateInfo, CertificateError> {
    if pem.len() > limits::PEM {
        return Err(CertificateError::PemTooLarge);
    }
    let start = pem
        .find(PEM_BEGIN)
        .ok_or(CertificateError::PemNoCertificate)?;
    let rest = &pem[start..];
    let end = rest
        .find(PEM_END)
        .ok_or(CertificateError::PemNoCertificate)?;
    let block = &rest[..end + PEM_END.len()];
    let cert = x509_cert::Certificate::from_pem(block)
        .map_err(|e| CertificateError::PemBadCertificate(e.to_string()))?;
    pkcs12::x509_facts(&cert).and_then(info).ok_or_else(|| {
        CertificateError::PemBadCertificate("its validity dates are out of range".to_owned())
    })
}

/// The facts as the API shows them.
fn info(facts: CertificateFacts) -> Option<CertificateInfo> {
    let time = |seconds| Timestamp::from_second(seconds).ok().map(Time);
    Some(CertificateInfo {
        subject: Some(facts.subject),
        issuer: Some(facts.issuer),
        not_before: Some(time(facts.not_before)?),
        not_after: Some(time(facts.not_after)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use rcgen::{
        CertificateParams, CertifiedIssuer, DistinguishedName, DnType, KeyPair, date_time_ymd,
    };
    use std::sync::mpsc;

    /// The throwaway archive of `examples/item-certificate-archive.yaml`, password `changeit`.
    fn example_archive_base64() -> String {
        let yaml = include_str!("../../examples/item-certificate-archive.yaml");
        yaml.lines()
            .find_map(|l| l.trim().strip_prefix("archive: "))
            .expect("example archive")
            .to_owned()
    }

    fn params(cn: &str, org: &str, from: (i32, u8, u8), to: (i32, u8, u8)) -> CertificateParams {
        let mut params = CertificateParams::new(vec![format!("{cn}.example.com")]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = date_time_ymd(from.0, from.1, from.2);
        params.not_after = date_time_ymd(to.0, to.1, to.2);
        params
    }

    fn ts(s: &str) -> Option<Time> {
        Some(Time(s.parse().expect("timestamp")))
    }

    fn assert_leaf(info: &CertificateInfo) {
        assert_eq!(info.subject.as_deref(), Some("CN=bot,O=Example"));
        assert_eq!(info.issuer.as_deref(), Some("CN=Test CA,O=Example CA"));
        assert_eq!(info.not_before, ts("2026-01-02T00:00:00Z"));
        assert_eq!(info.not_after, ts("2027-03-04T00:00:00Z"));
    }

    fn assert_example(info: &CertificateInfo) {
        assert_eq!(
            info.subject.as_deref(),
            Some("O=Example Shop,CN=synthetic-bot")
        );
        assert_eq!(info.issuer, info.subject, "self-signed");
        assert_eq!(info.not_before, ts("2026-11-27T21:11:59Z"));
        assert_eq!(info.not_after, ts("2036-11-24T21:11:59Z"));
    }

    #[test]
    fn the_example_archive_reads_as_base64_and_as_a_raw_p12_file() {
        let text = example_archive_base64();
        assert_example(&archive_info(text.as_bytes(), b"changeit").expect("base64"));
        // What `monivault seal --from-file shop.p12` seals: the file's bytes.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .expect("base64");
        assert_example(&archive_info(&raw, b"changeit").expect("raw DER"));
    }

    #[test]
    fn the_size_limits_of_the_api_and_the_engine_agree() {
        assert_eq!(limits::ARCHIVE, pkcs12::MAX_ARCHIVE_TEXT);
        assert_eq!(pkcs12::MAX_ARCHIVE_BYTES / 3 * 4, limits::ARCHIVE);
    }

    #[test]
    fn refusals_name_fields_never_values_and_say_which_are_limits() {
        let text = example_archive_base64();
        let wrong = archive_info(text.as_bytes(), b"wrong-password-91c3").expect_err("wrong");
        assert_eq!(
            wrong.to_string(),
            "certificateArchive.password does not open the archive"
        );
        assert_eq!(wrong.archive_reason(), "CertificateArchiveInvalid");

        let huge = vec![b'A'; 16 * 1024 * 1024];
        let too_large = archive_info(&huge, b"changeit").expect_err("too large");
        assert_eq!(too_large, CertificateError::Archive(ArchiveError::TooLarge));
        assert_eq!(too_large.archive_reason(), "CertificateArchiveRefused");
        assert_eq!(
            CertificateError::ArchiveDeadline.archive_reason(),
            "CertificateArchiveRefused"
        );
        assert!(
            CertificateError::ArchiveDeadline
                .to_string()
                .contains("at most 10 s per archive")
        );

        for result in [
            archive_info(b"junk", b"changeit"),
            archive_info(text.as_bytes(), b"wrong"),
            archive_info(b"%%%", b"changeit"),
            archive_info(&text.as_bytes()[..text.len() / 2], b"changeit"),
            pem_info("no pem here"),
        ] {
            let msg = result.expect_err("an error").to_string();
            assert!(
                msg.starts_with("certificateArchive.") || msg.starts_with("certificate.pem"),
                "{msg}"
            );
            assert!(!msg.contains("changeit"), "{msg}");
            assert!(!msg.contains(&text[..16]), "{msg}");
        }
    }

    #[test]
    fn read_archive_runs_off_the_async_threads() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let archive = Plaintext::from(example_archive_base64().as_str());
        let info = runtime
            .block_on(read_archive(archive, Some(Plaintext::from("changeit"))))
            .expect("info");
        assert_example(&info);
        let archive = Plaintext::from(example_archive_base64().as_str());
        assert_eq!(
            runtime.block_on(read_archive(archive, None)),
            Err(CertificateError::Archive(ArchiveError::WrongPassword))
        );
    }

    /// A read that runs until the test lets it go, and says when it started.
    fn held_read(
        started: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
    ) -> impl FnOnce() -> Result<u8, CertificateError> + Send + 'static {
        move || {
            let _ = started.send(());
            let _ = release.recv();
            Ok(1)
        }
    }

    #[test]
    fn a_read_past_its_deadline_is_refused_and_holds_off_the_next_until_it_ends() {
        static GATE: Semaphore = Semaphore::const_new(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        let short = Duration::from_millis(50);
        let (started, has_started) = mpsc::channel();
        let (release, released) = mpsc::channel();

        // A runaway read: the item is refused at the deadline, the controller goes on.
        let first = runtime.block_on(one_at_a_time(&GATE, short, held_read(started, released)));
        assert_eq!(first, Err(CertificateError::ArchiveDeadline));
        has_started.recv().expect("the first read ran");

        // It still holds the one permit: the next read does not start beside it, and is
        // told to retry rather than refused for something its archive did.
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let second = runtime.block_on(one_at_a_time(&GATE, short, move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(2)
        }));
        assert_eq!(second, Err(CertificateError::ArchiveBusy));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));

        // Once it ends, reads go on.
        release.send(()).expect("release");
        let third = runtime.block_on(one_at_a_time(&GATE, Duration::from_secs(60), || Ok(3)));
        assert_eq!(third, Ok(3));
    }

    #[test]
    fn a_panicking_read_is_an_error_and_frees_the_permit() {
        static GATE: Semaphore = Semaphore::const_new(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let long = Duration::from_secs(60);
        let panicked = runtime.block_on(one_at_a_time(&GATE, long, || -> Result<u8, _> {
            panic!("a parser bug")
        }));
        assert_eq!(panicked, Err(CertificateError::ArchiveUnreadable));
        assert_eq!(
            runtime.block_on(one_at_a_time(&GATE, long, || Ok(4))),
            Ok(4)
        );
    }

    #[test]
    fn the_leaf_of_a_generated_archive_keeps_its_times() {
        use p12_keystore::{
            Certificate as P12Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain,
        };
        let ca = CertifiedIssuer::self_signed(
            params("Test CA", "Example CA", (2024, 1, 1), (2034, 1, 1)),
            KeyPair::generate().expect("ca key"),
        )
        .expect("ca");
        let key = KeyPair::generate().expect("key");
        let leaf = params("bot", "Example", (2026, 1, 2), (2027, 3, 4))
            .signed_by(&key, &ca)
            .expect("leaf");
        let mut store = KeyStore::new();
        store.add_entry(
            "bot",
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
                "id",
                PrivateKey::from_der(&key.serialize_der()).expect("pkcs8"),
                [
                    P12Certificate::from_der(leaf.der()).expect("leaf"),
                    P12Certificate::from_der(ca.der()).expect("ca"),
                ],
            )),
        );
        let p12 = store
            .writer("pw")
            .encryption_iterations(16)
            .mac_iterations(16)
            .write()
            .expect("p12");
        assert_leaf(&archive_info(&p12, b"pw").expect("info"));
    }

    #[test]
    fn reads_the_first_certificate_of_a_pem_chain() {
        let yaml = include_str!("../../examples/item-certificate.yaml");
        let start = yaml.find(PEM_BEGIN).expect("pem");
        let pem: String = yaml[start..]
            .lines()
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        let info = pem_info(&pem).expect("example pem");
        assert_eq!(
            info.subject.as_deref(),
            Some("O=Example Shop,CN=synthetic-bot")
        );
        assert_eq!(info.not_before, ts("2026-11-27T21:11:59Z"));
        assert_eq!(info.not_after, ts("2036-11-24T21:11:59Z"));

        let ca_key = KeyPair::generate().expect("key");
        let ca = CertifiedIssuer::self_signed(
            params("Test CA", "Example CA", (2024, 1, 1), (2034, 1, 1)),
            ca_key,
        )
        .expect("ca");
        let key = KeyPair::generate().expect("key");
        let leaf = params("bot", "Example", (2026, 1, 2), (2027, 3, 4))
            .signed_by(&key, &ca)
            .expect("leaf");
        let chain = format!(
            "subject=CN=bot\nissuer=CN=Test CA\n{}\n{}",
            leaf.pem(),
            ca.pem()
        );
        assert_leaf(&pem_info(&chain).expect("chain"));
    }

    #[test]
    fn bad_pem_is_a_typed_error() {
        assert_eq!(pem_info(""), Err(CertificateError::PemNoCertificate));
        assert_eq!(
            pem_info(&format!("{PEM_BEGIN}\nMIIB")),
            Err(CertificateError::PemNoCertificate)
        );
        let garbage = format!("{PEM_BEGIN}\nbm90IGEgY2VydGlmaWNhdGU=\n{PEM_END}\n");
        assert!(matches!(
            pem_info(&garbage),
            Err(CertificateError::PemBadCertificate(_))
        ));
        let not_base64 = format!("{PEM_BEGIN}\n!!!!\n{PEM_END}\n");
        assert!(matches!(
            pem_info(&not_base64),
            Err(CertificateError::PemBadCertificate(_))
        ));
        let huge = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", "A".repeat(limits::PEM));
        assert_eq!(pem_info(&huge), Err(CertificateError::PemTooLarge));
        // Truncated example certificate.
        let yaml = include_str!("../../examples/item-certificate.yaml");
        let start = yaml.find(PEM_BEGIN).expect("pem");
        let lines: Vec<&str> = yaml[start..].lines().map(str::trim).collect();
        let cut = format!("{}\n{}\n{PEM_END}\n", lines[0], lines[1..4].join("\n"));
        assert!(matches!(
            pem_info(&cut),
            Err(CertificateError::PemBadCertificate(_))
        ));
    }
}
