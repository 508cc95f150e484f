//! What a one-way move from one store to another needs: row counts, the ledger in pages,
//! and ledger rows written as they are.

use super::rows::Entry;
use super::{postgres, sqlite, Store};

/// How many rows each table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Keys, in every state.
    pub keys: i64,
    /// Clients, revoked ones too.
    pub clients: i64,
    /// Shared secrets.
    pub secrets: i64,
    /// Ledger rows.
    pub issuance: i64,
}

/// The SQL that counts, the same on both stores.
pub(crate) const COUNTS: &str = "SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM clients), \
     (SELECT count(*) FROM secrets), (SELECT count(*) FROM issuance)";

impl Store {
    /// How many rows each table holds (one read transaction's view).
    pub async fn counts(&self) -> anyhow::Result<Counts> {
        let (keys, clients, secrets, issuance) = match self {
            Store::Sqlite(s) => sqlx::query_as(COUNTS).fetch_one(s.pool()).await?,
            Store::Postgres(s) => sqlx::query_as(COUNTS).fetch_one(s.pool()).await?,
        };
        Ok(Counts { keys, clients, secrets, issuance })
    }

    /// Up to `limit` ledger rows after `after` (issue time, jti), in that order.
    pub async fn issuance_after(&self, after: Option<(i64, String)>, limit: i64) -> anyhow::Result<Vec<Entry>> {
        let (iat, jti) = after.unwrap_or((i64::MIN, String::new()));
        match self {
            Store::Sqlite(s) => sqlite::issuance::page(s.pool(), iat, &jti, limit).await,
            Store::Postgres(s) => postgres::issuance::page(s.pool(), iat, &jti, limit).await,
        }
    }

    /// Writes ledger rows as they are, in one transaction (rows of retired keys included:
    /// this is a copy of history, not an issuance).
    pub async fn copy_issuance(&self, entries: &[&Entry]) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => sqlite::issuance::copy(s.pool(), entries).await,
            Store::Postgres(s) => postgres::issuance::copy(s.pool(), entries).await,
        }
    }
}
