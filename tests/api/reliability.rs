//! Storage under stress: a full disk, and the permissions of the files that hold secrets.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward::config::Config;
use keyward::seal::MasterKey;
use serde_json::{json, Value};

use keyward::store::Store;

use crate::helpers::{keyward_bare, keyward_command, serve, sqlite, test_config, text, wait_healthy, Serve};

const PROFILE: &str = "npm-sandbox";

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------

/// A tmpfs of `megabytes` mounted on `point`, unmounted when dropped (also when the test
/// fails).
struct Tmpfs {
    point: PathBuf,
}

impl Tmpfs {
    fn mount(point: &Path, megabytes: u32) -> Tmpfs {
        let uid = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|line| {
                line.strip_prefix("Uid:").map(|ids| ids.split_whitespace().next().unwrap_or("").to_owned())
            })
            .unwrap_or_default();
        assert_eq!(
            uid, "0",
            "this test fills a small tmpfs, which needs root (`mount -t tmpfs`): run the tests as root, as CI does"
        );
        std::fs::create_dir_all(point).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700"), "tmpfs"])
            .arg(point)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -t tmpfs failed: {}", text(&out.stderr));
        Tmpfs { point: point.to_owned() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server still holding files there must not keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
    }
}

/// Writes `file` until the filesystem refuses another byte; returns the bytes written.
fn fill(file: &Path) -> u64 {
    use std::io::Write;
    let mut out = std::fs::File::create(file).unwrap();
    let mut written = 0;
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![0x5a_u8; chunk];
        while out.write_all(&bytes).and_then(|()| out.flush()).is_ok() {
            written += chunk as u64;
        }
    }
    written
}

/// Every request's outcome, by phase.
#[derive(Default)]
struct Tally {
    sent: usize,
    ok: Vec<String>,
    not_recorded: usize,
    other: Vec<String>,
}

/// POSTs a sign request; returns the status and, for 200, the jti; panics on a 503 that is
/// not `not-recorded` or that carries a token.
async fn sign(http: &reqwest::Client, base: &str, token: &str, sub: &str) -> (u16, Option<String>) {
    let response = http
        .post(format!("{base}/v1/profiles/{PROFILE}/sign"))
        .bearer_auth(token)
        .json(&json!({ "sub": sub }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        200 => (200, Some(body["jti"].as_str().unwrap().to_owned())),
        503 => {
            assert_eq!(body["type"], "urn:keyward:problem:not-recorded", "{body}");
            assert!(body.get("token").is_none(), "a 503 carried a token: {body}");
            (503, None)
        }
        _ => (status, None),
    }
}

/// `workers` clients signing in a loop until `stop`.
fn load(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    workers: usize,
    tally: &Arc<Mutex<Tally>>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let (http, base, token) = (http.clone(), base.to_owned(), token.to_owned());
        let (tally, stop) = (Arc::clone(tally), Arc::clone(stop));
        tasks.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, jti) = sign(&http, &base, &token, &format!("w-{worker}")).await;
                let mut tally = tally.lock().unwrap();
                tally.sent += 1;
                match (status, jti) {
                    (200, Some(jti)) => tally.ok.push(jti),
                    (503, _) => tally.not_recorded += 1,
                    (other, _) => tally.other.push(format!("status {other}")),
                }
            }
        });
    }
    tasks
}

