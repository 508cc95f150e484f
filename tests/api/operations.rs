//! Operating keyward: the issuance ledger, limits, health, metrics, logs, shutdown, backups.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use keyward::config::Config;
use keyward::config::Duration as Span;
use keyward::keys::Algorithm;
use keyward::seal::MasterKey;
use keyward::store::rows::{Entry, Filter};
use keyward::store::Store;
use serde_json::{json, Value};
use sqlx::SqlitePool;

use crate::helpers::{
    assert_problem, contains, database_bytes, keyward_bare, now, partner_api, serve, spawn_app_with, spawn_in, sqlite,
    test_config, text, wait_healthy, TestApp,
};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";

/// ES256: the quickest key set to start.
fn es256(config: &mut Config) {
    config.key_sets[0].algorithm = Algorithm::Es256;
}

/// A second key-set profile, "other", like the built-in one.
fn with_other_profile(config: &mut Config) {
    let mut other = config.profiles[0].clone();
    other.name = "other".to_owned();
    config.profiles.push(other);
}

/// Every ledger row, newest first.
async fn all_rows(store: &Store) -> Vec<Entry> {
    store.issuance(&Filter::default(), 100_000).await.unwrap()
}

async fn row_count(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM issuance").fetch_one(pool).await.unwrap()
}

/// A row written from outside, e.g. with an `iat` in the past.
async fn insert_row(pool: &SqlitePool, jti: &str, client: &str, sub: &str, iat: i64) {
    sqlx::query(
        "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) \
         VALUES (?, ?, ?, ?, ?, 'ES256', ?, ?, '[]')",
    )
    .bind(jti)
    .bind(PROFILE)
    .bind(client)
    .bind(sub)
    .bind("old-kid")
    .bind(iat)
    .bind(iat + 300)
    .execute(pool)
    .await
    .unwrap();
}

async fn metrics_text(app: &TestApp) -> String {
    let response = app.http.get(format!("{}/metrics", app.internal)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the sample `name` whose labels include every one of `labels`.
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let matches = series_name == name
            && labels.iter().all(|(k, v)| series_labels.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        if matches {
            value.parse().ok()
        } else {
            None
        }
    })
}

async fn status_of(app: &TestApp, base: &str, path: &str) -> u16 {
    app.http.get(format!("{base}{path}")).send().await.unwrap().status().as_u16()
}

