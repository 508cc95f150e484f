//! `KEYWARD_*` environment variables.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Config, ConfigError, ServerConfig};

/// Variables that set no `[server]` field, with what each does (shown by `--help`).
const ENVIRONMENT_ONLY: [(&str, &str); 5] = [
    ("KEYWARD_CONFIG", "the configuration file (as --config)"),
    ("KEYWARD_MASTER_KEY", "the master key itself, base64 of 32 bytes (wins over the file)"),
    ("KEYWARD_DEV", "1: a missing master key may be generated (the default outside the Docker image); 0: never"),
    ("KEYWARD_LOG_FORMAT", "text (default) or json"),
    ("KEYWARD_PKCS11_PIN", "the PKCS#11 token's user PIN (wins over [pkcs11] pin_file)"),
];

/// The variable that sets `[server]` field `field`.
fn variable_of(field: &str) -> String {
    format!("KEYWARD_{}", field.to_ascii_uppercase())
}

/// `[server]` as a JSON object: its keys are the schema's field names, so every field,
/// including one added later, has its variable without a list to keep.
fn server_fields(server: &ServerConfig) -> Map<String, Value> {
    match serde_json::to_value(server) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    }
}

/// Every environment variable keyward reads, with what it sets (shown by `--help`); any
/// other `KEYWARD_*` variable is a mistake.
pub fn known_env() -> Vec<(String, String)> {
    let server = server_fields(&ServerConfig::default()).into_iter();
    let server = server.map(|(field, _)| (variable_of(&field), format!("[server] {field}")));
    let only = ENVIRONMENT_ONLY.iter().map(|(name, what)| ((*name).to_owned(), (*what).to_owned()));
    server.chain(only).collect()
}

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
    match field.map(|f| variable_of(&f)) {
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
    let known: Vec<String> = known_env().into_iter().map(|(name, _)| name).collect();
    let mut unknown: Vec<&String> = env.keys().filter(|k| k.starts_with("KEYWARD_") && !known.contains(k)).collect();
    unknown.sort();
    let warnings = unknown
        .iter()
        .map(|name| format!("ignoring unknown environment variable {name} (keyward reads {})", known.join(", ")))
        .collect();
    let mut fields = server_fields(&config.server);
    let mut overridden = false;
    for (field, value) in fields.iter_mut() {
        let var = variable_of(field);
        let Some(text) = env.get(&var) else { continue };
        // The environment has only text: a field that is a number (or a switch) takes it as one.
        *value = match value {
            Value::Number(_) => text
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| env_error(&var, format!("{text:?} is not a whole number")))?,
            Value::Bool(_) => text
                .parse::<bool>()
                .map(Value::from)
                .map_err(|_| env_error(&var, format!("{text:?} is neither true nor false")))?,
            // A list is written comma-separated.
            Value::Array(_) => text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(Value::from).collect(),
            _ => Value::String(text.clone()),
        };
        overridden = true;
    }
    if overridden {
        config.server = serde_path_to_error::deserialize(Value::Object(fields)).map_err(|err| {
            let field = err.path().to_string();
            let var = variable_of(&field);
            let text = env.get(&var).map_or("", String::as_str);
            env_error(&var, format!("{text:?} is not a valid {field}: {}", err.into_inner()))
        })?;
    }
    Ok(warnings)
}
