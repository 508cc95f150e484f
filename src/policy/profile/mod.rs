//! Signing profiles: parsed once from the configuration into what each kind needs, then
//! judging requests as a pure function of the request, the profile and `now`.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{ClaimType, Duration};
use crate::keys::HmacAlgorithm;

mod parse;
mod prepare;
#[cfg(test)]
mod tests;

pub use parse::{parse_profiles, ProfileError};

/// What a profile signs with, and the claims that come with it.
#[derive(Debug, Clone)]
pub enum ProfileKind {
    /// Signed by a key set's current key: `iss`, `sub`, `aud`, `iat`, `exp`, `jti` and the
    /// static claims.
    KeySet {
        /// The key set that signs.
        key_set: String,
        /// `iss` of every token.
        issuer: String,
        /// `aud` of every token.
        audience: String,
        /// Claims added to every token as they are.
        static_claims: Map<String, Value>,
    },
    /// Signed with the profile's own shared secret: exactly the template, placeholders
    /// filled in.
    SharedSecret {
        /// HS256 or HS512.
        algorithm: HmacAlgorithm,
        /// The claims of every token; contains `"{exp}"`.
        template: Map<String, Value>,
    },
}

/// How `/token` trades the assertion, or our key, for a partner's token.
#[derive(Debug, Clone)]
pub enum Exchange {
    /// POST the assertion as a bearer token (NPM).
    BearerAssertion(BearerAssertion),
    /// POST `{account_id, public_key}` with a key set's public key (PaymentsGate).
    AccountKey(AccountKey),
}

/// `style = "bearer_assertion"`.
#[derive(Debug, Clone)]
pub struct BearerAssertion {
    /// The partner's token endpoint.
    pub token_url: String,
    /// Where the issued token is in the JSON reply.
    pub token_field: String,
    /// How long one upstream call may take.
    pub timeout: Duration,
}

/// `style = "account_key"`: only for key-set profiles, whose set it names.
#[derive(Debug, Clone)]
pub struct AccountKey {
    /// The key set whose current public key is sent.
    pub key_set: String,
    /// The partner's token endpoint.
    pub token_url: String,
    /// Where a refresh token buys a new access token.
    pub refresh_url: Option<String>,
    /// The service account id sent with the public key.
    pub account_id: String,
    /// How long one upstream call may take.
    pub timeout: Duration,
}

/// A profile ready to judge requests.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Unique name.
    pub name: String,
    /// What signs, with which claims.
    pub kind: ProfileKind,
    /// The claims a caller may add, with the values each takes.
    allowed_claims: BTreeMap<String, ClaimType>,
    /// The subject pattern, anchored.
    subject: Regex,
    /// The pattern as configured, for messages.
    subject_pattern: String,
    default_ttl: Duration,
    /// Longest lifetime a request may ask for.
    pub max_ttl: Duration,
    valid_from: Option<i64>,
    valid_until: Option<i64>,
    /// How `/token` trades the assertion for a partner token, if it does.
    pub exchange: Option<Exchange>,
}

/// The body of `POST /v1/profiles/{profile}/sign` (and `/token`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Subject of the token, for profiles whose tokens carry the caller's subject.
    #[serde(default)]
    pub sub: Option<String>,
    /// Lifetime in seconds; the profile's default when absent.
    #[serde(default, deserialize_with = "whole_number")]
    pub ttl_seconds: Option<i64>,
    /// Extra claims, each named in the profile's `allowed_claims`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
    /// `/token` only: `false` asks the partner for a fresh token instead of a cached one.
    #[serde(default)]
    pub cache: Option<bool>,
}

/// A JSON integer, written `60` or `60.0`: JSON Schema's `integer` (what the OpenAPI
/// document says) includes numbers with a zero fraction.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    // Within ±2^53 a float is exact, so the conversion loses nothing.
    let exact = |f: f64| (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64);
    number
        .as_i64()
        .or_else(|| number.as_f64().and_then(exact))
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("not a whole number"))
}

/// How a refusal should be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A required field is missing or does not belong (400).
    Malformed,
    /// A value the profile does not accept (422).
    Unacceptable,
    /// The profile may not sign now, e.g. outside its key's validity dates (409).
    NotNow,
}

/// A request the profile refuses, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// How to answer it.
    pub kind: RefusalKind,
    /// The request field, e.g. `sub` or `claims.role`.
    pub field: String,
    /// What is wrong, for the caller.
    pub detail: String,
}

/// The claims of a token about to be signed.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// All claims.
    pub claims: Map<String, Value>,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}
