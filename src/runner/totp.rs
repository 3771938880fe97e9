//! TOTP codes (RFC 6238) from a OneTimePassword item's seed, with `totp-rs`.

use thiserror::Error;
use totp_rs::{Algorithm, Builder, Secret};
use zeroize::Zeroizing;

use super::items::OtpSeed;
use crate::api::vault_item::{OtpAlgorithm, OtpEncoding};

/// Why a seed cannot make codes. Never quotes the seed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OtpError {
    #[error("the seed is not valid {0}")]
    Encoding(&'static str),
    #[error("the seed is empty")]
    Empty,
    #[error("digits must be between 6 and 8, not {0}")]
    Digits(u8),
    #[error("period must be between 1 and 120 seconds, not {0}")]
    Period(u32),
}

/// The code for `unix_seconds`.
pub fn code_at(seed: &OtpSeed, unix_seconds: u64) -> Result<Zeroizing<String>, OtpError> {
    if !(6..=8).contains(&seed.digits) {
        return Err(OtpError::Digits(seed.digits));
    }
    if !(1..=120).contains(&seed.period) {
        return Err(OtpError::Period(seed.period));
    }
    let key = decode_seed(seed.seed.expose(), seed.encoding)?;
    if key.is_empty() {
        return Err(OtpError::Empty);
    }
    let algorithm = match seed.algorithm {
        OtpAlgorithm::Sha1 => Algorithm::SHA1,
        OtpAlgorithm::Sha256 => Algorithm::SHA256,
        OtpAlgorithm::Sha512 => Algorithm::SHA512,
    };
    // Not `build()`: it refuses seeds under 128 bits, and 80-bit seeds are common in the
    // wild. Digits and period are checked above, which is all `generate` needs.
    let totp = Builder::new()
        .with_algorithm(algorithm)
        .with_digits(seed.digits)
        .with_step_duration(u64::from(seed.period))
        .with_secret(Secret::new(key.to_vec().into_boxed_slice()))
        .build_noncompliant();
    Ok(Zeroizing::new(totp.generate(unix_seconds).to_string()))
}

/// The code now.
pub fn code_now(seed: &OtpSeed) -> Result<Zeroizing<String>, OtpError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    code_at(seed, now)
}

/// The seed's key bytes. Base32 is read as authenticator apps write it: any case, with
/// spaces, hyphens and `=` padding ignored. Hex ignores spaces.
fn decode_seed(text: &[u8], encoding: OtpEncoding) -> Result<Zeroizing<Vec<u8>>, OtpError> {
    let cleaned: Zeroizing<Vec<u8>> = Zeroizing::new(
        text.iter()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'-'))
            .map(u8::to_ascii_uppercase)
            .collect(),
    );
    match encoding {
        OtpEncoding::Base32 => decode_base32(&cleaned),
        OtpEncoding::Hex => decode_hex(&cleaned),
    }
}

fn decode_base32(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, OtpError> {
    const BAD: OtpError = OtpError::Encoding("Base32");
    let end = text.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let text = &text[..end];
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() * 5 / 8));
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in text {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'2'..=b'7' => b - b'2' + 26,
            _ => return Err(BAD),
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros, as RFC 4648 writes them.
    if bits >= 5 || buffer != 0 {
        return Err(BAD);
    }
    Ok(out)
}