async fn status_of(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn committed_jtis(database: &Path) -> HashSet<String> {
    let store = Store::open(database).await.unwrap();
    let pool = sqlite(&store).clone();
    let jtis = sqlx::query_scalar("SELECT jti FROM issuance").fetch_all(&pool).await.unwrap().into_iter().collect();
    pool.close().await;
    jtis
}

fn log_lines(serve: &Serve, message: &str) -> usize {
    serve
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"].as_str().is_some_and(|m| m.starts_with(message)))
        .count()
}

#[tokio::test]
async fn a_full_disk_refuses_tokens_without_recording_none_and_everything_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let data = path.join("data");
    let _tmpfs = Tmpfs::mount(&data, 8);
    let mut config: Config = test_config(path);
    config.server.database_url = format!("sqlite://{}", data.join("keyward.db").display());
    config.server.rate_limit = 1_000_000;
    config.server.rate_burst = 1_000_000;
    let database = config.database_path().to_owned();
    MasterKey::resolve(None, &config.server.master_key_file, true).unwrap();
    let store = Store::open(&database).await.unwrap();
    let pool = sqlite(&store).clone();
    let now = chrono::Utc::now().timestamp();
    let token = keyward::ops::clients::add(&store, &config, "loader", &[PROFILE.into()], false, now).await.unwrap();
    let admin = keyward::ops::clients::add(&store, &config, "ops", &[], true, now).await.unwrap();
    let (token, admin) = (token.to_string(), admin.to_string());
    pool.close().await;
    let mut server = serve(path, &config, "info");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut server).await);
    let internal = server.internal.clone();
    for i in 0..5 {
        assert_eq!(sign(&http, &internal, &token, &format!("warm-{i}")).await.0, 200);
    }

    // Full: signing goes on under load until refusals have clearly taken over.
    let filled = fill(&data.join("filler"));
    let full = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = load(&http, &internal, &token, 8, &full, &stop);
    let started = Instant::now();
    let mut refusing = false;
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if full.lock().unwrap().not_recorded >= 200 {
            refusing = true;
            break;
        }
    }
    // The server keeps answering to the end of the full period.
    let tail_start = full.lock().unwrap().sent;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    while tasks.join_next().await.is_some() {}
    let full = std::mem::take(&mut *full.lock().unwrap());

    // No 200 without a committed row, seen by another connection while the server runs.
    let committed = committed_jtis(&database).await;
    let unrecorded: Vec<&String> = full.ok.iter().filter(|jti| !committed.contains(*jti)).collect();
    println!(
        "disk full ({filled} bytes of filler): {} requests, {} x 200, {} x 503 not-recorded, other {:?}; \
         {} of the 200s unrecorded; {} rows committed",
        full.sent,
        full.ok.len(),
        full.not_recorded,
        full.other,
        unrecorded.len(),
        committed.len()
    );
    assert!(unrecorded.is_empty(), "{} tokens handed out with no committed row", unrecorded.len());
    assert!(refusing, "fewer than 200 requests refused within 60 s of the disk filling up");
    assert!(full.other.is_empty(), "unexpected answers while full: {:?}", full.other);
    assert!(full.sent > tail_start, "no request answered in the last 2 s of the full period");
    // While full: JWKS and /healthz serve, /readyz says why it is not ready (both listeners).
    let jwks_path = &config.key_sets[0].jwks_paths[0];
    assert_eq!(status_of(&http, &format!("{}{jwks_path}", server.public)).await.0, 200);
    for base in [&server.public, &server.internal] {
        assert_eq!(status_of(&http, &format!("{base}/healthz")).await.0, 200, "{base}/healthz");
        let (status, body) = status_of(&http, &format!("{base}/readyz")).await;
        assert_eq!(status, 503, "{base}/readyz while the disk is full: {body}");
        assert!(body["reason"].as_str().is_some_and(|r| r.contains("ledger")), "{body}");
    }
    let metrics = http.get(format!("{internal}/metrics")).send().await.unwrap().text().await.unwrap();
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keyward_ledger_failures_total "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "no ledger failure counted:\n{metrics}");

    // Another writer is not locked out meanwhile: the CLI finds the disk full, not the
    // database locked by a transaction that never ends.
    let config_arg = server.config_file.to_str().unwrap().to_owned();
    let during = keyward_bare(path, &["--config", &config_arg, "clients", "add", "during", "--profiles", PROFILE])
        .output()
        .unwrap();
    println!("clients add while full: {:?}, {}", during.status.code(), text(&during.stderr).trim());
    assert!(!text(&during.stderr).contains("locked"), "clients add while full: {}", text(&during.stderr));

    // Space returns: tokens are issued and recorded again, without a restart.
    std::fs::remove_file(data.join("filler")).unwrap();
    let recovered = Instant::now();
    let mut after = Vec::new();
    while after.is_empty() {
        assert!(recovered.elapsed() < Duration::from_secs(30), "no token issued within 30 s of space returning");
        if let (200, Some(jti)) = sign(&http, &internal, &token, "after").await {
            after.push(jti);
        }
    }
    for i in 0..20 {
        let (status, jti) = sign(&http, &internal, &token, &format!("after-{i}")).await;
        assert_eq!(status, 200, "request {i} after recovery");
        after.extend(jti);
    }
    let committed = committed_jtis(&database).await;
    assert!(after.iter().all(|jti| committed.contains(jti)), "tokens after recovery have no committed row");
    let ready_again = Instant::now();
    loop {
        let (status, body) = status_of(&http, &format!("{}/readyz", server.public)).await;
        if status == 200 {
            break;
        }
        assert!(ready_again.elapsed() < Duration::from_secs(10), "/readyz still not ready after recovery: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The log said why once for the outage, and that it ended.
    let (outages, recoveries) = (
        log_lines(&server, "the issuance ledger cannot commit"),
        log_lines(&server, "the issuance ledger commits again"),
    );
    println!("log: {outages} outage line(s), {recoveries} recovery line(s)");
    assert!(outages >= 1 && outages == recoveries, "{outages} outage and {recoveries} recovery log lines");
    assert!(outages * 20 <= full.not_recorded, "{outages} outage log lines for {} refusals", full.not_recorded);
    let per_request = log_lines(&server, "request failed");
    assert!(
        per_request * 20 <= full.not_recorded,
        "{per_request} per-request error lines for {} refusals",
        full.not_recorded
    );

    // Other writers work again: the CLI (another process), then rotation and revocation.
    let added = keyward_bare(path, &["--config", &config_arg, "clients", "add", "later", "--profiles", PROFILE])
        .output()
        .unwrap();
    assert!(added.status.success(), "clients add after recovery: {}", text(&added.stderr));
    let set = &config.key_sets[0].name;
    let old_kid = Store::open(&database)
        .await
        .unwrap()
        .keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.state_at(chrono::Utc::now().timestamp()) == keyward::keys::KeyState::Current)
        .unwrap()
        .kid;
    let rotated = http
        .post(format!("{internal}/v1/key-sets/{set}/rotate"))
        .bearer_auth(&admin)
        .json(&json!({"force": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200, "{}", rotated.text().await.unwrap());
    let revoked = http.post(format!("{internal}/v1/keys/{old_kid}/revoke")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(revoked.status(), 200, "{}", revoked.text().await.unwrap());
    let (status, jti) = sign(&http, &internal, &token, "after-rotation").await;
    assert_eq!(status, 200);
    after.extend(jti);

    // Stopped: every token handed out, before, during and after the full period, is in the
    // ledger, as `keyward audit` reads it.
    let status = server.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}\n{}", server.log_text());
    let audit =
        keyward_bare(path, &["--config", &config_arg, "audit", "--json", "--limit", "1000000"]).output().unwrap();
    assert!(audit.status.success(), "{}", text(&audit.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&audit.stdout).unwrap();
    let audited: HashSet<&str> = rows.iter().map(|r| r["jti"].as_str().unwrap()).collect();
    let missing = full.ok.iter().chain(&after).filter(|jti| !audited.contains(jti.as_str())).count();
    println!(
        "after SIGTERM: {} rows in keyward audit; {} tokens issued while full, {} after; {missing} missing",
        rows.len(),
        full.ok.len(),
        after.len()
    );
    assert_eq!(missing, 0, "tokens with no ledger row after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_data_folder_is_0700_and_every_database_file_0600_while_a_server_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let data = path.join("data");
    let mut config = test_config(path);
    config.server.database_url = format!("sqlite://{}", data.join("keyward.db").display());
    config.server.master_key_file = data.join("master.key");
    let mut server = serve(path, &config, "info");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut server).await);
    let config_arg = server.config_file.to_str().unwrap().to_owned();
    let added = keyward_bare(path, &["--config", &config_arg, "clients", "add", "writer", "--profiles", PROFILE])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", text(&added.stderr));
    let token = text(&added.stdout).trim().to_owned();
    let start = Instant::now();
    while sign(&http, &server.internal, &token, "x").await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "the new client never signed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backup = data.join("copy.db");
    let out = keyward_bare(path, &["--config", &config_arg, "backup", backup.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    assert_eq!(mode(&data), 0o700, "the data folder");
    let files: Vec<PathBuf> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().path()).collect();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in
        ["keyward.db", "keyward.db-wal", "keyward.db-shm", "keyward.db.migrate-lock", "master.key", "copy.db"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} not among {names:?}");
    }
    for file in &files {
        assert_eq!(mode(file), 0o600, "{} has mode {:o}", file.display(), mode(file));
    }
    assert!(server.terminate(Duration::from_secs(15)).await.is_some_and(|s| s.success()));
}

/// Runs `args` against the database and master key in `dir`.
fn cli(dir: &Path, args: &[&str]) -> Output {
    keyward_command(dir, args).output().unwrap()
}

#[tokio::test]
async fn a_database_or_master_key_readable_by_others_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let master = path.join("master.key");
    MasterKey::resolve(None, &master, true).unwrap();
    let created = cli(path, &["--init", "keys", "list"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let database = path.join("keyward.db");
    assert!(master.exists() && database.exists());

    for (file, loose) in [(&database, 0o644), (&master, 0o640), (&database, 0o604)] {
        chmod(file, loose);
        for args in [&["keys", "list"][..], &["clients", "list"], &["audit"], &["check-config"], &["serve"]] {
            let refused = cli(path, args);
            let stderr = text(&refused.stderr);
            assert!(!refused.status.success(), "{args:?} ran with {} at {loose:o}", file.display());
            let fix = format!("chmod 600 {}", file.display());
            assert!(
                stderr.contains(&format!("{} has mode {loose:04o}", file.display())) && stderr.contains(&fix),
                "{args:?}: {stderr}"
            );
        }
        let allowed = cli(path, &["--allow-insecure-permissions", "keys", "list"]);
        assert!(allowed.status.success(), "{}", text(&allowed.stderr));
        assert!(text(&allowed.stderr).contains("readable by group or others"), "{}", text(&allowed.stderr));
        // SQLite gave the files it created meanwhile the database's mode: they are refused too.
        chmod(file, 0o600);
        for companion in ["keyward.db-wal", "keyward.db-shm"].map(|name| path.join(name)) {
            if companion.exists() && mode(&companion) != 0o600 {
                let refused = cli(path, &["clients", "list"]);
                assert!(text(&refused.stderr).contains(&format!("chmod 600 {}", companion.display())));
                chmod(&companion, 0o600);
            }
        }
        let fixed = cli(path, &["clients", "list"]);
        assert!(fixed.status.success(), "{}", text(&fixed.stderr));
    }
    // A command that opens neither does not look.
    chmod(&database, 0o644);
    let probe = cli(path, &["healthcheck"]);
    assert!(!text(&probe.stderr).contains("has mode"), "{}", text(&probe.stderr));
}

#[tokio::test]
async fn a_master_key_systemd_passes_as_a_credential_is_used_at_its_0440_mode_and_refused_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let credentials = path.join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let master = credentials.join("master_key");
    MasterKey::resolve(None, &master, true).unwrap();
    // What systemd makes of LoadCredential=: root's file, 0440, with an ACL for the service.
    chmod(&master, 0o440);
    let run = |credentials_directory: &Path| {
        keyward_command(path, &["--init", "keys", "list"])
            .env("KEYWARD_MASTER_KEY_FILE", &master)
            .env("CREDENTIALS_DIRECTORY", credentials_directory)
            .output()
            .unwrap()
    };
    let used = run(&credentials);
    assert!(used.status.success(), "{}", text(&used.stderr));
    let elsewhere = run(path);
    assert!(!elsewhere.status.success(), "a 0440 key outside the credentials directory was used");
    assert!(text(&elsewhere.stderr).contains("has mode 0440"), "{}", text(&elsewhere.stderr));
}

#[test]
fn the_insecure_permissions_flag_is_documented_in_help() {
    let help = keyward_bare(Path::new("."), &["--help"]).output().unwrap();
    assert!(text(&help.stdout).contains("--allow-insecure-permissions"), "{}", text(&help.stdout));
}
