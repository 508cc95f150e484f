//! The SQL of the `issuance` table: the ledger writer's inserts, audit queries, pruning.

use std::collections::{BTreeSet, HashSet};

use std::time::Duration;

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::store::events::Trail;
use crate::store::issuance::{
    day_of, days_missing, genesis, partition_name, partition_range, pruned_event, LedgerChain, LedgerLink, Pruned,
    Refused, DAY, EXPIRED_BY_WRITER_SQL, FIRST_KEPT_SQL, LEDGER_HEAD_SQL, PROBE_JTI,
};
use crate::store::rows::{Entry, EntryRow, Filter};

/// The rows of the JSON array (`store::issuance::rows_json`) bound as `$1`.
macro_rules! rows_of_json {
    () => {
        "SELECT r.jti, r.profile, r.client, r.sub, r.kid, r.alg, r.iat, r.exp, r.claim_names, \
         r.writer, r.seq, r.prev_hash, r.hash \
         FROM json_to_recordset($1::json) AS r(jti TEXT, profile TEXT, client TEXT, sub TEXT, kid TEXT, \
         alg TEXT, iat BIGINT, exp BIGINT, claim_names TEXT, client_generation BIGINT, \
         writer TEXT, seq BIGINT, prev_hash TEXT, hash TEXT)"
    };
}

/// Writes the rows whose key may still sign (or that have none) and whose client is not
/// revoked, in one statement. The batch's own key and
/// client rows (`$2`, `$3`) are read `FOR SHARE`, in order (only those: a wider lock would
/// meet every revocation's updates): a revocation that committed first is seen, and one that comes later waits for
/// this commit, so no row of a revoked key or client commits after the revocation,
/// whichever replica revoked it.
const INSERT_ALLOWED: &str = concat!(
    "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names, writer, seq, prev_hash, hash) ",
    rows_of_json!(),
    " WHERE (r.kid IS NULL OR r.kid IN (SELECT kid FROM keys WHERE kid = ANY($2) \
     AND revoked_at IS NULL AND retired_at IS NULL ORDER BY kid FOR SHARE)) \
     AND (r.client, r.client_generation) IN (SELECT name, generation FROM clients WHERE name = ANY($3) \
     AND revoked_at IS NULL ORDER BY name FOR SHARE)"
);

/// [`INSERT_ALLOWED`]'s rows, all of them or none (`$4`: how many the batch holds): the
/// common commit, one statement in its own transaction (one round trip). When it writes
/// none, a row was refused, and the commit is made again in an explicit transaction that
/// also records the refused rows' links.
const INSERT_ALL_ALLOWED: &str = concat!(
    "WITH allowed AS (",
    rows_of_json!(),
    " WHERE (r.kid IS NULL OR r.kid IN (SELECT kid FROM keys WHERE kid = ANY($2) \
     AND revoked_at IS NULL AND retired_at IS NULL ORDER BY kid FOR SHARE)) \
     AND (r.client, r.client_generation) IN (SELECT name, generation FROM clients WHERE name = ANY($3) \
     AND revoked_at IS NULL ORDER BY name FOR SHARE)) ",
    "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names, writer, seq, prev_hash, hash) ",
    "SELECT * FROM allowed WHERE (SELECT count(*) FROM allowed) = $4"
);

/// How often a commit that PostgreSQL broke off to resolve a deadlock is tried again (the
/// statement wrote nothing, so trying again is safe).
const DEADLOCK_RETRIES: usize = 3;

/// The ledger writer's side of the table, on a connection of its own.
pub struct IssuanceWriter {
    pool: PgPool,
    connection: Option<PoolConnection<Postgres>>,
    /// PostgreSQL's own limit on each of its statements (a lock wait included).
    statement_timeout: Duration,
    /// Its hash chain.
    chain: LedgerChain,
}

impl IssuanceWriter {
    /// The writer of `pool`'s issuance table, whose statements PostgreSQL cancels after
    /// `statement_timeout`.
    /// Its rows are chained under a writer id of its own; `trail` attributes the events
    /// it records.
    pub fn new(pool: PgPool, statement_timeout: Duration, trail: Trail) -> Self {
        IssuanceWriter { pool, connection: None, statement_timeout, chain: LedgerChain::new(trail) }
    }

