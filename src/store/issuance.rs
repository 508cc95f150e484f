//! The ledger writer's side of the store.
//!
//! A batch of rows goes to the database as one statement (on SQLite, up to 64 rows; larger
//! bursts as several in one transaction) that writes the rows whose key may still sign and
//! whose client is not revoked, and nothing else: the check and the write cannot part, and
//! a batch costs one hand-off to SQLite's thread or one round trip to PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::rows::Entry;

/// The `jti` of the row a ledger probe writes and deletes again, on either store (real
/// jtis are 22 characters).
pub(crate) const PROBE_JTI: &str = "-ledger-probe-";

/// Why a ledger commit refused a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its key may no longer sign (revoked or retired since the request signed with it).
    KeyWithdrawn,
    /// Its client was revoked or changed (a new token, other rights) since the request was
    /// authenticated.
    ClientRevoked,
}

/// The rows a ledger commit did not write, by `jti`, and why. Every row not in it committed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refused(HashMap<String, Why>);

impl Refused {
    /// Why `entry`'s row was not written; `None` when it was.
    pub fn why(&self, entry: &Entry) -> Option<Why> {
        self.0.get(&entry.jti).copied()
    }

    /// After a commit that wrote fewer rows than `entries`: the rows of `entries` not in
    /// `written` were refused, for their client when it is not in `clients` (the active
    /// clients that may still ask, with their generations), else for their key. Revocations do not come undone, so what is
    /// revoked now was revoked when the commit refused the row.
    pub(crate) fn missing(entries: &[&Entry], written: &HashSet<String>, clients: &HashSet<(String, i64)>) -> Refused {
        Refused(
            entries
                .iter()
                .filter(|e| !written.contains(&e.jti))
                .map(|e| {
                    let current = clients.contains(&(e.client.clone(), e.client_generation));
                    let why = if current { Why::KeyWithdrawn } else { Why::ClientRevoked };
                    (e.jti.clone(), why)
                })
                .collect(),
        )
    }
}

use super::{postgres, sqlite, Store};

/// Commits ledger rows for the one writer task.
pub enum IssuanceWriter {
    /// With a connection of its own.
    Sqlite(sqlite::issuance::IssuanceWriter),
    /// With a connection of its own.
    Postgres(postgres::issuance::IssuanceWriter),
}

impl Store {
    /// The issuance ledger's writer, whose statements the database gives up after
    /// `statement_limit` (a wait for a lock included).
    pub fn issuance_writer(&self, statement_limit: Duration) -> IssuanceWriter {
        match self {
            Store::Sqlite(s) => {
                IssuanceWriter::Sqlite(sqlite::issuance::IssuanceWriter::new(s.pool().clone(), statement_limit))
            }
            Store::Postgres(s) => {
                IssuanceWriter::Postgres(postgres::issuance::IssuanceWriter::new(s.pool().clone(), statement_limit))
            }
        }
    }
}

impl IssuanceWriter {
    /// Commits `entries` in one transaction, except rows whose key may no longer sign or
    /// whose client was revoked: those are returned, their rows not written.
    pub async fn insert(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        match self {
            IssuanceWriter::Sqlite(w) => w.insert(entries).await,
            IssuanceWriter::Postgres(w) => w.insert(entries).await,
        }
    }

    /// A row written and deleted in one transaction: whether the ledger can commit now.
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        match self {
            IssuanceWriter::Sqlite(w) => w.probe().await,
            IssuanceWriter::Postgres(w) => w.probe().await,
        }
    }

    /// A commit or probe was given up mid-way: its connection is closed, never used again
    /// (it may still be inside the statement).
    pub fn abandon(&mut self) {
        match self {
            IssuanceWriter::Sqlite(w) => w.abandon(),
            IssuanceWriter::Postgres(w) => w.abandon(),
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
