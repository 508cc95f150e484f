//! The audit trail, one action at a time: each change made through the CLI, the admin API
//! or the scheduler is read back with its actor, object, before/after and reason; ledger
//! rows a revocation refused are recorded so that `audit verify` accounts for them; and no
//! event holds a token, a shared secret, private key bytes or the master key.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use keyward::app::scheduler;
use keyward::app::snapshot::Shared;
use keyward::audit::EventFilter;
use keyward::config::Duration as Span;
use keyward::keys::{Algorithm, KeyRecord, KeyState};
use keyward::seal::MasterKey;
use keyward::startup::Application;
use keyward::store::rows::Entry;
use keyward::store::Store;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{
    contains, keyward, keyward_bare, now, on_both_stores, partner_api, spawn_app_on, test_config, text, TestApp,
};
use crate::keys_and_secrets::{keyward_with_stdin, spawn_for_cli, write_keys_toml};

/// Every event whose action is `action` (or of its family, e.g. `key.`), oldest first.
async fn events(store: &Store, action: &str) -> Vec<Value> {
    let filter = EventFilter { action: Some(action.to_owned()), ..Default::default() };
    let found = store.events(&filter, None, 1_000).await.unwrap();
    found.iter().map(|event| serde_json::to_value(event).unwrap()).collect()
}

/// The one event of `action` on `object`.
async fn one(store: &Store, action: &str, object: &str) -> Value {
    let filter = EventFilter { action: Some(action.to_owned()), object: Some(object.to_owned()), ..Default::default() };
    let found = store.events(&filter, None, 100).await.unwrap();
    assert_eq!(found.len(), 1, "one {action} of {object}: {found:#?}");
    serde_json::to_value(&found[0]).unwrap()
}

