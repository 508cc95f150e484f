//! Where the master key comes from, behind one small interface: its id, and sealing and
//! opening the keyring record with it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use zeroize::Zeroizing;

use super::context;
use crate::config::{Config, MasterKeyConfig, MasterKeySpec, MASTER_KEY_ENV, PIN_ENV};
use crate::keys::custody::pkcs11::Token;
use crate::seal::{MasterKey, MasterKeyOrigin};
use crate::vault::{Vault, VaultAuth, VaultSettings};

/// The source name of [`RootKey::in_memory`].
const IN_MEMORY: &str = "memory";

/// A master key, as its source holds it.
#[derive(Clone)]
pub enum RootKey {
    /// 32 bytes held in the process, read from a variable or a file.
    Local {
        /// The key.
        key: MasterKey,
        /// `env` or `file`.
        source: &'static str,
        /// Which variable or file, for the logs and `master-key status`.
        origin: String,
    },
    /// An AES-256 key inside a PKCS#11 token, used through it.
    Pkcs11 {
        /// The token.
        token: Arc<Token>,
        /// The key's label.
        label: String,
        /// `pkcs11:` and the key's `CKA_ID`.
        id: String,
    },
    /// A key of Vault's Transit engine: the keyring is sealed locally under a fresh data
    /// key, which Transit encrypts.
    Transit {
        /// The logged-in client.
        vault: Arc<Vault>,
        /// The engine's mount.
        mount: String,
        /// The key's name.
        key: String,
    },
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootKey {{ {} from {} }}", self.id(), self.origin())
    }
}

impl RootKey {
    /// A key read from a variable or file (`source` is `env` or `file`).
    pub fn local(key: MasterKey, source: &'static str, origin: impl Into<String>) -> Self {
        RootKey::Local { key, source, origin: origin.into() }
    }

    /// A random key held in memory only, where nothing needs sealing: the keyring it would
    /// seal is never stored (see [`RootKey::is_in_memory`]).
    pub fn in_memory() -> Self {
        RootKey::local(MasterKey::generate(), IN_MEMORY, "a key held in memory only: nothing is sealed")
    }

    /// Whether this is [`RootKey::in_memory`].
    pub fn is_in_memory(&self) -> bool {
        self.source() == IN_MEMORY
    }

    /// The id stored beside the keyring record it seals.
    pub fn id(&self) -> String {
        match self {
            RootKey::Local { key, .. } => key.id().to_owned(),
            RootKey::Pkcs11 { id, .. } => id.clone(),
            RootKey::Transit { mount, key, .. } => format!("transit:{mount}/{key}"),
        }
    }

    /// The kind of source: `env`, `file`.
    pub fn source(&self) -> &'static str {
        match self {
            RootKey::Local { source, .. } => source,
            RootKey::Pkcs11 { .. } => "pkcs11",
            RootKey::Transit { .. } => "transit",
        }
    }

    /// Which variable, file, token or Vault key, without any secret.
    pub fn origin(&self) -> String {
        match self {
            RootKey::Local { origin, .. } => origin.clone(),
            RootKey::Pkcs11 { token, label, .. } => format!("key {label:?} in PKCS#11 token {:?}", token.label()),
            RootKey::Transit { vault, mount, key } => format!("Transit key {mount}/{key} at {}", vault.address()),
        }
    }

    /// The key itself when the process holds it (a database made before the keyring sealed
    /// its rows with it).
    pub fn local_key(&self) -> Option<&MasterKey> {
        match self {
            RootKey::Local { key, .. } => Some(key),
            RootKey::Pkcs11 { .. } | RootKey::Transit { .. } => None,
        }
    }

    /// Seals the keyring `plaintext` whose record lists the terms `ids`.
    pub async fn wrap(&self, plaintext: &[u8], ids: &str) -> anyhow::Result<Vec<u8>> {
        match self {
            RootKey::Local { key, .. } => Ok(key.seal(plaintext, &context(ids))?),
            RootKey::Pkcs11 { token, label, id } => {
                let (token, label, plaintext, aad) =
                    (Arc::clone(token), label.clone(), Zeroizing::new(plaintext.to_vec()), aad(ids, id));
                Ok(tokio::task::spawn_blocking(move || token.aes_gcm_seal(&label, &plaintext, &aad)).await??)
            }
            RootKey::Transit { vault, mount, key } => {
                let data_key = MasterKey::generate();
                let sealed = data_key.seal(plaintext, &context(ids))?;
                let wrapped = vault.transit_encrypt(mount, key, data_key.bytes()).await?;
                let length = u32::try_from(wrapped.len()).context("Transit's ciphertext is too long")?;
                Ok([length.to_be_bytes().as_slice(), wrapped.as_bytes(), &sealed].concat())
            }
        }
    }

    /// Opens a keyring record sealed by [`RootKey::wrap`] with the same `ids`.
    pub async fn unwrap(&self, blob: &[u8], ids: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        match self {
            RootKey::Local { key, .. } => Ok(key.open(blob, &context(ids))?),
            RootKey::Pkcs11 { token, label, id } => {
                let (token, label, blob, aad) = (Arc::clone(token), label.clone(), blob.to_vec(), aad(ids, id));
                Ok(tokio::task::spawn_blocking(move || token.aes_gcm_open(&label, &blob, &aad)).await??)
            }
            RootKey::Transit { vault, mount, key } => {
                let (length, rest) = blob.split_at_checked(4).context("the keyring record is too short")?;
                let length = u32::from_be_bytes(length.try_into().context("the keyring record is too short")?);
                let (wrapped, sealed) =
                    rest.split_at_checked(length as usize).context("the keyring record is too short")?;
                let wrapped = std::str::from_utf8(wrapped).context("the keyring record is not Transit's")?;
                let data_key = vault.transit_decrypt(mount, key, wrapped).await?;
                let bytes: [u8; 32] =
                    data_key.as_slice().try_into().context("Transit returned a data key of the wrong length")?;
                Ok(MasterKey::from_bytes(bytes).open(sealed, &context(ids))?)
            }
        }
    }

    /// Keeps the source's login alive (a Vault token is renewed before it expires); an
    /// error says the source does not answer.
    pub async fn keep_alive(&self) -> anyhow::Result<()> {
        match self {
            RootKey::Transit { vault, .. } => Ok(vault.keep_alive().await?),
            RootKey::Local { .. } | RootKey::Pkcs11 { .. } => Ok(()),
        }
    }
}

