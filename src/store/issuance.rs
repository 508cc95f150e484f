//! The ledger writer's side of the store.

use std::collections::HashSet;

use super::rows::Entry;

/// What a ledger commit refused to write, decided inside its transaction: rows whose key
/// may no longer sign (revoked or retired since it signed), and rows of revoked clients.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Keys that may no longer sign.
    pub kids: HashSet<String>,
    /// Clients revoked meanwhile.
    pub clients: HashSet<String>,
}

impl Refused {
    /// Starts from every kid and client in `entries` (all refused until found allowed).
    pub(crate) fn all_of(entries: &[&Entry]) -> Refused {
        Refused {
            kids: entries.iter().filter_map(|e| e.kid.clone()).collect(),
            clients: entries.iter().map(|e| e.client.clone()).collect(),
        }
    }

    /// Whether `entry`'s row was refused.
    pub fn covers(&self, entry: &Entry) -> bool {
        self.clients.contains(&entry.client) || entry.kid.as_ref().is_some_and(|kid| self.kids.contains(kid))
    }
}
use super::{postgres, sqlite, Store};

/// Commits ledger rows for the one writer task.
pub enum IssuanceWriter {
    /// With a connection of its own.
    Sqlite(sqlite::issuance::IssuanceWriter),
    /// From the pool.
    Postgres(sqlx::PgPool),
}

impl Store {
    /// The issuance ledger's writer.
    pub fn issuance_writer(&self) -> IssuanceWriter {
        match self {
            Store::Sqlite(s) => IssuanceWriter::Sqlite(sqlite::issuance::IssuanceWriter::new(s.pool().clone())),
            Store::Postgres(s) => IssuanceWriter::Postgres(s.pool().clone()),
        }
    }
}

impl IssuanceWriter {
    /// Commits `entries` in one transaction, except rows whose key may no longer sign or
    /// whose client was revoked: those are returned, their rows not written.
    pub async fn insert(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        match self {
            IssuanceWriter::Sqlite(w) => w.insert(entries).await,
            IssuanceWriter::Postgres(pool) => postgres::issuance::insert(pool, entries).await,
        }
    }

    /// A row written and deleted in one transaction: whether the ledger can commit now.
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        match self {
            IssuanceWriter::Sqlite(w) => w.probe().await,
            IssuanceWriter::Postgres(pool) => postgres::issuance::probe(pool).await,
        }
    }
}

/// The audit query for `filter`, newest first, at most `limit`: the same SQL on both stores.
pub(crate) fn audit_query<'a, DB: sqlx::Database>(
    filter: &super::rows::Filter,
    limit: i64,
) -> sqlx::QueryBuilder<'a, DB>
where
    String: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::QueryBuilder::new(
        "SELECT jti, profile, client, sub, kid, alg, iat, exp, claim_names FROM issuance WHERE 1 = 1",
    );
    for (column, value) in
        [("sub", &filter.sub), ("kid", &filter.kid), ("client", &filter.client), ("profile", &filter.profile)]
    {
        if let Some(value) = value {
            query.push(format!(" AND {column} = ")).push_bind(value.clone());
        }
    }
    if let Some(since) = filter.since {
        query.push(" AND iat >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND iat < ").push_bind(until);
    }
    query.push(" ORDER BY iat DESC, jti LIMIT ").push_bind(limit);
    query
}
