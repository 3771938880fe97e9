//! Public facts about certificates: subject, issuer and validity, read from a
//! `CertificateArchive` item's PKCS#12 archive at ingest, or from a `Certificate` item's PEM.
//!
//! Everything here takes hostile input. Every failure is a [`CertificateError`] whose message
//! names the field and the problem, never a password or a byte of the archive.

use base64::Engine as _;
use der::{Decode as _, DecodePem as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use p12_keystore::Pkcs12Archive;
use p12_keystore::error::Error as P12Error;
use x509_cert::time::Time as X509Time;
use zeroize::Zeroizing;

use crate::api::vault_item::{CertificateInfo, limits};
use crate::crypto::Plaintext;

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// Why a certificate's facts cannot be read. Messages name fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("certificateArchive.archive is not base64")]
    ArchiveNotBase64,
    #[error("certificateArchive.archive is larger than {} bytes", limits::ARCHIVE)]
    ArchiveTooLarge,
    #[error("certificateArchive.archive is not a PKCS#12 file")]
    ArchiveNotPkcs12,
    #[error("certificateArchive.archive is damaged: its PKCS#12 contents do not parse")]
    ArchiveDamaged,
    #[error("certificateArchive.password does not open the archive")]
    WrongPassword,
    #[error("certificateArchive.password is not UTF-8 text")]
    PasswordNotText,
    #[error(
        "certificateArchive.archive uses an encryption or MAC algorithm that is not supported (use PBES2 with AES and PBKDF2, or the legacy SHA-1 3DES/RC2 schemes)"
    )]
    ArchiveUnsupported,
    #[error(
        "certificateArchive.archive has missing or excessive encryption parameters (at most 1,000,000 key-derivation iterations)"
    )]
    ArchiveParameters,
    #[error("certificateArchive.archive holds no certificate")]
    ArchiveNoCertificate,
    #[error("certificateArchive.archive holds a certificate that is not valid X.509")]
    ArchiveBadCertificate,
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

/// Reads the end-entity certificate of a PKCS#12 archive (`archive`: its DER bytes): the
/// certificate paired with the private key, else the first one.
pub fn archive_info(archive: &[u8], password: &[u8]) -> Result<CertificateInfo, CertificateError> {
    if archive.len() > limits::ARCHIVE {
        return Err(CertificateError::ArchiveTooLarge);
    }
    // A PFX is one DER SEQUENCE and nothing after it; anything else is not PKCS#12 at all
    // (or is cut short), whatever the password.
    match der::Any::from_der(archive) {
        Ok(any) if der::Tagged::tag(&any) == der::Tag::Sequence => {}
        _ => return Err(CertificateError::ArchiveNotPkcs12),
    }
    let password = std::str::from_utf8(password).map_err(|_| CertificateError::PasswordNotText)?;
    let parsed = Pkcs12Archive::from_pkcs12(archive, password).map_err(archive_error)?;

    let key_ids: Vec<&[u8]> = parsed
        .keys
        .iter()
        .filter_map(|k| k.local_key_id.as_ref().map(|id| id.as_ref()))
        .collect();
    let end_entity = parsed
        .certs
        .iter()
        .find(|c| {
            c.local_key_id
                .as_deref()
                .is_some_and(|id| key_ids.contains(&id))
        })
        .or_else(|| parsed.certs.first())
        .ok_or(CertificateError::ArchiveNoCertificate)?;
    let cert = x509_cert::Certificate::from_der(end_entity.cert.as_der())
        .map_err(|_| CertificateError::ArchiveBadCertificate)?;
    certificate_info(&cert).ok_or(CertificateError::ArchiveBadCertificate)
}

/// [`archive_info`] of `certificateArchive.archive` as the user wrote it: base64 text, line
/// breaks allowed. The decoded archive lives only in buffers that wipe themselves.
pub fn archive_info_base64(
    archive: &[u8],
    password: &[u8],
) -> Result<CertificateInfo, CertificateError> {
    if archive.len() > limits::ARCHIVE {
        return Err(CertificateError::ArchiveTooLarge);
    }
    let mut text = Zeroizing::new(Vec::with_capacity(archive.len()));
    text.extend(archive.iter().copied().filter(|b| !b.is_ascii_whitespace()));
    let mut der = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    base64::engine::general_purpose::STANDARD
        .decode_vec(text.as_slice(), &mut der)
        .map_err(|_| CertificateError::ArchiveNotBase64)?;
    archive_info(&der, password)
}

