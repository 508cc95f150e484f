//! The `events` table: who changed what, written in the change's own transaction by the
//! store functions that make changes, chained per writer (see [`crate::audit::chain`]).
//! One SQL text serves both stores (`$n` placeholders read the same in both); only the
//! per-writer lock differs (`sqlite/events.rs`, `postgres/events.rs`).

use std::sync::Arc;

use anyhow::Context;
use serde_json::{json, Value};

use super::rows::ClientRow;
use super::{postgres, sqlite, Store};
use crate::audit::chain::{self, Link};
use crate::audit::{Action, Actor, Attribution, Event, EventFilter, NewEvent};
use crate::keys::rotation::Step;
use crate::keys::{KeyRecord, Status};

/// Who a store handle's changes are attributed to, and the chain its events extend.
#[derive(Debug, Clone)]
pub struct Trail {
    /// This handle's writer id: one chain per process (and per handle opened).
    pub writer: Arc<str>,
    /// Who acts through this handle.
    pub by: Arc<Attribution>,
}

impl Trail {
    /// A new writer, acting as `serve` on it until attributed otherwise.
    pub fn new_writer() -> Trail {
        let writer: Arc<str> = crate::audit::new_writer_id().into();
        let by = Arc::new(Attribution::of(Actor::Server { replica: writer.to_string() }));
        Trail { writer, by }
    }
}

impl Store {
    /// This store, its changes attributed to `by` (a cheap copy sharing the connections
    /// and the writer's chain).
    pub fn attributed(&self, by: Attribution) -> Store {
        let mut store = self.clone();
        let trail = match &mut store {
            Store::Sqlite(s) => s.trail_mut(),
            Store::Postgres(s) => s.trail_mut(),
        };
        trail.by = Arc::new(by);
        store
    }

    /// Who this handle's changes are attributed to, and its writer.
    pub fn trail(&self) -> &Trail {
        match self {
            Store::Sqlite(s) => s.trail(),
            Store::Postgres(s) => s.trail(),
        }
    }

