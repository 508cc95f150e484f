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
    /// `source = "transit"`: Vault's (or OpenBao's) address, `https://vault.example:8200`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `source = "transit"`: the Transit key that seals the keyring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// `source = "transit"`: where the Transit engine is mounted (default `transit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// `source = "transit"`: the Vault namespace, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `source = "transit"`: a CA file (PEM) for Vault's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `source = "transit"`: a file holding the Vault token (0600; re-read when renewing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `source = "transit"`: the variable holding the Vault token (instead of token_file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_variable: Option<String>,
    /// `source = "transit"`: log in with this AppRole role id (instead of a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approle_role_id: Option<String>,
    /// `source = "transit"`: the file holding the AppRole secret id (0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approle_secret_id_file: Option<PathBuf>,
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
    /// A key of Vault's (or OpenBao's) Transit engine.
    Transit,
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
    /// The Transit key `key_name` at `mount` of the Vault at `address`.
    Transit {
        /// The address.
        address: String,
        /// The mount.
        mount: String,
        /// The key.
        key_name: String,
    },
}

impl MasterKeyConfig {
    /// A table of `source` with no other field set.
    pub fn of(source: MasterKeySource) -> Self {
        MasterKeyConfig {
            source,
            variable: None,
            file: None,
            key_label: None,
            address: None,
            key_name: None,
            mount: None,
            namespace: None,
            ca_file: None,
            token_file: None,
            token_variable: None,
            approle_role_id: None,
            approle_secret_id_file: None,
            previous: None,
        }
    }