/// [`archive_info_base64`] of opened plaintexts, on a blocking thread: key derivation may
/// take a while, and a panic in a parser becomes an error, not a dead controller.
pub async fn read_archive(
    archive: Plaintext,
    password: Option<Plaintext>,
) -> Result<CertificateInfo, CertificateError> {
    tokio::task::spawn_blocking(move || {
        let password = password.as_ref().map(Plaintext::expose).unwrap_or_default();
        archive_info_base64(archive.expose(), password)
    })
    .await
    .unwrap_or(Err(CertificateError::ArchiveUnreadable))
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
    certificate_info(&cert).ok_or_else(|| {
        CertificateError::PemBadCertificate("its validity dates are out of range".to_owned())
    })
}

/// Subject and issuer as RFC 4514 strings (`CN=bot,O=Example`), and the validity period.
fn certificate_info(cert: &x509_cert::Certificate) -> Option<CertificateInfo> {
    let tbs = cert.tbs_certificate();
    let validity = tbs.validity();
    Some(CertificateInfo {
        subject: Some(tbs.subject().to_string()),
        issuer: Some(tbs.issuer().to_string()),
        not_before: Some(time(validity.not_before)?),
        not_after: Some(time(validity.not_after)?),
    })
}

fn time(t: X509Time) -> Option<Time> {
    let seconds = i64::try_from(t.to_unix_duration().as_secs()).ok()?;
    Timestamp::from_second(seconds).ok().map(Time)
}