fn decode_hex(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, OtpError> {
    const BAD: OtpError = OtpError::Encoding("Hex");
    if !text.len().is_multiple_of(2) {
        return Err(BAD);
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(BAD),
    };
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 2));
    for pair in text.chunks_exact(2) {
        out.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Plaintext;

    fn seed(text: &str, encoding: OtpEncoding, digits: u8, algorithm: OtpAlgorithm) -> OtpSeed {
        OtpSeed {
            seed: Plaintext::from(text),
            encoding,
            digits,
            period: 30,
            algorithm,
        }
    }

    // RFC 6238 appendix B: the seeds are ASCII "1234567890" repeated to the hash length.
    const SHA1_HEX: &str = "3132333435363738393031323334353637383930";
    const SHA256_HEX: &str = "3132333435363738393031323334353637383930313233343536373839303132";
    const SHA512_HEX: &str = "31323334353637383930313233343536373839303132333435363738393031323334353637383930313233343536373839303132333435363738393031323334";

    #[test]
    fn rfc_6238_test_vectors() {
        let cases = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1234567890, "89005924", "91819424", "93441116"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (time, sha1, sha256, sha512) in cases {
            for (hex, algorithm, want) in [
                (SHA1_HEX, OtpAlgorithm::Sha1, sha1),
                (SHA256_HEX, OtpAlgorithm::Sha256, sha256),
                (SHA512_HEX, OtpAlgorithm::Sha512, sha512),
            ] {
                let s = seed(hex, OtpEncoding::Hex, 8, algorithm);
                assert_eq!(
                    code_at(&s, time).unwrap().as_str(),
                    want,
                    "{algorithm:?} at {time}"
                );
            }
        }
    }

    #[test]
    fn base32_seeds_as_apps_write_them() {
        // "12345678901234567890" in Base32.
        let canonical = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        let want = code_at(&seed(SHA1_HEX, OtpEncoding::Hex, 6, OtpAlgorithm::Sha1), 59).unwrap();
        assert_eq!(want.as_str(), "287082");
        for written in [
            canonical,
            "gezd gnbv gy3t qojq gezd gnbv gy3t qojq",
            "GEZDGNBV-GY3TQOJQ-GEZDGNBV-GY3TQOJQ",
        ] {
            let s = seed(written, OtpEncoding::Base32, 6, OtpAlgorithm::Sha1);
            assert_eq!(code_at(&s, 59).unwrap(), want, "{written}");
        }
        // An 80-bit seed (16 characters) works, padded or not.
        for written in ["JBSWY3DPEHPK3PXP", "JBSWY3DPEHPK3PXP===="] {
            let s = seed(written, OtpEncoding::Base32, 6, OtpAlgorithm::Sha1);
            assert_eq!(code_at(&s, 0).unwrap().len(), 6);
        }
    }

    #[test]
    fn seven_digit_codes_and_any_period() {
        let mut s = seed(SHA1_HEX, OtpEncoding::Hex, 7, OtpAlgorithm::Sha1);
        assert_eq!(code_at(&s, 59).unwrap().as_str(), "4287082");
        s.period = 60;
        // Step 0 for t < 60 with a 60-second period: the code of t = 0 at period 30.
        let zero = code_at(&seed(SHA1_HEX, OtpEncoding::Hex, 7, OtpAlgorithm::Sha1), 0).unwrap();
        assert_eq!(code_at(&s, 59).unwrap(), zero);
    }

    #[test]
    fn bad_seeds_and_settings_are_refused_without_quoting_the_seed() {
        let cases = [
            (
                seed("JBSWY3DP!", OtpEncoding::Base32, 6, OtpAlgorithm::Sha1),
                OtpError::Encoding("Base32"),
            ),
            (
                seed("A", OtpEncoding::Base32, 6, OtpAlgorithm::Sha1),
                OtpError::Encoding("Base32"),
            ),
            (
                seed("abc", OtpEncoding::Hex, 6, OtpAlgorithm::Sha1),
                OtpError::Encoding("Hex"),
            ),
            (
                seed("zz", OtpEncoding::Hex, 6, OtpAlgorithm::Sha1),
                OtpError::Encoding("Hex"),
            ),
            (
                seed("", OtpEncoding::Hex, 6, OtpAlgorithm::Sha1),
                OtpError::Empty,
            ),
            (
                seed("3132", OtpEncoding::Hex, 9, OtpAlgorithm::Sha1),
                OtpError::Digits(9),
            ),
        ];
        for (s, want) in cases {
            let err = code_at(&s, 0).unwrap_err();
            assert_eq!(err, want);
            assert!(!err.to_string().contains("JBSWY3DP"));
        }
        let mut s = seed(SHA1_HEX, OtpEncoding::Hex, 6, OtpAlgorithm::Sha1);
        s.period = 0;
        assert_eq!(code_at(&s, 0).unwrap_err(), OtpError::Period(0));
    }
}
