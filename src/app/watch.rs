//! Watching the store for changes made by other processes (the CLI, other replicas), and
//! reloading the snapshot when keys, clients or secrets changed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::snapshot::Shared;
use crate::store::changes::Changes;

/// How long the watcher waits before reconnecting after the database stopped answering.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

impl Shared {
    /// Reloads whenever another process changes keys, clients or secrets, until `stop`
    /// turns true. While the database does not answer the server is not ready (it keeps
    /// serving the last snapshot), and the watcher reconnects by itself.
    pub async fn watch_until_stopped(&self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut changes: Option<Changes> = None;
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            let heard = async {
                let source = match &mut changes {
                    Some(source) => source,
                    slot => slot.insert(self.store().changes().await?),
                };
                source.next().await?;
                // A change, a reconnection or the safety poll: the generation says whether
                // keys, clients or secrets changed (ledger rows do not move it).
                self.store().generation().await.context("polling for changes")
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
            if let Err(err) = self.reload().await {
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
