//! The issuance ledger: every token keyward issues, recorded before the caller gets it.
//!
//! Requests hand their row to one writer task and wait for its commit. While a commit is
//! under way, new rows queue; the next transaction takes them all (group commit), so the
//! ledger costs one fsync per batch, not per token. A commit waits for company only while
//! fewer rows have come than the previous commit carried (about the number of requests in
//! flight at this load), and at most until `ledger_commit_interval_ms` after the previous
//! commit started: a quiet server commits at once, a busy one in full batches, and a
//! client that waits for each answer is never held to one batch per interval.
//!
//! When commits fail (a full disk), every waiting request is refused, the server reports
//! not ready, and the writer tries a probe write every second while no rows come, so it
//! finds out by itself when writing works again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot, watch};

use crate::db::WriteTx;
use crate::metrics::Metrics;

/// Rows one transaction takes at most.
const MAX_BATCH: usize = 1_024;

/// While commits fail and no rows come, how often the writer tries a probe write.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The `jti` of the row a probe writes and deletes again (real jtis are 22 characters).
const PROBE_JTI: &str = "-ledger-probe-";

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
}

/// The row could not be committed: the token must not be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the issuance could not be recorded")]
pub struct NotRecorded;

type Job = (Entry, oneshot::Sender<Result<(), NotRecorded>>);

/// Whether the ledger's last write failed (then the server is not ready); cheap to clone.
#[derive(Clone, Default)]
pub struct LedgerHealth(Arc<AtomicBool>);

impl LedgerHealth {
    /// True from a failed commit until one succeeds again.
    pub fn is_failing(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where handlers send rows.
#[derive(Clone)]
pub struct Ledger {
    jobs: mpsc::UnboundedSender<Job>,
    health: LedgerHealth,
}

impl Ledger {
    /// A ledger and its writer, which runs until `stop` and then commits what is queued.
    /// A commit waits for company at most until `max_wait` after the previous one started.
    pub fn start(pool: SqlitePool, metrics: Metrics, max_wait: Duration) -> (Ledger, Writer) {
        let (jobs, queue) = mpsc::unbounded_channel();
        let health = LedgerHealth::default();
        let writer = Writer {
            pool,
            metrics,
            queue,
            connection: None,
            max_wait,
            last_commit: None,
            last_batch: 0,
            health: health.clone(),
            outage: None,
        };
        (Ledger { jobs, health }, writer)
    }

    /// Whether commits are failing.
    pub fn health(&self) -> LedgerHealth {
        self.health.clone()
    }

    /// Records `entry`; returns once its row is committed.
    pub async fn record(&self, entry: Entry) -> Result<(), NotRecorded> {
        let (done, committed) = oneshot::channel();
        self.jobs.send((entry, done)).map_err(|_| NotRecorded)?;
        committed.await.map_err(|_| NotRecorded)?
    }
}

/// The task that commits queued rows.
pub struct Writer {
    pool: SqlitePool,
    metrics: Metrics,
    queue: mpsc::UnboundedReceiver<Job>,
    /// Its own connection: its page cache and prepared statements stay warm, since the
    /// other connections rarely write (a pooled one would often find its cache stale).
    connection: Option<PoolConnection<Sqlite>>,
    /// A commit waits for company at most this long after the previous one started.
    max_wait: Duration,
    last_commit: Option<Instant>,
    /// Rows the previous commit carried.
    last_batch: usize,
    health: LedgerHealth,
    /// The current run of failed commits, if any.
    outage: Option<Outage>,
}

/// A run of failed commits: logged once when it starts and once when it ends.
struct Outage {
    since: Instant,
    failed_batches: u64,
    refused_rows: u64,
}

/// How long a commit may still wait for company: none when the last one started
/// `max_wait` or longer ago (or never), else the rest of that time.
fn commit_delay(since_last: Option<Duration>, max_wait: Duration) -> Duration {
    since_last.map_or(Duration::ZERO, |since| max_wait.saturating_sub(since))
}

/// Whether a batch of `rows` should wait for more: while fewer rows have come than the
/// previous commit carried, since as many requests are likely in flight.
fn wants_company(rows: usize, last_batch: usize) -> bool {
    rows < last_batch.min(MAX_BATCH)
}

impl Writer {
    /// Commits batches until `stop` turns true, then stops taking rows and commits the rest.
    pub async fn run_until_stopped(mut self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                job = self.queue.recv() => job,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        self.queue.close();
                    }
                    continue;
                }
                () = tokio::time::sleep(PROBE_INTERVAL), if self.outage.is_some() => {
                    self.probe().await;
                    continue;
                }
            };
            let Some(first) = first else { return Ok(()) };
            let mut batch = vec![first];
            self.drain(&mut batch);
            let wait = commit_delay(self.last_commit.map(|at| at.elapsed()), self.max_wait);
            if !wait.is_zero() {
                let deadline = tokio::time::Instant::now() + wait;
                while wants_company(batch.len(), self.last_batch) && !*stop.borrow() {
                    match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                        Ok(Some(job)) => {
                            batch.push(job);
                            self.drain(&mut batch);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            self.last_commit = Some(Instant::now());
            self.last_batch = batch.len();
            self.commit(batch).await;
        }
    }

    fn drain(&mut self, batch: &mut Vec<Job>) {
        while batch.len() < MAX_BATCH {
            match self.queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
    }

    async fn commit(&mut self, batch: Vec<Job>) {
        let started = Instant::now();
        let size = batch.len();
        let result = self.insert(batch.iter().map(|(entry, _)| entry).collect()).await;
        self.metrics.ledger_batch(size, started.elapsed(), result.is_ok());
        self.outcome(&result, size);
        for (_, done) in batch {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|_| NotRecorded));
        }
    }

