//! Adding, rotating and revoking internal API clients, decided on the row read under the
//! store's write lock.

use std::collections::BTreeSet;

use anyhow::Context;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::config::{self, Config};
use crate::policy::certificate::CertFingerprint;
use crate::policy::client::{matches_any, new_token_and_hash, split_token, Client, ClientDirectory};
use crate::policy::identity::IdentityBinding;
use crate::policy::permission::{Permission, Permissions};
use crate::store::rows::ClientRow;
use crate::store::Store;

/// Why a client could not be added or revoked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An active client has the name.
    #[error(
        "an active client is named {0:?}: give it a new token with `keyward clients rotate {0}`, or revoke it \
         first to reuse the name"
    )]
    Exists(String),
    /// No such client.
    #[error("no client is named {0:?}")]
    NotFound(String),
    /// The client was revoked already (at these Unix seconds).
    #[error("client {0:?} is revoked; `keyward clients add {0} ...` makes a new client of that name")]
    Revoked(String, i64),
    /// A profile the configuration does not define.
    #[error("no profile is named {0:?} in the configuration")]
    UnknownProfile(String),
    /// An unusable name or profile list.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// A client as listed: never its token or hash.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    /// Unique name.
    pub name: String,
    /// Profiles it may sign with.
    pub profiles: Vec<String>,
    /// Whether it may use every admin route (`--admin`).
    pub admin: bool,
    /// Its administrative permissions, as written (none listed for `--admin`, which holds all).
    pub permissions: Vec<String>,
    /// The workload identity it is bound to, `ISSUER|SUBJECT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
    /// Its own rate limit (requests per second, burst), if it has one.
    pub rate: Option<(u32, u32)>,
    /// After `clients rotate --grace`: until when the previous token works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_token_valid_until: Option<i64>,
    /// The SHA-256 of the client certificate it is bound to, lowercase hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// Whether that certificate alone authenticates it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cert_only: bool,
}

/// What a new client may have beside its profiles.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Administrative permissions (beside `admin`, which holds them all).
    pub permissions: Vec<Permission>,
    /// The workload identity whose JWTs authenticate it.
    pub identity: Option<IdentityBinding>,
    /// Its own rate limit (requests per second, burst).
    pub rate: Option<(u32, u32)>,
    /// The client certificate it must connect with (mutual TLS).
    pub certificate: Option<CertFingerprint>,
    /// Whether that certificate alone authenticates it, with no bearer token.
    pub certificate_only: bool,
}

fn check_name(name: &str) -> Result<(), ClientError> {
    config::check_name(name).map_err(|why| ClientError::Invalid(format!("client name {why}")))
}

/// Creates a client and returns its token: the only time the token exists in the clear.
pub async fn add(
    store: &Store,
    config: &Config,
    name: &str,
    profiles: &[String],
    admin: bool,
    now: i64,
) -> Result<Zeroizing<String>, ClientError> {
    Ok(create(store, config, name, profiles, admin, ClientOptions::default(), now).await?.0)
}

/// [`add`], with the client's own rate limit or certificate, saying whether
/// the name was reused. A revoked client's name may be reused: the revoked row gives way to
/// the new client (the ledger keeps the name on the old client's rows). Returns the token,
/// and when the client whose name was reused had been revoked.
pub async fn create(
    store: &Store,
    config: &Config,
    name: &str,
    profiles: &[String],
    admin: bool,
    options: ClientOptions,
    now: i64,
) -> Result<(Zeroizing<String>, Option<i64>), ClientError> {
    check_name(name)?;
    let rate = options.rate;
    if options.certificate_only && options.certificate.is_none() {
        return Err(ClientError::Invalid("--cert-only needs the certificate: --cert-sha256 FINGERPRINT".to_owned()));
    }
    if rate.is_some_and(|(rate, burst)| rate == 0 || burst == 0) {
        return Err(ClientError::Invalid("--rate and --burst must be at least 1".to_owned()));
    }
    if profiles.is_empty() && !admin && options.permissions.is_empty() {
        return Err(ClientError::Invalid(
            "a client needs at least one profile (--profiles a,b), a permission (--permission keys:read) or --admin"
                .to_owned(),
        ));
    }
    check_profiles(config, profiles)?;
    check_permissions(config, &options.permissions)?;
    if let Some(identity) = &options.identity {
        check_identity(config, identity)?;
    }
    let profiles: BTreeSet<&String> = profiles.iter().collect();
    let (id, token, hash) = new_token_and_hash()?;
    let permissions = Permissions::of(options.permissions.iter().cloned());
    let identity = options.identity.as_ref().map(ToString::to_string);
    let mut row = ClientRow {
        name: name.to_owned(),
        token_id: id,
        token_hash: hash.to_vec(),
        profiles: serde_json::to_string(&profiles).context("encoding profiles")?,
        admin,
        created_at: now,
        revoked_at: None,
        rate_limit: rate.map(|(rate, _)| i64::from(rate)),
        rate_burst: rate.map(|(_, burst)| i64::from(burst)),
        previous_token_id: None,
        previous_token_hash: None,
        previous_token_until: None,
        cert_sha256: options.certificate.map(|c| c.to_string()),
        cert_only: options.certificate_only,
        permissions: permissions.to_json(),
        generation: 0,
        identity,
    };
    // A revoked client's row gives way to the new client, under a later generation (so
    // that no request of the old one commits under the new one's name).
    let reused = store
        .change_client(name, |existing| match existing.map(|e| (e.revoked_at, e.generation)) {
            None => Ok((row, None)),
            Some((None, _)) => Err(ClientError::Exists(name.to_owned())),
            Some((Some(revoked_at), generation)) => {
                row.generation = generation + 1;
                Ok((row, Some(revoked_at)))
            }
        })
        .await??;
    Ok((token, reused))
}

