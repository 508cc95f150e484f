//! The `keyring` record and the sealed columns a re-seal rewrites. The dialects agree on
//! this SQL (sqlx's SQLite driver takes `$N` placeholders too), so one text serves both;
//! only the transactions differ (SQLite's write lock, PostgreSQL's table lock).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::rows::{KeyringRow, SealedItem, SealedKind};
use super::{postgres, sqlite, Store};
use crate::audit::NewEvent;

const SELECT: &str = "SELECT root_key_id, root_source, sealed_terms, term_ids, reseal_state, created_at, rotated_at \
     FROM keyring WHERE id = 1";

const INSERT: &str = "INSERT INTO keyring (id, root_key_id, root_source, sealed_terms, term_ids, reseal_state, \
     created_at, rotated_at) VALUES (1, $1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";

/// Replaces the record only if it still is the one the change was decided on.
const REPLACE: &str = "UPDATE keyring SET root_key_id = $1, root_source = $2, sealed_terms = $3, term_ids = $4, \
     reseal_state = $5, rotated_at = $6 WHERE id = 1 AND root_key_id = $7 AND term_ids = $8";

const KEYS_NOT_UNDER: &str = "SELECT kid, key_set, algorithm, sealed_private, master_key_id FROM keys \
     WHERE sealed_private IS NOT NULL AND master_key_id <> $1 ORDER BY kid LIMIT $2";

const SECRETS_NOT_UNDER: &str =
    "SELECT profile, sealed_secret, master_key_id FROM secrets WHERE master_key_id <> $1 ORDER BY profile LIMIT $2";

/// Rewrites one sealed value unless it changed since it was read (then the next pass
/// finds it again).
const RESEAL_KEY: &str = "UPDATE keys SET sealed_private = $1, master_key_id = $2 \
     WHERE kid = $3 AND master_key_id = $4 AND sealed_private = $5";

const RESEAL_SECRET: &str = "UPDATE secrets SET sealed_secret = $1, master_key_id = $2 \
     WHERE profile = $3 AND master_key_id = $4 AND sealed_secret = $5";

const NOT_UNDER: &str = "SELECT (SELECT count(*) FROM keys WHERE sealed_private IS NOT NULL AND master_key_id <> $1) \
     + (SELECT count(*) FROM secrets WHERE master_key_id <> $1)";

const COUNTS: &str = "SELECT master_key_id, count(*) FROM (SELECT master_key_id FROM keys WHERE sealed_private IS NOT \
     NULL UNION ALL SELECT master_key_id FROM secrets) AS sealed GROUP BY master_key_id ORDER BY master_key_id";

/// How long a re-seal waits for transactions older than its last write (PostgreSQL) or
/// readers of the log (SQLite) before it gives up
/// (leaving the keyring marked, so that the next run clears the files).
const OLDER_SNAPSHOTS_WAIT: Duration = Duration::from_secs(120);

/// A transaction id taken after every re-sealed value was committed, as the 32-bit `xid`
/// the horizon columns below use (`pg_current_xact_id` counts epochs too).
const FENCE: &str = "SELECT (pg_current_xact_id()::text::numeric % 4294967296)::text";

/// What keeps row versions older than the fence `$1` alive: `VACUUM FULL` copies a dead
/// version into the rewritten table while a transaction of this database (any process: a
/// running server, a script), a prepared transaction or a replication slot may still see
/// it. `age` counts back from the same transaction for every row, so a greater age is an
/// older id.
const OLDER_THAN_FENCE: &str = "SELECT format('process %s (%s, %s)', pid, coalesce(nullif(application_name, ''),      backend_type), coalesce(state, '?')) FROM pg_stat_activity WHERE datid = (SELECT oid FROM pg_database WHERE      datname = current_database()) AND pid <> pg_backend_pid() AND (age(backend_xmin) > age($1::text::xid) OR      age(backend_xid) > age($1::text::xid)) \
     UNION ALL SELECT format('prepared transaction %s', gid) FROM pg_prepared_xacts WHERE database =      current_database() AND age(transaction) > age($1::text::xid) \
     UNION ALL SELECT format('replication slot %s', slot_name) FROM pg_replication_slots WHERE age(xmin) >      age($1::text::xid)";

