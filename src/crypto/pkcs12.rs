//! PKCS#12 archives (the write-only field of `CertificateArchive` items) as hostile input:
//! what an archive may cost to read, the public facts of its certificate, and the client
//! identity (key and chain) a monitor presents for mTLS.
//!
//! Every archive is walked before any key is derived ([`inspect`]): its ASN.1 from the PFX
//! down to every bag (nested `safeContentsBag`s too), every algorithm identifier and the MAC.
//! The walk refuses scrypt and every key-derivation function but PBKDF2 and the PKCS#12
//! KDF, and holds the archive to [`MAX_ARCHIVE_BYTES`], [`MAX_BAGS`], [`MAX_NESTING`],
//! [`MAX_ITERATIONS`] per derivation and [`MAX_TOTAL_ITERATIONS`] in all, MAC included. It
//! derives no key, so it is cheap: the admission webhook runs it on every archive it sees.
//!
//! The bags inside an encrypted safe (`encryptedData`) cannot be seen until that safe is
//! decrypted. So reading ([`certificate_facts`], [`identity`]) walks each decrypted safe on
//! the same budget before it derives a key for anything in it. Every derivation is charged
//! before it runs, whichever layer of the archive asks for it.
//!
//! What it must never do: run a key derivation the budget has not paid for; put a password,
//! a key or a byte of the archive in an error (messages name the field and the limit); hold
//! key bytes outside a [`Zeroizing`] buffer; panic on any input.

use std::fmt;

use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Header, Reader as _, SliceReader, Tag, TagNumber, Tagged as _};
use hmac::digest::{FixedOutputReset, OutputSizeUser};
use hmac::{EagerHash, Hmac, KeyInit, Mac};
use pkcs5::pbes2;
use x509_cert::spki::{AlgorithmIdentifierOwned, AlgorithmIdentifierRef};
use zeroize::Zeroizing;

use ::pkcs12::kdf::{self, Pkcs12KeyType};

/// The largest archive, in DER bytes: what 64 KiB of base64 decodes to.
pub const MAX_ARCHIVE_BYTES: usize = 48 * 1024;
/// The largest archive as written: base64 text (line breaks included) or DER.
pub const MAX_ARCHIVE_TEXT: usize = 64 * 1024;
/// Bags in the whole archive, nested ones and those in encrypted safes included. A client
/// identity is one key and its chain; 64 leaves room for a long chain and a CA bundle.
pub const MAX_BAGS: usize = 64;
/// How deep `safeContentsBag`s may nest inside each other.
pub const MAX_NESTING: usize = 3;
/// Iterations of one key derivation (PBKDF2 or the PKCS#12 KDF); p12-keystore's cap too.
pub const MAX_ITERATIONS: u64 = 1_000_000;
/// Iterations of all key derivations of one archive together, the MAC's included: four
/// derivations at the cap, while common tools use a few thousand for each of three.
pub const MAX_TOTAL_ITERATIONS: u64 = 4_000_000;

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
const ID_ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const LOCAL_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.21");
const PBMAC1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.14");
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA224: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.4");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const SHA512_224: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.5");
const SHA512_256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.6");

