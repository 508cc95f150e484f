//! `clients rotate` and `clients revoke` take effect at once on every replica: under load
//! from two replicas on one PostgreSQL database, no request with the old credential is
//! answered 200 after the command returned.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward::seal::MasterKey;
use serde_json::json;

use crate::helpers::{keyward_bare, spawn_in, test_config, text, Backend, TestApp};

const PROFILE: &str = "npm-sandbox";
/// Requests in flight at once, spread over both replicas.
const WORKERS: usize = 6;

/// The CLI in `dir`, over the configuration's PostgreSQL database.
fn keyward(dir: &std::path::Path, database_url: &str, args: &[&str]) -> std::process::Output {
    keyward_bare(dir, args).env("KEYWARD_DATABASE_URL", database_url).output().unwrap()
}

/// One request: which replica, when it was sent and answered, and the status.
#[derive(Debug, Clone, Copy)]
struct Sample {
    replica: usize,
    sent: Instant,
    answered: Instant,
    status: u16,
}

/// Sends sign requests with `token` to both replicas from [`WORKERS`] tasks until `stop`.
fn load(replicas: &[String; 2], token: &str, stop: Arc<Mutex<bool>>) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..WORKERS)
        .map(|worker| {
            let (replicas, token, stop) = (replicas.clone(), token.to_owned(), Arc::clone(&stop));
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut samples = Vec::new();
                let mut n = worker;
                while !*stop.lock().unwrap() {
                    n += 1;
                    let replica = n % 2;
                    let sent = Instant::now();
                    let response = http
                        .post(format!("{}/v1/profiles/{PROFILE}/sign", replicas[replica]))
                        .bearer_auth(&token)
                        .json(&json!({"sub": format!("acct-{n}")}))
                        .send()
                        .await
                        .unwrap();
                    samples.push(Sample {
                        replica,
                        sent,
                        answered: Instant::now(),
                        status: response.status().as_u16(),
                    });
                }
                samples
            })
        })
        .collect()
}

/// Runs `command` (a CLI call) while both replicas are under load with `token`; returns
/// the requests and when the command returned.
async fn under_load(
    replicas: &[String; 2],
    token: &str,
    command: impl FnOnce() -> String,
) -> (Vec<Sample>, Instant, String) {
    let stop = Arc::new(Mutex::new(false));
    let workers = load(replicas, token, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let output = tokio::task::block_in_place(command);
    let returned = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    *stop.lock().unwrap() = true;
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.unwrap());
    }
    (samples, returned, output)
}

/// Asserts that the old credential was served before the command and refused (401) by
/// both replicas to every request sent after it returned; a request already in flight
/// then may still get its 200, but only if its ledger row committed before the change
/// (the change waits for the ledger's lock on the client row). Prints the figures.
fn check(what: &str, samples: &[Sample], returned: Instant) {
    let before_ok = samples.iter().filter(|s| s.answered < returned && s.status == 200).count();
    let late: Vec<&Sample> = samples.iter().filter(|s| s.answered >= returned && s.status == 200).collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= returned).collect();
    let in_flight = samples.iter().filter(|s| s.sent < returned && s.answered >= returned).count();
    let last_ok = samples.iter().filter(|s| s.status == 200).map(|s| s.answered).max();
    println!(
        "{what}: {} requests; {before_ok} answered 200 before the command returned; {in_flight} in flight when it \
         returned; {} sent after it (all 401: {}); answered 200 after it returned: {} (sent before it, answered \
         up to {:?} after); last 200 {:?} before it returned",
        samples.len(),
        after.len(),
        after.iter().all(|s| s.status == 401),
        late.len(),
        late.iter().map(|s| s.answered - returned).max().unwrap_or_default(),
        last_ok.map(|at| returned.saturating_duration_since(at)),
    );
    assert!(before_ok > 20, "{what}: the load did not get going ({before_ok} answered 200 before)");
    let sent_after_ok: Vec<&&Sample> = after.iter().filter(|s| s.status == 200).collect();
    assert!(
        sent_after_ok.is_empty(),
        "{what}: the old credential got 200 after the command returned: {sent_after_ok:?}"
    );
    assert!(late.iter().all(|s| s.sent < returned), "{what}: {late:?}");
    for replica in 0..2 {
        let refused = after.iter().filter(|s| s.replica == replica && s.status == 401).count();
        assert!(refused > 5, "{what}: replica {replica} refused only {refused} requests after the command");
    }
    let unexpected: Vec<&Sample> = samples.iter().filter(|s| ![200, 401].contains(&s.status)).collect();
    assert!(unexpected.is_empty(), "{what}: {unexpected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_and_revoke_under_load_from_two_replicas_leave_no_200_for_the_old_credential_after_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.key_sets[0].algorithm = keyward::keys::Algorithm::Es256;
    config.server.database_url = Backend::Postgres.new_database_url(dir.path()).await;
    // The CLI reads the same configuration, from ./keys.toml.
    std::fs::write(dir.path().join("keys.toml"), toml::to_string(&config).unwrap()).unwrap();
    let (master, _) = MasterKey::resolve(None, &config.server.master_key_file, true).unwrap();
    let cli_dir = dir.path().to_owned();
    let url = config.server.database_url.clone();
    let first: TestApp = spawn_in(dir, config.clone(), master.clone()).await;
    let second: TestApp = spawn_in(tempfile::tempdir().unwrap(), config, master).await;
    let replicas = [first.internal.clone(), second.internal.clone()];

    let out = keyward(&cli_dir, &url, &["clients", "add", "backend", "--profiles", PROFILE]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let old = text(&out.stdout).trim().to_owned();

    // Rotation without grace: the old token dies when the command returns.
    let (samples, returned, new) = under_load(&replicas, &old, || {
        let out = keyward(&cli_dir, &url, &["clients", "rotate", "backend"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("no longer works"), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    })
    .await;
    check("clients rotate", &samples, returned);

    // Revocation: the new token dies when the command returns.
    let (samples, returned, _) = under_load(&replicas, &new, || {
        let out = keyward(&cli_dir, &url, &["clients", "revoke", "backend"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        String::new()
    })
    .await;
    check("clients revoke", &samples, returned);
}
