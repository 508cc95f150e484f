//! `[[identity_provider]]`: issuers whose JWTs authenticate workloads (Kubernetes projected
//! service-account tokens, SPIFFE JWT-SVIDs, CI OIDC tokens) as clients bound to them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Duration};

/// One identity provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderConfig {
    /// The `iss` of its tokens, exactly.
    pub issuer: String,
    /// Where its JWKS is fetched: an `https://` URL (see `ca_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Or a local JWKS file (e.g. a cluster's, from `kubectl get --raw /openid/v1/jwks`),
    /// re-read when it changes. A relative path is relative to the configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// PEM file of the CA(s) that `jwks_uri`'s server certificate must chain to; without
    /// it, the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The `aud` keyward expects in every token (one of the token's audiences).
    pub audience: String,
    /// The signature algorithms accepted (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The oldest token accepted, by its `iat` (and the longest `exp - iat`).
    #[serde(default = "default_max_token_age")]
    pub max_token_age: Duration,
    /// Allowed clock difference for `exp`, `nbf` and `iat`.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: Duration,
}

/// Algorithms an identity provider may be allowed: asymmetric only (no `none`, no HS*).
pub const ASYMMETRIC_ALGORITHMS: [&str; 9] =
    ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned(), "ES256".to_owned()]
}

fn default_max_token_age() -> Duration {
    Duration::from_secs(3_600)
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}

/// Checks every `[[identity_provider]]`.
pub(super) fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let mut issuers = std::collections::BTreeSet::new();
    for provider in &config.identity_providers {
        let fail = |field: &str, message: String| ConfigError {
            source_name: source_name.to_owned(),
            location: format!("[[identity_provider]] {:?}, field {field}", provider.issuer),
            message,
        };
        if provider.issuer.trim().is_empty() || provider.issuer.contains('|') {
            return Err(fail("issuer", "must be the tokens' `iss`, non-empty and without '|'".to_owned()));
        }
        if !issuers.insert(provider.issuer.as_str()) {
            return Err(fail("issuer", "another [[identity_provider]] has the same issuer".to_owned()));
        }
        match (&provider.jwks_uri, &provider.jwks_file) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(fail("jwks_uri", "give exactly one of jwks_uri (https://...) and jwks_file".to_owned()));
            }
            (Some(uri), None) if !uri.starts_with("https://") => {
                return Err(fail("jwks_uri", format!("{uri:?} must be an https:// URL")));
            }
            (None, Some(_)) if provider.ca_file.is_some() => {
                return Err(fail("ca_file", "only a jwks_uri is fetched over TLS".to_owned()));
            }
            _ => {}
        }
        if provider.audience.trim().is_empty() {
            return Err(fail("audience", "must name the audience keyward expects (e.g. \"keyward\")".to_owned()));
        }
        if provider.algorithms.is_empty() {
            return Err(fail("algorithms", format!("allow at least one of {}", ASYMMETRIC_ALGORITHMS.join(", "))));
        }
        if let Some(bad) = provider.algorithms.iter().find(|a| !ASYMMETRIC_ALGORITHMS.contains(&a.as_str())) {
            return Err(fail(
                "algorithms",
                format!("{bad:?} is not allowed: only asymmetric algorithms ({})", ASYMMETRIC_ALGORITHMS.join(", ")),
            ));
        }
        if !(60..=86_400).contains(&provider.max_token_age.as_secs()) {
            return Err(fail("max_token_age", format!("{} is out of range: use 1m to 1d", provider.max_token_age)));
        }
        if provider.clock_skew.as_secs() > 300 {
            return Err(fail("clock_skew", format!("{} is too long: use at most 5m", provider.clock_skew)));
        }
    }
    Ok(())
}

/// Makes the JWKS and CA file paths relative to the configuration file's folder.
pub(super) fn resolve_relative_paths(config: &mut Config, folder: &Path) {
    for provider in &mut config.identity_providers {
        for file in [&mut provider.jwks_file, &mut provider.ca_file].into_iter().flatten() {
            if file.is_relative() {
                *file = folder.join(&*file);
            }
        }
    }
}