/// Why an archive is refused. Messages name the field and the limit, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "certificateArchive.archive is too large: at most {MAX_ARCHIVE_BYTES} bytes of PKCS#12, {MAX_ARCHIVE_TEXT} characters as base64"
    )]
    TooLarge,
    #[error("certificateArchive.archive is neither a PKCS#12 file (DER) nor base64 text")]
    NotDerOrBase64,
    #[error("certificateArchive.archive is not a PKCS#12 file")]
    NotPkcs12,
    #[error("certificateArchive.archive is damaged: its PKCS#12 contents do not parse")]
    Damaged,
    #[error("certificateArchive.password does not open the archive")]
    WrongPassword,
    #[error("certificateArchive.password is not UTF-8 text")]
    PasswordNotText,
    #[error(
        "certificateArchive.password has characters the PKCS#12 key derivation cannot encode (outside the Basic Multilingual Plane)"
    )]
    PasswordNotBmp,
    #[error("certificateArchive.archive holds too many bags: at most {MAX_BAGS} bags")]
    TooManyBags,
    #[error(
        "certificateArchive.archive nests safeContents too deep: at most {MAX_NESTING} levels of nested safeContents"
    )]
    TooDeep,
    #[error(
        "certificateArchive.archive derives a key with scrypt: scrypt is not accepted (use PBKDF2)"
    )]
    Scrypt,
    #[error(
        "certificateArchive.archive derives a key with an unknown function: only PBKDF2 and the PKCS#12 KDF are accepted"
    )]
    OtherKdf,
    #[error(
        "certificateArchive.archive asks too much of one key derivation: at most {MAX_ITERATIONS} key-derivation iterations each"
    )]
    TooManyIterations,
    #[error(
        "certificateArchive.archive asks too much of its key derivations together (MAC included): at most {MAX_TOTAL_ITERATIONS} key-derivation iterations in total"
    )]
    TooManyIterationsInTotal,
    #[error(
        "certificateArchive.archive uses {0}, which is not supported (use PBES2 with AES and PBKDF2, or the legacy SHA-1 3DES/RC2 schemes, and an HMAC MAC)"
    )]
    Unsupported(&'static str),
    #[error("certificateArchive.archive has missing or invalid encryption parameters")]
    Parameters,
    #[error("certificateArchive.archive holds no certificate")]
    NoCertificate,
    #[error("certificateArchive.archive holds a certificate that is not valid X.509")]
    BadCertificate,
    #[error("certificateArchive.archive holds a private key that is not valid PKCS#8")]
    BadKey,
    #[error("certificateArchive.archive holds no private key: a client certificate needs one")]
    NoKey,
    #[error(
        "certificateArchive.archive holds no private key paired with a certificate: give the key and its certificate the same localKeyId"
    )]
    KeyNotPaired,
}

impl ArchiveError {
    /// Whether the archive was refused for what reading it would cost (a limit), rather
    /// than for being unreadable.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            ArchiveError::TooLarge
                | ArchiveError::TooManyBags
                | ArchiveError::TooDeep
                | ArchiveError::Scrypt
                | ArchiveError::OtherKdf
                | ArchiveError::TooManyIterations
                | ArchiveError::TooManyIterationsInTotal
        )
    }
}

/// What the walk saw of an archive without a password: the layer outside its encrypted
/// safes. Structure only, nothing secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    /// Bags outside encrypted safes.
    pub bags: usize,
    /// Encrypted safes, whose bags only a read with the password can count.
    pub encrypted_safes: usize,
    /// Key derivations a read runs at least (MAC, encrypted safes, shrouded keys).
    pub derivations: usize,
    /// Their iterations together.
    pub iterations: u64,
    /// Whether the archive has a MAC.
    pub mac: bool,
}

/// The public facts of a certificate. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// RFC 4514, e.g. `CN=bot,O=Example`.
    pub subject: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// A TLS client identity: the private key and the certificate chain, leaf first.
pub struct ClientIdentity {
    /// PKCS#8 DER of the key paired with the leaf.
    pub private_key_pkcs8_der: Zeroizing<Vec<u8>>,
    /// DER certificates: the leaf (paired with the key by localKeyId), then the others in
    /// archive order.
    pub chain_der: Vec<Vec<u8>>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("private_key_pkcs8_der", &"[redacted]")
            .field(
                "chain_der",
                &format_args!("{} certificates", self.chain_der.len()),
            )
            .finish()
    }
}

/// The archive's DER from `certificateArchive.archive` as written: DER if the input is one
/// DER SEQUENCE spanning all of it (a raw `.p12` sealed with `monivault seal --from-file`),
/// else base64 text, line breaks allowed. Only ever held in buffers that wipe themselves.
pub fn archive_der(input: &[u8]) -> Result<Zeroizing<Vec<u8>>, ArchiveError> {
    if input.len() > MAX_ARCHIVE_TEXT {
        return Err(ArchiveError::TooLarge);
    }
    if matches!(AnyRef::from_der(input), Ok(any) if any.tag() == Tag::Sequence) {
        if input.len() > MAX_ARCHIVE_BYTES {
            return Err(ArchiveError::TooLarge);
        }
        return Ok(Zeroizing::new(input.to_vec()));
    }
    let mut text = Zeroizing::new(Vec::with_capacity(input.len()));
    text.extend(input.iter().copied().filter(|b| !b.is_ascii_whitespace()));
    // Room for all of it up front: a buffer that grew would leave a copy behind.
    let mut der = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    base64::engine::general_purpose::STANDARD
        .decode_vec(text.as_slice(), &mut der)
        .map_err(|_| ArchiveError::NotDerOrBase64)?;
    if der.len() > MAX_ARCHIVE_BYTES {
        return Err(ArchiveError::TooLarge);
    }
    Ok(der)
}