/// The binary, run in `dir` with `envs` only (plus PATH).
fn keyward(dir: &Path, args: &[&str], envs: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut command = keyward_bare(dir, args);
    command.envs(envs.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// The binary against the database and master key in `dir`, by environment.
fn keyward_env(dir: &Path, args: &[&str]) -> Output {
    let database = format!("sqlite://{}", dir.join("keyward.db").display());
    let master = dir.join("master.key").display().to_string();
    keyward(dir, args, &[("KEYWARD_DATABASE_URL", &database), ("KEYWARD_MASTER_KEY_FILE", &master)], None)
}

// ---------------------------------------------------------------------------------------
// The issuance ledger
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_issued_token_has_its_ledger_row_when_the_response_arrives_and_refusals_have_none() {
    let app = spawn_app_with(|c| {
        es256(c);
        with_other_profile(c);
    })
    .await;
    let token = app.client("backend", &[PROFILE]).await;
    let outsider = app.client("outsider", &["other"]).await;
    let jwks = app.jwks("/.well-known/jwks.json").await;
    let claim_value = "obo-value-7f3a9c@example.com";

    let mut tokens = Vec::new();
    for i in 0..6 {
        let sub = format!("acct-{i}");
        let body = if i % 2 == 0 {
            json!({"sub": sub, "claims": {"obo_user": claim_value}, "ttl_seconds": 60 + i})
        } else {
            json!({"sub": sub})
        };
        let signed = app.sign_ok(PROFILE, &token, &body).await;
        // Queried at once: the row was committed before the response was sent.
        let rows = app.store.issuance(&Filter { sub: Some(sub.clone()), ..Filter::default() }, 10).await.unwrap();
        assert_eq!(rows.len(), 1, "{sub}: {rows:?}");
        let jwt = signed["token"].as_str().unwrap();
        let claims = verify(jwt, &jwks).unwrap().claims;
        let expected = Entry {
            jti: claims["jti"].as_str().unwrap().to_owned(),
            profile: PROFILE.to_owned(),
            client: "backend".to_owned(),
            sub: Some(sub.clone()),
            kid: Some(signed["kid"].as_str().unwrap().to_owned()),
            alg: "ES256".to_owned(),
            iat: claims["iat"].as_i64().unwrap(),
            exp: claims["exp"].as_i64().unwrap(),
            claim_names: if i % 2 == 0 { vec!["obo_user".to_owned()] } else { vec![] },
            client_generation: 0,
        };
        assert_eq!(rows[0], expected);
        assert_eq!(signed["jti"], claims["jti"]);
        assert_eq!(signed["issued_at"], rows[0].iat);
        assert_eq!(signed["expires_at"], rows[0].exp);
        tokens.push(jwt.to_owned());
    }
    assert_eq!(row_count(app.pool()).await, 6);
    // The claim value is nowhere in the table.
    let dumped: Vec<String> =
        sqlx::query_scalar("SELECT jti || profile || client || COALESCE(sub, '') || claim_names FROM issuance")
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert!(dumped.iter().all(|row| !row.contains(claim_value)), "{dumped:?}");

    // Refused requests leave no row.
    let mut wrong = token.clone();
    wrong.replace_range(wrong.len() - 4.., "AAAA");
    let refusals = [
        (app.sign(PROFILE, &token, &json!({"sub": "has spaces"})).await, 422),
        (app.sign(PROFILE, &token, &json!({"sub": "a", "claims": {"role": "admin"}})).await, 422),
        (app.sign(PROFILE, &token, &json!({"sub": "a", "ttl_seconds": 7_200})).await, 422),
        (app.sign(PROFILE, &token, &json!({"sub": "a", "scope": "all"})).await, 400),
        (app.sign(PROFILE, &token, &json!({"ttl_seconds": 60})).await, 400),
        (app.sign(PROFILE, &outsider, &json!({"sub": "a"})).await, 403),
        (app.sign(PROFILE, &wrong, &json!({"sub": "a"})).await, 401),
        (app.sign("missing", &token, &json!({"sub": "a"})).await, 404),
    ];
    for (response, status) in refusals {
        assert_problem(response, status).await;
    }
    assert_eq!(row_count(app.pool()).await, 6, "a refused request wrote a ledger row");

    // Neither the tokens nor the claim value reached the database files.
    let stored = database_bytes(app.dir.path());
    assert!(!stored.is_empty());
    for jwt in &tokens {
        let signature = jwt.rsplit('.').next().unwrap();
        assert!(!contains(&stored, jwt.as_bytes()), "a token is stored in the database");
        assert!(!contains(&stored, signature.as_bytes()), "a token's signature is stored in the database");
    }
    assert!(!contains(&stored, claim_value.as_bytes()), "a claim value is stored in the database");
}

#[tokio::test]
async fn concurrent_requests_share_ledger_transactions() {
    let app = Arc::new(
        spawn_app_with(|c| {
            es256(c);
            c.server.rate_limit = 10_000;
            c.server.rate_burst = 10_000;
        })
        .await,
    );
    let token = app.client("burst", &[PROFILE]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (app, token) = (Arc::clone(&app), token.clone());
        tasks.spawn(async move {
            let response = app.sign(PROFILE, &token, &json!({"sub": format!("c-{i}")})).await;
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        });
    }
    let mut jtis = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(jtis.insert(body["jti"].as_str().unwrap().to_owned()), "a jti repeated");
    }
    assert_eq!(jtis.len(), 200);
    let stored: BTreeSet<String> = all_rows(&app.store).await.into_iter().map(|e| e.jti).collect();
    assert_eq!(stored, jtis);

    let exposition = metrics_text(&app).await;
    let batches = sample(&exposition, "keyward_ledger_batch_rows_count", &[]).expect(&exposition);
    let rows = sample(&exposition, "keyward_ledger_batch_rows_sum", &[]).expect(&exposition);
    let commits = sample(&exposition, "keyward_ledger_commit_seconds_count", &[]).expect(&exposition);
    println!("200 tokens in {batches} ledger transactions");
    assert_eq!(rows, 200.0, "{exposition}");
    assert!(batches < 200.0, "one transaction per token: no group commit\n{exposition}");
    assert_eq!(commits, batches);
    let issued = [("profile", PROFILE), ("alg", "ES256"), ("outcome", "issued")];
    assert_eq!(sample(&exposition, "keyward_tokens_issued_total", &issued), Some(200.0), "{exposition}");
    assert!(sample(&exposition, "keyward_sign_duration_seconds_count", &[]).is_some_and(|n| n >= 200.0));
    assert_eq!(sample(&exposition, "keyward_ledger_failures_total", &[]), Some(0.0), "{exposition}");
}

#[tokio::test]
async fn a_ledger_that_cannot_write_refuses_to_issue() {
    let app = spawn_app_with(es256).await;
    let token = app.client("backend", &[PROFILE]).await;
    app.sign_ok(PROFILE, &token, &json!({"sub": "a"})).await;

    sqlx::query("DROP TABLE issuance").execute(app.pool()).await.unwrap();
    for _ in 0..3 {
        let response = app.sign(PROFILE, &token, &json!({"sub": "a"})).await;
        assert_eq!(response.headers()["cache-control"], "no-store");
        // assert_problem allows only the problem members: no token.
        let problem = assert_problem(response, 503).await;
        assert_eq!(problem["type"], "urn:keyward:problem:not-recorded", "{problem}");
    }
    let exposition = metrics_text(&app).await;
    assert!(
        sample(&exposition, "keyward_ledger_failures_total", &[]).is_some_and(|n| n >= 1.0),
        "no ledger failure counted\n{exposition}"
    );
    let failed = [("profile", PROFILE), ("alg", "ES256"), ("outcome", "failed")];
    assert_eq!(sample(&exposition, "keyward_tokens_issued_total", &failed), Some(3.0), "{exposition}");

    // Not ready while the ledger cannot commit, on both listeners, saying why.
    for base in [&app.public, &app.internal] {
        let response = app.http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "not ready");
        assert!(body["reason"].as_str().is_some_and(|r| r.contains("ledger")), "{body}");
    }

    // Once the ledger can write again, the writer's own probe finds out (no request
    // needed): ready again, and tokens are issued (and recorded) again.
    // The table as the migrations make it: created, then given its hash-chain columns.
    for migration in [
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite/20261123000003_issuance_ledger.sql")),
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite/20261208100001_ledger_chain.sql")),
    ] {
        sqlx::raw_sql(migration).execute(app.pool()).await.unwrap();
    }
    let ready = app
        .eventually(Duration::from_secs(10), || async {
            status_of(&app, &app.public, "/readyz").await == 200
                && status_of(&app, &app.internal, "/readyz").await == 200
        })
        .await;
    assert!(ready, "/readyz not ready 10 s after the ledger could write again");
    let signed = app.sign_ok(PROFILE, &token, &json!({"sub": "after"})).await;
    let rows = all_rows(&app.store).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].jti, signed["jti"].as_str().unwrap());
}

