//! The SQL of the `keys` table.

use anyhow::Context;
use sqlx::SqlitePool;

use super::{begin_write, bump_generation, checkpoint};
use crate::keys::{KeyRecord, Private};
use crate::store::rows::KeyRow;
use crate::store::KeyChange;

const COLUMNS: &str = "kid, key_set, algorithm, public_jwk, sealed_private, master_key_id, token_label, \
     created_at, published_at, activates_at, deactivates_at, retired_at, revoked_at";

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

/// Writes new and changed records. The schema refuses overlapping signing periods row by
/// row, so the changed rows' periods are cleared first: each final row is then checked
/// against rows that are final or have no period, and the final state has no overlap.
async fn persist(tx: &mut sqlx::SqliteConnection, records: Vec<KeyRecord>) -> anyhow::Result<()> {
    for record in &records {
        sqlx::query("UPDATE keys SET activates_at = NULL, deactivates_at = NULL WHERE kid = ?")
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
            "INSERT INTO keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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

/// Runs `decide` on the keys of `set` inside a write transaction (`BEGIN IMMEDIATE`, so no
/// other writer can change them before the commit), writes what it returns, bumps the
/// change counter and commits. Returns whether it wrote (`false` on [`KeyChange::Stale`]);
/// a refusal (`Ok(Err(_))`) writes nothing.
/// A written record without private material (retired, revoked) checkpoints the log, so
/// that the deleted bytes leave no copy there.
pub(crate) async fn change<E>(
    pool: &SqlitePool,
    trail: &crate::store::events::Trail,
    set: &str,
    decide: impl FnOnce(&[KeyRecord]) -> Result<KeyChange, E>,
) -> anyhow::Result<Result<bool, E>> {
    let mut tx = begin_write(pool).await?;
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
    let deletes_secrets = changed.iter().any(|r| r.private().is_none());
    persist(&mut tx, changed).await?;
    if let Some(handover) = handover {
        sqlx::query(
            "INSERT INTO gated_handovers (kid, key_set, at, confirmed, missing) VALUES (?, ?, ?, ?, ?) \
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
    if deletes_secrets {
        checkpoint(pool).await;
    }
    Ok(Ok(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::rotation::{self, Step};
    use crate::keys::{generate, Algorithm, Status};

    fn key(kid: &str, from: Option<i64>, until: Option<i64>) -> KeyRecord {
        let generated = generate(Algorithm::Es256, 2048).unwrap();
        KeyRecord {
            kid: kid.into(),
            key_set: "s".into(),
            algorithm: Algorithm::Es256,
            public: generated.public,
            created_at: 0,
            published_at: Some(0),
            activates_at: from,
            deactivates_at: until,
            status: Status::Live { private: Private::Sealed { blob: vec![0; 40], master_key_id: "m".into() } },
        }
    }

    async fn write(pool: &SqlitePool, records: Vec<KeyRecord>) -> anyhow::Result<()> {
        let mut tx = begin_write(pool).await?;
        persist(&mut tx, records).await?;
        tx.commit().await
    }

    #[tokio::test]
    async fn the_schema_refuses_two_keys_of_a_set_signing_at_one_instant() {
        let dir = tempfile::tempdir().unwrap();
        let pool = super::super::connect(dir.path().join("k.db")).await.unwrap();
        write(&pool, vec![key("a", Some(0), Some(10)), key("b", Some(10), None)]).await.unwrap();
        // Raw rows, as another writer might send them: each overlap is refused.
        let insert = |kid: &'static str, from: i64, until: Option<i64>| {
            sqlx::query(
                "INSERT INTO keys (kid, key_set, algorithm, public_jwk, created_at, activates_at, deactivates_at) \
                 VALUES (?, 's', 'ES256', '{}', 0, ?, ?)",
            )
            .bind(kid)
            .bind(from)
            .bind(until)
            .execute(&pool)
        };
        assert!(insert("c", 15, None).await.is_err(), "two open-ended signers");
        assert!(insert("c", 5, Some(6)).await.is_err(), "inside another's period");
        let update = sqlx::query("UPDATE keys SET deactivates_at = 12 WHERE kid = 'a'").execute(&pool).await;
        assert!(update.is_err(), "a period stretched over its successor's");
        // An empty period (replaced within its first second) and another set are fine.
        insert("d", 10, Some(10)).await.unwrap();
        sqlx::query(
            "INSERT INTO keys (kid, key_set, algorithm, public_jwk, created_at, activates_at) \
             VALUES ('e', 't', 'ES256', '{}', 0, 3)",
        )
        .execute(&pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_hand_over_moved_later_is_stored_although_each_row_alone_would_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let pool = super::super::connect(dir.path().join("k.db")).await.unwrap();
        write(&pool, vec![key("a", Some(0), Some(10)), key("b", Some(10), None)]).await.unwrap();
        let keys = of_set(&pool, "s").await.unwrap();
        let later = Step::Schedule { kid: "b".into(), activates_at: 20 };
        let changed = rotation::apply(&keys, &[later], vec![], 5).unwrap();
        write(&pool, changed).await.unwrap();
        let keys = of_set(&pool, "s").await.unwrap();
        let periods: Vec<_> = keys.iter().map(|k| (k.kid.as_str(), k.activates_at, k.deactivates_at)).collect();
        assert_eq!(periods, [("a", Some(0), Some(20)), ("b", Some(20), None)]);
    }
}
