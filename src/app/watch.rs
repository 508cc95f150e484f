//! Watching the store for changes made by other processes (the CLI, other replicas), and
//! reloading the snapshot when keys, clients or secrets changed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::snapshot::Shared;
use crate::store::changes::Changes;

/// How long the watcher waits before reconnecting after the database stopped answering:
/// with the reload that follows, this bounds how late a replica serves what changed while
/// the database was away, once it is back (see the README's "Running several replicas").
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// How often the master key's source is kept alive (it asks Vault only when a renewal is due).
const SOURCE_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long connecting the watcher, reading the change counter, or a reload after a change
/// may take before the database counts as not answering (a stopped or cut-off server keeps
/// connections open and silent: only a limit tells). Readiness goes to 503 within this plus
/// the safety poll of a database hanging.
const LOOK_LIMIT: Duration = Duration::from_secs(1);

/// How long a reload after a change may take (it reads every table of the snapshot).
const RELOAD_LIMIT: Duration = Duration::from_secs(2);

/// How often the key custody is asked whether it answers (it throttles its own checks).
const CUSTODY_PROBE_INTERVAL: Duration = Duration::from_millis(50);

impl Shared {
    /// Reloads whenever another process changes keys, clients or secrets, and checks the
    /// key custody (a PKCS#11 token that failed is reconnected), until `stop` turns true.
    pub async fn watch_until_stopped(&self, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let (watched, (), ()) = tokio::join!(
            self.watch_store_until_stopped(stop.clone()),
            self.probe_custody_until_stopped(stop.clone()),
            self.keep_master_key_source_until_stopped(stop)
        );
        watched
    }

    /// Keeps the master key's source logged in (a Vault token renewed before it expires);
    /// while it does not answer, the server is not ready but signs on with what is open.
    async fn keep_master_key_source_until_stopped(&self, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(SOURCE_KEEP_ALIVE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let problem = self.roots().keep_alive().await.err().map(|err| format!("{err:#}"));
                    let mut current = match self.source_problem.lock() {
                        Ok(guard) => guard,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    match (&*current, &problem) {
                        (None, Some(why)) => tracing::error!(error = why, "the master key's source does not answer; signing goes on with the keys already open"),
                        (Some(_), None) => tracing::warn!("the master key's source answers again"),
                        _ => {}
                    }
                    *current = problem;
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    async fn probe_custody_until_stopped(&self, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(CUSTODY_PROBE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.custody().probe().await,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// Reloads whenever another process changes keys, clients or secrets. While the
    /// database does not answer the server is not ready (it keeps serving the last
    /// snapshot), and the watcher reconnects by itself.
    async fn watch_store_until_stopped(&self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut changes: Option<Changes> = None;
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            let heard = async {
                let source = match &mut changes {
                    Some(source) => source,
                    slot => slot.insert(within(LOOK_LIMIT, self.store().changes(), "connecting the watcher").await?),
                };
                source.next().await?;
                // A change, a reconnection or the safety poll: the generation says whether
                // keys, clients or secrets changed (ledger rows do not move it).
                within(LOOK_LIMIT, source.generation(self.store()), "polling for changes").await
            };
            let polled = tokio::select! {
                polled = heard => polled,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let generation = match polled {
                Ok(generation) => generation,
                Err(err) => {
                    changes = None;
                    self.database_ok.store(false, Ordering::Relaxed);
                    if down_since.is_none() {
                        down_since = Some(std::time::Instant::now());
                        tracing::warn!(error = format!("{err:#}"), "database unavailable: serving the last snapshot");
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            };
            if let Some(since) = down_since.take() {
                tracing::warn!(seconds = since.elapsed().as_secs(), "database available again");
            }
            self.database_ok.store(true, Ordering::Relaxed);
            if generation == self.snapshot().generation {
                continue;
            }
            if let Err(err) = within(RELOAD_LIMIT, self.reload(), "reloading").await {
                // Keep serving the last good snapshot; a fresh source looks again at once.
                tracing::error!(error = format!("{err:#}"), "reloading keys and clients failed");
                changes = None;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            } else {
                tracing::info!(generation, "reloaded keys and clients after a change");
            }
        }
    }
}

/// `work`, or an error once `limit` passed without its outcome.
async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
    what: &'static str,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(outcome) => outcome.context(what),
        Err(_) => Err(anyhow::anyhow!("{what}: the database did not answer within {limit:?}")),
    }
}