/// The master key a process runs with, and during a rotation the one it replaces.
#[derive(Clone, Debug)]
pub struct Roots {
    /// Seals the keyring from now on.
    pub current: RootKey,
    /// Opens a keyring not yet rotated to `current` (`[master_key.previous]`).
    pub previous: Option<RootKey>,
}

impl Roots {
    /// The root whose id is `id`.
    pub fn by_id(&self, id: &str) -> Option<&RootKey> {
        std::iter::once(&self.current).chain(&self.previous).find(|root| root.id() == id)
    }

    /// Keeps every configured source's login alive.
    pub async fn keep_alive(&self) -> anyhow::Result<()> {
        self.current.keep_alive().await?;
        if let Some(previous) = &self.previous {
            previous.keep_alive().await?;
        }
        Ok(())
    }

    /// `ID (ORIGIN)` of each configured key, for refusals.
    pub fn describe(&self) -> String {
        let mut text = format!("{} ({})", self.current.id(), self.current.origin());
        if let Some(previous) = &self.previous {
            text.push_str(&format!(" and previous master key {} ({})", previous.id(), previous.origin()));
        }
        text
    }
}

impl From<MasterKey> for Roots {
    fn from(key: MasterKey) -> Self {
        Roots { current: RootKey::local(key, "env", "the key given to the process"), previous: None }
    }
}

impl Roots {
    /// The master keys `config` names: `[master_key]` (and `[master_key.previous]`), or
    /// without it `KEYWARD_MASTER_KEY`, else `[server] master_key_file`. A missing key file
    /// is generated only if `may_generate` (a new database, where development keys are allowed);
    /// a missing PKCS#11 key only if `make_token_key` (`[master_key]` only, never the previous).
    pub async fn from_config(
        config: &Config,
        env: impl Fn(&str) -> Option<String>,
        may_generate: bool,
        make_token_key: bool,
    ) -> anyhow::Result<(Roots, MasterKeyOrigin)> {
        let (current, origin) = match config.master_key.as_deref() {
            Some(table) => resolve(config, table, "[master_key]", &env, may_generate, make_token_key).await?,
            None => {
                let file = &config.server.master_key_file;
                let (key, origin) = MasterKey::resolve(env(MASTER_KEY_ENV).as_deref(), file, may_generate)?;
                let root = match &origin {
                    // `resolve` reads a variable or a file, never a key held outside.
                    MasterKeyOrigin::Environment | MasterKeyOrigin::Outside => {
                        RootKey::local(key, "env", format!("variable {MASTER_KEY_ENV}"))
                    }
                    MasterKeyOrigin::File(path) | MasterKeyOrigin::Generated(path) => {
                        RootKey::local(key, "file", format!("file {}", path.display()))
                    }
                };
                (root, origin)
            }
        };
        let previous = match config.master_key.as_deref().and_then(|t| t.previous.as_deref()) {
            Some(table) => Some(resolve(config, table, "[master_key.previous]", &env, false, false).await?.0),
            None => None,
        };
        Ok((Roots { current, previous }, origin))
    }
}

