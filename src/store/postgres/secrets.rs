//! The SQL of the `secrets` table.

use anyhow::Context;
use sqlx::PgPool;

use super::{bump_generation, WriteTx};
use crate::store::rows::SecretRow;

/// Stores `row`, replacing the profile's earlier secret (its creation time stays).
pub async fn put(pool: &PgPool, trail: &crate::store::events::Trail, row: &SecretRow) -> anyhow::Result<()> {
    let mut tx = WriteTx::begin(pool).await?;
    let before: Option<(i64, i64)> = sqlx::query_as("SELECT created_at, updated_at FROM secrets WHERE profile = $1")
        .bind(&row.profile)
        .fetch_optional(&mut *tx)
        .await
        .context("reading the secret's dates")?;
    super::events::append(&mut tx, trail, &[crate::store::events::secret_event(before, row)]).await?;
    sqlx::query(
        "INSERT INTO secrets (profile, sealed_secret, master_key_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (profile) DO UPDATE SET sealed_secret = excluded.sealed_secret, \
         master_key_id = excluded.master_key_id, updated_at = excluded.updated_at",
    )
    .bind(&row.profile)
    .bind(&row.sealed_secret)
    .bind(&row.master_key_id)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(&mut *tx)
    .await
    .context("storing the secret")?;
    bump_generation(&mut tx).await?;
    tx.commit().await.context("committing the secret")
}

/// Every stored secret, by profile.
pub async fn all(pool: &PgPool) -> anyhow::Result<Vec<SecretRow>> {
    sqlx::query_as("SELECT profile, sealed_secret, master_key_id, created_at, updated_at FROM secrets ORDER BY profile")
        .fetch_all(pool)
        .await
        .context("reading secrets")
}
