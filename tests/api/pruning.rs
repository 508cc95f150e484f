//! The ledger over time: pruning removes exactly the rows past retention, whole days at a
//! time on PostgreSQL, while commits go on; a first start on months of expired rows serves
//! at once; an existing ledger moves to the day layout with its rows on both sides of the
//! retention limit. Every test runs on SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use keyward::keys::KeyState;
use keyward::store::rows::{Entry, Filter};
use keyward::store::Store;
use serde_json::json;

use crate::helpers::{on_both_stores, spawn_app_on, spawn_in, test_config, Backend};

const PROFILE: &str = "npm-sandbox";
const DAY: i64 = 86_400;

/// How long a ledger commit may wait while pruning runs (a commit takes a few ms alone;
/// a pruning batch holds SQLite's write lock for about 20 ms). Generous: the machine that
/// runs the tests is shared.
const COMMIT_BOUND: Duration = Duration::from_millis(1_500);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn entry(jti: &str, client: &str, kid: &str, iat: i64) -> Entry {
    Entry {
        jti: jti.to_owned(),
        profile: PROFILE.to_owned(),
        client: client.to_owned(),
        sub: Some(format!("sub-{jti}")),
        kid: Some(kid.to_owned()),
        alg: "ES256".to_owned(),
        iat,
        exp: iat + 60,
        claim_names: vec![],
        client_generation: 0,
    }
}

async fn current_kid(store: &Store) -> String {
    store.keys().await.unwrap().into_iter().find(|k| k.state_at(now()) == KeyState::Current).unwrap().kid
}

/// Writes `count` rows straight into the ledger, the first issued at `from`, then one every
/// `step` seconds (the subjects cycle through 1,000), creating the days they need.
async fn fill(store: &Store, from: i64, count: i64, step: i64) {
    let last = from + (count - 1) * step;
    let mut day = from;
    while day <= last + DAY {
        store.prepare_issuance(day).await.unwrap();
        day += 7 * DAY;
    }
    match store {
        Store::Sqlite(s) => sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1) \
             INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) \
             SELECT printf('fill-%d-%012d', ?2, i), 'p', 'filler', 'sub-' || (i % 1000), 'k', 'ES256', \
             ?2 + i * ?3, ?2 + i * ?3 + 60, '[]' FROM n",
        )
        .bind(count)
        .bind(from)
        .bind(step)
        .execute(s.pool())
        .await
        .map(drop),
        Store::Postgres(s) => sqlx::query(
            "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) \
             SELECT format('fill-%s-%s', $2::BIGINT, lpad(i::TEXT, 12, '0')), 'p', 'filler', 'sub-' || (i % 1000), \
             'k', 'ES256', $2 + i * $3, $2 + i * $3 + 60, '[]' FROM generate_series(0, $1 - 1) AS i",
        )
        .bind(count)
        .bind(from)
        .bind(step)
        .execute(s.pool())
        .await
        .map(drop),
    }
    .unwrap();
}

/// Rows issued in `[from, to)`.
async fn count_between(store: &Store, from: i64, to: i64) -> i64 {
    let sql = "SELECT count(*) FROM issuance WHERE iat >= $1 AND iat < $2";
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(sql).bind(from).bind(to).fetch_one(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(sql).bind(from).bind(to).fetch_one(s.pool()).await,
    }
    .unwrap()
}

async fn horizon(store: &Store) -> Option<i64> {
    let sql = "SELECT kept_from FROM issuance_horizon";
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_optional(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(sql).fetch_optional(s.pool()).await,
    }
    .unwrap()
}

/// The ledger's tables on PostgreSQL (its partitions), by name.
async fn partitions(store: &Store) -> Vec<String> {
    match store {
        Store::Sqlite(_) => vec![],
        Store::Postgres(s) => sqlx::query_scalar(
            "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'issuance'::regclass ORDER BY 1",
        )
        .fetch_all(s.pool())
        .await
        .unwrap(),
    }
}

fn partition_of(iat: i64) -> String {
    format!("issuance_p{}", chrono::DateTime::from_timestamp(iat, 0).unwrap().format("%Y%m%d"))
}

