//! The ledger writer's side of the store.
//!
//! A batch of rows goes to the database as one statement (on SQLite, up to 64 rows; larger
//! bursts as several in one transaction) that writes the rows whose key may still sign and
//! whose client is not revoked, and nothing else: the check and the write cannot part, and
//! a batch costs one hand-off to SQLite's thread or one round trip to PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;

use super::rows::Entry;

/// Tokens issued per profile and minute since `$1` (Unix seconds), oldest minute first: one
/// text for both stores (SQLite takes `$1` too, and both divide integers exactly).
pub(crate) const PER_MINUTE_SQL: &str = "SELECT profile, iat / 60 * 60 AS minute, COUNT(*) AS tokens \
     FROM issuance WHERE iat >= $1 AND jti <> $2 GROUP BY profile, iat / 60 ORDER BY minute, profile";

/// Tokens one profile issued in one minute.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MinuteCount {
    /// The profile.
    pub profile: String,
    /// The minute's first second (Unix seconds).
    pub minute: i64,
    /// Tokens issued in it.
    pub tokens: i64,
}

/// The `jti` of the row a ledger probe writes and deletes again, on either store (real
/// jtis are 24 characters).
pub(crate) const PROBE_JTI: &str = "-ledger-probe-";

/// Why a ledger commit refused a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its key may no longer sign (revoked or retired since the request signed with it).
    KeyWithdrawn,
    /// Its client was revoked or changed (a new token, other rights) since the request was
    /// authenticated.
    ClientRevoked,
}

/// The rows a ledger commit did not write, by `jti`, and why. Every row not in it committed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refused(HashMap<String, Why>);

impl Refused {
    /// Why `entry`'s row was not written; `None` when it was.
    pub fn why(&self, entry: &Entry) -> Option<Why> {
        self.0.get(&entry.jti).copied()
    }

    /// After a commit that wrote fewer rows than `entries`: the rows of `entries` not in
    /// `written` were refused, for their client when it is not in `clients` (the active
    /// clients that may still ask, with their generations), else for their key. Revocations do not come undone, so what is
    /// revoked now was revoked when the commit refused the row.
    pub(crate) fn missing(entries: &[&Entry], written: &HashSet<String>, clients: &HashSet<(String, i64)>) -> Refused {
        Refused(
            entries
                .iter()
                .filter(|e| !written.contains(&e.jti))
                .map(|e| {
                    let current = clients.contains(&(e.client.clone(), e.client_generation));
                    let why = if current { Why::KeyWithdrawn } else { Why::ClientRevoked };
                    (e.jti.clone(), why)
                })
                .collect(),
        )
    }
}

use super::events::Trail;
use super::{postgres, sqlite, Store};
use crate::audit::chain::{self, GENESIS};
use crate::audit::{Action, NewEvent};

/// One ledger writer's hash chain: its id and, once known, its head (seq, hash).
pub(crate) struct LedgerChain {
    /// Its writer id (a fresh one per ledger writer).
    pub(crate) writer: String,
    /// The newest row written, as far as this writer knows; `None` after a commit whose
    /// outcome is unknown (read again from the table before the next).
    pub(crate) head: Option<(i64, String)>,
    /// Where `ledger.withheld` events go.
    pub(crate) trail: Trail,
}

/// A row's place in its writer's chain.
pub(crate) struct LedgerLink {
    pub(crate) seq: i64,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
    /// The claim names as the column keeps them (JSON text), as hashed.
    pub(crate) claim_names: String,
}

/// A writer's newest chained row; one text for both stores.
pub(crate) const LEDGER_HEAD_SQL: &str = "SELECT seq, hash FROM issuance WHERE writer = $1 ORDER BY seq DESC LIMIT 1";

/// The hash of ledger row `entry` at `seq` of `writer`, after `prev`.
pub(crate) fn ledger_hash(prev: &str, writer: &str, seq: i64, entry: &Entry, claim_names: &str) -> String {
    let (seq, iat, exp) = (seq.to_string(), entry.iat.to_string(), entry.exp.to_string());
    chain::hash(
        prev,
        &[
            Some(writer),
            Some(&seq),
            Some(&entry.jti),
            Some(&entry.profile),
            Some(&entry.client),
            entry.sub.as_deref(),
            entry.kid.as_deref(),
            Some(&entry.alg),
            Some(&iat),
            Some(&exp),
            Some(claim_names),
        ],
    )
}

