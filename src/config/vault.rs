//! `[vault]`: the Vault (or OpenBao) that holds the keys of `custody = "vault-transit"` key
//! sets in its Transit engine; a `[master_key]` of `source = "transit"` without its own
//! address uses it too.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Config, ConfigError};
use crate::keys::custody::{CustodyKind, RemoteBounds};
use crate::vault::{VaultAuth, VaultSettings};

/// `[vault]`. The token is never in the file: `token_file`, `token_variable` or an AppRole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200`.
    pub address: String,
    /// Where the Transit engine holding the keys is mounted (default `transit`).
    #[serde(default = "default_mount")]
    pub mount: String,
    /// The Vault namespace, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A CA file (PEM) for Vault's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A file holding the token (0600; re-read when renewing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The variable holding the token (instead of token_file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_variable: Option<String>,
    /// Log in with this AppRole role id (instead of a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approle_role_id: Option<String>,
    /// The file holding the AppRole secret id (0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approle_secret_id_file: Option<PathBuf>,
    /// Most signing calls in flight per key set; beyond it a request is refused at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// How long one signing call may take (milliseconds); the request deadline bounds it too.
    #[serde(default = "default_sign_timeout_ms")]
    pub sign_timeout_ms: u64,
}

fn default_mount() -> String {
    "transit".to_owned()
}

pub(super) fn default_max_in_flight() -> u32 {
    64
}

pub(super) fn default_sign_timeout_ms() -> u64 {
    2_000
}