    /// The writer's own connection (opened if needed), closed rather than returned to the
    /// pool when dropped: it carries its own statement timeout.
    async fn connection(&mut self) -> anyhow::Result<&mut PgConnection> {
        Ok(match &mut self.connection {
            Some(connection) => connection,
            slot => {
                let mut connection = self.pool.acquire().await.context("connecting the ledger writer")?;
                connection.close_on_drop();
                sqlx::query(&format!("SET statement_timeout = {}", self.statement_timeout.as_millis()))
                    .execute(&mut *connection)
                    .await
                    .context("setting the ledger writer's statement timeout")?;
                slot.insert(connection)
            }
        })
    }

    /// A commit or probe was given up mid-way: its connection is closed, not used again.
    pub fn abandon(&mut self) {
        self.connection = None;
        // Whether the commit landed is unknown: the head is read again from the table.
        self.chain.head = None;
    }

    /// Commits `entries` in one transaction, except those whose key may no longer sign
    /// (revoked or retired) or whose client was revoked: those are returned, their rows not
    /// written and their chain links recorded with the commit (`ledger.withheld`). After a failure the next commit starts on a fresh connection.
    pub async fn insert(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        let result = self.insert_allowed(entries).await;
        if result.is_err() {
            self.abandon();
        }
        result
    }

    /// A row written and deleted in one transaction: whether the ledger can commit now.
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        let result = probe(self.connection().await?).await;
        if result.is_err() {
            self.abandon();
        }
        result
    }

    async fn insert_allowed(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        let head = match self.chain.head.clone() {
            Some(head) => head,
            None => {
                let writer = self.chain.writer.clone();
                let stored: Option<(i64, String)> = sqlx::query_as(LEDGER_HEAD_SQL)
                    .bind(writer)
                    .fetch_optional(self.connection().await?)
                    .await
                    .context("reading the ledger chain's head")?;
                stored.unwrap_or_else(genesis)
            }
        };
        let links = self.chain.links(&head, entries);
        let rows = rows_json(entries, Some((&self.chain.writer, &links)));
        let kids: BTreeSet<&str> = entries.iter().filter_map(|e| e.kid.as_deref()).collect();
        let clients: BTreeSet<&str> = entries.iter().map(|e| e.client.as_str()).collect();
        let (kids, clients): (Vec<&str>, Vec<&str>) = (kids.into_iter().collect(), clients.into_iter().collect());
        self.connection().await?;
        let (Some(connection), chain) = (self.connection.as_deref_mut(), &self.chain) else {
            anyhow::bail!("the ledger writer has no connection");
        };
        // The common case: every row allowed, written by one statement.
        let all = sqlx::query(INSERT_ALL_ALLOWED)
            .bind(&rows)
            .bind(&kids)
            .bind(&clients)
            .bind(entries.len() as i64)
            .execute(&mut *connection)
            .await;
        match all {
            Ok(written) if written.rows_affected() == entries.len() as u64 => {
                self.chain.advance(&links);
                return Ok(Refused::default());
            }
            // None written (a row was refused), or broken off by a deadlock: below.
            Ok(_) => {}
            Err(err) if broken_off(&err) => {}
            Err(err) => return Err(err).context("writing ledger rows"),
        }
        let mut attempt = 0;
        let refused = loop {
            attempt += 1;
            // One transaction: rows a revocation refused are recorded (`ledger.withheld`) in
            // the commit that leaves them out.
            // (On the writer's own connection, which carries its statement timeout; after a
            // failure anywhere below, `insert` abandons the connection.)
            sqlx::query("BEGIN").execute(&mut *connection).await.context("beginning the ledger transaction")?;
            let written = match sqlx::query(INSERT_ALLOWED)
                .bind(&rows)
                .bind(&kids)
                .bind(&clients)
                .execute(&mut *connection)
                .await
            {
                Err(err) if attempt <= DEADLOCK_RETRIES && broken_off(&err) => {
                    tracing::warn!(
                        attempt,
                        "PostgreSQL broke a ledger commit off (a deadlock with a key or client change): trying again"
                    );
                    sqlx::query("ROLLBACK").execute(&mut *connection).await.context("ending the broken-off commit")?;
                    continue;
                }
                result => result.context("writing ledger rows")?,
            };
            let refused = if written.rows_affected() == entries.len() as u64 {
                Refused::default()
            } else {
                // Some rows were refused (a revocation): which, and why.
                let present: HashSet<String> = sqlx::query_scalar(
                    "SELECT jti FROM issuance WHERE jti IN (SELECT r.jti FROM json_to_recordset($1::json) AS r(jti TEXT))",
                )
                .bind(&rows)
                .fetch_all(&mut *connection)
                .await
                .context("reading back ledger rows")?
                .into_iter()
                .collect();
                let clients: HashSet<(String, i64)> = sqlx::query_as(
                    "SELECT name, generation FROM clients WHERE revoked_at IS NULL \
                     AND name IN (SELECT r.client FROM json_to_recordset($1::json) AS r(client TEXT))",
                )
                .bind(&rows)
                .fetch_all(&mut *connection)
                .await
                .context("checking clients")?
                .into_iter()
                .collect();
                let refused = Refused::missing(entries, &present, &clients);
                super::events::append(&mut *connection, &chain.trail, &[chain.withheld(entries, &links, &refused)])
                    .await?;
                refused
            };
            sqlx::query("COMMIT").execute(&mut *connection).await.context("committing ledger rows")?;
            break refused;
        };
        self.chain.advance(&links);
        Ok(refused)
    }
}

