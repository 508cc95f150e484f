//! Audit checkpoints: at `[server] audit_checkpoint_interval`, every chain's head is
//! recorded (signed by `audit_checkpoint_key_set`'s current key when one is named) as an
//! `audit.checkpoint` event and written to the log, so that a copy lives outside the
//! database.

use std::time::Duration;

use tokio::sync::watch;

use crate::app::scheduler::scheduler_store;
use crate::app::snapshot::Shared;
use crate::ops;

/// Records a checkpoint every interval until `stop`; a failed one is logged and tried
/// again at the next interval.
pub async fn run_until_stopped(shared: &Shared, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let store = scheduler_store(shared.store());
    let every = Duration::from_secs(shared.config().server.audit_checkpoint_interval.as_secs());
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return Ok(());
                }
                continue;
            }
        }
        let set = shared.config().server.audit_checkpoint_key_set.as_deref();
        let snapshot = shared.snapshot();
        let signer = set.and_then(|set| snapshot.key_sets.get(set)).and_then(|view| view.signer.as_deref());
        if set.is_some() && signer.is_none() {
            tracing::warn!(key_set = set, "the checkpoint key set has no signing key now: this checkpoint is unsigned");
        }
        let now = chrono::Utc::now().timestamp();
        let recorded = async {
            let event = ops::audit::checkpoint(&store, signer, now).await?;
            store.record(std::slice::from_ref(&event)).await?;
            anyhow::Ok(event)
        };
        match recorded.await {
            Ok(event) => {
                let checkpoint = serde_json::json!({ "action": "audit.checkpoint", "at": now, "after": event.after });
                tracing::info!(checkpoint = %checkpoint, "audit checkpoint");
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "recording an audit checkpoint failed"),
        }
    }
}
