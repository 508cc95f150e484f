//! `[pkcs11]`: the token that holds the keys of `custody = "pkcs11"` key sets.

use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Config, ConfigError, KeySetConfig};
use crate::keys::custody::pkcs11::TokenSettings;
use crate::keys::custody::{CustodyKind, CustodySettings};
use crate::keys::Algorithm;

/// The environment variable that carries the token's user PIN.
pub const PIN_ENV: &str = "KEYWARD_PKCS11_PIN";

/// `[pkcs11]`. The PIN is never in the file: `pin_file` or `KEYWARD_PKCS11_PIN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so). A relative
    /// path in a configuration file is relative to the file's folder.
    pub module: PathBuf,
    /// Label of the token (as set when it was initialised).
    pub token_label: String,
    /// A file holding the user PIN (0600); `KEYWARD_PKCS11_PIN` wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
    /// Refused with a message: a PIN in the configuration file would travel with it. Its
    /// value is never kept (nor shown by `Debug`).
    #[serde(default, skip_serializing)]
    pub pin: Option<IgnoredAny>,
    /// Most sessions open at once (signatures in parallel).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
}

fn default_max_sessions() -> u32 {
    8
}

/// Checks `[pkcs11]` and the key sets that need it.
pub(super) fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let fail = |location: &str, message: String| ConfigError {
        source_name: source_name.to_owned(),
        location: location.to_owned(),
        message,
    };
    let eddsa_in_token = |s: &&KeySetConfig| s.custody == CustodyKind::Pkcs11 && s.algorithm == Algorithm::EdDsa;
    if let Some(set) = config.key_sets.iter().find(eddsa_in_token) {
        // SoftHSM2 signs with CKM_EDDSA, but keyward's token custody does not implement it.
        return Err(fail(
            &format!("[[key_set]] {:?}, field custody", set.name),
            "EdDSA keys are kept sealed only: use custody = \"sealed\" (or another algorithm in the token)".to_owned(),
        ));
    }
    if let Some(set) = config.key_sets.iter().find(|s| s.custody == CustodyKind::Pkcs11) {
        if config.pkcs11.is_none() {
            return Err(fail(
                &format!("[[key_set]] {:?}, field custody", set.name),
                "custody = \"pkcs11\" needs a [pkcs11] table (module, token_label, and the PIN in pin_file or \
                 KEYWARD_PKCS11_PIN)"
                    .to_owned(),
            ));
        }
    }
    let Some(pkcs11) = &config.pkcs11 else { return Ok(()) };
    if pkcs11.pin.is_some() {
        return Err(fail(
            "[pkcs11], field pin",
            "the PIN never goes in the configuration file: put it in a 0600 file named by pin_file, or in \
             KEYWARD_PKCS11_PIN"
                .to_owned(),
        ));
    }
    if pkcs11.token_label.trim().is_empty() {
        return Err(fail("[pkcs11], field token_label", "must name the token".to_owned()));
    }
    if !(1..=256).contains(&pkcs11.max_sessions) {
        return Err(fail(
            "[pkcs11], field max_sessions",
            format!("{} is out of range: use 1 to 256", pkcs11.max_sessions),
        ));
    }
    Ok(())
}

/// Makes the module and PIN file paths relative to the configuration file's folder.
pub(super) fn resolve_relative_paths(config: &mut Config, folder: &Path) {
    if let Some(pkcs11) = &mut config.pkcs11 {
        if pkcs11.module.is_relative() && pkcs11.module.components().count() > 1 {
            pkcs11.module = folder.join(&pkcs11.module);
        }
        if let Some(file) = pkcs11.pin_file.as_mut().filter(|f| f.is_relative()) {
            *file = folder.join(&*file);
        }
    }
}

