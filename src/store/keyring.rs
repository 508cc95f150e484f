//! The `keyring` record and the sealed columns a re-seal rewrites. The dialects agree on
//! this SQL (sqlx's SQLite driver takes `$N` placeholders too), so one text serves both;
//! only the transactions differ (SQLite's write lock, PostgreSQL's table lock).

use anyhow::Context;

use super::rows::{KeyringRow, SealedItem, SealedKind};
use super::{postgres, sqlite, Store};

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
    /// is left under a term other than `only_if_resealed`. Running servers are told when
    /// the terms change.
    pub async fn replace_keyring(
        &self,
        row: &KeyringRow,
        expected: (&str, &str),
        only_if_resealed: Option<&str>,
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
    /// versions left).
    pub async fn compact_sealed(&self) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => {
                sqlite::checkpoint(s.pool()).await;
                sqlx::query("VACUUM").execute(s.pool()).await.context("vacuuming the database")?;
                sqlite::checkpoint(s.pool()).await;
            }
            Store::Postgres(s) => {
                sqlx::query("VACUUM FULL keys, secrets, keyring")
                    .execute(s.pool())
                    .await
                    .context("vacuuming the keys, secrets and keyring tables")?;
            }
        }
        Ok(())
    }
}