/// Whether PostgreSQL broke the statement off to resolve a deadlock or a serialisation
/// conflict (with a revocation's transaction, say): nothing was written.
fn broken_off(err: &sqlx::Error) -> bool {
    err.as_database_error().and_then(|e| e.code()).is_some_and(|code| code == "40P01" || code == "40001")
}

/// `entries` as the one JSON array the statements below read (`json_to_recordset`: one
/// statement shape for any batch size); the claim names as the JSON text the column keeps.
/// With `chain` (the writer and each row's link), the rows carry their chain columns.
fn rows_json(entries: &[&Entry], chain: Option<(&str, &[LedgerLink])>) -> String {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        jti: &'a str,
        profile: &'a str,
        client: &'a str,
        sub: Option<&'a str>,
        kid: Option<&'a str>,
        alg: &'a str,
        iat: i64,
        exp: i64,
        claim_names: String,
        client_generation: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        writer: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        prev_hash: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hash: Option<&'a str>,
    }
    let (writer, links) = chain.map_or((None, &[][..]), |(writer, links)| (Some(writer), links));
    let mut links = links.iter();
    let rows: Vec<Row> = entries
        .iter()
        .map(|e| {
            let link = links.next();
            Row {
                writer: link.and(writer),
                seq: link.map(|l| l.seq),
                prev_hash: link.map(|l| l.prev_hash.as_str()),
                hash: link.map(|l| l.hash.as_str()),
                jti: &e.jti,
                profile: &e.profile,
                client: &e.client,
                sub: e.sub.as_deref(),
                kid: e.kid.as_deref(),
                alg: &e.alg,
                iat: e.iat,
                exp: e.exp,
                claim_names: match link {
                    Some(link) => link.claim_names.clone(),
                    None => serde_json::to_string(&e.claim_names).unwrap_or_else(|_| "[]".to_owned()),
                },
                client_generation: e.client_generation,
            }
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned())
}

