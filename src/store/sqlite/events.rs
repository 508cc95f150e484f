//! The `events` table's writes on SQLite: a write transaction (`BEGIN IMMEDIATE`) already
//! keeps every other writer out, so a writer's head read inside it stays its head.

use anyhow::Context;
use sqlx::SqliteConnection;

use crate::audit::chain::GENESIS;
use crate::audit::NewEvent;
use crate::store::events::{bind_event, now, Chained, Trail, HEAD_SQL, INSERT_SQL};

/// Appends `events` to `trail`'s chain inside the caller's write transaction.
pub(crate) async fn append(tx: &mut SqliteConnection, trail: &Trail, events: &[NewEvent]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let head: Option<(i64, String)> = sqlx::query_as(HEAD_SQL)
        .bind(&*trail.writer)
        .fetch_optional(&mut *tx)
        .await
        .context("reading the event chain's head")?;
    let mut head = head.unwrap_or_else(|| (0, GENESIS.to_owned()));
    let at = now();
    for event in events {
        let chained = Chained::new(trail, event, at, &head)?;
        bind_event!(sqlx::query(INSERT_SQL), chained.row).execute(&mut *tx).await.context("recording an event")?;
        head = chained.head();
    }
    Ok(())
}
