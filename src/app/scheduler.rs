//! The background task that carries out due rotations and retirements.

use std::time::Duration;

use tokio::sync::watch;

use crate::app::metrics::Metrics;
use crate::app::snapshot::Shared;
use crate::audit::{Actor, Attribution};
use crate::config::Config;
use crate::keys::custody::Custody;
use crate::keys::gate::GateState;
use crate::keys::rotation;
use crate::ops;
use crate::ops::gates::Gates;
use crate::ops::wall_clock;
use crate::store::{events, Store};

/// The scheduler looks again at least this often, whatever the plan says.
pub const MAX_SLEEP_SECS: i64 = 60;

/// How often a sleeping scheduler looks whether the keys or observations changed.
const LOOK_FOR_CHANGES: Duration = Duration::from_secs(1);

/// Partner fetch rows are kept this long (reports look at the last 24 hours; each
/// partner's latest row stays whatever its age).
const PARTNER_FETCHES_KEPT_SECS: i64 = 7 * 86_400;

/// After a failure, try again this soon.
const RETRY_SECS: i64 = 5;

/// How long one pass may spend pruning the ledger before it takes its other steps again.
const PRUNE_BUDGET: Duration = Duration::from_secs(2);

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Whether any key changed.
    pub changed: bool,
    /// When the next step falls due (Unix seconds).
    pub wake_at: i64,
}

/// `store`, its changes attributed to this replica's scheduler.
pub fn scheduler_store(store: &Store) -> Store {
    let replica = store.trail().writer.to_string();
    store.attributed(Attribution::of(Actor::Scheduler { replica }))
}

/// Carries out every step due in every key set at the time `clock` tells (read again for
/// each decision: a pass may wait long for the database). Failures are logged, counted in
/// `metrics` when given, and retried soon.
pub async fn run_due(
    store: &Store,
    custody: &Custody,
    config: &Config,
    clock: &(dyn Fn() -> i64 + Sync),
    metrics: Option<&Metrics>,
) -> Pass {
    let mut pass = Pass { changed: false, wake_at: clock() + MAX_SLEEP_SECS };
    for set in &config.key_sets {
        let policy = config.policy(set);
        let done =
            ops::carry_out(
                store,
                custody,
                config,
                set,
                clock,
                |keys, now| Ok(rotation::plan(keys, &policy, now).steps),
            )
            .await;
        let now = clock();
        match done {
            Ok(steps) => {
                for step in &steps {
                    tracing::info!(key_set = %set.name, ?step, "key lifecycle step");
                }
                pass.changed |= !steps.is_empty();
                let keys = async {
                    anyhow::Ok(Gates::load(store, config).await?.apply(
                        &set.name,
                        &store.keys_of_set(&set.name).await?,
                        now,
                    ))
                };
                match keys.await {
                    Ok((keys, gate)) => {
                        if let Some(at) = rotation::plan(&keys, &policy, now).wake_at {
                            pass.wake_at = pass.wake_at.min(at);
                        }
                        // A gate that waits to hold moves the next key's start to the end of
                        // time, so the plan has no step then: look again when the wait ends.
                        if let Some(GateState::Waiting { deadline, .. }) = &gate {
                            pass.wake_at = pass.wake_at.min(*deadline);
                        }
                        // Loudly, at every pass while it lasts: someone must talk to the partner.
                        if let Some(GateState::Held { kid, missing, since }) = gate {
                            tracing::error!(
                                key_set = %set.name,
                                next_kid = %kid,
                                ?missing,
                                held_since = since,
                                "hand-over HELD: gating partners have not fetched the next key within gate_max_wait; \
                                 the current key keeps signing"
                            );
                            // Recorded once per next key, whichever pass, restart or replica sees it first.
                            let held = events::gate_held_event(&set.name, &kid, &missing, since);
                            if let Err(err) = store.record_first(&held).await {
                                tracing::warn!(key_set = %set.name, error = format!("{err:#}"), "recording a held gate failed");
                                pass.wake_at = pass.wake_at.min(now + RETRY_SECS);
                            }
                        }
                    }
                    Err(err) => {
                        tracing::error!(key_set = %set.name, error = format!("{err:#}"), "reading keys failed");
                        pass.wake_at = pass.wake_at.min(now + RETRY_SECS);
                    }
                }
            }
            Err(err) => {
                tracing::error!(key_set = %set.name, error = format!("{err:#}"), "rotation failed; retrying soon");
                if let Some(metrics) = metrics {
                    metrics.rotation_failed();
                }
                pass.wake_at = pass.wake_at.min(now + RETRY_SECS);
            }
        }
    }
    pass
}

/// Runs due steps whenever they fall due (and at least every minute) until `stop`.
/// Signing and JWKS serving go on from the snapshot meanwhile; it is swapped after changes.
pub async fn run_until_stopped(shared: &Shared, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let store = scheduler_store(shared.store());
    loop {
        let pass = run_due(&store, shared.custody(), shared.config(), &wall_clock, Some(shared.metrics())).await;
        let now = chrono::Utc::now();
        let mut wake_at = pass.wake_at;
        if let Err(err) = shared.store().prepare_issuance(now.timestamp()).await {
            tracing::warn!(error = format!("{err:#}"), "creating the ledger's next days failed");
            wake_at = wake_at.min(now.timestamp() + RETRY_SECS);
        }
        let keep_from = now.timestamp() - shared.config().server.ledger_retention.as_secs_i64();
        match store.prune_issuance_step(keep_from, PRUNE_BUDGET).await {
            Ok(pruned) => {
                if pruned.rows > 0 {
                    tracing::info!(
                        rows = pruned.rows,
                        done = pruned.done,
                        "pruned issuance ledger rows past ledger_retention"
                    );
                }
                // Months of expired rows (an old deployment, a shorter retention) go a step
                // at a time, the other steps still taken between them.
                if !pruned.done {
                    wake_at = now.timestamp();
                }
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "pruning the ledger failed"),
        }
        if let Err(err) = shared.store().prune_partner_fetches(now.timestamp() - PARTNER_FETCHES_KEPT_SECS).await {
            tracing::warn!(error = format!("{err:#}"), "pruning partner fetches failed");
        }
        if pass.changed {
            if let Err(err) = shared.reload().await {
                tracing::error!(error = format!("{err:#}"), "reloading after rotation failed");
            }
        }
        // Wake just after the due second begins: decisions use whole seconds, rounded down.
        // A change by another process (such as a partner's fetch releasing a gate) may
        // make something due sooner: look again then too.
        let wake_ms = wake_at.min(now.timestamp() + MAX_SLEEP_SECS) * 1_000 + 5;
        let seen = shared.snapshot().generation;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let wait = u64::try_from(wake_ms - chrono::Utc::now().timestamp_millis()).unwrap_or(0);
            if wait == 0 || shared.snapshot().generation != seen {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait).min(LOOK_FOR_CHANGES)) => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
