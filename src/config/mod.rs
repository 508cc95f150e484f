//! Configuration: built-in defaults (identical to `keys.example`), then the TOML file,
//! then `KEYWARD_*` environment variables; validated once, at start-up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::rotation::Policy;
use crate::keys::{Algorithm, HmacAlgorithm};

mod database;
mod duration;
pub use database::{Database, PostgresUrl};
pub use duration::Duration;

/// Claims a caller may never set: they are fixed by the profile or by keyward.
pub const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// The partner requires `exp` less than one hour after issue: a hard cap for every profile.
pub const TTL_HARD_CAP: Duration = Duration::from_secs(3_600);

/// Paths the public listener keeps for itself.
const RESERVED_PUBLIC_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Environment variables keyward reads, with what each sets (shown by `--help`); any other
/// `KEYWARD_*` variable is a mistake.
pub const KNOWN_ENV: [(&str, &str); 13] = [
    ("KEYWARD_CONFIG", "the configuration file (as --config)"),
    ("KEYWARD_PUBLIC_ADDR", "[server] public_addr"),
    ("KEYWARD_INTERNAL_ADDR", "[server] internal_addr"),
    ("KEYWARD_DATABASE_URL", "[server] database_url"),
    ("KEYWARD_MASTER_KEY", "the master key itself, base64 of 32 bytes (wins over the file)"),
    ("KEYWARD_MASTER_KEY_FILE", "[server] master_key_file"),
    ("KEYWARD_DEV", "1: a missing master key may be generated (the default outside the Docker image); 0: never"),
    ("KEYWARD_LEDGER_RETENTION", "[server] ledger_retention"),
    ("KEYWARD_LEDGER_COMMIT_INTERVAL_MS", "[server] ledger_commit_interval_ms"),
    ("KEYWARD_RATE_LIMIT", "[server] rate_limit"),
    ("KEYWARD_RATE_BURST", "[server] rate_burst"),
    ("KEYWARD_REQUEST_BODY_TIMEOUT", "[server] request_body_timeout"),
    ("KEYWARD_LOG_FORMAT", "text (default) or json"),
];

/// The log's format, from `KEYWARD_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings only the environment gives: they apply before (and whatever) the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvSettings {
    /// `KEYWARD_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `KEYWARD_DEV`: whether a missing master key may be generated (development only).
    pub may_generate_master_key: bool,
}

impl EnvSettings {
    /// Reads `KEYWARD_LOG_FORMAT` and `KEYWARD_DEV`, refusing values keyward does not know.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let log_format = match env.get("KEYWARD_LOG_FORMAT").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => {
                return Err(env_error(
                    "KEYWARD_LOG_FORMAT",
                    format!("{:?} is not a log format: use text or json", env["KEYWARD_LOG_FORMAT"]),
                ))
            }
        };
        // Unset means allowed, so that a fresh clone runs at once; the Docker image sets 0.
        let may_generate_master_key = match env.get("KEYWARD_DEV").map(String::as_str) {
            None | Some("1") | Some("true") => true,
            Some("0") | Some("false") => false,
            Some(other) => {
                return Err(env_error(
                    "KEYWARD_DEV",
                    format!("{other:?} is not allowed: use 1 (or true) or 0 (or false)"),
                ))
            }
        };
        Ok(EnvSettings { log_format, may_generate_master_key })
    }
}

/// The whole configuration, as in `keys.example`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener addresses and storage.
    #[serde(default)]
    pub server: ServerConfig,
    /// Signing key sets.
    #[serde(default, rename = "key_set")]
    pub key_sets: Vec<KeySetConfig>,
    /// Signing profiles.
    #[serde(default, rename = "profile")]
    pub profiles: Vec<ProfileConfig>,
}

/// `[server]`: where keyward listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// JWKS and health only.
    pub public_addr: SocketAddr,
    /// Signing and admin API.
    pub internal_addr: SocketAddr,
    /// The SQLite file (`sqlite://PATH`, `sqlite:PATH` or a plain path; a relative path in a
    /// configuration file is relative to the file's folder), or a PostgreSQL server
    /// (`postgres://USER@HOST/DB?sslmode=verify-full`).
    pub database_url: String,
    /// Where the master key lives when `KEYWARD_MASTER_KEY` is not set. A relative path in a
    /// configuration file is relative to the file's folder.
    pub master_key_file: PathBuf,
    /// How long issuance ledger rows are kept.
    pub ledger_retention: Duration,
    /// How long after the previous ledger commit started a commit may wait for company, in
    /// milliseconds, and only while fewer rows have come than the previous one carried.
    /// 0 (the default): commit as soon as the writer is free.
    pub ledger_commit_interval_ms: u64,
    /// Requests per second a client may make, unless set for the client.
    pub rate_limit: u32,
    /// Requests a client may make at once above its rate, unless set for the client.
    pub rate_burst: u32,
    /// How long the internal listener waits for a request's whole body once its headers
    /// have arrived (a slow sender would hold a connection and a worker otherwise).
    pub request_body_timeout: Duration,
}

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

/// `[[key_set]]`: a rotating family of signing keys published at some JWKS paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySetConfig {
    /// Unique name, used by profiles and commands.
    pub name: String,
    /// Signing algorithm of every key in the set.
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    /// RSA modulus size; ignored for EC algorithms.
    #[serde(default = "default_rsa_bits")]
    pub rsa_bits: u32,
    /// Public paths serving this set's JWKS.
    #[serde(default = "default_jwks_paths")]
    pub jwks_paths: Vec<String>,
    /// `Cache-Control: max-age` of the JWKS responses.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age: Duration,
    /// How often the signing key is replaced.
    #[serde(default = "default_rotate_every")]
    pub rotate_every: Duration,
    /// How long a key is published before it may sign.
    #[serde(default = "default_publish_ahead")]
    pub publish_ahead: Duration,
    /// How long a key stays published after its last token expired.
    #[serde(default = "default_retain_after")]
    pub retain_after: Duration,
    /// Margin for clocks that disagree and for the time servers take to see a change.
    #[serde(default = "default_clock_skew")]
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
    #[serde(default = "default_subject_pattern")]
    pub subject_pattern: String,
    /// Lifetime when the request names none.
    #[serde(default = "default_ttl")]
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for; under one hour.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Duration,
}

