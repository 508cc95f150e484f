//! The SQL of the `clients` table.

use anyhow::Context;
use sqlx::SqlitePool;

use super::{begin_write, bump_generation};
use crate::store::rows::ClientRow;

const COLUMNS: &str = "name, token_id, token_hash, profiles, admin, created_at, revoked_at, rate_limit, rate_burst, \
     previous_token_id, previous_token_hash, previous_token_until, cert_sha256, cert_only, permissions, \
     generation, identity";

/// Every client, active and revoked, by name.
pub async fn all(pool: &SqlitePool) -> anyhow::Result<Vec<ClientRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM clients ORDER BY name"))
        .fetch_all(pool)
        .await
        .context("reading clients")
}

/// The stored hashes `token_id` may present now: an active client's current token, or
/// its previous one while in its grace. One indexed look-up.
pub async fn token_hashes(pool: &SqlitePool, token_id: &str, now: i64) -> anyhow::Result<Vec<Vec<u8>>> {
    sqlx::query_scalar(
        "SELECT token_hash FROM clients WHERE token_id = ?1 AND revoked_at IS NULL \
         UNION ALL SELECT previous_token_hash FROM clients \
         WHERE previous_token_id = ?1 AND previous_token_until > ?2 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .bind(now)
    .fetch_all(pool)
    .await
    .context("looking up a token")
}

/// Runs `decide` on the row of `name` (if any) inside a write transaction, so that no
/// other writer changes it meanwhile; writes the row it returns, bumps the change counter
/// and commits. A refusal writes nothing.
pub(crate) async fn change<T, E>(
    pool: &SqlitePool,
    trail: &crate::store::events::Trail,
    name: &str,
    decide: impl FnOnce(Option<&ClientRow>) -> Result<(ClientRow, T), E>,
) -> anyhow::Result<Result<T, E>> {
    let mut tx = begin_write(pool).await?;
    let existing: Option<ClientRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM clients WHERE name = ?"))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .context("looking up the client")?;
    let (row, decided) = match decide(existing.as_ref()) {
        Ok(decided) => decided,
        Err(refused) => return Ok(Err(refused)),
    };
    sqlx::query(&format!(
        "INSERT INTO clients ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET token_id = excluded.token_id, token_hash = excluded.token_hash, \
         profiles = excluded.profiles, admin = excluded.admin, created_at = excluded.created_at, \
         revoked_at = excluded.revoked_at, rate_limit = excluded.rate_limit, rate_burst = excluded.rate_burst, \
         previous_token_id = excluded.previous_token_id, previous_token_hash = excluded.previous_token_hash, \
         previous_token_until = excluded.previous_token_until, cert_sha256 = excluded.cert_sha256, \
         cert_only = excluded.cert_only, permissions = excluded.permissions, generation = excluded.generation, \
         identity = excluded.identity"
    ))
    .bind(&row.name)
    .bind(&row.token_id)
    .bind(&row.token_hash)
    .bind(&row.profiles)
    .bind(row.admin)
    .bind(row.created_at)
    .bind(row.revoked_at)
    .bind(row.rate_limit)
    .bind(row.rate_burst)
    .bind(&row.previous_token_id)
    .bind(&row.previous_token_hash)
    .bind(row.previous_token_until)
    .bind(&row.cert_sha256)
    .bind(row.cert_only)
    .bind(&row.permissions)
    .bind(row.generation)
    .bind(&row.identity)
    .execute(&mut *tx)
    .await
    .with_context(|| format!("storing client {name}"))?;
    let event = crate::store::events::client_event(existing.as_ref(), &row);
    super::events::append(&mut tx, trail, &[event]).await?;
    bump_generation(&mut tx).await?;
    tx.commit().await.with_context(|| format!("committing client {name}"))?;
    Ok(Ok(decided))
}
