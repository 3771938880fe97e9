//! Archives made by p12-keystore (as users' tools make them), and hostile ones crafted here
//! with `der`: every bomb must be refused before a single key derivation runs.

use super::*;
use der::{Any, Encode as _};
use p12_keystore::{
    Certificate as P12Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, PrivateKey,
    PrivateKeyChain,
};
use rcgen::{
    CertificateParams, CertifiedIssuer, DistinguishedName, DnType, KeyPair, date_time_ymd,
};

const PASSWORD: &str = "s3cret-archive-pw-7d1e";

// --- archives as tools make them ---------------------------------------------------------

/// The throwaway archive of `examples/item-certificate-archive.yaml`, password `changeit`
/// (OpenSSL 3 defaults: PBES2, PBKDF2-SHA-256, AES-256-CBC, HMAC-SHA-256 MAC).
fn example_archive_base64() -> String {
    let yaml = include_str!("../../../examples/item-certificate-archive.yaml");
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

/// What [`keystore`] put in, to check what comes out.
struct Made {
    store: KeyStore,
    leaf_der: Vec<u8>,
    ca_der: Vec<u8>,
    other_der: Vec<u8>,
    leaf_key: KeyPair,
}

/// A leaf `CN=bot,O=Example` issued by `CN=Test CA,O=Example CA`, with its key, its CA and
/// an unrelated certificate stored first, so only the pairing by key id finds the leaf.
fn keystore() -> Made {
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
    Made {
        store,
        leaf_der: leaf.der().to_vec(),
        ca_der: ca.der().to_vec(),
        other_der: other.der().to_vec(),
        leaf_key,
    }
}

fn archive_with(store: &KeyStore, password: &str, algorithm: EncryptionAlgorithm) -> Vec<u8> {
    store
        .writer(password)
        .encryption_algorithm(algorithm)
        .encryption_iterations(16)
        .mac_iterations(16)
        .write()
        .expect("write PKCS#12")
}

fn archive(store: &KeyStore, password: &str) -> Vec<u8> {
    archive_with(
        store,
        password,
        EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
    )
}

/// The same PFX without its MAC: a wrong password then fails in decryption, and byte flips
/// reach the inner parsers instead of stopping at the MAC.
fn without_mac(pfx: &[u8]) -> Vec<u8> {
    let outer = Any::from_der(pfx).expect("pfx");
    let mut reader = SliceReader::new(outer.value()).expect("reader");
    let version: Any = reader.decode().expect("version");
    let auth_safe: Any = reader.decode().expect("authSafe");
    vec![version, auth_safe].to_der().expect("encode")
}

fn assert_leaf(facts: &CertificateFacts) {
    assert_eq!(facts.subject, "CN=bot,O=Example");
    assert_eq!(facts.issuer, "CN=Test CA,O=Example CA");
    assert_eq!(facts.not_before, 1_767_312_000, "2026-01-02T00:00:00Z");
    assert_eq!(facts.not_after, 1_804_118_400, "2027-03-04T00:00:00Z");
}

// --- archives crafted with der -------------------------------------------------------------

const DATA: &str = "1.2.840.113549.1.7.1";
const SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const ENVELOPED_DATA: &str = "1.2.840.113549.1.7.3";
const ENCRYPTED_DATA: &str = "1.2.840.113549.1.7.6";
const KEY_BAG: &str = "1.2.840.113549.1.12.10.1.1";
const SHROUDED_KEY_BAG: &str = "1.2.840.113549.1.12.10.1.2";
const CERT_BAG: &str = "1.2.840.113549.1.12.10.1.3";
const CRL_BAG: &str = "1.2.840.113549.1.12.10.1.4";
const SECRET_BAG: &str = "1.2.840.113549.1.12.10.1.5";
const SAFE_CONTENTS_BAG: &str = "1.2.840.113549.1.12.10.1.6";
const PBES2: &str = "1.2.840.113549.1.5.13";
const PBKDF2: &str = "1.2.840.113549.1.5.12";
const SCRYPT: &str = "1.3.6.1.4.1.11591.4.11";
/// Some KDF nobody here knows.
const UNKNOWN_KDF: &str = "1.3.6.1.4.1.99999.1.1";
const HMAC_SHA256: &str = "1.2.840.113549.2.9";
const AES256_CBC: &str = "2.16.840.1.101.3.4.1.42";
const LEGACY_3DES: &str = "1.2.840.113549.1.12.1.3";
const SHA256_DIGEST: &str = "2.16.840.1.101.3.4.2.1";
const PBMAC1_OID: &str = "1.2.840.113549.1.5.14";

fn tlv(tag: Tag, content: &[u8]) -> Vec<u8> {
    Any::new(tag, content.to_vec())
        .expect("any")
        .to_der()
        .expect("der")
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(Tag::Sequence, &parts.concat())
}

fn oid(id: &str) -> Vec<u8> {
    ObjectIdentifier::new(id)
        .expect("oid")
        .to_der()
        .expect("der")
}

fn octets(bytes: &[u8]) -> Vec<u8> {
    tlv(Tag::OctetString, bytes)
}

fn int(n: u64) -> Vec<u8> {
    n.to_der().expect("integer")
}

fn null() -> Vec<u8> {
    tlv(Tag::Null, &[])
}

fn explicit0(inner: &[u8]) -> Vec<u8> {
    let tag = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber(0),
    };
    tlv(tag, inner)
}

