//! The configuration's shape, as written in `keys.example`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::defaults;
use super::{Duration, TlsConfig};
use crate::keys::custody::CustodyKind;
use crate::keys::{Algorithm, HmacAlgorithm};

/// Claims a caller may never set: they are fixed by the profile or by keyward.
pub const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// The partner requires `exp` less than one hour after issue: a hard cap for every profile.
pub const TTL_HARD_CAP: Duration = Duration::from_secs(3_600);

/// `[server]`: where keyward listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// JWKS and health only.
    #[serde(default = "defaults::server::public_addr")]
    pub public_addr: SocketAddr,
    /// Signing and admin API.
    #[serde(default = "defaults::server::internal_addr")]
    pub internal_addr: SocketAddr,
    /// The SQLite file (`sqlite://PATH`, `sqlite:PATH` or a plain path; a relative path in a
    /// configuration file is relative to the file's folder), or a PostgreSQL server
    /// (`postgres://USER@HOST/DB?sslmode=verify-full`).
    #[serde(default = "defaults::server::database_url")]
    pub database_url: String,
    /// Where the master key lives when `KEYWARD_MASTER_KEY` is not set. A relative path in a
    /// configuration file is relative to the file's folder.
    #[serde(default = "defaults::server::master_key_file")]
    pub master_key_file: PathBuf,
    /// How long issuance ledger rows are kept.
    #[serde(default = "defaults::server::ledger_retention")]
    pub ledger_retention: Duration,
    /// How often the audit trail's chain heads are recorded as a checkpoint.
    #[serde(default = "defaults::server::audit_checkpoint_interval")]
    pub audit_checkpoint_interval: Duration,
    /// The key set whose current key signs checkpoints (one no profile signs with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_checkpoint_key_set: Option<String>,
    /// How long after the previous ledger commit started a commit may wait for company, in
    /// milliseconds, and only while fewer rows have come than the previous one carried.
    /// 0 (the default): commit as soon as the writer is free.
    #[serde(default = "defaults::server::ledger_commit_interval_ms")]
    pub ledger_commit_interval_ms: u64,
    /// Requests per second a client may make, unless set for the client.
    #[serde(default = "defaults::server::rate_limit")]
    pub rate_limit: u32,
    /// Requests a client may make at once above its rate, unless set for the client.
    #[serde(default = "defaults::server::rate_burst")]
    pub rate_burst: u32,
    /// How long the internal listener waits for a request's whole body once its headers
    /// have arrived (a slow sender would hold a connection and a worker otherwise).
    #[serde(default = "defaults::server::request_body_timeout")]
    pub request_body_timeout: Duration,
    /// How long a sign or token request may take from its arrival: a token that cannot be
    /// recorded within it is never handed out (503 `not-recorded`), and none reaches a
    /// caller with less than its lifetime minus this left.
    #[serde(default = "defaults::server::request_deadline")]
    pub request_deadline: Duration,
    /// Sign and token requests served at once, at most; more are refused at once (503
    /// `overloaded`) instead of queueing behind them.
    #[serde(default = "defaults::server::max_signing_requests")]
    pub max_signing_requests: u32,
    /// Serve the read-only operator console at `/console/` on the internal listener.
    #[serde(default = "defaults::server::console")]
    pub console: bool,
    /// How long a console session lasts after sign-in.
    #[serde(default = "defaults::server::console_session")]
    pub console_session: Duration,
    /// Serve the public listener over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_tls: Option<TlsConfig>,
    /// Serve the internal listener over TLS, with client certificates when it names a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_tls: Option<TlsConfig>,
    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded` headers name the client.
    #[serde(default)]
    pub trusted_proxies: Vec<super::Cidr>,
}

/// `[[key_set]]`: a rotating family of signing keys published at some JWKS paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetConfig {
    /// Unique name, used by profiles and commands.
    pub name: String,
    /// Signing algorithm of every key in the set.
    #[serde(default = "defaults::key_set::algorithm")]
    pub algorithm: Algorithm,
    /// Who holds the private keys: sealed in the database, or a PKCS#11 token.
    #[serde(default)]
    pub custody: CustodyKind,
    /// RSA modulus size; ignored for EC algorithms.
    #[serde(default = "defaults::key_set::rsa_bits")]
    pub rsa_bits: u32,
    /// Public paths serving this set's JWKS.
    #[serde(default = "defaults::key_set::jwks_paths")]
    pub jwks_paths: Vec<String>,
    /// `Cache-Control: max-age` of the JWKS responses.
    #[serde(default = "defaults::key_set::jwks_max_age")]
    pub jwks_max_age: Duration,
    /// How often the signing key is replaced.
    #[serde(default = "defaults::key_set::rotate_every")]
    pub rotate_every: Duration,
    /// How long a key is published before it may sign.
    #[serde(default = "defaults::key_set::publish_ahead")]
    pub publish_ahead: Duration,
    /// How long a key stays published after its last token expired.
    #[serde(default = "defaults::key_set::retain_after")]
    pub retain_after: Duration,
    /// Margin for clocks that disagree and for the time servers take to see a change.
    #[serde(default = "defaults::key_set::clock_skew")]
    pub clock_skew: Duration,
}

/// `[[profile]]`: what a caller may get signed, with which key set or shared secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Unique name, part of the signing URL.
    pub name: String,
    /// The key set that signs this profile's tokens (key-set profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_set: Option<String>,
    /// `HS256` or `HS512`: a shared-secret profile, signed with `keyward secrets set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<HmacAlgorithm>,
    /// `iss` of every token (key-set profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `aud` of every token (key-set profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The exact claims of a shared-secret profile's tokens; the strings "{iat}", "{exp}",
    /// "{jti}" and "{sub}" are replaced by the issue time, expiry, a fresh id and the
    /// request's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, serde_json::Value>>,
    /// The partner's name for us, printed by `keyward onboarding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_name: Option<String>,
    /// No token before this instant (RFC 3339), e.g. an API key's start date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    /// No token after this instant (RFC 3339), e.g. an API key's end date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// How `POST /v1/profiles/{name}/token` turns the assertion into a partner token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeConfig>,
    /// Claims added to every token as they are.
    #[serde(default)]
    pub static_claims: BTreeMap<String, serde_json::Value>,
    /// Claim names a caller may add per request.
    #[serde(default)]
    pub allowed_claims: Vec<String>,
    /// The type and size of allowed claims' values; an allowed claim not named here is a
    /// string of at most 256 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allowed_claim_types: BTreeMap<String, ClaimType>,
    /// Regular expression the whole `sub` must match.
    #[serde(default = "defaults::profile::subject_pattern")]
    pub subject_pattern: String,
    /// Lifetime when the request names none.
    #[serde(default = "defaults::profile::default_ttl")]
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for; under one hour.
    #[serde(default = "defaults::profile::max_ttl")]
    pub max_ttl: Duration,
    /// Serve the issuer's discovery documents on the public listener (key-set profiles).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovery: bool,
}