/// The walk alone: refuses an archive over the limits without deriving any key. An archive
/// it accepts may still hide bags in its encrypted safes; a read counts those too.
pub fn inspect(archive_der: &[u8]) -> Result<Inspection, ArchiveError> {
    let walked = walk(archive_der)?;
    Ok(Inspection {
        bags: walked.ledger.bags,
        encrypted_safes: walked.encrypted.len(),
        derivations: walked.ledger.derivations,
        iterations: walked.ledger.iterations,
        mac: walked.mac.is_some(),
    })
}

/// The facts of the archive's end-entity certificate: the one paired with a private key by
/// localKeyId, else the first. The password must open the whole archive.
pub fn certificate_facts(
    archive_der: &[u8],
    password: &[u8],
) -> Result<CertificateFacts, ArchiveError> {
    let contents = read(archive_der, password)?;
    let leaf = match pair(&contents) {
        Some((_, cert)) => cert,
        None => contents.certs.first().ok_or(ArchiveError::NoCertificate)?,
    };
    let cert =
        x509_cert::Certificate::from_der(&leaf.der).map_err(|_| ArchiveError::BadCertificate)?;
    x509_facts(&cert).ok_or(ArchiveError::BadCertificate)
}

/// The client identity in the archive: a private key, the certificate paired with it by
/// localKeyId (or the only certificate, if the archive holds one key and one certificate)
/// as the leaf, then every other certificate.
pub fn identity(archive_der: &[u8], password: &[u8]) -> Result<ClientIdentity, ArchiveError> {
    let contents = read(archive_der, password)?;
    let (key, leaf) = match pair(&contents) {
        Some(paired) => paired,
        None => match (contents.keys.as_slice(), contents.certs.as_slice()) {
            ([], _) => return Err(ArchiveError::NoKey),
            (_, []) => return Err(ArchiveError::NoCertificate),
            ([key], [cert]) => (key, cert),
            _ => return Err(ArchiveError::KeyNotPaired),
        },
    };
    let mut chain_der = vec![leaf.der.clone()];
    chain_der.extend(
        contents
            .certs
            .iter()
            .filter(|c| c.der != leaf.der)
            .map(|c| c.der.clone()),
    );
    Ok(ClientIdentity {
        private_key_pkcs8_der: key.pkcs8.clone(),
        chain_der,
    })
}

/// Subject and issuer (RFC 4514) and the validity of a certificate; `None` if a date is out
/// of range.
pub fn x509_facts(cert: &x509_cert::Certificate) -> Option<CertificateFacts> {
    let tbs = cert.tbs_certificate();
    let validity = tbs.validity();
    let seconds = |t: x509_cert::time::Time| i64::try_from(t.to_unix_duration().as_secs()).ok();
    Some(CertificateFacts {
        subject: tbs.subject().to_string(),
        issuer: tbs.issuer().to_string(),
        not_before: seconds(validity.not_before)?,
        not_after: seconds(validity.not_after)?,
    })
}

/// What reading the archive costs so far. Every bag and every key derivation is charged
/// here before it is read or run.
#[derive(Debug, Default)]
struct Ledger {
    bags: usize,
    derivations: usize,
    iterations: u64,
}

impl Ledger {
    fn bag(&mut self) -> Result<(), ArchiveError> {
        self.bags += 1;
        if self.bags > MAX_BAGS {
            return Err(ArchiveError::TooManyBags);
        }
        Ok(())
    }

    fn derivation(&mut self, iterations: u64) -> Result<(), ArchiveError> {
        if iterations == 0 {
            return Err(ArchiveError::Parameters);
        }
        if iterations > MAX_ITERATIONS {
            return Err(ArchiveError::TooManyIterations);
        }
        self.derivations += 1;
        self.iterations = self.iterations.saturating_add(iterations);
        if self.iterations > MAX_TOTAL_ITERATIONS {
            return Err(ArchiveError::TooManyIterationsInTotal);
        }
        #[cfg(test)]
        DERIVATIONS_PAID.with(|n| n.set(n.get() + 1));
        Ok(())
    }
}

