//! Rows as stored, and their conversion to the records the rest of keyward works with.

use anyhow::Context;
use serde::Serialize;

use crate::keys::{Algorithm, KeyRecord, Private, Status};

/// A row of the `keys` table.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    kid: String,
    key_set: String,
    algorithm: String,
    public_jwk: String,
    sealed_private: Option<Vec<u8>>,
    master_key_id: Option<String>,
    token_label: Option<String>,
    created_at: i64,
    published_at: Option<i64>,
    activates_at: Option<i64>,
    deactivates_at: Option<i64>,
    retired_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = anyhow::Error;

    fn try_from(row: KeyRow) -> anyhow::Result<KeyRecord> {
        let KeyRow { kid, algorithm, public_jwk, sealed_private, master_key_id, token_label, .. } = row;
        let status = match (row.revoked_at, row.retired_at) {
            (Some(at), retired_at) => Status::Revoked { at, retired_at },
            (None, Some(at)) => Status::Retired { at },
            (None, None) => {
                let private = match (sealed_private, master_key_id, token_label) {
                    (Some(blob), Some(master_key_id), None) => Private::Sealed { blob, master_key_id },
                    (None, None, Some(label)) => Private::from_holder_label(label),
                    _ => anyhow::bail!("key {kid} is live but its row holds no single private half"),
                };
                Status::Live { private }
            }
        };
        Ok(KeyRecord {
            algorithm: Algorithm::parse(&algorithm)
                .with_context(|| format!("key {kid} has unknown algorithm {algorithm:?}"))?,
            public: serde_json::from_str(&public_jwk)
                .with_context(|| format!("key {kid} has an unreadable public JWK"))?,
            key_set: row.key_set,
            created_at: row.created_at,
            published_at: row.published_at,
            activates_at: row.activates_at,
            deactivates_at: row.deactivates_at,
            status,
            kid,
        })
    }
}

/// One issued token, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The token's `jti`.
    pub jti: String,
    /// Profile that issued it.
    pub profile: String,
    /// Client that asked.
    pub client: String,
    /// `sub`, when the token has a caller subject.
    pub sub: Option<String>,
    /// Signing key; `None` for shared-secret profiles.
    pub kid: Option<String>,
    /// Algorithm.
    pub alg: String,
    /// Unix seconds.
    pub iat: i64,
    /// Unix seconds.
    pub exp: i64,
    /// Names of the claims the request added (never their values).
    pub claim_names: Vec<String>,
    /// The client's generation when the request was authenticated: the commit refuses the
    /// row if the client has changed since. Not stored (0 when read back) nor shown.
    #[serde(skip)]
    pub client_generation: i64,
}

/// A ledger row as both stores keep it: the claim names as a JSON array in text.
#[derive(sqlx::FromRow)]
pub(crate) struct EntryRow {
    jti: String,
    profile: String,
    client: String,
    sub: Option<String>,
    kid: Option<String>,
    alg: String,
    iat: i64,
    exp: i64,
    claim_names: String,
}

impl TryFrom<EntryRow> for Entry {
    type Error = anyhow::Error;

    fn try_from(row: EntryRow) -> anyhow::Result<Entry> {
        let claim_names = serde_json::from_str(&row.claim_names)
            .with_context(|| format!("ledger row {} has malformed claim names", row.jti))?;
        let EntryRow { jti, profile, client, sub, kid, alg, iat, exp, .. } = row;
        Ok(Entry { jti, profile, client, sub, kid, alg, iat, exp, claim_names, client_generation: 0 })
    }
}

/// What `keyward audit` filters on; every field optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Subject.
    pub sub: Option<String>,
    /// Key.
    pub kid: Option<String>,
    /// Client.
    pub client: Option<String>,
    /// Profile.
    pub profile: Option<String>,
    /// Issued at or after (Unix seconds).
    pub since: Option<i64>,
    /// Issued before (Unix seconds).
    pub until: Option<i64>,
}

/// A row of the `secrets` table (no `Debug`: it holds a sealed secret).
#[derive(sqlx::FromRow)]
pub struct SecretRow {
    /// The shared-secret profile.
    pub profile: String,
    /// The secret, sealed to the profile.
    pub sealed_secret: Vec<u8>,
    /// The master key that sealed it.
    pub master_key_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// The `keyring` record (no `Debug`: it holds the sealed terms).
#[derive(Clone, sqlx::FromRow)]
pub struct KeyringRow {
    /// The master key that sealed it.
    pub root_key_id: String,
    /// Its kind of source (`env`, `file`, `pkcs11`, `transit`).
    pub root_source: String,
    /// The terms, sealed under the master key.
    pub sealed_terms: Vec<u8>,
    /// `NUMBER:ID,...`, oldest first.
    pub term_ids: String,
    /// `compact` while a finished re-seal still has old bytes to clear from the files.
    pub reseal_state: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// When the master key last changed (Unix seconds).
    pub rotated_at: i64,
}

/// A sealed value as stored, with what its seal is bound to (no `Debug`).
#[derive(Clone)]
pub struct SealedItem {
    /// Which table.
    pub kind: SealedKind,
    /// Its row: the kid, or the profile.
    pub name: String,
    /// The key set and algorithm of a key (empty for a secret).
    pub key_set: String,
    /// The algorithm of a key (empty for a secret).
    pub algorithm: String,
    /// The sealed bytes.
    pub blob: Vec<u8>,
    /// The term key that sealed it.
    pub sealed_by: String,
}

/// The tables that hold sealed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    /// `keys.sealed_private`.
    Key,
    /// `secrets.sealed_secret`.
    Secret,
}

