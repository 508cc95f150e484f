//! What the listeners serve from: an in-memory snapshot of signers, JWKS documents and
//! clients, swapped whole when the database changes. Requests never query the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use sqlx::SqlitePool;
use tokio::sync::watch;

use crate::clients::{self, ClientDirectory};
use crate::config::Config;
use crate::db;
use crate::jwks::{self, JwksDocument};
use crate::keys::{PublicKey, SecretKey, SigningKey};
use crate::keystore::{self, KeyState};
use crate::ledger::LedgerHealth;
use crate::metrics::Metrics;
use crate::rotation::{self, Policy};
use crate::seal::MasterKey;
use crate::secrets;

fn generation_time() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How often a server looks for changes made by other processes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// One key set as served.
#[derive(Debug, Clone)]
pub struct KeySetView {
    /// The signing key; `None` only if the set has none (then the server is not ready).
    pub signer: Option<Arc<SigningKey>>,
    /// The signing key's public half, for partners that register it.
    pub public: Option<Arc<PublicKey>>,
    /// When the signing key started signing (Unix seconds).
    pub activated_at: Option<i64>,
    /// When the signing key is planned to hand over (Unix seconds).
    pub rotation_at: Option<i64>,
    /// The JWKS served at the set's paths.
    pub jwks: Arc<JwksDocument>,
}

/// Everything requests read, consistent as of one database generation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The change counter this snapshot reflects.
    pub generation: i64,
    /// By key set name.
    pub key_sets: HashMap<String, KeySetView>,
    /// Active clients.
    pub clients: ClientDirectory,
    /// Shared secrets by profile name.
    pub secrets: HashMap<String, Arc<SecretKey>>,
}

impl Snapshot {
    /// Whether every configured key set has a signing key.
    pub fn is_ready(&self) -> bool {
        self.key_sets.values().all(|set| set.signer.is_some())
    }
}

/// The shared, swappable snapshot plus what is needed to rebuild it.
pub struct Shared {
    current: RwLock<Arc<Snapshot>>,
    pool: SqlitePool,
    config: Arc<Config>,
    master: MasterKey,
    metrics: Metrics,
    database_ok: AtomicBool,
    ledger: LedgerHealth,
}

impl Shared {
    /// Loads the first snapshot.
    pub async fn load(
        pool: SqlitePool,
        config: Arc<Config>,
        master: MasterKey,
        metrics: Metrics,
        ledger: LedgerHealth,
    ) -> anyhow::Result<Self> {
        let shared = Shared {
            current: RwLock::new(Arc::default()),
            pool,
            config,
            master,
            metrics,
            database_ok: AtomicBool::new(true),
            ledger,
        };
        shared.reload().await?;
        Ok(shared)
    }

    /// The snapshot to serve this request from.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The database pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The master key.
    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Ready to serve: the database answered the last poll, the ledger commits and every
    /// key set can sign. Otherwise, why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.database_ok.load(Ordering::Relaxed) {
            Err("the database does not answer")
        } else if self.ledger.is_failing() {
            Err("the issuance ledger cannot commit (is the disk full?)")
        } else if !self.snapshot().is_ready() {
            Err("a key set has no signing key")
        } else {
            Ok(())
        }
    }

    /// Rebuilds the snapshot from the database and swaps it in.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let previous = self.snapshot();
        // Read the counter first: a change committed after it triggers another reload.
        let generation = db::generation(&self.pool).await?;
        let records = keystore::list(&self.pool).await?;
        keystore::check_master_key(&records, &self.master)?;
        let mut key_sets = HashMap::with_capacity(self.config.key_sets.len());
        for set in &self.config.key_sets {
            let published = jwks::published(&records, &set.name);
            let current = published.iter().find(|r| r.state() == KeyState::Current);
            let signer = match current {
                Some(record) => {
                    let reused = previous
                        .key_sets
                        .get(&set.name)
                        .and_then(|v| v.signer.clone())
                        .filter(|s| s.kid() == record.kid);
                    match reused {
                        Some(signer) => Some(signer),
                        None => Some(Arc::new(record.open_signing_key(&self.master)?)),
                    }
                }
                None => None,
            };
            let jwks = Arc::new(jwks::document(&published, set.jwks_max_age));
            let public = current.map(|r| Arc::new(r.public.clone()));
            let activated_at = current.and_then(|r| r.activated_at);
            let set_keys: Vec<_> = records.iter().filter(|r| r.key_set == set.name).cloned().collect();
            let rotation_at = rotation::timeline(&set_keys, &Policy::for_set(&self.config, set), generation_time())
                .into_iter()
                .find(|t| t.state == KeyState::Current)
                .and_then(|t| t.signing_until.map(|m| m.at));
            key_sets.insert(set.name.clone(), KeySetView { signer, public, activated_at, rotation_at, jwks });
        }
        let clients = clients::load_directory(&self.pool).await?;
        let secrets = secrets::load(&self.pool, &self.master, &self.config).await?;
        let next = Arc::new(Snapshot { generation, key_sets, clients, secrets });
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    /// Reloads whenever another process changes keys or clients, until `stop` turns true.
    pub async fn watch_until_stopped(&self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(WATCH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
            }
            let seen = self.snapshot().generation;
            let polled = db::generation(&self.pool).await.context("polling for changes");
            self.database_ok.store(polled.is_ok(), Ordering::Relaxed);
            match polled {
                Ok(generation) if generation != seen => {
                    if let Err(err) = self.reload().await {
                        // Keep serving the last good snapshot; try again next tick.
                        tracing::error!(error = format!("{err:#}"), "reloading keys and clients failed");
                    } else {
                        tracing::info!(generation, "reloaded keys and clients after a change");
                    }
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = format!("{err:#}"), "database unavailable"),
            }
        }
    }
}