/// A password-based encryption scheme the walk accepted.
enum Pbe {
    /// PBES2 with PBKDF2 (scrypt never gets here).
    Pbes2(pbes2::Parameters),
    /// The PKCS#12 SHA-1 schemes: the PKCS#12 KDF runs twice, for the key and for the IV.
    Legacy {
        cipher: LegacyCipher,
        salt: Vec<u8>,
        iterations: i32,
    },
}

#[derive(Clone, Copy)]
enum LegacyCipher {
    TripleDes,
    Rc2With128BitKey,
    Rc2With40BitKey,
}

impl Pbe {
    /// Reads an encryption algorithm identifier. Runs nothing.
    fn parse(alg: &AlgorithmIdentifierOwned) -> Result<Pbe, ArchiveError> {
        let legacy = |cipher| -> Result<Pbe, ArchiveError> {
            let params: ::pkcs12::pbe_params::Pkcs12PbeParams = alg
                .parameters
                .as_ref()
                .ok_or(ArchiveError::Parameters)?
                .decode_as()
                .map_err(|_| ArchiveError::Parameters)?;
            Ok(Pbe::Legacy {
                cipher,
                salt: params.salt.into_bytes().into_vec(),
                iterations: params.iterations,
            })
        };
        match alg.oid {
            pbes2::PBES2_OID => Self::parse_pbes2(alg),
            ::pkcs12::PKCS_12_PBE_WITH_SHAAND3_KEY_TRIPLE_DES_CBC => {
                legacy(LegacyCipher::TripleDes)
            }
            ::pkcs12::PKCS_12_PBE_WITH_SHAAND128_BIT_RC2_CBC => {
                legacy(LegacyCipher::Rc2With128BitKey)
            }
            ::pkcs12::PKCS_12_PBEWITH_SHAAND40_BIT_RC2_CBC => legacy(LegacyCipher::Rc2With40BitKey),
            ::pkcs12::PKCS_12_PBE_WITH_SHAAND128_BIT_RC4
            | ::pkcs12::PKCS_12_PBE_WITH_SHAAND40_BIT_RC4
            | ::pkcs12::PKCS_12_PBE_WITH_SHAAND2_KEY_TRIPLE_DES_CBC => Err(
                ArchiveError::Unsupported("a legacy RC4 or two-key 3DES encryption scheme"),
            ),
            _ => Err(ArchiveError::Unsupported("an unknown encryption scheme")),
        }
    }

    fn parse_pbes2(alg: &AlgorithmIdentifierOwned) -> Result<Pbe, ArchiveError> {
        let params = alg.parameters.as_ref().ok_or(ArchiveError::Parameters)?;
        // The KDF is judged by its identifier before its parameters are read at all.
        let parts: ::pkcs12::pbe_params::Pbes2Params =
            params.decode_as().map_err(|_| ArchiveError::Parameters)?;
        match parts.kdf.oid {
            pbes2::PBKDF2_OID => {}
            pbes2::SCRYPT_OID => return Err(ArchiveError::Scrypt),
            _ => return Err(ArchiveError::OtherKdf),
        }
        let pbkdf2 = parts
            .kdf
            .parameters
            .as_ref()
            .ok_or(ArchiveError::Parameters)
            .and_then(|p| {
                pbes2::Pbkdf2Params::try_from(AnyRef::from(p)).map_err(|_| {
                    ArchiveError::Unsupported("a PBKDF2 PRF other than HMAC-SHA-1/SHA-2")
                })
            })?;
        let encryption =
            pbes2::EncryptionScheme::try_from(AlgorithmIdentifierRef::from(&parts.encryption))
                .map_err(|_| {
                    ArchiveError::Unsupported("a PBES2 cipher other than AES-CBC or AES-GCM")
                })?;
        if pbkdf2
            .key_length
            .is_some_and(|len| usize::from(len) != encryption.key_size())
        {
            return Err(ArchiveError::Parameters);
        }
        Ok(Pbe::Pbes2(pbes2::Parameters {
            kdf: pbes2::Kdf::Pbkdf2(pbkdf2),
            encryption,
        }))
    }

