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
//! A row whose key may no longer sign (revoked, or retired, since the request signed with
//! it) is refused in the same transaction: the request may sign again with the new signer.
//! So is a row of a client revoked or changed (new token, other rights: its generation)
//! since the request was authenticated.
//!
//! Every row carries its request's deadline. A request stops waiting at it (and is refused:
//! its token is never handed out), a row whose request stopped waiting is not committed,
//! and a commit still under way when the last deadline of its batch passes is abandoned:
//! its connection is closed and every request of the batch refused, so whether the
//! database finally wrote it or not, none of its tokens is ever handed out. A hung
//! database (a stopped process, a silent network, a disk whose fsync takes seconds) costs
//! each request its deadline, never more.
//!
//! When commits fail (a full disk, a database that does not answer), every waiting request
//! is refused, the server reports not ready, and the writer tries a probe write every
//! [`PROBE_INTERVAL`] while no rows come, so it finds out by itself when writing works again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::app::metrics::Metrics;
use crate::store::issuance::{IssuanceWriter, Why};
use crate::store::rows::Entry;

/// Rows one transaction takes at most.
const MAX_BATCH: usize = 1_024;

/// While commits fail and no rows come, how often the writer tries a probe write: readiness
/// comes back within this (plus a commit) of the database answering again.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How long a probe write may take before it counts as failed.
const PROBE_LIMIT: Duration = Duration::from_secs(1);

/// The row was not committed: the token must not be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotRecorded {
    /// The ledger could not commit.
    #[error("the issuance could not be recorded")]
    Failed,
    /// Its key was revoked or retired after it signed: sign again with the current signer.
    #[error("the signing key may no longer sign")]
    KeyWithdrawn,
    /// The client was revoked or changed after the request was authenticated.
    #[error("the client was revoked or changed")]
    ClientRevoked,
}

/// A row, its request's deadline, and where its outcome goes.
struct Job {
    entry: Entry,
    deadline: Instant,
    done: oneshot::Sender<Result<(), NotRecorded>>,
}

impl Job {
    /// Whether its request still waits for it (it stops at its deadline).
    fn awaited(&self, now: Instant) -> bool {
        !self.done.is_closed() && now < self.deadline
    }
}

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
    pub fn start(issuance: IssuanceWriter, metrics: Metrics, max_wait: Duration) -> (Ledger, Writer) {
        let (jobs, queue) = mpsc::unbounded_channel();
        let health = LedgerHealth::default();
        let writer = Writer {
            issuance,
            metrics,
            queue,
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

    /// Records `entry`; returns once its row is committed, or [`NotRecorded::Failed`] at
    /// `deadline` if it is not committed by then (and then it never will be for this
    /// request: whatever the database does later, the token must not be handed out).
    pub async fn record(&self, entry: Entry, deadline: Instant) -> Result<(), NotRecorded> {
        let (done, committed) = oneshot::channel();
        self.jobs.send(Job { entry, deadline, done }).map_err(|_| NotRecorded::Failed)?;
        match tokio::time::timeout_at(deadline.into(), committed).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) | Err(_) => Err(NotRecorded::Failed),
        }
    }
}

/// The task that commits queued rows.
pub struct Writer {
    issuance: IssuanceWriter,
    metrics: Metrics,
    queue: mpsc::UnboundedReceiver<Job>,
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
            // Rows whose requests stopped waiting are not written: nobody would hand them out.
            let now = Instant::now();
            batch.retain(|job| job.awaited(now));
            if batch.is_empty() {
                continue;
            }
            self.last_commit = Some(now);
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
        // No request of the batch waits beyond its latest deadline.
        let give_up = batch.iter().map(|job| job.deadline).max().unwrap_or(started);
        let entries: Vec<&Entry> = batch.iter().map(|job| &job.entry).collect();
        let result = match tokio::time::timeout_at(give_up.into(), self.issuance.insert(&entries)).await {
            Ok(result) => result,
            Err(_) => {
                self.issuance.abandon();
                Err(anyhow::anyhow!(
                    "the commit did not finish within the request deadline (the database does not answer)"
                ))
            }
        };
        self.metrics.ledger_batch(size, started.elapsed(), result.is_ok());
        let outcome = result.as_ref().map(|_| ());
        self.outcome(&outcome, size);
        for Job { entry, done, .. } in batch {
            let answer = match result.as_ref().map(|refused| refused.why(&entry)) {
                Err(_) => Err(NotRecorded::Failed),
                Ok(Some(Why::ClientRevoked)) => Err(NotRecorded::ClientRevoked),
                Ok(Some(Why::KeyWithdrawn)) => Err(NotRecorded::KeyWithdrawn),
                Ok(None) => Ok(()),
            };
            let _ = done.send(answer);
        }
    }

    /// Whether writing works again, without waiting for a request to find out.
    async fn probe(&mut self) {
        let result = match tokio::time::timeout(PROBE_LIMIT, self.issuance.probe()).await {
            Ok(result) => result,
            Err(_) => {
                self.issuance.abandon();
                Err(anyhow::anyhow!("the probe write did not finish within {PROBE_LIMIT:?}"))
            }
        };
        self.outcome(&result.as_ref().map(|_| ()), 0);
    }

    /// Tracks outages: the log says once why commits fail and once that they work again.
    fn outcome(&mut self, result: &Result<(), &anyhow::Error>, rows: usize) {
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
             and /readyz reports not ready until it can; retried every 250 ms"
        );
        self.outage = Some(Outage { since: Instant::now(), failed_batches: batches, refused_rows: rows });
        self.health.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{commit_delay, wants_company, MAX_BATCH};

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
}