/// A row written and deleted in one transaction.
async fn probe(connection: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("BEGIN").execute(&mut *connection).await.context("beginning the probe")?;
    let written = async {
        // Issued now: today's partition exists (the days before the oldest kept may not).
        sqlx::query(
            "INSERT INTO issuance (jti, profile, client, alg, iat, exp, claim_names) \
             VALUES ($1, '', '', '', $2, $2, '[]')",
        )
        .bind(PROBE_JTI)
        .bind(chrono::Utc::now().timestamp())
        .execute(&mut *connection)
        .await
        .context("writing the probe row")?;
        sqlx::query("DELETE FROM issuance WHERE jti = $1")
            .bind(PROBE_JTI)
            .execute(&mut *connection)
            .await
            .context("deleting the probe row")?;
        sqlx::query("COMMIT").execute(&mut *connection).await.context("committing the probe")
    }
    .await;
    // A failed probe's connection is closed by the caller: nothing is left half done.
    written.map(|_| ())
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

/// Writes `entries` as they are, in one statement (after creating the partitions of their
/// days).
pub async fn copy(pool: &PgPool, entries: &[&Entry]) -> anyhow::Result<()> {
    let days: BTreeSet<i64> = entries.iter().map(|e| day_of(e.iat)).collect();
    create_partitions(pool, days).await?;
    sqlx::query(concat!(
        "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names, writer, seq, prev_hash, hash) ",
        rows_of_json!()
    ))
    .bind(rows_json(entries, None))
    .execute(pool)
    .await
    .context("writing copied ledger rows")?;
    Ok(())
}

/// Days ahead of today whose partitions exist before they are needed: a server that stops
/// for longer creates them again as it starts.
const DAYS_AHEAD: i64 = 7;

/// Rows one pruning `DELETE` removes at most (PostgreSQL's row deletes never block inserts;
/// small statements keep each one's WAL and locks short).
const PRUNE_BATCH: i64 = 10_000;

/// Creates the partitions of the days from yesterday to [`DAYS_AHEAD`] after `now`'s that
/// do not exist yet.
pub async fn prepare(pool: &PgPool, now: i64) -> anyhow::Result<()> {
    create_partitions(pool, day_of(now) - 1..=day_of(now) + DAYS_AHEAD).await
}

/// The ledger's partitions: name, the `iat` range it holds, and whether a detach of it was
/// started and not finished.
async fn partitions(connection: &mut PgConnection) -> anyhow::Result<Vec<(String, (i64, i64), bool)>> {
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT c.relname::TEXT, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending \
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'issuance'::regclass ORDER BY c.relname",
    )
    .fetch_all(&mut *connection)
    .await
    .context("listing the ledger's partitions")?;
    rows.into_iter()
        .map(|(name, bound, pending)| {
            let range = partition_range(&bound)
                .with_context(|| format!("reading the bound of the ledger partition {name}: {bound}"))?;
            Ok((name, range, pending))
        })
        .collect()
}

/// Creates the partitions of `days` that no partition covers yet. Each is made empty beside
/// the ledger and then attached: attaching takes a lock that inserts do not wait for.
async fn create_partitions(pool: &PgPool, days: impl IntoIterator<Item = i64>) -> anyhow::Result<()> {
    let days: Vec<i64> = days.into_iter().collect();
    let mut tx = super::WriteTx::begin(pool).await.context("beginning to create ledger partitions")?;
    // One process at a time (several servers share the database).
    tx.lock("issuance partitions").await.context("waiting for other processes creating ledger partitions")?;
    let existing: Vec<(i64, i64)> = partitions(&mut tx).await?.into_iter().map(|(_, range, _)| range).collect();
    let mut missing = Vec::new();
    for day in days {
        if !missing.contains(&day) && days_missing(&existing, day..=day) == [day] {
            missing.push(day);
        }
    }
    for day in missing {
        let name = partition_name(day);
        for statement in [
            format!("CREATE TABLE {name} (LIKE issuance INCLUDING DEFAULTS)"),
            format!("CREATE UNIQUE INDEX {name}_jti ON {name} (jti)"),
            format!(
                "ALTER TABLE issuance ATTACH PARTITION {name} FOR VALUES FROM ({}) TO ({})",
                day * DAY,
                (day + 1) * DAY
            ),
        ] {
            sqlx::query(&statement).execute(&mut *tx).await.with_context(|| format!("creating {name}"))?;
        }
    }
    tx.commit().await.context("committing new ledger partitions")
}