/// Gives an active client a new token. The old one stops working at once, or with `grace`
/// (seconds) at `now + grace`; a token still in the grace of an earlier rotation stops now.
pub async fn rotate(store: &Store, name: &str, grace: i64, now: i64) -> Result<Zeroizing<String>, ClientError> {
    let (id, token, hash) = new_token_and_hash()?;
    let previous = (grace > 0).then_some(now + grace);
    store
        .change_client(name, |existing| {
            let current = active(existing, name)?;
            let row = ClientRow {
                previous_token_id: previous.map(|_| current.token_id.clone()),
                previous_token_hash: previous.map(|_| current.token_hash.clone()),
                previous_token_until: previous,
                token_id: id,
                token_hash: hash.to_vec(),
                // Without grace the old token is withdrawn: requests it authenticated may
                // no longer commit.
                generation: if previous.is_some() { current.generation } else { current.generation + 1 },
                ..current.clone()
            };
            Ok::<_, ClientError>((row, ()))
        })
        .await??;
    Ok(token)
}

/// `name`'s row if it is an active client: `NotFound` or `Revoked` otherwise.
fn active<'a>(existing: Option<&'a ClientRow>, name: &str) -> Result<&'a ClientRow, ClientError> {
    match existing {
        None => Err(ClientError::NotFound(name.to_owned())),
        Some(ClientRow { revoked_at: Some(at), .. }) => Err(ClientError::Revoked(name.to_owned(), *at)),
        Some(row) => Ok(row),
    }
}

/// Whether `token` (whose id part is `token_id`) is an active client's, as stored now:
/// one indexed look-up, for a token the served snapshot does not know yet.
pub async fn is_active_token(store: &Store, token_id: &str, token: &str, now: i64) -> anyhow::Result<bool> {
    if split_token(token).is_none() {
        return Ok(false);
    }
    let hashes = store.client_token_hashes(token_id, now).await?;
    Ok(matches_any(token, &hashes))
}

/// Every client, active and revoked, by name.
pub async fn list(store: &Store) -> anyhow::Result<Vec<ClientInfo>> {
    let rows = store.clients().await?;
    rows.into_iter()
        .map(|row| {
            Ok(ClientInfo {
                profiles: serde_json::from_str(&row.profiles).context("decoding profiles")?,
                permissions: stored_permissions(&row)?.granted().iter().map(ToString::to_string).collect(),
                rate: row.rate()?,
                identity: row.identity,
                name: row.name,
                admin: row.admin,
                created_at: row.created_at,
                revoked_at: row.revoked_at,
                previous_token_valid_until: row.previous_token_until,
                cert_sha256: row.cert_sha256,
                cert_only: row.cert_only,
            })
        })
        .collect()
}

/// Revokes a client's tokens (a rotated-out one in its grace too) and identity. Once this
/// returns, no replica records a token for them (the ledger checks the client's row); a
/// running server refuses them at authentication from its next change check on.
/// `Revoked` if it was revoked already.
pub async fn revoke(store: &Store, name: &str, now: i64) -> Result<(), ClientError> {
    store
        .change_client(name, |existing| {
            let current = active(existing, name)?;
            Ok((ClientRow { revoked_at: Some(now), generation: current.generation + 1, ..current.clone() }, ()))
        })
        .await?
}

/// What `update` changes; `None` keeps it.
#[derive(Debug, Clone, Default)]
pub struct ClientChange {
    /// The profiles it may sign with.
    pub profiles: Option<Vec<String>>,
    /// Its administrative permissions.
    pub permissions: Option<Vec<Permission>>,
    /// Whether it holds every permission.
    pub admin: Option<bool>,
    /// Its own rate limit (requests per second, burst); `Some(None)`: the server's default.
    pub rate: Option<Option<(u32, u32)>>,
}

