//! The SQL of the `issuance` table: the ledger writer's inserts, audit queries, pruning.

use std::collections::HashSet;

use std::time::Duration;

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use super::WriteTx;
use crate::store::events::Trail;
use crate::store::issuance::{
    genesis, pruned_event, LedgerChain, LedgerLink, Pruned, Refused, FIRST_KEPT_SQL, LEDGER_HEAD_SQL, PROBE_JTI,
};
use crate::store::rows::{Entry, EntryRow, Filter};

/// Rows one statement carries at most: batches up to this size (all but bursts) are one
/// statement inside the commit's transaction, and at most this many statement shapes stay
/// prepared. SQLite allows 32,766 bound values; this binds 576.
const CHUNK: usize = 64;

/// Which rows a statement writes.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Those whose key may still sign (or that have none) and whose client is not revoked,
    /// with their chain links.
    Allowed(&'a str, &'a [LedgerLink]),
    /// All (a copy of history, without its chain).
    All,
}

/// The ledger writer's side of the table.
pub struct IssuanceWriter {
    pool: SqlitePool,
    /// Its own connection: its page cache and prepared statements stay warm, since the
    /// other connections rarely write (a pooled one would often find its cache stale).
    connection: Option<PoolConnection<Sqlite>>,
    /// How long its statements wait for the write lock (a request waits no longer).
    busy_timeout: Duration,
    /// Its hash chain.
    chain: LedgerChain,
}

impl IssuanceWriter {
    /// The writer of `pool`'s issuance table, whose statements give up waiting for the
    /// write lock after `busy_timeout`.
    /// Its rows are chained under a writer id of its own; `trail` attributes the events
    /// it records.
    pub fn new(pool: SqlitePool, busy_timeout: Duration, trail: Trail) -> Self {
        IssuanceWriter { pool, connection: None, busy_timeout, chain: LedgerChain::new(trail) }
    }

    /// The writer's own connection (opened if needed).
    async fn connection(&mut self) -> anyhow::Result<&mut PoolConnection<Sqlite>> {
        Ok(match &mut self.connection {
            Some(connection) => connection,
            slot => {
                let mut connection = self.pool.acquire().await.context("connecting the ledger writer")?;
                // Never returned to the pool with its own busy timeout.
                connection.close_on_drop();
                sqlx::query(&format!("PRAGMA busy_timeout = {}", self.busy_timeout.as_millis()))
                    .execute(&mut *connection)
                    .await
                    .context("setting the ledger writer's busy timeout")?;
                // Room for the hot end of the ledger's indexes (where new rows land), so a
                // commit rarely reads a page back from disk however large the ledger grows.
                sqlx::query("PRAGMA cache_size = -65536")
                    .execute(&mut *connection)
                    .await
                    .context("sizing the ledger writer's page cache")?;
                slot.insert(connection)
            }
        })
    }

    /// A commit or probe was given up mid-way (it took too long): its connection may still
    /// be inside the statement, so it is closed rather than used again.
    pub fn abandon(&mut self) {
        self.connection = None;
        // Whether the commit landed is unknown: the head is read again from the table.
        self.chain.head = None;
    }

