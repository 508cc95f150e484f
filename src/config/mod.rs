//! Configuration: built-in defaults (identical to `keys.example`), then the TOML file,
//! then `KEYWARD_*` environment variables; validated once, at start-up.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::rotation::Policy;

mod aws_kms;
mod database;
mod defaults;
pub mod discovery;
mod duration;
mod env;
mod identity;
mod master_key;
mod parse;
mod partner;
mod pkcs11;
mod schema;
#[cfg(test)]
mod tests;
mod tls;
mod validate;
mod vault;

pub use aws_kms::AwsKmsConfig;
pub use database::{Database, PostgresUrl};
pub use duration::{human_span, Duration};
use env::{apply_env, blame_environment};
pub use env::{known_env, EnvSettings, LogFormat};
pub use identity::{IdentityProviderConfig, ASYMMETRIC_ALGORITHMS};
pub use master_key::{MasterKeyConfig, MasterKeySource, MasterKeySpec, MASTER_KEY_ENV};
pub use parse::{parse_toml, ConfigError};
pub use partner::{Cidr, PartnerConfig, PartnerMatch, UserAgentPattern};
pub use pkcs11::{Pkcs11Config, PIN_ENV};
pub use schema::{
    parse_instant, ClaimType, ExchangeConfig, ExchangeStyle, KeySetConfig, ProfileConfig, ServerConfig,
    DEFAULT_CLAIM_TYPE, PLACEHOLDERS, REGISTERED_CLAIMS, TTL_HARD_CAP,
};
pub use tls::TlsConfig;
pub(crate) use validate::check_name;
pub use validate::validate;
pub use vault::VaultConfig;

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
    /// The verifiers that fetch our JWKS.
    #[serde(default, rename = "partner", skip_serializing_if = "Vec::is_empty")]
    pub partners: Vec<PartnerConfig>,
    /// The PKCS#11 token of `custody = "pkcs11"` key sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Config>,
    /// The Vault of `custody = "vault-transit"` key sets (and of a Transit master key
    /// without its own address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultConfig>,
    /// The AWS KMS of `custody = "aws-kms"` key sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_kms: Option<AwsKmsConfig>,
    /// Issuers whose JWTs authenticate clients bound to a workload identity.
    #[serde(default, rename = "identity_provider", skip_serializing_if = "Vec::is_empty")]
    pub identity_providers: Vec<IdentityProviderConfig>,
    /// Where the master key comes from (without it: `KEYWARD_MASTER_KEY`, else
    /// `[server] master_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Box<MasterKeyConfig>>,
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

/// Loads and validates: the file (if any), then the environment, then every rule of
/// `[server]` and the key sets (profiles are checked as `policy::profile` parses them).
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
    for tls in [&mut server.public_tls, &mut server.internal_tls].into_iter().flatten() {
        tls.resolve_relative_to(&folder);
    }
    pkcs11::resolve_relative_paths(config, &folder);
    identity::resolve_relative_paths(config, &folder);
    master_key::resolve_relative_paths(config, &folder);
    vault::resolve_relative_paths(config, &folder);
    Ok(())
}

/// The file inside a `database_url`: `sqlite://PATH`, `sqlite:PATH` (sqlx's forms, so
/// `sqlite:///abs/x.db` is `/abs/x.db`) or a plain path.
pub fn database_file(url: &str) -> Result<PathBuf, String> {
    if database::is_postgres(url) {
        // Not the URL itself: it may hold a password.
        return Err("a PostgreSQL URL names a server, not a SQLite file".to_owned());
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

impl KeySetConfig {
    /// How long a verifier may hold a JWKS it fetched: `jwks_max_age + clock_skew`.
    pub fn cache_window(&self) -> Duration {
        Duration::from_secs(self.jwks_max_age.as_secs().saturating_add(self.clock_skew.as_secs()))
    }
}

impl Config {
    /// Whether anything configured is sealed under the master key: a key set whose keys
    /// are sealed in the database, or a profile that signs with a shared secret. With every
    /// key set in the PKCS#11 token and no shared secret, nothing is.
    pub fn needs_master_key(&self) -> bool {
        self.key_sets.iter().any(|s| s.custody == crate::keys::custody::CustodyKind::Sealed)
            || self.profiles.iter().any(|p| p.algorithm.is_some())
    }

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