/// What values an allowed claim takes, e.g. `{ type = "string_array", max_items = 8 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClaimType {
    /// A string of at most `max_length` characters.
    String {
        /// Longest value, in characters.
        #[serde(default = "default_claim_max_length")]
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
        #[serde(default = "default_claim_max_items")]
        max_items: usize,
        /// Longest item, in characters.
        #[serde(default = "default_claim_max_length")]
        max_length: usize,
    },
}

/// The type of an allowed claim that `allowed_claim_types` does not name.
pub const DEFAULT_CLAIM_TYPE: ClaimType = ClaimType::String { max_length: 256 };

fn default_claim_max_length() -> usize {
    256
}
fn default_claim_max_items() -> usize {
    16
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
    #[serde(default = "default_token_field")]
    pub token_field: String,
    /// `account_key`: the service account id sent with the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// `account_key`: where a refresh token buys a new access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_url: Option<String>,
    /// How long one upstream call may take.
    #[serde(default = "default_exchange_timeout")]
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

fn default_token_field() -> String {
    "token".to_owned()
}
fn default_exchange_timeout() -> Duration {
    Duration::from_secs(5)
}

/// The claim placeholders of shared-secret templates.
pub const PLACEHOLDERS: [&str; 4] = ["{iat}", "{exp}", "{jti}", "{sub}"];

/// Parses an RFC 3339 instant into Unix seconds.
pub fn parse_instant(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp())
}

fn default_algorithm() -> Algorithm {
    Algorithm::Rs256
}
fn default_rsa_bits() -> u32 {
    2048
}
fn default_jwks_paths() -> Vec<String> {
    vec!["/path/to/your/jwks".to_owned(), "/.well-known/jwks.json".to_owned()]
}
fn default_jwks_max_age() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_rotate_every() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_publish_ahead() -> Duration {
    Duration::from_secs(24 * 3_600)
}
fn default_retain_after() -> Duration {
    Duration::from_secs(24 * 3_600)
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_subject_pattern() -> String {
    "^[A-Za-z0-9._@:-]{1,128}$".to_owned()
}
fn default_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_max_ttl() -> Duration {
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
        }
    }
}

/// A configuration that cannot be used, with enough context for a person to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {location}: {message}")]
pub struct ConfigError {
    /// The file (or "environment", or "built-in defaults").
    pub source_name: String,
    /// Table and field, e.g. `[[key_set]] "npm", field rsa_bits`.
    pub location: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Where the configuration came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// No file: the built-in defaults.
    Defaults,
    /// A TOML file.
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Defaults => f.write_str("built-in defaults"),
            ConfigSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The configuration as loaded, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The validated configuration.
    pub config: Config,
    /// Its origin, for messages.
    pub source: ConfigSource,
    /// Things worth a warning at start-up, such as unknown `KEYWARD_*` variables.
    pub warnings: Vec<String>,
}

/// Chooses the file: `--config`/`KEYWARD_CONFIG`, else `./keys.toml` if present, else none.
pub fn choose_source(explicit: Option<&Path>, cwd_has_keys_toml: bool) -> ConfigSource {
    match explicit {
        Some(path) => ConfigSource::File(path.to_owned()),
        None if cwd_has_keys_toml => ConfigSource::File(PathBuf::from("keys.toml")),
        None => ConfigSource::Defaults,
    }
}

/// Loads and validates: the file (if any), then the environment, then every rule.
pub fn load(source: ConfigSource, env: &HashMap<String, String>) -> Result<LoadedConfig, ConfigError> {
    let mut config = match &source {
        ConfigSource::Defaults => Config::default(),
        ConfigSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
                source_name: path.display().to_string(),
                location: "file".to_owned(),
                message: format!("cannot read the configuration file: {err}"),
            })?;
            let mut config = parse_toml(&text, &source.to_string())?;
            resolve_relative_paths(&mut config, path, &source.to_string())?;
            config
        }
    };
    let warnings = apply_env(&mut config, env)?;
    validate(&config, &source.to_string()).map_err(|err| blame_environment(err, env))?;
    Ok(LoadedConfig { config, source, warnings })
}

/// Makes the file's relative paths relative to the file's folder, as nginx, Vault and
/// systemd do: the same file then means the same database from any working directory.
fn resolve_relative_paths(config: &mut Config, file: &Path, source_name: &str) -> Result<(), ConfigError> {
    let folder =
        std::path::absolute(file).ok().and_then(|f| f.parent().map(Path::to_path_buf)).ok_or_else(|| ConfigError {
            source_name: source_name.to_owned(),
            location: "file".to_owned(),
            message: "cannot tell which folder the configuration file is in".to_owned(),
        })?;
    let server = &mut config.server;
    if let Ok(path) = database_file(&server.database_url) {
        if path.is_relative() {
            server.database_url = format!("sqlite://{}", folder.join(path).display());
        }
    }
    if server.master_key_file.is_relative() {
        server.master_key_file = folder.join(&server.master_key_file);
    }
    Ok(())
}

/// A `[server]` field set by `KEYWARD_<FIELD>` is reported under that variable's name.
fn blame_environment(err: ConfigError, env: &HashMap<String, String>) -> ConfigError {
    let field = err.location.strip_prefix("[server], field ").map(str::to_owned);
    match field.map(|f| format!("KEYWARD_{}", f.to_ascii_uppercase())) {
        Some(var) if env.contains_key(&var) => env_error(&var, err.message),
        _ => err,
    }
}

/// The file inside a `database_url`: `sqlite://PATH`, `sqlite:PATH` (sqlx's forms, so
/// `sqlite:///abs/x.db` is `/abs/x.db`) or a plain path.
pub fn database_file(url: &str) -> Result<PathBuf, String> {
    if database::is_postgres(url) {
        return Err(format!("{url:?} is a PostgreSQL server, not a SQLite file"));
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    if path.is_empty() || path.starts_with(":memory:") || path.starts_with("file:") || path.contains('?') {
        return Err(format!(
            "{url:?} is not a SQLite file: use sqlite://data/keyward.db, sqlite:///abs/path.db or a plain path \
             (keyward keeps its keys in a file; in-memory databases and URL parameters are not supported)"
        ));
    }
    Ok(PathBuf::from(path))
}

/// Parses TOML text, naming the table and field of any error.
pub fn parse_toml(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.message().to_owned();
        let line = inner.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let mut location = describe_path(&path, &message);
        if let Some(line) = line {
            location.push_str(&format!(" (line {line})"));
        }
        ConfigError { source_name: source_name.to_owned(), location, message }
    })
}

