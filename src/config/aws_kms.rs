//! `[aws_kms]`: the AWS KMS that holds the keys of `custody = "aws-kms"` key sets.
//! Credentials come from the standard AWS chain (environment, profile, web identity,
//! instance metadata), never from this file.

use serde::{Deserialize, Serialize};

use super::vault::{check_bounds, default_max_in_flight, default_sign_timeout_ms};
use super::{Config, ConfigError};
use crate::keys::custody::aws_kms::KmsSettings;
use crate::keys::custody::{CustodyKind, RemoteBounds};
use crate::keys::Algorithm;

/// `[aws_kms]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsConfig {
    /// The region (default: the AWS chain's, e.g. `AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Another endpoint than the region's (a VPC endpoint, or an emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Most signing calls in flight per key set; beyond it a request is refused at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// How long one signing call may take (milliseconds); the request deadline bounds it too.
    #[serde(default = "default_sign_timeout_ms")]
    pub sign_timeout_ms: u64,
}

impl AwsKmsConfig {
    /// Where KMS is.
    pub fn settings(&self) -> KmsSettings {
        KmsSettings { region: self.region.clone(), endpoint: self.endpoint.clone() }
    }

    /// The bounds on signing calls.
    pub fn bounds(&self) -> RemoteBounds {
        RemoteBounds::new(self.max_in_flight, self.sign_timeout_ms)
    }
}

/// Checks `[aws_kms]` and the key sets that need it.
pub(super) fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let fail = |location: &str, message: String| ConfigError {
        source_name: source_name.to_owned(),
        location: location.to_owned(),
        message,
    };
    for set in config.key_sets.iter().filter(|s| s.custody == CustodyKind::AwsKms) {
        let field = |name: &str| format!("[[key_set]] {:?}, field {name}", set.name);
        if config.aws_kms.is_none() {
            return Err(fail(
                &field("custody"),
                "custody = \"aws-kms\" needs an [aws_kms] table (region, or the AWS chain's AWS_REGION)".to_owned(),
            ));
        }
        match set.algorithm {
            Algorithm::EdDsa => {
                return Err(fail(
                    &field("algorithm"),
                    "AWS KMS has no Ed25519 signing keys: use ES256, ES384 or RS256 in KMS, or custody = \"sealed\" \
                     or \"vault-transit\" for EdDSA"
                        .to_owned(),
                ))
            }
            // JWS wants PSS with a salt as long as the hash; that could not be checked
            // against a KMS here (the emulator's salt differs), so it is not offered.
            Algorithm::Ps256 => {
                return Err(fail(
                    &field("algorithm"),
                    "PS256 is not offered with AWS KMS (its PSS salt length could not be verified to be the 32 \
                     bytes JWS requires): use RS256, ES256 or ES384 in KMS"
                        .to_owned(),
                ))
            }
            _ => {}
        }
        if set.algorithm.is_rsa() && ![2048, 3072, 4096].contains(&set.rsa_bits) {
            return Err(fail(
                &field("rsa_bits"),
                format!("AWS KMS makes RSA keys of 2048, 3072 or 4096 bits, not {}", set.rsa_bits),
            ));
        }
    }
    let Some(kms) = &config.aws_kms else { return Ok(()) };
    if let Some(endpoint) = &kms.endpoint {
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(fail("[aws_kms], field endpoint", format!("{endpoint:?} is not a URL: use https://HOST")));
        }
    }
    if kms.region.as_ref().is_some_and(|r| r.trim().is_empty()) {
        return Err(fail("[aws_kms], field region", "must name a region, e.g. eu-west-1".to_owned()));
    }
    check_bounds("[aws_kms]", kms.max_in_flight, kms.sign_timeout_ms).map_err(|(field, m)| fail(&field, m))
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_toml, validate, ConfigError};
    use crate::keys::custody::CustodyKind;
    use crate::keys::Algorithm;

    fn with(tables: &str, algorithm: &str) -> Result<(), ConfigError> {
        let mut config = parse_toml(&format!("{}\n{tables}", super::super::defaults::EXAMPLE), "k.toml")?;
        config.key_sets[0].custody = CustodyKind::AwsKms;
        config.key_sets[0].algorithm = Algorithm::parse(algorithm).unwrap();
        validate(&config, "k.toml")
    }

    #[test]
    fn eddsa_and_ps256_are_refused_in_kms_and_the_table_is_required() {
        let table = "[aws_kms]\nregion = \"eu-west-1\"\n";
        for algorithm in ["EdDSA", "PS256"] {
            let err = with(table, algorithm).unwrap_err();
            assert_eq!(err.location, "[[key_set]] \"npm\", field algorithm", "{algorithm}: {}", err.message);
        }
        for algorithm in ["RS256", "ES256", "ES384"] {
            assert!(with(table, algorithm).is_ok(), "{algorithm}");
        }
        let err = with("", "ES256").unwrap_err();
        assert_eq!(err.location, "[[key_set]] \"npm\", field custody");
        let err = with("[aws_kms]\nmax_in_flight = 0\n", "ES256").unwrap_err();
        assert_eq!(err.location, "[aws_kms], field max_in_flight");
    }
}