fn implicit0(bytes: &[u8]) -> Vec<u8> {
    let tag = Tag::ContextSpecific {
        constructed: false,
        number: TagNumber(0),
    };
    tlv(tag, bytes)
}

/// PFX { version 3, authSafe: data(SEQUENCE OF `safes`), `mac` }.
fn pfx(safes: &[Vec<u8>], mac: Option<Vec<u8>>) -> Vec<u8> {
    let auth_safe = seq(&[oid(DATA), explicit0(&octets(&seq(safes)))]);
    let mut parts = vec![int(3), auth_safe];
    parts.extend(mac);
    seq(&parts)
}

fn data_safe(bags: &[Vec<u8>]) -> Vec<u8> {
    seq(&[oid(DATA), explicit0(&octets(&seq(bags)))])
}

fn encrypted_safe(algorithm: Vec<u8>, ciphertext: &[u8]) -> Vec<u8> {
    let content = seq(&[oid(DATA), algorithm, implicit0(ciphertext)]);
    seq(&[oid(ENCRYPTED_DATA), explicit0(&seq(&[int(0), content]))])
}

fn bag(id: &str, value: Vec<u8>) -> Vec<u8> {
    seq(&[oid(id), explicit0(&value)])
}

fn crl_bag() -> Vec<u8> {
    bag(
        CRL_BAG,
        seq(&[oid("1.2.840.113549.1.9.23.1"), explicit0(&octets(b"crl"))]),
    )
}

fn shrouded_key_bag(algorithm: Vec<u8>) -> Vec<u8> {
    bag(SHROUDED_KEY_BAG, seq(&[algorithm, octets(&[0x42; 48])]))
}

fn nested_bag(bags: &[Vec<u8>]) -> Vec<u8> {
    bag(SAFE_CONTENTS_BAG, seq(bags))
}

fn pbes2_with(kdf: Vec<u8>) -> Vec<u8> {
    let cipher = seq(&[oid(AES256_CBC), octets(&[9; 16])]);
    seq(&[oid(PBES2), seq(&[kdf, cipher])])
}

fn pbkdf2(iterations: u64) -> Vec<u8> {
    let prf = seq(&[oid(HMAC_SHA256), null()]);
    pbes2_with(seq(&[
        oid(PBKDF2),
        seq(&[octets(&[7; 16]), int(iterations), prf]),
    ]))
}

/// scrypt with N = 2^`log_n`: 128·N·r bytes of memory per derivation.
fn scrypt(log_n: u32, r: u64, p: u64) -> Vec<u8> {
    pbes2_with(seq(&[
        oid(SCRYPT),
        seq(&[octets(&[7; 16]), int(1 << log_n), int(r), int(p)]),
    ]))
}

fn unknown_kdf() -> Vec<u8> {
    pbes2_with(seq(&[oid(UNKNOWN_KDF), seq(&[octets(&[7; 16]), int(1)])]))
}

fn legacy_3des(iterations: u64) -> Vec<u8> {
    seq(&[oid(LEGACY_3DES), seq(&[octets(&[5; 20]), int(iterations)])])
}

