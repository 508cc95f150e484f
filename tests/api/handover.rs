//! Planned hand-overs: the next key signs from the instant stored with it, in every
//! process, with no write at that instant (the database is write-locked across it).

use std::time::{Duration, Instant};

use keyward::config::Config;
use keyward::config::Duration as Span;
use keyward::keys::KeyRecord;
use keyward::store::Store;
use serde_json::{json, Value};
use sqlx::pool::PoolConnection;
use sqlx::Sqlite;

use crate::helpers::{serve, spawn_app_with, sqlite, test_config, wait_healthy};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";

/// A rotation every five seconds: room to lock the database before a planned hand-over.
fn quick(config: &mut Config) {
    let set = &mut config.key_sets[0];
    set.jwks_max_age = Span::from_secs(2);
    set.clock_skew = Span::from_secs(1);
    set.publish_ahead = Span::from_secs(3);
    set.rotate_every = Span::from_secs(5);
    set.retain_after = Span::from_secs(3);
    let profile = &mut config.profiles[0];
    profile.default_ttl = Span::from_secs(3);
    profile.max_ttl = Span::from_secs(3);
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The signer and the next key with its planned start, once that start is at least two
/// seconds away (so the test can lock the database before it).
async fn planned_handover(store: &Store) -> (String, KeyRecord, i64) {
    let start = Instant::now();
    loop {
        let now = now_ms() / 1_000;
        let keys = store.keys().await.unwrap();
        let signer = keyward::keys::signer_at(&keys, now).map(|k| k.kid.clone());
        let next = keys.iter().find(|k| k.is_published() && k.activates_at.is_some_and(|at| at > now));
        if let (Some(signer), Some(next)) = (signer, next) {
            let at = next.activates_at.unwrap();
            if at * 1_000 - now_ms() >= 2_000 {
                return (signer, next.clone(), at);
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no planned hand-over far enough ahead: {keys:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Holds SQLite's write lock: no process can write until it is dropped.
async fn lock_writes(store: &Store) -> PoolConnection<Sqlite> {
    let mut connection = sqlite(store).acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *connection).await.unwrap();
    connection
}

async fn generation(connection: &mut PoolConnection<Sqlite>) -> i64 {
    sqlx::query_scalar("SELECT generation FROM state_version").fetch_one(&mut **connection).await.unwrap()
}

async fn first_published_kid(http: &reqwest::Client, base: &str) -> String {
    let jwks: Value = http.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_next_key_signs_from_its_planned_instant_with_no_write_then() {
    let app = spawn_app_with(quick).await;
    let token = app.client("backend", &[PROFILE]).await;
    let set = app.config.key_sets[0].name.clone();
    let (old, next, at) = planned_handover(&app.store).await;

    let mut locked = lock_writes(&app.store).await;
    let before = generation(&mut locked).await;
    let signer = || app.shared.snapshot().key_sets[&set].signer.as_ref().unwrap().kid().to_owned();
    assert_eq!(signer(), old);
    let mut switched_at = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (seen, ms) = (signer(), now_ms());
        if seen == next.kid {
            switched_at = Some(ms);
            break;
        }
        assert_eq!(seen, old, "an unknown signer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let switched_at = switched_at.expect("the snapshot never switched to the next key");
    assert!(switched_at >= at * 1_000, "switched at {switched_at} ms, before the planned {at} s");
    // The served JWKS lists the signer first: it switched too, still under the lock.
    assert_eq!(first_published_kid(&app.http, &app.public).await, next.kid);
    assert_eq!(generation(&mut locked).await, before, "something was written at the hand-over");
    sqlx::query("ROLLBACK").execute(&mut *locked).await.unwrap();
    drop(locked);

    // Tokens signed now carry the new key and verify against the JWKS.
    let body = app.sign_ok(PROFILE, &token, &json!({"sub": "acct-1"})).await;
    assert_eq!(body["kid"], next.kid.as_str());
    assert!(body["issued_at"].as_i64().is_none_or(|iat| iat >= at));
    let jwks = app.jwks("/.well-known/jwks.json").await;
    verify(body["token"].as_str().unwrap(), &jwks).unwrap();
}

#[tokio::test]
async fn two_servers_on_one_database_switch_signer_at_the_same_instant() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    quick(&mut config);
    let mut a = serve(dir.path(), &config, "info");
    let mut b = serve(dir.path(), &config, "info");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut a).await && wait_healthy(&http, &mut b).await);
    let store = Store::open(config.database_path()).await.unwrap();
    let (old, next, at) = planned_handover(&store).await;

    // Neither server can write across the hand-over, so neither can tell the other.
    let mut locked = lock_writes(&store).await;
    let before = generation(&mut locked).await;
    let mut switched: [Option<i64>; 2] = [None, None];
    let deadline = Instant::now() + Duration::from_secs(20);
    while switched.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, server) in [&a, &b].into_iter().enumerate() {
            if switched[i].is_some() {
                continue;
            }
            let seen = first_published_kid(&http, &server.public).await;
            let answered = now_ms();
            if seen == next.kid {
                switched[i] = Some(answered);
            } else {
                assert_eq!(seen, old, "server {i} serves an unknown signer");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(generation(&mut locked).await, before, "something was written at the hand-over");
    sqlx::query("ROLLBACK").execute(&mut *locked).await.unwrap();
    drop(locked);
    drop((a, b));
    for (i, at_ms) in switched.iter().enumerate() {
        let at_ms = at_ms.unwrap_or_else(|| panic!("server {i} never switched to the next key"));
        // An answer naming the next key that came back before the instant would be early.
        assert!(at_ms >= at * 1_000, "server {i} served the next key at {at_ms} ms, before the planned {at} s");
    }
}

#[tokio::test]
async fn a_scheduler_pass_held_up_by_the_write_lock_publishes_with_full_notice_after_it() {
    let app = spawn_app_with(quick).await;
    let publish_ahead = app.config.key_sets[0].publish_ahead.as_secs_i64();
    let (old, next, at) = planned_handover(&app.store).await;

    // The pass that publishes the next key after the hand-over starts at `at` and waits for
    // the lock for three seconds: longer than the current key's period has left to run.
    let mut locked = lock_writes(&app.store).await;
    while now_ms() < at * 1_000 + 3_500 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut *locked).await.unwrap();
    drop(locked);
    let released = now_ms() / 1_000;

    let start = Instant::now();
    let published = loop {
        let keys = app.store.keys().await.unwrap();
        if let Some(key) = keys.iter().find(|k| k.kid != old && k.kid != next.kid && k.activates_at.is_some()) {
            break key.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no next key was published after the lock: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let activates_at = published.activates_at.unwrap();
    // The store counts whole seconds: the second the lock was released in is the earliest
    // the key can have been published.
    assert!(
        activates_at >= released + publish_ahead,
        "published after the lock was released (second {released}) to sign from {activates_at}: \
         less than publish_ahead ({publish_ahead} s) of notice"
    );
    assert!(published.published_at.is_some_and(|p| p >= released), "{published:?}");
}