/// What values an allowed claim takes, e.g. `{ type = "string_array", max_items = 8 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClaimType {
    /// A string of at most `max_length` characters.
    String {
        /// Longest value, in characters.
        #[serde(default = "claim_max_length")]
        max_length: usize,
    },
    /// A whole number within the bounds given.
    Integer {
        /// Smallest value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        /// Largest value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    /// `true` or `false`.
    Boolean {},
    /// An array of at most `max_items` strings of at most `max_length` characters each.
    StringArray {
        /// Most items.
        #[serde(default = "claim_max_items")]
        max_items: usize,
        /// Longest item, in characters.
        #[serde(default = "claim_max_length")]
        max_length: usize,
    },
}

/// The type of an allowed claim that `allowed_claim_types` does not name.
pub const DEFAULT_CLAIM_TYPE: ClaimType = ClaimType::String { max_length: 256 };

// Defaults of optional parts that keys.example shows only in comments.
fn claim_max_length() -> usize {
    256
}
fn claim_max_items() -> usize {
    16
}
fn token_field() -> String {
    "token".to_owned()
}
fn exchange_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[profile.exchange]`: trading our assertion or key for a partner's token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    /// How the partner's token endpoint is called.
    pub style: ExchangeStyle,
    /// The partner's token endpoint.
    pub token_url: String,
    /// `bearer_assertion`: where the issued token is in the JSON reply.
    #[serde(default = "token_field")]
    pub token_field: String,
    /// `account_key`: the service account id sent with the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// `account_key`: where a refresh token buys a new access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_url: Option<String>,
    /// How long one upstream call may take.
    #[serde(default = "exchange_timeout")]
    pub timeout: Duration,
}

/// How a partner's token endpoint is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeStyle {
    /// POST with `Authorization: Bearer <assertion>` (NPM).
    BearerAssertion,
    /// POST `{account_id, public_key}`; refresh with the refresh token (PaymentsGate).
    AccountKey,
}

/// The claim placeholders of shared-secret templates.
pub const PLACEHOLDERS: [&str; 4] = ["{iat}", "{exp}", "{jti}", "{sub}"];

/// Parses an RFC 3339 instant into Unix seconds.
pub fn parse_instant(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp())
}