fn mac_data(iterations: u64) -> Vec<u8> {
    let digest = seq(&[seq(&[oid(SHA256_DIGEST), null()]), octets(&[0; 32])]);
    seq(&[digest, octets(&[1; 8]), int(iterations)])
}

/// A real PBES2 safe (PBKDF2, one iteration, AES-256-CBC) around `safe_contents`.
fn really_encrypted_safe(safe_contents: &[u8]) -> Vec<u8> {
    let params =
        pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(1, &[3; 16], [4; 16]).expect("params");
    let ciphertext = params.encrypt(PASSWORD, safe_contents).expect("encrypt");
    let algorithm = seq(&[oid(PBES2), params.to_der().expect("params der")]);
    encrypted_safe(algorithm, &ciphertext)
}

fn derivations_run() -> usize {
    DERIVATIONS_RUN.with(|n| n.get())
}

/// Runs `read`, checking that every key derivation it ran was charged to its ledger first.
fn paid_for<T>(read: impl FnOnce() -> T) -> T {
    let (run, paid) = (derivations_run(), DERIVATIONS_PAID.with(|n| n.get()));
    let outcome = read();
    let ran = derivations_run() - run;
    let charged = DERIVATIONS_PAID.with(|n| n.get()) - paid;
    assert!(
        ran <= charged,
        "{ran} key derivations ran, {charged} were paid for"
    );
    outcome
}

/// The error a full read gives, checked to come before any key derivation ran, and to be
/// what the walk alone says too.
fn refused_up_front(archive: &[u8]) -> ArchiveError {
    let before = derivations_run();
    let read = certificate_facts(archive, PASSWORD.as_bytes()).expect_err("refused");
    assert_eq!(derivations_run(), before, "a key derivation ran: {read}");
    assert_eq!(inspect(archive), Err(read.clone()), "the walk agrees");
    read
}

fn assert_names(error: &ArchiveError, phrase: &str) {
    let message = error.to_string();
    assert!(
        message.contains(phrase),
        "{message:?} does not say {phrase:?}"
    );
    assert!(!message.contains(PASSWORD), "{message}");
}

// --- reading --------------------------------------------------------------------------------

#[test]
fn a_generated_archive_is_read_with_and_without_its_mac() {
    let made = keystore();
    let p12 = archive(&made.store, PASSWORD);
    let before = derivations_run();
    assert_leaf(&paid_for(|| certificate_facts(&p12, PASSWORD.as_bytes())).expect("facts"));
    assert_eq!(derivations_run() - before, 3, "MAC, certificate safe, key");
    let bare = without_mac(&p12);
    assert_leaf(&paid_for(|| certificate_facts(&bare, PASSWORD.as_bytes())).expect("no MAC"));
    let seen = inspect(&p12).expect("inspect");
    assert_eq!(
        seen.bags, 1,
        "the shrouded key; the certificates are encrypted"
    );
    assert_eq!(seen.encrypted_safes, 1);
    assert_eq!(seen.derivations, 3, "MAC, certificate safe, key");
    assert_eq!(seen.iterations, 48);
    assert!(seen.mac);
}

#[test]
fn the_legacy_sha1_3des_and_rc2_schemes_are_read() {
    let made = keystore();
    for algorithm in [
        EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
        // p12-keystore's name; the OID is pbeWithSHAAnd40BitRC2-CBC.
        EncryptionAlgorithm::PbeWithShaAnd40BitRc4Cbc,
    ] {
        let p12 = archive_with(&made.store, PASSWORD, algorithm);
        assert_leaf(&paid_for(|| certificate_facts(&p12, PASSWORD.as_bytes())).expect("facts"));
        // Key and IV: two PKCS#12 KDF runs for each of the two encrypted parts, plus the MAC.
        assert_eq!(inspect(&p12).expect("inspect").derivations, 5);
        assert_eq!(
            certificate_facts(&without_mac(&p12), b"wrong"),
            Err(ArchiveError::WrongPassword)
        );
    }
}