    fn charge(&self, ledger: &mut Ledger) -> Result<(), ArchiveError> {
        match self {
            Pbe::Pbes2(params) => {
                let iterations = match &params.kdf {
                    pbes2::Kdf::Pbkdf2(p) => u64::from(p.iteration_count),
                    // Refused in parse; an unknown KDF costs the most there is.
                    _ => u64::MAX,
                };
                ledger.derivation(iterations)
            }
            Pbe::Legacy { iterations, .. } => {
                let iterations =
                    u64::try_from(*iterations).map_err(|_| ArchiveError::Parameters)?;
                ledger.derivation(iterations)?;
                ledger.derivation(iterations)
            }
        }
    }

    /// Decrypts `ciphertext`: the key derivations [`Pbe::charge`] paid for.
    fn decrypt(
        &self,
        password: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ArchiveError> {
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let length = match self {
            Pbe::Pbes2(params) => {
                counted_derivation();
                params
                    .decrypt_in_place(password.as_bytes(), &mut buffer)
                    .map_err(|_| ArchiveError::WrongPassword)?
                    .len()
            }
            Pbe::Legacy {
                cipher,
                salt,
                iterations,
            } => {
                let key_len = match cipher {
                    LegacyCipher::TripleDes => 24,
                    LegacyCipher::Rc2With128BitKey => 16,
                    LegacyCipher::Rc2With40BitKey => 5,
                };
                let derive = |purpose, len| {
                    counted_derivation();
                    kdf::derive_key_utf8::<sha1::Sha1>(password, salt, purpose, *iterations, len)
                        .map(Zeroizing::new)
                        .map_err(|_| ArchiveError::PasswordNotBmp)
                };
                let key = derive(Pkcs12KeyType::EncryptionKey, key_len)?;
                let iv = derive(Pkcs12KeyType::Iv, 8)?;
                let unpadded = match cipher {
                    LegacyCipher::TripleDes => {
                        cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
                            .map_err(|_| ArchiveError::Parameters)?
                            .decrypt_padded::<Pkcs7>(&mut buffer)
                    }
                    LegacyCipher::Rc2With128BitKey | LegacyCipher::Rc2With40BitKey => {
                        cbc::Decryptor::<rc2::Rc2>::new_from_slices(&key, &iv)
                            .map_err(|_| ArchiveError::Parameters)?
                            .decrypt_padded::<Pkcs7>(&mut buffer)
                    }
                };
                unpadded.map_err(|_| ArchiveError::WrongPassword)?.len()
            }
        };
        buffer.truncate(length);
        Ok(buffer)
    }
}

#[derive(Clone, Copy)]
enum MacDigest {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha512Trunc224,
    Sha512Trunc256,
}

/// The archive's MAC: HMAC under a key from the PKCS#12 KDF.
struct MacCheck {
    digest: MacDigest,
    salt: Vec<u8>,
    iterations: i32,
    expected: Vec<u8>,
}

impl MacCheck {
    fn parse(mac: ::pkcs12::MacData, ledger: &mut Ledger) -> Result<MacCheck, ArchiveError> {
        let digest = match mac.mac.algorithm.oid {
            SHA1 => MacDigest::Sha1,
            SHA224 => MacDigest::Sha224,
            SHA256 => MacDigest::Sha256,
            SHA384 => MacDigest::Sha384,
            SHA512 => MacDigest::Sha512,
            SHA512_224 => MacDigest::Sha512Trunc224,
            SHA512_256 => MacDigest::Sha512Trunc256,
            PBMAC1 => return Err(ArchiveError::Unsupported("the PBMAC1 MAC")),
            _ => return Err(ArchiveError::Unsupported("a MAC with an unknown digest")),
        };
        let iterations = u64::try_from(mac.iterations).map_err(|_| ArchiveError::Parameters)?;
        ledger.derivation(iterations)?;
        Ok(MacCheck {
            digest,
            salt: mac.mac_salt.into_bytes().into_vec(),
            iterations: mac.iterations,
            expected: mac.mac.digest.into_bytes().into_vec(),
        })
    }