/// Removes rows issued before `before` for at most about `budget`: whole days past it are
/// detached (without a lock inserts wait for) and dropped, the rest in small deletes. First
/// the horizon moves to `before`, so readers know rows before it may be missing; before any
/// row goes, an event records where each writer's chain will start, so the chains stay
/// verifiable from their first kept row (a step cut short leaves rows below the recorded
/// start, which `audit verify` passes over and the next step removes).
pub async fn prune_step(pool: &PgPool, trail: &Trail, before: i64, budget: Duration) -> anyhow::Result<Pruned> {
    let started = std::time::Instant::now();
    sqlx::query(
        "INSERT INTO issuance_horizon (id, kept_from) VALUES (1, $1) \
         ON CONFLICT (id) DO UPDATE SET kept_from = GREATEST(issuance_horizon.kept_from, EXCLUDED.kept_from)",
    )
    .bind(before)
    .execute(pool)
    .await
    .context("moving the ledger's horizon")?;
    let mut connection = pool.acquire().await.context("connecting to prune the ledger")?;
    let mut rows = 0;
    for (name, (from, to), pending) in partitions(&mut connection).await? {
        if started.elapsed() > budget {
            return Ok(Pruned { rows, done: false });
        }
        let dropped =
            if to <= before { drop_day(pool, trail, &mut connection, &name, to, before, pending).await? } else { None };
        match dropped {
            Some(dropped) => rows += dropped,
            None if from < before
                && !prune_within(pool, trail, &mut connection, &name, before, started, budget, &mut rows).await? =>
            {
                return Ok(Pruned { rows, done: false });
            }
            None => {}
        }
    }
    Ok(Pruned { rows, done: true })
}

/// Drops the partition `name` (rows issued before `to`) whole, and returns how many rows
/// went. Each writer's chain then starts after its last row in it: first, in one
/// transaction, the rows recorded before that one but issued from `to` on (a few, signed
/// just after midnight and recorded first) are deleted and the event records each chain's
/// new start. `None` while such a row is still inside retention (issued at or after
/// `before`): the day is then pruned row by row, and dropped a little later.
async fn drop_day(
    pool: &PgPool,
    trail: &Trail,
    connection: &mut PgConnection,
    name: &str,
    to: i64,
    before: i64,
    pending: bool,
) -> anyhow::Result<Option<u64>> {
    let count_sql = format!("SELECT count(*) FROM {name}");
    let count: i64 =
        sqlx::query_scalar(&count_sql).fetch_one(&mut *connection).await.with_context(|| format!("counting {name}"))?;
    let mut rows = u64::try_from(count).unwrap_or(0);
    if !pending {
        let lasts_sql = format!(
            "SELECT DISTINCT ON (writer) writer, seq, hash FROM {name} WHERE writer IS NOT NULL ORDER BY writer, seq DESC"
        );
        let lasts: Vec<(String, i64, String)> = sqlx::query_as(&lasts_sql)
            .fetch_all(&mut *connection)
            .await
            .with_context(|| format!("reading the chains' last rows in {name}"))?;
        for (writer, seq, _) in &lasts {
            let kept: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM issuance WHERE writer = $1 AND seq <= $2 AND iat >= $3)",
            )
            .bind(writer)
            .bind(seq)
            .bind(before)
            .fetch_one(&mut *connection)
            .await
            .context("looking for ledger rows that straddle a day")?;
            if kept {
                return Ok(None);
            }
        }
        if !lasts.is_empty() {
            let mut tx = super::WriteTx::begin(pool).await?;
            let mut first_kept = serde_json::Map::new();
            for (writer, seq, hash) in &lasts {
                let straddling = sqlx::query("DELETE FROM issuance WHERE writer = $1 AND seq <= $2 AND iat >= $3")
                    .bind(writer)
                    .bind(seq)
                    .bind(to)
                    .execute(&mut *tx)
                    .await
                    .context("pruning the ledger")?;
                rows += straddling.rows_affected();
                first_kept.insert(writer.clone(), serde_json::json!([seq + 1, hash]));
            }
            super::events::append(&mut tx, trail, &[pruned_event(before, rows, first_kept)]).await?;
            tx.commit().await.context("recording where the pruned ledger chains start")?;
        }
    }
    // CONCURRENTLY runs outside a transaction and never holds up inserts; a detach that
    // was interrupted is finished instead.
    let detach = if pending { "FINALIZE" } else { "CONCURRENTLY" };
    let detach_sql = format!("ALTER TABLE issuance DETACH PARTITION {name} {detach}");
    sqlx::query(&detach_sql).execute(&mut *connection).await.with_context(|| format!("detaching {name}"))?;
    let drop_sql = format!("DROP TABLE {name}");
    sqlx::query(&drop_sql).execute(&mut *connection).await.with_context(|| format!("dropping {name}"))?;
    tracing::info!(partition = name, rows = count, "dropped a ledger day past ledger_retention");
    Ok(Some(rows))
}