/// Runs the binary in `dir`; fails the test unless it succeeds; its standard output.
fn cli_ok(dir: &Path, args: &[&str]) -> String {
    let out = keyward(dir, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The actor of a command run by the tests: the CLI, with a pid.
fn assert_cli_actor(event: &Value) {
    assert_eq!(event["actor"]["kind"], "cli", "{event}");
    assert!(event["actor"]["pid"].as_u64().is_some_and(|pid| pid > 0), "{event}");
    assert!(event["actor"]["user"].is_string() && event["actor"]["host"].is_string(), "{event}");
}

/// `keyward audit verify` on the database at `url`: whether it exits 0, and what it said.
fn verify(dir: &Path, url: &str) -> (bool, String) {
    let out = keyward_bare(dir, &["audit", "verify"]).env("KEYWARD_DATABASE_URL", url).output().unwrap();
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

/// The key of the first set in `state` at `at`.
fn key_in(keys: &[KeyRecord], state: KeyState, at: i64) -> KeyRecord {
    keys.iter().find(|k| k.state_at(at) == state).unwrap_or_else(|| panic!("no {state:?} key in {keys:?}")).clone()
}

/// A PKCS#8 PEM of a new P-256 key, written to `dir`/`name`.
fn p256_pem(dir: &Path, name: &str) -> std::path::PathBuf {
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key = openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    path
}

/// A replica built over a folder the binary shares (keys.toml, master key file) whose
/// background tasks do not run: its keys were made by its scheduler as it started, and
/// from then on only the test's commands and the scheduler passes it drives at the times
/// it chooses change them.
async fn replica_not_running(dir: &Path) -> std::sync::Arc<Shared> {
    let mut config = test_config(dir);
    config.key_sets[0].algorithm = Algorithm::Es256;
    let (master, _) = MasterKey::resolve(None, &config.server.master_key_file, true).unwrap();
    write_keys_toml(dir, &config);
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    Application::build_on(config, master, 1, bind(), bind()).await.expect("application builds").shared()
}

/// One pass of `shared`'s scheduler, as if the time were `at`.
async fn scheduler_pass(shared: &Shared, at: i64) {
    let store = scheduler::scheduler_store(shared.store());
    scheduler::run_due(&store, shared.custody(), shared.config(), &|| at, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedulers_key_generations_hand_over_plans_and_retirements_name_its_replica() {
    let dir = tempfile::tempdir().unwrap();
    let shared = replica_not_running(dir.path()).await;
    let store = shared.store();
    let replica = store.trail().writer.to_string();
    let scheduler = json!({"kind": "scheduler", "replica": replica});
    let started = one(store, "server.started", &format!("replica:{replica}")).await;
    assert_eq!(started["actor"], json!({"kind": "server", "replica": replica}));

    // The set's first keys, made by the scheduler as the replica started: no reason.
    let keys = store.keys().await.unwrap();
    let (first, next) = (key_in(&keys, KeyState::Current, now()), key_in(&keys, KeyState::Next, now()));
    for key in [&first, &next] {
        let made = one(store, "key.generated", &format!("key:{}", key.kid)).await;
        assert_eq!(made["actor"], scheduler, "{made}");
        assert!(made.get("reason").is_none() && made.get("before").is_none(), "{made}");
        assert_eq!(
            (&made["after"]["key_set"], &made["after"]["status"], &made["after"]["activates_at"]),
            (&json!("npm"), &json!("live"), &json!(key.activates_at)),
            "{made}"
        );
    }

    // An imported key signs at once: the next key's planned start followed the replaced
    // signer's end, so the import takes it away and the scheduler plans it again.
    let pem = p256_pem(dir.path(), "imported.pem");
    let reason = "the old issuer's key";
    cli_ok(
        dir.path(),
        &["keys", "import", "npm", "--pem", pem.to_str().unwrap(), "--activate", "--force", "--reason", reason],
    );
    let imported = events(store, "key.imported").await;
    assert_eq!(imported.len(), 1, "{imported:#?}");
    assert_cli_actor(&imported[0]);
    assert_eq!(imported[0]["reason"], reason);
    scheduler_pass(&shared, now()).await;
    let planned = one(store, "key.handover_planned", &format!("key:{}", next.kid)).await;
    assert_eq!(planned["actor"], scheduler, "{planned}");
    assert!(planned.get("reason").is_none(), "{planned}");
    let starts = store.key(&next.kid).await.unwrap().unwrap().activates_at.expect("planned again");
    assert_eq!(
        (&planned["before"]["activates_at"], &planned["after"]["activates_at"]),
        (&Value::Null, &json!(starts)),
        "{planned}"
    );
    assert_eq!((&planned["before"]["status"], &planned["after"]["status"]), (&json!("live"), &json!("live")));

    // The replaced signer leaves the JWKS once its tokens have expired and retain_after
    // passed: the scheduler retires it and destroys its private half.
    let ended = store.key(&first.kid).await.unwrap().unwrap().deactivates_at.expect("replaced");
    let policy = shared.config().policy(&shared.config().key_sets[0]);
    scheduler_pass(&shared, ended + policy.retain_for - 1).await;
    assert!(events(store, "key.retired").await.is_empty(), "retired a second early");
    scheduler_pass(&shared, ended + policy.retain_for).await;
    let retired = one(store, "key.retired", &format!("key:{}", first.kid)).await;
    assert_eq!(retired["actor"], scheduler, "{retired}");
    assert!(retired.get("reason").is_none(), "{retired}");
    assert_eq!((&retired["before"]["status"], &retired["after"]["status"]), (&json!("live"), &json!("retired")));
    assert_eq!(retired["before"]["deactivates_at"], json!(ended), "{retired}");
    let record = store.key(&first.kid).await.unwrap().unwrap();
    assert!(record.private().is_none() && record.sealed().is_none(), "the private half remains");

    // At the planned start the next key signs: that hand-over writes nothing (who signs
    // follows from the stored instants), and the scheduler publishes a successor.
    scheduler_pass(&shared, starts).await;
    let generated = events(store, "key.generated").await;
    assert_eq!(generated.len(), 3, "{generated:#?}");
    let successor = &generated[2];
    assert_eq!(successor["actor"], scheduler, "{successor}");
    assert_eq!(successor["after"]["activates_at"], json!(starts + policy.rotate_every), "{successor}");
    assert!(events(store, "key.rotated").await.is_empty(), "a planned hand-over writes no key");
    let (ok, said) = verify(dir.path(), &shared.config().server.database_url);
    assert!(ok, "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_left_without_a_signing_key_is_rotated_by_the_scheduler_and_recorded_as_its() {
    let dir = tempfile::tempdir().unwrap();
    let shared = replica_not_running(dir.path()).await;
    let store = shared.store();
    let keys = store.keys().await.unwrap();
    let (current, next) = (key_in(&keys, KeyState::Current, now()), key_in(&keys, KeyState::Next, now()));
    // As a database put back by hand might be: the signer's period over, the next key
    // published but with no planned start.
    let ended = now() - 1;
    for sql in [
        format!("UPDATE keys SET activates_at = NULL WHERE kid = '{}'", next.kid),
        format!("UPDATE keys SET activates_at = {ended}, deactivates_at = {ended} WHERE kid = '{}'", current.kid),
    ] {
        sqlx::query(&sql).execute(crate::helpers::sqlite(store)).await.unwrap();
    }
    scheduler_pass(&shared, now()).await;
    let rotated = one(store, "key.rotated", &format!("key:{}", next.kid)).await;
    assert_eq!(rotated["actor"], json!({"kind": "scheduler", "replica": store.trail().writer.to_string()}));
    assert!(rotated.get("reason").is_none(), "{rotated}");
    assert_eq!((&rotated["before"]["activates_at"], &rotated["after"]["forced"]), (&Value::Null, &json!(true)));
    assert!(rotated["after"]["activates_at"].as_i64().is_some_and(|at| at >= ended), "{rotated}");
    let generated = events(store, "key.generated").await;
    assert_eq!(generated.len(), 3, "the first two and the new next key: {generated:#?}");
    assert_eq!(generated[2]["actor"], rotated["actor"]);
}

/// publish_ahead of 3 s: a next key may sign without force 3 s after it was published.
fn quick_publication(config: &mut keyward::config::Config) {
    let set = &mut config.key_sets[0];
    set.algorithm = Algorithm::Es256;
    set.jwks_max_age = Span::from_secs(2);
    set.clock_skew = Span::from_secs(1);
    set.publish_ahead = Span::from_secs(3);
}

/// Waits until the set's next key has been published for publish_ahead; returns it.
async fn next_key_ready(app: &TestApp) -> KeyRecord {
    let next = key_in(&app.store.keys().await.unwrap(), KeyState::Next, now());
    let ready = next.published_at.unwrap() + app.config.key_sets[0].publish_ahead.as_secs_i64();
    while now() < ready {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_rotations_through_the_cli_and_the_admin_api_are_recorded_as_not_forced() {
    let app = spawn_for_cli(quick_publication).await;
    let (token, _) = keyward::ops::clients::create(
        &app.store,
        &app.config,
        "deployer",
        &[],
        false,
        keyward::ops::clients::ClientOptions {
            permissions: vec!["keys:rotate".parse().unwrap()],
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap();
    app.reload().await;

    // Through the CLI, once the next key was published for publish_ahead: ahead of its
    // planned start, and not forced.
    let next = next_key_ready(&app).await;
    cli_ok(app.dir.path(), &["keys", "rotate", "npm", "--reason", "new signer before the freeze"]);
    let rotated = one(&app.store, "key.rotated", &format!("key:{}", next.kid)).await;
    assert_cli_actor(&rotated);
    assert_eq!(rotated["reason"], "new signer before the freeze");
    assert_eq!(rotated["after"]["forced"], false, "{rotated}");
    assert_eq!(rotated["before"]["activates_at"], json!(next.activates_at), "{rotated}");
    let started = rotated["after"]["activates_at"].as_i64().unwrap();
    assert!(started < next.activates_at.unwrap() && started <= now(), "{rotated}");
    let successor = key_in(&app.store.keys().await.unwrap(), KeyState::Next, now());
    let made = one(&app.store, "key.generated", &format!("key:{}", successor.kid)).await;
    assert_eq!((&made["actor"], &made["reason"]), (&rotated["actor"], &rotated["reason"]));

    // Through the admin API, no force in the body.
    let next = next_key_ready(&app).await;
    let response = app
        .http
        .post(format!("{}/v1/key-sets/npm/rotate", app.internal))
        .bearer_auth(token.as_str())
        .header("x-request-id", "req-planned-1")
        .json(&json!({"reason": "planned by the deploy pipeline"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let rotated = one(&app.store, "key.rotated", &format!("key:{}", next.kid)).await;
    assert_eq!(
        rotated["actor"],
        json!({"kind": "admin", "client": "deployer", "remote": "127.0.0.1", "request_id": "req-planned-1"})
    );
    assert_eq!(
        (&rotated["reason"], &rotated["after"]["forced"]),
        (&json!("planned by the deploy pipeline"), &json!(false))
    );

    // Forced at once: its successor was published only now.
    let next = key_in(&app.store.keys().await.unwrap(), KeyState::Next, now());
    cli_ok(app.dir.path(), &["keys", "rotate", "npm", "--force", "--reason", "INC-9"]);
    let rotated = one(&app.store, "key.rotated", &format!("key:{}", next.kid)).await;
    assert_eq!((&rotated["reason"], &rotated["after"]["forced"]), (&json!("INC-9"), &json!(true)), "{rotated}");
}

/// A folder the binary works in, with the partner-api shared-secret profile configured.
fn cli_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.key_sets[0].algorithm = Algorithm::Es256;
    config.profiles.push(partner_api());
    write_keys_toml(dir.path(), &config);
    cli_ok(dir.path(), &["--init", "keys", "list"]);
    dir
}

const SHARED_SECRET: &[u8] = b"partner-api-shared-secret-0123456789abcdefXYZ";
const SECOND_SECRET: &[u8] = b"partner-api-replacement-secret-9876543210-zyxwvu";

/// What a secret may look like written down: its bytes, hex, base64 (both alphabets,
/// padded or not), and the same of its SHA-256.
fn encodings(secret: &[u8]) -> Vec<String> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut all = Vec::new();
    for bytes in [secret.to_vec(), Sha256::digest(secret).to_vec()] {
        all.extend([
            hex(&bytes),
            hex(&bytes).to_uppercase(),
            STANDARD.encode(&bytes),
            STANDARD_NO_PAD.encode(&bytes),
            URL_SAFE.encode(&bytes),
            URL_SAFE_NO_PAD.encode(&bytes),
        ]);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            all.push(text.to_owned());
        }
    }
    all
}

#[test]
fn client_and_secret_changes_through_the_cli_carry_their_reason_and_only_what_changed() {
    let dir = cli_folder();
    let path = dir.path();
    let token =
        cli_ok(path, &["clients", "add", "ci", "--profiles", "npm-sandbox", "--rate", "10", "--reason", "onboarding"]);
    cli_ok(path, &["clients", "update", "ci", "--profiles", "npm-sandbox,partner-api", "--reason", "partner calls"]);
    cli_ok(path, &["clients", "update", "ci", "--rate", "50", "--reason", "nightly batch"]);
    cli_ok(path, &["clients", "update", "ci", "--default-rate"]);
    let rotated = cli_ok(path, &["clients", "rotate", "ci", "--grace", "1h", "--reason", "rolling the token out"]);
    cli_ok(path, &["clients", "revoke", "ci", "--reason", "the pipeline was retired"]);
    for (secret, reason) in [(SHARED_SECRET, "partner onboarding"), (SECOND_SECRET, "partner rotated its secret")] {
        let out = keyward_with_stdin(path, &["secrets", "set", "partner-api", "--reason", reason], secret);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    let url = format!("sqlite://{}", path.join("keyward.db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (clients, secrets) = runtime.block_on(async {
        let store = Store::connect(&keyward::config::Database::parse(&url).unwrap()).await.unwrap();
        (events(&store, "client.").await, events(&store, "secret.set").await)
    });
    let actions: Vec<&str> = clients.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["client.added", "client.changed", "client.changed", "client.changed", "client.rotated", "client.revoked"]
    );
    for event in clients.iter().chain(&secrets) {
        assert_cli_actor(event);
    }
    let [added, changed, limited, unlimited, rotation, revoked] = &clients[..] else { unreachable!() };
    assert_eq!((&added["object"], &added["reason"]), (&json!("client:ci"), &json!("onboarding")));
    assert_eq!((&added["after"]["rate_limit"], &added["after"]["rate_burst"]), (&json!(10), &json!(20)), "{added}");

    // A change names only the fields it changed.
    assert_eq!(changed["reason"], "partner calls");
    assert_eq!(changed["before"], json!({"profiles": ["npm-sandbox"]}), "{changed}");
    assert_eq!(changed["after"], json!({"profiles": ["npm-sandbox", "partner-api"]}), "{changed}");
    assert_eq!(limited["reason"], "nightly batch");
    assert_eq!(limited["before"], json!({"rate_limit": 10, "rate_burst": 20}), "{limited}");
    assert_eq!(limited["after"], json!({"rate_limit": 50, "rate_burst": 100}), "{limited}");
    assert!(unlimited.get("reason").is_none(), "{unlimited}");
    assert_eq!(unlimited["after"], json!({"rate_limit": null, "rate_burst": null}), "{unlimited}");

    assert_eq!(rotation["reason"], "rolling the token out");
    assert_eq!(rotation["before"], json!({"previous_token_until": null}), "{rotation}");
    let until = rotation["after"]["previous_token_until"].as_i64().unwrap();
    assert!((3_590..=3_610).contains(&(until - rotation["at"].as_i64().unwrap())), "one hour's grace: {rotation}");

    assert_eq!(revoked["reason"], "the pipeline was retired");
    assert_eq!(revoked["before"]["revoked_at"], Value::Null, "{revoked}");
    assert!(revoked["after"]["revoked_at"].as_i64().is_some(), "{revoked}");

    // A secret's setting: its dates, never the secret, its hash or any encoding of them.
    let [first, second] = &secrets[..] else { panic!("two settings: {secrets:#?}") };
    assert_eq!((&first["object"], &first["reason"]), (&json!("profile:partner-api"), &json!("partner onboarding")));
    assert!(first.get("before").is_none(), "{first}");
    assert_eq!(second["reason"], "partner rotated its secret");
    assert_eq!(second["before"]["created_at"], first["after"]["created_at"], "{second}");
    assert_eq!(second["after"]["created_at"], first["after"]["created_at"], "{second}");
    let mut needles: Vec<String> = [SHARED_SECRET, SECOND_SECRET].into_iter().flat_map(encodings).collect();
    for token in [token.trim(), rotated.trim()] {
        let secret_part = token.rsplit('_').next().unwrap();
        needles.push(token.to_owned());
        needles.extend(encodings(secret_part.as_bytes()));
    }
    for event in clients.iter().chain(&secrets) {
        let line = event.to_string();
        for needle in &needles {
            assert!(!line.contains(needle.as_str()), "{needle} in {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_changed_by_clients_update_applies_on_the_next_request() {
    let app = spawn_for_cli(|c| c.key_sets[0].algorithm = Algorithm::Es256).await;
    let path = app.dir.path();
    let token = cli_ok(path, &["clients", "add", "batch", "--profiles", "npm-sandbox", "--rate", "1", "--burst", "1"]);
    let token = token.trim();
    app.reload().await;
    app.sign_ok("npm-sandbox", token, &json!({"sub": "first"})).await;
    assert_eq!(app.sign("npm-sandbox", token, &json!({"sub": "second"})).await.status(), 429);

    cli_ok(path, &["clients", "update", "batch", "--rate", "1000", "--burst", "1000", "--reason", "nightly batch"]);
    // The server hears the change from the database, as from any other process: then a
    // burst the old limit (one a second) would refuse passes.
    let raised = app
        .eventually(Duration::from_secs(10), || async {
            for _ in 0..3 {
                if app.sign("npm-sandbox", token, &json!({"sub": "again"})).await.status() != 200 {
                    return false;
                }
            }
            true
        })
        .await;
    assert!(raised, "the new limit did not apply");
    for i in 0..20 {
        app.sign_ok("npm-sandbox", token, &json!({"sub": format!("s{i}")})).await;
    }
    let changed = one(&app.store, "client.changed", "client:batch").await;
    assert_eq!(
        (&changed["before"], &changed["after"]),
        (&json!({"rate_limit": 1, "rate_burst": 1}), &json!({"rate_limit": 1000, "rate_burst": 1000}))
    );
    let refused = keyward(path, &["clients", "update", "batch", "--rate", "0"]);
    assert!(!refused.status.success() && text(&refused.stderr).contains("at least 1"), "{}", text(&refused.stderr));
}

/// A ledger row of `client` signed by `kid`.
fn row(jti: &str, client: &str, kid: &str) -> Entry {
    Entry {
        jti: jti.to_owned(),
        profile: "npm-sandbox".to_owned(),
        client: client.to_owned(),
        sub: Some(format!("sub-{jti}")),
        kid: Some(kid.to_owned()),
        alg: "ES256".to_owned(),
        iat: now(),
        exp: now() + 60,
        claim_names: Vec::new(),
        client_generation: 0,
    }
}

/// The ledger's rows as (writer, seq, jti, prev_hash, hash), in chain order.
async fn ledger_rows(store: &Store) -> Vec<(String, i64, String, String, String)> {
    const SQL: &str = "SELECT writer, seq, jti, prev_hash, hash FROM issuance ORDER BY writer, seq";
    match store {
        Store::Sqlite(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
        Store::Postgres(s) => sqlx::query_as(SQL).fetch_all(s.pool()).await,
    }
    .unwrap()
}

on_both_stores! {
    async fn ledger_rows_a_revocation_refused_are_recorded_as_withheld_and_verify_steps_over_them(backend: Backend) {
        let app = spawn_app_on(backend, |c| c.key_sets[0].algorithm = Algorithm::Es256).await;
        app.client("backend", &["npm-sandbox"]).await;
        app.client("gone", &["npm-sandbox"]).await;
        let revoked = key_in(&app.store.keys().await.unwrap(), KeyState::Current, now()).kid;
        keyward::ops::revoke(&app.store, app.shared.custody(), &app.config, &revoked).await.unwrap();
        keyward::ops::clients::revoke(&app.store, "gone", now()).await.unwrap();
        let signer = key_in(&app.store.keys().await.unwrap(), KeyState::Current, now()).kid;

        // Rows chained before their commit found the revocations: one in the middle of a
        // commit, one at the end of the next, and a commit after it.
        let mut writer = app.store.issuance_writer(Duration::from_secs(2));
        let batches = [
            vec![row("a", "backend", &signer), row("b", "backend", &revoked), row("c", "backend", &signer)],
            vec![row("d", "backend", &signer), row("e", "gone", &signer)],
            vec![row("f", "backend", &signer)],
        ];
        for batch in &batches {
            writer.insert(&batch.iter().collect::<Vec<_>>()).await.unwrap();
        }
        let rows = ledger_rows(&app.store).await;
        let jtis: Vec<(i64, &str)> = rows.iter().map(|(_, seq, jti, _, _)| (*seq, jti.as_str())).collect();
        assert_eq!(jtis, [(1, "a"), (3, "c"), (4, "d"), (6, "f")]);
        let ledger_writer = &rows[0].0;

        let withheld = events(&app.store, "ledger.withheld").await;
        assert_eq!(withheld.len(), 2, "{withheld:#?}");
        for event in &withheld {
            // Chained as the ledger writer's own events, recorded by the commit that refused the rows.
            assert_eq!((&event["object"], &event["writer"]), (&json!(format!("ledger:{ledger_writer}")), &json!(ledger_writer)));
            assert_eq!(event["actor"], json!({"kind": "server", "replica": app.store.trail().writer.to_string()}));
            assert!(event.get("before").is_none() && event.get("reason").is_none(), "{event}");
        }
        let held = |i: usize| withheld[i]["after"]["withheld"].as_array().unwrap().clone();
        let (b, e) = (held(0), held(1));
        assert_eq!((b.len(), &b[0]["jti"], &b[0]["seq"]), (1, &json!("b"), &json!(2)), "{b:?}");
        assert_eq!((e.len(), &e[0]["jti"], &e[0]["seq"]), (1, &json!("e"), &json!(5)), "{e:?}");
        // Each withheld link sits between its neighbours' links.
        let (a, c, d, f) = (&rows[0], &rows[1], &rows[2], &rows[3]);
        assert_eq!((&b[0]["prev_hash"], &b[0]["hash"]), (&json!(a.4), &json!(c.3)));
        assert_eq!((&e[0]["prev_hash"], &e[0]["hash"]), (&json!(d.4), &json!(f.3)));

        let (ok, said) = verify(app.dir.path(), &app.config.server.database_url);
        assert!(ok && said.contains("4 ledger row(s) of 1 writer(s)"), "{said}");
    }
}

/// Every column of every `events` row, as text, one string per row.
async fn event_rows(app: &TestApp) -> Vec<String> {
    type Row = (
        String,
        i64,
        i64,
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT writer, seq, at, actor, actor_name, action, object, before, after, reason, prev_hash, hash FROM events",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| {
            let optional = |text: Option<String>| text.unwrap_or_default();
            [
                r.0,
                r.1.to_string(),
                r.2.to_string(),
                r.3,
                r.4,
                r.5,
                r.6,
                optional(r.7),
                optional(r.8),
                optional(r.9),
                r.10,
                r.11,
            ]
            .join(" ")
        })
        .collect()
}

/// Stretches of `der` (the PKCS#8 bytes of a private key) as they could be written down:
/// 24-byte windows of the bytes, and 32-character windows of their hex and base64.
fn private_stretches(der: &[u8]) -> (Vec<Vec<u8>>, Vec<String>) {
    let bytes = der.windows(24).step_by(8).map(<[u8]>::to_vec).collect();
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    let mut texts = Vec::new();
    for encoded in [hex, STANDARD.encode(der), URL_SAFE_NO_PAD.encode(der)] {
        let chars: Vec<char> = encoded.chars().collect();
        texts.extend(chars.windows(32).step_by(8).map(|w| w.iter().collect::<String>()));
    }
    // The private scalar alone, as a JWK's "d" would carry it.
    let key = openssl::pkey::PKey::private_key_from_der(der).unwrap();
    let d = key.ec_key().unwrap().private_key().to_vec();
    texts.extend(encodings(&d));
    (bytes, texts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_holds_a_token_a_shared_secret_private_key_bytes_or_the_master_key() {
    let app = spawn_for_cli(|c| {
        c.key_sets[0].algorithm = Algorithm::Es256;
        c.profiles.push(partner_api());
    })
    .await;
    let path = app.dir.path();
    let mut tokens = vec![cli_ok(path, &["clients", "add", "ci", "--profiles", "npm-sandbox,partner-api"])];
    tokens.push(cli_ok(path, &["clients", "rotate", "ci", "--grace", "1h"]));
    tokens.push(cli_ok(path, &["clients", "rotate", "ci"]));
    for secret in [SHARED_SECRET, SECOND_SECRET] {
        assert!(keyward_with_stdin(path, &["secrets", "set", "partner-api"], secret).status.success());
    }
    let pem = p256_pem(path, "imported.pem");
    let imported_der = openssl::pkey::PKey::private_key_from_pem(&std::fs::read(&pem).unwrap())
        .unwrap()
        .private_key_to_pkcs8()
        .unwrap();
    cli_ok(path, &["keys", "import", "npm", "--pem", pem.to_str().unwrap(), "--replace-next"]);
    cli_ok(path, &["keys", "rotate", "npm", "--force"]);
    let (admin, _) = keyward::ops::clients::create(
        &app.store,
        &app.config,
        "ops-bot",
        &[],
        true,
        keyward::ops::clients::ClientOptions::default(),
        0,
    )
    .await
    .unwrap();
    tokens.push(admin.to_string());
    app.reload().await;
    let signer = key_in(&app.store.keys().await.unwrap(), KeyState::Current, now());
    let response = app
        .http
        .post(format!("{}/v1/keys/{}/revoke", app.internal, signer.kid))
        .bearer_auth(admin.as_str())
        .json(&json!({"reason": "drill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let signed = app.sign_ok("npm-sandbox", tokens[2].trim(), &json!({"sub": "someone"})).await;

    // Every key's private half still held, and every one a revocation or retirement
    // destroyed (read before it was: the imported key's, and those opened now).
    let mut ders = vec![imported_der];
    for key in app.store.keys().await.unwrap().iter().filter(|k| k.sealed().is_some()) {
        ders.push(crate::storage::private_der(&app.keyring(), key));
    }
    assert!(ders.len() >= 3, "the imported key and the set's live keys");
    let master = std::fs::read_to_string(&app.config.server.master_key_file).unwrap();
    let master_bytes = STANDARD.decode(master.trim()).unwrap();
    let mut needles: Vec<String> = encodings(&master_bytes);
    needles.push("PRIVATE KEY".to_owned());
    needles.push(signed["token"].as_str().unwrap().to_owned());
    for secret in [SHARED_SECRET, SECOND_SECRET] {
        needles.extend(encodings(secret));
    }
    for token in &tokens {
        let token = token.trim();
        needles.push(token.to_owned());
        needles.extend(encodings(token.rsplit('_').next().unwrap().as_bytes()));
    }
    let mut stretches = vec![master_bytes.clone()];
    for der in &ders {
        let (bytes, texts) = private_stretches(der);
        stretches.extend(bytes);
        needles.extend(texts);
    }

    let rows = event_rows(&app).await;
    let all = app.store.events(&EventFilter::default(), None, 1_000).await.unwrap();
    let actions: std::collections::BTreeSet<&str> = all.iter().map(|e| e.action.as_str()).collect();
    for action in ["client.added", "client.rotated", "secret.set", "key.imported", "key.rotated", "key.revoked"] {
        assert!(actions.contains(action), "no {action} among {actions:?}");
    }
    for row in &rows {
        for needle in &needles {
            assert!(!row.contains(needle.as_str()), "{needle:?} in the event {row}");
        }
        for stretch in &stretches {
            assert!(!contains(row.as_bytes(), stretch), "private bytes in the event {row}");
        }
    }
}