impl LedgerChain {
    /// A new writer's chain, its events attributed as `trail` says and chained under the
    /// ledger writer's own id: the lock a commit takes on that event chain is then never
    /// one another transaction of this process holds while it waits for a key row.
    pub(crate) fn new(trail: Trail) -> LedgerChain {
        let writer = crate::audit::new_writer_id();
        let trail = Trail { writer: writer.as_str().into(), by: trail.by };
        LedgerChain { writer, head: None, trail }
    }

    /// The links of `entries`, after `head`: one SHA-256 per row.
    pub(crate) fn links(&self, head: &(i64, String), entries: &[&Entry]) -> Vec<LedgerLink> {
        let (mut seq, mut prev) = head.clone();
        entries
            .iter()
            .map(|entry| {
                seq += 1;
                let claim_names = serde_json::to_string(&entry.claim_names).unwrap_or_else(|_| "[]".to_owned());
                let hash = ledger_hash(&prev, &self.writer, seq, entry, &claim_names);
                LedgerLink { seq, prev_hash: std::mem::replace(&mut prev, hash.clone()), hash, claim_names }
            })
            .collect()
    }

    /// The head once a commit wrote `links`.
    pub(crate) fn advance(&mut self, links: &[LedgerLink]) {
        if let Some(last) = links.last() {
            self.head = Some((last.seq, last.hash.clone()));
        }
    }

    /// The event that records rows chained and then refused by their commit (a
    /// revocation raced them): `audit verify` steps over them by these hashes.
    pub(crate) fn withheld(&self, entries: &[&Entry], links: &[LedgerLink], refused: &Refused) -> NewEvent {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .zip(links)
            .filter(|(entry, _)| refused.why(entry).is_some())
            .map(|(entry, link)| {
                serde_json::json!({ "jti": entry.jti, "seq": link.seq, "prev_hash": link.prev_hash, "hash": link.hash })
            })
            .collect();
        NewEvent {
            action: Action::LedgerWithheld,
            object: format!("ledger:{}", self.writer),
            before: None,
            after: Some(serde_json::json!({ "withheld": rows })),
        }
    }
}

/// Per writer, its rows issued before `$1`: the chains a prune shortens.
pub(crate) const EXPIRED_BY_WRITER_SQL: &str =
    "SELECT writer, count(*) FROM issuance WHERE iat < $1 AND writer IS NOT NULL GROUP BY writer";

/// Writer `$1`'s first row (seq, prev_hash) issued at or after `$2`: its chain is kept from there.
pub(crate) const FIRST_KEPT_SQL: &str =
    "SELECT seq, prev_hash FROM issuance WHERE writer = $1 AND iat >= $2 ORDER BY seq LIMIT 1";

/// The event of a prune: each pruned chain's first kept seq and the hash it links to
/// (`audit verify` starts each chain there).
pub(crate) fn pruned_event(before: i64, rows: u64, first_kept: serde_json::Map<String, serde_json::Value>) -> NewEvent {
    NewEvent {
        action: Action::LedgerPruned,
        object: "ledger".to_owned(),
        before: None,
        after: Some(serde_json::json!({ "issued_before": before, "rows": rows, "first_kept": first_kept })),
    }
}

/// Every ledger row that carries a writer, by writer and seq, with what its hash covers.
const LEDGER_CHAIN_SQL: &str = "SELECT writer, seq, prev_hash, hash, jti, profile, client, sub, kid, alg, iat, exp, \
     claim_names FROM issuance WHERE writer IS NOT NULL ORDER BY writer, seq";

/// Rows without a chain issued since chains began (none are written since: each was put
/// there by hand), at most 100.
const UNCHAINED_SQL: &str = "SELECT jti, iat FROM issuance WHERE (writer IS NULL OR seq IS NULL OR hash IS NULL \
     OR prev_hash IS NULL) AND jti <> $1 AND iat >= (SELECT MIN(iat) FROM issuance WHERE hash IS NOT NULL) \
     ORDER BY iat, jti LIMIT 100";

/// A ledger row with its chain columns, as `audit verify` reads it.
#[derive(sqlx::FromRow)]
struct ChainedRow {
    writer: String,
    seq: Option<i64>,
    prev_hash: Option<String>,
    hash: Option<String>,
    jti: String,
    profile: String,
    client: String,
    sub: Option<String>,
    kid: Option<String>,
    alg: String,
    iat: i64,
    exp: i64,
    claim_names: String,
}

/// What `audit verify` walks of the ledger.
pub(crate) struct LedgerChains {
    /// Per writer, its rows' links in seq order.
    pub(crate) chains: std::collections::BTreeMap<String, Vec<chain::Link>>,
    /// Rows issued since chains began that carry no (or a partial) chain: (jti, iat).
    pub(crate) unchained: Vec<(String, i64)>,
    /// Rows walked.
    pub(crate) rows: usize,
}

