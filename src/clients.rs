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
use zeroize::Zeroizing;

use crate::config::{self, Config};
use crate::store::rows::ClientRow;
use crate::store::Store;

const PREFIX: &str = "kw_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 43;

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
    /// Whether it may use the admin routes.
    pub admin: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
    /// Its own rate limit (requests per second, burst), if it has one.
    pub rate: Option<(u32, u32)>,
    /// After `clients rotate --grace`: until when the previous token works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_token_valid_until: Option<i64>,
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

/// A token id's client, and until when it works (a rotated-out token in its grace).
#[derive(Debug, Clone)]
struct Entry {
    client: Client,
    valid_until: Option<i64>,
}

/// Active clients by token id, held in memory so that authentication needs no query.
#[derive(Debug, Default, Clone)]
pub struct ClientDirectory {
    by_token_id: HashMap<String, Entry>,
}

impl ClientDirectory {
    /// The client a presented bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<&Client> {
        let (id, secret) = split_token(token)?;
        let entry = self.by_token_id.get(id)?;
        if entry.valid_until.is_some_and(|until| chrono::Utc::now().timestamp() >= until) {
            return None;
        }
        // The hasher, not the one-shot `sha256()`, which fetches the algorithm on every call.
        let mut hasher = openssl::sha::Sha256::new();
        hasher.update(secret.as_bytes());
        openssl::memcmp::eq(&hasher.finish(), &entry.client.token_hash).then_some(&entry.client)
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

/// The id part of a well-formed token (what finds its row), or `None`.
pub fn token_id(token: &str) -> Option<&str> {
    split_token(token).map(|(id, _)| id)
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
    store: &Store,
    config: &Config,
    name: &str,
    profiles: &[String],
    admin: bool,
    now: i64,
) -> Result<Zeroizing<String>, ClientError> {
    add_with_rate(store, config, name, profiles, admin, None, now).await
}

/// [`add`], with the client's own rate limit (requests per second, burst).
pub async fn add_with_rate(
    store: &Store,
    config: &Config,
    name: &str,
    profiles: &[String],
    admin: bool,
    rate: Option<(u32, u32)>,
    now: i64,
) -> Result<Zeroizing<String>, ClientError> {
    Ok(create(store, config, name, profiles, admin, rate, now).await?.0)
}

/// [`add_with_rate`], saying whether the name was reused. A revoked client's name may be reused: the revoked row gives way to the new client (the ledger
/// keeps the name on the old client's rows). Returns the token, and when the client whose
/// name was reused had been revoked.
pub async fn create(
    store: &Store,
    config: &Config,
    name: &str,
    profiles: &[String],
    admin: bool,
    rate: Option<(u32, u32)>,
    now: i64,
) -> Result<(Zeroizing<String>, Option<i64>), ClientError> {
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
    let (id, token, hash) = new_token_and_hash()?;
    let row = ClientRow {
        name: name.to_owned(),
        token_id: id,
        token_hash: hash.to_vec(),
        profiles: serde_json::to_string(&profiles).context("encoding profiles")?,
        admin,
        created_at: now,
        revoked_at: None,
        rate_limit: rate.map(|(rate, _)| rate),
        rate_burst: rate.map(|(_, burst)| burst),
        previous_token_id: None,
        previous_token_hash: None,
        previous_token_until: None,
    };
    // A revoked client's row gives way to the new client.
    let reused = store
        .change_client(name, |existing| match existing.map(|e| e.revoked_at) {
            None => Ok((row, None)),
            Some(None) => Err(ClientError::Exists(name.to_owned())),
            Some(Some(revoked_at)) => Ok((row, Some(revoked_at))),
        })
        .await??;
    Ok((token, reused))
}

fn new_token_and_hash() -> anyhow::Result<(String, Zeroizing<String>, [u8; 32])> {
    let (id, token) = new_token();
    let (_, secret) = split_token(&token).context("a fresh token must parse")?;
    let hash = openssl::sha::sha256(secret.as_bytes());
    Ok((id, token, hash))
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
    let Some((_, secret)) = split_token(token) else {
        return Ok(false);
    };
    let hashes = store.client_token_hashes(token_id, now).await?;
    let presented = openssl::sha::sha256(secret.as_bytes());
    Ok(hashes.iter().any(|hash| openssl::memcmp::eq(&presented, hash.as_slice()) && hash.len() == 32))
}

/// Every client, active and revoked, by name.
pub async fn list(store: &Store) -> anyhow::Result<Vec<ClientInfo>> {
    let rows = store.clients().await?;
    rows.into_iter()
        .map(|row| {
            Ok(ClientInfo {
                profiles: serde_json::from_str(&row.profiles).context("decoding profiles")?,
                rate: row.rate_limit.zip(row.rate_burst),
                name: row.name,
                admin: row.admin,
                created_at: row.created_at,
                revoked_at: row.revoked_at,
                previous_token_valid_until: row.previous_token_until,
            })
        })
        .collect()
}

/// Revokes a client's tokens (a rotated-out one in its grace too); a running server stops
/// accepting them at its next change check. `Revoked` if it was revoked already.
pub async fn revoke(store: &Store, name: &str, now: i64) -> Result<(), ClientError> {
    store
        .change_client(name, |existing| {
            let current = active(existing, name)?;
            Ok((ClientRow { revoked_at: Some(now), ..current.clone() }, ()))
        })
        .await?
}

/// Loads the active clients for authentication (with rotated-out tokens still in grace).
pub async fn load_directory(store: &Store) -> anyhow::Result<ClientDirectory> {
    let rows: Vec<ClientRow> = store.clients().await?.into_iter().filter(|row| row.revoked_at.is_none()).collect();
    let mut by_token_id = HashMap::with_capacity(rows.len());
    for row in rows {
        let name = row.name;
        let client = Client {
            token_hash: row
                .token_hash
                .as_slice()
                .try_into()
                .with_context(|| format!("client {name} has a malformed hash"))?,
            profiles: serde_json::from_str(&row.profiles).context("decoding profiles")?,
            admin: row.admin,
            rate: row.rate_limit.zip(row.rate_burst),
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
            by_token_id.insert(id, Entry { client: previous, valid_until: Some(until) });
        }
        by_token_id.insert(row.token_id, Entry { client, valid_until: None });
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
        ClientDirectory { by_token_id: HashMap::from([(id.to_owned(), Entry { client, valid_until: None })]) }
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