/// Turns `key_set[0].rsa_bits` into `[[key_set]] #1, field rsa_bits`.
fn describe_path(path: &str, message: &str) -> String {
    let named_field = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .and_then(|rest| rest.split('`').next());
    let mut parts = path.split('.').filter(|p| !p.is_empty() && *p != "?").collect::<Vec<_>>();
    if let Some(field) = named_field.filter(|f| parts.last() != Some(f)) {
        parts.push(field);
    }
    let mut table = String::from("top level");
    let mut field: Vec<&str> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        // The first part names the table; the rest, however deep, is the field.
        if i == 0 && (parts.len() > 1 || part.contains('[')) {
            table = match part.split_once('[') {
                Some((name, index)) => {
                    let index: usize = index.trim_end_matches(']').parse().unwrap_or(0);
                    format!("[[{name}]] #{}", index + 1)
                }
                None => format!("[{part}]"),
            };
        } else {
            field.push(part);
        }
    }
    if field.is_empty() {
        table
    } else {
        format!("{table}, field {}", field.join("."))
    }
}

fn env_error(var: &str, message: String) -> ConfigError {
    ConfigError { source_name: "environment".to_owned(), location: var.to_owned(), message }
}

/// Applies `KEYWARD_<FIELD>` overrides of `[server]`. Unknown `KEYWARD_*` names are
/// returned as warnings, not refused: container platforms inject some (a Kubernetes
/// Service named `keyward` adds `KEYWARD_PORT`, `KEYWARD_SERVICE_HOST`, ...).
fn apply_env(config: &mut Config, env: &HashMap<String, String>) -> Result<Vec<String>, ConfigError> {
    let known: Vec<&str> = KNOWN_ENV.iter().map(|(name, _)| *name).collect();
    let mut unknown: Vec<&String> =
        env.keys().filter(|k| k.starts_with("KEYWARD_") && !known.contains(&k.as_str())).collect();
    unknown.sort();
    let warnings = unknown
        .iter()
        .map(|name| format!("ignoring unknown environment variable {name} (keyward reads {})", known.join(", ")))
        .collect();
    let addr = |var: &str, value: &str| {
        value
            .parse::<SocketAddr>()
            .map_err(|_| env_error(var, format!("{value:?} is not an address like 127.0.0.1:8080")))
    };
    if let Some(v) = env.get("KEYWARD_PUBLIC_ADDR") {
        config.server.public_addr = addr("KEYWARD_PUBLIC_ADDR", v)?;
    }
    if let Some(v) = env.get("KEYWARD_INTERNAL_ADDR") {
        config.server.internal_addr = addr("KEYWARD_INTERNAL_ADDR", v)?;
    }
    if let Some(v) = env.get("KEYWARD_DATABASE_URL") {
        config.server.database_url = v.clone();
    }
    if let Some(v) = env.get("KEYWARD_MASTER_KEY_FILE") {
        config.server.master_key_file = PathBuf::from(v);
    }
    if let Some(v) = env.get("KEYWARD_REQUEST_BODY_TIMEOUT") {
        config.server.request_body_timeout =
            Duration::parse(v).map_err(|m| env_error("KEYWARD_REQUEST_BODY_TIMEOUT", m))?;
    }
    if let Some(v) = env.get("KEYWARD_LEDGER_RETENTION") {
        config.server.ledger_retention = Duration::parse(v).map_err(|m| env_error("KEYWARD_LEDGER_RETENTION", m))?;
    }
    if let Some(v) = env.get("KEYWARD_LEDGER_COMMIT_INTERVAL_MS") {
        config.server.ledger_commit_interval_ms = v
            .parse()
            .map_err(|_| env_error("KEYWARD_LEDGER_COMMIT_INTERVAL_MS", format!("{v:?} is not a whole number")))?;
    }
    for (var, field) in
        [("KEYWARD_RATE_LIMIT", &mut config.server.rate_limit), ("KEYWARD_RATE_BURST", &mut config.server.rate_burst)]
    {
        if let Some(v) = env.get(var) {
            *field = v.parse().map_err(|_| env_error(var, format!("{v:?} is not a whole number")))?;
        }
    }
    Ok(warnings)
}

