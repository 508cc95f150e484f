//! The store suite: every test runs on SQLite and on PostgreSQL (a real server started by
//! the tests), through the same `Store` the server uses.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::app::scheduler;
use keyward::keys::KeyState;
use keyward::store::issuance::Why;
use keyward::store::rows::{Entry, Filter};
use keyward::store::Store;
use serde_json::json;

use crate::helpers::{on_both_stores, spawn_app_on, Backend, TestApp};

const PROFILE: &str = "npm-sandbox";

/// Another process's handle on the app's database (a pool of its own).
async fn elsewhere(app: &TestApp) -> Store {
    Store::connect(&app.config.database()).await.unwrap()
}

fn entry(jti: &str, client: &str, kid: Option<&str>, iat: i64) -> Entry {
    Entry {
        jti: jti.to_owned(),
        profile: PROFILE.to_owned(),
        client: client.to_owned(),
        sub: Some(format!("sub-{jti}")),
        kid: kid.map(str::to_owned),
        alg: "ES256".to_owned(),
        iat,
        exp: iat + 60,
        claim_names: vec!["obo_user".to_owned()],
        client_generation: 0,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn current_kid(store: &Store) -> String {
    store.keys().await.unwrap().into_iter().find(|k| k.state_at(now()) == KeyState::Current).unwrap().kid
}

/// A key row as another writer might send it, bypassing keyward's own checks.
async fn raw_key(store: &Store, kid: &str, set: &str, from: i64, until: Option<i64>) -> Result<(), sqlx::Error> {
    let sql = |p: [&str; 4]| {
        format!(
            "INSERT INTO keys (kid, key_set, algorithm, public_jwk, created_at, activates_at, deactivates_at) \
             VALUES ({}, {}, 'ES256', '{{}}', 0, {}, {})",
            p[0], p[1], p[2], p[3]
        )
    };
    match store {
        Store::Sqlite(s) => {
            let query = sql(["?"; 4]);
            sqlx::query(&query).bind(kid).bind(set).bind(from).bind(until).execute(s.pool()).await.map(drop)
        }
        Store::Postgres(s) => {
            let query = sql(["$1", "$2", "$3", "$4"]);
            sqlx::query(&query).bind(kid).bind(set).bind(from).bind(until).execute(s.pool()).await.map(drop)
        }
    }
}

async fn raw(store: &Store, sql: &str) -> Result<(), sqlx::Error> {
    match store {
        Store::Sqlite(s) => sqlx::query(sql).execute(s.pool()).await.map(drop),
        Store::Postgres(s) => sqlx::query(sql).execute(s.pool()).await.map(drop),
    }
}

on_both_stores! {
    async fn the_schema_refuses_two_keys_of_a_set_signing_at_one_instant(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let url = backend.new_database_url(dir.path()).await;
        let store = Store::connect(&keyward::config::Database::parse(&url).unwrap()).await.unwrap();
        raw_key(&store, "a", "s", 0, Some(10)).await.unwrap();
        raw_key(&store, "b", "s", 10, None).await.unwrap();
        assert!(raw_key(&store, "c", "s", 15, None).await.is_err(), "two open-ended signers");
        assert!(raw_key(&store, "c", "s", 5, Some(6)).await.is_err(), "inside another's period");
        let stretched = raw(&store, "UPDATE keys SET deactivates_at = 12 WHERE kid = 'a'").await;
        assert!(stretched.is_err(), "a period stretched over its successor's");
        // An empty period (replaced within its first second) and another set are fine.
        raw_key(&store, "d", "s", 10, Some(10)).await.unwrap();
        raw_key(&store, "e", "t", 3, None).await.unwrap();
    }

    async fn concurrent_schedulers_take_each_rotation_step_once(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        assert_eq!(app.store.keys().await.unwrap().len(), 2);
        let set = &app.config.key_sets[0];
        // A moment when the rotation is due: six replicas decide it at once.
        let due = now() + set.rotate_every.as_secs_i64() + 1;
        let mut passes = Vec::new();
        for _ in 0..6 {
            let (store, shared, config) = (elsewhere(&app).await, Arc::clone(&app.shared), app.config.clone());
            passes.push(tokio::spawn(async move {
                scheduler::run_due(&store, shared.custody(), &config, &|| due, None).await
            }));
        }
        for pass in passes {
            pass.await.unwrap();
        }
        let keys = app.store.keys().await.unwrap();
        let count = |s: KeyState| keys.iter().filter(|k| k.state_at(due) == s).count();
        assert_eq!(keys.len(), 3, "one rotation makes one new key: {keys:?}");
        assert_eq!((count(KeyState::Current), count(KeyState::Next)), (1, 1), "{keys:?}");
    }

    async fn a_client_added_by_two_processes_at_once_exists_once(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        let mut adds = Vec::new();
        for _ in 0..4 {
            let (store, config) = (elsewhere(&app).await, app.config.clone());
            adds.push(tokio::spawn(async move {
                keyward::ops::clients::add(&store, &config, "backend", &[PROFILE.to_owned()], false, now()).await
            }));
        }
        let mut made = 0;
        for add in adds {
            match add.await.unwrap() {
                Ok(_) => made += 1,
                Err(keyward::ops::clients::ClientError::Exists(_)) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(made, 1);
        assert_eq!(app.store.clients().await.unwrap().len(), 1);
    }

    async fn a_ledger_row_of_a_revoked_key_or_client_is_refused_in_its_own_transaction(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        app.client("backend", &[PROFILE]).await;
        app.client("gone", &[PROFILE]).await;
        let revoked = current_kid(&app.store).await;
        keyward::ops::revoke(&app.store, app.shared.custody(), &app.config, &revoked).await.unwrap();
        keyward::ops::clients::revoke(&app.store, "gone", now()).await.unwrap();
        let signer = current_kid(&app.store).await;
        let rows = [
            entry("old-key", "backend", Some(&revoked), now()),
            entry("new-key", "backend", Some(&signer), now()),
            entry("no-key", "backend", None, now()),
            entry("gone-client", "gone", Some(&signer), now()),
            entry("unknown-key", "backend", Some("no-such-kid"), now()),
        ];
        let mut writer = app.store.issuance_writer(std::time::Duration::from_secs(2));
        let refused = writer.insert(&rows.iter().collect::<Vec<_>>()).await.unwrap();
        let why: Vec<Option<Why>> = rows.iter().map(|row| refused.why(row)).collect();
        assert_eq!(
            why,
            [Some(Why::KeyWithdrawn), None, None, Some(Why::ClientRevoked), Some(Why::KeyWithdrawn)],
            "old key, new key, no key, revoked client, unknown key"
        );
        let stored: HashSet<String> =
            app.store.issuance(&Filter::default(), 100).await.unwrap().into_iter().map(|e| e.jti).collect();
        assert_eq!(stored, HashSet::from(["new-key".to_owned(), "no-key".to_owned()]));
    }

    async fn in_a_burst_of_rows_only_those_of_a_revoked_key_or_client_are_left_out(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        app.client("backend", &[PROFILE]).await;
        app.client("gone", &[PROFILE]).await;
        let revoked = current_kid(&app.store).await;
        keyward::ops::revoke(&app.store, app.shared.custody(), &app.config, &revoked).await.unwrap();
        keyward::ops::clients::revoke(&app.store, "gone", now()).await.unwrap();
        let signer = current_kid(&app.store).await;
        // More rows than one statement takes, the refused ones in different statements.
        let rows: Vec<Entry> = (0..300)
            .map(|i| match i {
                7 | 150 => entry(&format!("r{i}"), "backend", Some(&revoked), now()),
                99 | 299 => entry(&format!("r{i}"), "gone", Some(&signer), now()),
                _ => entry(&format!("r{i}"), "backend", Some(&signer), now()),
            })
            .collect();
        let refused = app.store.issuance_writer(std::time::Duration::from_secs(2)).insert(&rows.iter().collect::<Vec<_>>()).await.unwrap();
        for (i, row) in rows.iter().enumerate() {
            let expected = match i {
                7 | 150 => Some(Why::KeyWithdrawn),
                99 | 299 => Some(Why::ClientRevoked),
                _ => None,
            };
            assert_eq!(refused.why(row), expected, "row {i}");
        }
        assert_eq!(app.store.counts().await.unwrap().issuance, 296);
    }

    async fn a_change_committed_by_another_process_is_heard(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        let mut changes = app.store.changes().await.unwrap();
        changes.next().await.unwrap();
        let before = app.store.generation().await.unwrap();
        let other = elsewhere(&app).await;
        let mut heard = Vec::new();
        for round in 0..20 {
            let (store, seen) = (app.store.clone(), app.store.generation().await.unwrap());
            let waiting = tokio::spawn(async move {
                loop {
                    changes.next().await.unwrap();
                    if store.generation().await.unwrap() > seen {
                        return changes;
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            let committed = Instant::now();
            keyward::ops::clients::add(&other, &app.config, &format!("c{round}"), &[PROFILE.to_owned()], false, now())
                .await
                .unwrap();
            changes = tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("no change heard").unwrap();
            heard.push(committed.elapsed());
        }
        assert_eq!(app.store.generation().await.unwrap(), before + 20);
        heard.sort();
        println!(
            "{backend:?}: a change is heard {:?} (median), {:?} (slowest of 20) after its transaction began",
            heard[10], heard[19]
        );
    }

    async fn the_ledger_is_queried_and_pruned_alike(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        app.client("alpha", &[PROFILE]).await;
        app.client("beta", &[PROFILE]).await;
        let kid = current_kid(&app.store).await;
        let t = now();
        let rows: Vec<Entry> = (0..600)
            .map(|i| entry(&format!("jti-{i:04}"), if i % 3 == 0 { "alpha" } else { "beta" }, Some(&kid), t - 1_000 + i))
            .collect();
        let refused = app.store.issuance_writer(std::time::Duration::from_secs(2)).insert(&rows.iter().collect::<Vec<_>>()).await.unwrap();
        assert!(rows.iter().all(|row| refused.why(row).is_none()), "{refused:?}");
        let alpha = Filter { client: Some("alpha".to_owned()), ..Filter::default() };
        let found = app.store.issuance(&alpha, 1_000).await.unwrap();
        assert_eq!(found.len(), 200);
        assert_eq!(found[0], rows[597], "newest first, every field kept");
        let window = Filter { since: Some(t - 1_000 + 10), until: Some(t - 1_000 + 20), ..Filter::default() };
        assert_eq!(app.store.issuance(&window, 1_000).await.unwrap().len(), 10);
        assert_eq!(app.store.prune_issuance(t - 1_000 + 100).await.unwrap(), 100);
        assert_eq!(app.store.counts().await.unwrap().issuance, 500);
    }

    async fn migrate_store_copies_everything_from_sqlite_and_verifies_the_counts(backend: Backend) {
        let source = spawn_app_on(Backend::Sqlite, |_| {}).await;
        let token = source.client("backend", &[PROFILE]).await;
        keyward::ops::clients::add(&source.store, &source.config, "old", &[PROFILE.to_owned()], false, now())
            .await
            .unwrap();
        keyward::ops::clients::revoke(&source.store, "old", now()).await.unwrap();
        let mut jtis = Vec::new();
        for i in 0..5 {
            jtis.push(source.sign_ok(PROFILE, &token, &json!({"sub": format!("s{i}")})).await["jti"].clone());
        }
        let dir = tempfile::tempdir().unwrap();
        let target = Store::connect(
            &keyward::config::Database::parse(&backend.new_database_url(dir.path()).await).unwrap(),
        )
        .await
        .unwrap();
        let counts = keyward::ops::migrate_store::migrate_store(&source.store, &target).await.unwrap();
        assert_eq!((counts.keys, counts.clients, counts.issuance), (2, 2, 5));
        // Oldest first in both; keys of the same second in either order.
        let by_kid = |mut keys: Vec<keyward::keys::KeyRecord>| {
            keys.sort_by(|a, b| a.kid.cmp(&b.kid));
            keys
        };
        let as_json = |keys: Vec<keyward::keys::KeyRecord>| serde_json::to_value(by_kid(keys)).unwrap();
        assert_eq!(
            as_json(target.keys().await.unwrap()),
            as_json(source.store.keys().await.unwrap()),
            "keys copied as they are"
        );
        let sealed =
            |keys: Vec<keyward::keys::KeyRecord>| by_kid(keys).iter().map(|k| k.sealed().map(|(blob, _)| blob.to_vec())).collect::<Vec<_>>();
        assert_eq!(sealed(target.keys().await.unwrap()), sealed(source.store.keys().await.unwrap()), "still sealed");
        let ledger = target.issuance(&Filter::default(), 10).await.unwrap();
        assert_eq!(ledger, source.store.issuance(&Filter::default(), 10).await.unwrap());
        // The audit trail comes along, chains intact, and still walks clean on the target.
        let all = keyward::audit::EventFilter::default();
        let copied = target.events(&all, None, 1000).await.unwrap();
        for event in source.store.events(&all, None, 1000).await.unwrap() {
            assert!(copied.contains(&event), "{event:?} not copied");
        }
        let verified = keyward::ops::audit::verify(&target, None).await.unwrap();
        assert!(verified.problems.is_empty(), "{:?}", verified.problems);
        // A second run refuses: the target is no longer empty.
        let again = keyward::ops::migrate_store::migrate_store(&source.store, &target).await.unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again}");
    }

    async fn a_key_revoked_by_another_process_signs_nothing_once_the_revoke_returned(backend: Backend) {
        // 240 requests from one client as fast as they go: above the default burst of 200.
        let app = Arc::new(
            spawn_app_on(backend, |c| {
                c.server.rate_limit = 100_000;
                c.server.rate_burst = 100_000;
            })
            .await,
        );
        let token = app.client("backend", &[PROFILE]).await;
        let revoked = current_kid(&app.store).await;
        let revoked_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let mut signers = Vec::new();
        for n in 0..4 {
            let (app, token, revoked_at) = (Arc::clone(&app), token.clone(), Arc::clone(&revoked_at));
            signers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..60 {
                    let sent = Instant::now();
                    let response = app.sign(PROFILE, &token, &json!({"sub": format!("{n}-{i}")})).await;
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.unwrap();
                    let after_revoke = revoked_at.lock().unwrap().is_some_and(|at| sent > at);
                    seen.push((status, body, after_revoke));
                }
                seen
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let other = elsewhere(&app).await;
        keyward::ops::revoke(&other, app.shared.custody(), &app.config, &revoked).await.unwrap();
        *revoked_at.lock().unwrap() = Some(Instant::now());
        let mut issued = Vec::new();
        for signer in signers {
            for (status, body, after_revoke) in signer.await.unwrap() {
                assert_eq!(status, 200, "{body}");
                if after_revoke {
                    assert_ne!(body["kid"], revoked.as_str(), "the revoked key signed after the revoke returned");
                }
                issued.push(body["jti"].as_str().unwrap().to_owned());
            }
        }
        let rows: HashSet<String> =
            app.store.issuance(&Filter::default(), 10_000).await.unwrap().into_iter().map(|e| e.jti).collect();
        assert!(issued.iter().all(|jti| rows.contains(jti)), "a 200 without its ledger row");
    }

    async fn a_client_added_or_revoked_by_another_process_counts_on_the_very_next_request(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        let other = elsewhere(&app).await;
        for round in 0..5 {
            let name = format!("c{round}");
            let token =
                keyward::ops::clients::add(&other, &app.config, &name, &[PROFILE.to_owned()], false, now()).await.unwrap();
            app.sign_ok(PROFILE, &token, &json!({"sub": "a"})).await;
            keyward::ops::clients::revoke(&other, &name, now()).await.unwrap();
            let refused = app.sign(PROFILE, &token, &json!({"sub": "b"})).await;
            assert_eq!(refused.status(), 401, "round {round}: a revoked client was served");
        }
    }

    async fn a_shared_secret_set_by_another_process_signs_at_once_and_replaces_the_old(backend: Backend) {
        let app = spawn_app_on(backend, |c| c.profiles.push(crate::helpers::partner_api())).await;
        let token = app.client("backend", &["partner-api"]).await;
        let other = elsewhere(&app).await;
        for secret in [b"first-partner-secret-0123456789-abcdefghijklmnop".as_slice(), b"second-partner-secret-9876543210-zyxwvutsrqponml"] {
            keyward::ops::secrets::set(&other, &app.keyring(), &app.config, "partner-api", secret, now()).await.unwrap();
            // The watcher follows within moments; the test waits for it, generously.
            let signed = app
                .eventually(Duration::from_secs(10), || async {
                    let response = app.sign("partner-api", &token, &json!({})).await;
                    if response.status() != 200 {
                        return false;
                    }
                    let body: serde_json::Value = response.json().await.unwrap();
                    crate::keys_and_secrets::verify_hmac::<hmac::Hmac<sha2::Sha256>>(body["token"].as_str().unwrap(), secret).is_ok()
                })
                .await;
            assert!(signed, "the server did not sign with the secret another process set");
        }
        assert_eq!(app.store.secrets().await.unwrap().len(), 1, "replaced, not added");
    }

    async fn partner_observations_keep_a_holdings_first_sighting_and_prune_all_but_the_latest(backend: Backend) {
        use keyward::keys::gate::Holding;
        use keyward::store::rows::{Observations, PartnerFetches};
        let dir = tempfile::tempdir().unwrap();
        let url = backend.new_database_url(dir.path()).await;
        let store = Store::connect(&keyward::config::Database::parse(&url).unwrap()).await.unwrap();
        let fetch = |partner: &str, etag: &str, at: i64| PartnerFetches {
            partner: partner.into(),
            key_set: "s".into(),
            address: "127.0.0.2".into(),
            etag: etag.into(),
            count: 1,
            first_at: at,
            last_at: at,
        };
        let holding =
            |kid: &str, at: i64| Holding { partner: "p".into(), key_set: "s".into(), kid: kid.into(), first_seen: at, last_seen: at };
        let batch = |fetches, holdings| Observations { fetches, holdings, unmatched: Vec::new() };
        let before = store.generation().await.unwrap();
        store.record_observations(&batch(vec![fetch("p", "e1", 10), fetch("q", "e1", 11)], vec![holding("k", 10)])).await.unwrap();
        assert_eq!(store.generation().await.unwrap(), before + 1, "a new holding makes servers reload");
        store.record_observations(&batch(vec![fetch("p", "e2", 50)], vec![holding("k", 50)])).await.unwrap();
        assert_eq!(store.generation().await.unwrap(), before + 1, "a known holding does not");
        let held = store.partner_holdings().await.unwrap();
        assert_eq!((held[0].first_seen, held[0].last_seen), (10, 50));
        assert_eq!(store.prune_partner_fetches(40).await.unwrap(), 1, "p's old row goes; q's only row stays");
        let left: Vec<(String, i64)> =
            store.partner_fetches_since(0).await.unwrap().into_iter().map(|f| (f.partner, f.last_at)).collect();
        assert_eq!(left, [("q".to_owned(), 11), ("p".to_owned(), 50)]);
        let mut last = store.partner_last_fetches().await.unwrap();
        last.sort();
        assert_eq!(last, [("p".to_owned(), 50), ("q".to_owned(), 11)]);
    }
}
