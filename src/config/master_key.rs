//! `[master_key]`: where the master key that seals the keyring comes from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// The variable `source = "env"` reads unless `variable` names another.
pub const MASTER_KEY_ENV: &str = "KEYWARD_MASTER_KEY";

/// `[master_key]` (and `[master_key.previous]`, the key a rotation moves away from).
/// Without the table, the key is `KEYWARD_MASTER_KEY` if set, else `[server] master_key_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterKeyConfig {
    /// `env`, `file` or `pkcs11`.
    pub source: MasterKeySource,
    /// `source = "env"`: the variable holding base64 of 32 bytes (default KEYWARD_MASTER_KEY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// `source = "file"`: the file holding base64 of 32 bytes (0600). A relative path in a
    /// configuration file is relative to the file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// `source = "pkcs11"`: the label of the AES-256 key in the `[pkcs11]` token (generated
    /// there, never extractable, when the token has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_label: Option<String>,
    /// During a rotation: the master key the keyring is still sealed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<MasterKeyConfig>>,
}

/// The kinds of master-key source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterKeySource {
    /// An environment variable.
    Env,
    /// A file.
    File,
    /// An AES key in the `[pkcs11]` token.
    Pkcs11,
}

/// One master key's source, as checked at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySpec {
    /// The variable named.
    Env(String),
    /// The file named.
    File(PathBuf),
    /// The AES key with this label in the `[pkcs11]` token.
    Pkcs11(String),
}

impl MasterKeyConfig {
    /// The source this table describes (checked by `validate`).
    pub fn spec(&self) -> MasterKeySpec {
        match self.source {
            MasterKeySource::Env => {
                MasterKeySpec::Env(self.variable.clone().unwrap_or_else(|| MASTER_KEY_ENV.to_owned()))
            }
            MasterKeySource::File => MasterKeySpec::File(self.file.clone().unwrap_or_default()),
            MasterKeySource::Pkcs11 => MasterKeySpec::Pkcs11(self.key_label.clone().unwrap_or_default()),
        }
    }
}

/// Checks `[master_key]` and `[master_key.previous]`: each names what its source needs.
pub(super) fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let Some(table) = &config.master_key else { return Ok(()) };
    check(config, table, "[master_key]", source_name)?;
    if let Some(previous) = &table.previous {
        check(config, previous, "[master_key.previous]", source_name)?;
        if previous.previous.is_some() {
            return Err(fail(
                source_name,
                "[master_key.previous], field previous",
                "a rotation has one previous key".to_owned(),
            ));
        }
        if previous.spec() == table.spec() {
            return Err(fail(
                source_name,
                "[master_key.previous]",
                "names the same source as [master_key]: give the new key its own variable or file".to_owned(),
            ));
        }
    }
    Ok(())
}

fn fail(source_name: &str, location: &str, message: String) -> ConfigError {
    ConfigError { source_name: source_name.to_owned(), location: location.to_owned(), message }
}

fn check(config: &Config, table: &MasterKeyConfig, name: &str, source_name: &str) -> Result<(), ConfigError> {
    let field = |f: &str| format!("{name}, field {f}");
    let misplaced =
        |f: &str, source: &str| fail(source_name, &field(f), format!("{f} belongs to source = \"{source}\""));
    if table.source != MasterKeySource::Pkcs11 && table.key_label.is_some() {
        return Err(misplaced("key_label", "pkcs11"));
    }
    match table.source {
        MasterKeySource::Pkcs11 => {
            if table.file.is_some() {
                return Err(misplaced("file", "file"));
            }
            if table.variable.is_some() {
                return Err(misplaced("variable", "env"));
            }
            if table.key_label.as_ref().is_none_or(|l| l.trim().is_empty()) {
                return Err(fail(
                    source_name,
                    &field("key_label"),
                    "source = \"pkcs11\" needs key_label = \"LABEL\" (the AES key in the token)".to_owned(),
                ));
            }
            if config.pkcs11.is_none() {
                return Err(fail(
                    source_name,
                    &field("source"),
                    "source = \"pkcs11\" uses the token of the [pkcs11] table (module, token_label, and the PIN in \
                     pin_file or KEYWARD_PKCS11_PIN), which is missing"
                        .to_owned(),
                ));
            }
        }
        MasterKeySource::Env => {
            if table.file.is_some() {
                return Err(misplaced("file", "file"));
            }
            if let Some(variable) = &table.variable {
                let valid = !variable.is_empty() && variable.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(fail(source_name, &field("variable"), format!("{variable:?} is not a variable name")));
                }
            }
        }
        MasterKeySource::File => {
            if table.variable.is_some() {
                return Err(misplaced("variable", "env"));
            }
            if table.file.as_ref().is_none_or(|f| f.as_os_str().is_empty()) {
                return Err(fail(source_name, &field("file"), "source = \"file\" needs file = \"PATH\"".to_owned()));
            }
        }
    }
    Ok(())
}

/// Makes the tables' relative file paths relative to the configuration file's folder.
pub(super) fn resolve_relative_paths(config: &mut Config, folder: &Path) {
    let mut table = config.master_key.as_deref_mut();
    while let Some(t) = table {
        if let Some(file) = t.file.as_mut().filter(|f| f.is_relative()) {
            *file = folder.join(&*file);
        }
        table = t.previous.as_deref_mut();
    }
}
