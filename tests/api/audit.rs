//! The audit trail: every administrative change recorded with who, what, before/after and
//! why, through the CLI and the admin API; read back with `audit events` and
//! `GET /v1/events`; and `audit verify` naming the record someone removed, altered,
//! reordered or inserted.

use std::path::Path;

use serde_json::{json, Value};

use keyward::config::Database;
use keyward::store::Store;

use crate::helpers::{
    keyward, keyward_bare, on_both_stores, serve, spawn_app, spawn_app_on, spawn_app_with, test_config, text,
    wait_healthy, Backend, Serve, TestApp,
};

/// Every event `audit events --json` prints, oldest first.
fn cli_events(dir: &Path, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "events", "--json"];
    args.extend_from_slice(filters);
    let out = keyward(dir, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// The one event of `action` on `object`.
fn the<'a>(events: &'a [Value], action: &str, object: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["action"] == action && e["object"] == object).collect();
    assert_eq!(found.len(), 1, "one {action} of {object} in {events:#?}");
    found[0]
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = keyward(dir, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn each_cli_action_is_recorded_with_the_os_user_host_pid_object_before_after_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    run_ok(path, &["--init", "keys", "rotate", "npm", "--force", "--reason", "first keys"]);
    let token = run_ok(path, &["clients", "add", "ci", "--profiles", "npm-sandbox", "--reason", "onboarding ci"]);
    let rotated = run_ok(path, &["clients", "rotate", "ci", "--reason", "token seen in a log"]);
    run_ok(path, &["clients", "update", "ci", "--permission", "keys:read", "--reason", "dashboards"]);
    run_ok(path, &["clients", "revoke", "ci"]);
    let pem = path.join("imported.pem");
    let rsa = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    std::fs::write(&pem, rsa.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let pem = pem.to_str().unwrap();
    run_ok(path, &["keys", "import", "npm", "--pem", pem, "--replace-next", "--reason", "key of the old issuer"]);
    let keys: Value = serde_json::from_str(&run_ok(path, &["keys", "list", "--json"])).unwrap();
    let signer =
        keys.as_array().unwrap().iter().find(|k| k["state"] == "current").unwrap()["kid"].as_str().unwrap().to_owned();
    run_ok(path, &["keys", "revoke", &signer, "--reason", "INC-1234 key material exposed"]);

    let events = cli_events(path, &[]);
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok();
    for event in &events {
        assert_eq!(event["actor"]["kind"], "cli", "{event}");
        assert!(event["actor"]["pid"].as_u64().is_some_and(|pid| pid > 0), "{event}");
        assert!(event["actor"]["host"].is_string(), "{event}");
        if let Some(user) = &user {
            // keyward_bare clears the environment: the user falls back to the uid.
            assert!(
                event["actor"]["user"] == user.as_str() || event["actor"]["user"].as_str().unwrap().starts_with("uid "),
                "{event}"
            );
        }
        let line = event.to_string();
        for secret in [token.trim(), rotated.trim()] {
            assert!(!line.contains(secret), "a token in {line}");
        }
    }
    let revoked = the(&events, "key.revoked", &format!("key:{signer}"));
    assert_eq!(revoked["reason"], "INC-1234 key material exposed");
    assert_eq!(revoked["before"]["status"], "live");
    assert_eq!(revoked["after"]["status"], "revoked");
    let imported: Vec<&Value> = events.iter().filter(|e| e["action"] == "key.imported").collect();
    assert_eq!(imported.len(), 1, "{events:#?}");
    assert_eq!(
        (&imported[0]["reason"], &imported[0]["after"]["key_set"]),
        (&json!("key of the old issuer"), &json!("npm"))
    );
    assert_eq!(imported[0]["before"], Value::Null);
    let first: Vec<&Value> = events.iter().filter(|e| e["reason"] == "first keys").collect();
    assert_eq!(first.len(), 2, "current and next: {events:#?}");
    assert!(first.iter().all(|e| e["action"] == "key.generated" && e["after"]["key_set"] == "npm"));
    // The revocation made the next key sign at once, and a new next key: the same reason.
    let after_revoke: Vec<&str> = events
        .iter()
        .filter(|e| e["reason"] == "INC-1234 key material exposed")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(after_revoke, ["key.revoked", "key.rotated", "key.generated"]);

    let added = the(&events, "client.added", "client:ci");
    assert_eq!((&added["reason"], &added["after"]["profiles"]), (&json!("onboarding ci"), &json!(["npm-sandbox"])));
    assert_eq!(added["before"], Value::Null);
    let rotated_event = the(&events, "client.rotated", "client:ci");
    assert_eq!(rotated_event["reason"], "token seen in a log");
    let changed = the(&events, "client.changed", "client:ci");
    assert_eq!(
        (&changed["before"]["permissions"], &changed["after"]["permissions"]),
        (&json!([]), &json!(["keys:read"])),
        "{changed}"
    );
    assert!(changed["before"].get("profiles").is_none(), "only what changed: {changed}");
    let gone = the(&events, "client.revoked", "client:ci");
    assert_eq!((&gone["before"]["revoked_at"], gone.get("reason")), (&Value::Null, None), "{gone}");

    // Filters: by action family, by object, by actor.
    let client_events = cli_events(path, &["--object", "client:"]);
    assert_eq!(client_events.len(), 4, "{client_events:#?}");
    assert_eq!(cli_events(path, &["--action", "key.revoked"]).len(), 1);
    let actor =
        events[0]["actor"]["user"].as_str().unwrap().to_owned() + "@" + events[0]["actor"]["host"].as_str().unwrap();
    assert_eq!(cli_events(path, &["--actor", &actor]).len(), events.len());
    assert_eq!(cli_events(path, &["--actor", "someone-else"]).len(), 0);

    let out = keyward(path, &["audit", "verify"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

#[tokio::test]
async fn admin_api_rotations_and_revocations_are_recorded_with_the_client_address_request_id_and_reason() {
    let app = spawn_app().await;
    let (token, _) = keyward::ops::clients::create(
        &app.store,
        &app.config,
        "ops-bot",
        &[],
        false,
        keyward::ops::clients::ClientOptions {
            permissions: ["keys:rotate", "keys:revoke", "events:read"].iter().map(|p| p.parse().unwrap()).collect(),
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap();
    app.reload().await;
    let rotate = app
        .http
        .post(format!("{}/v1/key-sets/npm/rotate", app.internal))
        .bearer_auth(token.as_str())
        .header("x-request-id", "req-rotate-1")
        .json(&json!({"force": true, "reason": "quarterly drill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotate.status(), 200);
    let new_signer = rotate.json::<Value>().await.unwrap()["signing_kid"].as_str().unwrap().to_owned();
    let revoke = app
        .http
        .post(format!("{}/v1/keys/{new_signer}/revoke", app.internal))
        .bearer_auth(token.as_str())
        .header("x-request-id", "req-revoke-1")
        .json(&json!({"reason": "INC-77"}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200, "{}", revoke.text().await.unwrap());

    let page: Value = app
        .http
        .get(format!("{}/v1/events?actor=ops-bot", app.internal))
        .bearer_auth(token.as_str())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    let rotated = the(events, "key.rotated", &format!("key:{new_signer}"));
    assert_eq!(
        rotated["actor"],
        json!({"kind": "admin", "client": "ops-bot", "remote": "127.0.0.1", "request_id": "req-rotate-1"})
    );
    assert_eq!((&rotated["reason"], &rotated["after"]["forced"]), (&json!("quarterly drill"), &json!(true)));
    assert_eq!(rotated["after"]["status"], "live");
    let revoked = the(events, "key.revoked", &format!("key:{new_signer}"));
    assert_eq!((&revoked["actor"]["request_id"], &revoked["reason"]), (&json!("req-revoke-1"), &json!("INC-77")));
    assert_eq!((&revoked["before"]["status"], &revoked["after"]["status"]), (&json!("live"), &json!("revoked")));

    // Paged: one event a page, each page after the last.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let after = next.as_ref().map(|n| format!("&after={n}")).unwrap_or_default();
        let page: Value = app
            .http
            .get(format!("{}/v1/events?actor=ops-bot&limit=1{after}", app.internal))
            .bearer_auth(token.as_str())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(token) => next = Some(token.to_owned()),
            None => break,
        }
    }
    assert_eq!(&seen, events);

    // The server's own start is recorded, with its version and a digest of its configuration.
    let started: Value = app
        .http
        .get(format!("{}/v1/events?action=server.started", app.internal))
        .bearer_auth(token.as_str())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let started = &started["events"][0];
    assert_eq!(started["after"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(started["after"]["config_sha256"].as_str().unwrap().len(), 64);
}

/// Runs `sql` on `store`'s database, as someone with write access to it might.
async fn tamper(store: &Store, sql: &str) {
    match store {
        Store::Sqlite(s) => sqlx::query(sql).execute(s.pool()).await.map(drop),
        Store::Postgres(s) => sqlx::query(sql).execute(s.pool()).await.map(drop),
    }
    .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

/// `keyward audit verify` on `url` (with `--checkpoint` when given): exit success, stdout.
fn verify(dir: &Path, url: &str, checkpoint: Option<&Path>) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    if let Some(file) = checkpoint {
        args.extend(["--checkpoint", file.to_str().unwrap()]);
    }
    let out = keyward_bare(dir, &args).env("KEYWARD_DATABASE_URL", url).output().unwrap();
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

/// A store with one writer's chain of five events (five clients added: a, b, c, d, e),
/// its writer, and its heads as `audit heads` prints them, in `dir`/heads.json.
async fn five_events(backend: Backend, dir: &Path) -> (Store, String, String) {
    let url = backend.new_database_url(dir).await;
    let store = Store::connect(&Database::parse(&url).unwrap()).await.unwrap();
    let config = keyward::config::Config::default();
    for name in ["a", "b", "c", "d", "e"] {
        keyward::ops::clients::add(&store, &config, name, &["npm-sandbox".to_owned()], false, 0).await.unwrap();
    }
    let writer = store.trail().writer.to_string();
    let out = keyward_bare(dir, &["audit", "heads"]).env("KEYWARD_DATABASE_URL", &url).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(dir.join("heads.json"), &out.stdout).unwrap();
    (store, writer, url)
}

/// The hash `audit verify` expects of an event row (the README's "Audit" spells it out):
/// SHA-256, in hex, of the previous hash and each field length-prefixed.
fn event_hash(prev: &str, fields: &[Option<&str>]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(prev.as_bytes());
    for field in fields {
        match field {
            None => hash.update(b"N"),
            Some(text) => {
                hash.update(b"S");
                hash.update((text.len() as u64).to_be_bytes());
                hash.update(text.as_bytes());
            }
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

on_both_stores! {
    async fn audit_verify_names_each_removed_altered_reordered_inserted_or_truncated_event(backend: Backend) {
        // Untouched: clean.
        let dir = tempfile::tempdir().unwrap();
        let (_store, _, url) = five_events(backend, dir.path()).await;
        let (ok, said) = verify(dir.path(), &url, Some(&dir.path().join("heads.json")));
        assert!(ok && said.contains("checked 5 event(s) of 1 writer(s)"), "{said}");

        // A middle event deleted.
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, url) = five_events(backend, dir.path()).await;
        tamper(&store, &format!("DELETE FROM events WHERE writer = '{writer}' AND seq = 3")).await;
        let (ok, said) = verify(dir.path(), &url, None);
        assert!(!ok && said.contains(&format!("REMOVED events record writer {writer} seq 3, just before client.added client:d")), "{said}");

        // An event edited (the client it names).
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, url) = five_events(backend, dir.path()).await;
        tamper(&store, &format!("UPDATE events SET object = 'client:x' WHERE writer = '{writer}' AND seq = 3")).await;
        let (ok, said) = verify(dir.path(), &url, None);
        assert!(!ok && said.contains("ALTERED events record client.added client:x") && said.contains(&format!("(writer {writer}, seq 3)")), "{said}");

        // Two events swapped.
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, url) = five_events(backend, dir.path()).await;
        for (from, to) in [(2, -1), (3, 2), (-1, 3)] {
            tamper(&store, &format!("UPDATE events SET seq = {to} WHERE writer = '{writer}' AND seq = {from}")).await;
        }
        let (ok, said) = verify(dir.path(), &url, None);
        assert!(!ok && said.contains("REORDERED events record client.added client:c") && said.contains("stands at seq 2 but was written at seq 3"), "{said}");

        // A forged event, hashed as keyward would, claiming to follow the third.
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, url) = five_events(backend, dir.path()).await;
        let third = store.event_chains().await.unwrap().into_iter().map(|(_, e)| e).find(|e| e.seq == 3).unwrap();
        let actor = r#"{"kind":"cli","user":"mallory","host":"h","pid":1}"#;
        let hash = event_hash(&third.hash, &[Some(&writer), Some("6"), Some("1"), Some(actor), Some("mallory@h"),
            Some("client.added"), Some("client:mallory"), None, Some("{}"), None]);
        tamper(&store, &format!(
            "INSERT INTO events (writer, seq, at, actor, actor_name, action, object, before, after, reason, prev_hash, hash) \
             VALUES ('{writer}', 6, 1, '{actor}', 'mallory@h', 'client.added', 'client:mallory', NULL, '{{}}', NULL, '{}', '{hash}')",
            third.hash
        )).await;
        let (ok, said) = verify(dir.path(), &url, None);
        assert!(!ok && said.contains("INSERTED events record client.added client:mallory at 1") && said.contains(&format!("(writer {writer}, seq 6)")), "{said}");

        // The newest event deleted: nothing follows it, so only the heads kept outside catch it.
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, url) = five_events(backend, dir.path()).await;
        tamper(&store, &format!("DELETE FROM events WHERE writer = '{writer}' AND seq = 5")).await;
        let (ok, said) = verify(dir.path(), &url, None);
        assert!(ok, "without the heads a removed tail cannot be told: {said}");
        let (ok, said) = verify(dir.path(), &url, Some(&dir.path().join("heads.json")));
        assert!(!ok && said.contains(&format!("TRUNCATED events writer {writer}: its last record is seq 4, the checkpoint holds seq 5")), "{said}");
    }
}

/// An app on `backend` that issued `n` tokens one after another (subjects s0, s1, ...),
/// with its ledger rows as (writer, seq, jti) in chain order, and `audit heads` in
/// heads.json of its folder.
async fn ledger_of(backend: Backend, n: usize) -> (TestApp, Vec<(String, i64, String)>) {
    let app = spawn_app_on(backend, |_| {}).await;
    let token = app.client("backend", &["npm-sandbox"]).await;
    for i in 0..n {
        app.sign_ok("npm-sandbox", &token, &json!({"sub": format!("s{i}")})).await;
    }
    const SQL: &str = "SELECT writer, seq, jti FROM issuance ORDER BY seq";
    let rows: Vec<(String, i64, String)> = match &app.store {
        Store::Sqlite(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
    }
    .unwrap();
    assert_eq!(rows.len(), n);
    let out = keyward_bare(app.dir.path(), &["audit", "heads"])
        .env("KEYWARD_DATABASE_URL", &app.config.server.database_url)
        .output()
        .unwrap();
    std::fs::write(app.dir.path().join("heads.json"), &out.stdout).unwrap();
    (app, rows)
}

fn verify_app(app: &TestApp, with_heads: bool) -> (bool, String) {
    let heads = app.dir.path().join("heads.json");
    verify(app.dir.path(), &app.config.server.database_url, with_heads.then_some(heads.as_path()))
}

on_both_stores! {
    async fn audit_verify_names_each_removed_altered_reordered_inserted_or_truncated_ledger_row(backend: Backend) {
        let (app, _) = ledger_of(backend, 6).await;
        let (ok, said) = verify_app(&app, true);
        assert!(ok && said.contains("6 ledger row(s) of 1 writer(s)"), "{said}");

        // A middle row deleted.
        let (app, rows) = ledger_of(backend, 6).await;
        let (writer, _, third) = &rows[2];
        tamper(&app.store, &format!("DELETE FROM issuance WHERE jti = '{third}'")).await;
        let (ok, said) = verify_app(&app, false);
        let fourth = &rows[3].2;
        assert!(!ok && said.contains(&format!("REMOVED ledger record writer {writer} seq 3, just before jti {fourth}")), "{said}");

        // A sub edited.
        let (app, rows) = ledger_of(backend, 6).await;
        tamper(&app.store, &format!("UPDATE issuance SET sub = 'someone-else' WHERE jti = '{}'", rows[1].2)).await;
        let (ok, said) = verify_app(&app, false);
        assert!(!ok && said.contains(&format!("ALTERED ledger record jti {}", rows[1].2)) && said.contains("seq 2)"), "{said}");

        // Two rows swapped.
        let (app, rows) = ledger_of(backend, 6).await;
        let writer = &rows[0].0;
        for (from, to) in [(4, -1), (5, 4), (-1, 5)] {
            tamper(&app.store, &format!("UPDATE issuance SET seq = {to} WHERE writer = '{writer}' AND seq = {from}")).await;
        }
        let (ok, said) = verify_app(&app, false);
        assert!(!ok && said.contains(&format!("REORDERED ledger record jti {}", rows[4].2)) && said.contains("stands at seq 4 but was written at seq 5"), "{said}");

        // A forged row, without a chain, among chained ones.
        let (app, _) = ledger_of(backend, 6).await;
        tamper(&app.store, &format!(
            "INSERT INTO issuance (jti, profile, client, sub, kid, alg, iat, exp, claim_names) \
             VALUES ('forged-jti', 'npm-sandbox', 'backend', 'mallory', NULL, 'ES256', {}, {}, '[]')",
            crate::helpers::now(), crate::helpers::now() + 60
        )).await;
        let (ok, said) = verify_app(&app, false);
        assert!(!ok && said.contains("INSERTED ledger record jti forged-jti"), "{said}");

        // The newest rows deleted: caught against the heads kept outside.
        let (app, rows) = ledger_of(backend, 6).await;
        tamper(&app.store, &format!("DELETE FROM issuance WHERE jti IN ('{}', '{}')", rows[4].2, rows[5].2)).await;
        let (ok, said) = verify_app(&app, false);
        assert!(ok, "{said}");
        let (ok, said) = verify_app(&app, true);
        assert!(!ok && said.contains(&format!("TRUNCATED ledger writer {}: its last record is seq 4, the checkpoint holds seq 6", rows[0].0)), "{said}");
    }

    async fn pruning_keeps_the_ledger_chain_verifiable_from_the_oldest_kept_row(backend: Backend) {
        let (app, rows) = ledger_of(backend, 6).await;
        // The first three rows are made old, then pruned as retention would.
        let old = crate::helpers::now() - 86_400;
        for (_, seq, _) in &rows[..3] {
            tamper(&app.store, &format!("UPDATE issuance SET iat = {old} WHERE seq = {seq}")).await;
        }
        // (The hash covers iat: put the rows back as written, then let the prune drop them.)
        let (ok, said) = verify_app(&app, false);
        assert!(!ok && said.contains("ALTERED ledger record"), "iat is covered: {said}");
        let pruned = app.store.prune_issuance(old + 1).await.unwrap();
        assert_eq!(pruned, 3);
        let (ok, said) = verify_app(&app, true);
        assert!(ok && said.contains("3 ledger row(s)"), "{said}");
        let events = app.store.events(&keyward::audit::EventFilter { action: Some("ledger.pruned".into()), ..Default::default() }, None, 10).await.unwrap();
        assert_eq!(events[0].after.as_ref().unwrap()["first_kept"][&rows[0].0][0], 4);
        // The oldest kept row deleted by hand is not taken for a prune.
        tamper(&app.store, &format!("DELETE FROM issuance WHERE jti = '{}'", rows[3].2)).await;
        let (ok, said) = verify_app(&app, false);
        assert!(!ok && said.contains(&format!("REMOVED ledger record writer {} seq 4", rows[0].0)), "{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_an_untouched_store_after_ten_thousand_tokens_from_two_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.key_sets[0].algorithm = keyward::keys::Algorithm::Es256;
    // As fast as the replicas sign: no client limit.
    (config.server.rate_limit, config.server.rate_burst) = (1_000_000, 1_000_000);
    config.server.database_url = crate::postgres::fresh_database().await;
    crate::replicas::write_master_key(dir.path());
    let http = reqwest::Client::new();
    let mut replicas: Vec<Serve> = (0..2).map(|_| serve(dir.path(), &config, "info")).collect();
    for replica in &mut replicas {
        assert!(wait_healthy(&http, replica).await, "a replica did not come up");
    }
    let store = Store::connect(&config.database()).await.unwrap();
    let token = keyward::ops::clients::add(&store, &config, "backend", &["npm-sandbox".to_owned()], false, 0)
        .await
        .unwrap()
        .to_string();
    // Both replicas see the new client within their watch interval.
    for replica in &replicas {
        let url = format!("{}/v1/profiles/npm-sandbox/sign", replica.internal);
        let seen = crate::helpers::eventually(std::time::Duration::from_secs(10), || {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                let sent = http.post(&url).bearer_auth(&token).json(&json!({"sub": "warm-up"})).send().await;
                sent.is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        assert!(seen, "a replica did not take the new client");
    }
    const TOKENS: usize = 10_000;
    const TASKS: usize = 16;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let url = format!("{}/v1/profiles/npm-sandbox/sign", replicas[task % 2].internal);
        let (http, token) = (http.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            for i in (task..TOKENS - 2).step_by(TASKS) {
                let response = http.post(&url).bearer_auth(&token).json(&json!({"sub": format!("u{i}")})).send().await;
                assert_eq!(response.unwrap().status(), 200);
                done += 1;
            }
            done
        }));
    }
    let mut issued = 2;
    for task in tasks {
        issued += task.await.unwrap();
    }
    assert_eq!(issued, TOKENS);
    for replica in &mut replicas {
        assert!(replica.terminate(std::time::Duration::from_secs(20)).await.is_some_and(|s| s.success()));
    }
    let (ok, said) = verify(dir.path(), &config.server.database_url, None);
    assert!(ok && said.contains(&format!("{TOKENS} ledger row(s) of 2 writer(s)")), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_are_recorded_and_verify_catches_a_truncated_ledger_against_one() {
    let app = spawn_app_with(|c| {
        let mut audit = c.key_sets[0].clone();
        audit.name = "audit".to_owned();
        audit.algorithm = keyward::keys::Algorithm::Es256;
        audit.jwks_paths = vec!["/audit/jwks.json".to_owned()];
        c.key_sets.push(audit);
        c.server.audit_checkpoint_key_set = Some("audit".to_owned());
        c.server.audit_checkpoint_interval = keyward::config::Duration::from_secs(1);
    })
    .await;
    let token = app.client("backend", &["npm-sandbox"]).await;
    for i in 0..3 {
        app.sign_ok("npm-sandbox", &token, &json!({"sub": format!("s{i}")})).await;
    }
    // A checkpoint taken after the three rows.
    let filter = keyward::audit::EventFilter { action: Some("audit.checkpoint".into()), ..Default::default() };
    let mut found = None;
    for _ in 0..50 {
        let events = app.store.events(&filter, None, 100).await.unwrap();
        found = events.into_iter().find(|e| {
            let ledger = &e.after.as_ref().unwrap()["heads"]["ledger"];
            ledger.as_object().is_some_and(|heads| heads.values().any(|head| head[0] == 3))
        });
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let checkpoint = found.expect("a checkpoint holding the third ledger row");
    let kid = checkpoint.after.as_ref().unwrap()["kid"].as_str().unwrap().to_owned();
    assert!(app.jwks("/audit/jwks.json").await["keys"].as_array().unwrap().iter().any(|k| k["kid"] == kid.as_str()));
    let file = app.dir.path().join("checkpoint.json");
    std::fs::write(&file, serde_json::to_string(&checkpoint).unwrap()).unwrap();
    let url = &app.config.server.database_url;
    let (ok, said) = verify(app.dir.path(), url, Some(&file));
    assert!(ok && said.contains(&format!("signature valid (key {kid} of key set audit)")), "{said}");

    // A checkpoint whose signed part was altered is refused.
    let mut forged = checkpoint.clone();
    let jws = forged.after.as_ref().unwrap()["jws"].as_str().unwrap().to_owned();
    let (signed, signature) = jws.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    forged.after.as_mut().unwrap()["jws"] = json!(format!("{signed}.{flipped}{}", &signature[1..]));
    std::fs::write(&file, serde_json::to_string(&forged).unwrap()).unwrap();
    let (ok, said) = verify(app.dir.path(), url, Some(&file));
    assert!(!ok && said.contains(&format!("does not verify with key {kid}")), "{said}");

    // The newest ledger row deleted: the walk alone cannot tell, the checkpoint can.
    std::fs::write(&file, serde_json::to_string(&checkpoint).unwrap()).unwrap();
    tamper(&app.store, "DELETE FROM issuance WHERE seq = 3").await;
    let (ok, said) = verify(app.dir.path(), url, None);
    assert!(ok, "{said}");
    let (ok, said) = verify(app.dir.path(), url, Some(&file));
    assert!(
        !ok && said.contains("TRUNCATED ledger writer")
            && said.contains("its last record is seq 2, the checkpoint holds seq 3"),
        "{said}"
    );
}

#[test]
fn audit_events_follow_prints_each_new_event_once_as_a_json_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    run_ok(path, &["--init", "keys", "rotate", "npm", "--force"]);
    let mut child = crate::helpers::keyward_command(path, &["audit", "events", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next =
        || -> Value { serde_json::from_str(&rx.recv_timeout(std::time::Duration::from_secs(15)).unwrap()).unwrap() };
    assert_eq!((next()["action"].clone(), next()["action"].clone()), (json!("key.generated"), json!("key.generated")));
    run_ok(path, &["clients", "add", "ci", "--profiles", "npm-sandbox", "--reason", "followed"]);
    let added = next();
    assert_eq!((&added["action"], &added["reason"]), (&json!("client.added"), &json!("followed")));
    run_ok(path, &["clients", "revoke", "ci"]);
    assert_eq!(next()["action"], "client.revoked");
    // Printed once: nothing more comes while nothing changes.
    assert!(rx.recv_timeout(std::time::Duration::from_secs(3)).is_err(), "an event printed twice");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The events of `backend`'s database at `url`, as `audit events --json` prints them.
fn events_at(dir: &Path, url: &str, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "events", "--json"];
    args.extend_from_slice(filters);
    let out = keyward_bare(dir, &args).env("KEYWARD_DATABASE_URL", url).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

on_both_stores! {
    async fn master_key_rotation_and_reseal_are_recorded_with_the_cli_actor_sources_terms_counts_and_reason_and_no_key(backend: Backend) {
        use crate::master_key::{cli, key_file, with_keys};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let mut config = test_config(path);
        config.key_sets[0].algorithm = keyward::keys::Algorithm::Es256;
        config.server.database_url = backend.new_database_url(path).await;
        let url = config.server.database_url.clone();
        let (old_path, old) = key_file(path, "old.key");
        let (new_path, new) = key_file(path, "new.key");
        let old_only = with_keys(&config, &old_path, None);
        let rotating = with_keys(&config, &new_path, Some(&old_path));
        let new_only = with_keys(&config, &new_path, None);
        let ok = |config: &keyward::config::Config, args: &[&str]| {
            let out = cli(path, config, args);
            assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
            text(&out.stdout)
        };
        ok(&old_only, &["--init", "keys", "rotate", "npm", "--force"]);
        let status: Value = serde_json::from_str(&ok(&old_only, &["master-key", "status", "--json"])).unwrap();
        let sealed: i64 = status["terms"].as_array().unwrap().iter().map(|t| t["sealed"].as_i64().unwrap()).sum();
        assert!(sealed >= 2, "{status}");

        ok(&rotating, &["master-key", "rotate", "--reason", "CHG-42 yearly master key change"]);
        // Nothing to do the second time: nothing recorded.
        ok(&rotating, &["master-key", "rotate", "--reason", "again"]);
        ok(&new_only, &["master-key", "reseal", "--settle", "0s", "--reason", "after CHG-42"]);

        let events = events_at(path, &url, &["--object", "keyring"]);
        assert_eq!(events.len(), 2, "{events:#?}");
        for event in &events {
            assert_eq!(event["actor"]["kind"], "cli", "{event}");
            assert!(event["actor"]["pid"].as_u64().is_some_and(|pid| pid > 0), "{event}");
            assert!(event["actor"]["host"].is_string() && event["actor"]["user"].is_string(), "{event}");
            // No key material: neither master key, in base64 or hex, nor a key's id.
            let line = event.to_string();
            for (file, key) in [(&old_path, &old), (&new_path, &new)] {
                let encoded = std::fs::read_to_string(file).unwrap();
                let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim()).unwrap();
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                for secret in [encoded.trim(), &hex, key.id()] {
                    assert!(!line.contains(secret), "{secret} in {line}");
                }
            }
        }
        let rotated = the(&events, "master_key.rotated", "keyring");
        assert_eq!(rotated["reason"], "CHG-42 yearly master key change");
        assert_eq!((&rotated["before"]["source"], &rotated["after"]["source"]), (&json!("file"), &json!("file")));
        let origin = |side: &str| rotated[side]["origin"].as_str().unwrap().to_owned();
        assert!(origin("before").contains("old.key") && origin("after").contains("new.key"), "{rotated}");
        assert!(rotated["after"]["rotated_at"].as_i64().unwrap() >= rotated["before"]["rotated_at"].as_i64().unwrap());
        let resealed = the(&events, "master_key.resealed", "keyring");
        assert_eq!(resealed["reason"], "after CHG-42");
        assert_eq!((&resealed["before"]["terms"], &resealed["after"]["terms"]), (&json!([1, 2]), &json!([2])), "{resealed}");
        assert_eq!((&resealed["after"]["rewritten"], &resealed["after"]["sealed"]), (&json!(sealed), &json!(sealed)), "{resealed}");

        let (ok, said) = verify(path, &url, None);
        assert!(ok, "{said}");
    }
}

/// The gate events of `app` on `key:KID`, oldest first.
async fn gate_events(app: &TestApp, kid: &str) -> Vec<Value> {
    let filter = keyward::audit::EventFilter {
        object: Some(format!("key:{kid}")),
        action: Some("gate.".to_owned()),
        ..Default::default()
    };
    let events = app.store.events(&filter, None, 100).await.unwrap();
    events.iter().map(|e| serde_json::to_value(e).unwrap()).collect()
}

/// Waits (up to 20 s, while `fetching` keeps fetching the JWKS) until `app` has recorded
/// `action` on `key:KID`.
async fn wait_for_gate_event(app: &TestApp, kid: &str, action: &str, fetching: &reqwest::Client) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let events = gate_events(app, kid).await;
        if events.iter().any(|e| e["action"] == action) {
            return events;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "no {action} of key:{kid}: {events:#?}");
        crate::gates::fetch(fetching, &app.public).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Scheduler passes as a second replica (or this one after a restart) would make them: a
/// store handle of its own, so a writer of its own.
async fn passes_of_another_replica(app: &TestApp) {
    let other = Store::connect(&app.config.database()).await.unwrap();
    let scheduling = keyward::app::scheduler::scheduler_store(&other);
    for _ in 0..2 {
        keyward::app::scheduler::run_due(&scheduling, app.shared.custody(), &app.config, &crate::helpers::now, None)
            .await;
    }
}

/// `event` was made by a replica's scheduler, on its own chain.
fn by_the_scheduler(event: &Value) {
    assert_eq!(event["actor"]["kind"], "scheduler", "{event}");
    assert_eq!(event["actor"]["replica"], event["writer"], "{event}");
}

on_both_stores! {
    async fn a_held_gate_is_recorded_once_and_then_its_release_by_the_scheduler(backend: Backend) {
        use crate::gates::{client_from, fast, fetch, partner, planned, signer};
        let app = spawn_app_on(backend, |c| {
            fast(c);
            let alpha = partner(c, "alpha", "127.0.0.2", "gate_max_wait = \"2s\"");
            let beta = partner(c, "beta", "127.0.0.3", "");
            c.partners = vec![alpha, beta];
        })
        .await;
        let (alpha, beta) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
        let (current, next) = planned(&app.store).await;
        let held_since = next.activates_at.unwrap() + 2;

        // Beta holds the next key, alpha never fetched it: past the wait, it holds.
        let events = wait_for_gate_event(&app, &next.kid, "gate.held", &beta).await;
        assert_eq!(signer(&app.public).await, current);
        let held = the(&events, "gate.held", &format!("key:{}", next.kid));
        by_the_scheduler(held);
        assert_eq!(
            held["after"],
            json!({"key_set": "npm", "next_kid": next.kid, "missing": ["alpha"], "held_since": held_since}),
            "{held}"
        );
        assert_eq!((held.get("before"), held.get("reason")), (None, None), "{held}");
        // Not again: at later passes, nor from another replica, nor after a restart.
        passes_of_another_replica(&app).await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert_eq!(gate_events(&app, &next.kid).await.len(), 1, "{:#?}", gate_events(&app, &next.kid).await);

        // Alpha's first fetch releases it.
        fetch(&alpha, &app.public).await;
        let events = wait_for_gate_event(&app, &next.kid, "gate.released", &beta).await;
        let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["gate.held", "gate.released"], "{events:#?}");
        let released = &events[1];
        by_the_scheduler(released);
        assert_eq!(released["before"], json!({"held_for": []}), "{released}");
        assert_eq!((&released["after"]["key_set"], &released["after"]["confirmed"]), (&json!("npm"), &json!(true)));
        assert!(released["after"]["at"].as_i64().unwrap() > held_since, "{released}");

        let (ok, said) = verify(app.dir.path(), &app.config.server.database_url, None);
        assert!(ok, "{said}");
    }

    async fn a_held_gate_that_times_out_records_gate_held_then_gate_timed_out(backend: Backend) {
        use crate::gates::{client_from, fast, fetch, partner, planned, signer};
        // Alpha holds past its wait; beta would proceed. While neither fetched, alpha's hold
        // wins; once alpha fetches, only beta is missing and its wait is over: it proceeds.
        let app = spawn_app_on(backend, |c| {
            fast(c);
            let alpha = partner(c, "alpha", "127.0.0.2", "gate_max_wait = \"2s\"");
            let beta = partner(c, "beta", "127.0.0.3", "gate_max_wait = \"2s\"\non_gate_timeout = \"proceed\"");
            c.partners = vec![alpha, beta];
        })
        .await;
        let alpha = client_from("127.0.0.2");
        let nobody = reqwest::Client::new();
        let (current, next) = planned(&app.store).await;
        let held_since = next.activates_at.unwrap() + 2;

        let events = wait_for_gate_event(&app, &next.kid, "gate.held", &nobody).await;
        assert_eq!(signer(&app.public).await, current);
        let held = the(&events, "gate.held", &format!("key:{}", next.kid));
        by_the_scheduler(held);
        assert_eq!(held["after"]["missing"], json!(["alpha", "beta"]), "{held}");
        assert_eq!(held["after"]["held_since"], held_since, "{held}");
        passes_of_another_replica(&app).await;

        fetch(&alpha, &app.public).await;
        let events = wait_for_gate_event(&app, &next.kid, "gate.timed_out", &nobody).await;
        let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["gate.held", "gate.timed_out"], "{events:#?}");
        let timed_out = &events[1];
        by_the_scheduler(timed_out);
        assert_eq!(timed_out["before"], json!({"held_for": ["beta"]}), "{timed_out}");
        assert_eq!(
            timed_out["after"],
            json!({"key_set": "npm", "at": held_since, "confirmed": false}),
            "{timed_out}"
        );
        assert_eq!(signer(&app.public).await, next.kid);

        let (ok, said) = verify(app.dir.path(), &app.config.server.database_url, None);
        assert!(ok, "{said}");
    }
}
