//! Planned hand-overs: at the instant a next key starts signing, the snapshot is rebuilt
//! from the keys it holds. No process writes then, and none needs the database then.

use std::time::Duration;

use tokio::sync::watch;

use super::snapshot::Shared;

/// Looks at the snapshot's next planned change at least this often, so that one brought
/// by a reload is not missed.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

impl Shared {
    /// Rebuilds the snapshot at each planned hand-over until `stop` turns true.
    pub async fn hand_over_until_stopped(&self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let wait = match self.snapshot().next_change_at {
                // Decisions use whole seconds: the change is due once its second begins.
                Some(at) if at.saturating_mul(1_000) <= now_ms => match self.refresh(now_ms.div_euclid(1_000)).await {
                    Ok(_) => {
                        tracing::info!(at, "planned hand-over: serving the keys as of now");
                        continue;
                    }
                    Err(err) => {
                        tracing::error!(error = format!("{err:#}"), "switching to the planned signer failed");
                        LOOK_AGAIN
                    }
                },
                Some(at) => {
                    Duration::from_millis(u64::try_from(at.saturating_mul(1_000) - now_ms).unwrap_or(0)).min(LOOK_AGAIN)
                }
                None => LOOK_AGAIN,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