    fn verify(&self, password: &str, data: &[u8]) -> Result<(), ArchiveError> {
        match self.digest {
            MacDigest::Sha1 => self.verify_with::<sha1::Sha1>(password, data),
            MacDigest::Sha224 => self.verify_with::<sha2::Sha224>(password, data),
            MacDigest::Sha256 => self.verify_with::<sha2::Sha256>(password, data),
            MacDigest::Sha384 => self.verify_with::<sha2::Sha384>(password, data),
            MacDigest::Sha512 => self.verify_with::<sha2::Sha512>(password, data),
            MacDigest::Sha512Trunc224 => self.verify_with::<sha2::Sha512_224>(password, data),
            MacDigest::Sha512Trunc256 => self.verify_with::<sha2::Sha512_256>(password, data),
        }
    }

    fn verify_with<D>(&self, password: &str, data: &[u8]) -> Result<(), ArchiveError>
    where
        D: EagerHash + FixedOutputReset,
    {
        counted_derivation();
        let key = kdf::derive_key_utf8::<D>(
            password,
            &self.salt,
            Pkcs12KeyType::Mac,
            self.iterations,
            <D as OutputSizeUser>::output_size(),
        )
        .map(Zeroizing::new)
        .map_err(|_| ArchiveError::PasswordNotBmp)?;
        let mut mac =
            <Hmac<D> as KeyInit>::new_from_slice(&key).map_err(|_| ArchiveError::Parameters)?;
        mac.update(data);
        mac.verify_slice(&self.expected)
            .map_err(|_| ArchiveError::WrongPassword)
    }
}

/// One bag, as far as reading it needs.
enum Bag {
    Key {
        id: Option<Vec<u8>>,
        pkcs8: Zeroizing<Vec<u8>>,
    },
    ShroudedKey {
        id: Option<Vec<u8>>,
        pbe: Pbe,
        ciphertext: Vec<u8>,
    },
    Cert {
        id: Option<Vec<u8>>,
        der: Vec<u8>,
    },
}

/// The archive's layer outside its encrypted safes, charged to its ledger.
struct Walked {
    mac: Option<MacCheck>,
    /// The bytes the MAC covers: the authSafe's content.
    auth_safe: Vec<u8>,
    bags: Vec<Bag>,
    encrypted: Vec<(Pbe, Vec<u8>)>,
    ledger: Ledger,
}

fn walk(der: &[u8]) -> Result<Walked, ArchiveError> {
    if der.len() > MAX_ARCHIVE_BYTES {
        return Err(ArchiveError::TooLarge);
    }
    let pfx = ::pkcs12::pfx::Pfx::from_der(der).map_err(|_| ArchiveError::NotPkcs12)?;
    match pfx.auth_safe.content_type {
        ID_DATA => {}
        ID_SIGNED_DATA => {
            return Err(ArchiveError::Unsupported(
                "public-key integrity (a signedData authSafe)",
            ));
        }
        _ => return Err(ArchiveError::NotPkcs12),
    }
    let auth_safe = octets(&pfx.auth_safe.content).map_err(|_| ArchiveError::NotPkcs12)?;
    let mut ledger = Ledger::default();
    let mac = pfx
        .mac_data
        .map(|mac| MacCheck::parse(mac, &mut ledger))
        .transpose()?;

    let mut bags = Vec::new();
    let mut encrypted = Vec::new();
    let safes =
        ::pkcs12::AuthenticatedSafe::from_der(auth_safe).map_err(|_| ArchiveError::Damaged)?;
    for info in safes {
        match info.content_type {
            ID_DATA => {
                let contents = octets(&info.content).map_err(|_| ArchiveError::Damaged)?;
                walk_safe_contents(contents, 0, &mut ledger, &mut bags)?;
            }
            ID_ENCRYPTED_DATA => {
                let data: ::pkcs12::cms::encrypted_data::EncryptedData =
                    info.content
                        .decode_as()
                        .map_err(|_| ArchiveError::Damaged)?;
                let content = data.enc_content_info;
                let pbe = Pbe::parse(&content.content_enc_alg)?;
                if let Some(ciphertext) = content.encrypted_content {
                    pbe.charge(&mut ledger)?;
                    encrypted.push((pbe, ciphertext.into_bytes().into_vec()));
                }
            }
            ID_ENVELOPED_DATA => {
                return Err(ArchiveError::Unsupported(
                    "public-key encryption (an envelopedData safe)",
                ));
            }
            _ => {
                return Err(ArchiveError::Unsupported(
                    "a safe of an unknown content type",
                ));
            }
        }
    }
    Ok(Walked {
        mac,
        auth_safe: auth_safe.to_vec(),
        bags,
        encrypted,
        ledger,
    })
}

/// Walks one SafeContents (`depth` levels of safeContentsBag down), charging each bag and
/// each key derivation a shrouded key will need.
fn walk_safe_contents(
    der: &[u8],
    depth: usize,
    ledger: &mut Ledger,
    bags: &mut Vec<Bag>,
) -> Result<(), ArchiveError> {
    if depth > MAX_NESTING {
        return Err(ArchiveError::TooDeep);
    }
    for bag in safe_bags(der).map_err(|_| ArchiveError::Damaged)? {
        ledger.bag()?;
        match bag.id {
            ::pkcs12::PKCS_12_KEY_BAG_OID => {
                pkcs8::PrivateKeyInfoRef::from_der(bag.value).map_err(|_| ArchiveError::BadKey)?;
                bags.push(Bag::Key {
                    id: bag.local_key_id,
                    pkcs8: Zeroizing::new(bag.value.to_vec()),
                });
            }
            ::pkcs12::PKCS_12_PKCS8_KEY_BAG_OID => {
                let info = ::pkcs12::pbe_params::EncryptedPrivateKeyInfo::from_der(bag.value)
                    .map_err(|_| ArchiveError::Damaged)?;
                let pbe = Pbe::parse(&info.encryption_algorithm)?;
                pbe.charge(ledger)?;
                bags.push(Bag::ShroudedKey {
                    id: bag.local_key_id,
                    pbe,
                    ciphertext: info.encrypted_data.into_bytes().into_vec(),
                });
            }
            ::pkcs12::PKCS_12_CERT_BAG_OID => {
                let cert =
                    ::pkcs12::CertBag::from_der(bag.value).map_err(|_| ArchiveError::Damaged)?;
                if cert.cert_id != ::pkcs12::PKCS_12_X509_CERT_OID {
                    return Err(ArchiveError::BadCertificate);
                }
                bags.push(Bag::Cert {
                    id: bag.local_key_id,
                    der: cert.cert_value.into_bytes().into_vec(),
                });
            }
            ::pkcs12::PKCS_12_SAFE_CONTENTS_BAG_OID => {
                walk_safe_contents(bag.value, depth + 1, ledger, bags)?;
            }
            // CRLs, secrets and unknown bags are counted but never read, let alone decrypted.
            _ => {}
        }
    }
    Ok(())
}

/// A SafeBag, borrowed from the buffer it was read from.
struct SafeBagRef<'a> {
    id: ObjectIdentifier,
    /// The one TLV inside the bag's `[0] EXPLICIT` value.
    value: &'a [u8],
    local_key_id: Option<Vec<u8>>,
}