impl Store {
    /// The ledger's chains, for `audit verify`.
    pub(crate) async fn ledger_chains(&self) -> anyhow::Result<LedgerChains> {
        type Read<T> = sqlx::Result<Vec<T>>;
        let (rows, unchained): (Read<ChainedRow>, Read<(String, i64)>) = match self {
            Store::Sqlite(s) => (
                sqlx::query_as(LEDGER_CHAIN_SQL).fetch_all(s.pool()).await,
                sqlx::query_as(UNCHAINED_SQL).bind(PROBE_JTI).fetch_all(s.pool()).await,
            ),
            Store::Postgres(s) => (
                sqlx::query_as(LEDGER_CHAIN_SQL).fetch_all(s.pool()).await,
                sqlx::query_as(UNCHAINED_SQL).bind(PROBE_JTI).fetch_all(s.pool()).await,
            ),
        };
        let (rows, mut unchained) = (rows.context("reading the ledger")?, unchained.context("reading the ledger")?);
        let count = rows.len();
        let mut chains: std::collections::BTreeMap<String, Vec<chain::Link>> = std::collections::BTreeMap::new();
        for row in rows {
            let (Some(seq), Some(prev_hash), Some(hash)) = (row.seq, row.prev_hash.clone(), row.hash.clone()) else {
                continue;
            };
            let label = format!("jti {} (client {}, iat {})", row.jti, row.client, row.iat);
            let entry = Entry {
                jti: row.jti,
                profile: row.profile,
                client: row.client,
                sub: row.sub,
                kid: row.kid,
                alg: row.alg,
                iat: row.iat,
                exp: row.exp,
                claim_names: Vec::new(),
                client_generation: 0,
            };
            let hash_at = |s: i64| ledger_hash(&prev_hash, &row.writer, s, &entry, &row.claim_names);
            let computed = hash_at(seq);
            let elsewhere = if computed == hash { Vec::new() } else { chain::nearby(seq, hash_at) };
            chains.entry(row.writer.clone()).or_default().push(chain::Link {
                seq,
                prev_hash: prev_hash.clone(),
                hash,
                computed,
                elsewhere,
                label,
            });
        }
        unchained.sort();
        Ok(LedgerChains { chains, unchained, rows: count })
    }
}

/// The head a writer starts from when its table holds none of its rows.
pub(crate) fn genesis() -> (i64, String) {
    (0, GENESIS.to_owned())
}

/// Commits ledger rows for the one writer task.
pub enum IssuanceWriter {
    /// With a connection of its own.
    Sqlite(sqlite::issuance::IssuanceWriter),
    /// With a connection of its own.
    Postgres(postgres::issuance::IssuanceWriter),
}

impl Store {
    /// The issuance ledger's writer, whose statements the database gives up after
    /// `statement_limit` (a wait for a lock included).
    pub fn issuance_writer(&self, statement_limit: Duration) -> IssuanceWriter {
        match self {
            Store::Sqlite(s) => IssuanceWriter::Sqlite(sqlite::issuance::IssuanceWriter::new(
                s.pool().clone(),
                statement_limit,
                s.trail().clone(),
            )),
            Store::Postgres(s) => IssuanceWriter::Postgres(postgres::issuance::IssuanceWriter::new(
                s.pool().clone(),
                statement_limit,
                s.trail().clone(),
            )),
        }
    }
}

impl IssuanceWriter {
    /// Commits `entries` in one transaction, except rows whose key may no longer sign or
    /// whose client was revoked: those are returned, their rows not written.
    pub async fn insert(&mut self, entries: &[&Entry]) -> anyhow::Result<Refused> {
        match self {
            IssuanceWriter::Sqlite(w) => w.insert(entries).await,
            IssuanceWriter::Postgres(w) => w.insert(entries).await,
        }
    }

    /// A row written and deleted in one transaction: whether the ledger can commit now.
    pub async fn probe(&mut self) -> anyhow::Result<()> {
        match self {
            IssuanceWriter::Sqlite(w) => w.probe().await,
            IssuanceWriter::Postgres(w) => w.probe().await,
        }
    }

    /// A commit or probe was given up mid-way: its connection is closed, never used again
    /// (it may still be inside the statement).
    pub fn abandon(&mut self) {
        match self {
            IssuanceWriter::Sqlite(w) => w.abandon(),
            IssuanceWriter::Postgres(w) => w.abandon(),
        }
    }
}