#[test]
fn the_example_archive_is_read() {
    let der = archive_der(example_archive_base64().as_bytes()).expect("der");
    let facts = certificate_facts(&der, b"changeit").expect("example archive opens");
    assert_eq!(facts.subject, "O=Example Shop,CN=synthetic-bot");
    assert_eq!(facts.issuer, facts.subject, "self-signed");
    assert_eq!(facts.not_before, 1_795_813_919, "2026-11-27T21:11:59Z");
    assert_eq!(facts.not_after, 2_111_173_919, "2036-11-24T21:11:59Z");
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
    let p12 = archive(&store, PASSWORD);
    let facts = certificate_facts(&p12, PASSWORD.as_bytes()).expect("facts");
    assert_eq!(facts.subject, "CN=only,O=Trust");
    assert_eq!(
        identity(&p12, PASSWORD.as_bytes()).map(|_| ()),
        Err(ArchiveError::NoKey)
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
        certificate_facts(&p12, PASSWORD.as_bytes()),
        Err(ArchiveError::NoCertificate)
    );
    assert_eq!(
        identity(&p12, PASSWORD.as_bytes()).map(|_| ()),
        Err(ArchiveError::NoCertificate)
    );
    assert_eq!(
        certificate_facts(&archive(&KeyStore::new(), PASSWORD), PASSWORD.as_bytes()),
        Err(ArchiveError::NoCertificate)
    );
}

#[test]
fn a_wrong_password_is_named_and_not_echoed() {
    let p12 = archive(&keystore().store, PASSWORD);
    for archive in [p12.clone(), without_mac(&p12)] {
        let err = certificate_facts(&archive, b"wrong-password-91c3").expect_err("wrong");
        assert_eq!(err, ArchiveError::WrongPassword);
        let msg = err.to_string();
        assert_eq!(msg, "certificateArchive.password does not open the archive");
        assert!(!msg.contains("wrong-password-91c3") && !msg.contains(PASSWORD));
    }
    let example = archive_der(example_archive_base64().as_bytes()).expect("der");
    for wrong in [b"changeme".as_slice(), b""] {
        assert_eq!(
            certificate_facts(&example, wrong),
            Err(ArchiveError::WrongPassword)
        );
    }
    assert_eq!(
        certificate_facts(&p12, &[0xff, 0xfe]),
        Err(ArchiveError::PasswordNotText)
    );
    // The PKCS#12 KDF encodes the password as UTF-16 without surrogates.
    assert_eq!(
        certificate_facts(&p12, "pass🔑word".as_bytes()),
        Err(ArchiveError::PasswordNotBmp)
    );
}

// --- raw DER or base64 ----------------------------------------------------------------------

#[test]
fn an_archive_is_taken_as_raw_der_or_as_base64_with_line_breaks() {
    let p12 = archive(&keystore().store, PASSWORD);
    let text = base64::engine::general_purpose::STANDARD.encode(&p12);
    let wrapped: Vec<u8> = text
        .as_bytes()
        .chunks(64)
        .flat_map(|line| line.iter().copied().chain(*b"\r\n"))
        .collect();
    assert_eq!(*archive_der(&p12).expect("raw"), p12);
    assert_eq!(*archive_der(text.as_bytes()).expect("base64"), p12);
    assert_eq!(*archive_der(&wrapped).expect("wrapped"), p12);
    assert_leaf(
        &certificate_facts(&archive_der(&wrapped).expect("der"), PASSWORD.as_bytes())
            .expect("facts"),
    );
}

#[test]
fn input_that_is_neither_der_nor_base64_or_too_large_is_refused() {
    let p12 = archive(&keystore().store, PASSWORD);
    assert_eq!(
        archive_der(b"not base64 at all!").map(|_| ()),
        Err(ArchiveError::NotDerOrBase64)
    );
    // Cut short or followed by a byte, raw DER is no longer one SEQUENCE spanning the input.
    let mut trailing = p12.clone();
    trailing.push(0);
    for damaged in [&p12[..p12.len() / 2], &trailing[..]] {
        assert_eq!(
            archive_der(damaged).map(|_| ()),
            Err(ArchiveError::NotDerOrBase64)
        );
    }
    let hello = archive_der(b"aGVsbG8gd29ybGQ=").expect("base64 of text");
    assert_eq!(inspect(&hello), Err(ArchiveError::NotPkcs12));
    assert_eq!(
        archive_der(&vec![b'A'; MAX_ARCHIVE_TEXT + 1]).map(|_| ()),
        Err(ArchiveError::TooLarge)
    );
    // 64 KiB of base64 holds exactly the largest archive.
    let largest = base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_ARCHIVE_BYTES]);
    assert_eq!(largest.len(), MAX_ARCHIVE_TEXT);
    assert!(archive_der(largest.as_bytes()).is_ok());
    let big_der = tlv(Tag::Sequence, &vec![0; MAX_ARCHIVE_BYTES]);
    assert_eq!(
        archive_der(&big_der).map(|_| ()),
        Err(ArchiveError::TooLarge)
    );
    assert_eq!(inspect(&big_der), Err(ArchiveError::TooLarge));
    assert_names(&ArchiveError::TooLarge, "at most 49152 bytes");
}