/// Every start-up rule; the first broken one is reported.
pub fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let fail =
        |location: String, message: String| ConfigError { source_name: source_name.to_owned(), location, message };
    let server = &config.server;
    Database::parse(&server.database_url).map_err(|m| fail("[server], field database_url".to_owned(), m))?;
    if server.ledger_retention.as_secs() < 86_400 {
        return Err(fail(
            "[server], field ledger_retention".to_owned(),
            format!("{} is too short to answer an auditor: keep at least 1d", server.ledger_retention),
        ));
    }
    if server.ledger_commit_interval_ms > 1_000 {
        return Err(fail(
            "[server], field ledger_commit_interval_ms".to_owned(),
            format!(
                "{} ms would hold every signing request that long: use at most 1000 (default 5)",
                server.ledger_commit_interval_ms
            ),
        ));
    }
    if !(1..=60).contains(&server.request_body_timeout.as_secs()) {
        return Err(fail(
            "[server], field request_body_timeout".to_owned(),
            format!("{} is out of range: use 1s to 60s (default 5s)", server.request_body_timeout),
        ));
    }
    for (field, value) in [("rate_limit", server.rate_limit), ("rate_burst", server.rate_burst)] {
        if value == 0 {
            return Err(fail(format!("[server], field {field}"), "must be at least 1".to_owned()));
        }
    }
    if server.public_addr == server.internal_addr && server.public_addr.port() != 0 {
        return Err(fail(
            "[server], field internal_addr".to_owned(),
            "the internal listener must not share the public listener's address".to_owned(),
        ));
    }

    let mut set_names = BTreeSet::new();
    let mut path_owner: HashMap<&str, &str> = HashMap::new();
    for set in &config.key_sets {
        let at = |field: &str| format!("[[key_set]] {:?}, field {field}", set.name);
        check_name(&set.name).map_err(|m| fail(at("name"), m))?;
        if !set_names.insert(set.name.as_str()) {
            return Err(fail(at("name"), "another [[key_set]] has the same name".to_owned()));
        }
        if set.algorithm.is_rsa() && ![2048, 3072, 4096].contains(&set.rsa_bits) {
            return Err(fail(
                at("rsa_bits"),
                format!("RSA keys must be 2048, 3072 or 4096 bits, not {}", set.rsa_bits),
            ));
        }
        for path in &set.jwks_paths {
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.contains("//") {
                return Err(fail(
                    at("jwks_paths"),
                    format!("{path:?} must be an absolute path like /.well-known/jwks.json"),
                ));
            }
            if RESERVED_PUBLIC_PATHS.contains(&path.as_str()) {
                return Err(fail(at("jwks_paths"), format!("{path:?} is reserved for health checks")));
            }
            if let Some(other) = path_owner.insert(path, &set.name) {
                let message = if other == set.name {
                    format!("{path:?} is listed twice")
                } else {
                    format!("{path:?} is already served by key set {other:?}")
                };
                return Err(fail(at("jwks_paths"), message));
            }
        }
        for (field, value) in [
            ("rotate_every", set.rotate_every),
            ("publish_ahead", set.publish_ahead),
            ("retain_after", set.retain_after),
            ("clock_skew", set.clock_skew),
        ] {
            if value.as_secs() == 0 {
                return Err(fail(at(field), "must be at least 1s".to_owned()));
            }
        }
        let cache_window = set.cache_window();
        if set.publish_ahead < cache_window {
            return Err(fail(
                at("publish_ahead"),
                format!(
                    "{} is shorter than jwks_max_age + clock_skew ({}): a verifier holding a JWKS cached \
                     just before a new key appeared would meet tokens it cannot verify",
                    set.publish_ahead, cache_window
                ),
            ));
        }
        if set.retain_after < cache_window {
            return Err(fail(
                at("retain_after"),
                format!(
                    "{} is shorter than jwks_max_age + clock_skew ({}): a key could leave the JWKS \
                     while verifiers with skewed clocks still accept its last tokens",
                    set.retain_after, cache_window
                ),
            ));
        }
        if set.rotate_every < set.publish_ahead {
            return Err(fail(
                at("rotate_every"),
                format!(
                    "{} is shorter than publish_ahead ({}): each next key must be published for \
                     publish_ahead before it signs",
                    set.rotate_every, set.publish_ahead
                ),
            ));
        }
    }

    let mut profile_names = BTreeSet::new();
    for profile in &config.profiles {
        let at = |field: &str| format!("[[profile]] {:?}, field {field}", profile.name);
        check_name(&profile.name).map_err(|m| fail(at("name"), m))?;
        if !profile_names.insert(profile.name.as_str()) {
            return Err(fail(at("name"), "another [[profile]] has the same name".to_owned()));
        }
        validate_signer(config, profile).map_err(|(field, m)| fail(at(field), m))?;
        validate_ttls_and_claims(profile).map_err(|(field, m)| fail(at(field), m))?;
        if let Err(err) = regex::Regex::new(&profile.subject_pattern) {
            let first_line = err.to_string().lines().last().unwrap_or_default().trim().to_owned();
            return Err(fail(at("subject_pattern"), format!("not a valid regular expression: {first_line}")));
        }
        let from = match &profile.valid_from {
            Some(text) => Some(parse_instant(text).ok_or_else(|| {
                fail(at("valid_from"), format!("{text:?} is not an RFC 3339 time like 2026-01-01T00:00:00Z"))
            })?),
            None => None,
        };
        let until = match &profile.valid_until {
            Some(text) => Some(parse_instant(text).ok_or_else(|| {
                fail(at("valid_until"), format!("{text:?} is not an RFC 3339 time like 2027-01-01T00:00:00Z"))
            })?),
            None => None,
        };
        if let (Some(from), Some(until)) = (from, until) {
            if from >= until {
                return Err(fail(at("valid_until"), "must be after valid_from".to_owned()));
            }
        }
        if let Some(exchange) = &profile.exchange {
            validate_exchange(profile, exchange).map_err(|(field, m)| fail(at(field), m))?;
        }
    }
    Ok(())
}

