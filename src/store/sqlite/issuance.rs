//! The SQL of the `issuance` table: the ledger writer's inserts, audit queries, pruning.

use std::collections::HashSet;

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqlitePool};

use super::WriteTx;
use crate::store::issuance::{rows_json, Refused};
use crate::store::rows::{Entry, EntryRow, Filter};

/// The `jti` of the row a probe writes and deletes again (real jtis are 22 characters).
const PROBE_JTI: &str = "-ledger-probe-";

/// The rows of the JSON array (`store::issuance::rows_json`) bound as `?`, as the table's columns.
macro_rules! rows_of_json {
    () => {
        "SELECT value ->> 'jti', value ->> 'profile', value ->> 'client', value ->> 'sub', value ->> 'kid', \
         value ->> 'alg', value ->> 'iat', value ->> 'exp', value ->> 'claim_names' FROM json_each(?)"
    };
}

/// Writes the rows whose key may still sign (or that have none) and whose client is not
/// revoked. One statement: SQLite takes the write lock before it reads, so no revocation
/// can commit between the check and the write.
const INSERT_ALLOWED: &str = concat!(
    "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) ",
    rows_of_json!(),
    " WHERE (value ->> 'kid' IS NULL \
     OR value ->> 'kid' IN (SELECT kid FROM keys WHERE revoked_at IS NULL AND retired_at IS NULL)) \
     AND value ->> 'client' IN (SELECT name FROM clients WHERE revoked_at IS NULL)"
);

/// The ledger writer's side of the table.
pub struct IssuanceWriter {
    pool: SqlitePool,
    /// Its own connection: its page cache and prepared statements stay warm, since the
    /// other connections rarely write (a pooled one would often find its cache stale).
    connection: Option<PoolConnection<Sqlite>>,
}

impl IssuanceWriter {
    /// The writer of `pool`'s issuance table.
    pub fn new(pool: SqlitePool) -> Self {
        IssuanceWriter { pool, connection: None }
    }

    /// The writer's own connection (opened if needed).
    async fn connection(&mut self) -> anyhow::Result<&mut PoolConnection<Sqlite>> {
        Ok(match &mut self.connection {
            Some(connection) => connection,
            slot => slot.insert(self.pool.acquire().await.context("connecting the ledger writer")?),
        })
    }

    /// Commits `entries` in one statement, except those whose key may no longer sign
    /// (revoked or retired) or whose client was revoked: those are returned and their rows
    /// not written. No row of a revoked key or client commits after the revocation.
    /// After a failure the connection is dropped: the next commit starts on a fresh one.
    pub async fn insert(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        let result = self.insert_allowed(entries).await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// A row written and deleted in one transaction: its pages change (so a full disk fails
    /// the commit as a real batch would) and nothing remains.
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        let result = self.probe_write().await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn insert_allowed(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        let rows = rows_json(entries);
        let connection = self.connection().await?;
        let written =
            sqlx::query(INSERT_ALLOWED).bind(&rows).execute(&mut **connection).await.context("writing ledger rows")?;
        if written.rows_affected() == entries.len() as u64 {
            return Ok(Refused::default());
        }
        // Some rows were refused (a revocation): which, and why.
        let present: HashSet<String> =
            sqlx::query_scalar("SELECT jti FROM issuance WHERE jti IN (SELECT value ->> 'jti' FROM json_each(?))")
                .bind(&rows)
                .fetch_all(&mut **connection)
                .await
                .context("reading back ledger rows")?
                .into_iter()
                .collect();
        let clients: HashSet<String> = sqlx::query_scalar(
            "SELECT name FROM clients WHERE revoked_at IS NULL \
             AND name IN (SELECT value ->> 'client' FROM json_each(?))",
        )
        .bind(&rows)
        .fetch_all(&mut **connection)
        .await
        .context("checking clients")?
        .into_iter()
        .collect();
        Ok(Refused::missing(entries, &present, &clients))
    }

    async fn probe_write(&mut self) -> anyhow::Result<()> {
        let mut tx = WriteTx::begin(self.connection().await?).await.context("beginning the probe")?;
        sqlx::query(
            "INSERT INTO issuance (jti, profile, client, alg, iat, exp, claim_names) VALUES (?, '', '', '', 0, 0, '[]')",
        )
        .bind(PROBE_JTI)
        .execute(&mut *tx)
        .await
        .context("writing the probe row")?;
        sqlx::query("DELETE FROM issuance WHERE jti = ?")
            .bind(PROBE_JTI)
            .execute(&mut *tx)
            .await
            .context("deleting the probe row")?;
        tx.commit().await.context("committing the probe")
    }
}

/// The rows matching `filter`, newest first, at most `limit`.
pub async fn query(pool: &SqlitePool, filter: &Filter, limit: i64) -> anyhow::Result<Vec<Entry>> {
    let mut query = crate::store::issuance::audit_query::<Sqlite>(filter, limit);
    let rows: Vec<EntryRow> = query.build_query_as().fetch_all(pool).await.context("querying the ledger")?;
    rows.into_iter().map(Entry::try_from).collect()
}

/// Up to `limit` rows issued after (`iat`, `jti`), in that order.
pub async fn page(pool: &SqlitePool, iat: i64, jti: &str, limit: i64) -> anyhow::Result<Vec<Entry>> {
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT jti, profile, client, sub, kid, alg, iat, exp, claim_names FROM issuance \
         WHERE (iat, jti) > (?, ?) ORDER BY iat, jti LIMIT ?",
    )
    .bind(iat)
    .bind(jti)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("reading the ledger")?;
    rows.into_iter().map(Entry::try_from).collect()
}

/// Writes `entries` as they are, in one statement.
pub async fn copy(pool: &SqlitePool, entries: &[&Entry]) -> anyhow::Result<()> {
    sqlx::query(concat!(
        "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) ",
        rows_of_json!()
    ))
    .bind(rows_json(entries))
    .execute(pool)
    .await
    .context("writing copied ledger rows")?;
    Ok(())
}

/// Deletes rows issued before `before`; returns how many.
pub async fn prune(pool: &SqlitePool, before: i64) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM issuance WHERE iat < ?")
        .bind(before)
        .execute(pool)
        .await
        .context("pruning the ledger")?;
    Ok(done.rows_affected())
}
