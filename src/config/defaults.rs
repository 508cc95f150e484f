//! The built-in defaults: exactly what `keys.example` says (a test compares them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Config, Duration, KeySetConfig, ProfileConfig, ServerConfig};
use crate::keys::custody::CustodyKind;
use crate::keys::Algorithm;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            public_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            internal_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: "sqlite://data/keyward.db".to_owned(),
            master_key_file: PathBuf::from("data/master.key"),
            ledger_retention: Duration::from_secs(90 * 86_400),
            ledger_commit_interval_ms: 0,
            rate_limit: 100,
            rate_burst: 200,
            request_body_timeout: Duration::from_secs(5),
        }
    }
}

pub(super) fn default_claim_max_length() -> usize {
    256
}
pub(super) fn default_claim_max_items() -> usize {
    16
}
pub(super) fn default_token_field() -> String {
    "token".to_owned()
}
pub(super) fn default_exchange_timeout() -> Duration {
    Duration::from_secs(5)
}

pub(super) fn default_algorithm() -> Algorithm {
    Algorithm::Rs256
}
pub(super) fn default_rsa_bits() -> u32 {
    2048
}
pub(super) fn default_jwks_paths() -> Vec<String> {
    vec!["/path/to/your/jwks".to_owned(), "/.well-known/jwks.json".to_owned()]
}
pub(super) fn default_jwks_max_age() -> Duration {
    Duration::from_secs(5 * 60)
}
pub(super) fn default_rotate_every() -> Duration {
    Duration::from_secs(30 * 86_400)
}
pub(super) fn default_publish_ahead() -> Duration {
    Duration::from_secs(24 * 3_600)
}
pub(super) fn default_retain_after() -> Duration {
    Duration::from_secs(24 * 3_600)
}
pub(super) fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_subject_pattern() -> String {
    "^[A-Za-z0-9._@:-]{1,128}$".to_owned()
}
pub(super) fn default_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}
pub(super) fn default_max_ttl() -> Duration {
    Duration::from_secs(55 * 60)
}

impl Default for Config {
    /// The built-in defaults: exactly what `keys.example` says (a test compares them).
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            key_sets: vec![KeySetConfig {
                name: "npm".to_owned(),
                algorithm: default_algorithm(),
                custody: CustodyKind::Sealed,
                rsa_bits: default_rsa_bits(),
                jwks_paths: default_jwks_paths(),
                jwks_max_age: default_jwks_max_age(),
                rotate_every: default_rotate_every(),
                publish_ahead: default_publish_ahead(),
                retain_after: default_retain_after(),
                clock_skew: default_clock_skew(),
            }],
            profiles: vec![ProfileConfig {
                name: "npm-sandbox".to_owned(),
                key_set: Some("npm".to_owned()),
                algorithm: None,
                issuer: Some("https://yourdomain.com".to_owned()),
                audience: Some("http://sandbox.npmdev.net/api/partners/acme/oauth2/v1/token".to_owned()),
                claims: None,
                partner_name: None,
                valid_from: None,
                valid_until: None,
                exchange: None,
                static_claims: BTreeMap::from([(
                    "jwks_uri".to_owned(),
                    serde_json::Value::String("/path/to/your/jwks".to_owned()),
                )]),
                allowed_claims: vec!["obo_user".to_owned()],
                allowed_claim_types: BTreeMap::new(),
                subject_pattern: default_subject_pattern(),
                default_ttl: default_ttl(),
                max_ttl: default_max_ttl(),
            }],
            pkcs11: None,
        }
    }
}