#[test]
fn garbage_is_refused_with_a_typed_error() {
    assert_eq!(inspect(b""), Err(ArchiveError::NotPkcs12));
    assert_eq!(
        inspect(b"hello, not a PKCS#12 file"),
        Err(ArchiveError::NotPkcs12)
    );
    // A well-formed DER SEQUENCE that is no PFX.
    assert_eq!(inspect(&seq(&[null()])), Err(ArchiveError::NotPkcs12));
    // A PFX whose authSafe holds no SEQUENCE OF ContentInfo.
    let auth_safe = seq(&[oid(DATA), explicit0(&octets(b"\x01\x02garbage"))]);
    assert_eq!(
        inspect(&seq(&[int(3), auth_safe])),
        Err(ArchiveError::Damaged)
    );
    // A bag that is not what its type says.
    let bad_bag = pfx(&[data_safe(&[bag(SHROUDED_KEY_BAG, null())])], None);
    assert_eq!(inspect(&bad_bag), Err(ArchiveError::Damaged));
    let bad_key = pfx(&[data_safe(&[bag(KEY_BAG, seq(&[int(0)]))])], None);
    assert_eq!(inspect(&bad_key), Err(ArchiveError::BadKey));
    // Version 2 is no PKCS#12 v1.1 PFX.
    let v2 = seq(&[int(2), seq(&[oid(DATA), explicit0(&octets(&seq(&[])))])]);
    assert_eq!(inspect(&v2), Err(ArchiveError::NotPkcs12));
}

// --- the bombs ------------------------------------------------------------------------------

#[test]
fn hundreds_of_scrypt_bags_are_refused_before_any_key_derivation() {
    // The reported attack: a small archive with no MAC carrying hundreds of bags, each a
    // 1 GiB scrypt derivation (N = 2^20, r = 8).
    let bags: Vec<Vec<u8>> = (0..300)
        .map(|_| shrouded_key_bag(scrypt(20, 8, 1)))
        .collect();
    let bomb = pfx(&[data_safe(&bags)], None);
    assert!(bomb.len() < MAX_ARCHIVE_BYTES, "{} bytes", bomb.len());
    let err = refused_up_front(&bomb);
    assert_eq!(err, ArchiveError::Scrypt);
    assert_names(&err, "scrypt is not accepted");
    assert!(err.is_limit());
    // One cheap scrypt bag is refused too: the function, not its cost, is the rule.
    let one = pfx(&[data_safe(&[shrouded_key_bag(scrypt(1, 1, 1))])], None);
    assert_eq!(refused_up_front(&one), ArchiveError::Scrypt);
}

#[test]
fn scrypt_on_an_encrypted_safe_is_refused_too() {
    let bomb = pfx(&[encrypted_safe(scrypt(20, 8, 1), &[0; 64])], None);
    assert_eq!(refused_up_front(&bomb), ArchiveError::Scrypt);
}

#[test]
fn any_kdf_but_pbkdf2_and_the_pkcs12_kdf_is_refused() {
    let bomb = pfx(&[data_safe(&[shrouded_key_bag(unknown_kdf())])], None);
    let err = refused_up_front(&bomb);
    assert_eq!(err, ArchiveError::OtherKdf);
    assert_names(&err, "only PBKDF2 and the PKCS#12 KDF are accepted");
}

