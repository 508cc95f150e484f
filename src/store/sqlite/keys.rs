//! The SQL of the `keys` table.

use anyhow::Context;
use sqlx::SqlitePool;

use super::{begin_write, bump_generation, checkpoint};
use crate::keys::{KeyRecord, KeyState, Private};
use crate::store::rows::KeyRow;

const COLUMNS: &str = "kid, key_set, algorithm, public_jwk, sealed_private, master_key_id, token_label, \
     created_at, published_at, activated_at, deactivated_at, retired_at, revoked_at";

/// Every stored key, oldest first.
pub async fn all(pool: &SqlitePool) -> anyhow::Result<Vec<KeyRecord>> {
    let rows: Vec<KeyRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM keys ORDER BY created_at, rowid"))
        .fetch_all(pool)
        .await
        .context("listing keys")?;
    rows.into_iter().map(KeyRecord::try_from).collect()
}

/// Whether any private key or secret is stored sealed (so a master key exists somewhere).
pub async fn holds_sealed(pool: &SqlitePool) -> anyhow::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM keys WHERE sealed_private IS NOT NULL UNION ALL SELECT 1 FROM secrets LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .context("looking for sealed keys")?;
    Ok(found.is_some())
}

/// The key `kid`, if stored.
pub async fn one(pool: &SqlitePool, kid: &str) -> anyhow::Result<Option<KeyRecord>> {
    let row: Option<KeyRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM keys WHERE kid = ?"))
        .bind(kid)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("reading key {kid}"))?;
    row.map(KeyRecord::try_from).transpose()
}

/// The keys of one set, oldest first.
pub async fn of_set(executor: impl sqlx::SqliteExecutor<'_>, set: &str) -> anyhow::Result<Vec<KeyRecord>> {
    let rows: Vec<KeyRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM keys WHERE key_set = ? ORDER BY created_at, rowid"))
            .bind(set)
            .fetch_all(executor)
            .await
            .with_context(|| format!("listing the keys of set {set}"))?;
    rows.into_iter().map(KeyRecord::try_from).collect()
}

/// Writes new and changed records; the one current key last, so that the old current key
/// has stopped signing before the new one starts (one current key per set, always).
async fn persist(tx: &mut sqlx::SqliteConnection, mut records: Vec<KeyRecord>) -> anyhow::Result<()> {
    records.sort_by_key(|r| r.state() == KeyState::Current);
    for record in &records {
        let (sealed_private, master_key_id, token_label) = match record.private() {
            Some(Private::Sealed { blob, master_key_id }) => (Some(blob), Some(master_key_id), None),
            Some(Private::Token { token }) => (None, None, Some(token)),
            None => (None, None, None),
        };
        sqlx::query(&format!(
            "INSERT INTO keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (kid) DO UPDATE SET sealed_private = excluded.sealed_private, \
             master_key_id = excluded.master_key_id, token_label = excluded.token_label, \
             published_at = excluded.published_at, \
             activated_at = excluded.activated_at, deactivated_at = excluded.deactivated_at, \
             retired_at = excluded.retired_at, revoked_at = excluded.revoked_at"
        ))
        .bind(&record.kid)
        .bind(&record.key_set)
        .bind(record.algorithm.as_str())
        .bind(serde_json::to_string(&record.public)?)
        .bind(sealed_private)
        .bind(master_key_id)
        .bind(token_label)
        .bind(record.created_at)
        .bind(record.published_at)
        .bind(record.activated_at)
        .bind(record.deactivated_at)
        .bind(record.retired_at())
        .bind(record.revoked_at())
        .execute(&mut *tx)
        .await
        .with_context(|| format!("storing key {}", record.kid))?;
    }
    Ok(())
}

/// What a decision made under the write lock asks to be written.
pub(crate) enum KeyChange {
    /// These new and changed records.
    Write(Vec<KeyRecord>),
    /// The keys changed since the decision was first made: nothing is written.
    Stale,
}

/// Runs `decide` on the keys of `set` inside a write transaction (`BEGIN IMMEDIATE`, so no
/// other writer can change them before the commit), writes what it returns, bumps the
/// change counter and commits. Returns whether it wrote (`false` on [`KeyChange::Stale`]);
/// a refusal (`Ok(Err(_))`) writes nothing.
/// A written record without private material (retired, revoked) checkpoints the log, so
/// that the deleted bytes leave no copy there.
pub(crate) async fn change<E>(
    pool: &SqlitePool,
    set: &str,
    decide: impl FnOnce(&[KeyRecord]) -> Result<KeyChange, E>,
) -> anyhow::Result<Result<bool, E>> {
    let mut tx = begin_write(pool).await?;
    let keys = of_set(&mut *tx, set).await?;
    let changed = match decide(&keys) {
        Ok(KeyChange::Write(changed)) => changed,
        Ok(KeyChange::Stale) => return Ok(Ok(false)),
        Err(refused) => return Ok(Err(refused)),
    };
    let deletes_secrets = changed.iter().any(|r| r.private().is_none());
    persist(&mut tx, changed).await?;
    bump_generation(&mut tx).await?;
    tx.commit().await.context("committing key changes")?;
    if deletes_secrets {
        checkpoint(pool).await;
    }
    Ok(Ok(true))
}
