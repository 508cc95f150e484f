//! The issuance ledger: every token keyward issues, recorded before the caller gets it.
//!
//! Requests hand their row to one writer task and wait for its commit. While a commit is
//! under way, new rows queue; the next transaction takes them all (group commit), so the
//! ledger costs one fsync per batch, not per token, and batches grow with the load by
//! themselves. `ledger_commit_interval_ms` (default 0) can space commits further apart;
//! it caps clients that wait for each answer at one batch per interval.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;

/// Rows one transaction takes at most.
const MAX_BATCH: usize = 1_024;

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

/// Where handlers send rows.
#[derive(Clone)]
pub struct Ledger {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Ledger {
    /// A ledger and its writer, which runs until `stop` and then commits what is queued.
    /// Commits start at least `min_interval` apart.
    pub fn start(pool: SqlitePool, metrics: Metrics, min_interval: Duration) -> (Ledger, Writer) {
        let (jobs, queue) = mpsc::unbounded_channel();
        (Ledger { jobs }, Writer { pool, metrics, queue, connection: None, min_interval, last_commit: None })
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
    /// Commits start at least this far apart (rows arriving meanwhile join the next one).
    min_interval: Duration,
    last_commit: Option<Instant>,
}

/// How long a commit waits for company: none when the last one started `min_interval` or
/// longer ago (or never), else the rest of the interval.
fn commit_delay(since_last: Option<Duration>, min_interval: Duration) -> Duration {
    since_last.map_or(Duration::ZERO, |since| min_interval.saturating_sub(since))
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
            };
            let Some(first) = first else { return Ok(()) };
            let mut batch = vec![first];
            self.drain(&mut batch);
            let wait = commit_delay(self.last_commit.map(|at| at.elapsed()), self.min_interval);
            if !wait.is_zero() && batch.len() < MAX_BATCH && !*stop.borrow() {
                tokio::time::sleep(wait).await;
                self.drain(&mut batch);
            }
            self.last_commit = Some(Instant::now());
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
        if result.is_err() {
            // Start afresh next time, in case the connection itself is at fault.
            self.connection = None;
        }
        self.metrics.ledger_batch(size, started.elapsed(), result.is_ok());
        if let Err(err) = &result {
            tracing::error!(error = format!("{err:#}"), rows = size, "ledger commit failed; those tokens are refused");
        }
        for (_, done) in batch {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|_| NotRecorded));
        }
    }
}

impl Writer {
    async fn insert(&mut self, entries: Vec<&Entry>) -> anyhow::Result<()> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            slot => slot.insert(self.pool.acquire().await.context("connecting the ledger writer")?),
        };
        let mut tx = connection.begin().await.context("beginning the ledger transaction")?;
        let mut rest = entries.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
            insert_rows(&mut tx, chunk).await?;
            rest = tail;
        }
        tx.commit().await.context("committing ledger rows")
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

async fn insert_rows(tx: &mut sqlx::Transaction<'_, Sqlite>, entries: &[&Entry]) -> anyhow::Result<()> {
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
    query.build().execute(&mut **tx).await.context("writing ledger rows")?;
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

    use super::{chunk_len, commit_delay};

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
