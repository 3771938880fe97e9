//! The self-managed CA, pure: issuing the CA and serving certificates, and deciding from
//! the stored PEMs and the time whether to keep, reissue or start over. No I/O; the time
//! is an argument so the decisions are testable without waiting.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::{TlsError, certified_key, parse_chain};

/// Certificates start this much in the past, so a replica or API server whose clock is a
/// little behind still accepts a fresh one.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

const CA_COMMON_NAME: &str = "monivault webhook CA";
const SERVING_COMMON_NAME: &str = "monivault webhook";
const ORGANIZATION: &str = "monivault";

/// The names a serving certificate is valid for (its subjectAltNames). DNS names compare
/// without case, as TLS clients match them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectNames {
    dns: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
}

impl SubjectNames {
    pub fn new<D: AsRef<str>>(
        dns_names: impl IntoIterator<Item = D>,
        ip_addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        SubjectNames {
            dns: dns_names
                .into_iter()
                .map(|name| name.as_ref().to_ascii_lowercase())
                .collect(),
            ips: ip_addresses.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ips.is_empty()
    }

    fn to_san_types(&self) -> Result<Vec<SanType>, TlsError> {
        let mut sans = Vec::with_capacity(self.dns.len() + self.ips.len());
        for name in &self.dns {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|source| TlsError::Generate {
                    what: format!("a certificate for DNS name {name:?}"),
                    source,
                })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(self.ips.iter().copied().map(SanType::IpAddress));
        Ok(sans)
    }
}

impl std::fmt::Display for SubjectNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = (self.dns.iter().map(|d| format!("DNS:{d}")))
            .chain(self.ips.iter().map(|ip| format!("IP:{ip}")))
            .collect();
        f.write_str(&names.join(", "))
    }
}

/// A CA and the serving certificate it issued, as PEM: what the Secret holds.
#[derive(Clone)]
pub(crate) struct TlsMaterial {
    pub(crate) ca_cert_pem: String,
    pub(crate) ca_key_pem: Zeroizing<String>,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"<redacted>")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How long certificates live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    pub(crate) ca: Duration,
    pub(crate) serving: Duration,
}

/// What to do with the stored material.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// A new serving certificate from the same CA; the CA bundle stays.
    Reissue(String),
    /// A new CA and serving certificate; the CA bundle changes.
    NewCa(String),
}

/// A fresh CA and a serving certificate from it.
pub(crate) fn fresh(
    names: &SubjectNames,
    lifetimes: Lifetimes,
    now: SystemTime,
) -> Result<TlsMaterial, TlsError> {
    let (ca_cert_pem, ca_key_pem) = new_ca(now, lifetimes.ca)?;
    let (cert_pem, key_pem) = issue_serving(&ca_cert_pem, &ca_key_pem, names, now, lifetimes)?;
    Ok(TlsMaterial {
        ca_cert_pem,
        ca_key_pem,
        cert_pem,
        key_pem,
    })
}

/// `material` with a new serving certificate from its CA.
pub(crate) fn reissue(
    material: &TlsMaterial,
    names: &SubjectNames,
    lifetimes: Lifetimes,
    now: SystemTime,
) -> Result<TlsMaterial, TlsError> {
    let (cert_pem, key_pem) = issue_serving(
        &material.ca_cert_pem,
        &material.ca_key_pem,
        names,
        now,
        lifetimes,
    )?;
    Ok(TlsMaterial {
        ca_cert_pem: material.ca_cert_pem.clone(),
        ca_key_pem: material.ca_key_pem.clone(),
        cert_pem,
        key_pem,
    })
}

/// A self-signed CA that may issue end-entity certificates only (path length 0).
pub(crate) fn new_ca(
    now: SystemTime,
    validity: Duration,
) -> Result<(String, Zeroizing<String>), TlsError> {
    let what = || "the webhook CA".to_owned();
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity_window(now, validity);
    let key = KeyPair::generate().map_err(|source| TlsError::Generate {
        what: what(),
        source,
    })?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsError::Generate {
            what: what(),
            source,
        })?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

/// A serving certificate for `names`, signed by the CA, valid from `now` (less the clock
/// skew) for `lifetimes.serving`, but never past the CA's own end.
pub(crate) fn issue_serving(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &SubjectNames,
    now: SystemTime,
    lifetimes: Lifetimes,
) -> Result<(String, Zeroizing<String>), TlsError> {
    let what = || format!("a serving certificate for {names}");
    let generate = |source| TlsError::Generate {
        what: what(),
        source,
    };
    if names.is_empty() {
        return Err(TlsError::Config {
            reason: "the serving certificate needs at least one DNS name or IP address".into(),
        });
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(generate)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, &ca_key).map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(SERVING_COMMON_NAME);
    params.subject_alt_names = names.to_san_types()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let (not_before, not_after) = validity_window(now, lifetimes.serving);
    let ca_end = cert_facts("the webhook CA", ca_cert_pem)?.not_after;
    params.not_before = not_before;
    params.not_after = not_after.min(OffsetDateTime::from(ca_end));
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

fn validity_window(now: SystemTime, validity: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let start = now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH);
    let end = now.checked_add(validity).unwrap_or(now);
    (OffsetDateTime::from(start), OffsetDateTime::from(end))
}

