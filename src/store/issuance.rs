//! The ledger writer's side of the store.

use std::collections::HashSet;

use super::rows::Entry;
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
    /// Commits `entries` in one transaction, except rows whose key may no longer sign
    /// (revoked or retired since it signed): their kids are returned, their rows not written.
    pub async fn insert(&mut self, entries: &[&Entry]) -> anyhow::Result<HashSet<String>> {
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
