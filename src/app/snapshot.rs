//! What the listeners serve from: an in-memory snapshot of signers, JWKS documents and
//! clients, swapped whole when the database changes. Requests never query the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::web::Bytes;

use crate::app::ledger::LedgerHealth;
use crate::app::metrics::Metrics;
use crate::app::observe::Observer;
use crate::config::Config;
use crate::keys::custody::Custody;
use crate::keys::jwks::{self, JwksDocument};
use crate::keys::{self, timeline, KeyRecord, KeyState, PublicKey, SecretKey, SigningKey};
use crate::master_key::{Keyring, Roots};
use crate::ops::clients;
use crate::ops::gates::Gates;
use crate::ops::secrets;
use crate::policy::client::{self, ClientDirectory};
use crate::store::Store;

fn generation_time() -> i64 {
    chrono::Utc::now().timestamp()
}

/// At most this many store look-ups per second for bearer tokens the snapshot does not know,
/// so that a flood of bad tokens cannot become a flood of queries.
const RECHECKS_PER_SECOND: u32 = 20;

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
    /// Whether a next key is published (normally always: one is made at each hand-over).
    pub next_key_published: bool,
    /// The JWKS served at the set's paths.
    pub jwks: Arc<ServedJwks>,
}

/// A set's JWKS as served, made once per key change: the header values too, since cloning
/// one is a reference count, where building one per request would copy and check it.
#[derive(Debug, Clone)]
pub struct ServedJwks {
    /// `{"keys":[...]}`.
    pub body: Bytes,
    /// Strong entity tag, quoted.
    pub etag: String,
    /// The kids it holds, for the partners seen fetching it.
    pub kids: Arc<[String]>,
    /// The `ETag` and `Cache-Control` header values.
    pub headers: (HeaderValue, HeaderValue),
}

impl From<JwksDocument> for ServedJwks {
    fn from(doc: JwksDocument) -> Self {
        // Quotes, base64url, digits and letters: always a valid header value.
        let header = |text: &str| HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""));
        let headers = (header(&doc.etag), header(&doc.cache_control));
        ServedJwks { body: Bytes::from(doc.body), etag: doc.etag, kids: Arc::default(), headers }
    }
}

/// Everything requests read, consistent as of one database generation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The change counter this snapshot reflects.
    pub generation: i64,
    /// The stored keys it was built from: a planned hand-over rebuilds it from them.
    records: Arc<Vec<KeyRecord>>,
    /// The hand-over gates and the partners' holdings, as of the same reload.
    gates: Gates,
    /// When a planned hand-over next changes what is served (Unix seconds), if ever.
    pub next_change_at: Option<i64>,
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
    store: Store,
    config: Arc<Config>,
    custody: Custody,
    /// Open the keyring again when a re-seal changes its terms.
    roots: Roots,
    /// Why the last attempt to load changed terms failed, while it fails.
    keyring_problem: std::sync::Mutex<Option<String>>,
    /// Why the master key's source did not answer its last keep-alive, while it does not.
    pub(super) source_problem: std::sync::Mutex<Option<String>>,
    metrics: Metrics,
    observer: Observer,
    pub(super) database_ok: AtomicBool,
    ledger: LedgerHealth,
    /// Held during a re-check or a catch-up: concurrent ones wait for it (single flight),
    /// and it counts the look-ups of unknown tokens in the current second.
    recheck: tokio::sync::Mutex<RecheckBudget>,
    /// Reloads run concurrently (watcher, scheduler, re-checks): each takes a ticket before
    /// it reads the store, and swaps only if no later-started one swapped first.
    reload_tickets: AtomicU64,
    /// The ticket of the reload the current snapshot came from (changed under the write lock).
    installed_ticket: AtomicU64,
}

/// Look-ups spent in the current one-second window.
#[derive(Default)]
struct RecheckBudget {
    window: Option<std::time::Instant>,
    spent: u32,
}

impl RecheckBudget {
    fn take(&mut self, now: std::time::Instant) -> bool {
        if self.window.is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.spent = 0;
        }
        self.spent += 1;
        self.spent <= RECHECKS_PER_SECOND
    }
}

/// What a re-check of an unknown bearer token found.
pub enum Recheck {
    /// The store knows it: here is a snapshot that does too.
    Known(Arc<Snapshot>),
    /// The store does not know it (or it is revoked, or not a keyward token).
    Unknown,
    /// Not looked up: too many unknown tokens this second.
    NotChecked,
}