// ---------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn readyz_fails_on_both_listeners_while_the_database_does_not_answer() {
    let app = spawn_app_with(es256).await;
    for base in [&app.public, &app.internal] {
        assert_eq!(status_of(&app, base, "/readyz").await, 200);
    }
    let generation = app.store.generation().await.unwrap();
    sqlx::query("DROP TABLE state_version").execute(app.pool()).await.unwrap();
    let failing = app
        .eventually(Duration::from_secs(3), || async {
            status_of(&app, &app.public, "/readyz").await == 503
                && status_of(&app, &app.internal, "/readyz").await == 503
        })
        .await;
    assert!(failing, "/readyz still 200 on a listener 3 s after the database stopped answering");
    for base in [&app.public, &app.internal] {
        let response = app.http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"status": "not ready", "reason": "the database does not answer"})
        );
        assert_eq!(status_of(&app, base, "/healthz").await, 200, "{base}/healthz");
    }

    // The database answers again: ready again.
    sqlx::raw_sql(
        "CREATE TABLE state_version (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL) STRICT",
    )
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO state_version (id, generation) VALUES (1, ?)")
        .bind(generation)
        .execute(app.pool())
        .await
        .unwrap();
    let ready = app
        .eventually(Duration::from_secs(3), || async {
            status_of(&app, &app.public, "/readyz").await == 200
                && status_of(&app, &app.internal, "/readyz").await == 200
        })
        .await;
    assert!(ready, "/readyz did not recover within 3 s of the database answering again");
}

// ---------------------------------------------------------------------------------------
// keyward audit
// ---------------------------------------------------------------------------------------