/// Commits one row at a time through the ledger writer until `until` is done; returns the
/// longest commit and how many there were.
async fn commit_while<F>(store: &Store, until: F) -> (Duration, usize, F::Output)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    let kid = current_kid(store).await;
    let mut writer = store.issuance_writer(Duration::from_secs(10));
    let until = tokio::spawn(until);
    let (mut longest, mut commits) = (Duration::ZERO, 0);
    loop {
        let row = entry(&format!("live-{commits}"), "alpha", &kid, now());
        let started = Instant::now();
        let refused = writer.insert(&[&row]).await.unwrap();
        longest = longest.max(started.elapsed());
        commits += 1;
        assert_eq!(refused, Default::default(), "the row commits");
        if until.is_finished() {
            return (longest, commits, until.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

on_both_stores! {
    async fn pruning_removes_every_row_before_the_limit_and_keeps_every_row_from_it(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        let t = now();
        // Ten days of rows, one every 10 minutes; the limit falls inside a day.
        let from = t - 10 * DAY;
        fill(&app.store, from, 10 * 144, 600).await;
        let limit = t - 5 * DAY + 1_234;
        let (before, after) = (count_between(&app.store, i64::MIN, limit).await, count_between(&app.store, limit, i64::MAX).await);
        assert!(before > 600 && after > 600, "{before} {after}");
        assert_eq!(app.store.prune_issuance(limit).await.unwrap(), before as u64);
        assert_eq!(count_between(&app.store, i64::MIN, limit).await, 0, "every row before the limit is gone");
        assert_eq!(count_between(&app.store, limit, i64::MAX).await, after, "every row from it on is kept");
        assert_eq!(horizon(&app.store).await, Some(limit), "readers learn where the kept history starts");
        if backend == Backend::Postgres {
            let left = partitions(&app.store).await;
            assert!(!left.contains(&partition_of(from)), "whole days past the limit are dropped: {left:?}");
            assert!(left.contains(&partition_of(limit)), "the limit's day is pruned row by row: {left:?}");
        }
        // Nothing left to prune: a second pass removes nothing and keeps the horizon.
        assert_eq!(app.store.prune_issuance(limit - DAY).await.unwrap(), 0);
        assert_eq!(horizon(&app.store).await, Some(limit));
        let found = app.store.issuance(&Filter { sub: Some("sub-7".to_owned()), ..Filter::default() }, 1_000).await.unwrap();
        assert!(!found.is_empty() && found.iter().all(|row| row.iat >= limit), "audit queries still answer");
        let day = Filter { since: Some(limit), until: Some(limit + DAY), ..Filter::default() };
        assert_eq!(app.store.issuance_count(&day).await.unwrap(), 144, "a day's count (keyward audit --count)");
    }

    async fn a_ledger_commit_waits_little_while_a_large_expired_backlog_is_pruned(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        app.client("alpha", &[PROFILE]).await;
        let t = now();
        // 300,000 rows over the 30 days before the limit.
        let limit = t - DAY;
        fill(&app.store, limit - 30 * DAY, 300_000, 30 * DAY / 300_000).await;
        let store = app.store.clone();
        let started = Instant::now();
        let (longest, commits, pruned) = commit_while(&app.store, async move { store.prune_issuance(limit).await.unwrap() }).await;
        eprintln!(
            "{backend:?}: pruned {pruned} rows in {:?}; {commits} commits meanwhile, the longest {longest:?}",
            started.elapsed()
        );
        assert_eq!(pruned, 300_000);
        assert!(longest < COMMIT_BOUND, "a commit waited {longest:?} while the ledger was pruned");
        assert_eq!(count_between(&app.store, limit, i64::MAX).await, commits as i64, "every live row is kept");
    }

    async fn a_first_start_on_months_of_expired_rows_serves_at_once_and_prunes_them(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.server.database_url = backend.new_database_url(dir.path()).await;
        config.server.ledger_retention = keyward::config::Duration::from_secs(30 * DAY as u64);
        let t = now();
        {
            // An old deployment's ledger: 120 days of rows, 90 of them past the retention.
            let store = Store::connect(&config.database()).await.unwrap();
            fill(&store, t - 120 * DAY, 200_000, 120 * DAY / 200_000).await;
        }
        let app = spawn_in(dir, config, keyward::seal::MasterKey::generate()).await;
        let token = app.client("alpha", &[PROFILE]).await;
        let mut slowest = Duration::ZERO;
        for i in 0..30 {
            let started = Instant::now();
            app.sign_ok(PROFILE, &token, &json!({"sub": format!("s{i}")})).await;
            slowest = slowest.max(started.elapsed());
        }
        let limit = t - 30 * DAY;
        let store = app.store.clone();
        let pruned = app.eventually(Duration::from_secs(120), || {
            let store = store.clone();
            async move { count_between(&store, i64::MIN, limit).await == 0 }
        }).await;
        eprintln!("{backend:?}: the slowest of 30 signings during the first prune took {slowest:?}");
        assert!(slowest < COMMIT_BOUND, "a signing took {slowest:?} while months of rows were pruned");
        assert!(pruned, "the expired rows are pruned");
        assert!(count_between(&app.store, limit + 60, i64::MAX).await >= 30, "rows inside retention stay");
    }
}

/// The last migration before the ledger's day layout (and its horizon).
const BEFORE_DAYS: i64 = 20261207600000;

/// A database at the schema before the day layout, at `url`.
async fn database_before_days(backend: Backend, url: &str) {
    let folder = match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    };
    let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(folder)).await.unwrap();
    migrator.migrations = migrator.migrations.iter().filter(|m| m.version < BEFORE_DAYS).cloned().collect();
    match keyward::config::Database::parse(url).unwrap() {
        keyward::config::Database::Sqlite(path) => {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            migrator.run(&pool).await.unwrap();
            pool.close().await;
        }
        keyward::config::Database::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url.expose()).await.unwrap();
            migrator.run(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

on_both_stores! {
    async fn an_existing_ledger_moves_to_the_day_layout_with_rows_on_both_sides_of_retention(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let url = backend.new_database_url(dir.path()).await;
        database_before_days(backend, &url).await;
        let t = now();
        let limit = t - 30 * DAY;
        // 60 days of rows in the old layout, one every 10 minutes (the subjects cycle through
        // 50): half past the limit.
        let old = keyward::config::Database::parse(&url).unwrap();
        let rows: Vec<i64> = (0..60 * 144).map(|i| t - 60 * DAY + i * 600).collect();
        let (first, count) = (rows[0], rows.len() as i64);
        match &old {
            keyward::config::Database::Sqlite(path) => {
                let pool = sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(path)).await.unwrap();
                sqlx::query(
                    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1) \
                     INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) \
                     SELECT printf('old-%06d', i), 'p', 'filler', 'sub-' || (i % 50), 'k', 'ES256', ?2 + i * 600, \
                     ?2 + i * 600, '[]' FROM n",
                )
                .bind(count)
                .bind(first)
                .execute(&pool)
                .await
                .unwrap();
                pool.close().await;
            }
            keyward::config::Database::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url.expose()).await.unwrap();
                sqlx::query(
                    "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) \
                     SELECT 'old-' || lpad(i::TEXT, 6, '0'), 'p', 'filler', 'sub-' || (i % 50), 'k', 'ES256', \
                     $2 + i * 600, $2 + i * 600, '[]' FROM generate_series(0, $1 - 1) AS i",
                )
                .bind(count)
                .bind(first)
                .execute(&pool)
                .await
                .unwrap();
                pool.close().await;
            }
        }
        let expired = rows.iter().filter(|iat| **iat < limit).count() as i64;
        let store = Store::connect(&old).await.unwrap();
        assert_eq!(store.counts().await.unwrap().issuance, rows.len() as i64, "every row moved");
        if backend == Backend::Postgres {
            let tables = partitions(&store).await;
            assert!(tables.contains(&"issuance_legacy".to_owned()), "the old table is a partition: {tables:?}");
        }
        // Audit queries answer over the moved rows.
        let by_sub = Filter { sub: Some("sub-7".to_owned()), since: Some(limit), ..Filter::default() };
        let found = store.issuance(&by_sub, 5).await.unwrap();
        assert_eq!(found.len(), 5);
        assert!(found.windows(2).all(|w| w[0].iat >= w[1].iat) && found[0].iat > t - 50 * 600, "newest first: {found:?}");
        // New rows commit beside the old ones.
        let app_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(app_dir.path());
        config.server.database_url = url.clone();
        let app = spawn_in(app_dir, config, keyward::seal::MasterKey::generate()).await;
        let token = app.client("alpha", &[PROFILE]).await;
        let jti = app.sign_ok(PROFILE, &token, &json!({"sub": "new"})).await["jti"].as_str().unwrap().to_owned();
        assert_eq!(store.prune_issuance(limit).await.unwrap(), expired as u64);
        assert_eq!(count_between(&store, i64::MIN, limit).await, 0, "every row past retention is gone");
        assert_eq!(count_between(&store, limit, i64::MAX).await, rows.len() as i64 - expired + 1, "the rest stay");
        let new = store.issuance(&Filter { sub: Some("new".to_owned()), ..Filter::default() }, 5).await.unwrap();
        assert_eq!(new.iter().map(|row| row.jti.clone()).collect::<Vec<_>>(), [jti]);
        if backend == Backend::Postgres {
            // Once all of it has expired, the old table goes whole.
            let tomorrow = (t / DAY + 1) * DAY;
            store.prune_issuance(tomorrow).await.unwrap();
            assert!(!partitions(&store).await.contains(&"issuance_legacy".to_owned()));
        }
    }
}