    /// The source this table describes (checked by `validate`).
    pub fn spec(&self) -> MasterKeySpec {
        match self.source {
            MasterKeySource::Env => {
                MasterKeySpec::Env(self.variable.clone().unwrap_or_else(|| MASTER_KEY_ENV.to_owned()))
            }
            MasterKeySource::File => MasterKeySpec::File(self.file.clone().unwrap_or_default()),
            MasterKeySource::Pkcs11 => MasterKeySpec::Pkcs11(self.key_label.clone().unwrap_or_default()),
            MasterKeySource::Transit => MasterKeySpec::Transit {
                address: self.address.clone().unwrap_or_default(),
                mount: self.mount.clone().unwrap_or_else(|| "transit".to_owned()),
                key_name: self.key_name.clone().unwrap_or_default(),
            },
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
    if table.source != MasterKeySource::Transit {
        let transit_fields = [
            ("address", table.address.is_some()),
            ("key_name", table.key_name.is_some()),
            ("mount", table.mount.is_some()),
            ("namespace", table.namespace.is_some()),
            ("ca_file", table.ca_file.is_some()),
            ("token_file", table.token_file.is_some()),
            ("token_variable", table.token_variable.is_some()),
            ("approle_role_id", table.approle_role_id.is_some()),
            ("approle_secret_id_file", table.approle_secret_id_file.is_some()),
        ];
        if let Some((name, _)) = transit_fields.into_iter().find(|(_, set)| *set) {
            return Err(misplaced(name, "transit"));
        }
    }
    match table.source {
        MasterKeySource::Transit => {
            if table.file.is_some() {
                return Err(misplaced("file", "file"));
            }
            if table.variable.is_some() {
                return Err(misplaced("variable", "env"));
            }
            // Without an address of its own, the master key uses the [vault] table's Vault
            // and login (validated there).
            let shared = table.address.is_none() && config.vault.is_some();
            let address = table.address.as_deref().unwrap_or_default();
            if !(shared || address.starts_with("https://") || address.starts_with("http://")) {
                return Err(fail(
                    source_name,
                    &field("address"),
                    format!("{address:?} is not a Vault address: use https://HOST:8200"),
                ));
            }
            if table.key_name.as_ref().is_none_or(|k| k.trim().is_empty()) {
                return Err(fail(source_name, &field("key_name"), "source = \"transit\" needs key_name".to_owned()));
            }
            let logins = [table.token_file.is_some(), table.token_variable.is_some(), table.approle_role_id.is_some()];
            let count = logins.iter().filter(|set| **set).count();
            if shared && count > 0 {
                return Err(fail(
                    source_name,
                    &field("token_file"),
                    "without an address, the master key logs in to Vault as [vault] says: set the login there only"
                        .to_owned(),
                ));
            }
            if !shared && count != 1 {
                return Err(fail(
                    source_name,
                    &field("token_file"),
                    "source = \"transit\" needs exactly one login: token_file, token_variable, or approle_role_id \
                     with approle_secret_id_file"
                        .to_owned(),
                ));
            }
            if table.approle_role_id.is_some() != table.approle_secret_id_file.is_some() {
                return Err(fail(
                    source_name,
                    &field("approle_secret_id_file"),
                    "an AppRole login needs both approle_role_id and approle_secret_id_file".to_owned(),
                ));
            }
        }
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
        for file in [&mut t.file, &mut t.ca_file, &mut t.token_file, &mut t.approle_secret_id_file] {
            if let Some(file) = file.as_mut().filter(|f| f.is_relative()) {
                *file = folder.join(&*file);
            }
        }
        table = t.previous.as_deref_mut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_toml, validate};

    fn with(table: &str) -> Result<Config, ConfigError> {
        let config = parse_toml(&format!("{}\n{table}", super::super::defaults::EXAMPLE), "k.toml")?;
        validate(&config, "k.toml").map(|()| config)
    }

    #[test]
    fn each_source_names_the_field_it_lacks_or_does_not_take() {
        let cases = [
            ("[master_key]\nsource = \"file\"\n", "[master_key], field file"),
            ("[master_key]\nsource = \"env\"\nfile = \"m.key\"\n", "[master_key], field file"),
            ("[master_key]\nsource = \"pkcs11\"\n", "[master_key], field key_label"),
            ("[master_key]\nsource = \"pkcs11\"\nkey_label = \"k\"\n", "[master_key], field source"),
            ("[master_key]\nsource = \"transit\"\naddress = \"vault:8200\"\nkey_name = \"k\"\ntoken_file = \"t\"\n", "[master_key], field address"),
            (
                "[master_key]\nsource = \"transit\"\naddress = \"https://v\"\nkey_name = \"k\"\ntoken_file = \"t\"\ntoken_variable = \"T\"\n",
                "[master_key], field token_file",
            ),
            (
                "[master_key]\nsource = \"transit\"\naddress = \"https://v\"\nkey_name = \"k\"\napprole_role_id = \"r\"\n",
                "[master_key], field approle_secret_id_file",
            ),
            ("[master_key]\nsource = \"file\"\nfile = \"m.key\"\nkey_name = \"k\"\n", "[master_key], field key_name"),
            (
                "[master_key]\nsource = \"file\"\nfile = \"m.key\"\n[master_key.previous]\nsource = \"file\"\nfile = \"m.key\"\n",
                "[master_key.previous]",
            ),
        ];
        for (table, location) in cases {
            let err = with(table).err().unwrap_or_else(|| panic!("accepted: {table}"));
            assert_eq!(err.location, location, "{table}: {}", err.message);
        }
    }

    #[test]
    fn a_rotation_names_both_keys_and_relative_files_follow_the_configuration_file() {
        let config = with(
            "[master_key]\nsource = \"file\"\nfile = \"new.key\"\n[master_key.previous]\nsource = \"env\"\nvariable = \"OLD_KEY\"\n",
        )
        .unwrap();
        let table = config.master_key.as_deref().unwrap();
        assert_eq!(table.spec(), MasterKeySpec::File("new.key".into()));
        assert_eq!(table.previous.as_deref().unwrap().spec(), MasterKeySpec::Env("OLD_KEY".to_owned()));
        let mut config = config.clone();
        resolve_relative_paths(&mut config, Path::new("/etc/keyward"));
        assert_eq!(config.master_key.unwrap().spec(), MasterKeySpec::File("/etc/keyward/new.key".into()));
    }
}