/// A row of the `clients` table (no `Debug`: it holds token hashes).
#[derive(Clone, sqlx::FromRow)]
pub struct ClientRow {
    /// Unique name.
    pub name: String,
    /// The id part of the current token.
    pub token_id: String,
    /// SHA-256 of the current token's secret part.
    pub token_hash: Vec<u8>,
    /// JSON array of profile names.
    pub profiles: String,
    /// Whether it may use the admin routes.
    pub admin: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
    /// Its own rate limit (requests per second), if any (see [`ClientRow::rate`]).
    pub rate_limit: Option<i64>,
    /// Its own burst, if any.
    pub rate_burst: Option<i64>,
    /// After a rotation with grace: the replaced token's id.
    pub previous_token_id: Option<String>,
    /// Its hash.
    pub previous_token_hash: Option<Vec<u8>>,
    /// Until when it works (Unix seconds).
    pub previous_token_until: Option<i64>,
    /// The SHA-256 (lowercase hex) of the client certificate it must present, if bound.
    pub cert_sha256: Option<String>,
    /// Whether that certificate alone authenticates it (no bearer token needed).
    pub cert_only: bool,
    /// Its administrative permissions: a JSON array of their written forms.
    pub permissions: String,
    /// Bumped by every change that withdraws a credential or a right.
    pub generation: i64,
    /// The workload identity it is bound to, `ISSUER|SUBJECT`, if any.
    pub identity: Option<String>,
}

impl ClientRow {
    /// Its own rate and burst, if set (stored as 64-bit integers, which every store has).
    pub fn rate(&self) -> anyhow::Result<Option<(u32, u32)>> {
        let Some((rate, burst)) = self.rate_limit.zip(self.rate_burst) else { return Ok(None) };
        let fits = |n: i64| u32::try_from(n).with_context(|| format!("client {} has a rate out of range", self.name));
        Ok(Some((fits(rate)?, fits(burst)?)))
    }
}

/// Fetches of one partner from one address of one document, in one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PartnerFetches {
    /// The partner.
    pub partner: String,
    /// The key set whose JWKS it fetched.
    pub key_set: String,
    /// The client address.
    pub address: String,
    /// The document's ETag (served, or confirmed by a 304).
    pub etag: String,
    /// How many fetches.
    pub count: i64,
    /// The first (Unix seconds).
    pub first_at: i64,
    /// The last (Unix seconds).
    pub last_at: i64,
}

/// Fetches that matched no partner, by user agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct UnmatchedFetches {
    /// The `User-Agent` header (or `-` when absent), cut to 200 characters.
    pub user_agent: String,
    /// How many fetches.
    pub count: i64,
    /// The latest (Unix seconds).
    pub last_at: i64,
}

/// One batch of observations, written in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    /// Partner fetches.
    pub fetches: Vec<PartnerFetches>,
    /// The keys the fetched documents held.
    pub holdings: Vec<crate::keys::gate::Holding>,
    /// Fetches that matched no partner.
    pub unmatched: Vec<UnmatchedFetches>,
}

impl Observations {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.fetches.is_empty() && self.holdings.is_empty() && self.unmatched.is_empty()
    }
}

/// A gated hand-over as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatedHandover {
    /// The key that started signing.
    pub kid: String,
    /// Its set.
    pub key_set: String,
    /// When (Unix seconds).
    pub at: i64,
    /// Whether every gating partner held it; if not, the wait ran out and the gate proceeded.
    pub confirmed: bool,
    /// The gating partners that had not fetched it.
    pub missing: Vec<String>,
}

impl GatedHandover {
    /// The record of a settled gate, if it is one.
    pub fn of(key_set: &str, gate: &crate::keys::gate::GateState) -> Option<GatedHandover> {
        use crate::keys::gate::GateState;
        let (kid, at, confirmed, missing) = match gate {
            GateState::Released { kid, at } => (kid, *at, true, Vec::new()),
            GateState::ProceededUnconfirmed { kid, missing, at } => (kid, *at, false, missing.clone()),
            GateState::Waiting { .. } | GateState::Held { .. } => return None,
        };
        Some(GatedHandover { kid: kid.clone(), key_set: key_set.to_owned(), at, confirmed, missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sealed: Option<Vec<u8>>, token: Option<&str>, retired_at: Option<i64>) -> KeyRow {
        KeyRow {
            kid: "k".into(),
            key_set: "s".into(),
            algorithm: "ES256".into(),
            public_jwk: r#"{"kty":"EC","crv":"P-256","x":"x","y":"y"}"#.into(),
            master_key_id: sealed.as_ref().map(|_| "m".to_owned()),
            sealed_private: sealed,
            token_label: token.map(str::to_owned),
            created_at: 0,
            published_at: Some(0),
            activates_at: None,
            deactivates_at: None,
            retired_at,
            revoked_at: None,
        }
    }

    #[test]
    fn a_live_row_needs_exactly_one_private_half_and_an_ended_one_holds_none() {
        let sealed = KeyRecord::try_from(row(Some(vec![1; 40]), None, None)).unwrap();
        assert!(matches!(sealed.private(), Some(Private::Sealed { .. })));
        let in_token = KeyRecord::try_from(row(None, Some("hsm"), None)).unwrap();
        assert_eq!(in_token.private(), Some(&Private::Token { token: "hsm".into() }));
        for (sealed, token) in [(None, None), (Some(vec![1; 40]), Some("hsm"))] {
            let err = KeyRecord::try_from(row(sealed, token, None)).expect_err("refused");
            assert!(err.to_string().contains("no single private half"), "{err}");
        }
        // A retired row is read as retired whatever its columns say: it has no private half.
        let retired = KeyRecord::try_from(row(Some(vec![1; 40]), None, Some(5))).unwrap();
        assert!(retired.private().is_none());
        assert!(retired.status == Status::Retired { at: 5 });
    }
}
