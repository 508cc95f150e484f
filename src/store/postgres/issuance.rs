//! The SQL of the `issuance` table: the ledger writer's inserts, audit queries, pruning.

use anyhow::Context;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::WriteTx;
use crate::store::issuance::Refused;
use crate::store::rows::{Entry, EntryRow, Filter};

/// The `jti` of the row a probe writes and deletes again (real jtis are 22 characters).
const PROBE_JTI: &str = "-ledger-probe-";

/// Rows one INSERT carries at most (PostgreSQL allows 65,535 bound values; this binds 9,216).
const CHUNK: usize = 1_024;

/// Commits `entries` in one transaction, except those whose key may no longer sign
/// (revoked or retired) or whose client was revoked: those are returned, their rows not
/// written. The key and client rows are read `FOR SHARE`, so a revocation that committed
/// first is seen, and one that comes later waits for this commit: no row of a revoked key
/// or client commits after the revocation, whichever replica revoked it.
pub async fn insert(pool: &PgPool, entries: &[&Entry]) -> anyhow::Result<Refused> {
    let mut tx = WriteTx::begin(pool).await.context("beginning the ledger transaction")?;
    let mut refused = Refused::all_of(entries);
    for (sql, names) in [
        (
            "SELECT kid FROM keys WHERE kid = ANY($1) AND revoked_at IS NULL AND retired_at IS NULL FOR SHARE",
            &mut refused.kids,
        ),
        ("SELECT name FROM clients WHERE name = ANY($1) AND revoked_at IS NULL FOR SHARE", &mut refused.clients),
    ] {
        if names.is_empty() {
            continue;
        }
        let list: Vec<&String> = names.iter().collect();
        let allowed: Vec<String> =
            sqlx::query_scalar(sql).bind(&list).fetch_all(&mut *tx).await.context("checking keys and clients")?;
        for name in allowed {
            names.remove(&name);
        }
    }
    let kept: Vec<&Entry> = entries.iter().copied().filter(|e| !refused.covers(e)).collect();
    for chunk in kept.chunks(CHUNK) {
        insert_rows(&mut tx, chunk).await?;
    }
    tx.commit().await.context("committing ledger rows")?;
    Ok(refused)
}

/// A row written and deleted in one transaction: whether the ledger can commit now.
pub async fn probe(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = WriteTx::begin(pool).await.context("beginning the probe")?;
    sqlx::query(
        "INSERT INTO issuance (jti, profile, client, alg, iat, exp, claim_names) VALUES ($1, '', '', '', 0, 0, '[]')",
    )
    .bind(PROBE_JTI)
    .execute(&mut *tx)
    .await
    .context("writing the probe row")?;
    sqlx::query("DELETE FROM issuance WHERE jti = $1")
        .bind(PROBE_JTI)
        .execute(&mut *tx)
        .await
        .context("deleting the probe row")?;
    tx.commit().await.context("committing the probe")
}

async fn insert_rows(tx: &mut sqlx::PgConnection, entries: &[&Entry]) -> anyhow::Result<()> {
    let mut query: QueryBuilder<Postgres> =
        QueryBuilder::new("INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) ");
    query.push_values(entries, |mut row, e| {
        row.push_bind(&e.jti)
            .push_bind(&e.profile)
            .push_bind(&e.client)
            .push_bind(&e.sub)
            .push_bind(&e.kid)
            .push_bind(&e.alg)
            .push_bind(e.iat)
            .push_bind(e.exp)
            .push_bind(serde_json::to_string(&e.claim_names).unwrap_or_else(|_| "[]".to_owned()));
    });
    query.build().execute(&mut *tx).await.context("writing ledger rows")?;
    Ok(())
}

/// The rows matching `filter`, newest first, at most `limit`.
pub async fn query(pool: &PgPool, filter: &Filter, limit: i64) -> anyhow::Result<Vec<Entry>> {
    let mut query = crate::store::issuance::audit_query::<Postgres>(filter, limit);
    let rows: Vec<EntryRow> = query.build_query_as().fetch_all(pool).await.context("querying the ledger")?;
    rows.into_iter().map(Entry::try_from).collect()
}

/// Up to `limit` rows issued after (`iat`, `jti`), in that order.
pub async fn page(pool: &PgPool, iat: i64, jti: &str, limit: i64) -> anyhow::Result<Vec<Entry>> {
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT jti, profile, client, sub, kid, alg, iat, exp, claim_names FROM issuance \
         WHERE (iat, jti) > ($1, $2) ORDER BY iat, jti LIMIT $3",
    )
    .bind(iat)
    .bind(jti)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("reading the ledger")?;
    rows.into_iter().map(Entry::try_from).collect()
}

/// Writes `entries` as they are, in one transaction.
pub async fn copy(pool: &PgPool, entries: &[&Entry]) -> anyhow::Result<()> {
    let mut tx = WriteTx::begin(pool).await?;
    for chunk in entries.chunks(CHUNK) {
        insert_rows(&mut tx, chunk).await?;
    }
    tx.commit().await.context("committing copied ledger rows")
}

/// Deletes rows issued before `before`; returns how many.
pub async fn prune(pool: &PgPool, before: i64) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM issuance WHERE iat < $1")
        .bind(before)
        .execute(pool)
        .await
        .context("pruning the ledger")?;
    Ok(done.rows_affected())
}
