//! Internal API clients: bearer tokens, their stored hashes, and authentication.
//!
//! A token is `kw_<16 hex id>_<43 base64url secret>`. The id finds the row; only a SHA-256
//! hash of the secret is stored, and it is compared in constant time.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;
use sqlx::{Row, SqlitePool};
use zeroize::Zeroizing;

use crate::config::{self, Config};
use crate::db;

const PREFIX: &str = "kw_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 43;

/// Why a client could not be added or revoked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The name is taken (revoked clients keep theirs, for the audit trail).
    #[error("a client named {0:?} already exists (revoked clients keep their name); choose another name")]
    Exists(String),
    /// No such client.
    #[error("no client is named {0:?}")]
    NotFound(String),
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
    /// Whether it may use the admin routes.
    pub admin: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
    /// Its own rate limit (requests per second, burst), if it has one.
    pub rate: Option<(u32, u32)>,
}

/// An authenticated caller, as the handlers see it.
#[derive(Clone)]
pub struct Client {
    /// Unique name.
    pub name: String,
    /// Profiles it may sign with.
    pub profiles: BTreeSet<String>,
    /// Whether it may use the admin routes.
    pub admin: bool,
    /// Its own rate limit (requests per second, burst), if it has one.
    pub rate: Option<(u32, u32)>,
    token_hash: [u8; 32],
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("profiles", &self.profiles)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Whether this client may sign with `profile`.
    pub fn may_use(&self, profile: &str) -> bool {
        self.profiles.contains(profile)
    }
}

/// Active clients by token id, held in memory so that authentication needs no query.
#[derive(Debug, Default, Clone)]
pub struct ClientDirectory {
    by_token_id: HashMap<String, Client>,
}

impl ClientDirectory {
    /// The client a presented bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<&Client> {
        let (id, secret) = split_token(token)?;
        let client = self.by_token_id.get(id)?;
        // The hasher, not the one-shot `sha256()`, which fetches the algorithm on every call.
        let mut hasher = openssl::sha::Sha256::new();
        hasher.update(secret.as_bytes());
        openssl::memcmp::eq(&hasher.finish(), &client.token_hash).then_some(client)
    }

    /// How many active clients there are.
    pub fn len(&self) -> usize {
        self.by_token_id.len()
    }

    /// Whether there are no active clients.
    pub fn is_empty(&self) -> bool {
        self.by_token_id.is_empty()
    }
}

fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    if rest.len() != ID_LEN + 1 + SECRET_LEN || !rest.is_char_boundary(ID_LEN) {
        return None;
    }
    let (id, secret) = rest.split_at(ID_LEN);
    Some((id, secret.strip_prefix('_')?))
}