impl Pkcs11Config {
    /// How to reach the token, with the PIN from `env_pin` (`KEYWARD_PKCS11_PIN`) or else
    /// `pin_file`.
    pub fn settings(&self, env_pin: Option<&str>) -> anyhow::Result<TokenSettings> {
        let pin = match (env_pin, &self.pin_file) {
            (Some(pin), _) => Zeroizing::new(pin.to_owned()),
            (None, Some(file)) => {
                let text = Zeroizing::new(
                    std::fs::read_to_string(file)
                        .map_err(|err| anyhow::anyhow!("[pkcs11] pin_file: cannot read {}: {err}", file.display()))?,
                );
                Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            (None, None) => anyhow::bail!("[pkcs11]: no PIN: set {PIN_ENV} or pin_file"),
        };
        Ok(TokenSettings {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin,
            max_sessions: usize::try_from(self.max_sessions).unwrap_or(8),
        })
    }
}

impl Config {
    /// The token to open, if `[pkcs11]` is configured (the PIN from `env_pin`, that is
    /// `KEYWARD_PKCS11_PIN`, or the PIN file).
    pub fn token_settings(&self, env_pin: Option<&str>) -> anyhow::Result<Option<TokenSettings>> {
        self.pkcs11.as_ref().map(|p| p.settings(env_pin)).transpose()
    }

    /// Every private-key holder to open: the token if `[pkcs11]` is configured, Vault and
    /// KMS if a key set keeps its keys there (secrets read through `env`).
    pub fn custody_settings(&self, env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<CustodySettings> {
        let uses = |kind: CustodyKind| self.key_sets.iter().any(|s| s.custody == kind);
        let transit = match (&self.vault, uses(CustodyKind::VaultTransit)) {
            (Some(vault), true) => Some((vault.settings(env)?, vault.mount.clone(), vault.bounds())),
            _ => None,
        };
        let kms = match (&self.aws_kms, uses(CustodyKind::AwsKms)) {
            (Some(kms), true) => Some((kms.settings(), kms.bounds())),
            _ => None,
        };
        Ok(CustodySettings { token: self.token_settings(env(PIN_ENV).as_deref())?, transit, kms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;

    fn with_table(table: &str) -> Config {
        parse_toml(&format!("{}\n[pkcs11]\n{table}", super::super::defaults::EXAMPLE), "k.toml").unwrap()
    }

    #[test]
    fn a_pin_in_the_configuration_file_is_refused_and_never_kept() {
        let config = with_table("module = \"/m.so\"\ntoken_label = \"t\"\npin = \"4321\"\n");
        assert!(!format!("{config:?}").contains("4321"));
        let err = validate(&config, "k.toml").unwrap_err();
        assert_eq!(err.location, "[pkcs11], field pin");
    }

    #[test]
    fn the_pin_comes_from_the_environment_before_the_pin_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pin");
        std::fs::write(&file, "5678\n").unwrap();
        let config = with_table(&format!("module = \"/m.so\"\ntoken_label = \"t\"\npin_file = {:?}\n", file));
        let pkcs11 = config.pkcs11.as_ref().unwrap();
        assert_eq!(pkcs11.settings(None).unwrap().pin.as_str(), "5678");
        assert_eq!(pkcs11.settings(Some("1111")).unwrap().pin.as_str(), "1111");
        std::fs::remove_file(&file).unwrap();
        let err = pkcs11.settings(None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("[pkcs11] pin_file: cannot read"), "{err}");
    }

    #[test]
    fn eddsa_key_sets_are_refused_in_pkcs11_custody_at_start_up() {
        let mut config = with_table("module = \"/m.so\"\ntoken_label = \"t\"\n");
        config.key_sets[0].custody = CustodyKind::Pkcs11;
        config.key_sets[0].algorithm = Algorithm::EdDsa;
        let err = validate(&config, "k.toml").unwrap_err();
        assert_eq!(err.location, format!("[[key_set]] {:?}, field custody", config.key_sets[0].name));
        assert!(err.message.contains("EdDSA keys are kept sealed only"), "{}", err.message);
        config.key_sets[0].algorithm = Algorithm::Es256;
        assert!(validate(&config, "k.toml").is_ok(), "other algorithms may live in the token");
    }
}