#[test]
fn too_many_bags_are_refused_and_the_limit_is_named() {
    let at_limit: Vec<Vec<u8>> = (0..MAX_BAGS).map(|_| crl_bag()).collect();
    assert_eq!(
        inspect(&pfx(&[data_safe(&at_limit)], None)).map(|i| i.bags),
        Ok(MAX_BAGS)
    );
    let over: Vec<Vec<u8>> = (0..=MAX_BAGS).map(|_| crl_bag()).collect();
    let err = refused_up_front(&pfx(&[data_safe(&over)], None));
    assert_eq!(err, ArchiveError::TooManyBags);
    assert_names(&err, "at most 64 bags");
    // Bags count across safes and nesting: 40 at the top and 40 nested.
    let forty: Vec<Vec<u8>> = (0..40)
        .map(|_| bag(SECRET_BAG, seq(&[oid(DATA)])))
        .collect();
    let mut spread = forty.clone();
    spread.push(nested_bag(&forty));
    assert_eq!(
        refused_up_front(&pfx(&[data_safe(&spread)], None)),
        ArchiveError::TooManyBags
    );
    let split = pfx(&[data_safe(&forty), data_safe(&forty)], None);
    assert_eq!(refused_up_front(&split), ArchiveError::TooManyBags);
}

#[test]
fn nesting_safe_contents_too_deep_is_refused() {
    let nest = |depth: usize| {
        let mut inner = vec![crl_bag()];
        for _ in 0..depth {
            inner = vec![nested_bag(&inner)];
        }
        pfx(&[data_safe(&inner)], None)
    };
    assert!(inspect(&nest(MAX_NESTING)).is_ok());
    let err = refused_up_front(&nest(MAX_NESTING + 1));
    assert_eq!(err, ArchiveError::TooDeep);
    assert_names(&err, "at most 3 levels of nested safeContents");
    // Far deeper than any stack would like: refused at the cap, not by running out of stack.
    assert_eq!(refused_up_front(&nest(500)), ArchiveError::TooDeep);
}

#[test]
fn a_derivation_over_the_iteration_cap_is_refused() {
    let at_cap = pfx(
        &[data_safe(&[shrouded_key_bag(pbkdf2(MAX_ITERATIONS))])],
        None,
    );
    assert_eq!(inspect(&at_cap).map(|i| i.iterations), Ok(MAX_ITERATIONS));
    for huge in [MAX_ITERATIONS + 1, u64::from(u32::MAX)] {
        let bomb = pfx(&[data_safe(&[shrouded_key_bag(pbkdf2(huge))])], None);
        let err = refused_up_front(&bomb);
        assert_eq!(err, ArchiveError::TooManyIterations);
        assert_names(&err, "at most 1000000 key-derivation iterations each");
    }
    let legacy = pfx(
        &[encrypted_safe(legacy_3des(MAX_ITERATIONS + 1), &[0; 64])],
        None,
    );
    assert_eq!(refused_up_front(&legacy), ArchiveError::TooManyIterations);
    let mac = pfx(
        &[data_safe(&[crl_bag()])],
        Some(mac_data(MAX_ITERATIONS + 1)),
    );
    assert_eq!(refused_up_front(&mac), ArchiveError::TooManyIterations);
    let zero = pfx(&[data_safe(&[shrouded_key_bag(pbkdf2(0))])], None);
    assert_eq!(refused_up_front(&zero), ArchiveError::Parameters);
}

#[test]
fn iterations_are_capped_in_total_mac_and_legacy_iv_included() {
    let bags = |n: usize, iterations: u64| -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| shrouded_key_bag(pbkdf2(iterations)))
            .collect()
    };
    let four = pfx(&[data_safe(&bags(4, MAX_ITERATIONS))], None);
    assert_eq!(
        inspect(&four).map(|i| i.iterations),
        Ok(MAX_TOTAL_ITERATIONS)
    );
    let five = pfx(&[data_safe(&bags(5, MAX_ITERATIONS))], None);
    let err = refused_up_front(&five);
    assert_eq!(err, ArchiveError::TooManyIterationsInTotal);
    assert_names(&err, "at most 4000000 key-derivation iterations in total");
    // The MAC's derivation is one of them.
    let with_mac = pfx(&[data_safe(&bags(4, MAX_ITERATIONS))], Some(mac_data(1)));
    assert_eq!(
        refused_up_front(&with_mac),
        ArchiveError::TooManyIterationsInTotal
    );
    // A legacy scheme derives twice (key and IV): three at 700,000 are 4.2 million.
    let legacy: Vec<Vec<u8>> = (0..3)
        .map(|_| shrouded_key_bag(legacy_3des(700_000)))
        .collect();
    assert_eq!(
        refused_up_front(&pfx(&[data_safe(&legacy)], None)),
        ArchiveError::TooManyIterationsInTotal
    );
}