/// SafeContents ::= SEQUENCE OF SafeBag, read in place: a keyBag's key is never copied
/// into a buffer that does not wipe itself.
fn safe_bags(der: &[u8]) -> der::Result<Vec<SafeBagRef<'_>>> {
    let mut reader = SliceReader::new(der)?;
    let bags = reader.sequence(|r| {
        let mut bags = Vec::new();
        while !r.is_finished() {
            bags.push(r.sequence(|bag| {
                let id = ObjectIdentifier::decode(bag)?;
                let header = Header::decode(bag)?;
                header.tag().assert_eq(Tag::ContextSpecific {
                    constructed: true,
                    number: TagNumber(0),
                })?;
                let value = bag.read_slice(header.length())?;
                let attributes = if bag.is_finished() {
                    None
                } else {
                    Some(AnyRef::decode(bag)?)
                };
                Ok::<_, der::Error>(SafeBagRef {
                    id,
                    value,
                    local_key_id: attributes.and_then(local_key_id),
                })
            })?);
        }
        Ok::<_, der::Error>(bags)
    })?;
    reader.finish()?;
    Ok(bags)
}

/// The localKeyId among a bag's attributes (`SET OF SEQUENCE { OID, SET OF ANY }`), read
/// leniently: attributes are never a reason to refuse an archive.
fn local_key_id(attributes: AnyRef<'_>) -> Option<Vec<u8>> {
    if attributes.tag() != Tag::Set {
        return None;
    }
    let mut reader = SliceReader::new(attributes.value()).ok()?;
    while !reader.is_finished() {
        let found = reader
            .sequence(|attribute| {
                let oid = ObjectIdentifier::decode(attribute)?;
                let values = AnyRef::decode(attribute)?;
                Ok::<_, der::Error>((oid == LOCAL_KEY_ID).then_some(values))
            })
            .ok()?;
        if let Some(values) = found {
            let first = AnyRef::from_der(values.value()).ok()?;
            return (first.tag() == Tag::OctetString).then(|| first.value().to_vec());
        }
    }
    None
}