/// The audit query for `filter`, newest first, at most `limit`: the same SQL on both stores.
pub(crate) fn audit_query<'a, DB: sqlx::Database>(
    filter: &super::rows::Filter,
    limit: i64,
) -> sqlx::QueryBuilder<'a, DB>
where
    String: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query =
        filtered("SELECT jti, profile, client, sub, kid, alg, iat, exp, claim_names FROM issuance WHERE 1 = 1", filter);
    query.push(" ORDER BY iat DESC, jti LIMIT ").push_bind(limit);
    query
}

/// How many rows match `filter`: the same SQL on both stores.
pub(crate) fn count_query<'a, DB: sqlx::Database>(filter: &super::rows::Filter) -> sqlx::QueryBuilder<'a, DB>
where
    String: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    filtered("SELECT count(*) FROM issuance WHERE 1 = 1", filter)
}

/// `select` (ending in a `WHERE`) with `filter`'s conditions.
fn filtered<'a, DB: sqlx::Database>(select: &str, filter: &super::rows::Filter) -> sqlx::QueryBuilder<'a, DB>
where
    String: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::QueryBuilder::new(select);
    for (column, value) in
        [("sub", &filter.sub), ("kid", &filter.kid), ("client", &filter.client), ("profile", &filter.profile)]
    {
        if let Some(value) = value {
            query.push(format!(" AND {column} = ")).push_bind(value.clone());
        }
    }
    if let Some(since) = filter.since {
        query.push(" AND iat >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND iat < ").push_bind(until);
    }
    query
}

/// What one pruning step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows removed.
    pub rows: u64,
    /// Whether every row before the limit is gone (else the step ran out of its time budget
    /// and the next one goes on).
    pub done: bool,
}

/// Seconds in a ledger period (a UTC day): PostgreSQL keeps one partition per day.
pub(crate) const DAY: i64 = 86_400;

/// The UTC day (days since the epoch) of `unix_seconds`.
pub(crate) fn day_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(DAY)
}

/// The name of the partition of `day`: `issuance_pYYYYMMDD`.
pub(crate) fn partition_name(day: i64) -> String {
    let date = chrono::DateTime::from_timestamp(day * DAY, 0).unwrap_or_default();
    format!("issuance_p{}", date.format("%Y%m%d"))
}

/// The range `[from, to)` of `iat` a partition bound (PostgreSQL's `pg_get_expr` of it,
/// `FOR VALUES FROM (x) TO (y)`, either end possibly `MINVALUE`/`MAXVALUE`) holds.
pub(crate) fn partition_range(bound: &str) -> Option<(i64, i64)> {
    let end = |text: &str| -> Option<i64> {
        match text.trim().trim_matches('\'') {
            "MINVALUE" => Some(i64::MIN),
            "MAXVALUE" => Some(i64::MAX),
            number => number.parse().ok(),
        }
    };
    let rest = bound.trim().strip_prefix("FOR VALUES FROM (")?;
    let (from, rest) = rest.split_once(") TO (")?;
    let to = rest.strip_suffix(')')?;
    Some((end(from)?, end(to)?))
}

/// The days in `wanted` (inclusive) that none of `existing` (ranges of `iat`) covers.
pub(crate) fn days_missing(existing: &[(i64, i64)], wanted: std::ops::RangeInclusive<i64>) -> Vec<i64> {
    wanted.filter(|day| !existing.iter().any(|&(from, to)| from < (day + 1) * DAY && day * DAY < to)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_and_bounded_by_utc_day() {
        assert_eq!(partition_name(day_of(1_796_688_000 + 86_399)), "issuance_p20261208");
        assert_eq!(day_of(-1), -1, "before the epoch rounds down");
        assert_eq!(partition_range("FOR VALUES FROM (MINVALUE) TO ('1796774400')"), Some((i64::MIN, 1_796_774_400)));
        assert_eq!(
            partition_range("FOR VALUES FROM (1796688000) TO (1796774400)"),
            Some((1_796_688_000, 1_796_774_400))
        );
        assert_eq!(partition_range("DEFAULT"), None);
    }

    #[test]
    fn only_days_no_partition_covers_are_missing() {
        let d = 20_800;
        let legacy = (i64::MIN, (d + 1) * DAY);
        assert_eq!(days_missing(&[legacy], d - 1..=d + 2), vec![d + 1, d + 2]);
        assert_eq!(days_missing(&[legacy, ((d + 1) * DAY, (d + 2) * DAY)], d..=d + 2), vec![d + 2]);
        assert_eq!(days_missing(&[], d..=d), vec![d]);
    }
}