#[test]
fn unsupported_structures_are_named() {
    let pbmac1 = seq(&[
        seq(&[seq(&[oid(PBMAC1_OID), seq(&[])]), octets(&[0; 32])]),
        octets(&[1; 8]),
        int(1),
    ]);
    let cases = [
        (
            pfx(&[data_safe(&[crl_bag()])], Some(pbmac1)),
            "the PBMAC1 MAC",
        ),
        (
            pfx(
                &[seq(&[oid(ENVELOPED_DATA), explicit0(&seq(&[int(0)]))])],
                None,
            ),
            "envelopedData",
        ),
        (
            seq(&[int(3), seq(&[oid(SIGNED_DATA), explicit0(&seq(&[int(1)]))])]),
            "signedData",
        ),
        (
            pfx(
                &[encrypted_safe(
                    seq(&[oid("1.2.840.113549.1.5.3"), seq(&[octets(&[1; 8]), int(1)])]),
                    &[0; 16],
                )],
                None,
            ),
            "an unknown encryption scheme",
        ),
    ];
    for (archive, phrase) in cases {
        let err = refused_up_front(&archive);
        assert!(matches!(err, ArchiveError::Unsupported(_)), "{err}");
        assert_names(&err, phrase);
    }
}

#[test]
fn a_bomb_hidden_in_an_encrypted_safe_is_refused_after_the_one_derivation_that_opens_it() {
    // The walk cannot see into an encrypted safe: it counts the safe's one derivation.
    let scrypt_bags: Vec<Vec<u8>> = (0..20)
        .map(|_| shrouded_key_bag(scrypt(20, 8, 1)))
        .collect();
    let many_bags: Vec<Vec<u8>> = (0..100).map(|_| crl_bag()).collect();
    let costly: Vec<Vec<u8>> = (0..4)
        .map(|_| shrouded_key_bag(pbkdf2(MAX_ITERATIONS)))
        .collect();
    for (inner, expected) in [
        (scrypt_bags, ArchiveError::Scrypt),
        (many_bags, ArchiveError::TooManyBags),
        (costly, ArchiveError::TooManyIterationsInTotal),
    ] {
        let bomb = pfx(&[really_encrypted_safe(&seq(&inner))], None);
        let seen = inspect(&bomb).expect("the walk sees only the outer layer");
        assert_eq!(
            (seen.bags, seen.encrypted_safes, seen.derivations),
            (0, 1, 1)
        );
        let before = derivations_run();
        assert_eq!(certificate_facts(&bomb, PASSWORD.as_bytes()), Err(expected));
        assert_eq!(
            derivations_run() - before,
            1,
            "only the safe's own derivation ran"
        );
    }
}

// --- identity -------------------------------------------------------------------------------

#[test]
fn identity_is_the_paired_leaf_then_the_rest_with_a_key_rustls_accepts() {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let made = keystore();
    for p12 in [
        archive(&made.store, PASSWORD),
        archive_with(
            &made.store,
            PASSWORD,
            EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
        ),
    ] {
        let identity = identity(&p12, PASSWORD.as_bytes()).expect("identity");
        assert_eq!(identity.chain_der.len(), 3);
        assert_eq!(identity.chain_der[0], made.leaf_der, "the leaf comes first");
        assert!(identity.chain_der.contains(&made.ca_der));
        assert!(identity.chain_der.contains(&made.other_der));
        assert_eq!(
            *identity.private_key_pkcs8_der,
            made.leaf_key.serialize_der()
        );

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            identity.private_key_pkcs8_der.to_vec(),
        ));
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).expect("rustls key");
        let leaf = x509_cert::Certificate::from_der(&identity.chain_der[0]).expect("leaf");
        let leaf_spki = leaf
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .expect("spki");
        let key_spki = signer.public_key().expect("public key");
        assert_eq!(
            key_spki.as_ref(),
            leaf_spki.as_slice(),
            "the key is the leaf's"
        );

        let debug = format!("{identity:?}");
        assert!(
            debug.contains("[redacted]") && debug.contains("3 certificates"),
            "{debug}"
        );
    }
}