/// Changes an active client's profiles, permissions, `admin` or rate limit: an admin action
/// like any other. Once it returns, no replica records a token for a request authenticated
/// under the old rights.
pub async fn update(store: &Store, config: &Config, name: &str, change: ClientChange) -> Result<(), ClientError> {
    if change.rate.flatten().is_some_and(|(rate, burst)| rate == 0 || burst == 0) {
        return Err(ClientError::Invalid("--rate and --burst must be at least 1".to_owned()));
    }
    if let Some(profiles) = &change.profiles {
        check_profiles(config, profiles)?;
    }
    if let Some(permissions) = &change.permissions {
        check_permissions(config, permissions)?;
    }
    let profiles = match &change.profiles {
        Some(profiles) => {
            let set: BTreeSet<&String> = profiles.iter().collect();
            Some(serde_json::to_string(&set).context("encoding profiles")?)
        }
        None => None,
    };
    let permissions = change.permissions.map(|p| Permissions::of(p).to_json());
    store
        .change_client(name, |existing| {
            let current = active(existing, name)?;
            let row = ClientRow {
                profiles: profiles.unwrap_or_else(|| current.profiles.clone()),
                permissions: permissions.unwrap_or_else(|| current.permissions.clone()),
                admin: change.admin.unwrap_or(current.admin),
                rate_limit: change.rate.map_or(current.rate_limit, |rate| rate.map(|(rate, _)| i64::from(rate))),
                rate_burst: change.rate.map_or(current.rate_burst, |rate| rate.map(|(_, burst)| i64::from(burst))),
                generation: current.generation + 1,
                ..current.clone()
            };
            if row.profiles == "[]" && !row.admin && row.permissions == "[]" {
                return Err(ClientError::Invalid(format!(
                    "client {name:?} would have no profile, permission or --admin left: revoke it instead"
                )));
            }
            Ok((row, ()))
        })
        .await?
}

fn check_profiles(config: &Config, profiles: &[String]) -> Result<(), ClientError> {
    match profiles.iter().find(|profile| !config.profiles.iter().any(|p| &p.name == *profile)) {
        Some(unknown) => Err(ClientError::UnknownProfile(unknown.clone())),
        None => Ok(()),
    }
}

/// Every key set or partner a permission names must be configured.
fn check_permissions(config: &Config, permissions: &[Permission]) -> Result<(), ClientError> {
    use crate::policy::permission::{Action, Scope};
    for permission in permissions {
        let Scope::Only(names) = &permission.scope else { continue };
        for name in names {
            let known = match permission.action {
                Action::PartnersRead => config.partners.iter().any(|p| &p.name == name),
                _ => config.key_sets.iter().any(|s| &s.name == name),
            };
            if !known {
                return Err(ClientError::Invalid(format!(
                    "{permission}: no {} is named {name:?} in the configuration",
                    permission.action.scope_kind()
                )));
            }
        }
    }
    Ok(())
}

/// The identity's issuer must be a configured `[[identity_provider]]`.
fn check_identity(config: &Config, identity: &IdentityBinding) -> Result<(), ClientError> {
    if config.identity_providers.iter().any(|p| p.issuer == identity.issuer) {
        return Ok(());
    }
    Err(ClientError::Invalid(format!(
        "--identity {identity}: no [[identity_provider]] has issuer {:?} in the configuration",
        identity.issuer
    )))
}

fn stored_permissions(row: &ClientRow) -> anyhow::Result<Permissions> {
    Permissions::from_stored(&row.permissions, row.admin)
        .map_err(|why| anyhow::anyhow!("client {} has malformed permissions: {why}", row.name))
}

/// Loads the active clients for authentication (with rotated-out tokens still in grace).
pub async fn load_directory(store: &Store) -> anyhow::Result<ClientDirectory> {
    let rows: Vec<ClientRow> = store.clients().await?.into_iter().filter(|row| row.revoked_at.is_none()).collect();
    let mut directory = ClientDirectory::default();
    for row in rows {
        let rate = row.rate()?;
        let permissions = stored_permissions(&row)?;
        let name = row.name;
        let client = Client {
            token_hash: row
                .token_hash
                .as_slice()
                .try_into()
                .with_context(|| format!("client {name} has a malformed hash"))?,
            profiles: serde_json::from_str(&row.profiles).context("decoding profiles")?,
            permissions,
            identity: row
                .identity
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|why| anyhow::anyhow!("client {name} has a malformed identity: {why}"))?,
            generation: row.generation,
            rate,
            certificate: row
                .cert_sha256
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|why| anyhow::anyhow!("client {name} has a malformed certificate fingerprint: {why}"))?,
            certificate_only: row.cert_only,
            name,
        };
        if let (Some(id), Some(hash), Some(until)) =
            (row.previous_token_id, row.previous_token_hash, row.previous_token_until)
        {
            let previous = Client {
                token_hash: hash
                    .as_slice()
                    .try_into()
                    .with_context(|| format!("client {} has a malformed hash", client.name))?,
                ..client.clone()
            };
            directory.insert(id, previous, Some(until));
        }
        directory.insert(row.token_id, client, None);
    }
    Ok(directory)
}
