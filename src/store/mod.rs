//! The store: what keyward keeps (keys, clients, secrets, the issuance ledger) and the
//! transactions that change it.
//!
//! [`Store`] is the boundary the rest of keyward uses, with two implementations: SQLite
//! (one host) and PostgreSQL (several replicas). An enum, not a trait: the key and client
//! changes take decision closures, and the set of backends is known. Each table's SQL is
//! in `sqlite/<table>.rs` and `postgres/<table>.rs`; rows map to records through [`rows`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::config::Database;
use crate::keys::gate::Holding;
use crate::keys::KeyRecord;
use postgres::PgStore;
use rows::{ClientRow, Entry, Filter, GatedHandover, Observations, PartnerFetches, SecretRow, UnmatchedFetches};
use sqlite::SqliteStore;

pub mod changes;
pub mod copy;
pub mod events;
pub mod issuance;
pub mod keyring;
pub mod postgres;
pub mod rows;
pub mod sqlite;

/// What a decision made under a key set's write lock asks to be written.
pub(crate) enum KeyChange {
    /// These new and changed records, a gated hand-over that has happened (if any), and
    /// the events that record the change.
    Write(Vec<KeyRecord>, Option<GatedHandover>, Vec<crate::audit::NewEvent>),
    /// The keys changed since the decision was first made: nothing is written.
    Stale,
}

/// Where keyward keeps its state.
#[derive(Clone)]
pub enum Store {
    /// A SQLite database file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database, shared by several keyward processes.
    Postgres(PgStore),
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending migrations.
    pub async fn open(path: impl AsRef<Path>) -> anyhow::Result<Store> {
        Ok(Store::Sqlite(SqliteStore::connect(path).await?))
    }

    /// Opens the store `database` names and applies pending migrations.
    pub async fn connect(database: &Database) -> anyhow::Result<Store> {
        match database {
            Database::Sqlite(path) => Store::open(path).await,
            Database::Postgres(url) => Ok(Store::Postgres(PgStore::connect(url).await?)),
        }
    }

    /// The change counter: bumped by every change to keys, clients or secrets.
    pub async fn generation(&self) -> anyhow::Result<i64> {
        match self {
            Store::Sqlite(s) => sqlite::generation(s.pool()).await,
            Store::Postgres(s) => postgres::generation(s.pool()).await,
        }
    }

