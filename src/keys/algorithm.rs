//! The algorithms keyward signs with.

use std::fmt;

use openssl::sha::{Sha256, Sha384};
use serde::{Deserialize, Serialize};

/// The HMAC algorithms of shared-secret profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HmacAlgorithm {
    /// HMAC with SHA-256.
    #[serde(rename = "HS256")]
    Hs256,
    /// HMAC with SHA-512.
    #[serde(rename = "HS512")]
    Hs512,
}

impl HmacAlgorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            HmacAlgorithm::Hs256 => "HS256",
            HmacAlgorithm::Hs512 => "HS512",
        }
    }

    /// The shortest secret RFC 7518 allows: the hash's output size.
    pub fn min_secret_len(self) -> usize {
        match self {
            HmacAlgorithm::Hs256 => 32,
            HmacAlgorithm::Hs512 => 64,
        }
    }
}

/// A signing algorithm keyward can hold keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
    /// RSASSA-PSS with SHA-256.
    #[serde(rename = "PS256")]
    Ps256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// ECDSA on P-384 with SHA-384.
    #[serde(rename = "ES384")]
    Es384,
    /// EdDSA on Ed25519 (RFC 8037): signs the message itself, no separate hash.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Ps256 => "PS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// Every algorithm, in the order the documentation lists them.
    pub const ALL: [Algorithm; 5] =
        [Algorithm::Rs256, Algorithm::Ps256, Algorithm::Es256, Algorithm::Es384, Algorithm::EdDsa];

    /// Parses a JOSE name.
    pub fn parse(name: &str) -> Option<Self> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether keys of this algorithm are RSA keys.
    pub fn is_rsa(self) -> bool {
        matches!(self, Algorithm::Rs256 | Algorithm::Ps256)
    }

    /// The signing input's hash (not used by EdDSA, which hashes inside). OpenSSL's one-shot `SHA256()` fetches the algorithm anew
    /// on every call (as much work as hashing a token); the hasher objects do not.
    pub(super) fn hash(self, input: &[u8]) -> Vec<u8> {
        if self == Algorithm::Es384 {
            let mut hasher = Sha384::new();
            hasher.update(input);
            hasher.finish().to_vec()
        } else {
            let mut hasher = Sha256::new();
            hasher.update(input);
            hasher.finish().to_vec()
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::parse(alg.as_str()), Some(alg));
        }
        assert_eq!(Algorithm::parse("HS256"), None);
    }
}