async fn resolve(
    config: &Config,
    table: &MasterKeyConfig,
    name: &str,
    env: &impl Fn(&str) -> Option<String>,
    may_generate: bool,
    may_make_token_key: bool,
) -> anyhow::Result<(RootKey, MasterKeyOrigin)> {
    match table.spec() {
        MasterKeySpec::Transit { mount, key_name, .. } if table.address.is_none() && config.vault.is_some() => {
            let vault = config.vault.as_ref().context("no [vault] table")?;
            let settings = vault.settings(env)?;
            let vault = Vault::new(settings).with_context(|| format!("{name} source = \"transit\" (with [vault])"))?;
            vault
                .login()
                .await
                .with_context(|| format!("{name} source = \"transit\" (with [vault]): logging in to Vault"))?;
            Ok((RootKey::Transit { vault: Arc::new(vault), mount, key: key_name }, MasterKeyOrigin::Outside))
        }
        MasterKeySpec::Transit { address, mount, key_name } => {
            let auth = match (&table.token_file, &table.token_variable, &table.approle_role_id) {
                (Some(file), _, _) => VaultAuth::TokenFile(file.clone()),
                (None, Some(variable), _) => VaultAuth::Token(Zeroizing::new(
                    env(variable)
                        .with_context(|| format!("{name} token_variable names {variable}, which is not set"))?,
                )),
                (None, None, Some(role_id)) => VaultAuth::AppRole {
                    mount: "approle".to_owned(),
                    role_id: role_id.clone(),
                    secret_id_file: table.approle_secret_id_file.clone().unwrap_or_default(),
                },
                (None, None, None) => anyhow::bail!("{name}: source = \"transit\" needs a token or an AppRole"),
            };
            let settings =
                VaultSettings { address, namespace: table.namespace.clone(), ca_file: table.ca_file.clone(), auth };
            let vault = Vault::new(settings).with_context(|| format!("{name} source = \"transit\""))?;
            vault.login().await.with_context(|| format!("{name} source = \"transit\": logging in to Vault"))?;
            let root = RootKey::Transit { vault: Arc::new(vault), mount, key: key_name };
            Ok((root, MasterKeyOrigin::Outside))
        }
        MasterKeySpec::Pkcs11(label) => {
            let settings = config
                .token_settings(env(PIN_ENV).as_deref())?
                .with_context(|| format!("{name} source = \"pkcs11\" needs a [pkcs11] table"))?;
            let token = tokio::task::spawn_blocking(move || Token::open(settings)).await??;
            let (found, label) = {
                let (token, label) = (Arc::clone(&token), label.clone());
                tokio::task::spawn_blocking(move || (token.aes_key(&label, may_make_token_key), label)).await?
            };
            let id = found?.with_context(|| {
                format!("{name} key_label: PKCS#11 token {:?} holds no AES key labelled {label:?}", token.label())
            })?;
            let origin = MasterKeyOrigin::Outside;
            Ok((RootKey::Pkcs11 { token, label, id: format!("pkcs11:{id}") }, origin))
        }
        MasterKeySpec::Env(variable) => {
            let value =
                Zeroizing::new(env(&variable).with_context(|| {
                    format!("{name} source = \"env\" reads the variable {variable}, which is not set")
                })?);
            let key = MasterKey::from_base64(&value, &variable)?;
            Ok((RootKey::local(key, "env", format!("variable {variable}")), MasterKeyOrigin::Environment))
        }
        MasterKeySpec::File(path) => file_key(&path, may_generate),
    }
}

fn file_key(path: &Path, may_generate: bool) -> anyhow::Result<(RootKey, MasterKeyOrigin)> {
    let (key, origin) = MasterKey::resolve(None, path, may_generate)?;
    Ok((RootKey::local(key, "file", format!("file {}", path.display())), origin))
}

/// The associated data of a keyring sealed by a key outside the process: its record's
/// term list and the key's id, as [`crate::seal::MasterKey`] binds its own.
fn aad(ids: &str, id: &str) -> Vec<u8> {
    let mut aad = b"keyward.keyring.v1".to_vec();
    for part in context(ids).iter().chain(std::iter::once(&id)) {
        aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}