fn audit(dir: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let out = keyward(dir, &all, &[], None);
    assert!(out.status.success(), "audit {args:?}: {}", text(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    let iats: Vec<i64> = rows.iter().map(|r| r["iat"].as_i64().unwrap()).collect();
    assert!(iats.windows(2).all(|w| w[0] >= w[1]), "audit {args:?}: not newest first: {iats:?}");
    rows
}

fn jtis(rows: &[Value]) -> BTreeSet<String> {
    rows.iter().map(|r| r["jti"].as_str().unwrap().to_owned()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn audit_filters_the_ledger_by_subject_key_client_profile_and_time() {
    let app = spawn_app_with(|c| {
        es256(c);
        with_other_profile(c);
    })
    .await;
    let dir = app.dir.path().to_owned();
    // The CLI reads the same configuration (and database) from ./keys.toml.
    std::fs::write(dir.join("keys.toml"), toml::to_string(&app.config).unwrap()).unwrap();
    let alpha = app.client("alpha", &[PROFILE, "other"]).await;
    let beta = app.client("beta", &[PROFILE]).await;

    let jti = |v: &Value| v["jti"].as_str().unwrap().to_owned();
    let a1 = app.sign_ok(PROFILE, &alpha, &json!({"sub": "s1"})).await;
    let a2 = app.sign_ok("other", &alpha, &json!({"sub": "s2"})).await;
    let b1 = app.sign_ok(PROFILE, &beta, &json!({"sub": "s1", "claims": {"obo_user": "u@example.com"}})).await;
    let first_kid = a1["kid"].as_str().unwrap().to_owned();
    let second_kid = app.force_rotate().await;
    app.reload().await;
    let b2 = app.sign_ok(PROFILE, &beta, &json!({"sub": "s3"})).await;
    assert_eq!(b2["kid"], second_kid.as_str());
    let (a1, a2, b1, b2) = (jti(&a1), jti(&a2), jti(&b1), jti(&b2));
    // Older rows, written from outside.
    insert_row(app.pool(), "old-3h", "alpha", "s1", now() - 3 * 3_600).await;
    insert_row(app.pool(), "old-3d", "beta", "s2", now() - 3 * 86_400).await;

    let every = audit(&dir, &[]);
    assert_eq!(jtis(&every), set(&[&a1, &a2, &b1, &b2, "old-3h", "old-3d"]));
    assert_eq!(every[every.len() - 1]["jti"], "old-3d", "oldest last");
    assert_eq!(every[every.len() - 2]["jti"], "old-3h");
    let row = every.iter().find(|r| r["jti"] == b1.as_str()).unwrap();
    let mut members: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
    members.sort();
    assert_eq!(members, ["alg", "claim_names", "client", "exp", "iat", "jti", "kid", "profile", "sub"]);
    assert_eq!(row["claim_names"], json!(["obo_user"]));
    assert_eq!(row["client"], "beta");
    assert_eq!(row["kid"], first_kid.as_str());
    assert_eq!(row["alg"], "ES256");
    assert!(!row.to_string().contains("u@example.com"));

    assert_eq!(jtis(&audit(&dir, &["--sub", "s1"])), set(&[&a1, &b1, "old-3h"]));
    assert_eq!(jtis(&audit(&dir, &["--kid", &first_kid])), set(&[&a1, &a2, &b1]));
    assert_eq!(jtis(&audit(&dir, &["--kid", &second_kid])), set(&[&b2]));
    assert_eq!(jtis(&audit(&dir, &["--client", "beta"])), set(&[&b1, &b2, "old-3d"]));
    assert_eq!(jtis(&audit(&dir, &["--profile", "other"])), set(&[&a2]));
    assert_eq!(jtis(&audit(&dir, &["--since", "1h"])), set(&[&a1, &a2, &b1, &b2]));
    let day_ago = chrono::DateTime::from_timestamp(now() - 86_400, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(jtis(&audit(&dir, &["--since", &day_ago])), set(&[&a1, &a2, &b1, &b2, "old-3h"]));
    assert_eq!(jtis(&audit(&dir, &["--until", "1h"])), set(&["old-3h", "old-3d"]));
    assert_eq!(jtis(&audit(&dir, &["--sub", "s1", "--client", "beta"])), set(&[&b1]));
    assert_eq!(jtis(&audit(&dir, &["--sub", "s1", "--since", "1h"])), set(&[&a1, &b1]));
    assert!(audit(&dir, &["--sub", "nobody"]).is_empty());
    let newest = audit(&dir, &["--limit", "2"]);
    assert_eq!(newest.len(), 2);
    assert!(newest.iter().all(|r| r["iat"].as_i64().unwrap() >= now() - 60), "{newest:?}");

    // The table lists the same rows, one per line under a header.
    let out = keyward(&dir, &["audit", "--client", "beta"], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 4, "{table}");
    for id in [&b1, &b2, "old-3d"] {
        assert!(table.contains(id), "{id} missing from\n{table}");
    }
    let bad = keyward(&dir, &["audit", "--since", "yesterday"], &[], None);
    assert!(!bad.status.success() && text(&bad.stderr).contains("yesterday"), "{}", text(&bad.stderr));
}

#[tokio::test]
async fn rows_older_than_the_retention_are_pruned_and_newer_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    es256(&mut config);
    config.server.ledger_retention = Span::from_secs(2 * 86_400);
    let retention = config.server.ledger_retention.as_secs_i64();
    let store = Store::open(config.database_path()).await.unwrap();
    let pool = sqlite(&store).clone();
    insert_row(&pool, "expired", "c", "s", now() - retention - 3_600).await;
    insert_row(&pool, "kept", "c", "s", now() - retention + 3_600).await;
    insert_row(&pool, "fresh", "c", "s", now()).await;
    pool.close().await;

    // The scheduler prunes past ledger_retention (its first pass runs at start).
    let app = spawn_in(dir, config, MasterKey::generate()).await;
    let pruned = app
        .eventually(Duration::from_secs(5), || async { all_rows(&app.store).await.iter().all(|e| e.jti != "expired") })
        .await;
    assert!(pruned, "the scheduler did not prune a row past ledger_retention");
    let left: BTreeSet<String> = all_rows(&app.store).await.into_iter().map(|e| e.jti).collect();
    assert_eq!(left, set(&["fresh", "kept"]));

    // prune itself: strictly older than the cutoff goes.
    let cutoff = now() - retention;
    insert_row(app.pool(), "just-past", "c", "s", cutoff - 1).await;
    insert_row(app.pool(), "at-cutoff", "c", "s", cutoff).await;
    assert_eq!(app.store.prune_issuance(cutoff).await.unwrap(), 1);
    let left: BTreeSet<String> = all_rows(&app.store).await.into_iter().map(|e| e.jti).collect();
    assert_eq!(left, set(&["at-cutoff", "fresh", "kept"]));
    assert_eq!(app.store.prune_issuance(cutoff).await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_429_with_retry_after_and_others_are_unaffected() {
    let app = spawn_app_with(es256).await;
    let (slow, _) = keyward::ops::clients::create(
        &app.store,
        &app.config,
        "slow",
        &[PROFILE.into()],
        false,
        keyward::ops::clients::ClientOptions { rate: Some((1, 2)), ..Default::default() },
        0,
    )
    .await
    .unwrap();
    let slow = slow.to_string();
    app.reload().await;
    let other = app.client("other", &[PROFILE]).await;

    app.sign_ok(PROFILE, &slow, &json!({"sub": "a"})).await;
    app.sign_ok(PROFILE, &slow, &json!({"sub": "a"})).await;
    let limited = app.sign(PROFILE, &slow, &json!({"sub": "a"})).await;
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    let problem = assert_problem(limited, 429).await;
    assert_eq!(problem["type"], "urn:keyward:problem:rate-limited");
    assert_eq!(row_count(app.pool()).await, 2, "a limited request wrote a ledger row");

    // Another client, on the server default, is not affected.
    for _ in 0..5 {
        app.sign_ok(PROFILE, &other, &json!({"sub": "b"})).await;
    }
    let exposition = metrics_text(&app).await;
    assert_eq!(sample(&exposition, "keyward_rate_limited_requests_total", &[("client", "slow")]), Some(1.0));
    assert_eq!(sample(&exposition, "keyward_rate_limited_requests_total", &[("client", "other")]), None);

    // After Retry-After, the slow client may sign again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    app.sign_ok(PROFILE, &slow, &json!({"sub": "a"})).await;
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_jwks_answers_and_show_each_key_sets_key_age_and_next_rotation() {
    let app = spawn_app_with(es256).await;
    let url = format!("{}/.well-known/jwks.json", app.public);
    let first = app.http.get(&url).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(first.status(), 200);
    for _ in 0..2 {
        let cached = app.http.get(&url).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(cached.status(), 304);
    }
    app.jwks("/path/to/your/jwks").await;

    let response = app.http.get(format!("{}/metrics", app.internal)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let exposition = response.text().await.unwrap();
    let jwks = |path: &str, status: &str| {
        sample(&exposition, "keyward_jwks_requests_total", &[("path", path), ("status", status)])
    };
    assert_eq!(jwks("/.well-known/jwks.json", "200"), Some(1.0), "{exposition}");
    assert_eq!(jwks("/.well-known/jwks.json", "304"), Some(2.0), "{exposition}");
    assert_eq!(jwks("/path/to/your/jwks", "200"), Some(1.0), "{exposition}");
    let age = sample(&exposition, "keyward_signing_key_age_seconds", &[("key_set", "npm")]).expect(&exposition);
    assert!((0.0..=60.0).contains(&age), "a key made at start is {age} s old");
    let until = sample(&exposition, "keyward_next_rotation_seconds", &[("key_set", "npm")]).expect(&exposition);
    let rotate_every = app.config.key_sets[0].rotate_every.as_secs_i64() as f64;
    assert!(
        until <= rotate_every && until >= rotate_every - 60.0,
        "next rotation in {until} s, every {rotate_every} s"
    );
    assert_eq!(sample(&exposition, "keyward_rotation_failures_total", &[]), Some(0.0), "{exposition}");
    // The metrics endpoint is on the internal listener only.
    assert_eq!(status_of(&app, &app.public, "/metrics").await, 404);
}

#[tokio::test]
async fn metrics_show_readiness_the_next_key_the_rotation_period_and_server_errors_by_listener() {
    let app = spawn_app_with(es256).await;
    let token = app.client("billing", &[PROFILE]).await;
    app.sign_ok(PROFILE, &token, &json!({"sub": "acct-42"})).await;
    app.jwks("/.well-known/jwks.json").await;

    let ready = metrics_text(&app).await;
    assert_eq!(sample(&ready, "keyward_ready", &[]), Some(1.0), "{ready}");
    assert_eq!(sample(&ready, "keyward_next_key_published", &[("key_set", "npm")]), Some(1.0), "{ready}");
    let rotate_every = app.config.key_sets[0].rotate_every.as_secs_i64() as f64;
    assert_eq!(sample(&ready, "keyward_rotation_period_seconds", &[("key_set", "npm")]), Some(rotate_every));
    for listener in ["public", "internal"] {
        let answered = sample(&ready, "keyward_http_requests_total", &[("listener", listener)]).expect(&ready);
        assert!(answered >= 1.0, "{listener}: {ready}");
    }
    assert!(!ready.contains("keyward_http_server_errors_total{"), "a server error counted: {ready}");

    // A ledger that cannot commit: the request is a 503, and the server not ready.
    sqlx::query("DROP TABLE issuance").execute(app.pool()).await.unwrap();
    assert_problem(app.sign(PROFILE, &token, &json!({"sub": "acct-42"})).await, 503).await;
    let failing = metrics_text(&app).await;
    assert_eq!(sample(&failing, "keyward_ready", &[]), Some(0.0), "{failing}");
    let errors = |listener: &str| {
        sample(&failing, "keyward_http_server_errors_total", &[("listener", listener), ("status", "503")])
    };
    assert_eq!(errors("internal"), Some(1.0), "{failing}");
    assert_eq!(errors("public"), None, "{failing}");
    assert_eq!(status_of(&app, &app.public, "/readyz").await, 503);
}

// ---------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------

fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("{} without X-Request-Id", response.url()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_generated(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn every_response_of_both_listeners_carries_a_request_id() {
    let app = spawn_app_with(es256).await;
    let token = app.client("backend", &[PROFILE]).await;
    let sign_url = format!("{}/v1/profiles/{PROFILE}/sign", app.internal);
    let mut seen = HashSet::new();
    let requests = [
        app.http.get(format!("{}/healthz", app.public)),
        app.http.get(format!("{}/readyz", app.public)),
        app.http.get(format!("{}/.well-known/jwks.json", app.public)),
        app.http.get(format!("{}/nope", app.public)),
        app.http.get(format!("{}/healthz", app.internal)),
        app.http.get(format!("{}/metrics", app.internal)),
        app.http.get(format!("{}/nope", app.internal)),
        app.http.post(&sign_url).bearer_auth(&token).json(&json!({"sub": "a"})),
        app.http.post(&sign_url).bearer_auth("kw_nope").json(&json!({"sub": "a"})),
        app.http.post(&sign_url).bearer_auth(&token).json(&json!({"sub": "a b"})),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        let id = request_id(&response);
        assert!(is_generated(&id), "{} {}: X-Request-Id {id:?}", response.status(), response.url());
        assert!(seen.insert(id), "a request id repeated");
    }

    for base in [&app.public, &app.internal] {
        let url = format!("{base}/healthz");
        let sent = app.http.get(&url).header("x-request-id", "abc-123").send().await.unwrap();
        assert_eq!(request_id(&sent), "abc-123", "{url}");
        for insane in ["has spaces".to_owned(), "x".repeat(200), "a/b".to_owned(), String::new()] {
            let response = app.http.get(&url).header("x-request-id", &insane).send().await.unwrap();
            let id = request_id(&response);
            assert!(is_generated(&id) && id != insane, "{url}: {insane:?} answered with {id:?}");
        }
    }
    let signed =
        app.http.post(&sign_url).bearer_auth(&token).header("x-request-id", "abc-123").json(&json!({"sub": "a"}));
    assert_eq!(request_id(&signed.send().await.unwrap()), "abc-123");
}

async fn sign_at(
    http: &reqwest::Client,
    base: &str,
    profile: &str,
    token: &str,
    id: Option<&str>,
) -> reqwest::Response {
    // Shared-secret profiles carry no caller subject.
    let body = if profile == PROFILE { json!({"sub": "acct-9"}) } else { json!({}) };
    let mut request = http.post(format!("{base}/v1/profiles/{profile}/sign")).bearer_auth(token).json(&body);
    if let Some(id) = id {
        request = request.header("x-request-id", id);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_full_session_at_trace_level_logs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut config = test_config(path);
    es256(&mut config);
    config.profiles.push(partner_api());
    let mut server = serve(path, &config, "trace");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut server).await);

    // The CLI, as an operator runs it, logging at trace too.
    let config_arg = server.config_file.to_str().unwrap().to_owned();
    let cli_env = [("RUST_LOG", "trace"), ("KEYWARD_LOG_FORMAT", "json")];
    let mut cli_output = Vec::new();
    let added = keyward(
        path,
        &["--config", &config_arg, "clients", "add", "logger", "--profiles", "npm-sandbox,partner-api"],
        &cli_env,
        None,
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let client_token = text(&added.stdout).trim().to_owned();
    assert!(client_token.starts_with("kw_"), "{client_token}");
    cli_output.extend_from_slice(&added.stderr);
    let hs_secret = "hs256-shared-secret-of-the-partner-api-0123456789-QWERTY";
    let stored = keyward(
        path,
        &["--config", &config_arg, "secrets", "set", "partner-api"],
        &cli_env,
        Some(hs_secret.as_bytes()),
    );
    assert!(stored.status.success(), "{}", text(&stored.stderr));
    cli_output.extend_from_slice(&stored.stderr);
    cli_output.extend_from_slice(&stored.stdout);

    // The server picks both up from the database within seconds.
    let start = Instant::now();
    loop {
        let response = sign_at(&http, &server.internal, "partner-api", &client_token, None).await;
        if response.status() == 200 {
            break;
        }
        let (status, body) = (response.status(), response.text().await.unwrap());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the CLI's client and secret did not reach the server: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut issued = Vec::new();
    for (i, profile) in [PROFILE, "partner-api", PROFILE, "partner-api", PROFILE].into_iter().enumerate() {
        let id = format!("trace-me-{i}");
        let response = sign_at(&http, &server.internal, profile, &client_token, Some(&id)).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        issued.push(body["token"].as_str().unwrap().to_owned());
    }
    let mut wrong = client_token.clone();
    wrong.replace_range(wrong.len() - 4.., "AAAA");
    assert_eq!(sign_at(&http, &server.internal, PROFILE, &wrong, Some("wrong-token")).await.status(), 401);
    assert_eq!(http.get(format!("{}/.well-known/jwks.json", server.public)).send().await.unwrap().status(), 200);
    let status = server.terminate(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "keyward serve exited with {status:?}");

    let log = std::fs::read(&server.log).unwrap();
    let mut everything = log.clone();
    everything.extend_from_slice(&cli_output);
    let master = std::fs::read_to_string(path.join("master.key")).unwrap();
    let secret_part = &client_token["kw_".len() + 16 + 1..];
    let mut forbidden: Vec<(&str, String)> = vec![
        ("client token", client_token.clone()),
        ("client token secret", secret_part.to_owned()),
        ("most of the client token secret", secret_part[..24].to_owned()),
        ("HS256 secret", hs_secret.to_owned()),
        ("master key", master.trim().to_owned()),
        ("a private key", "PRIVATE KEY".to_owned()),
    ];
    for jwt in &issued {
        forbidden.push(("issued token", jwt.clone()));
        forbidden.push(("issued token signature", jwt.rsplit('.').next().unwrap().to_owned()));
    }
    let master_hex: String = {
        use base64::engine::general_purpose::STANDARD;
        STANDARD.decode(master.trim()).unwrap().iter().map(|b| format!("{b:02x}")).collect()
    };
    forbidden.push(("master key as hex", master_hex));
    assert!(log.len() > 10_000, "suspiciously little was logged at trace: {} bytes", log.len());
    for (what, needle) in &forbidden {
        if let Some(at) = everything.windows(needle.len()).position(|w| w == needle.as_bytes()) {
            let from = at.saturating_sub(300);
            let context = text(&everything[from..(at + needle.len() + 100).min(everything.len())]);
            panic!("the {what} appears in the logs:\n...{context}...");
        }
    }

    // Every line logged while serving a sign request carries its request id.
    let lines: Vec<Value> = text(&log).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let of_request =
        |id: &str| -> Vec<&Value> { lines.iter().filter(|l| l["span"]["id"] == id).collect::<Vec<&Value>>() };
    let first = of_request("trace-me-0");
    assert!(!first.is_empty(), "no log line carries the request id trace-me-0");
    assert!(
        first.iter().any(|l| l["fields"]["message"] == "request" && l["fields"]["status"] == 200),
        "no access log line with the request id: {first:#?}"
    );
    assert!(
        first.iter().any(|l| l["fields"]["message"] == "token issued"),
        "the handler's own line lacks the request id: {first:#?}"
    );
    for line in &first {
        assert_eq!(line["span"]["name"], "request");
        assert!(line["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["id"] == "trace-me-0")));
    }
    let issued_lines: Vec<&Value> = lines.iter().filter(|l| l["fields"]["message"] == "token issued").collect();
    assert_eq!(issued_lines.len(), issued.len() + 1, "one line per issued token");
    assert!(
        issued_lines.iter().all(|l| l["span"]["id"].as_str().is_some_and(|id| !id.is_empty())),
        "a 'token issued' line without a request id"
    );
    assert!(!of_request("wrong-token").is_empty(), "the 401 was not logged with its request id");
}

#[tokio::test]
async fn sigterm_under_load_exits_0_and_every_token_received_has_its_ledger_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut config = test_config(path);
    es256(&mut config);
    config.server.rate_limit = 100_000;
    config.server.rate_burst = 100_000;
    let (_, _) = MasterKey::resolve(None, &config.server.master_key_file, true).unwrap();
    let store = Store::open(config.database_path()).await.unwrap();
    let pool = sqlite(&store).clone();
    let token = keyward::ops::clients::add(&store, &config, "loader", &[PROFILE.into()], false, now()).await.unwrap();
    let token = token.to_string();
    pool.close().await;
    let mut server = serve(path, &config, "info");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut server).await);

    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let terminated = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (http, base, token) = (http.clone(), server.internal.clone(), token.clone());
        let (received, terminated, failures) = (Arc::clone(&received), Arc::clone(&terminated), Arc::clone(&failures));
        tasks.spawn(async move {
            let mut stop_at: Option<Instant> = None;
            loop {
                if terminated.load(Ordering::SeqCst) && stop_at.is_none() {
                    stop_at = Some(Instant::now() + Duration::from_secs(1));
                }
                if stop_at.is_some_and(|at| Instant::now() >= at) {
                    return;
                }
                let request = http
                    .post(format!("{base}/v1/profiles/{PROFILE}/sign"))
                    .bearer_auth(&token)
                    .json(&json!({"sub": format!("w-{worker}")}))
                    .timeout(Duration::from_secs(15));
                match request.send().await {
                    Ok(response) if response.status() == 200 => match response.json::<Value>().await {
                        Ok(body) => received.lock().unwrap().push(body["jti"].as_str().unwrap().to_owned()),
                        Err(err) => failures.lock().unwrap().push(format!("body lost: {err}")),
                    },
                    Ok(response) => failures.lock().unwrap().push(format!("status {}", response.status())),
                    // Refused connections once the listener is closed: that client is done.
                    Err(_) if terminated.load(Ordering::SeqCst) => return,
                    Err(err) => failures.lock().unwrap().push(format!("before SIGTERM: {err}")),
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = received.lock().unwrap().len();
    terminated.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(15)).await;
    let took = started.elapsed();
    while tasks.join_next().await.is_some() {}
    let received = received.lock().unwrap().clone();
    let failures = failures.lock().unwrap().clone();
    println!(
        "{before} tokens before SIGTERM, {} after; exit after {took:?}; non-200s: {failures:?}",
        received.len() - before
    );
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?} within 15 s\n{}", server.log_text());
    assert!(before >= 20, "only {before} tokens under load");
    // Requests the server took were answered in full, with a token.
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    let log = server.log_text();
    assert!(log.contains("shutdown signal received") && log.contains("\"stopped\""), "{log}");

    let store = Store::open(config.database_path()).await.unwrap();
    let pool = sqlite(&store).clone();
    let stored: HashSet<String> =
        sqlx::query_scalar("SELECT jti FROM issuance").fetch_all(&pool).await.unwrap().into_iter().collect();
    let missing: Vec<&String> = received.iter().filter(|jti| !stored.contains(*jti)).collect();
    assert!(missing.is_empty(), "{} of {} tokens received have no ledger row", missing.len(), received.len());
}

// ---------------------------------------------------------------------------------------
// Backups
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn backup_while_running_holds_the_keys_and_ledger_and_restores_the_same_jwks() {
    let app = spawn_app_with(es256).await;
    let dir = app.dir.path().to_owned();
    let token = app.client("backend", &[PROFILE]).await;
    for i in 0..5 {
        app.sign_ok(PROFILE, &token, &json!({"sub": format!("b-{i}")})).await;
    }
    let file = dir.join("copy.db");
    let out = keyward_env(&dir, &["backup", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&file, restored.path().join("keyward.db")).unwrap();

    let copy = Store::open(file.to_str().unwrap()).await.unwrap();
    let describe = |keys: Vec<keyward::keys::KeyRecord>| -> Vec<(Value, Option<Vec<u8>>)> {
        keys.into_iter()
            .map(|k| (serde_json::to_value(&k).unwrap(), k.sealed().map(|(blob, _)| blob.to_vec())))
            .collect()
    };
    let original_keys = describe(app.store.keys().await.unwrap());
    assert_eq!(original_keys.len(), 2);
    assert_eq!(describe(copy.keys().await.unwrap()), original_keys);
    let rows = all_rows(&app.store).await;
    assert_eq!(rows.len(), 5);
    assert_eq!(all_rows(&copy).await, rows);
    sqlite(&copy).close().await;

    // A second backup to the same file is refused, and the file is left as it was.
    let before = std::fs::read(&file).unwrap();
    let again = keyward_env(&dir, &["backup", file.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("exists"), "{}", text(&again.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // Restored: the backup file as the database of a new server with the same master key.
    let mut config = test_config(restored.path());
    es256(&mut config);
    let second = spawn_in(restored, config, app.master.clone()).await;
    for path in ["/.well-known/jwks.json", "/path/to/your/jwks"] {
        assert_eq!(second.jwks(path).await, app.jwks(path).await, "{path}");
    }
    let signed = second.sign_ok(PROFILE, &token, &json!({"sub": "after-restore"})).await;
    let verified = verify(signed["token"].as_str().unwrap(), &app.jwks("/.well-known/jwks.json").await);
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(all_rows(&second.store).await.len(), 6);
}