    /// Commits `entries` in one transaction, except those whose key may no longer sign
    /// (revoked or retired) or whose client was revoked: those are returned, their rows not
    /// written and their chain links recorded with the commit (`ledger.withheld`). No row of
    /// a revoked key or client commits after the revocation.
    /// After a failure the connection is dropped: the next commit starts on a fresh one.
    pub async fn insert(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        let result = self.insert_allowed(entries).await;
        if result.is_err() {
            self.abandon();
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
        let head = match self.chain.head.clone() {
            Some(head) => head,
            None => {
                let writer = self.chain.writer.clone();
                let stored: Option<(i64, String)> = sqlx::query_as(LEDGER_HEAD_SQL)
                    .bind(writer)
                    .fetch_optional(&mut **self.connection().await?)
                    .await
                    .context("reading the ledger chain's head")?;
                stored.unwrap_or_else(genesis)
            }
        };
        let links = self.chain.links(&head, entries);
        self.connection().await?;
        let (Some(connection), chain) = (self.connection.as_mut(), &self.chain) else {
            anyhow::bail!("the ledger writer has no connection");
        };
        // One transaction: SQLite takes the write lock at BEGIN IMMEDIATE, so no revocation
        // commits between a statement's check and its write, and rows a revocation refused
        // are recorded (`ledger.withheld`) in the commit that leaves them out.
        let mut tx = WriteTx::begin(connection).await.context("beginning the ledger transaction")?;
        let mut written = 0;
        for (chunk, links) in entries.chunks(CHUNK).zip(links.chunks(CHUNK)) {
            written += insert_rows(&mut tx, chunk, Rows::Allowed(&chain.writer, links)).await?;
        }
        let refused = if written == entries.len() as u64 {
            Refused::default()
        } else {
            // Some rows were refused (a revocation): which, and why.
            let present = names_among(&mut tx, "SELECT jti FROM issuance WHERE jti IN (", entries, |e| &e.jti).await?;
            let clients = clients_among(&mut tx, entries).await?;
            let refused = Refused::missing(entries, &present, &clients);
            super::events::append(&mut tx, &chain.trail, &[chain.withheld(entries, &links, &refused)]).await?;
            refused
        };
        tx.commit().await.context("committing ledger rows")?;
        self.chain.advance(&links);
        Ok(refused)
    }

    async fn probe_write(&mut self) -> anyhow::Result<()> {
        let mut tx = WriteTx::begin(self.connection().await?).await.context("beginning the probe")?;
        sqlx::query(
            "INSERT INTO issuance (jti, profile, client, alg, iat, exp, claim_names) VALUES (?, '', '', '', ?, ?, '[]')",
        )
        .bind(PROBE_JTI)
        .bind(chrono::Utc::now().timestamp())
        .bind(chrono::Utc::now().timestamp())
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

/// Writes `entries` (at most [`CHUNK`]) in one statement; returns how many rows it wrote.
async fn insert_rows(connection: &mut SqliteConnection, entries: &[&Entry], rows: Rows<'_>) -> anyhow::Result<u64> {
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names, writer, seq, prev_hash, hash) \
         SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9, \
         column11, column12, column13, column14 FROM (",
    );
    let (writer, links) = match rows {
        Rows::Allowed(writer, links) => (Some(writer), links),
        Rows::All => (None, &[][..]),
    };
    let mut links = links.iter();
    query.push_values(entries, |mut row, e| {
        let link = links.next();
        row.push_bind(&e.jti)
            .push_bind(&e.profile)
            .push_bind(&e.client)
            .push_bind(&e.sub)
            .push_bind(&e.kid)
            .push_bind(&e.alg)
            .push_bind(e.iat)
            .push_bind(e.exp)
            .push_bind(match link {
                Some(link) => link.claim_names.clone(),
                None => serde_json::to_string(&e.claim_names).unwrap_or_else(|_| "[]".to_owned()),
            })
            .push_bind(e.client_generation)
            .push_bind(link.and(writer))
            .push_bind(link.map(|l| l.seq))
            .push_bind(link.map(|l| l.prev_hash.clone()))
            .push_bind(link.map(|l| l.hash.clone()));
    });
    query.push(")");
    if let Rows::Allowed(..) = rows {
        // VALUES names its columns column1, column2, ...: column3 is the client, column5 the
        // kid, column10 the client's generation (not stored).
        query.push(
            " WHERE (column5 IS NULL \
             OR column5 IN (SELECT kid FROM keys WHERE revoked_at IS NULL AND retired_at IS NULL)) \
             AND (column3, column10) IN (SELECT name, generation FROM clients WHERE revoked_at IS NULL)",
        );
    }
    let done = query.build().execute(connection).await.context("writing ledger rows")?;
    Ok(done.rows_affected())
}

/// The values of `name` (a column of `entries`) that `select` (up to its `IN (`) finds.
async fn names_among(
    connection: &mut SqliteConnection,
    select: &str,
    entries: &[&Entry],
    name: fn(&Entry) -> &String,
) -> anyhow::Result<HashSet<String>> {
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(select);
    let mut list = query.separated(", ");
    for entry in entries {
        list.push_bind(name(entry));
    }
    query.push(")");
    let found: Vec<String> =
        query.build_query_scalar().fetch_all(connection).await.context("reading back ledger rows")?;
    Ok(found.into_iter().collect())
}

/// The active clients of `entries`, with their generations.
async fn clients_among(
    connection: &mut SqliteConnection,
    entries: &[&Entry],
) -> anyhow::Result<HashSet<(String, i64)>> {
    let mut query: QueryBuilder<Sqlite> =
        QueryBuilder::new("SELECT name, generation FROM clients WHERE revoked_at IS NULL AND name IN (");
    let mut list = query.separated(", ");
    for entry in entries {
        list.push_bind(&entry.client);
    }
    query.push(")");
    let found: Vec<(String, i64)> = query.build_query_as().fetch_all(connection).await.context("checking clients")?;
    Ok(found.into_iter().collect())
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
    for chunk in entries.chunks(CHUNK) {
        insert_rows(&mut tx, chunk, Rows::All).await?;
    }
    tx.commit().await.context("committing copied ledger rows")
}

/// How long one pruning `DELETE` should hold the write lock: the batch size follows what
/// the last one took. A ledger commit waits for at most about one batch.
const PRUNE_TARGET: Duration = Duration::from_millis(20);

/// The pause after each pruning batch, so the ledger writer (whose busy handler sleeps
/// between tries) gets the write lock before the next batch.
const PRUNE_PAUSE: Duration = Duration::from_millis(30);

/// Removes rows issued before `before`, in batches that each hold the write lock for about
/// [`PRUNE_TARGET`], for at most about `budget`. First the horizon moves to `before`, so
/// readers know rows before it may be missing; then an event records where each writer's
/// chain will start (its first row issued at or after `before`: the rows before it in the
/// chain go, those after it stay, so the chain is whole from there), and only then do rows
/// go. A step cut short leaves rows below the recorded start, which `audit verify` passes
/// over and the next step removes.
pub async fn prune_step(pool: &SqlitePool, trail: &Trail, before: i64, budget: Duration) -> anyhow::Result<Pruned> {
    let started = std::time::Instant::now();
    let mut connection = pool.acquire().await.context("connecting to prune the ledger")?;
    // Its own settings: closed rather than returned to the pool.
    connection.close_on_drop();
    // Ledger rows hold no secret: their pages are freed without being overwritten first.
    sqlx::query("PRAGMA secure_delete = OFF").execute(&mut *connection).await.context("preparing to prune")?;
    sqlx::query(
        "INSERT INTO issuance_horizon (id, kept_from) VALUES (1, ?) \
         ON CONFLICT (id) DO UPDATE SET kept_from = MAX(kept_from, excluded.kept_from)",
    )
    .bind(before)
    .execute(&mut *connection)
    .await
    .context("moving the ledger's horizon")?;
    // Read outside any write transaction: on a first start with months of expired rows
    // this reads them all once, and ledger commits go on meanwhile.
    // `+writer`: the expired rows by the time index, not every chained row by the writers'.
    let expired: Vec<(String, i64)> =
        sqlx::query_as("SELECT writer, count(*) FROM issuance WHERE iat < ? AND +writer IS NOT NULL GROUP BY writer")
            .bind(before)
            .fetch_all(&mut *connection)
            .await
            .context("finding the ledger writers to prune")?;
    let mut starts = Vec::with_capacity(expired.len());
    let mut first_kept = serde_json::Map::new();
    for (writer, _) in &expired {
        let kept: Option<(i64, String)> = sqlx::query_as(FIRST_KEPT_SQL)
            .bind(writer)
            .bind(before)
            .fetch_optional(&mut *connection)
            .await
            .context("finding the first kept ledger row")?;
        let start = match kept {
            Some(kept) => kept,
            None => {
                let (seq, hash): (i64, String) = sqlx::query_as(LEDGER_HEAD_SQL)
                    .bind(writer)
                    .fetch_one(&mut *connection)
                    .await
                    .context("reading a ledger chain's head")?;
                (seq + 1, hash)
            }
        };
        first_kept.insert(writer.clone(), serde_json::json!([start.0, start.1]));
        starts.push((writer.clone(), start.0));
    }
    if !starts.is_empty() {
        let count = expired.iter().map(|(_, n)| u64::try_from(*n).unwrap_or(0)).sum();
        let mut tx = super::begin_write(pool).await?;
        super::events::append(&mut tx, trail, &[pruned_event(before, count, first_kept)]).await?;
        tx.commit().await.context("recording where the pruned ledger chains start")?;
    }
    let (mut rows, mut batch) = (0, 1_000_i64);
    // Each writer's rows before its start, then rows from before chains began.
    let mut targets = starts.into_iter().map(Some).chain([None]);
    let mut target = targets.next().flatten();
    let mut unchained = false;
    loop {
        let deleting = std::time::Instant::now();
        let done = match &target {
            Some((writer, start)) => sqlx::query(
                "DELETE FROM issuance WHERE rowid IN \
                 (SELECT rowid FROM issuance WHERE writer = ? AND seq < ? LIMIT ?)",
            )
            .bind(writer)
            .bind(start)
            .bind(batch),
            None => {
                unchained = true;
                sqlx::query(
                    // `+writer`: by the time index, not the writers' (which would read every
                    // unchained row, then sort them, under the write lock).
                    "DELETE FROM issuance WHERE rowid IN \
                     (SELECT rowid FROM issuance WHERE iat < ? AND +writer IS NULL ORDER BY iat LIMIT ?)",
                )
                .bind(before)
                .bind(batch)
            }
        }
        .execute(&mut *connection)
        .await
        .context("pruning the ledger")?;
        rows += done.rows_affected();
        if done.rows_affected() < batch as u64 {
            if unchained {
                return Ok(Pruned { rows, done: true });
            }
            target = targets.next().flatten();
        } else {
            batch = next_batch(batch, deleting.elapsed());
        }
        if started.elapsed() > budget {
            return Ok(Pruned { rows, done: false });
        }
        tokio::time::sleep(PRUNE_PAUSE).await;
    }
}

/// The next pruning batch's size after one of `batch` rows took `took`: aiming at
/// [`PRUNE_TARGET`], at most doubling or halving at a time.
fn next_batch(batch: i64, took: Duration) -> i64 {
    let target = PRUNE_TARGET.as_micros() as f64;
    let factor = (target / took.as_micros().max(1) as f64).clamp(0.5, 2.0);
    ((batch as f64 * factor) as i64).clamp(100, 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_batches_follow_the_time_they_take() {
        assert_eq!(next_batch(1_000, Duration::from_millis(5)), 2_000, "at most doubling");
        assert_eq!(next_batch(1_000, Duration::from_millis(200)), 500, "at most halving");
        assert_eq!(next_batch(1_000, PRUNE_TARGET), 1_000);
        assert_eq!(next_batch(100, Duration::from_secs(1)), 100, "never below 100 rows");
    }
}
