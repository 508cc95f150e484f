//! A client certificate's SHA-256 fingerprint: what `keyward clients add --cert-sha256`
//! binds a client to, and what a mutual-TLS connection presents.

use std::fmt;
use std::str::FromStr;

/// The SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        CertFingerprint(openssl::sha::sha256(der))
    }
}

impl FromStr for CertFingerprint {
    type Err = String;

    /// 64 hex digits, in either case, with or without colons between bytes (as
    /// `openssl x509 -fingerprint -sha256` prints them).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        let wrong = || format!("{text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)");
        if digits.len() != 64 || !digits.is_ascii() {
            return Err(wrong());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| wrong())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| wrong())?;
        }
        Ok(CertFingerprint(bytes))
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_print_as_lowercase_hex() {
        let plain = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        let a: CertFingerprint = plain.parse().unwrap();
        assert_eq!(a, colons.parse().unwrap());
        assert_eq!(a.to_string(), "ab".repeat(32));
        for bad in ["ab", &"zz".repeat(32), &"ab".repeat(33), &"é".repeat(32)] {
            assert!(bad.parse::<CertFingerprint>().is_err(), "{bad}");
        }
        assert_eq!(CertFingerprint::of_der(b"x").to_string().len(), 64);
    }
}
