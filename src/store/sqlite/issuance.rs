//! The SQL of the `issuance` table: the ledger writer's inserts, audit queries, pruning.

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::WriteTx;
use crate::store::issuance::Refused;
use crate::store::rows::{Entry, EntryRow, Filter};

/// The `jti` of the row a probe writes and deletes again (real jtis are 22 characters).
const PROBE_JTI: &str = "-ledger-probe-";

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

    /// A write transaction on the writer's own connection (opened if needed).
    async fn begin(&mut self) -> anyhow::Result<WriteTx<&mut PoolConnection<Sqlite>>> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            slot => slot.insert(self.pool.acquire().await.context("connecting the ledger writer")?),
        };
        WriteTx::begin(connection).await.context("beginning the ledger transaction")
    }

    /// Commits `entries` in one transaction, except those whose key may no longer sign
    /// (revoked or retired) or whose client was revoked: those are returned and their rows
    /// not written. The check runs under the write lock, so no row of a revoked key or
    /// client commits after the revocation.
    /// After a failure the connection is dropped (the failed transaction marked it to
    /// close): the next one starts on a fresh one.
    pub async fn insert(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        let result = self.insert_all(entries).await;
        self.forget_after(&result);
        result
    }

    /// A row written and deleted in one transaction: its pages change (so a full disk fails
    /// the commit as a real batch would) and nothing remains.
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        let result = self.probe_write().await;
        self.forget_after(&result);
        result
    }

    fn forget_after<T>(&mut self, result: &anyhow::Result<T>) {
        if result.is_err() {
            self.connection = None;
        }
    }

    async fn insert_all(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        let mut tx = self.begin().await?;
        let refused = refused(&mut tx, entries).await?;
        let kept: Vec<&Entry> = entries.iter().copied().filter(|e| !refused.covers(e)).collect();
        let mut rest = kept.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
            insert_rows(&mut tx, chunk).await?;
            rest = tail;
        }
        tx.commit().await.context("committing ledger rows")?;
        Ok(refused)
    }

    async fn probe_write(&mut self) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
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

/// The rows of `entries` that may not be written: their key may no longer sign (revoked,
/// retired or unknown) or their client is revoked.
async fn refused(tx: &mut sqlx::SqliteConnection, entries: &[&Entry]) -> anyhow::Result<Refused> {
    let mut refused = Refused::all_of(entries);
    for (sql, names) in [
        ("SELECT kid FROM keys WHERE revoked_at IS NULL AND retired_at IS NULL AND kid IN (", &mut refused.kids),
        ("SELECT name FROM clients WHERE revoked_at IS NULL AND name IN (", &mut refused.clients),
    ] {
        if names.is_empty() {
            continue;
        }
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(sql);
        let mut list = query.separated(", ");
        for name in names.iter() {
            list.push_bind(name.clone());
        }
        query.push(")");
        let allowed: Vec<String> =
            query.build_query_scalar().fetch_all(&mut *tx).await.context("checking keys and clients")?;
        for name in allowed {
            names.remove(&name);
        }
    }
    Ok(refused)
}

/// A batch of up to 16 rows (what a busy server commits at once) goes in one statement:
/// each statement is a hand-off to SQLite's thread and back. Larger batches go in chunks
/// of 256, 128, ... 32 and then the rest, so that only 20 different statements exist and
/// all stay prepared (SQLite allows 32,766 bound values; a chunk binds at most 2,304).
fn chunk_len(remaining: usize) -> usize {
    if remaining <= 16 {
        return remaining;
    }
    let mut size = 256;
    while size > remaining {
        size /= 2;
    }
    size
}

async fn insert_rows(tx: &mut sqlx::SqliteConnection, entries: &[&Entry]) -> anyhow::Result<()> {
    let mut query: QueryBuilder<Sqlite> =
        QueryBuilder::new("INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) ");
    query.push_values(entries, |mut row, e| {
        row.push_bind(&e.jti)
            .push_bind(&e.profile)
            .push_bind(&e.client)
            .push_bind(&e.sub)
            .push_bind(&e.kid)
            .push_bind(&e.alg)
            .push_bind(e.iat)
            .push_bind(e.exp)
            .push_bind(serde_json::to_string(&e.claim_names).unwrap_or_else(|_| "[]".to_owned()));
    });
    query.build().execute(&mut *tx).await.context("writing ledger rows")?;
    Ok(())
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

/// Writes `entries` as they are, in one transaction.
pub async fn copy(pool: &SqlitePool, entries: &[&Entry]) -> anyhow::Result<()> {
    let mut tx = super::begin_write(pool).await?;
    let mut rest = entries;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
        insert_rows(&mut tx, chunk).await?;
        rest = tail;
    }
    tx.commit().await.context("committing copied ledger rows")
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

#[cfg(test)]
mod tests {
    use super::chunk_len;

    #[test]
    fn batches_of_up_to_16_rows_go_in_one_statement_larger_ones_in_power_of_two_chunks() {
        let split = |mut n: usize| {
            let mut sizes = Vec::new();
            while n > 0 {
                sizes.push(chunk_len(n));
                n -= chunk_len(n);
            }
            sizes
        };
        assert_eq!(split(1), [1]);
        assert_eq!(split(7), [7]);
        assert_eq!(split(16), [16]);
        assert_eq!(split(17), [16, 1]);
        assert_eq!(split(47), [32, 15]);
        assert_eq!(split(256), [256]);
        assert_eq!(split(600), [256, 256, 64, 16, 8]);
    }
}
