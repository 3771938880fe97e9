//! Items and specs for the runner's unit tests.

use crate::api::monitor::{
    BasicAuth, BearerAuth, ClientCertificate, Header, MonitorAuth, MonitorSpec,
};
use crate::api::vault_item::{ItemType, OtpAlgorithm, OtpEncoding};
use crate::crypto::Plaintext;

use super::items::{ClientIdentity, OtpSeed, ResolvedItem};

fn hosts(allowed: &[&str]) -> Vec<String> {
    allowed.iter().map(|h| h.to_string()).collect()
}

pub fn credential_set(name: &str, user: &str, password: &str, allowed: &[&str]) -> ResolvedItem {
    let mut item = ResolvedItem::new(name, ItemType::CredentialSet, hosts(allowed));
    item.username = Some(user.into());
    item.secret = Some(Plaintext::from(password));
    item
}

pub fn secret(name: &str, value: &str, allowed: &[&str]) -> ResolvedItem {
    let mut item = ResolvedItem::new(name, ItemType::Secret, hosts(allowed));
    item.secret = Some(Plaintext::from(value));
    item
}

pub fn otp(name: &str, base32: &str, allowed: &[&str]) -> ResolvedItem {
    let mut item = ResolvedItem::new(name, ItemType::OneTimePassword, hosts(allowed));
    item.otp = Some(OtpSeed {
        seed: Plaintext::from(base32),
        encoding: OtpEncoding::Base32,
        digits: 6,
        period: 30,
        algorithm: OtpAlgorithm::Sha1,
    });
    item
}

pub fn certificate(name: &str, allowed: &[&str]) -> ResolvedItem {
    let issued =
        rcgen::generate_simple_self_signed(vec!["client.test".into()]).expect("client certificate");
    let mut item = ResolvedItem::new(name, ItemType::CertificateArchive, hosts(allowed));
    item.client_identity = Some(ClientIdentity {
        private_key_pkcs8_der: zeroize::Zeroizing::new(issued.signing_key.serialize_der()),
        chain_der: vec![issued.cert.der().to_vec()],
    });
    item
}

pub fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: value.into(),
    }
}

pub fn basic(spec: &mut MonitorSpec, item: &str) {
    spec.auth = Some(MonitorAuth {
        basic: Some(BasicAuth {
            credential_set: item.into(),
        }),
        bearer: None,
    });
}

pub fn bearer(spec: &mut MonitorSpec, item: &str) {
    spec.auth = Some(MonitorAuth {
        basic: None,
        bearer: Some(BearerAuth {
            secret: item.into(),
        }),
    });
}

pub fn client_certificate(spec: &mut MonitorSpec, item: &str) {
    spec.client_certificate = Some(ClientCertificate {
        certificate_archive: item.into(),
    });
}