    /// Records `events` in a transaction of their own (for what changes nothing else in
    /// the store: a server start, a checkpoint).
    pub async fn record(&self, events: &[NewEvent]) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => {
                let mut tx = sqlite::begin_write(s.pool()).await?;
                sqlite::events::append(&mut tx, s.trail(), events).await?;
                tx.commit().await.context("committing events")
            }
            Store::Postgres(s) => {
                let mut tx = postgres::WriteTx::begin(s.pool()).await?;
                postgres::events::append(&mut tx, s.trail(), events).await?;
                tx.commit().await.context("committing events")
            }
        }
    }

    /// Records `event` unless an event of its action on its object is stored already, by
    /// any writer (for what is recorded once however often it is seen: a gate held);
    /// whether it did. Decided under a lock on that action and object, so two replicas
    /// seeing it at once record it once.
    pub async fn record_first(&self, event: &NewEvent) -> anyhow::Result<bool> {
        // Mostly it is: a read answers without taking the write lock.
        let found: Option<i64> = match self {
            Store::Sqlite(s) => {
                sqlx::query_scalar(RECORDED_SQL)
                    .bind(&event.object)
                    .bind(event.action.as_str())
                    .fetch_optional(s.pool())
                    .await
            }
            Store::Postgres(s) => {
                sqlx::query_scalar(RECORDED_SQL)
                    .bind(&event.object)
                    .bind(event.action.as_str())
                    .fetch_optional(s.pool())
                    .await
            }
        }
        .context("looking for an earlier event")?;
        if found.is_some() {
            return Ok(false);
        }
        match self {
            Store::Sqlite(s) => {
                // `BEGIN IMMEDIATE`: no other writer between the look and the write.
                let mut tx = sqlite::begin_write(s.pool()).await?;
                let found: Option<i64> = sqlx::query_scalar(RECORDED_SQL)
                    .bind(&event.object)
                    .bind(event.action.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .context("looking for an earlier event")?;
                if found.is_some() {
                    return Ok(false);
                }
                sqlite::events::append(&mut tx, s.trail(), std::slice::from_ref(event)).await?;
                tx.commit().await.context("committing an event")?;
            }
            Store::Postgres(s) => {
                let mut tx = postgres::WriteTx::begin(s.pool()).await?;
                tx.lock(&format!("event-once:{}:{}", event.action.as_str(), event.object)).await?;
                let found: Option<i64> = sqlx::query_scalar(RECORDED_SQL)
                    .bind(&event.object)
                    .bind(event.action.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .context("looking for an earlier event")?;
                if found.is_some() {
                    return Ok(false);
                }
                postgres::events::append(&mut tx, s.trail(), std::slice::from_ref(event)).await?;
                tx.commit().await.context("committing an event")?;
            }
        }
        Ok(true)
    }

    /// Events matching `filter` after `cursor` (oldest first), at most `limit`.
    pub async fn events(
        &self,
        filter: &EventFilter,
        cursor: Option<&Cursor>,
        limit: i64,
    ) -> anyhow::Result<Vec<Event>> {
        let rows: Vec<EventRow> = match self {
            Store::Sqlite(s) => event_query(filter, cursor, limit, false).build_query_as().fetch_all(s.pool()).await,
            Store::Postgres(s) => event_query(filter, cursor, limit, false).build_query_as().fetch_all(s.pool()).await,
        }
        .context("reading events")?;
        rows.into_iter().map(Event::try_from).collect()
    }

    /// The newest `limit` events matching `filter`, newest first (for the console).
    pub async fn latest_events(&self, filter: &EventFilter, limit: i64) -> anyhow::Result<Vec<Event>> {
        let rows: Vec<EventRow> = match self {
            Store::Sqlite(s) => event_query(filter, None, limit, true).build_query_as().fetch_all(s.pool()).await,
            Store::Postgres(s) => event_query(filter, None, limit, true).build_query_as().fetch_all(s.pool()).await,
        }
        .context("reading events")?;
        rows.into_iter().map(Event::try_from).collect()
    }

    /// Writes every event of `from` as it is (writer, seq and hashes kept), in one
    /// transaction: a copy of history, for `migrate-store`.
    pub async fn copy_events_from(&self, from: &Store) -> anyhow::Result<()> {
        let sql = format!("SELECT {COLUMNS} FROM events ORDER BY writer, seq");
        let rows: Vec<EventRow> = match from {
            Store::Sqlite(s) => sqlx::query_as(&sql).fetch_all(s.pool()).await,
            Store::Postgres(s) => sqlx::query_as(&sql).fetch_all(s.pool()).await,
        }
        .context("reading events")?;
        match self {
            Store::Sqlite(s) => {
                let mut tx = sqlite::begin_write(s.pool()).await?;
                for row in &rows {
                    bind_event!(sqlx::query(INSERT_SQL), row).execute(&mut *tx).await.context("copying an event")?;
                }
                tx.commit().await.context("committing copied events")
            }
            Store::Postgres(s) => {
                let mut tx = postgres::WriteTx::begin(s.pool()).await?;
                for row in &rows {
                    bind_event!(sqlx::query(INSERT_SQL), row).execute(&mut *tx).await.context("copying an event")?;
                }
                tx.commit().await.context("committing copied events")
            }
        }
    }

    /// Each writer's newest event and newest ledger row: (writer, seq, hash).
    pub async fn chain_heads(&self) -> anyhow::Result<(Vec<(String, i64, String)>, Vec<(String, i64, String)>)> {
        const EVENTS: &str = "SELECT writer, seq, hash FROM events \
             WHERE (writer, seq) IN (SELECT writer, MAX(seq) FROM events GROUP BY writer)";
        const LEDGER: &str = "SELECT writer, seq, hash FROM issuance WHERE writer IS NOT NULL \
             AND (writer, seq) IN (SELECT writer, MAX(seq) FROM issuance WHERE writer IS NOT NULL GROUP BY writer)";
        let read = async |sql: &'static str| match self {
            Store::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await,
            Store::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await,
        };
        Ok((read(EVENTS).await.context("reading heads")?, read(LEDGER).await.context("reading heads")?))
    }

    /// Every event as chain links, by writer in seq order, with the events themselves.
    pub async fn event_chains(&self) -> anyhow::Result<Vec<(Link, Event)>> {
        let sql = format!("SELECT {COLUMNS} FROM events ORDER BY writer, seq");
        let rows: Vec<EventRow> = match self {
            Store::Sqlite(s) => sqlx::query_as(&sql).fetch_all(s.pool()).await,
            Store::Postgres(s) => sqlx::query_as(&sql).fetch_all(s.pool()).await,
        }
        .context("reading events")?;
        rows.into_iter()
            .map(|row| {
                let link = row.link();
                Ok((link, Event::try_from(row)?))
            })
            .collect()
    }
}

/// An event of an action (`$2`) on an object (`$1`), if one is stored.
const RECORDED_SQL: &str = "SELECT seq FROM events WHERE object = $1 AND action = $2 LIMIT 1";

