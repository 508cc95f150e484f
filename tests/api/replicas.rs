//! Several replicas on one PostgreSQL server: rotation, revocation and new clients reach
//! every replica at once; a killed replica or a restarted database loses no ledger row.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use keyward::config::Config;
use keyward::keys::{Algorithm, KeyState};
use keyward::store::rows::Filter;
use keyward::store::Store;
use serde_json::{json, Value};

use crate::helpers::{serve, spawn_in, test_config, wait_healthy, Serve};
use crate::postgres::PgServer;
use crate::rotation::{fast, CachingVerifier};

const PROFILE: &str = "npm-sandbox";

/// A master key file every replica shares (as a secrets manager would hand them out).
pub(crate) fn write_master_key(dir: &Path) {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    std::fs::write(dir.join("master.key"), key).unwrap();
    std::fs::set_permissions(dir.join("master.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

async fn store_of(config: &Config) -> Store {
    Store::connect(&config.database()).await.unwrap()
}

async fn sign(http: &reqwest::Client, replica: &Serve, token: &str, sub: &str) -> Result<(u16, Value), String> {
    let response = http
        .post(format!("{}/v1/profiles/{PROFILE}/sign", replica.internal))
        .bearer_auth(token)
        .json(&json!({"sub": sub}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn status(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = http.get(url).timeout(Duration::from_secs(10)).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_postgres_rotate_revoke_and_survive_a_kill_and_a_database_restart() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // publish_ahead 3 s = jwks_max_age 2 s + clock_skew 1 s: a verifier refetches the JWKS
    // within 2 s, so a key must be on the verifier's replica within 1 s of being published.
    // After the database restart a replica's watcher tries every 50 ms and reads the change
    // counter on its own listening connection (the pool's retries, which back off to 600 ms
    // within a 3 s wait, are not on that path): it reloads 50 ms plus two connections and a
    // reload after the database accepts connections again (measured: 25 ms), well under that
    // second. And a scheduler pass held up by the outage decides at the time it gets the
    // lock, so a key it publishes late still gets publish_ahead before it signs.
    fast(&mut config, Algorithm::Es256);
    config.server.database_url = pg.new_database().await;
    write_master_key(dir.path());
    let http = reqwest::Client::new();
    let mut replicas: Vec<Serve> = (0..3).map(|_| serve(dir.path(), &config, "info")).collect();
    for replica in &mut replicas {
        assert!(wait_healthy(&http, replica).await, "a replica did not come up");
    }
    // Clients made by the CLI's library calls, as another process would.
    let store = store_of(&config).await;
    let add = |name: &'static str, admin: bool| {
        let (store, config) = (store.clone(), config.clone());
        async move {
            let profiles = if admin { vec![] } else { vec![PROFILE.to_owned()] };
            keyward::ops::clients::add(&store, &config, name, &profiles, admin, chrono::Utc::now().timestamp())
                .await
                .unwrap()
                .to_string()
        }
    };
    let token = add("backend", false).await;
    let ops = add("ops", true).await;
    // The verifier reads the JWKS of a replica that stays up.
    let mut verifier =
        CachingVerifier::new(format!("{}/.well-known/jwks.json", replicas[2].public), Duration::from_secs(2)).await;

    let run_for = Duration::from_secs(36);
    let start = Instant::now();
    let (mut issued, mut failures, mut refused) = (Vec::<String>::new(), Vec::<String>::new(), 0usize);
    let mut live: Vec<(String, i64, String)> = Vec::new();
    // (iat, kid) of every token the main loop got, from whichever replica.
    let mut signed_at: Vec<(i64, String)> = Vec::new();
    let (mut revoked, mut revoked_done): (Option<String>, Option<Instant>) = (None, None);
    let (mut added, mut killed, mut restarted) = (false, false, false);
    let mut outage_checked = false;
    let (mut exposed, mut exposed_rejections): (Option<(String, i64)>, usize) = (None, 0);
    let mut n = 0usize;
    while start.elapsed() < run_for {
        n += 1;
        let up: Vec<&Serve> = replicas.iter().skip(usize::from(killed)).collect();
        let replica = up[n % up.len()];
        let sent = Instant::now();
        match sign(&http, replica, &token, &format!("acct-{n}")).await {
            Ok((200, body)) => {
                let kid = body["kid"].as_str().unwrap().to_owned();
                if let (Some(revoked), Some(done)) = (&revoked, revoked_done) {
                    if sent > done && kid == *revoked {
                        failures.push(format!("the revoked key {kid} signed on {} after the revoke", replica.internal));
                    }
                }
                issued.push(body["jti"].as_str().unwrap().to_owned());
                signed_at.push((body["issued_at"].as_i64().unwrap(), kid.clone()));
                live.push((body["token"].as_str().unwrap().to_owned(), body["expires_at"].as_i64().unwrap(), kid));
            }
            Ok((503, body)) if restarted => {
                assert_eq!(body["type"], "urn:keyward:problem:not-recorded", "{body}");
                refused += 1;
            }
            Ok((code, body)) => failures.push(format!("{code} from {}: {body}", replica.internal)),
            Err(e) => failures.push(format!("no answer from {}: {e}", replica.internal)),
        }
        let now = chrono::Utc::now().timestamp();
        // Tokens of a revoked key are meant to stop verifying.
        live.retain(|(_, exp, kid)| *exp > now && Some(kid) != revoked.as_ref());
        let mut failed = false;
        for (jwt, exp, kid) in &live {
            if let Err(e) = verifier.verify(jwt).await {
                // An emergency revoke hands over to a next key that verifiers may not have
                // fetched yet: the revoke's answer says until when they may reject it.
                if exposed.as_ref().is_some_and(|(new, until)| new == kid && now <= *until) {
                    exposed_rejections += 1;
                    continue;
                }
                failures.push(format!("verification failed (exp {exp}, now {now}): {e}"));
                failed = true;
            }
        }
        if failed && failures.len() < 20 {
            // What each replica serves, and the stored keys, to tell which one lagged.
            for replica in replicas.iter().skip(usize::from(killed)) {
                let served = status(&http, &format!("{}/.well-known/jwks.json", replica.public)).await;
                let kids: Vec<Value> = served
                    .map(|s| s.1["keys"].as_array().unwrap().iter().map(|k| k["kid"].clone()).collect())
                    .unwrap_or_default();
                failures.push(format!("{} serves {kids:?}", replica.public));
            }
            let log = replicas[2].log_text();
            let noted: Vec<&str> = log.lines().filter(|l| !l.contains("\"DEBUG\"")).collect();
            failures.push(format!(
                "the verifier's replica logged:\n{}",
                noted[noted.len().saturating_sub(40)..].join("\n")
            ));
            if let Ok(keys) = store.keys().await {
                for k in keys {
                    failures.push(format!(
                        "{} published {:?} activates {:?} deactivates {:?} retired {:?} revoked {:?}",
                        k.kid,
                        k.published_at,
                        k.activates_at,
                        k.deactivates_at,
                        k.retired_at(),
                        k.revoked_at()
                    ));
                }
            }
        }
        let t = start.elapsed();
        if revoked.is_none() && t > Duration::from_secs(8) {
            // An emergency revoke on replica 1.
            let jwks: Value = http
                .get(format!("{}/.well-known/jwks.json", replicas[1].public))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
            let response = http
                .post(format!("{}/v1/keys/{kid}/revoke", replicas[1].internal))
                .bearer_auth(&ops)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let answer: Value = response.json().await.unwrap();
            if let Some(until) = answer["new_signer"]["may_be_rejected_until"].as_i64() {
                exposed = Some((answer["new_signer"]["kid"].as_str().unwrap().to_owned(), until));
            }
            revoked = Some(kid);
            revoked_done = Some(Instant::now());
        }
        if !added && t > Duration::from_secs(11) {
            // A client the CLI just made works at once on every replica.
            let fresh = add("fresh", false).await;
            for replica in &replicas {
                let answer = sign(&http, replica, &fresh, "first").await;
                assert!(matches!(answer, Ok((200, _))), "a new client was refused by {}: {answer:?}", replica.internal);
                issued.push(answer.unwrap().1["jti"].as_str().unwrap().to_owned());
            }
            added = true;
        }
        if !killed && t > Duration::from_secs(14) {
            let _ = replicas[0].child.kill(); // SIGKILL
            let _ = replicas[0].child.wait();
            killed = true;
        }
        if !restarted && t > Duration::from_secs(18) {
            // The database goes away (as in a crash) and comes back on the same address.
            pg.stop(false);
            restarted = true;
            let jwks = status(&http, &format!("{}/.well-known/jwks.json", replicas[2].public)).await;
            assert_eq!(jwks.map(|j| j.0), Some(200), "the JWKS is served while the database is down");
            let answer = sign(&http, &replicas[2], &token, "outage").await;
            assert!(matches!(answer, Ok((503, _))), "signing while the database is down: {answer:?}");
            let mut reason = None;
            for _ in 0..100 {
                if let Some((503, body)) = status(&http, &format!("{}/readyz", replicas[2].public)).await {
                    reason = Some(body["reason"].to_string());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let reason = reason.expect("/readyz stayed ready while the database was down");
            assert!(reason.contains("database") || reason.contains("ledger"), "{reason}");
            outage_checked = true;
            pg.launch();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(outage_checked);
    // Everything recovered by itself: every replica still up signs again.
    for replica in replicas.iter().skip(1) {
        let mut ok = false;
        for _ in 0..60 {
            if let Ok((200, body)) = sign(&http, replica, &token, "after").await {
                issued.push(body["jti"].as_str().unwrap().to_owned());
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(ok, "{} did not recover after the database restart", replica.internal);
    }
    println!(
        "replicas: {} tokens issued, {refused} refused during the outage, {exposed_rejections} rejections of the \
         signer a revoke exposed (until {exposed:?}), {} JWKS fetches, {} failures",
        issued.len(),
        verifier.fetches,
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");

    // Every 200 has its ledger row, whichever replica issued it (the killed one's too).
    let store = store_of(&config).await;
    let rows: HashSet<String> =
        store.issuance(&Filter::default(), 1_000_000).await.unwrap().into_iter().map(|e| e.jti).collect();
    let missing: Vec<&String> = issued.iter().filter(|jti| !rows.contains(*jti)).collect();
    assert!(missing.is_empty(), "200s without a ledger row: {missing:?}");

    // One activation per rotation period: no two replicas took the same step.
    let keys = store.keys().await.unwrap();
    let revoked = revoked.unwrap();
    // Keys that started signing (a period replaced within its first second never did).
    let now = chrono::Utc::now().timestamp();
    let mut activations: Vec<(i64, &str)> = keys
        .iter()
        .filter_map(|k| {
            let at = k.activates_at.filter(|at| *at <= now && k.deactivates_at.is_none_or(|d| d > *at))?;
            Some((at, k.kid.as_str()))
        })
        .collect();
    activations.sort();
    assert!(activations.len() >= 6, "too few rotations to test anything: {activations:?}");
    for pair in activations.windows(2) {
        let ((earlier, kid), (later, _)) = (pair[0], pair[1]);
        // A revoke hands over at once; otherwise a handover waits for rotate_every.
        if kid != revoked {
            assert!(
                later - earlier >= 3,
                "two activations {}s apart: a step was taken twice ({activations:?})",
                later - earlier
            );
        }
    }
    assert_eq!(keys.iter().filter(|k| k.state_at(now) == KeyState::Current).count(), 1);
    let kids: BTreeSet<&str> = activations.iter().map(|a| a.1).collect();
    assert_eq!(kids.len(), activations.len());

    // Every replica switched signer at the same instant: each token was signed by the key
    // whose stored signing period holds its second (a request that took its snapshot just
    // before a switch may sign with the old key in the switch's first second).
    let periods: Vec<(i64, i64, &str)> = keys
        .iter()
        .filter_map(|k| {
            let from = k.activates_at?;
            let until = k.deactivates_at.unwrap_or(i64::MAX);
            (until > from).then_some((from, until, k.kid.as_str()))
        })
        .collect();
    let near_a_switch = |t: i64| periods.iter().any(|(from, until, _)| t == *from || t == *until);
    let mut checked = 0;
    for (iat, kid) in &signed_at {
        if near_a_switch(*iat) {
            continue;
        }
        checked += 1;
        let expected = periods.iter().find(|(from, until, _)| from <= iat && iat < until).map(|p| p.2);
        assert_eq!(expected, Some(kid.as_str()), "a token of second {iat} was signed by a key not planned then");
    }
    println!("replicas: {checked} tokens away from a switch, each signed by the key planned for its second");
    assert!(checked > 30, "too few tokens away from a switch: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_the_jwks_is_served_signing_is_refused_and_all_recovers_without_restart() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.database_url = pg.new_database().await;
    let app = spawn_in(dir, config, keyward::seal::MasterKey::generate()).await;
    let token = app.client("backend", &[PROFILE]).await;
    app.sign_ok(PROFILE, &token, &json!({"sub": "before"})).await;
    let jwks = app.jwks("/.well-known/jwks.json").await;

    pg.stop(true);
    let refused = app.sign(PROFILE, &token, &json!({"sub": "during"})).await;
    let problem = crate::helpers::assert_problem(refused, 503).await;
    assert_eq!(problem["type"], "urn:keyward:problem:not-recorded");
    assert_eq!(app.jwks("/.well-known/jwks.json").await, jwks, "partners see no outage");
    let not_ready = app
        .eventually(Duration::from_secs(30), || async {
            let response = app.http.get(format!("{}/readyz", app.public)).send().await.unwrap();
            response.status() == 503 && response.text().await.unwrap().contains("database")
        })
        .await;
    assert!(not_ready, "/readyz did not say the database is down");

    pg.launch();
    let recovered = app
        .eventually(Duration::from_secs(60), || async {
            app.http.get(format!("{}/readyz", app.public)).send().await.unwrap().status() == 200
                && app.sign(PROFILE, &token, &json!({"sub": "after"})).await.status() == 200
        })
        .await;
    assert!(recovered, "not ready again a minute after the database came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_is_taken_from_sslmode_in_the_url_and_verified() {
    let pg = PgServer::start_with_tls();
    let plain = pg.new_database().await;
    let database = plain.replace("127.0.0.1", "localhost");
    let root = pg.certificate().display().to_string();

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.database_url = format!("{database}?sslmode=verify-full&sslrootcert={root}");
    let app = spawn_in(dir, config, keyward::seal::MasterKey::generate()).await;
    let token = app.client("backend", &[PROFILE]).await;
    app.sign_ok(PROFILE, &token, &json!({"sub": "over-tls"})).await;
    let keyward::store::Store::Postgres(pg_store) = &app.store else { panic!("not PostgreSQL") };
    let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pg_store.pool())
        .await
        .unwrap();
    assert!(encrypted, "the connection is not encrypted");

    // A certificate the URL does not trust is refused at start-up.
    let other = tempfile::tempdir().unwrap();
    let wrong = other.path().join("other.crt");
    let made = crate::helpers::tool("openssl", "openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-keyout", other.path().join("k").to_str().unwrap(), "-out", wrong.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success());
    let url = format!("{database}?sslmode=verify-full&sslrootcert={}", wrong.display());
    let refused = Store::connect(&keyward::config::Database::parse(&url).unwrap()).await;
    assert!(refused.is_err(), "a server whose certificate is not trusted was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_say_what_to_change_once() {
    let pg = PgServer::start();
    let database = pg.new_database().await;
    pg.require_password("operator", "s3cret-pw").await;
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str, password: Option<&str>| {
        let mut command = crate::helpers::keyward_bare(dir.path(), &["keys", "list"]);
        command.env("KEYWARD_DATABASE_URL", url);
        if let Some(password) = password {
            command.env("PGPASSWORD", password);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A server without TLS, the URL asking for it: said once, with what to change.
    let said = run(&format!("{database}?sslmode=verify-full"), None);
    assert_eq!(said.matches("does not support TLS").count(), 1, "{said}");
    assert!(said.contains("use sslmode=disable"), "{said}");
    // A password the server asks for, not given: where to give it.
    let name = database.rsplit('/').next().unwrap();
    let said = run(&pg.url_as("operator", name), None);
    assert_eq!(said.matches("password authentication failed").count(), 1, "{said}");
    assert!(said.contains("no password was given: set PGPASSWORD"), "{said}");
    // A wrong one: which to check, and never the password itself.
    let said = run(&pg.url_as("operator", name), Some("wrong-pw"));
    assert!(said.contains("check the password given in PGPASSWORD or the URL"), "{said}");
    assert!(!said.contains("wrong-pw"), "{said}");
    let with_password = pg.url_as("operator:wrong-pw", name);
    let said = run(&with_password, None);
    assert!(said.contains("check the password given in PGPASSWORD or the URL") && !said.contains("wrong-pw"), "{said}");
}

/// The README's commands for a first PostgreSQL database, as written, on a server of its
/// own (whose superuser is already called keyward: the README's names become kw_readme).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_role_and_database_let_keyward_create_its_tables() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("\n### Running several replicas\n").unwrap()..];
    let line = section.lines().find(|l| l.starts_with("sudo -u postgres psql")).expect("the role command");
    let statements: Vec<String> =
        line.split(" -c \"").skip(1).map(|s| s.trim_end_matches('"').replace("keyward", "kw_readme")).collect();
    assert_eq!(statements.len(), 2, "{line}");
    let pg = PgServer::start();
    pg.new_database().await; // waits until the server accepts connections
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres")).await.unwrap();
    for statement in &statements {
        sqlx::query(statement).execute(&mut admin).await.unwrap();
    }
    let password = line.split("PASSWORD '").nth(1).unwrap().split('\'').next().unwrap();
    pg.ask_password_of("kw_readme").await;
    // The documented URL for a server without TLS, on this server's port.
    let documented = section.lines().find_map(|l| l.split('`').find(|p| p.ends_with("?sslmode=disable"))).unwrap();
    let here = format!("kw_readme@127.0.0.1:{}/kw_readme", pg.port());
    let url = documented.replace("keyward@localhost/keyward", &here);
    assert!(url.contains(&here), "{documented}");
    let dir = tempfile::tempdir().unwrap();
    let out = crate::helpers::keyward_bare(dir.path(), &["keys", "list"])
        .env("KEYWARD_DATABASE_URL", &url)
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
}