/// The contents of an `OCTET STRING` held as `Any`.
fn octets(any: &der::Any) -> der::Result<&[u8]> {
    any.tag().assert_eq(Tag::OctetString)?;
    Ok(any.value())
}

/// What an archive holds, decrypted.
#[derive(Default)]
struct Contents {
    keys: Vec<KeyEntry>,
    certs: Vec<CertEntry>,
}

struct KeyEntry {
    id: Option<Vec<u8>>,
    pkcs8: Zeroizing<Vec<u8>>,
}

struct CertEntry {
    id: Option<Vec<u8>>,
    der: Vec<u8>,
}

/// The first key and the certificate paired with it by localKeyId.
fn pair(contents: &Contents) -> Option<(&KeyEntry, &CertEntry)> {
    contents.keys.iter().find_map(|key| {
        let id = key.id.as_ref()?;
        let cert = contents.certs.iter().find(|c| c.id.as_ref() == Some(id))?;
        Some((key, cert))
    })
}

/// Walks, verifies the MAC, decrypts: the only way any key derivation runs.
fn read(archive_der: &[u8], password: &[u8]) -> Result<Contents, ArchiveError> {
    let password = std::str::from_utf8(password).map_err(|_| ArchiveError::PasswordNotText)?;
    let Walked {
        mac,
        auth_safe,
        mut bags,
        encrypted,
        mut ledger,
    } = walk(archive_der)?;
    if let Some(mac) = &mac {
        mac.verify(password, &auth_safe)?;
    }
    // Without a MAC, a wrong password shows only as a decryption that yields garbage.
    let garbage = if mac.is_some() {
        ArchiveError::Damaged
    } else {
        ArchiveError::WrongPassword
    };
    for (pbe, ciphertext) in &encrypted {
        let contents = pbe.decrypt(password, ciphertext)?;
        // What this safe holds is charged before anything in it is decrypted.
        walk_safe_contents(&contents, 0, &mut ledger, &mut bags).map_err(|e| match e {
            ArchiveError::Damaged => garbage.clone(),
            e => e,
        })?;
    }

    let mut contents = Contents::default();
    for bag in bags {
        match bag {
            Bag::Key { id, pkcs8 } => contents.keys.push(KeyEntry { id, pkcs8 }),
            Bag::ShroudedKey {
                id,
                pbe,
                ciphertext,
            } => {
                let pkcs8 = pbe.decrypt(password, &ciphertext)?;
                if pkcs8::PrivateKeyInfoRef::from_der(&pkcs8).is_err() {
                    return Err(if mac.is_some() {
                        ArchiveError::BadKey
                    } else {
                        ArchiveError::WrongPassword
                    });
                }
                contents.keys.push(KeyEntry { id, pkcs8 });
            }
            Bag::Cert { id, der } => {
                x509_cert::Certificate::from_der(&der).map_err(|_| ArchiveError::BadCertificate)?;
                contents.certs.push(CertEntry { id, der });
            }
        }
    }
    Ok(contents)
}

#[cfg(test)]
thread_local! {
    /// Key derivations run on this thread: tests check a refusal came before any, and that
    /// none ran that was not paid for.
    static DERIVATIONS_RUN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Key derivations charged to a ledger (and within its limits) on this thread.
    static DERIVATIONS_PAID: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn counted_derivation() {
    #[cfg(test)]
    DERIVATIONS_RUN.with(|n| n.set(n.get() + 1));
}

#[cfg(test)]
mod tests;
