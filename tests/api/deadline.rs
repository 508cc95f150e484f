//! Every sign request answers within `request_deadline`, whatever the database does: a
//! SQLite write lock held by a stopped process, PostgreSQL stopped with SIGSTOP (its
//! connections open and silent) or killed and restarted. No token leaves without its
//! ledger row or with its lifetime spent waiting, the JWKS is served throughout, and
//! everything is back within a second of the database.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward::config::Duration as Span;
use keyward::store::rows::Filter;
use keyward::store::Store;
use serde_json::{json, Value};

use crate::helpers::{serve, spawn_app_with, test_config, wait_healthy, Serve};
use crate::postgres::PgServer;

const PROFILE: &str = "npm-sandbox";
/// The default `request_deadline`.
const DEADLINE: Duration = Duration::from_secs(2);
/// What the issue allows above the deadline: the way to and from the server.
const SLACK: Duration = Duration::from_millis(250);
/// The lifetime each request asks for.
const TTL: i64 = 60;
/// Time for an answer to travel from the server to the test once the server let it go.
const TRANSIT_MS: i64 = 100;

/// One sign request's answer, as the caller saw it.
struct Answer {
    target: String,
    took: Duration,
    /// When it arrived, by the wall clock (Unix milliseconds) and by the test's.
    received_ms: i64,
    received: Instant,
    status: u16,
    retry_after: bool,
    body: Value,
}

