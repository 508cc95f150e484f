//! What every command starts from: the loaded configuration, and the one way to open its
//! database and master key.

use std::collections::HashMap;
use std::path::Path;

use anyhow::bail;

use crate::audit::{Actor, Attribution};
use crate::config::{self, Config, Database, EnvSettings, LoadedConfig, MasterKeySpec};
use crate::keys::custody::Custody;
use crate::master_key::{Keyring, RootKey, Roots};
use crate::private_files;
use crate::seal::MasterKeyOrigin;
use crate::store::sqlite;
use crate::store::Store;

/// The configuration a command runs against, and how it may open the database.
pub(super) struct Context {
    pub(super) loaded: LoadedConfig,
    pub(super) settings: EnvSettings,
    /// `--init`: a command other than `serve` may create the database.
    init: bool,
    /// `--reason`: why, for the audit trail.
    reason: Option<String>,
}

impl Context {
    /// Loads the configuration from `--config`, `KEYWARD_CONFIG` or `./keys.toml`.
    pub(super) fn load(
        explicit: Option<&Path>,
        env: &HashMap<String, String>,
        settings: EnvSettings,
        init: bool,
    ) -> anyhow::Result<Self> {
        let source = config::choose_source(explicit, Path::new("keys.toml").is_file());
        let loaded = config::load(source, env)?;
        // Profiles are checked as they are parsed: every command refuses a bad one, as serve does.
        crate::policy::profile::parse_profiles(&loaded.config, &loaded.source.to_string())?;
        Ok(Context { loaded, settings, init, reason: None })
    }

