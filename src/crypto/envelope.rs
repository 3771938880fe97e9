//! The text form of ciphertexts: `<format>.<kind>.<key version>.<base64url payload>`.
//!
//! The format is versioned per kind: stored data is `mv1.d.`, sealed values are `mv2.s.`
//! (`mv2` binds the section and item type; `mv1.s.` values did not, so they are refused
//! with a message that says to seal again). An unknown format is refused, never misread.
//! The key version is in the clear so the right key can be found, and it is also bound
//! into the AAD, so editing it makes opening fail.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::CryptoError;

/// The sealed-value format that no longer opens: it did not bind the section.
const OUTDATED_SEALED_FORMAT: &str = "mv1";

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// Item ciphertext under an environment data key (the internal store).
    Data,
    /// An HPKE envelope to an environment sealing key (safe in Git).
    Sealed,
}

impl EnvelopeKind {
    fn tag(self) -> &'static str {
        match self {
            EnvelopeKind::Data => "d",
            EnvelopeKind::Sealed => "s",
        }
    }

    fn name(self) -> &'static str {
        match self {
            EnvelopeKind::Data => "data",
            EnvelopeKind::Sealed => "sealed",
        }
    }

    /// The current format prefix of this kind.
    fn format(self) -> &'static str {
        match self {
            EnvelopeKind::Data => "mv1",
            EnvelopeKind::Sealed => "mv2",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "d" => Some(EnvelopeKind::Data),
            "s" => Some(EnvelopeKind::Sealed),
            _ => None,
        }
    }
}

pub(crate) struct Envelope {
    pub(crate) version: u32,
    pub(crate) payload: Vec<u8>,
}

pub(crate) fn encode(kind: EnvelopeKind, version: u32, payload: &[u8]) -> String {
    format!(
        "{}.{}.{version}.{}",
        kind.format(),
        kind.tag(),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// Parses an envelope of the expected kind. Errors name the problem, never the content.
pub(crate) fn decode(expected: EnvelopeKind, text: &str) -> Result<Envelope, CryptoError> {
    let what = match expected {
        EnvelopeKind::Data => "stored ciphertext",
        EnvelopeKind::Sealed => "sealed value",
    };
    let (kind, version, payload) = split(text, what)?;
    if kind != expected {
        return Err(CryptoError::WrongEnvelopeKind {
            expected: expected.name(),
            found: kind.name(),
        });
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| CryptoError::Malformed {
            what,
            reason: "payload is not unpadded base64url",
        })?;
    Ok(Envelope { version, payload })
}

fn split<'a>(
    text: &'a str,
    what: &'static str,
) -> Result<(EnvelopeKind, u32, &'a str), CryptoError> {
    let malformed = |reason| CryptoError::Malformed { what, reason };
    let mut parts = text.trim().splitn(4, '.');
    let (Some(format), Some(kind), Some(version), Some(payload)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "expected <format>.<kind>.<version>.<payload>, as `monivault seal` prints",
        ));
    };
    let kind = EnvelopeKind::from_tag(kind).ok_or(malformed("unknown envelope kind"))?;
    if kind == EnvelopeKind::Sealed && format == OUTDATED_SEALED_FORMAT {
        return Err(CryptoError::OutdatedSealedFormat);
    }
    if format != kind.format() {
        return Err(malformed(match kind {
            EnvelopeKind::Data => "unknown format (expected prefix mv1)",
            EnvelopeKind::Sealed => "unknown format (expected prefix mv2)",
        }));
    }
    // Digits only: `u32::from_str` would also take a leading '+', giving two spellings.
    if version.is_empty() || version.len() > 10 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("key version is not a number"));
    }
    // Nor a leading zero: `01` would name key 1 too, and the envelope would open under both
    // spellings (found by the `envelope` fuzz target).
    if version.len() > 1 && version.starts_with('0') {
        return Err(malformed("key version has a leading zero"));
    }
    let version = version
        .parse::<u32>()
        .map_err(|_| malformed("key version is not a number"))?;
    Ok((kind, version, payload))
}

/// The key version an envelope names, without opening it (e.g. to find records still on
/// an old data key).
pub fn key_version_of(text: &str) -> Result<(EnvelopeKind, u32), CryptoError> {
    let (kind, version, _) = split(text, "envelope")?;
    Ok((kind, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let text = encode(EnvelopeKind::Data, 7, b"\x00\x01payload");
        assert!(text.starts_with("mv1.d.7."));
        let env = decode(EnvelopeKind::Data, &text).expect("decodes");
        assert_eq!(env.version, 7);
        assert_eq!(env.payload, b"\x00\x01payload");
        assert_eq!(key_version_of(&text), Ok((EnvelopeKind::Data, 7)));
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "mv1",
            "mv1.d",
            "mv1.d.1",
            "mv2.d.1.AAAA",
            "mv1.s.1.AAAA",
            "mv3.s.1.AAAA",
            "mv1.x.1.AAAA",
            "mv1.d.+1.AAAA",
            "mv1.d.-1.AAAA",
            "mv1.d.99999999999.AAAA",
            "mv1.d.01.AAAA",
            "mv1.d.00.AAAA",
            "mv1.d.1.not base64!",
            "mv1.d.1.AAAA=",
        ] {
            assert!(
                decode(EnvelopeKind::Data, bad).is_err(),
                "{bad:?} should not decode"
            );
        }
    }

    #[test]
    fn an_outdated_sealed_value_says_to_seal_again() {
        assert_eq!(
            decode(EnvelopeKind::Sealed, "mv1.s.1.AAAA").err(),
            Some(CryptoError::OutdatedSealedFormat)
        );
        assert!(encode(EnvelopeKind::Sealed, 3, b"x").starts_with("mv2.s.3."));
        let message = CryptoError::OutdatedSealedFormat.to_string();
        assert!(message.contains("--section"), "{message}");
    }

    #[test]
    fn kind_must_match() {
        let text = encode(EnvelopeKind::Sealed, 1, b"x");
        assert_eq!(
            decode(EnvelopeKind::Data, &text).err(),
            Some(CryptoError::WrongEnvelopeKind {
                expected: "data",
                found: "sealed"
            })
        );
    }
}
