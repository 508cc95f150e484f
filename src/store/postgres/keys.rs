//! The SQL of the `keys` table.

use anyhow::Context;
use sqlx::PgPool;

use super::{bump_generation, WriteTx};
use crate::keys::{KeyRecord, Private};
use crate::store::rows::KeyRow;
use crate::store::KeyChange;

const COLUMNS: &str = "kid, key_set, algorithm, public_jwk, sealed_private, master_key_id, token_label, \
     created_at, published_at, activates_at, deactivates_at, retired_at, revoked_at";

/// Every stored key, oldest first.
pub async fn all(pool: &PgPool) -> anyhow::Result<Vec<KeyRecord>> {
    let rows: Vec<KeyRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM keys ORDER BY created_at, kid"))
        .fetch_all(pool)
        .await
        .context("listing keys")?;
    rows.into_iter().map(KeyRecord::try_from).collect()
}

/// Whether any private key or secret is stored sealed (so a master key exists somewhere).
pub async fn holds_sealed(pool: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM keys WHERE sealed_private IS NOT NULL) OR EXISTS (SELECT 1 FROM secrets)",
    )
    .fetch_one(pool)
    .await
    .context("looking for sealed keys")
}

/// The key `kid`, if stored.
pub async fn one(pool: &PgPool, kid: &str) -> anyhow::Result<Option<KeyRecord>> {
    let row: Option<KeyRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM keys WHERE kid = $1"))
        .bind(kid)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("reading key {kid}"))?;
    row.map(KeyRecord::try_from).transpose()
}

/// The keys of one set, oldest first.
pub async fn of_set(executor: impl sqlx::PgExecutor<'_>, set: &str) -> anyhow::Result<Vec<KeyRecord>> {
    let rows: Vec<KeyRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM keys WHERE key_set = $1 ORDER BY created_at, kid"))
            .bind(set)
            .fetch_all(executor)
            .await
            .with_context(|| format!("listing the keys of set {set}"))?;
    rows.into_iter().map(KeyRecord::try_from).collect()
}

/// Writes new and changed records. The schema refuses overlapping signing periods row by
/// row, so the changed rows' periods are cleared first: each final row is then checked
/// against rows that are final or have no period, and the final state has no overlap.
pub(crate) async fn persist(tx: &mut sqlx::PgConnection, records: Vec<KeyRecord>) -> anyhow::Result<()> {
    for record in &records {
        sqlx::query("UPDATE keys SET activates_at = NULL, deactivates_at = NULL WHERE kid = $1")
            .bind(&record.kid)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("storing key {}", record.kid))?;
    }
    for record in &records {
        let (sealed_private, master_key_id, token_label) = match record.private() {
            Some(Private::Sealed { blob, master_key_id }) => (Some(blob), Some(master_key_id), None),
            Some(outside) => (None, None, outside.holder_label()),
            None => (None, None, None),
        };
        sqlx::query(&format!(
            "INSERT INTO keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (kid) DO UPDATE SET sealed_private = excluded.sealed_private, \
             master_key_id = excluded.master_key_id, token_label = excluded.token_label, \
             published_at = excluded.published_at, \
             activates_at = excluded.activates_at, deactivates_at = excluded.deactivates_at, \
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
        .bind(record.activates_at)
        .bind(record.deactivates_at)
        .bind(record.retired_at())
        .bind(record.revoked_at())
        .execute(&mut *tx)
        .await
        .with_context(|| format!("storing key {}", record.kid))?;
    }
    Ok(())
}

/// Runs `decide` on the keys of `set` inside a transaction that holds the set's advisory
/// lock (so no other process decides on them before the commit), writes what it returns,
/// bumps the change counter and commits. Returns whether it wrote (`false` on
/// [`KeyChange::Stale`]); a refusal (`Ok(Err(_))`) writes nothing.
pub(crate) async fn change<E>(
    pool: &PgPool,
    trail: &crate::store::events::Trail,
    set: &str,
    decide: impl FnOnce(&[KeyRecord]) -> Result<KeyChange, E>,
) -> anyhow::Result<Result<bool, E>> {
    let mut tx = WriteTx::begin(pool).await?;
    tx.lock(&format!("key-set:{set}")).await?;
    let keys = of_set(&mut *tx, set).await?;
    let (changed, handover) = match decide(&keys) {
        Ok(KeyChange::Write(changed, handover, mut events)) => {
            events.extend(handover.iter().map(crate::store::events::gate_event));
            super::events::append(&mut tx, trail, &events).await?;
            (changed, handover)
        }
        Ok(KeyChange::Stale) => return Ok(Ok(false)),
        Err(refused) => return Ok(Err(refused)),
    };
    persist(&mut tx, changed).await?;
    if let Some(handover) = handover {
        sqlx::query(
            "INSERT INTO gated_handovers (kid, key_set, at, confirmed, missing) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (kid) DO NOTHING",
        )
        .bind(&handover.kid)
        .bind(&handover.key_set)
        .bind(handover.at)
        .bind(handover.confirmed)
        .bind(serde_json::to_string(&handover.missing)?)
        .execute(&mut *tx)
        .await
        .context("recording a gated hand-over")?;
    }
    bump_generation(&mut tx).await?;
    tx.commit().await.context("committing key changes")?;
    Ok(Ok(true))
}