fn new_token() -> (String, Zeroizing<String>) {
    let mut rng = rand::rng();
    let mut id = [0u8; ID_LEN / 2];
    rng.fill_bytes(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut());
    let token = Zeroizing::new(format!("{PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(secret.as_ref())));
    (id, token)
}

fn check_name(name: &str) -> Result<(), ClientError> {
    config::check_name(name).map_err(|why| ClientError::Invalid(format!("client name {why}")))
}

/// Creates a client and returns its token: the only time the token exists in the clear.
pub async fn add(
    pool: &SqlitePool,
    config: &Config,
    name: &str,
    profiles: &[String],
    admin: bool,
    now: i64,
) -> Result<Zeroizing<String>, ClientError> {
    add_with_rate(pool, config, name, profiles, admin, None, now).await
}

/// [`add`], with the client's own rate limit (requests per second, burst).
pub async fn add_with_rate(
    pool: &SqlitePool,
    config: &Config,
    name: &str,
    profiles: &[String],
    admin: bool,
    rate: Option<(u32, u32)>,
    now: i64,
) -> Result<Zeroizing<String>, ClientError> {
    check_name(name)?;
    if rate.is_some_and(|(rate, burst)| rate == 0 || burst == 0) {
        return Err(ClientError::Invalid("--rate and --burst must be at least 1".to_owned()));
    }
    if profiles.is_empty() && !admin {
        return Err(ClientError::Invalid("a client needs at least one profile (--profiles a,b) or --admin".to_owned()));
    }
    for profile in profiles {
        if !config.profiles.iter().any(|p| &p.name == profile) {
            return Err(ClientError::UnknownProfile(profile.clone()));
        }
    }
    let profiles: BTreeSet<&String> = profiles.iter().collect();
    let (id, token) = new_token();
    let (_, secret) = split_token(&token).context("a fresh token must parse")?;
    let hash = openssl::sha::sha256(secret.as_bytes());

    let mut tx = db::begin_write(pool).await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM clients WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .context("looking up the client name")?;
    if exists.is_some() {
        return Err(ClientError::Exists(name.to_owned()));
    }
    sqlx::query(
        "INSERT INTO clients (name, token_id, token_hash, profiles, admin, created_at, rate_limit, rate_burst) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(name)
    .bind(&id)
    .bind(hash.as_slice())
    .bind(serde_json::to_string(&profiles).context("encoding profiles")?)
    .bind(admin)
    .bind(now)
    .bind(rate.map(|(rate, _)| rate))
    .bind(rate.map(|(_, burst)| burst))
    .execute(&mut *tx)
    .await
    .context("storing the client")?;
    db::bump_generation(&mut tx).await?;
    tx.commit().await.context("committing the client")?;
    Ok(token)
}

/// Every client, active and revoked, by name.
pub async fn list(pool: &SqlitePool) -> anyhow::Result<Vec<ClientInfo>> {
    let rows = sqlx::query(
        "SELECT name, profiles, admin, created_at, revoked_at, rate_limit, rate_burst FROM clients ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .context("listing clients")?;
    rows.iter()
        .map(|row| {
            let profiles: String = row.try_get("profiles")?;
            Ok(ClientInfo {
                name: row.try_get("name")?,
                profiles: serde_json::from_str(&profiles).context("decoding profiles")?,
                admin: row.try_get("admin")?,
                created_at: row.try_get("created_at")?,
                revoked_at: row.try_get("revoked_at")?,
                rate: rate_of(row)?,
            })
        })
        .collect()
}

/// Revokes a client's token; a running server stops accepting it within seconds.
pub async fn revoke(pool: &SqlitePool, name: &str, now: i64) -> Result<(), ClientError> {
    let mut tx = db::begin_write(pool).await?;
    let done = sqlx::query("UPDATE clients SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await
        .context("revoking the client")?;
    if done.rows_affected() == 0 {
        return Err(ClientError::NotFound(name.to_owned()));
    }
    db::bump_generation(&mut tx).await?;
    tx.commit().await.context("committing the revocation")?;
    Ok(())
}

fn rate_of(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<Option<(u32, u32)>> {
    let rate: Option<u32> = row.try_get("rate_limit")?;
    let burst: Option<u32> = row.try_get("rate_burst")?;
    Ok(rate.zip(burst))
}

/// Loads the active clients for authentication.
pub async fn load_directory(pool: &SqlitePool) -> anyhow::Result<ClientDirectory> {
    let rows = sqlx::query("SELECT name, token_id, token_hash, profiles, admin, rate_limit, rate_burst FROM clients WHERE revoked_at IS NULL")
        .fetch_all(pool)
        .await
        .context("loading clients")?;
    let mut by_token_id = HashMap::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.try_get("name")?;
        let hash: Vec<u8> = row.try_get("token_hash")?;
        let profiles: String = row.try_get("profiles")?;
        let client = Client {
            token_hash: hash.as_slice().try_into().with_context(|| format!("client {name} has a malformed hash"))?,
            profiles: serde_json::from_str(&profiles).context("decoding profiles")?,
            admin: row.try_get("admin")?,
            rate: rate_of(row)?,
            name,
        };
        by_token_id.insert(row.try_get("token_id")?, client);
    }
    Ok(ClientDirectory { by_token_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory_with(token: &str, name: &str) -> ClientDirectory {
        let (id, secret) = split_token(token).unwrap();
        let client = Client {
            name: name.to_owned(),
            profiles: BTreeSet::from(["p".to_owned()]),
            admin: false,
            rate: None,
            token_hash: openssl::sha::sha256(secret.as_bytes()),
        };
        ClientDirectory { by_token_id: HashMap::from([(id.to_owned(), client)]) }
    }

    #[test]
    fn fresh_tokens_are_unique_and_well_formed() {
        let (id, token) = new_token();
        assert_eq!(token.len(), PREFIX.len() + ID_LEN + 1 + SECRET_LEN);
        assert_eq!(split_token(&token).unwrap().0, id);
        assert_ne!(*new_token().1, *token);
    }

    #[test]
    fn only_the_exact_token_authenticates() {
        let (_, token) = new_token();
        let dir = directory_with(&token, "svc");
        assert_eq!(dir.authenticate(&token).unwrap().name, "svc");
        let mut wrong = token.to_string();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'A' { 'B' } else { 'A' });
        assert!(dir.authenticate(&wrong).is_none());
        assert!(dir.authenticate(&token[..token.len() - 1]).is_none());
        assert!(dir.authenticate("").is_none());
        assert!(dir.authenticate("kw_ü").is_none());
        let (_, other) = new_token();
        assert!(dir.authenticate(&other).is_none());
    }

    #[test]
    fn debug_shows_no_hash() {
        let (_, token) = new_token();
        let dir = directory_with(&token, "svc");
        let shown = format!("{dir:?}");
        assert!(!shown.contains("token_hash") && shown.contains("svc"), "{shown}");
    }
}