fn archive_error(e: P12Error) -> CertificateError {
    match e {
        // The MAC is keyed by the password; decryption fails on a wrong key's padding.
        P12Error::MacError(_) | P12Error::UnpadError | P12Error::Pkcs5Error(_) => {
            CertificateError::WrongPassword
        }
        P12Error::InvalidVersion | P12Error::UnsupportedContentType => {
            CertificateError::ArchiveNotPkcs12
        }
        P12Error::UnsupportedEncryptionScheme | P12Error::UnsupportedMacAlgorithm => {
            CertificateError::ArchiveUnsupported
        }
        P12Error::InvalidParameters => CertificateError::ArchiveParameters,
        P12Error::X509Error(_) | P12Error::UnsupportedCertificateType => {
            CertificateError::ArchiveBadCertificate
        }
        P12Error::IoError(_)
        | P12Error::DerError(_)
        | P12Error::InvalidLength
        | P12Error::InvalidData
        | P12Error::InvalidPrivateKey => CertificateError::ArchiveDamaged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Encode as _, Reader as _};
    use p12_keystore::{
        Certificate as P12Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain,
    };
    use rcgen::{
        CertificateParams, CertifiedIssuer, DistinguishedName, DnType, KeyPair, date_time_ymd,
    };

    const PASSWORD: &str = "s3cret-archive-pw-7d1e";

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

    /// A leaf `CN=bot,O=Example` issued by `CN=Test CA,O=Example CA`, with its key, its CA
    /// and a second unrelated certificate, so the pairing by key id is what picks the leaf.
    fn keystore() -> KeyStore {
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = CertifiedIssuer::self_signed(
            params("Test CA", "Example CA", (2024, 1, 1), (2034, 1, 1)),
            ca_key,
        )
        .expect("ca");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = params("bot", "Example", (2026, 1, 2), (2027, 3, 4))
            .signed_by(&leaf_key, &ca)
            .expect("leaf");
        let other_key = KeyPair::generate().expect("other key");
        let other = params("aaa-unrelated", "Zzz", (2020, 1, 1), (2021, 1, 1))
            .self_signed(&other_key)
            .expect("other");

        let chain = PrivateKeyChain::new(
            "leaf-key-id",
            PrivateKey::from_der(&leaf_key.serialize_der()).expect("pkcs8"),
            [
                P12Certificate::from_der(leaf.der()).expect("leaf der"),
                P12Certificate::from_der(ca.der()).expect("ca der"),
            ],
        );
        let mut store = KeyStore::new();
        store.add_entry(
            "0-unrelated",
            KeyStoreEntry::Certificate(P12Certificate::from_der(other.der()).expect("der")),
        );
        store.add_entry("bot", KeyStoreEntry::PrivateKeyChain(chain));
        store
    }

    fn archive(store: &KeyStore, password: &str) -> Vec<u8> {
        store
            .writer(password)
            .encryption_iterations(16)
            .mac_iterations(16)
            .write()
            .expect("write PKCS#12")
    }

    /// The same PFX without its MAC: a wrong password then fails in decryption, and byte
    /// flips reach the inner parsers instead of stopping at the MAC.
    fn without_mac(pfx: &[u8]) -> Vec<u8> {
        let outer = der::Any::from_der(pfx).expect("pfx");
        let mut reader = der::SliceReader::new(outer.value()).expect("reader");
        let version: der::Any = reader.decode().expect("version");
        let auth_safe: der::Any = reader.decode().expect("authSafe");
        vec![version, auth_safe].to_der().expect("encode")
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

    #[test]
    fn reads_the_end_entity_certificate_of_a_generated_archive() {
        let p12 = archive(&keystore(), PASSWORD);
        assert_leaf(&archive_info(&p12, PASSWORD.as_bytes()).expect("info"));
        assert_leaf(&archive_info(&without_mac(&p12), PASSWORD.as_bytes()).expect("no MAC"));
    }

    #[test]
    fn reads_base64_with_line_breaks() {
        let p12 = archive(&keystore(), PASSWORD);
        let text = base64::engine::general_purpose::STANDARD.encode(&p12);
        let wrapped: Vec<u8> = text
            .as_bytes()
            .chunks(64)
            .flat_map(|line| line.iter().copied().chain(*b"\r\n"))
            .collect();
        assert_leaf(&archive_info_base64(&wrapped, PASSWORD.as_bytes()).expect("info"));
    }

    #[test]
    fn reads_the_example_archive() {
        let info = archive_info_base64(example_archive_base64().as_bytes(), b"changeit")
            .expect("example archive opens");
        assert_eq!(
            info.subject.as_deref(),
            Some("O=Example Shop,CN=synthetic-bot")
        );
        assert_eq!(info.issuer, info.subject, "self-signed");
        assert_eq!(info.not_before, ts("2026-11-27T21:11:59Z"));
        assert_eq!(info.not_after, ts("2036-11-24T21:11:59Z"));
    }

    #[test]
    fn an_archive_without_a_key_falls_back_to_its_first_certificate() {
        let key = KeyPair::generate().expect("key");
        let cert = params("only", "Trust", (2025, 5, 6), (2030, 5, 6))
            .self_signed(&key)
            .expect("cert");
        let mut store = KeyStore::new();
        store.add_entry(
            "trusted",
            KeyStoreEntry::Certificate(P12Certificate::from_der(cert.der()).expect("der")),
        );
        let info = archive_info(&archive(&store, PASSWORD), PASSWORD.as_bytes()).expect("info");
        assert_eq!(info.subject.as_deref(), Some("CN=only,O=Trust"));
        assert_eq!(info.not_after, ts("2030-05-06T00:00:00Z"));
    }

    #[test]
    fn a_wrong_password_is_named_and_not_echoed() {
        let p12 = archive(&keystore(), PASSWORD);
        for archive in [p12.clone(), without_mac(&p12)] {
            let err = archive_info(&archive, b"wrong-password-91c3").expect_err("wrong password");
            assert_eq!(err, CertificateError::WrongPassword);
            let msg = err.to_string();
            assert_eq!(msg, "certificateArchive.password does not open the archive");
            assert!(!msg.contains("wrong-password-91c3") && !msg.contains(PASSWORD));
        }
        let example = example_archive_base64();
        assert_eq!(
            archive_info_base64(example.as_bytes(), b"changeme"),
            Err(CertificateError::WrongPassword)
        );
        assert_eq!(
            archive_info_base64(example.as_bytes(), b""),
            Err(CertificateError::WrongPassword)
        );
        assert_eq!(
            archive_info(&p12, &[0xff, 0xfe]),
            Err(CertificateError::PasswordNotText)
        );
    }

    #[test]
    fn an_archive_with_no_certificate_is_refused() {
        let key = KeyPair::generate().expect("key");
        let chain = PrivateKeyChain::new(
            "id",
            PrivateKey::from_der(&key.serialize_der()).expect("pkcs8"),
            [],
        );
        let mut store = KeyStore::new();
        store.add_entry("key-only", KeyStoreEntry::PrivateKeyChain(chain));
        let p12 = archive(&store, PASSWORD);
        assert_eq!(
            archive_info(&p12, PASSWORD.as_bytes()),
            Err(CertificateError::ArchiveNoCertificate)
        );
        assert_eq!(
            archive_info(&archive(&KeyStore::new(), PASSWORD), PASSWORD.as_bytes()),
            Err(CertificateError::ArchiveNoCertificate)
        );
    }

    #[test]
    fn garbage_truncation_and_size_are_typed_errors() {
        let p12 = archive(&keystore(), PASSWORD);
        let pw = PASSWORD.as_bytes();
        assert_eq!(
            archive_info(b"", pw),
            Err(CertificateError::ArchiveNotPkcs12)
        );
        assert_eq!(
            archive_info(b"hello, not a PKCS#12 file", pw),
            Err(CertificateError::ArchiveNotPkcs12)
        );
        assert_eq!(
            archive_info(&p12[..p12.len() / 2], pw),
            Err(CertificateError::ArchiveNotPkcs12)
        );
        let mut trailing = p12.clone();
        trailing.push(0);
        assert_eq!(
            archive_info(&trailing, pw),
            Err(CertificateError::ArchiveNotPkcs12)
        );
        // A well-formed DER SEQUENCE that is no PFX.
        let not_pfx = vec![der::Any::from_der(&[5, 0]).expect("NULL")]
            .to_der()
            .expect("der");
        assert!(archive_info(&not_pfx, pw).is_err());

        assert_eq!(
            archive_info(&vec![0x30; limits::ARCHIVE + 1], pw),
            Err(CertificateError::ArchiveTooLarge)
        );
        let huge = vec![b'A'; 16 * 1024 * 1024];
        assert_eq!(
            archive_info_base64(&huge, pw),
            Err(CertificateError::ArchiveTooLarge)
        );
        assert_eq!(
            archive_info_base64(b"not base64 at all!", pw),
            Err(CertificateError::ArchiveNotBase64)
        );
        assert_eq!(
            archive_info_base64(b"aGVsbG8gd29ybGQ=", pw),
            Err(CertificateError::ArchiveNotPkcs12)
        );
    }

    #[test]
    fn error_messages_name_fields_and_never_values() {
        let p12 = archive(&keystore(), PASSWORD);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&p12);
        let mut cases = vec![
            archive_info(b"junk", PASSWORD.as_bytes()),
            archive_info(&p12, b"wrong"),
            archive_info_base64(b"%%%", PASSWORD.as_bytes()),
            pem_info("no pem here"),
        ];
        let mut flipped = p12.clone();
        flipped[p12.len() / 2] ^= 0x55;
        cases.push(archive_info(&flipped, PASSWORD.as_bytes()));
        for result in cases {
            let msg = result.expect_err("an error").to_string();
            assert!(
                msg.starts_with("certificateArchive.") || msg.starts_with("certificate.pem"),
                "{msg}"
            );
            assert!(!msg.contains(PASSWORD), "{msg}");
            assert!(!msg.contains(&b64[..16]), "{msg}");
        }
    }

    /// Flips and truncations of valid archives, with and without a MAC: every one returns,
    /// none panics.
    #[test]
    fn damaged_archives_never_panic() {
        let p12 = archive(&keystore(), PASSWORD);
        let bare = without_mac(&p12);
        let example = base64::engine::general_purpose::STANDARD
            .decode(example_archive_base64())
            .expect("base64");
        let pw = PASSWORD.as_bytes();
        for (archive, pw) in [(&p12, pw), (&bare, pw), (&example, b"changeit".as_slice())] {
            for cut in (0..archive.len()).step_by(7) {
                assert!(archive_info(&archive[..cut], pw).is_err());
            }
            for i in 0..archive.len() {
                for mask in [0x01, 0x80, 0xff] {
                    let mut damaged = archive.clone();
                    damaged[i] ^= mask;
                    let _ = archive_info(&damaged, pw);
                }
            }
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        fn bare() -> &'static [u8] {
            static BARE: OnceLock<Vec<u8>> = OnceLock::new();
            BARE.get_or_init(|| without_mac(&archive(&keystore(), PASSWORD)))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = archive_info(&bytes, PASSWORD.as_bytes());
                let _ = archive_info_base64(&bytes, PASSWORD.as_bytes());
                let _ = pem_info(&String::from_utf8_lossy(&bytes));
            }

            #[test]
            fn edited_archives_never_panic(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut damaged = bare().to_vec();
                for (at, byte) in edits {
                    let i = at.index(damaged.len());
                    damaged[i] = byte;
                }
                let _ = archive_info(&damaged, PASSWORD.as_bytes());
                let _ = archive_info(&damaged[..cut.index(damaged.len())], PASSWORD.as_bytes());
            }
        }
    }

    #[test]
    fn read_archive_runs_off_the_async_threads() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let archive = Plaintext::from(example_archive_base64().as_str());
        let info = runtime
            .block_on(read_archive(archive, Some(Plaintext::from("changeit"))))
            .expect("info");
        assert_eq!(
            info.subject.as_deref(),
            Some("O=Example Shop,CN=synthetic-bot")
        );
        let archive = Plaintext::from(example_archive_base64().as_str());
        assert_eq!(
            runtime.block_on(read_archive(archive, None)),
            Err(CertificateError::WrongPassword)
        );
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