    /// Whether writing works again, without waiting for a request to find out.
    async fn probe(&mut self) {
        let result = self.probe_write().await;
        self.outcome(&result, 0);
    }

    /// Tracks outages: the log says once why commits fail and once that they work again.
    fn outcome(&mut self, result: &anyhow::Result<()>, rows: usize) {
        let Err(err) = result else {
            if let Some(outage) = self.outage.take() {
                tracing::warn!(
                    seconds = outage.since.elapsed().as_secs(),
                    failed_batches = outage.failed_batches,
                    refused_rows = outage.refused_rows,
                    "the issuance ledger commits again: sign and token requests are served"
                );
                self.health.0.store(false, Ordering::Relaxed);
            }
            return;
        };
        // The failed transaction marked its connection to close: drop it, the next
        // transaction starts on a fresh one.
        self.connection = None;
        let (batches, rows) = (u64::from(rows > 0), rows as u64);
        if let Some(outage) = &mut self.outage {
            outage.failed_batches += batches;
            outage.refused_rows += rows;
            tracing::debug!(error = format!("{err:#}"), rows, "ledger commit failed again");
            return;
        }
        tracing::error!(
            error = format!("{err:#}"),
            rows,
            "the issuance ledger cannot commit: sign and token requests are refused (503 not-recorded) \
             and /readyz reports not ready until it can; retried every second"
        );
        self.outage = Some(Outage { since: Instant::now(), failed_batches: batches, refused_rows: rows });
        self.health.0.store(true, Ordering::Relaxed);
    }
}

impl Writer {
    /// A write transaction on the writer's own connection (opened if needed).
    async fn begin(&mut self) -> anyhow::Result<WriteTx<&mut PoolConnection<Sqlite>>> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            slot => slot.insert(self.pool.acquire().await.context("connecting the ledger writer")?),
        };
        WriteTx::begin(connection).await.context("beginning the ledger transaction")
    }

    async fn insert(&mut self, entries: Vec<&Entry>) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        let mut rest = entries.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
            insert_rows(&mut tx, chunk).await?;
            rest = tail;
        }
        tx.commit().await.context("committing ledger rows")
    }

    /// A row written and deleted in one transaction: its pages change (so a full disk fails
    /// the commit as a real batch would) and nothing remains.
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

/// Rows go in chunks of 256, 128, ... or 1, so that only nine different statements exist
/// and all stay prepared (SQLite allows 32,766 bound values; a chunk binds at most 2,304).
fn chunk_len(remaining: usize) -> usize {
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

/// The rows matching `filter`, newest first, at most `limit`.
pub async fn query(pool: &SqlitePool, filter: &Filter, limit: i64) -> anyhow::Result<Vec<Entry>> {
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
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
    let rows = query.build().fetch_all(pool).await.context("querying the ledger")?;
    rows.iter()
        .map(|row| {
            let names: String = row.try_get("claim_names")?;
            Ok(Entry {
                jti: row.try_get("jti")?,
                profile: row.try_get("profile")?,
                client: row.try_get("client")?,
                sub: row.try_get("sub")?,
                kid: row.try_get("kid")?,
                alg: row.try_get("alg")?,
                iat: row.try_get("iat")?,
                exp: row.try_get("exp")?,
                claim_names: serde_json::from_str(&names).unwrap_or_default(),
            })
        })
        .collect()
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
    use std::time::Duration;

    use super::{chunk_len, commit_delay, wants_company, MAX_BATCH};

    #[test]
    fn a_commit_waits_only_for_the_rest_of_the_interval() {
        let ms = Duration::from_millis;
        assert_eq!(commit_delay(None, ms(5)), Duration::ZERO, "the first commit never waits");
        assert_eq!(commit_delay(Some(ms(2)), ms(5)), ms(3));
        assert_eq!(commit_delay(Some(ms(5)), ms(5)), Duration::ZERO);
        assert_eq!(commit_delay(Some(ms(900)), ms(5)), Duration::ZERO, "a quiet server commits at once");
        assert_eq!(commit_delay(Some(ms(1)), Duration::ZERO), Duration::ZERO, "0 turns pacing off");
    }

    #[test]
    fn a_commit_waits_for_company_only_while_fewer_rows_came_than_last_time() {
        assert!(!wants_company(1, 0), "the first commit never waits");
        assert!(!wants_company(1, 1), "a quiet server commits each row at once");
        assert!(wants_company(3, 16), "16 requests were in flight: wait for the rest");
        assert!(!wants_company(16, 16));
        assert!(!wants_company(20, 16), "more than last time: commit");
        assert!(!wants_company(MAX_BATCH, 5_000), "never more than one transaction's rows");
    }

    #[test]
    fn batches_split_into_power_of_two_chunks() {
        let split = |mut n: usize| {
            let mut sizes = Vec::new();
            while n > 0 {
                sizes.push(chunk_len(n));
                n -= chunk_len(n);
            }
            sizes
        };
        assert_eq!(split(1), [1]);
        assert_eq!(split(7), [4, 2, 1]);
        assert_eq!(split(256), [256]);
        assert_eq!(split(600), [256, 256, 64, 16, 8]);
    }
}