type FieldError = (&'static str, String);

/// A key-set profile names a set and fixes `iss`/`aud`; a shared-secret profile has an
/// HMAC algorithm and a claims template instead.
fn validate_signer(config: &Config, profile: &ProfileConfig) -> Result<(), FieldError> {
    match (&profile.algorithm, &profile.key_set) {
        (Some(_), Some(_)) => {
            Err(("key_set", "a shared-secret profile (algorithm = HS256/HS512) signs without a key set".to_owned()))
        }
        (None, None) => Err((
            "key_set",
            "missing: name the [[key_set]] that signs, or set algorithm = \"HS256\"/\"HS512\" for a shared secret"
                .to_owned(),
        )),
        (None, Some(set_name)) => {
            let Some(set) = config.key_set(set_name) else {
                return Err(("key_set", format!("no [[key_set]] is named {set_name:?}")));
            };
            for (field, value) in [("issuer", &profile.issuer), ("audience", &profile.audience)] {
                if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                    return Err((field, "missing: a key-set profile fixes iss and aud".to_owned()));
                }
            }
            if profile.claims.is_some() {
                return Err(("claims", "only shared-secret profiles use a claims template".to_owned()));
            }
            for name in profile.static_claims.keys() {
                if REGISTERED_CLAIMS.contains(&name.as_str()) {
                    return Err(("static_claims", format!("{name:?} is a registered claim that keyward sets itself")));
                }
            }
            if let Some(uri) = profile.static_claims.get("jwks_uri") {
                if !uri.as_str().is_some_and(|u| set.jwks_paths.iter().any(|p| p == u)) {
                    return Err((
                        "static_claims.jwks_uri",
                        format!(
                            "{uri} is not one of key set {:?}'s jwks_paths ({})",
                            set.name,
                            set.jwks_paths.join(", ")
                        ),
                    ));
                }
            }
            Ok(())
        }
        (Some(_), None) => {
            for (field, set) in [
                ("issuer", profile.issuer.is_some()),
                ("audience", profile.audience.is_some()),
                ("static_claims", !profile.static_claims.is_empty()),
            ] {
                if set {
                    return Err((
                        field,
                        "a shared-secret profile writes every claim in its claims template".to_owned(),
                    ));
                }
            }
            let Some(template) = &profile.claims else {
                return Err(("claims", "missing: a shared-secret profile needs a claims template".to_owned()));
            };
            if !template.values().any(|v| v == "{exp}") {
                return Err(("claims", "must contain \"{exp}\": every token expires".to_owned()));
            }
            for (name, value) in template {
                if let Some(text) = value.as_str() {
                    let looks_like = text.starts_with('{') && text.ends_with('}') && !text.contains(' ');
                    if looks_like && !PLACEHOLDERS.contains(&text) {
                        return Err((
                            "claims",
                            format!("{name} = {text:?}: unknown placeholder (use {})", PLACEHOLDERS.join(", ")),
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

fn validate_ttls_and_claims(profile: &ProfileConfig) -> Result<(), FieldError> {
    if profile.max_ttl >= TTL_HARD_CAP {
        return Err((
            "max_ttl",
            format!(
                "{} is too long: tokens must expire less than 1 hour after issue (at most 59m or 3599s)",
                profile.max_ttl
            ),
        ));
    }
    if profile.max_ttl.as_secs() == 0 {
        return Err(("max_ttl", "must be at least 1s".to_owned()));
    }
    if profile.default_ttl.as_secs() == 0 {
        return Err(("default_ttl", "must be at least 1s".to_owned()));
    }
    if profile.default_ttl > profile.max_ttl {
        return Err(("default_ttl", format!("{} is longer than max_ttl ({})", profile.default_ttl, profile.max_ttl)));
    }
    let template_names = profile.claims.as_ref().map(|t| t.keys().collect::<Vec<_>>()).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for name in &profile.allowed_claims {
        if REGISTERED_CLAIMS.contains(&name.as_str()) {
            return Err(("allowed_claims", format!("{name:?} is a registered claim; callers may not set it")));
        }
        if profile.static_claims.contains_key(name) || template_names.contains(&name) {
            return Err((
                "allowed_claims",
                format!("{name:?} is a static claim of this profile; callers may not override it"),
            ));
        }
        if name.is_empty() || !seen.insert(name) {
            return Err(("allowed_claims", format!("{name:?} is empty or listed twice")));
        }
    }
    for (name, claim_type) in &profile.allowed_claim_types {
        let problem = match *claim_type {
            _ if !seen.contains(name) => Some("is not in allowed_claims"),
            ClaimType::String { max_length: 0 } | ClaimType::StringArray { max_length: 0, .. } => {
                Some("has max_length 0: use at least 1")
            }
            ClaimType::StringArray { max_items: 0, .. } => Some("has max_items 0: use at least 1"),
            ClaimType::Integer { min: Some(min), max: Some(max) } if min > max => Some("has min above max"),
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(("allowed_claim_types", format!("{name:?} {problem}")));
        }
    }
    Ok(())
}

fn validate_exchange(profile: &ProfileConfig, exchange: &ExchangeConfig) -> Result<(), FieldError> {
    let url_ok = |url: &str| url.starts_with("https://") || url.starts_with("http://");
    if !url_ok(&exchange.token_url) {
        return Err(("exchange.token_url", format!("{:?} is not an http(s) URL", exchange.token_url)));
    }
    if let Some(url) = exchange.refresh_url.as_deref().filter(|u| !url_ok(u)) {
        return Err(("exchange.refresh_url", format!("{url:?} is not an http(s) URL")));
    }
    if exchange.timeout.as_secs() == 0 {
        return Err(("exchange.timeout", "must be at least 1s".to_owned()));
    }
    if exchange.style == ExchangeStyle::AccountKey {
        if profile.key_set.is_none() {
            return Err((
                "exchange.style",
                "account_key sends a key set's public key: the profile needs a key_set".to_owned(),
            ));
        }
        if exchange.account_id.as_deref().is_none_or(str::is_empty) {
            return Err(("exchange.account_id", "missing: account_key needs the service account id".to_owned()));
        }
    }
    Ok(())
}

/// Names appear in URLs and commands: keep them plain.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"))
    }
}

impl KeySetConfig {
    /// How long a verifier may hold a JWKS it fetched: `jwks_max_age + clock_skew`.
    pub fn cache_window(&self) -> Duration {
        Duration::from_secs(self.jwks_max_age.as_secs().saturating_add(self.clock_skew.as_secs()))
    }
}

impl Config {
    /// The rotation policy of `set`: retention covers the longest `max_ttl` of the
    /// profiles that use the set (an hour, the hard cap, if none does).
    pub fn policy(&self, set: &KeySetConfig) -> Policy {
        let max_ttl = self
            .profiles
            .iter()
            .filter(|p| p.key_set.as_deref() == Some(set.name.as_str()))
            .map(|p| p.max_ttl)
            .max()
            .unwrap_or(TTL_HARD_CAP);
        Policy {
            algorithm: set.algorithm,
            rsa_bits: set.rsa_bits,
            rotate_every: set.rotate_every.as_secs_i64(),
            publish_ahead: set.publish_ahead.as_secs_i64(),
            retain_for: max_ttl.as_secs_i64().saturating_add(set.retain_after.as_secs_i64()),
            cache_window: set.cache_window().as_secs_i64(),
        }
    }

    /// The key set named `name`.
    pub fn key_set(&self, name: &str) -> Option<&KeySetConfig> {
        self.key_sets.iter().find(|s| s.name == name)
    }

    /// The store `database_url` names (checked by [`validate`]).
    pub fn database(&self) -> Database {
        Database::parse(&self.server.database_url)
            .unwrap_or_else(|_| Database::Sqlite(PathBuf::from(&self.server.database_url)))
    }

    /// The SQLite file inside `database_url` (checked by [`validate`]).
    pub fn database_path(&self) -> PathBuf {
        database_file(&self.server.database_url).unwrap_or_else(|_| PathBuf::from(&self.server.database_url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn example_with(replace: &str, with: &str) -> Result<Config, ConfigError> {
        let text = include_str!("../../keys.example");
        assert!(text.contains(replace), "keys.example lacks {replace:?}");
        let config = parse_toml(&text.replacen(replace, with, 1), "keys.toml")?;
        validate(&config, "keys.toml")?;
        Ok(config)
    }

    fn error_of(replace: &str, with: &str) -> String {
        match example_with(replace, with) {
            Ok(_) => panic!("{with:?} should be refused"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn keys_example_is_exactly_the_built_in_defaults() {
        let parsed = parse_toml(include_str!("../../keys.example"), "keys.example").unwrap();
        assert_eq!(parsed, Config::default());
        validate(&parsed, "keys.example").unwrap();
    }

    #[test]
    fn a_minimal_file_gets_every_documented_default() {
        let text = r#"
            [[key_set]]
            name = "npm"
            [[profile]]
            name = "npm-sandbox"
            key_set = "npm"
            issuer = "https://yourdomain.com"
            audience = "http://sandbox.npmdev.net/api/partners/acme/oauth2/v1/token"
            static_claims = { jwks_uri = "/path/to/your/jwks" }
            allowed_claims = ["obo_user"]
        "#;
        assert_eq!(parse_toml(text, "keys.toml").unwrap(), Config::default());
    }

    #[test]
    fn unknown_field_names_file_table_and_field() {
        let msg = error_of("rsa_bits = 2048", "rsa_bitz = 2048");
        assert!(msg.starts_with("keys.toml: [[key_set]] #1, field rsa_bitz"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        let msg = error_of("[server]", "[server]\nlisten = 1");
        assert!(msg.contains("[server], field listen"), "{msg}");
    }

    #[test]
    fn parse_errors_give_the_right_line_and_name_missing_fields() {
        let text = include_str!("../../keys.example");
        let line = text.lines().position(|l| l.starts_with("rsa_bits")).unwrap() + 1;
        let msg = error_of("rsa_bits = 2048", "rsa_bitz = 2048");
        assert!(msg.contains(&format!("(line {line})")), "expected line {line}: {msg}");
        let msg = error_of(r#"name = "npm-sandbox""#, "");
        assert!(msg.contains("[[profile]] #1, field name") && msg.contains("missing field"), "{msg}");
        let msg = error_of(r#"issuer = "https://yourdomain.com""#, "");
        assert!(msg.contains(r#"[[profile]] "npm-sandbox", field issuer: missing"#), "{msg}");
    }

    #[test]
    fn a_path_listed_twice_in_one_set_says_so() {
        let msg = error_of(
            r#"jwks_paths = ["/path/to/your/jwks", "/.well-known/jwks.json"]"#,
            r#"jwks_paths = ["/a", "/a"]"#,
        );
        assert!(msg.contains("\"/a\" is listed twice"), "{msg}");
    }

    #[test]
    fn each_start_up_rule_is_enforced_with_its_field_named() {
        let cases = [
            (r#"algorithm = "RS256""#, r#"algorithm = "HS999""#, "field algorithm"),
            ("rsa_bits = 2048", "rsa_bits = 1024", "field rsa_bits"),
            (r#"key_set = "npm""#, r#"key_set = "nope""#, "field key_set"),
            (r#"max_ttl = "55m""#, r#"max_ttl = "1h""#, "field max_ttl"),
            (r#"max_ttl = "55m""#, r#"max_ttl = "3600s""#, "field max_ttl"),
            (r#"default_ttl = "5m""#, r#"default_ttl = "56m""#, "field default_ttl"),
            (
                r#"static_claims = { jwks_uri = "/path/to/your/jwks" }"#,
                r#"static_claims = { jwks_uri = "/elsewhere" }"#,
                "field static_claims.jwks_uri",
            ),
            (r#"allowed_claims = ["obo_user"]"#, r#"allowed_claims = ["exp"]"#, "field allowed_claims"),
            (r#"allowed_claims = ["obo_user"]"#, r#"allowed_claims = ["jwks_uri"]"#, "field allowed_claims"),
            (
                r#"subject_pattern = "^[A-Za-z0-9._@:-]{1,128}$""#,
                r#"subject_pattern = "^[a-z""#,
                "field subject_pattern",
            ),
            (r#"jwks_max_age = "5m""#, r#"jwks_max_age = "5 minutes""#, "field jwks_max_age"),
        ];
        for (replace, with, expect) in cases {
            let msg = error_of(replace, with);
            assert!(msg.starts_with("keys.toml: "), "{msg}");
            assert!(msg.contains(expect), "{with}: expected {expect:?} in {msg:?}");
        }
    }

    #[test]
    fn rotation_timing_rules_name_the_rule_that_failed() {
        let cases = [
            (
                r#"publish_ahead = "24h""#,
                r#"publish_ahead = "5m""#,
                "field publish_ahead",
                "jwks_max_age + clock_skew (6m)",
            ),
            (
                r#"retain_after = "24h""#,
                r#"retain_after = "359s""#,
                "field retain_after",
                "jwks_max_age + clock_skew (6m)",
            ),
            (
                r#"rotate_every = "30d""#,
                r#"rotate_every = "23h""#,
                "field rotate_every",
                "shorter than publish_ahead (1d)",
            ),
            (r#"clock_skew = "60s""#, r#"clock_skew = "0s""#, "field clock_skew", "at least 1s"),
        ];
        for (replace, with, field, rule) in cases {
            let msg = error_of(replace, with);
            assert!(msg.contains(field) && msg.contains(rule), "{with}: {msg}");
        }
        // Exactly at each bound is accepted.
        example_with(r#"publish_ahead = "24h""#, r#"publish_ahead = "6m""#).unwrap();
        example_with(r#"retain_after = "24h""#, r#"retain_after = "360s""#).unwrap();
        example_with(r#"rotate_every = "30d""#, r#"rotate_every = "24h""#).unwrap();
    }

    #[test]
    fn every_duration_may_be_as_short_as_one_second() {
        let text = include_str!("../../keys.example")
            .replace(r#"jwks_max_age = "5m""#, r#"jwks_max_age = "1s""#)
            .replace(r#"clock_skew = "60s""#, r#"clock_skew = "1s""#)
            .replace(r#"publish_ahead = "24h""#, r#"publish_ahead = "2s""#)
            .replace(r#"retain_after = "24h""#, r#"retain_after = "2s""#)
            .replace(r#"rotate_every = "30d""#, r#"rotate_every = "2s""#)
            .replace(r#"default_ttl = "5m""#, r#"default_ttl = "1s""#)
            .replace(r#"max_ttl = "55m""#, r#"max_ttl = "1s""#);
        let config = parse_toml(&text, "keys.toml").unwrap();
        validate(&config, "keys.toml").unwrap();
        assert_eq!(config.key_sets[0].rotate_every.as_secs(), 2);
    }

    #[test]
    fn two_key_sets_may_not_claim_one_path() {
        let second = r#"
[[key_set]]
name = "other"
algorithm = "ES256"
jwks_paths = ["/.well-known/jwks.json"]
"#;
        let text = format!("{}\n{second}", include_str!("../../keys.example"));
        let config = parse_toml(&text, "keys.toml").unwrap();
        let msg = validate(&config, "keys.toml").unwrap_err().to_string();
        assert!(msg.contains(r#"[[key_set]] "other", field jwks_paths"#), "{msg}");
        assert!(msg.contains("already served by key set \"npm\""), "{msg}");
    }

    #[test]
    fn allowed_claim_types_are_parsed_at_load_and_bad_declarations_name_the_field_and_line() {
        let names = r#"allowed_claims = ["obo_user"]"#;
        let declared =
            |types: &str| format!("allowed_claims = [\"obo_user\", \"roles\"]\nallowed_claim_types = {types}");
        let config = example_with(
            names,
            &declared(r#"{ obo_user = { type = "string", max_length = 320 }, roles = { type = "string_array", max_items = 8 } }"#),
        )
        .unwrap();
        let types = &config.profiles[0].allowed_claim_types;
        assert_eq!(types["obo_user"], ClaimType::String { max_length: 320 });
        // keys.example's commented declaration works as it is.
        let uncommented = example_with("# allowed_claim_types = ", "allowed_claim_types = ").unwrap();
        assert_eq!(uncommented.profiles[0].allowed_claim_types["obo_user"], ClaimType::String { max_length: 320 });
        assert_eq!(types["roles"], ClaimType::StringArray { max_items: 8, max_length: 256 });
        let line = include_str!("../../keys.example").lines().position(|l| l.starts_with(names)).unwrap() + 2;
        let cases = [
            (r#"{ roles = { type = "float" } }"#, "field allowed_claim_types"),
            (r#"{ roles = { type = "string", max_len = 5 } }"#, "field allowed_claim_types"),
            (r#"{ roles = { type = "boolean", max_length = 5 } }"#, "field allowed_claim_types"),
            (r#"{ roles = { type = "string", max_length = -1 } }"#, "field allowed_claim_types"),
            (r#"{ roles = { max_length = 5 } }"#, "field allowed_claim_types"),
        ];
        for (types, field) in cases {
            let msg = error_of(names, &declared(types));
            assert!(msg.contains(field) && msg.contains(&format!("(line {line})")), "{types}: {msg}");
        }
        let cases = [
            (r#"{ role = { type = "string" } }"#, "\"role\" is not in allowed_claims"),
            (r#"{ roles = { type = "string", max_length = 0 } }"#, "\"roles\" has max_length 0"),
            (r#"{ roles = { type = "string_array", max_items = 0 } }"#, "\"roles\" has max_items 0"),
            (r#"{ roles = { type = "integer", min = 5, max = 4 } }"#, "\"roles\" has min above max"),
        ];
        for (types, says) in cases {
            let msg = error_of(names, &declared(types));
            assert!(
                msg.contains(r#"[[profile]] "npm-sandbox", field allowed_claim_types"#) && msg.contains(says),
                "{msg}"
            );
        }
    }

    #[test]
    fn max_ttl_just_under_an_hour_is_accepted() {
        example_with(r#"max_ttl = "55m""#, r#"max_ttl = "3599s""#).unwrap();
    }

    #[test]
    fn ledger_commit_interval_is_at_most_a_second() {
        let config = example_with("ledger_commit_interval_ms = 0", "ledger_commit_interval_ms = 5").unwrap();
        assert_eq!(config.server.ledger_commit_interval_ms, 5);
        let err = error_of("ledger_commit_interval_ms = 0", "ledger_commit_interval_ms = 1001");
        assert!(err.contains("ledger_commit_interval_ms") && err.contains("at most 1000"), "{err}");
        let loaded = load(ConfigSource::Defaults, &env(&[("KEYWARD_LEDGER_COMMIT_INTERVAL_MS", "20")])).unwrap();
        assert_eq!(loaded.config.server.ledger_commit_interval_ms, 20);
        let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_LEDGER_COMMIT_INTERVAL_MS", "5ms")])).unwrap_err();
        assert!(err.to_string().contains("KEYWARD_LEDGER_COMMIT_INTERVAL_MS"), "{err}");
    }

    #[test]
    fn request_body_timeout_is_one_to_sixty_seconds_from_the_file_or_the_environment() {
        let config = example_with(r#"request_body_timeout = "5s""#, r#"request_body_timeout = "60s""#).unwrap();
        assert_eq!(config.server.request_body_timeout, Duration::from_secs(60));
        for bad in ["0s", "61s"] {
            let err = error_of(r#"request_body_timeout = "5s""#, &format!("request_body_timeout = {bad:?}"));
            assert!(err.contains("[server], field request_body_timeout") && err.contains("1s to 60s"), "{err}");
        }
        let err = error_of(r#"request_body_timeout = "5s""#, "request_body_timeout = 5");
        assert!(err.contains("[server], field request_body_timeout (line"), "{err}");
        let loaded = load(ConfigSource::Defaults, &env(&[("KEYWARD_REQUEST_BODY_TIMEOUT", "2s")])).unwrap();
        assert_eq!(loaded.config.server.request_body_timeout, Duration::from_secs(2));
        let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_REQUEST_BODY_TIMEOUT", "2")])).unwrap_err();
        assert!(err.to_string().contains("KEYWARD_REQUEST_BODY_TIMEOUT"), "{err}");
        let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_REQUEST_BODY_TIMEOUT", "0s")])).unwrap_err();
        assert!(err.to_string().starts_with("environment: KEYWARD_REQUEST_BODY_TIMEOUT: "), "{err}");
        assert!(err.to_string().contains("1s to 60s"), "{err}");
    }

    #[test]
    fn env_overrides_server_fields_and_warns_about_unknown_names() {
        let loaded = load(
            ConfigSource::Defaults,
            &env(&[("KEYWARD_PUBLIC_ADDR", "0.0.0.0:9000"), ("KEYWARD_DATABASE_URL", "sqlite:///tmp/x.db")]),
        )
        .unwrap();
        assert_eq!(loaded.config.server.public_addr.port(), 9000);
        assert_eq!(loaded.config.database_path(), Path::new("/tmp/x.db"));

        let loaded =
            load(ConfigSource::Defaults, &env(&[("KEYWARD_PUBLC_ADDR", "x"), ("KEYWARD_PORT", "tcp://x")])).unwrap();
        assert_eq!(loaded.warnings.len(), 2);
        assert!(loaded.warnings[1].contains("KEYWARD_PUBLC_ADDR"), "{:?}", loaded.warnings);
        let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_PUBLIC_ADDR", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("KEYWARD_PUBLIC_ADDR"));
    }

    #[test]
    fn source_is_explicit_file_then_keys_toml_then_defaults() {
        assert_eq!(
            choose_source(Some(Path::new("/etc/k.toml")), true),
            ConfigSource::File(PathBuf::from("/etc/k.toml"))
        );
        assert_eq!(choose_source(None, true), ConfigSource::File(PathBuf::from("keys.toml")));
        assert_eq!(choose_source(None, false), ConfigSource::Defaults);
    }

    #[test]
    fn database_url_takes_the_forms_sqlx_takes_and_plain_paths() {
        for (url, path) in [
            ("sqlite://data/keyward.db", "data/keyward.db"),
            ("sqlite:x.db", "x.db"),
            ("sqlite:///abs/x.db", "/abs/x.db"),
            ("/abs/y.db", "/abs/y.db"),
            ("rel/z.db", "rel/z.db"),
        ] {
            assert_eq!(database_file(url).unwrap(), Path::new(path), "{url}");
        }
        for url in ["sqlite::memory:", "sqlite://", "sqlite://x.db?mode=ro", ""] {
            assert!(database_file(url).is_err(), "{url}");
        }
    }

    #[test]
    fn an_error_in_a_value_from_the_environment_names_the_variable() {
        let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_DATABASE_URL", "sqlite::memory:")])).unwrap_err();
        assert_eq!((err.source_name.as_str(), err.location.as_str()), ("environment", "KEYWARD_DATABASE_URL"));
        let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_RATE_BURST", "0")])).unwrap_err();
        assert_eq!(err.location, "KEYWARD_RATE_BURST", "{err}");
        let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_LEDGER_RETENTION", "1h")])).unwrap_err();
        assert_eq!(err.location, "KEYWARD_LEDGER_RETENTION", "{err}");
        // A value from the built-in defaults or a file keeps its table and field.
        let loaded = load(ConfigSource::Defaults, &env(&[("KEYWARD_DATABASE_URL", "/tmp/x.db")])).unwrap();
        assert_eq!(loaded.config.database_path(), Path::new("/tmp/x.db"));
    }

    #[test]
    fn log_format_and_dev_take_only_known_values() {
        assert_eq!(EnvSettings::from_env(&env(&[])).unwrap().log_format, LogFormat::Text);
        assert!(EnvSettings::from_env(&env(&[])).unwrap().may_generate_master_key);
        assert_eq!(EnvSettings::from_env(&env(&[("KEYWARD_LOG_FORMAT", "JSON")])).unwrap().log_format, LogFormat::Json);
        assert!(!EnvSettings::from_env(&env(&[("KEYWARD_DEV", "0")])).unwrap().may_generate_master_key);
        let err = EnvSettings::from_env(&env(&[("KEYWARD_LOG_FORMAT", "josn")])).unwrap_err().to_string();
        assert!(err.contains("KEYWARD_LOG_FORMAT") && err.contains("text or json"), "{err}");
        let err = EnvSettings::from_env(&env(&[("KEYWARD_DEV", "yes")])).unwrap_err().to_string();
        assert!(err.contains("KEYWARD_DEV"), "{err}");
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_its_folder_and_absolute_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.toml");
        let text = include_str!("../../keys.example")
            .replace(r#"master_key_file = "data/master.key""#, r#"master_key_file = "/secure/master.key""#);
        std::fs::write(&file, text).unwrap();
        let loaded = load(ConfigSource::File(file), &HashMap::new()).unwrap();
        assert_eq!(loaded.config.database_path(), dir.path().join("data/keyward.db"));
        assert_eq!(loaded.config.server.master_key_file, Path::new("/secure/master.key"));
        // From the environment, relative stays relative (to the working directory).
        let file = dir.path().join("keys.toml");
        let loaded = load(ConfigSource::File(file), &env(&[("KEYWARD_DATABASE_URL", "here.db")])).unwrap();
        assert_eq!(loaded.config.database_path(), Path::new("here.db"));
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let err = load(ConfigSource::File(PathBuf::from("/nonexistent/keys.toml")), &HashMap::new()).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/keys.toml: file: cannot read"), "{err}");
    }

    #[test]
    fn retention_covers_the_longest_max_ttl_of_the_sets_profiles() {
        let mut config = Config::default();
        let mut second = config.profiles[0].clone();
        second.name = "longer".into();
        second.max_ttl = Duration::from_secs(3_599);
        config.profiles.push(second);
        let p = config.policy(&config.key_sets[0]);
        const DAY: i64 = 86_400;
        assert_eq!(p.retain_for, 3_599 + DAY);
        config.profiles.clear();
        assert_eq!(config.policy(&config.key_sets[0]).retain_for, 3_600 + DAY);
    }
}
