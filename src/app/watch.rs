//! Watching the database for changes made by other processes (the CLI, a second server),
//! and reloading the snapshot when keys, clients or secrets changed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::snapshot::Shared;
use crate::store::sqlite;

/// How often a server looks for changes made by other processes (a `PRAGMA data_version`
/// on a connection of its own: no table is read unless something was committed).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(50);

impl Shared {
    /// Reloads whenever another process changes keys or clients, until `stop` turns true.
    pub async fn watch_until_stopped(&self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(WATCH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let path = self.config().database_path();
        let mut watcher: Option<(sqlx::SqliteConnection, i64)> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
            }
            self.custody().probe().await;
            // Only a commit by any connection (this server's included) moves data_version;
            // then the generation says whether keys or clients changed (ledger rows do not).
            let polled = async {
                let (mut conn, seen) = match watcher.take() {
                    Some(w) => w,
                    None => (sqlite::connect_watcher(&path).await?, i64::MIN),
                };
                let version = sqlite::data_version(&mut conn).await?;
                watcher = Some((conn, version));
                anyhow::Ok(version != seen)
            }
            .await;
            let committed = match polled {
                Ok(committed) => committed,
                Err(err) => {
                    self.database_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(error = format!("{err:#}"), "database unavailable");
                    continue;
                }
            };
            if !committed {
                continue;
            }
            let seen = self.snapshot().generation;
            let polled = self.store().generation().await.context("polling for changes");
            self.database_ok.store(polled.is_ok(), Ordering::Relaxed);
            match polled {
                Ok(generation) if generation != seen => {
                    if let Err(err) = self.reload().await {
                        // Keep serving the last good snapshot; try again at the next tick.
                        watcher = None;
                        tracing::error!(error = format!("{err:#}"), "reloading keys and clients failed");
                    } else {
                        tracing::info!(generation, "reloaded keys and clients after a change");
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    // Not ready until the generation reads again: ask at every tick.
                    watcher = None;
                    tracing::warn!(error = format!("{err:#}"), "database unavailable");
                }
            }
        }
    }
}