impl Shared {
    /// Loads the first snapshot.
    pub async fn load(
        store: Store,
        config: Arc<Config>,
        custody: Custody,
        roots: Roots,
        metrics: Metrics,
        ledger: LedgerHealth,
    ) -> anyhow::Result<Self> {
        let observer = Observer::new(&config);
        let shared = Shared {
            current: RwLock::new(Arc::default()),
            store,
            config,
            custody,
            roots,
            keyring_problem: std::sync::Mutex::new(None),
            source_problem: std::sync::Mutex::new(None),
            metrics,
            observer,
            database_ok: AtomicBool::new(true),
            ledger,
            recheck: tokio::sync::Mutex::default(),
            reload_tickets: AtomicU64::new(0),
            installed_ticket: AtomicU64::new(0),
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

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The keyring that seals private keys and secrets.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.custody.keyring()
    }

    /// The master key the server runs with (and the one it replaces, during a rotation).
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// Loads the keyring again if a re-seal changed its terms. When the master key's source
    /// does not answer, what is open keeps serving and readiness says why.
    async fn refresh_keyring(&self) {
        let held = self.keyring();
        let problem = match crate::ops::master_key::changed(&self.store, &self.roots, &held).await {
            Ok(Some(keyring)) => {
                tracing::info!(terms = keyring.ids(), "loaded the keyring's new terms");
                self.custody.replace_keyring(keyring);
                None
            }
            Ok(None) => None,
            Err(err) => {
                let message = format!("{err:#}");
                tracing::warn!(error = message, "cannot load the keyring's new terms; serving with what is open");
                Some(message)
            }
        };
        match self.keyring_problem.lock() {
            Ok(mut guard) => *guard = problem,
            Err(poisoned) => *poisoned.into_inner() = problem,
        }
    }

    /// Who holds the private keys.
    pub fn custody(&self) -> &Custody {
        &self.custody
    }

    /// The recorder of JWKS fetches.
    pub fn observer(&self) -> &Observer {
        &self.observer
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
            Err("the issuance ledger cannot commit (is the disk full or the database unreachable?)")
        } else if let Some(problem) = self.custody.unavailable() {
            Err(problem)
        } else if self.source_problem.lock().map_or(true, |p| p.is_some()) {
            Err("the master key's source (Vault) does not answer: signing goes on with the keys already open")
        } else if self.keyring_problem.lock().map_or(true, |p| p.is_some()) {
            Err("the keyring's new terms cannot be opened with the configured master key (its source does not answer, or the server lacks the new key: see the log)")
        } else if !self.snapshot().is_ready() {
            Err("a key set has no signing key")
        } else {
            Ok(())
        }
    }