/// The login the fields describe (checked by `validate`), the token read from `env`.
pub(super) fn auth(
    table: &str,
    token_file: Option<&PathBuf>,
    token_variable: Option<&String>,
    approle: Option<(&String, Option<&PathBuf>)>,
    env: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<VaultAuth> {
    Ok(match (token_file, token_variable, approle) {
        (Some(file), _, _) => VaultAuth::TokenFile(file.clone()),
        (None, Some(variable), _) => VaultAuth::Token(Zeroizing::new(
            env(variable).with_context(|| format!("{table} token_variable names {variable}, which is not set"))?,
        )),
        (None, None, Some((role_id, secret_id_file))) => VaultAuth::AppRole {
            mount: "approle".to_owned(),
            role_id: role_id.clone(),
            secret_id_file: secret_id_file.cloned().unwrap_or_default(),
        },
        (None, None, None) => anyhow::bail!("{table}: Vault needs a token or an AppRole"),
    })
}

impl VaultConfig {
    /// How to reach Vault and log in, the token variable read from `env`.
    pub fn settings(&self, env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<VaultSettings> {
        let approle = self.approle_role_id.as_ref().map(|r| (r, self.approle_secret_id_file.as_ref()));
        let auth = auth("[vault]", self.token_file.as_ref(), self.token_variable.as_ref(), approle, env)?;
        Ok(VaultSettings {
            address: self.address.clone(),
            namespace: self.namespace.clone(),
            ca_file: self.ca_file.clone(),
            auth,
        })
    }

    /// The bounds on signing calls.
    pub fn bounds(&self) -> RemoteBounds {
        RemoteBounds::new(self.max_in_flight, self.sign_timeout_ms)
    }
}

/// Checks `[vault]` and the key sets that need it.
pub(super) fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let fail = |location: &str, message: String| ConfigError {
        source_name: source_name.to_owned(),
        location: location.to_owned(),
        message,
    };
    for set in config.key_sets.iter().filter(|s| s.custody == CustodyKind::VaultTransit) {
        if config.vault.is_none() {
            return Err(fail(
                &format!("[[key_set]] {:?}, field custody", set.name),
                "custody = \"vault-transit\" needs a [vault] table (address, and token_file, token_variable or \
                 approle_role_id with approle_secret_id_file)"
                    .to_owned(),
            ));
        }
        // Transit makes RSA keys of 2048, 3072 and 4096 bits only.
        if set.algorithm.is_rsa() && ![2048, 3072, 4096].contains(&set.rsa_bits) {
            return Err(fail(
                &format!("[[key_set]] {:?}, field rsa_bits", set.name),
                format!("Vault Transit makes RSA keys of 2048, 3072 or 4096 bits, not {}", set.rsa_bits),
            ));
        }
    }
    let Some(vault) = &config.vault else { return Ok(()) };
    if !(vault.address.starts_with("https://") || vault.address.starts_with("http://")) {
        return Err(fail(
            "[vault], field address",
            format!("{:?} is not a Vault address: use https://HOST:8200", vault.address),
        ));
    }
    if vault.mount.trim().is_empty() || vault.mount.contains("..") {
        return Err(fail("[vault], field mount", format!("{:?} is not a mount path", vault.mount)));
    }
    let logins = [vault.token_file.is_some(), vault.token_variable.is_some(), vault.approle_role_id.is_some()];
    if logins.iter().filter(|set| **set).count() != 1 {
        return Err(fail(
            "[vault], field token_file",
            "[vault] needs exactly one login: token_file, token_variable, or approle_role_id with \
             approle_secret_id_file"
                .to_owned(),
        ));
    }
    if vault.approle_role_id.is_some() != vault.approle_secret_id_file.is_some() {
        return Err(fail(
            "[vault], field approle_secret_id_file",
            "an AppRole login needs both approle_role_id and approle_secret_id_file".to_owned(),
        ));
    }
    check_bounds("[vault]", vault.max_in_flight, vault.sign_timeout_ms).map_err(|(field, m)| fail(&field, m))
}

/// `max_in_flight` and `sign_timeout_ms` of a key service's table.
pub(super) fn check_bounds(table: &str, max_in_flight: u32, sign_timeout_ms: u64) -> Result<(), (String, String)> {
    if !(1..=4096).contains(&max_in_flight) {
        return Err((
            format!("{table}, field max_in_flight"),
            format!("{max_in_flight} is out of range: use 1 to 4096"),
        ));
    }
    if !(100..=30_000).contains(&sign_timeout_ms) {
        return Err((
            format!("{table}, field sign_timeout_ms"),
            format!("{sign_timeout_ms} is out of range: use 100 to 30000 (default 2000)"),
        ));
    }
    Ok(())
}

/// Makes the table's relative file paths relative to the configuration file's folder.
pub(super) fn resolve_relative_paths(config: &mut Config, folder: &Path) {
    if let Some(vault) = &mut config.vault {
        for file in [&mut vault.ca_file, &mut vault.token_file, &mut vault.approle_secret_id_file] {
            if let Some(file) = file.as_mut().filter(|f| f.is_relative()) {
                *file = folder.join(&*file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_toml, validate, ConfigError};
    use crate::keys::custody::CustodyKind;
    use crate::keys::Algorithm;

    fn with(tables: &str) -> Result<(), ConfigError> {
        let mut config = parse_toml(&format!("{}\n{tables}", super::super::defaults::EXAMPLE), "k.toml")?;
        config.key_sets[0].custody = CustodyKind::VaultTransit;
        config.key_sets[0].algorithm = Algorithm::EdDsa;
        validate(&config, "k.toml")
    }

    #[test]
    fn a_vault_key_set_needs_the_table_with_exactly_one_login_and_a_master_key_may_share_it() {
        assert_eq!(with("").unwrap_err().location, "[[key_set]] \"npm\", field custody");
        let table = "[vault]\naddress = \"https://vault:8200\"\ntoken_file = \"t\"\n";
        assert!(with(table).is_ok(), "EdDSA is kept in Transit");
        let two = "[vault]\naddress = \"https://vault:8200\"\ntoken_file = \"t\"\ntoken_variable = \"T\"\n";
        assert_eq!(with(two).unwrap_err().location, "[vault], field token_file");
        let bad = "[vault]\naddress = \"vault:8200\"\ntoken_file = \"t\"\n";
        assert_eq!(with(bad).unwrap_err().location, "[vault], field address");
        let shared = format!("{table}[master_key]\nsource = \"transit\"\nkey_name = \"k\"\n");
        assert!(with(&shared).is_ok(), "a Transit master key without an address uses [vault]");
        let both = format!("{table}[master_key]\nsource = \"transit\"\nkey_name = \"k\"\ntoken_file = \"t\"\n");
        assert_eq!(with(&both).unwrap_err().location, "[master_key], field token_file");
    }
}
