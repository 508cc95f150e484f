//! `KEYWARD_*` environment variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Config, ConfigError, Duration};

/// Environment variables keyward reads, with what each sets (shown by `--help`); any other
/// `KEYWARD_*` variable is a mistake.
pub const KNOWN_ENV: [(&str, &str); 14] = [
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
    ("KEYWARD_PKCS11_PIN", "the PKCS#11 token's user PIN (wins over [pkcs11] pin_file)"),
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

/// A `[server]` field set by `KEYWARD_<FIELD>` is reported under that variable's name.
pub(super) fn blame_environment(err: ConfigError, env: &HashMap<String, String>) -> ConfigError {
    let field = err.location.strip_prefix("[server], field ").map(str::to_owned);
    match field.map(|f| format!("KEYWARD_{}", f.to_ascii_uppercase())) {
        Some(var) if env.contains_key(&var) => env_error(&var, err.message),
        _ => err,
    }
}

pub(super) fn env_error(var: &str, message: String) -> ConfigError {
    ConfigError { source_name: "environment".to_owned(), location: var.to_owned(), message }
}

/// Applies `KEYWARD_<FIELD>` overrides of `[server]`. Unknown `KEYWARD_*` names are
/// returned as warnings, not refused: container platforms inject some (a Kubernetes
/// Service named `keyward` adds `KEYWARD_PORT`, `KEYWARD_SERVICE_HOST`, ...).
pub(super) fn apply_env(config: &mut Config, env: &HashMap<String, String>) -> Result<Vec<String>, ConfigError> {
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