    /// Rebuilds the snapshot from the database and swaps it in.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let ticket = self.reload_tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let previous = self.snapshot();
        // Read the counter first: a change committed after it triggers another reload.
        let generation = self.store.generation().await?;
        self.refresh_keyring().await;
        let records = Arc::new(self.store.keys().await?);
        let keyring = self.keyring();
        keyring.check_ids(records.iter().filter_map(|r| r.sealed().map(|(_, id)| id)))?;
        let gates = Gates::load(&self.store, &self.config).await?;
        let clients = clients::load_directory(&self.store).await?;
        let secrets = secrets::load(&self.store, &keyring, &self.config).await?;
        let now = generation_time();
        let (key_sets, next_change_at) = self.key_set_views(&records, &gates, &previous, now).await?;
        let next = Arc::new(Snapshot { generation, records, gates, next_change_at, key_sets, clients, secrets });
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // One that read the store before another must not swap its older view over the
        // newer one (the generation cannot tell: a restored database may count lower).
        if self.installed_ticket.load(Ordering::SeqCst) < ticket {
            *guard = next;
            self.installed_ticket.store(ticket, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Rebuilds what the snapshot serves at `now` from the keys it holds, without reading
    /// the store: a planned hand-over happens in every process at its instant, whatever
    /// the database does then. Returns whether it swapped (not when a reload came first).
    pub async fn refresh(&self, now: i64) -> anyhow::Result<bool> {
        let previous = self.snapshot();
        let (key_sets, next_change_at) = self.key_set_views(&previous.records, &previous.gates, &previous, now).await?;
        let next = Arc::new(Snapshot { key_sets, next_change_at, ..(*previous).clone() });
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let unchanged = Arc::ptr_eq(&guard, &previous);
        if unchanged {
            *guard = next;
        }
        Ok(unchanged)
    }

    /// What each key set serves at `now` with its gate applied, and when that next changes
    /// by itself; signers already open in `previous` are reused.
    async fn key_set_views(
        &self,
        records: &[KeyRecord],
        gates: &Gates,
        previous: &Snapshot,
        now: i64,
    ) -> anyhow::Result<(HashMap<String, KeySetView>, Option<i64>)> {
        let mut key_sets = HashMap::with_capacity(self.config.key_sets.len());
        let mut next_change_at: Option<i64> = None;
        for set in &self.config.key_sets {
            let set_keys: Vec<KeyRecord> = records.iter().filter(|r| r.key_set == set.name).cloned().collect();
            let (set_keys, _) = gates.apply(&set.name, &set_keys, now);
            if let Some(at) = keys::next_change_after(&set_keys, now) {
                next_change_at = Some(next_change_at.map_or(at, |n| n.min(at)));
            }
            let published = jwks::published(&set_keys, &set.name, now);
            let current = published.iter().find(|r| r.state_at(now) == KeyState::Current);
            let next_key_published = published.iter().any(|r| r.state_at(now) == KeyState::Next);
            let signer = match current {
                Some(record) => {
                    let reused = previous
                        .key_sets
                        .get(&set.name)
                        .and_then(|v| v.signer.clone())
                        .filter(|s| s.kid() == record.kid);
                    match reused {
                        Some(signer) => Some(signer),
                        None => Some(Arc::new(self.custody.signer(record).await?)),
                    }
                }
                None => None,
            };
            let kids = published.iter().map(|r| r.kid.clone()).collect();
            let jwks = Arc::new(ServedJwks {
                kids,
                ..ServedJwks::from(jwks::document(&published, set.jwks_max_age.as_secs()))
            });
            let public = current.map(|r| Arc::new(r.public.clone()));
            let activated_at = current.and_then(|r| r.activates_at);
            let rotation_at = timeline::timeline(&set_keys, &self.config.policy(set), now)
                .into_iter()
                .find(|t| t.state == KeyState::Current)
                .and_then(|t| t.signing_until.map(|m| m.at))
                // A gate holding past the planned instant has no instant to give.
                .filter(|at| *at < i64::MAX);
            key_sets.insert(
                set.name.clone(),
                KeySetView { signer, public, activated_at, rotation_at, next_key_published, jwks },
            );
        }
        Ok((key_sets, next_change_at))
    }

    /// The ledger refused a row because its key may no longer sign: the snapshot of
    /// `generation` is behind the store. Reloads once for all the requests that find out
    /// together, and returns the snapshot to sign with now.
    pub async fn catch_up(&self, generation: i64) -> anyhow::Result<Arc<Snapshot>> {
        let _one_at_a_time = self.recheck.lock().await;
        if self.snapshot().generation == generation {
            self.reload().await?;
        }
        Ok(self.snapshot())
    }

    /// A bearer token the snapshot does not know may have been created a moment ago by the
    /// CLI: look its hash up in the store and, if it is there, reload before answering.
    /// Bounded: one look-up at a time, at most [`RECHECKS_PER_SECOND`].
    pub async fn recheck(&self, token: &str) -> Recheck {
        let Some(token_id) = client::token_id(token) else {
            return Recheck::Unknown;
        };
        let mut budget = self.recheck.lock().await;
        // A re-check that ran while this one waited may have loaded the client already.
        let snapshot = self.snapshot();
        if snapshot.clients.authenticate(token).is_some() {
            return Recheck::Known(snapshot);
        }
        if !budget.take(std::time::Instant::now()) {
            return Recheck::NotChecked;
        }
        match clients::is_active_token(&self.store, token_id, token, generation_time()).await {
            Ok(true) => {}
            Ok(false) => return Recheck::Unknown,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "looking up an unknown bearer token failed");
                return Recheck::NotChecked;
            }
        }
        if let Err(err) = self.reload().await {
            tracing::error!(error = format!("{err:#}"), "reloading after finding a new client failed");
            return Recheck::NotChecked;
        }
        Recheck::Known(self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_token_lookups_are_bounded_per_second() {
        let start = std::time::Instant::now();
        let mut budget = RecheckBudget::default();
        let granted = (0..RECHECKS_PER_SECOND * 5).filter(|_| budget.take(start)).count();
        assert_eq!(granted, RECHECKS_PER_SECOND as usize);
        assert!(!budget.take(start + Duration::from_millis(999)));
        assert!(budget.take(start + Duration::from_secs(1)), "a new second grants look-ups again");
    }
}
