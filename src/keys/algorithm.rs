//! The algorithms keyward signs with.

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
