//! Hostile PKCS#12 archives, crafted with `der`, for the webhook and end-to-end tests. Each is
//! a well-formed PFX that no tool would write: its cost is the attack.
#![allow(dead_code)] // Each test binary uses its own subset.

use der::asn1::ObjectIdentifier;
use der::{Any, Encode as _, Tag, TagNumber};

/// The password the archives that really encrypt something are encrypted under.
pub const BOMB_PASSWORD: &str = "bomb-password-5d8e";

const DATA: &str = "1.2.840.113549.1.7.1";
const ENCRYPTED_DATA: &str = "1.2.840.113549.1.7.6";
const SHROUDED_KEY_BAG: &str = "1.2.840.113549.1.12.10.1.2";
const CRL_BAG: &str = "1.2.840.113549.1.12.10.1.4";
const PBES2: &str = "1.2.840.113549.1.5.13";
const SCRYPT: &str = "1.3.6.1.4.1.11591.4.11";
const AES256_CBC: &str = "2.16.840.1.101.3.4.1.42";

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

fn context0(constructed: bool, content: &[u8]) -> Vec<u8> {
    let tag = Tag::ContextSpecific {
        constructed,
        number: TagNumber(0),
    };
    tlv(tag, content)
}

/// PFX { version 3, authSafe: data(`safes`) } with no MAC: nothing to check the password
/// against before the bags.
fn pfx(safes: &[Vec<u8>]) -> Vec<u8> {
    let auth_safe = seq(&[oid(DATA), context0(true, &octets(&seq(safes)))]);
    seq(&[int(3), auth_safe])
}

fn data_safe(bags: &[Vec<u8>]) -> Vec<u8> {
    seq(&[oid(DATA), context0(true, &octets(&seq(bags)))])
}

fn crl_bag() -> Vec<u8> {
    let crl = seq(&[
        oid("1.2.840.113549.1.9.23.1"),
        context0(true, &octets(b"crl")),
    ]);
    seq(&[oid(CRL_BAG), context0(true, &crl)])
}

/// A pkcs8ShroudedKeyBag whose key is derived with scrypt, N = 2^20, r = 8: 1 GiB each.
fn scrypt_key_bag() -> Vec<u8> {
    let kdf = seq(&[
        oid(SCRYPT),
        seq(&[octets(&[7; 16]), int(1 << 20), int(8), int(1)]),
    ]);
    let cipher = seq(&[oid(AES256_CBC), octets(&[9; 16])]);
    let algorithm = seq(&[oid(PBES2), seq(&[kdf, cipher])]);
    let info = seq(&[algorithm, octets(&[0x42; 48])]);
    seq(&[oid(SHROUDED_KEY_BAG), context0(true, &info)])
}

/// The reported attack: a small archive, no MAC, hundreds of 1 GiB scrypt derivations.
pub fn scrypt_bomb() -> Vec<u8> {
    let bags: Vec<Vec<u8>> = (0..300).map(|_| scrypt_key_bag()).collect();
    pfx(&[data_safe(&bags)])
}

/// Far more bags than any client identity needs.
pub fn many_bags() -> Vec<u8> {
    let bags: Vec<Vec<u8>> = (0..500).map(|_| crl_bag()).collect();
    pfx(&[data_safe(&bags)])
}

/// Scrypt bags inside a safe encrypted under [`BOMB_PASSWORD`] (PBES2, one PBKDF2 iteration):
/// no walk can see them before that safe is decrypted.
pub fn hidden_scrypt_bomb() -> Vec<u8> {
    let inner: Vec<Vec<u8>> = (0..100).map(|_| scrypt_key_bag()).collect();
    let params = pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(1, &[3; 16], [4; 16])
        .expect("params");
    let ciphertext = params
        .encrypt(BOMB_PASSWORD, &seq(&inner))
        .expect("encrypt");
    let algorithm = seq(&[oid(PBES2), params.to_der().expect("params der")]);
    let content = seq(&[oid(DATA), algorithm, context0(false, &ciphertext)]);
    let safe = seq(&[
        oid(ENCRYPTED_DATA),
        context0(true, &seq(&[int(0), content])),
    ]);
    pfx(&[safe])
}