/// Waits until nothing that began before now can still see a row version the re-seal
/// replaced, so that `VACUUM FULL` drops those versions instead of copying them (a server's
/// transaction open meanwhile, e.g. on a loaded machine, would otherwise keep bytes sealed
/// under an old term in the new files). Fails naming what still holds them after
/// [`OLDER_SNAPSHOTS_WAIT`].
async fn wait_for_older_snapshots(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let fence: String = sqlx::query_scalar(FENCE).fetch_one(pool).await.context("taking a transaction id")?;
    let started = Instant::now();
    let mut told = false;
    loop {
        let holders: Vec<String> = sqlx::query_scalar(OLDER_THAN_FENCE)
            .bind(&fence)
            .fetch_all(pool)
            .await
            .context("looking for transactions older than the re-seal")?;
        if holders.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= OLDER_SNAPSHOTS_WAIT {
            bail!(
                "{} still may see row versions the re-seal replaced after {:?}: the files cannot be cleared of them \
                 yet; end those transactions and run `keyward master-key reseal` again",
                holders.join(", "),
                OLDER_SNAPSHOTS_WAIT
            );
        }
        if !told {
            tracing::info!(holders = holders.join(", "), "waiting for older transactions before clearing the files");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type KeyColumns = (String, String, String, Vec<u8>, String);
type SecretColumns = (String, Vec<u8>, String);

/// A value re-sealed: the item as read, and its new blob and term key id.
pub struct Resealed {
    /// As read.
    pub item: SealedItem,
    /// The new sealed bytes.
    pub blob: Vec<u8>,
    /// The term key that sealed them.
    pub sealed_by: String,
}

fn items(keys: Vec<KeyColumns>, secrets: Vec<SecretColumns>) -> Vec<SealedItem> {
    let keys = keys.into_iter().map(|(name, key_set, algorithm, blob, sealed_by)| SealedItem {
        kind: SealedKind::Key,
        name,
        key_set,
        algorithm,
        blob,
        sealed_by,
    });
    let secrets = secrets.into_iter().map(|(name, blob, sealed_by)| SealedItem {
        kind: SealedKind::Secret,
        name,
        key_set: String::new(),
        algorithm: String::new(),
        blob,
        sealed_by,
    });
    keys.chain(secrets).collect()
}

macro_rules! bind_row {
    ($query:expr, $row:expr) => {
        $query
            .bind(&$row.root_key_id)
            .bind(&$row.root_source)
            .bind(&$row.sealed_terms)
            .bind(&$row.term_ids)
            .bind(&$row.reseal_state)
    };
}

impl Store {
    /// The keyring record, if the database has one yet.
    pub async fn keyring(&self) -> anyhow::Result<Option<KeyringRow>> {
        let row = match self {
            Store::Sqlite(s) => sqlx::query_as(SELECT).fetch_optional(s.pool()).await,
            Store::Postgres(s) => sqlx::query_as(SELECT).fetch_optional(s.pool()).await,
        };
        row.context("reading the keyring")
    }

    /// Stores the first keyring record; `false` if another process stored one first.
    pub async fn create_keyring(&self, row: &KeyringRow) -> anyhow::Result<bool> {
        let done = match self {
            Store::Sqlite(s) => bind_row!(sqlx::query(INSERT), row)
                .bind(row.created_at)
                .bind(row.rotated_at)
                .execute(s.pool())
                .await
                .map(|r| r.rows_affected()),
            Store::Postgres(s) => bind_row!(sqlx::query(INSERT), row)
                .bind(row.created_at)
                .bind(row.rotated_at)
                .execute(s.pool())
                .await
                .map(|r| r.rows_affected()),
        };
        Ok(done.context("storing the keyring")? == 1)
    }

    /// Replaces the keyring record `expected` (root key id, term ids) with `row`, unless
    /// it changed meanwhile (`false`). With `only_if_resealed`, only while nothing sealed
    /// is left under a term other than `only_if_resealed`. `events` are recorded with the
    /// change (none if it is not made). Running servers are told when the terms change.
    pub async fn replace_keyring(
        &self,
        row: &KeyringRow,
        expected: (&str, &str),
        only_if_resealed: Option<&str>,
        events: &[NewEvent],
    ) -> anyhow::Result<bool> {
        let terms_changed = row.term_ids != expected.1;
        match self {
            Store::Sqlite(s) => {
                let mut tx = sqlite::begin_write(s.pool()).await?;
                if let Some(active) = only_if_resealed {
                    let left: i64 = sqlx::query_scalar(NOT_UNDER).bind(active).fetch_one(&mut *tx).await?;
                    if left > 0 {
                        return Ok(false);
                    }
                }
                let done = bind_row!(sqlx::query(REPLACE), row)
                    .bind(row.rotated_at)
                    .bind(expected.0)
                    .bind(expected.1)
                    .execute(&mut *tx)
                    .await
                    .context("replacing the keyring")?
                    .rows_affected();
                if done == 1 && terms_changed {
                    sqlite::bump_generation(&mut tx).await?;
                }
                if done == 1 {
                    sqlite::events::append(&mut tx, s.trail(), events).await?;
                }
                tx.commit().await.context("committing the keyring")?;
                Ok(done == 1)
            }
            Store::Postgres(s) => {
                let mut tx = postgres::WriteTx::begin(s.pool()).await?;
                if let Some(active) = only_if_resealed {
                    // Waits for writes of keys and secrets in flight, and holds off new ones
                    // until the keyring no longer has the older terms.
                    sqlx::query("LOCK TABLE keys, secrets IN SHARE MODE").execute(&mut *tx).await?;
                    let left: i64 = sqlx::query_scalar(NOT_UNDER).bind(active).fetch_one(&mut *tx).await?;
                    if left > 0 {
                        return Ok(false);
                    }
                }
                let done = bind_row!(sqlx::query(REPLACE), row)
                    .bind(row.rotated_at)
                    .bind(expected.0)
                    .bind(expected.1)
                    .execute(&mut *tx)
                    .await
                    .context("replacing the keyring")?
                    .rows_affected();
                if done == 1 && terms_changed {
                    postgres::bump_generation(&mut tx).await?;
                }
                if done == 1 {
                    postgres::events::append(&mut tx, s.trail(), events).await?;
                }
                tx.commit().await.context("committing the keyring")?;
                Ok(done == 1)
            }
        }
    }

    /// Up to `limit` keys and up to `limit` secrets sealed under another term than `active`.
    pub async fn sealed_not_under(&self, active: &str, limit: i64) -> anyhow::Result<Vec<SealedItem>> {
        let (keys, secrets) = match self {
            Store::Sqlite(s) => (
                sqlx::query_as(KEYS_NOT_UNDER).bind(active).bind(limit).fetch_all(s.pool()).await,
                sqlx::query_as(SECRETS_NOT_UNDER).bind(active).bind(limit).fetch_all(s.pool()).await,
            ),
            Store::Postgres(s) => (
                sqlx::query_as(KEYS_NOT_UNDER).bind(active).bind(limit).fetch_all(s.pool()).await,
                sqlx::query_as(SECRETS_NOT_UNDER).bind(active).bind(limit).fetch_all(s.pool()).await,
            ),
        };
        Ok(items(keys.context("reading sealed keys")?, secrets.context("reading sealed secrets")?))
    }

    /// Writes re-sealed values in one transaction; returns how many were still as read.
    pub async fn write_resealed(&self, batch: &[Resealed]) -> anyhow::Result<u64> {
        let statement = |r: &Resealed| match r.item.kind {
            SealedKind::Key => RESEAL_KEY,
            SealedKind::Secret => RESEAL_SECRET,
        };
        let mut written = 0;
        match self {
            Store::Sqlite(s) => {
                let mut tx = sqlite::begin_write(s.pool()).await?;
                for r in batch {
                    written += sqlx::query(statement(r))
                        .bind(&r.blob)
                        .bind(&r.sealed_by)
                        .bind(&r.item.name)
                        .bind(&r.item.sealed_by)
                        .bind(&r.item.blob)
                        .execute(&mut *tx)
                        .await
                        .context("re-sealing")?
                        .rows_affected();
                }
                tx.commit().await.context("committing re-sealed rows")?;
            }
            Store::Postgres(s) => {
                let mut tx = postgres::WriteTx::begin(s.pool()).await?;
                for r in batch {
                    written += sqlx::query(statement(r))
                        .bind(&r.blob)
                        .bind(&r.sealed_by)
                        .bind(&r.item.name)
                        .bind(&r.item.sealed_by)
                        .bind(&r.item.blob)
                        .execute(&mut *tx)
                        .await
                        .context("re-sealing")?
                        .rows_affected();
                }
                tx.commit().await.context("committing re-sealed rows")?;
            }
        }
        Ok(written)
    }

    /// How many sealed values each term key id seals.
    pub async fn sealed_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let counts = match self {
            Store::Sqlite(s) => sqlx::query_as(COUNTS).fetch_all(s.pool()).await,
            Store::Postgres(s) => sqlx::query_as(COUNTS).fetch_all(s.pool()).await,
        };
        counts.context("counting sealed values")
    }

    /// Leaves no copy of overwritten values in the files: SQLite rebuilds the database and
    /// empties its log; PostgreSQL rewrites the tables that held them (no dead row
    /// versions left), once no transaction that could still see those versions is open.
    pub async fn compact_sealed(&self) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => {
                sqlite::checkpoint(s.pool()).await;
                sqlx::query("VACUUM").execute(s.pool()).await.context("vacuuming the database")?;
                // Until the log is moved in, the database file keeps the pages it replaces.
                if !sqlite::try_checkpoint(s.pool(), OLDER_SNAPSHOTS_WAIT).await? {
                    bail!(
                        "readers of the database held its log for {OLDER_SNAPSHOTS_WAIT:?}: the files cannot be \
                         cleared of the replaced values yet; run `keyward master-key reseal` again"
                    );
                }
            }
            Store::Postgres(s) => {
                wait_for_older_snapshots(s.pool()).await?;
                sqlx::query("VACUUM FULL keys, secrets, keyring")
                    .execute(s.pool())
                    .await
                    .context("vacuuming the keys, secrets and keyring tables")?;
            }
        }
        Ok(())
    }
}