/// Deletes the rows of partition `name` issued before `before`, each writer's up to its
/// first row issued at or after it (recorded first), in small statements; false when the
/// budget ran out first.
#[allow(clippy::too_many_arguments)]
async fn prune_within(
    pool: &PgPool,
    trail: &Trail,
    connection: &mut PgConnection,
    name: &str,
    before: i64,
    started: std::time::Instant,
    budget: Duration,
    rows: &mut u64,
) -> anyhow::Result<bool> {
    let expired: Vec<(String, i64)> = sqlx::query_as(EXPIRED_BY_WRITER_SQL)
        .bind(before)
        .fetch_all(&mut *connection)
        .await
        .context("finding the ledger writers to prune")?;
    let mut starts = Vec::with_capacity(expired.len());
    let mut first_kept = serde_json::Map::new();
    for (writer, _) in &expired {
        let kept: Option<(i64, String)> = sqlx::query_as(FIRST_KEPT_SQL)
            .bind(writer)
            .bind(before)
            .fetch_optional(&mut *connection)
            .await
            .context("finding the first kept ledger row")?;
        let start = match kept {
            Some(kept) => kept,
            None => {
                let (seq, hash): (i64, String) = sqlx::query_as(LEDGER_HEAD_SQL)
                    .bind(writer)
                    .fetch_one(&mut *connection)
                    .await
                    .context("reading a ledger chain's head")?;
                (seq + 1, hash)
            }
        };
        first_kept.insert(writer.clone(), serde_json::json!([start.0, start.1]));
        starts.push((writer.clone(), start.0));
    }
    if !starts.is_empty() {
        let count = expired.iter().map(|(_, n)| u64::try_from(*n).unwrap_or(0)).sum();
        let mut tx = super::WriteTx::begin(pool).await?;
        super::events::append(&mut tx, trail, &[pruned_event(before, count, first_kept)]).await?;
        tx.commit().await.context("recording where the pruned ledger chains start")?;
    }
    let by_writer = format!(
        "DELETE FROM {name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {name} WHERE writer = $1 AND seq < $2 LIMIT $3))"
    );
    for (writer, start) in &starts {
        loop {
            let done = sqlx::query(&by_writer)
                .bind(writer)
                .bind(start)
                .bind(PRUNE_BATCH)
                .execute(&mut *connection)
                .await
                .context("pruning the ledger")?;
            *rows += done.rows_affected();
            if done.rows_affected() < PRUNE_BATCH as u64 {
                break;
            }
            if started.elapsed() > budget {
                return Ok(false);
            }
        }
    }
    let unchained = format!(
        "DELETE FROM {name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {name} WHERE writer IS NULL AND iat < $1 LIMIT $2))"
    );
    loop {
        let done = sqlx::query(&unchained)
            .bind(before)
            .bind(PRUNE_BATCH)
            .execute(&mut *connection)
            .await
            .context("pruning the ledger")?;
        *rows += done.rows_affected();
        if done.rows_affected() < PRUNE_BATCH as u64 {
            return Ok(true);
        }
        if started.elapsed() > budget {
            return Ok(false);
        }
    }
}