    /// Writes a consistent copy of everything to `file`, created 0600 (on PostgreSQL with
    /// `pg_dump`, when it is installed).
    pub async fn backup(&self, file: &Path) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => sqlite::backup(s.pool(), file).await,
            Store::Postgres(s) => postgres::backup::run(s, file).await,
        }
    }

    /// Every stored key, oldest first.
    pub async fn keys(&self) -> anyhow::Result<Vec<KeyRecord>> {
        match self {
            Store::Sqlite(s) => sqlite::keys::all(s.pool()).await,
            Store::Postgres(s) => postgres::keys::all(s.pool()).await,
        }
    }

    /// The keys of `set`, oldest first.
    pub async fn keys_of_set(&self, set: &str) -> anyhow::Result<Vec<KeyRecord>> {
        match self {
            Store::Sqlite(s) => sqlite::keys::of_set(s.pool(), set).await,
            Store::Postgres(s) => postgres::keys::of_set(s.pool(), set).await,
        }
    }

    /// The key `kid`, if stored.
    pub async fn key(&self, kid: &str) -> anyhow::Result<Option<KeyRecord>> {
        match self {
            Store::Sqlite(s) => sqlite::keys::one(s.pool(), kid).await,
            Store::Postgres(s) => postgres::keys::one(s.pool(), kid).await,
        }
    }

    /// Whether any private key or secret is stored sealed (so a master key exists somewhere).
    pub async fn holds_sealed_material(&self) -> anyhow::Result<bool> {
        match self {
            Store::Sqlite(s) => sqlite::keys::holds_sealed(s.pool()).await,
            Store::Postgres(s) => postgres::keys::holds_sealed(s.pool()).await,
        }
    }

    /// Runs `decide` on the keys of `set` while holding the set's write lock, writes what it
    /// returns and commits. Returns whether it wrote (`false` on [`KeyChange::Stale`]); a
    /// refusal (`Ok(Err(_))`) writes nothing.
    pub(crate) async fn change_keys<E>(
        &self,
        set: &str,
        decide: impl FnOnce(&[KeyRecord]) -> Result<KeyChange, E>,
    ) -> anyhow::Result<Result<bool, E>> {
        match self {
            Store::Sqlite(s) => sqlite::keys::change(s.pool(), s.trail(), set, decide).await,
            Store::Postgres(s) => postgres::keys::change(s.pool(), s.trail(), set, decide).await,
        }
    }

    /// Every client, active and revoked, by name.
    pub async fn clients(&self) -> anyhow::Result<Vec<ClientRow>> {
        match self {
            Store::Sqlite(s) => sqlite::clients::all(s.pool()).await,
            Store::Postgres(s) => postgres::clients::all(s.pool()).await,
        }
    }

    /// The stored hashes a token with id `token_id` may match at `now` (current tokens of
    /// active clients, and previous ones in their grace).
    pub async fn client_token_hashes(&self, token_id: &str, now: i64) -> anyhow::Result<Vec<Vec<u8>>> {
        match self {
            Store::Sqlite(s) => sqlite::clients::token_hashes(s.pool(), token_id, now).await,
            Store::Postgres(s) => postgres::clients::token_hashes(s.pool(), token_id, now).await,
        }
    }

    /// The generation of the active client `name` as stored now (`None`: revoked or
    /// unknown): one look-up by primary key, to confirm a request against the latest change.
    pub async fn client_generation(&self, name: &str) -> anyhow::Result<Option<i64>> {
        // `$1` reads the same in both dialects.
        const SQL: &str = "SELECT generation FROM clients WHERE name = $1 AND revoked_at IS NULL";
        match self {
            Store::Sqlite(s) => sqlx::query_scalar(SQL).bind(name).fetch_optional(s.pool()).await,
            Store::Postgres(s) => sqlx::query_scalar(SQL).bind(name).fetch_optional(s.pool()).await,
        }
        .map_err(|err| anyhow::Error::new(err).context("looking up the client's generation"))
    }

    /// Runs `decide` on the row of client `name` (if any) under the write lock and writes
    /// the row it returns; a refusal (`Ok(Err(_))`) writes nothing.
    pub(crate) async fn change_client<T, E>(
        &self,
        name: &str,
        decide: impl FnOnce(Option<&ClientRow>) -> Result<(ClientRow, T), E>,
    ) -> anyhow::Result<Result<T, E>> {
        match self {
            Store::Sqlite(s) => sqlite::clients::change(s.pool(), s.trail(), name, decide).await,
            Store::Postgres(s) => postgres::clients::change(s.pool(), s.trail(), name, decide).await,
        }
    }

    /// Every stored secret, by profile.
    pub async fn secrets(&self) -> anyhow::Result<Vec<SecretRow>> {
        match self {
            Store::Sqlite(s) => sqlite::secrets::all(s.pool()).await,
            Store::Postgres(s) => postgres::secrets::all(s.pool()).await,
        }
    }

    /// Stores a profile's sealed secret, replacing an earlier one.
    pub async fn put_secret(&self, row: &SecretRow) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => sqlite::secrets::put(s.pool(), s.trail(), row).await,
            Store::Postgres(s) => postgres::secrets::put(s.pool(), s.trail(), row).await,
        }
    }

    /// The ledger rows matching `filter`, newest first, at most `limit`.
    pub async fn issuance(&self, filter: &Filter, limit: i64) -> anyhow::Result<Vec<Entry>> {
        match self {
            Store::Sqlite(s) => sqlite::issuance::query(s.pool(), filter, limit).await,
            Store::Postgres(s) => postgres::issuance::query(s.pool(), filter, limit).await,
        }
    }

    /// How many ledger rows match `filter`.
    pub async fn issuance_count(&self, filter: &Filter) -> anyhow::Result<i64> {
        match self {
            Store::Sqlite(s) => {
                issuance::count_query::<sqlx::Sqlite>(filter).build_query_scalar().fetch_one(s.pool()).await
            }
            Store::Postgres(s) => {
                issuance::count_query::<sqlx::Postgres>(filter).build_query_scalar().fetch_one(s.pool()).await
            }
        }
        .context("counting ledger rows")
    }

    /// Tokens issued per profile and minute since `since`, oldest first.
    pub async fn issuance_per_minute(&self, since: i64) -> anyhow::Result<Vec<issuance::MinuteCount>> {
        let (sql, probe) = (issuance::PER_MINUTE_SQL, issuance::PROBE_JTI);
        match self {
            Store::Sqlite(s) => sqlx::query_as(sql).bind(since).bind(probe).fetch_all(s.pool()).await,
            Store::Postgres(s) => sqlx::query_as(sql).bind(since).bind(probe).fetch_all(s.pool()).await,
        }
        .context("counting ledger rows per minute")
    }

    /// Deletes ledger rows issued before `before` (each writer's chain up to its first
    /// later row, so it stays whole from there), recording where each pruned chain now
    /// starts; returns how many. Signing goes on meanwhile: see
    /// [`Store::prune_issuance_step`].
    pub async fn prune_issuance(&self, before: i64) -> anyhow::Result<u64> {
        let mut rows = 0;
        loop {
            let step = self.prune_issuance_step(before, Duration::from_secs(1)).await?;
            rows += step.rows;
            if step.done {
                return Ok(rows);
            }
        }
    }

    /// Deletes ledger rows issued before `before`, oldest first, for at most about `budget`
    /// (whole days at a time on PostgreSQL, short batches on SQLite: a ledger commit never
    /// waits long for it).
    pub async fn prune_issuance_step(&self, before: i64, budget: Duration) -> anyhow::Result<issuance::Pruned> {
        match self {
            Store::Sqlite(s) => sqlite::issuance::prune_step(s.pool(), s.trail(), before, budget).await,
            Store::Postgres(s) => postgres::issuance::prune_step(s.pool(), s.trail(), before, budget).await,
        }
    }

    /// Makes the ledger ready for rows issued around `now`: on PostgreSQL, creates the day
    /// partitions from yesterday to a week ahead that are missing.
    pub async fn prepare_issuance(&self, now: i64) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => postgres::issuance::prepare(s.pool(), now).await,
        }
    }

    /// Every partner's holdings (the keys it fetched a JWKS holding).
    pub async fn partner_holdings(&self) -> anyhow::Result<Vec<Holding>> {
        match self {
            Store::Sqlite(s) => sqlite::partners::holdings(s.pool()).await,
            Store::Postgres(s) => postgres::partners::holdings(s.pool()).await,
        }
    }

    /// Writes a batch of JWKS fetch observations.
    pub async fn record_observations(&self, batch: &Observations) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => sqlite::partners::record(s.pool(), batch).await,
            Store::Postgres(s) => postgres::partners::record(s.pool(), batch).await,
        }
    }

    /// Partner fetches last seen at or after `since`, oldest first.
    pub async fn partner_fetches_since(&self, since: i64) -> anyhow::Result<Vec<PartnerFetches>> {
        match self {
            Store::Sqlite(s) => sqlite::partners::fetches_since(s.pool(), since).await,
            Store::Postgres(s) => postgres::partners::fetches_since(s.pool(), since).await,
        }
    }

    /// Fetches since `since` counted per partner and address: (partner, address, fetches).
    pub async fn partner_fetch_counts_since(&self, since: i64) -> anyhow::Result<Vec<(String, String, i64)>> {
        match self {
            Store::Sqlite(s) => sqlite::partners::fetch_counts_since(s.pool(), since).await,
            Store::Postgres(s) => postgres::partners::fetch_counts_since(s.pool(), since).await,
        }
    }

    /// Each partner's latest fetch.
    pub async fn partner_last_fetches(&self) -> anyhow::Result<Vec<(String, i64)>> {
        match self {
            Store::Sqlite(s) => sqlite::partners::last_fetches(s.pool()).await,
            Store::Postgres(s) => postgres::partners::last_fetches(s.pool()).await,
        }
    }

    /// Fetches that matched no partner, by user agent.
    pub async fn unmatched_fetches(&self) -> anyhow::Result<Vec<UnmatchedFetches>> {
        match self {
            Store::Sqlite(s) => sqlite::partners::unmatched(s.pool()).await,
            Store::Postgres(s) => postgres::partners::unmatched(s.pool()).await,
        }
    }

    /// Deletes partner fetch rows older than `before` (each partner's latest stays).
    pub async fn prune_partner_fetches(&self, before: i64) -> anyhow::Result<u64> {
        match self {
            Store::Sqlite(s) => sqlite::partners::prune(s.pool(), before).await,
            Store::Postgres(s) => postgres::partners::prune(s.pool(), before).await,
        }
    }

    /// The latest `limit` gated hand-overs, newest first.
    pub async fn gated_handovers(&self, limit: i64) -> anyhow::Result<Vec<GatedHandover>> {
        match self {
            Store::Sqlite(s) => sqlite::partners::handovers(s.pool(), limit).await,
            Store::Postgres(s) => postgres::partners::handovers(s.pool(), limit).await,
        }
    }
}
