//! Internal API clients as the server knows them: bearer tokens, their hashes, and
//! authentication (adding and revoking them is `ops::clients`).
//!
//! A token is `kw_<16 hex id>_<43 base64url secret>`. The id finds the row; only a SHA-256
//! hash of the secret is stored, and it is compared in constant time.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use zeroize::Zeroizing;

use super::certificate::CertFingerprint;
use super::identity::IdentityBinding;
use super::permission::Permissions;

const PREFIX: &str = "kw_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 43;

/// An authenticated caller, as the handlers see it.
#[derive(Clone)]
pub struct Client {
    /// Unique name.
    pub name: String,
    /// Profiles it may sign with.
    pub profiles: BTreeSet<String>,
    /// What it may administer (`--admin`: everything).
    pub permissions: Permissions,
    /// Its own rate limit (requests per second, burst), if it has one.
    pub rate: Option<(u32, u32)>,
    /// The client certificate it must connect with, if it is bound to one.
    pub certificate: Option<CertFingerprint>,
    /// Whether that certificate alone authenticates it, with no bearer token.
    pub certificate_only: bool,
    /// The workload identity whose JWTs authenticate it, if bound to one.
    pub identity: Option<IdentityBinding>,
    /// Its row's generation when the directory was loaded: the ledger refuses a request
    /// authenticated under an older one.
    pub generation: i64,
    pub(crate) token_hash: [u8; 32],
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("profiles", &self.profiles)
            .field("permissions", &self.permissions)
            .field("identity", &self.identity)
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
    /// Certificate-only clients by their certificate.
    by_certificate: HashMap<CertFingerprint, Client>,
    /// Clients bound to a workload identity.
    by_identity: Vec<Client>,
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

    /// The certificate-only client a presented certificate belongs to, if any.
    pub fn by_certificate(&self, certificate: &CertFingerprint) -> Option<&Client> {
        self.by_certificate.get(certificate)
    }

    /// The client bound to the identity `subject` of `issuer`: an exact binding before a
    /// pattern, a longer pattern before a shorter one.
    pub fn by_identity(&self, issuer: &str, subject: &str) -> Option<&Client> {
        self.by_identity
            .iter()
            .filter(|c| c.identity.as_ref().is_some_and(|id| id.matches(issuer, subject)))
            .max_by_key(|c| c.identity.as_ref().map(IdentityBinding::specificity))
    }

    /// The active client named `name`, however it authenticates.
    pub fn by_name(&self, name: &str) -> Option<&Client> {
        self.by_token_id
            .values()
            .filter(|e| e.valid_until.is_none())
            .map(|e| &e.client)
            .chain(self.by_identity.iter())
            .find(|c| c.name == name)
    }

    /// Adds `client` under `token_id`; `valid_until` for a rotated-out token in its grace.
    /// A certificate-only client is also found by its certificate.
    pub(crate) fn insert(&mut self, token_id: String, client: Client, valid_until: Option<i64>) {
        if let (Some(certificate), true, None) = (client.certificate, client.certificate_only, valid_until) {
            self.by_certificate.insert(certificate, client.clone());
        }
        if client.identity.is_some() && valid_until.is_none() {
            self.by_identity.push(client.clone());
        }
        self.by_token_id.insert(token_id, Entry { client, valid_until });
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

/// Whether `token`'s secret part hashes to one of `hashes` (compared in constant time).
pub(crate) fn matches_any(token: &str, hashes: &[Vec<u8>]) -> bool {
    let Some((_, secret)) = split_token(token) else {
        return false;
    };
    let presented = openssl::sha::sha256(secret.as_bytes());
    hashes.iter().any(|hash| openssl::memcmp::eq(&presented, hash.as_slice()) && hash.len() == 32)
}

/// The id part of a well-formed token (what finds its row), or `None`.
pub fn token_id(token: &str) -> Option<&str> {
    split_token(token).map(|(id, _)| id)
}

pub(crate) fn split_token(token: &str) -> Option<(&str, &str)> {
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

pub(crate) fn new_token_and_hash() -> anyhow::Result<(String, Zeroizing<String>, [u8; 32])> {
    let (id, token) = new_token();
    let (_, secret) = split_token(&token).context("a fresh token must parse")?;
    let hash = openssl::sha::sha256(secret.as_bytes());
    Ok((id, token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory_with(token: &str, name: &str) -> ClientDirectory {
        let (id, secret) = split_token(token).unwrap();
        let client = Client {
            name: name.to_owned(),
            profiles: BTreeSet::from(["p".to_owned()]),
            permissions: Permissions::default(),
            rate: None,
            certificate: None,
            certificate_only: false,
            identity: None,
            generation: 0,
            token_hash: openssl::sha::sha256(secret.as_bytes()),
        };
        ClientDirectory {
            by_token_id: HashMap::from([(id.to_owned(), Entry { client, valid_until: None })]),
            by_certificate: HashMap::new(),
            by_identity: Vec::new(),
        }
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