/// Renew once less than a third of the lifetime is left: a 7-day certificate after about
/// 4.7 days, which leaves days for a replica that fails to renew to be noticed.
pub(crate) fn renewal_due(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    match not_after.duration_since(now) {
        Ok(remaining) => remaining < lifetime / 3,
        // Already expired.
        Err(_) => true,
    }
}

/// What the decisions need from a certificate.
pub(crate) struct CertFacts {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    names: SubjectNames,
}

/// The facts of the first certificate in `pem`.
pub(crate) fn cert_facts(what: &str, pem: &str) -> Result<CertFacts, TlsError> {
    let chain = parse_chain(what, pem.as_bytes())?;
    let cert = parse_x509(what, &chain[0])?;
    facts_of(what, &cert)
}

fn parse_x509<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| TlsError::Certificate {
            what: what.to_owned(),
            reason: format!("it does not parse as X.509 ({e})"),
        })
}

fn facts_of(what: &str, cert: &X509Certificate<'_>) -> Result<CertFacts, TlsError> {
    let time = |seconds: i64| {
        u64::try_from(seconds)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(UNIX_EPOCH)
    };
    let validity = cert.validity();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate {
            what: what.to_owned(),
            reason: format!("its subjectAltName extension is invalid ({e})"),
        })?;
    for name in sans.iter().flat_map(|ext| &ext.value.general_names) {
        match name {
            GeneralName::DNSName(dns_name) => dns.push((*dns_name).to_owned()),
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                    ips.push(IpAddr::from(v4));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                    ips.push(IpAddr::from(v6));
                }
            }
            _ => {}
        }
    }
    Ok(CertFacts {
        not_before: time(validity.not_before.timestamp()),
        not_after: time(validity.not_after.timestamp()),
        names: SubjectNames::new(dns, ips),
    })
}

/// Keep the stored material, reissue the serving certificate, or start over with a new CA.
pub(crate) fn assess(material: &TlsMaterial, wanted: &SubjectNames, now: SystemTime) -> Verdict {
    let ca = match check_ca(material, now) {
        Ok(ca) => ca,
        Err(reason) => return Verdict::NewCa(reason),
    };
    match check_serving(material, &ca, wanted, now) {
        Ok(()) => Verdict::Keep,
        Err(reason) => Verdict::Reissue(reason),
    }
}

/// The CA's DER, if the CA is readable, matches its key and has time left.
fn check_ca(material: &TlsMaterial, now: SystemTime) -> Result<Vec<u8>, String> {
    let chain =
        parse_chain("ca.crt", material.ca_cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let ca = parse_x509("ca.crt", &chain[0]).map_err(|e| e.to_string())?;
    let key = KeyPair::from_pem(&material.ca_key_pem)
        .map_err(|_| "ca.key is not a readable private key".to_owned())?;
    if key.subject_public_key_info() != ca.public_key().raw {
        return Err("ca.key does not belong to ca.crt".to_owned());
    }
    let facts = facts_of("ca.crt", &ca).map_err(|e| e.to_string())?;
    if renewal_due(facts.not_before, facts.not_after, now) {
        return Err("the CA is near its end".to_owned());
    }
    Ok(chain[0].to_vec())
}

fn check_serving(
    material: &TlsMaterial,
    ca_der: &[u8],
    wanted: &SubjectNames,
    now: SystemTime,
) -> Result<(), String> {
    // The same check the resolver makes: a pair it would refuse is reissued here.
    certified_key(
        "tls.crt",
        "tls.key",
        material.cert_pem.as_bytes(),
        material.key_pem.as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let chain = parse_chain("tls.crt", material.cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let leaf = parse_x509("tls.crt", &chain[0]).map_err(|e| e.to_string())?;
    let ca = parse_x509("ca.crt", ca_der).map_err(|e| e.to_string())?;
    if leaf.verify_signature(Some(ca.public_key())).is_err() {
        return Err("tls.crt was not issued by ca.crt".to_owned());
    }
    let facts = facts_of("tls.crt", &leaf).map_err(|e| e.to_string())?;
    if facts.names != *wanted {
        return Err(format!(
            "its names [{}] differ from the configured [{wanted}]",
            facts.names
        ));
    }
    if renewal_due(facts.not_before, facts.not_after, now) {
        return Err("less than a third of its lifetime is left".to_owned());
    }
    Ok(())
}
