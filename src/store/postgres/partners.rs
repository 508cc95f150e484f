//! The SQL of the partner observation tables.

use anyhow::Context;
use sqlx::PgPool;

use super::{bump_generation, WriteTx};
use crate::keys::gate::Holding;
use crate::store::rows::{GatedHandover, Observations, PartnerFetches, UnmatchedFetches};

/// Every holding of every partner.
pub async fn holdings(pool: &PgPool) -> anyhow::Result<Vec<Holding>> {
    let rows: Vec<(String, String, String, i64, i64)> =
        sqlx::query_as("SELECT partner, key_set, kid, first_seen, last_seen FROM partner_holdings")
            .fetch_all(pool)
            .await
            .context("reading partner holdings")?;
    Ok(rows
        .into_iter()
        .map(|(partner, key_set, kid, first_seen, last_seen)| Holding { partner, key_set, kid, first_seen, last_seen })
        .collect())
}

/// Writes one batch in one transaction. A holding seen for the first time bumps the change
/// counter: it may release a gated hand-over, so every server reloads.
pub async fn record(pool: &PgPool, batch: &Observations) -> anyhow::Result<()> {
    let mut tx = WriteTx::begin(pool).await?;
    for f in &batch.fetches {
        sqlx::query(
            "INSERT INTO partner_fetches (partner, key_set, address, etag, count, first_at, last_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&f.partner)
        .bind(&f.key_set)
        .bind(&f.address)
        .bind(&f.etag)
        .bind(f.count)
        .bind(f.first_at)
        .bind(f.last_at)
        .execute(&mut *tx)
        .await
        .context("recording partner fetches")?;
    }
    let mut new_holdings = 0;
    for h in &batch.holdings {
        let inserted = sqlx::query(
            "INSERT INTO partner_holdings (partner, key_set, kid, first_seen, last_seen) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (partner, key_set, kid) DO NOTHING",
        )
        .bind(&h.partner)
        .bind(&h.key_set)
        .bind(&h.kid)
        .bind(h.first_seen)
        .bind(h.last_seen)
        .execute(&mut *tx)
        .await
        .context("recording partner holdings")?;
        if inserted.rows_affected() == 0 {
            sqlx::query(
                "UPDATE partner_holdings SET last_seen = GREATEST(last_seen, $1) WHERE partner = $2 AND key_set = $3 AND kid = $4",
            )
            .bind(h.last_seen)
            .bind(&h.partner)
            .bind(&h.key_set)
            .bind(&h.kid)
            .execute(&mut *tx)
            .await
            .context("recording partner holdings")?;
        }
        new_holdings += inserted.rows_affected();
    }
    for u in &batch.unmatched {
        sqlx::query(
            "INSERT INTO unmatched_fetches (user_agent, count, last_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_agent) DO UPDATE SET count = unmatched_fetches.count + excluded.count, \
             last_at = GREATEST(unmatched_fetches.last_at, excluded.last_at)",
        )
        .bind(&u.user_agent)
        .bind(u.count)
        .bind(u.last_at)
        .execute(&mut *tx)
        .await
        .context("recording unmatched fetches")?;
    }
    if new_holdings > 0 {
        bump_generation(&mut tx).await?;
    }
    tx.commit().await.context("committing partner observations")?;
    Ok(())
}

/// Fetch rows of the last `since` onwards, oldest first.
pub async fn fetches_since(pool: &PgPool, since: i64) -> anyhow::Result<Vec<PartnerFetches>> {
    sqlx::query_as(
        "SELECT partner, key_set, address, etag, count, first_at, last_at FROM partner_fetches \
         WHERE last_at >= $1 ORDER BY last_at",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .context("reading partner fetches")
}

/// Fetches since `since` per partner and address: (partner, address, fetches).
pub async fn fetch_counts_since(pool: &PgPool, since: i64) -> anyhow::Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "SELECT partner, address, CAST(sum(count) AS BIGINT) FROM partner_fetches WHERE last_at >= $1 \
         GROUP BY partner, address",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .context("reading partner fetches")
}

/// Each partner's latest fetch, ever.
pub async fn last_fetches(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT partner, max(last_at) FROM partner_fetches GROUP BY partner")
        .fetch_all(pool)
        .await
        .context("reading partner fetches")
}

/// Unmatched fetches by user agent, most first.
pub async fn unmatched(pool: &PgPool) -> anyhow::Result<Vec<UnmatchedFetches>> {
    sqlx::query_as("SELECT user_agent, count, last_at FROM unmatched_fetches ORDER BY count DESC, user_agent")
        .fetch_all(pool)
        .await
        .context("reading unmatched fetches")
}

/// Deletes fetch rows last seen before `before`, keeping each partner's latest; returns
/// how many.
pub async fn prune(pool: &PgPool, before: i64) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM partner_fetches WHERE last_at < $1 AND id NOT IN \
         (SELECT max(id) FROM partner_fetches GROUP BY partner)",
    )
    .bind(before)
    .execute(pool)
    .await
    .context("pruning partner fetches")?;
    Ok(done.rows_affected())
}

/// The latest gated hand-overs, newest first.
pub async fn handovers(pool: &PgPool, limit: i64) -> anyhow::Result<Vec<GatedHandover>> {
    let rows: Vec<(String, String, i64, bool, String)> = sqlx::query_as(
        "SELECT kid, key_set, at, confirmed, missing FROM gated_handovers ORDER BY at DESC, kid LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("reading gated hand-overs")?;
    rows.into_iter()
        .map(|(kid, key_set, at, confirmed, missing)| {
            let missing = serde_json::from_str(&missing).context("reading a gated hand-over")?;
            Ok(GatedHandover { kid, key_set, at, confirmed, missing })
        })
        .collect()
}