/// Where a page of events ended: the next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Its time.
    pub at: i64,
    /// Its writer.
    pub writer: String,
    /// Its seq.
    pub seq: i64,
}

impl Cursor {
    /// After `event`.
    pub fn after(event: &Event) -> Cursor {
        Cursor { at: event.at, writer: event.writer.clone(), seq: event.seq }
    }

    /// As a page token: `at.seq.writer`.
    pub fn token(&self) -> String {
        format!("{}.{}.{}", self.at, self.seq, self.writer)
    }

    /// From a page token.
    pub fn parse(token: &str) -> Option<Cursor> {
        let mut parts = token.splitn(3, '.');
        let at = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let writer = parts.next()?.to_owned();
        Some(Cursor { at, writer, seq })
    }
}

const COLUMNS: &str = "writer, seq, at, actor, actor_name, action, object, before, after, reason, prev_hash, hash";

/// The events query for `filter`, oldest first, after `cursor`, at most `limit`.
fn event_query<'a, DB: sqlx::Database>(
    filter: &EventFilter,
    cursor: Option<&Cursor>,
    limit: i64,
    newest_first: bool,
) -> sqlx::QueryBuilder<'a, DB>
where
    String: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM events WHERE 1 = 1"));
    for (column, value, wildcard) in [
        ("actor_name", &filter.actor, None),
        ("object", &filter.object, Some(':')),
        ("action", &filter.action, Some('.')),
    ] {
        match (value, wildcard) {
            // `key.` or `client:` names every action or object of that kind.
            // (PostgreSQL's substr takes an integer length, not the bigint an i64 binds as.)
            (Some(prefix), Some(end)) if prefix.ends_with(end) => {
                query.push(format!(" AND substr({column}, 1, CAST(")).push_bind(prefix.len() as i64);
                query.push(" AS INTEGER)) = ").push_bind(prefix.clone());
            }
            (Some(value), _) => {
                query.push(format!(" AND {column} = ")).push_bind(value.clone());
            }
            (None, _) => {}
        }
    }
    if let Some(since) = filter.since {
        query.push(" AND at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND at < ").push_bind(until);
    }
    if let Some(cursor) = cursor {
        query.push(" AND (at > ").push_bind(cursor.at);
        query.push(" OR (at = ").push_bind(cursor.at);
        query.push(" AND (writer > ").push_bind(cursor.writer.clone());
        query.push(" OR (writer = ").push_bind(cursor.writer.clone());
        query.push(" AND seq > ").push_bind(cursor.seq);
        query.push("))))");
    }
    let order = if newest_first { " ORDER BY at DESC, writer DESC, seq DESC" } else { " ORDER BY at, writer, seq" };
    query.push(order).push(" LIMIT ").push_bind(limit);
    query
}

/// An `events` row as both stores keep it.
#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub(crate) writer: String,
    pub(crate) seq: i64,
    pub(crate) at: i64,
    pub(crate) actor: String,
    pub(crate) actor_name: String,
    pub(crate) action: String,
    pub(crate) object: String,
    pub(crate) before: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
}

impl EventRow {
    /// The fields its hash covers, as stored, with its seq as `seq`.
    fn hash_at(&self, seq: i64) -> String {
        event_hash(
            &self.prev_hash,
            &self.writer,
            seq,
            self.at,
            [&self.actor, &self.actor_name, &self.action, &self.object],
            [&self.before, &self.after, &self.reason],
        )
    }

    fn link(&self) -> Link {
        let computed = self.hash_at(self.seq);
        let elsewhere = if computed == self.hash { Vec::new() } else { chain::nearby(self.seq, |s| self.hash_at(s)) };
        Link {
            seq: self.seq,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
            computed,
            elsewhere,
            label: format!("{} {} at {}", self.action, self.object, self.at),
        }
    }
}

fn event_hash(
    prev: &str,
    writer: &str,
    seq: i64,
    at: i64,
    texts: [&String; 4],
    optional: [&Option<String>; 3],
) -> String {
    let (seq, at) = (seq.to_string(), at.to_string());
    let [actor, actor_name, action, object] = texts;
    let [before, after, reason] = optional;
    chain::hash(
        prev,
        &[
            Some(writer),
            Some(&seq),
            Some(&at),
            Some(actor),
            Some(actor_name),
            Some(action),
            Some(object),
            before.as_deref(),
            after.as_deref(),
            reason.as_deref(),
        ],
    )
}