    /// With the `--reason` this command's changes are recorded with.
    pub(super) fn because(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    pub(super) fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// The configuration's origin and database, as every command reports them.
    pub(super) fn describe(&self) -> (String, Database) {
        let source = match &self.loaded.source {
            config::ConfigSource::Defaults => {
                "built-in defaults (no --config, KEYWARD_CONFIG or ./keys.toml)".to_owned()
            }
            config::ConfigSource::File(path) => {
                std::path::absolute(path).unwrap_or_else(|_| path.clone()).display().to_string()
            }
        };
        match self.config().database() {
            Database::Sqlite(path) => (source, Database::Sqlite(std::path::absolute(&path).unwrap_or(path))),
            postgres => (source, postgres),
        }
    }

    /// Opens the database; only with `--init` may a command other than `serve` create it, so
    /// that running one in the wrong folder cannot quietly start a second, empty database.
    /// Its changes are attributed to this command (its user, host and pid) with `--reason`.
    pub(super) async fn store(&self) -> anyhow::Result<Store> {
        let by = Attribution::of(Actor::this_cli()).because(self.reason.clone());
        Ok(self.open_store().await?.attributed(by))
    }

    async fn open_store(&self) -> anyhow::Result<Store> {
        let (source, database) = self.describe();
        let path = match &database {
            Database::Sqlite(path) => path,
            // A PostgreSQL database is made by its administrator, never by a mistyped folder.
            Database::Postgres(_) => return Store::connect(&database).await,
        };
        if !self.init && !path.exists() {
            let why = match &self.loaded.source {
                config::ConfigSource::Defaults => format!(
                    "no configuration file was found, so the default database path is taken relative to the \
                     working directory {}",
                    std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
                ),
                config::ConfigSource::File(_) => format!("that is the database_url of {source}"),
            };
            bail!(
                "no database at {} ({why}). Run the command where keys.toml is, name it with --config, or add \
                 --init to create a new database there",
                path.display()
            );
        }
        Store::open(path).await
    }

    /// The database and its keyring, opened with the master key and checked against the
    /// rows it sealed: what a command that seals or opens private material needs.
    pub(super) async fn store_and_keyring(&self) -> anyhow::Result<(Store, Keyring)> {
        let store = self.store().await?;
        let roots = self.roots(&store).await?;
        let keyring = crate::ops::master_key::open(&store, &roots, crate::ops::wall_clock()).await?;
        Ok((store, keyring))
    }

    /// The database and whatever holds private keys (the master key, checked against the
    /// keys it sealed, and the PKCS#11 token when one is configured): what a key action needs.
    pub(super) async fn store_and_custody(&self) -> anyhow::Result<(Store, Custody)> {
        let (store, keyring) = self.store_and_keyring().await?;
        let settings = self.config().custody_settings(&|name| std::env::var(name).ok())?;
        Ok((store, Custody::open(keyring, settings).await?))
    }

    /// The master key (and during a rotation the previous one); a development key is
    /// generated only for a database with no sealed keys, and only where generating is
    /// allowed (not in the Docker image unless KEYWARD_DEV=1). None is asked for when nothing
    /// would be sealed with it (every key set in the PKCS#11 token, no shared secret, nothing
    /// sealed stored, no `[master_key]`): then a key held in memory only stands in, and the
    /// keyring it would seal is never stored.
    pub(super) async fn roots(&self, store: &Store) -> anyhow::Result<Roots> {
        let env = std::env::var("KEYWARD_MASTER_KEY").ok();
        let file = &self.config().server.master_key_file;
        let empty = !store.holds_sealed_material().await?;
        let configured = self.config().master_key.is_some();
        if !configured && empty && env.is_none() && !file.exists() && !self.config().needs_master_key() {
            tracing::info!(
                "no master key needed: every key set keeps its keys in a PKCS#11 token or a key service and no profile signs \
                 with a shared secret (set KEYWARD_MASTER_KEY before adding either)"
            );
            return Ok(Roots { current: RootKey::in_memory(), previous: None });
        }
        if !configured && empty && env.is_none() && !file.exists() && !self.settings.may_generate_master_key {
            bail!(
                "no master key: KEYWARD_MASTER_KEY is not set and {} does not exist, and KEYWARD_DEV=0 forbids \
                 generating one. Make one with `openssl rand -base64 32 > master.key`, keep a copy in your \
                 secrets manager, and give it as KEYWARD_MASTER_KEY or mount it at {} (readable by the user \
                 keyward runs as: uid 10001 in the image, mode 0400). For a throwaway development key set \
                 KEYWARD_DEV=1",
                file.display(),
                file.display()
            );
        }
        let may_generate = empty && (!configured || self.settings.may_generate_master_key);
        let (roots, origin) =
            Roots::from_config(self.config(), |name| std::env::var(name).ok(), may_generate, true).await?;
        let id = roots.current.id();
        match origin {
            MasterKeyOrigin::File(path) => {
                tracing::info!(master_key_id = id, file = %path.display(), "master key from file")
            }
            MasterKeyOrigin::Environment | MasterKeyOrigin::Outside => {
                tracing::info!(master_key_id = id, source = roots.current.origin(), "master key from its source")
            }
            MasterKeyOrigin::Generated(path) => tracing::warn!(
                master_key_id = id,
                file = %path.display(),
                "NO MASTER KEY CONFIGURED: generated a random one for DEVELOPMENT ONLY. In production set \
                 KEYWARD_MASTER_KEY (base64 of 32 bytes) from your secrets manager, and back this key up: \
                 without it the stored private keys cannot be opened"
            ),
        }
        if let Some(previous) = &roots.previous {
            tracing::info!(master_key_id = previous.id(), source = previous.origin(), "previous master key");
        }
        Ok(roots)
    }

    /// The database, the master key file and the PKCS#11 PIN file hold secrets (sealed keys,
    /// client-token hashes, who got which token, the token's PIN): refuse to use them while group or others may read them, as ssh
    /// does for keys, unless the operator says otherwise.
    pub(super) fn check_private_files(&self, allow_insecure: bool) -> anyhow::Result<()> {
        let mut files = match self.config().database() {
            Database::Sqlite(path) => sqlite::database_files(&path),
            Database::Postgres(_) => Vec::new(),
        };
        match self.config().master_key.as_deref() {
            None if std::env::var_os("KEYWARD_MASTER_KEY").is_none() => {
                files.push(self.config().server.master_key_file.clone())
            }
            None => {}
            Some(table) => {
                for table in std::iter::once(table).chain(table.previous.as_deref()) {
                    if let MasterKeySpec::File(file) = table.spec() {
                        files.push(file);
                    }
                }
            }
        }
        let pin_file = self.config().pkcs11.as_ref().and_then(|p| p.pin_file.clone());
        if let Some(file) = pin_file.filter(|_| std::env::var_os(crate::config::PIN_ENV).is_none()) {
            files.push(file);
        }
        // systemd's credentials (LoadCredential=) sit on a private read-only file system,
        // root's with mode 0440 and an ACL granting the service's user alone: their mode
        // says nothing about who may read them.
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        for file in files {
            if credentials.as_deref().is_some_and(|dir| file.parent() == Some(dir)) {
                continue;
            }
            let Some(mode) = private_files::shared_mode(&file) else { continue };
            if allow_insecure {
                tracing::warn!(file = %file.display(), mode = format!("{mode:04o}"), "readable by group or others (allowed by --allow-insecure-permissions)");
            } else {
                bail!(
                    "{} has mode {mode:04o}: group or others may read it, and it holds secrets. Fix: chmod 600 {} \
                     (or start with --allow-insecure-permissions)",
                    file.display(),
                    file.display()
                );
            }
        }
        Ok(())
    }
}