#[test]
fn identity_needs_the_password_and_a_paired_key() {
    let made = keystore();
    let p12 = archive(&made.store, PASSWORD);
    assert_eq!(
        identity(&p12, b"wrong").map(|_| ()),
        Err(ArchiveError::WrongPassword)
    );
    // One key and two certificates with no localKeyId to pair them: no guessing.
    let key = KeyPair::generate().expect("key");
    let keybag = bag(KEY_BAG, key.serialize_der());
    let cert_bag = |der: &[u8]| {
        bag(
            CERT_BAG,
            seq(&[oid("1.2.840.113549.1.9.22.1"), explicit0(&octets(der))]),
        )
    };
    let two = pfx(
        &[data_safe(&[
            keybag.clone(),
            cert_bag(&made.leaf_der),
            cert_bag(&made.ca_der),
        ])],
        None,
    );
    assert_eq!(
        identity(&two, PASSWORD.as_bytes()).map(|_| ()),
        Err(ArchiveError::KeyNotPaired)
    );
    // One key and one certificate pair by themselves.
    let one = pfx(&[data_safe(&[keybag, cert_bag(&made.leaf_der)])], None);
    let identity = identity(&one, PASSWORD.as_bytes()).expect("identity");
    assert_eq!(identity.chain_der, vec![made.leaf_der.clone()]);
    assert_eq!(*identity.private_key_pkcs8_der, key.serialize_der());
}

// --- damage ---------------------------------------------------------------------------------

/// Flips and truncations of valid archives, with and without a MAC: every one returns, none
/// panics.
#[test]
fn damaged_archives_never_panic() {
    let p12 = archive(&keystore().store, PASSWORD);
    let bare = without_mac(&p12);
    let example = base64::engine::general_purpose::STANDARD
        .decode(example_archive_base64())
        .expect("base64");
    let pw = PASSWORD.as_bytes();
    for (archive, pw) in [(&p12, pw), (&bare, pw), (&example, b"changeit".as_slice())] {
        for cut in (0..archive.len()).step_by(7) {
            assert!(certificate_facts(&archive[..cut], pw).is_err());
        }
        for i in 0..archive.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut damaged = archive.clone();
                damaged[i] ^= mask;
                let _ = inspect(&damaged);
                let _ = identity(&damaged, pw);
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
        BARE.get_or_init(|| without_mac(&archive(&keystore().store, PASSWORD)))
    }

    fn bare_legacy() -> &'static [u8] {
        static BARE: OnceLock<Vec<u8>> = OnceLock::new();
        BARE.get_or_init(|| {
            let algorithm = EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc;
            without_mac(&archive_with(&keystore().store, PASSWORD, algorithm))
        })
    }

    /// A crafted archive with every kind of safe and bag, nesting included, and no MAC.
    fn crafted() -> &'static [u8] {
        static CRAFTED: OnceLock<Vec<u8>> = OnceLock::new();
        CRAFTED.get_or_init(|| {
            let inner = seq(&[crl_bag(), nested_bag(&[shrouded_key_bag(legacy_3des(1))])]);
            let bags = vec![
                crl_bag(),
                nested_bag(&[crl_bag(), bag(SECRET_BAG, seq(&[oid(DATA)]))]),
                shrouded_key_bag(pbkdf2(1)),
            ];
            pfx(&[really_encrypted_safe(&inner), data_safe(&bags)], None)
        })
    }

    fn damage(archive: &[u8], edits: Vec<(prop::sample::Index, u8)>) -> Vec<u8> {
        let mut damaged = archive.to_vec();
        for (at, byte) in edits {
            let i = at.index(damaged.len());
            damaged[i] = byte;
        }
        damaged
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = inspect(&bytes);
            let _ = identity(&bytes, PASSWORD.as_bytes());
            if let Ok(der) = archive_der(&bytes) {
                let _ = certificate_facts(&der, PASSWORD.as_bytes());
            }
        }

        #[test]
        fn edited_archives_never_panic_and_stay_within_the_limits(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            for archive in [bare(), bare_legacy(), crafted()] {
                let damaged = damage(archive, edits.clone());
                // However the edits fell, every derivation a read runs was paid for first.
                let _ = paid_for(|| identity(&damaged, PASSWORD.as_bytes()));
                let _ = paid_for(|| certificate_facts(&damaged, PASSWORD.as_bytes()));
                let _ = inspect(&damaged[..cut.index(damaged.len())]);
            }
        }
    }
}