impl TryFrom<EventRow> for Event {
    type Error = anyhow::Error;

    fn try_from(row: EventRow) -> anyhow::Result<Event> {
        let what = || format!("event {} of writer {}", row.seq, row.writer);
        let parse = |text: &Option<String>| -> anyhow::Result<Option<Value>> {
            text.as_deref().map(serde_json::from_str).transpose().with_context(what)
        };
        Ok(Event {
            at: row.at,
            actor: serde_json::from_str(&row.actor).with_context(what)?,
            before: parse(&row.before)?,
            after: parse(&row.after)?,
            action: row.action,
            object: row.object,
            reason: row.reason,
            writer: row.writer,
            seq: row.seq,
            hash: row.hash,
        })
    }
}

/// A new row, chained after `(head_seq, head_hash)`, ready to insert.
pub(crate) struct Chained {
    pub(crate) row: EventRow,
}

impl Chained {
    /// `event` by `trail`'s actor at `at`, after the writer's head.
    pub(crate) fn new(trail: &Trail, event: &NewEvent, at: i64, head: &(i64, String)) -> anyhow::Result<Chained> {
        let text = |value: &Option<Value>| value.as_ref().map(serde_json::to_string).transpose();
        let mut row = EventRow {
            writer: trail.writer.to_string(),
            seq: head.0 + 1,
            at,
            actor: serde_json::to_string(&trail.by.actor)?,
            actor_name: trail.by.actor.name(),
            action: event.action.as_str().to_owned(),
            object: event.object.clone(),
            before: text(&event.before)?,
            after: text(&event.after)?,
            reason: trail.by.reason.clone(),
            prev_hash: head.1.clone(),
            hash: String::new(),
        };
        row.hash = row.hash_at(row.seq);
        Ok(Chained { row })
    }

    /// This row's (seq, hash): the head the next one links to.
    pub(crate) fn head(&self) -> (i64, String) {
        (self.row.seq, self.row.hash.clone())
    }
}

/// The insert of one event row.
pub(crate) const INSERT_SQL: &str =
    "INSERT INTO events (writer, seq, at, actor, actor_name, action, object, before, after, reason, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// A writer's head: its newest (seq, hash), or (0, genesis).
pub(crate) const HEAD_SQL: &str = "SELECT seq, hash FROM events WHERE writer = $1 ORDER BY seq DESC LIMIT 1";

/// Binds a chained row to [`INSERT_SQL`].
macro_rules! bind_event {
    ($query:expr, $row:expr) => {
        $query
            .bind(&$row.writer)
            .bind($row.seq)
            .bind($row.at)
            .bind(&$row.actor)
            .bind(&$row.actor_name)
            .bind(&$row.action)
            .bind(&$row.object)
            .bind(&$row.before)
            .bind(&$row.after)
            .bind(&$row.reason)
            .bind(&$row.prev_hash)
            .bind(&$row.hash)
    };
}
pub(crate) use bind_event;

/// The wall clock, for event times.
pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What a key's record says, for before/after: never private bytes.
fn key_view(key: &KeyRecord) -> Value {
    let status = match &key.status {
        Status::Live { .. } => "live",
        Status::Retired { .. } => "retired",
        Status::Revoked { .. } => "revoked",
    };
    json!({
        "key_set": key.key_set,
        "algorithm": key.algorithm.as_str(),
        "status": status,
        "published_at": key.published_at,
        "activates_at": key.activates_at,
        "deactivates_at": key.deactivates_at,
    })
}