/// Signs in a loop against `internal` until `until`, recording every answer.
async fn sign_until(internal: String, token: String, until: Instant, answers: Arc<Mutex<Vec<Answer>>>) {
    let http = reqwest::Client::new();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let sent = Instant::now();
        let response = http
            .post(format!("{internal}/v1/profiles/{PROFILE}/sign"))
            .bearer_auth(&token)
            .json(&json!({"sub": format!("acct-{n}"), "ttl_seconds": TTL}))
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        let answer = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body = response.json().await.unwrap_or(Value::Null);
                Answer {
                    target: internal.clone(),
                    took: sent.elapsed(),
                    received_ms: chrono::Utc::now().timestamp_millis(),
                    received: Instant::now(),
                    status,
                    retry_after,
                    body,
                }
            }
            Err(err) => Answer {
                target: internal.clone(),
                took: sent.elapsed(),
                received_ms: chrono::Utc::now().timestamp_millis(),
                received: Instant::now(),
                status: 0,
                retry_after: false,
                body: json!(err.to_string()),
            },
        };
        let refused = answer.status != 200;
        answers.lock().unwrap().push(answer);
        if refused {
            // As a caller honouring Retry-After would, but sooner: the test wants samples.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One poll of a public path: when, its status, how long it took, its body.
struct Poll {
    at: Instant,
    status: u16,
    took: Duration,
    body: Value,
}

/// GETs `url` every 50 ms until `until`.
async fn poll_until(url: String, until: Instant) -> Vec<Poll> {
    let http = reqwest::Client::new();
    let mut polls = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        let (status, body) = match http.get(&url).timeout(Duration::from_secs(5)).send().await {
            Ok(response) => (response.status().as_u16(), response.json().await.unwrap_or(Value::Null)),
            Err(err) => (0, json!(err.to_string())),
        };
        polls.push(Poll { at: sent, status, took: sent.elapsed(), body });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    polls
}

/// What a run recorded, checked against the bounds. `outage` is when the database
/// stopped answering and when it answered again.
struct Run {
    answers: Vec<Answer>,
    jwks: Vec<Poll>,
    readyz: Vec<Poll>,
    outage: (Instant, Instant),
}

impl Run {
    /// Every bound that does not need the database: returns the failures, and prints the
    /// figures (the slowest answer above all).
    fn check(&self, ledger: &HashSet<String>) -> Vec<String> {
        let mut failures = Vec::new();
        let (down, back) = self.outage;
        let slowest = self.answers.iter().map(|a| a.took).max().unwrap_or_default();
        let ok = self.answers.iter().filter(|a| a.status == 200).count();
        let refused = self.answers.len() - ok;
        let during = self.answers.iter().filter(|a| a.received > down && a.received < back).count();
        eprintln!(
            "{} sign answers ({ok} tokens, {refused} refused, {during} during the outage of {:?}); slowest {slowest:?}",
            self.answers.len(),
            back - down
        );
        if slowest > DEADLINE + SLACK {
            failures.push(format!("the slowest sign answer took {slowest:?}, over {:?}", DEADLINE + SLACK));
        }
        for answer in &self.answers {
            match answer.status {
                200 => {
                    let jti = answer.body["jti"].as_str().unwrap_or_default();
                    if !ledger.contains(jti) {
                        failures.push(format!("token {jti} from {} has no ledger row", answer.target));
                    }
                    let left_ms = answer.body["expires_at"].as_i64().unwrap_or(0) * 1_000 - answer.received_ms;
                    let least_ms = (TTL - DEADLINE.as_secs() as i64) * 1_000 - TRANSIT_MS;
                    if left_ms < least_ms {
                        failures.push(format!("token {jti} arrived with {left_ms} ms left, under {least_ms} ms"));
                    }
                }
                503 if answer.retry_after && answer.body["type"] == "urn:keyward:problem:not-recorded" => {}
                status => failures.push(format!(
                    "{status} (Retry-After: {}) from {}: {}",
                    answer.retry_after, answer.target, answer.body
                )),
            }
        }
        if during == 0 {
            failures.push("no sign request was answered during the outage".to_owned());
        }
        let tokens_again = self.answers.iter().filter(|a| a.status == 200 && a.received >= back).map(|a| a.received);
        match tokens_again.min() {
            Some(at) if at <= back + Duration::from_secs(1) => {
                eprintln!("first token {:?} after the database was back", at - back)
            }
            other => failures.push(format!(
                "no token within 1 s of the database being back (first: {:?})",
                other.map(|at| at - back)
            )),
        }
        let jwks_slowest = self.jwks.iter().map(|p| p.took).max().unwrap_or_default();
        eprintln!("{} JWKS polls, slowest {jwks_slowest:?}", self.jwks.len());
        if let Some(bad) = self.jwks.iter().find(|p| p.status != 200) {
            failures.push(format!("the JWKS answered {}: {}", bad.status, bad.body));
        }
        // It never waits on the database: only on the CPU, shared with the signers (and, on a
        // test machine, with everything else). No slower than a sign answer may be.
        if jwks_slowest > DEADLINE + SLACK {
            failures.push(format!("a JWKS answer took {jwks_slowest:?}"));
        }
        let not_ready: Vec<&Poll> = self.readyz.iter().filter(|p| p.status != 200).collect();
        if !not_ready
            .iter()
            .any(|p| p.at > down && p.at < back && p.body["reason"].as_str().is_some_and(|r| !r.is_empty()))
        {
            failures.push("/readyz never said not ready, with a reason, during the outage".to_owned());
        }
        if let Some(last) = not_ready.iter().map(|p| p.at).max() {
            if last > back + Duration::from_secs(1) {
                failures.push(format!("/readyz was still not ready {:?} after the database was back", last - back));
            } else if last > back {
                eprintln!("/readyz ready again within {:?} of the database", last - back);
            }
        }
        if self.readyz.last().is_none_or(|p| p.status != 200) {
            failures.push("/readyz did not end ready".to_owned());
        }
        failures
    }
}

/// The signers ask as fast as they are answered: no rate limit (this is not about it).
fn unlimited(config: &mut keyward::config::Config) {
    config.server.rate_limit = 1_000_000;
    config.server.rate_burst = 1_000_000;
}

/// Every `jti` in the ledger.
async fn ledger_jtis(store: &Store) -> HashSet<String> {
    let rows = store.issuance(&Filter::default(), 1_000_000).await.unwrap();
    rows.into_iter().map(|entry| entry.jti).collect()
}

// ---------------------------------------------------------------------------------------
// SQLite: the write lock held by a stopped process
// ---------------------------------------------------------------------------------------

/// A `sqlite3` shell holding the database's write lock (`BEGIN IMMEDIATE`), then stopped.
struct LockHolder {
    child: Child,
}

impl LockHolder {
    fn take(database: &Path) -> LockHolder {
        let spawned = Command::new("sqlite3")
            .arg(database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = spawned.unwrap_or_else(|err| {
            panic!("this test holds SQLite's write lock with the sqlite3 shell ({err}): apt-get install sqlite3")
        });
        let stdin = child.stdin.as_mut().unwrap();
        // The shell waits for the lock if keyward's writer holds it now, and quits, printing
        // nothing, if it could not take it.
        stdin.write_all(b".bail on\n.timeout 10000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked", "sqlite3 did not take the write lock");
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGSTOP) };
        LockHolder { child }
    }

    /// Lets it go on and end its transaction.
    fn release(mut self) {
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"ROLLBACK;\n.quit\n").unwrap();
        stdin.flush().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_holder_of_the_sqlite_write_lock_costs_each_sign_request_at_most_its_deadline() {
    let app = spawn_app_with(|c| {
        c.server.request_deadline = Span::from_secs(DEADLINE.as_secs());
        unlimited(c);
    })
    .await;
    let token = app.client("backend", &[PROFILE]).await;
    let answers = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let until = start + Duration::from_secs(14);
    let signers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(sign_until(app.internal.clone(), token.clone(), until, Arc::clone(&answers))))
        .collect();
    let jwks = tokio::spawn(poll_until(format!("{}/.well-known/jwks.json", app.public), until));
    let readyz = tokio::spawn(poll_until(format!("{}/readyz", app.public), until));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let holder = LockHolder::take(&app.dir.path().join("keyward.db"));
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    holder.release();
    let back = Instant::now();
    for signer in signers {
        signer.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let run = Run { answers, jwks: jwks.await.unwrap(), readyz: readyz.await.unwrap(), outage: (down, back) };
    let failures = run.check(&ledger_jtis(&app.store).await);
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: two replicas, the database stopped (SIGSTOP) or killed and restarted
// ---------------------------------------------------------------------------------------

/// What happens to the database.
#[derive(Clone, Copy)]
enum Outage {
    /// Every PostgreSQL process stopped (SIGSTOP) for 10 s, then continued.
    Hung,
    /// Killed as `pg_ctl stop -m immediate` does (SIGQUIT), restarted 4 s later.
    Killed,
}

/// Waits until a fresh connection to `url` answers a query.
async fn answers_again(url: &str) -> Instant {
    loop {
        let query = async {
            let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
            sqlx::query("SELECT 1").execute(&mut connection).await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), query).await {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn two_replicas_through(outage: Outage) {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.database_url = pg.new_database().await;
    config.server.request_deadline = Span::from_secs(DEADLINE.as_secs());
    unlimited(&mut config);
    crate::replicas::write_master_key(dir.path());
    let http = reqwest::Client::new();
    let mut replicas: Vec<Serve> = (0..2).map(|_| serve(dir.path(), &config, "info")).collect();
    for replica in &mut replicas {
        assert!(wait_healthy(&http, replica).await, "a replica did not come up");
    }
    let store = Store::connect(&config.database()).await.unwrap();
    let token = keyward::ops::clients::add(
        &store,
        &config,
        "backend",
        &[PROFILE.to_owned()],
        false,
        chrono::Utc::now().timestamp(),
    )
    .await
    .unwrap()
    .to_string();

    let answers = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now()
        + Duration::from_secs(match outage {
            Outage::Hung => 16,
            Outage::Killed => 12,
        });
    let mut signers = Vec::new();
    let mut polls = Vec::new();
    for replica in &replicas {
        for _ in 0..2 {
            signers.push(tokio::spawn(sign_until(
                replica.internal.clone(),
                token.clone(),
                until,
                Arc::clone(&answers),
            )));
        }
        polls.push(tokio::spawn(poll_until(format!("{}/.well-known/jwks.json", replica.public), until)));
        polls.push(tokio::spawn(poll_until(format!("{}/readyz", replica.public), until)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down = Instant::now();
    let let_go = match outage {
        Outage::Hung => {
            pg.pause();
            tokio::time::sleep(Duration::from_secs(10)).await;
            pg.resume();
            Instant::now()
        }
        Outage::Killed => {
            pg.stop(false);
            tokio::time::sleep(Duration::from_secs(4)).await;
            let restarted = Instant::now();
            pg.launch();
            restarted
        }
    };
    let back = answers_again(&pg.url("postgres")).await;
    eprintln!("the database answered again {:?} after it was let go", back - let_go);
    for signer in signers {
        signer.await.unwrap();
    }
    let ledger = ledger_jtis(&store).await;
    let mut failures = Vec::new();
    let mut polls = polls.into_iter();
    for (i, replica) in replicas.iter().enumerate() {
        let (jwks, readyz) = (polls.next().unwrap().await.unwrap(), polls.next().unwrap().await.unwrap());
        let answers = {
            let mut all = answers.lock().unwrap();
            let (mine, rest) =
                std::mem::take(&mut *all).into_iter().partition(|a: &Answer| a.target == replica.internal);
            *all = rest;
            mine
        };
        eprintln!("replica {i}:");
        let run = Run { answers, jwks, readyz, outage: (down, back) };
        failures.extend(run.check(&ledger).into_iter().map(|f| format!("replica {i}: {f}")));
    }
    if !failures.is_empty() {
        let log = replicas[0].log_text();
        eprintln!("replica 0's log (end):\n{}", &log[log.len().saturating_sub(6_000)..]);
    }
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_with_sigstop_costs_two_replicas_sign_requests_at_most_their_deadline() {
    two_replicas_through(Outage::Hung).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_and_restarted_costs_two_replicas_sign_requests_at_most_their_deadline() {
    two_replicas_through(Outage::Killed).await;
}