/// The events of key changes: per step, the key it touched before and after.
/// `imported`: the kid of a key an operator brought in (its creating step is an import).
/// `publish_ahead`: the set's, in seconds (a key signing sooner after it was published
/// than that was forced: verifiers that cached the JWKS before it appeared reject it).
pub(crate) fn key_events(
    before: &[KeyRecord],
    after: &[KeyRecord],
    steps: &[Step],
    imported: Option<&str>,
    publish_ahead: i64,
) -> Vec<NewEvent> {
    let fresh: Vec<&KeyRecord> = after.iter().filter(|k| !before.iter().any(|b| b.kid == k.kid)).collect();
    let mut fresh = fresh.into_iter();
    let old = |kid: &str| before.iter().find(|k| k.kid == kid).map(key_view);
    let new = |kid: &str| after.iter().find(|k| k.kid == kid).map(key_view);
    steps
        .iter()
        .filter_map(|step| {
            let (action, kid) = match step {
                Step::CreateCurrent | Step::CreateNext { .. } => {
                    let key = fresh.next()?;
                    let action =
                        if imported == Some(key.kid.as_str()) { Action::KeyImported } else { Action::KeyGenerated };
                    (action, key.kid.as_str())
                }
                Step::Promote { kid } => (Action::KeyRotated, kid.as_str()),
                Step::Schedule { kid, .. } => (Action::KeyHandoverPlanned, kid.as_str()),
                Step::Retire { kid } => (Action::KeyRetired, kid.as_str()),
                Step::Revoke { kid } => (Action::KeyRevoked, kid.as_str()),
            };
            let mut after = new(kid);
            if let (Action::KeyRotated, Some(Value::Object(fields))) = (action, &mut after) {
                // Forced: it signs before it was published for publish_ahead (what `--force`
                // overrides). A planned rotation ahead of the planned start is not forced.
                let published = fields.get("published_at").and_then(Value::as_i64);
                let starts = fields.get("activates_at").and_then(Value::as_i64);
                let forced = match (published, starts) {
                    (Some(published), Some(starts)) => starts < published.saturating_add(publish_ahead),
                    _ => true,
                };
                fields.insert("forced".to_owned(), Value::Bool(forced));
            }
            Some(NewEvent { action, object: format!("key:{kid}"), before: old(kid), after })
        })
        .collect()
}

/// The event of a gated hand-over that went ahead.
pub(crate) fn gate_event(handover: &super::rows::GatedHandover) -> NewEvent {
    let action = if handover.confirmed { Action::GateReleased } else { Action::GateTimedOut };
    NewEvent {
        action,
        object: format!("key:{}", handover.kid),
        before: Some(json!({ "held_for": handover.missing })),
        after: Some(json!({ "key_set": handover.key_set, "at": handover.at, "confirmed": handover.confirmed })),
    }
}

/// The event of a gated hand-over held past its wait: the next key, the partners it waits
/// for, and since when it holds. Recorded once per next key ([`Store::record_first`]).
pub(crate) fn gate_held_event(key_set: &str, kid: &str, missing: &[String], since: i64) -> NewEvent {
    NewEvent {
        action: Action::GateHeld,
        object: format!("key:{kid}"),
        before: None,
        after: Some(json!({ "key_set": key_set, "next_kid": kid, "missing": missing, "held_since": since })),
    }
}

/// What a client's row says, for before/after: never its token, token id or hash.
fn client_view(row: &ClientRow) -> Value {
    let list = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_owned()));
    json!({
        "profiles": list(&row.profiles),
        "admin": row.admin,
        "permissions": list(&row.permissions),
        "rate_limit": row.rate_limit,
        "rate_burst": row.rate_burst,
        "cert_sha256": row.cert_sha256,
        "cert_only": row.cert_only,
        "identity": row.identity,
        "revoked_at": row.revoked_at,
        "previous_token_until": row.previous_token_until,
    })
}

/// The event of a change to a client, from its row before (if any) and after: for a
/// change, only the fields that changed.
pub(crate) fn client_event(before: Option<&ClientRow>, after: &ClientRow) -> NewEvent {
    let action = match before {
        None => Action::ClientAdded,
        Some(old) if old.revoked_at.is_some() && after.revoked_at.is_none() => Action::ClientAdded,
        Some(old) if old.revoked_at.is_none() && after.revoked_at.is_some() => Action::ClientRevoked,
        Some(old) if old.token_hash != after.token_hash => Action::ClientRotated,
        Some(_) => Action::ClientChanged,
    };
    let new = client_view(after);
    let (old, new) = match (before.map(client_view), new) {
        (Some(Value::Object(mut old)), Value::Object(mut new)) => {
            old.retain(|k, v| new.get(k) != Some(v));
            new.retain(|k, _| old.contains_key(k));
            (Some(Value::Object(old)), Value::Object(new))
        }
        (_, new) => (None, new),
    };
    NewEvent { action, object: format!("client:{}", after.name), before: old, after: Some(new) }
}

/// The event of a profile's secret set: its dates, never its value.
pub(crate) fn secret_event(before: Option<(i64, i64)>, row: &super::rows::SecretRow) -> NewEvent {
    NewEvent {
        action: Action::SecretSet,
        object: format!("profile:{}", row.profile),
        before: before.map(|(created_at, updated_at)| json!({ "created_at": created_at, "updated_at": updated_at })),
        after: Some(json!({ "created_at": row.created_at, "updated_at": row.updated_at })),
    }
}
