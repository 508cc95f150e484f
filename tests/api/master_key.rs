//! The master key as a keyring: rotated online, everything re-sealed under fresh key
//! material (resumable after kill -9), nothing left that the old material opens, and the
//! status report; on SQLite and PostgreSQL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use keyward::config::{Config, MasterKeyConfig, MasterKeySource};
use keyward::keys::Algorithm;
use keyward::master_key::{Keyring, Roots};
use keyward::ops::master_key;
use keyward::seal::MasterKey;
use keyward::startup::Application;
use keyward::store::rows::SealedKind;
use keyward::store::Store;
use serde_json::{json, Value};

use crate::helpers::{
    keyward_bare, now, on_both_stores, partner_api, serve_with_env, spawn_in, test_config, text, wait_healthy, Backend,
    Serve, TestApp,
};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";
const JWKS: &str = "/.well-known/jwks.json";
const SECRET: &[u8] = b"a-partner-secret-of-forty-bytes-or-more-0123456789";

/// A master key in a 0600 file in `dir`, as a secrets manager would mount it.
pub(crate) fn key_file(dir: &Path, name: &str) -> (PathBuf, MasterKey) {
    let bytes: [u8; 32] = rand::random();
    let path = dir.join(name);
    std::fs::write(&path, STANDARD.encode(bytes)).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (path, MasterKey::from_bytes(bytes))
}

fn file_table(path: &Path) -> MasterKeyConfig {
    MasterKeyConfig { file: Some(path.to_owned()), ..MasterKeyConfig::of(MasterKeySource::File) }
}

/// `[master_key]` from `current`, with `[master_key.previous]` from `previous`.
pub(crate) fn with_keys(config: &Config, current: &Path, previous: Option<&Path>) -> Config {
    let mut config = config.clone();
    let mut table = file_table(current);
    table.previous = previous.map(|p| Box::new(file_table(p)));
    config.master_key = Some(Box::new(table));
    config
}

/// The keyward binary with `config` written to `dir/name.toml`.
pub(crate) fn cli(dir: &Path, config: &Config, args: &[&str]) -> Output {
    let file = dir.join(format!("keys-{}.toml", rand::random::<u32>()));
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    let mut all = vec!["--config", file.to_str().unwrap()];
    all.extend_from_slice(args);
    keyward_bare(dir, &all).output().unwrap()
}

fn cli_ok(dir: &Path, config: &Config, args: &[&str]) -> String {
    let out = cli(dir, config, args);
    assert!(out.status.success(), "keyward {args:?}: {}", text(&out.stderr));
    text(&out.stderr) + &text(&out.stdout)
}

/// A configuration over a new database of `backend`, ES256 for speed, with a
/// shared-secret profile so that secrets are sealed too.
async fn base_config(backend: Backend, dir: &Path) -> Config {
    let mut config = test_config(dir);
    config.key_sets[0].algorithm = Algorithm::Es256;
    config.profiles.push(partner_api());
    config.server.database_url = backend.new_database_url(dir).await;
    config
}

async fn signs_and_verifies(app: &TestApp, token: &str) {
    let body = app.sign_ok(PROFILE, token, &json!({"sub": "acct-1"})).await;
    let jwks = app.jwks(JWKS).await;
    verify(body["token"].as_str().unwrap(), &jwks).expect("the token verifies against the published JWKS");
}

/// The context every sealed value is bound to, as keyward seals it.
fn context_of(kind: SealedKind, name: &str, key_set: &str, algorithm: &str) -> Vec<String> {
    match kind {
        SealedKind::Key => vec![name.to_owned(), key_set.to_owned(), algorithm.to_owned()],
        SealedKind::Secret => vec!["profile-secret".to_owned(), name.to_owned()],
    }
}

/// Every sealed value of the store: (kind, row, context, blob, sealed by).
async fn sealed_values(store: &Store) -> Vec<(Vec<String>, Vec<u8>, String)> {
    store
        .sealed_not_under("", 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (context_of(i.kind, &i.name, &i.key_set, &i.algorithm), i.blob, i.sealed_by))
        .collect()
}

/// The bytes of the files that hold the tables with sealed values: SQLite's database and
/// log; PostgreSQL's relation files of keys, secrets, keyring and the audit events (after
/// a checkpoint).
async fn stored_bytes(store: &Store, dir: &Path) -> Vec<u8> {
    match store {
        Store::Sqlite(_) => crate::helpers::database_bytes(dir),
        Store::Postgres(pg) => {
            sqlx::query("CHECKPOINT").execute(pg.pool()).await.unwrap();
            let data: String = sqlx::query_scalar("SHOW data_directory").fetch_one(pg.pool()).await.unwrap();
            let files: Vec<String> = sqlx::query_scalar(
                "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid IN \
                 (SELECT oid FROM pg_class WHERE relname IN ('keys', 'secrets', 'keyring', 'events') \
                  UNION SELECT reltoastrelid FROM pg_class WHERE relname IN ('keys', 'secrets', 'keyring', 'events'))",
            )
            .fetch_all(pg.pool())
            .await
            .unwrap();
            let mut bytes = Vec::new();
            for file in files {
                let path = Path::new(&data).join(file);
                // A relation may have several 1 GB segments and a free-space map: read them all.
                let folder = path.parent().unwrap();
                let stem = path.file_name().unwrap().to_str().unwrap().to_owned();
                for entry in std::fs::read_dir(folder).unwrap().flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if name == stem || name.starts_with(&format!("{stem}.")) || name.starts_with(&format!("{stem}_")) {
                        bytes.extend(std::fs::read(entry.path()).unwrap());
                    }
                }
            }
            assert!(!bytes.is_empty(), "found no relation files");
            bytes
        }
    }
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

on_both_stores! {
    async fn the_master_key_rotates_online_and_then_only_the_new_key_opens_the_database(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let config = base_config(backend, dir.path()).await;
        let (old_path, old) = key_file(dir.path(), "old.key");
        let (new_path, new) = key_file(dir.path(), "new.key");
        let old_only = with_keys(&config, &old_path, None);
        let rotating = with_keys(&config, &new_path, Some(&old_path));
        let new_only = with_keys(&config, &new_path, None);

        let app = spawn_in(tempfile::tempdir().unwrap(), old_only.clone(), old.clone()).await;
        let token = app.client("backend", &[PROFILE]).await;
        signs_and_verifies(&app, &token).await;
        keyward::ops::secrets::set(&app.store, &app.keyring(), &app.config, "partner-api", SECRET, now()).await.unwrap();

        // The servers were given the new key beside the old one: check-config says so.
        let checked = cli_ok(dir.path(), &rotating, &["check-config"]);
        assert!(checked.contains(&format!("still sealed with the previous master key {}", old.id())), "{checked}");
        let started = Instant::now();
        let rotated = cli_ok(dir.path(), &rotating, &["master-key", "rotate"]);
        println!("rotation took {:?} ({backend:?})", started.elapsed());
        assert!(rotated.contains(new.id()) && rotated.contains(old.id()), "{rotated}");
        let again = cli_ok(dir.path(), &rotating, &["master-key", "rotate"]);
        assert!(again.contains("nothing to do"), "{again}");

        // The running server (started with the old key only) signs on, and makes new keys.
        signs_and_verifies(&app, &token).await;
        app.force_rotate().await;
        signs_and_verifies(&app, &token).await;

        let status: Value = serde_json::from_str(&text(&cli(dir.path(), &new_only, &["master-key", "status", "--json"]).stdout)).unwrap();
        assert_eq!(status["master_key_id"], new.id());
        assert_eq!(status["source"], "file");
        assert_eq!(status["needs_old_key"], json!([]), "{status}");
        assert!(status["rotated_at"].as_i64().unwrap() >= now() - 60);
        assert!(status["terms"][0]["sealed"].as_i64().unwrap() >= 3, "{status}");

        // Only the old key: refused, naming the id it needs, changing nothing.
        let before = sealed_values(&app.store).await;
        let err = Application::build(old_only.clone(), old.clone(), 1).await.err().expect("the old key alone must be refused");
        let message = format!("{err:#}");
        assert!(message.contains(&format!("sealed with master key {}", new.id())) && message.contains("nothing was changed"), "{message}");
        let out = cli(dir.path(), &old_only, &["check-config"]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(new.id()), "{}", text(&out.stderr));
        assert_eq!(sealed_values(&app.store).await, before);

        // Only the new key: starts, signs, verifies.
        cli_ok(dir.path(), &new_only, &["check-config"]);
        let fresh = spawn_in(tempfile::tempdir().unwrap(), new_only.clone(), new.clone()).await;
        signs_and_verifies(&fresh, &token).await;
    }

    async fn a_reseal_leaves_nothing_that_the_old_key_material_opens(backend: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let config = base_config(backend, dir.path()).await;
        let (old_path, old) = key_file(dir.path(), "old.key");
        let (new_path, new) = key_file(dir.path(), "new.key");
        let rotating = with_keys(&config, &new_path, Some(&old_path));
        let new_only = with_keys(&config, &new_path, None);
        let first = spawn_in(tempfile::tempdir().unwrap(), with_keys(&config, &old_path, None), old.clone()).await;
        let token = first.client("backend", &[PROFILE]).await;
        keyward::ops::secrets::set(&first.store, &first.keyring(), &first.config, "partner-api", SECRET, now()).await.unwrap();
        first.force_rotate().await;
        let old_keyring: Keyring = (*first.keyring()).clone();
        let old_term = old_keyring.active().key.clone();
        let old_values = sealed_values(&first.store).await;
        assert!(old_values.len() >= 4, "keys and a secret are sealed");

        cli_ok(dir.path(), &rotating, &["master-key", "rotate"]);
        // A server started with the new key only, running through the re-seal.
        let app = spawn_in(tempfile::tempdir().unwrap(), new_only.clone(), new.clone()).await;
        let out = cli_ok(dir.path(), &new_only, &["master-key", "reseal", "--settle", "1s"]);
        assert!(out.contains("every sealed value is under term 2"), "{out}");

        // The scan: the old term opens no sealed value, and no old id or blob is stored.
        let values = sealed_values(&app.store).await;
        assert_eq!(values.len(), old_values.len());
        for (context, blob, sealed_by) in &values {
            let context: Vec<&str> = context.iter().map(String::as_str).collect();
            assert!(old_term.open(blob, &context).is_err(), "the old term opens {context:?}");
            assert!(old_keyring.open(blob, &context, sealed_by).is_err());
            assert_ne!(sealed_by, old_term.id());
        }
        let bytes = stored_bytes(&app.store, dir.path()).await;
        for id in [old_term.id(), old.id()] {
            assert!(!holds(&bytes, id.as_bytes()), "{id} is still in the stored files ({backend:?})");
        }
        for (_, blob, _) in &old_values {
            assert!(!holds(&bytes, &blob[1..25]), "a blob sealed under the old term is still stored ({backend:?})");
        }

        // The running server loaded the new term: it signs, and seals new keys under it.
        app.eventually(Duration::from_secs(10), || async { app.keyring().active().number == 2 }).await;
        assert_eq!(app.keyring().active().number, 2);
        app.force_rotate().await;
        signs_and_verifies(&app, &token).await;
        // The first server, which has only the old key, keeps signing with what it holds, and
        // says why it is not ready.
        signs_and_verifies(&first, &token).await;
        let ready = reqwest::get(format!("{}/readyz", first.public)).await.unwrap();
        assert_eq!(ready.status(), 503);
        let reason = ready.text().await.unwrap();
        assert!(reason.contains("keyring"), "{reason}");

        let status: Value = serde_json::from_str(&text(&cli(dir.path(), &new_only, &["master-key", "status", "--json"]).stdout)).unwrap();
        assert_eq!(status["terms"].as_array().unwrap().len(), 1, "{status}");
        assert_eq!(status["terms"][0]["number"], 2);
        assert_eq!(status["needs_old_key"], json!([]), "{status}");
        let again = cli_ok(dir.path(), &new_only, &["master-key", "status"]);
        assert!(again.contains("nothing needs an older master key"), "{again}");

        // A backup taken now opens with the new key alone.
        if backend == Backend::Sqlite {
            let backup = dir.path().join("after.db");
            cli_ok(dir.path(), &new_only, &["backup", backup.to_str().unwrap()]);
            let copy = Store::open(&backup).await.unwrap();
            let keyring = master_key::open(&copy, &Roots::from(new.clone()), now()).await.unwrap();
            for (context, blob, sealed_by) in sealed_values(&copy).await {
                let context: Vec<&str> = context.iter().map(String::as_str).collect();
                keyring.open(&blob, &context, &sealed_by).unwrap();
            }
            assert!(master_key::open(&copy, &Roots::from(old.clone()), now()).await.is_err());
        }
    }

    async fn a_reseal_killed_mid_way_finishes_when_run_again(backend: Backend) {
        const ITEMS: usize = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let config = base_config(backend, dir.path()).await;
        let (old_path, old) = key_file(dir.path(), "old.key");
        let (new_path, new) = key_file(dir.path(), "new.key");
        let rotating = with_keys(&config, &new_path, Some(&old_path));
        let new_only = with_keys(&config, &new_path, None);
        let store = Store::connect(&config.database()).await.unwrap();
        let keyring = master_key::open(&store, &Roots::from(old.clone()), now()).await.unwrap();
        bulk_sealed_keys(&store, &keyring, ITEMS).await;

        let started = Instant::now();
        cli_ok(dir.path(), &rotating, &["master-key", "rotate"]);
        let rotation = started.elapsed();

        // kill -9 once a few batches are in.
        let file = dir.path().join("reseal.toml");
        std::fs::write(&file, toml::to_string(&new_only).unwrap()).unwrap();
        let mut child = keyward_bare(dir.path(), &["--config", file.to_str().unwrap(), "master-key", "reseal", "--settle", "0s"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = 0;
        while let Some(Ok(line)) = lines.next() {
            if let Some(n) = line.strip_prefix("re-sealed ").and_then(|l| l.split(' ').next()).and_then(|n| n.parse::<usize>().ok()) {
                seen = n;
                if n >= 2_000 {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!((2_000..ITEMS).contains(&seen), "killed after {seen}");
        let counts = store.sealed_counts().await.unwrap();
        assert_eq!(counts.len(), 2, "half done: two terms in use {counts:?}");

        let started = Instant::now();
        let out = cli_ok(dir.path(), &new_only, &["master-key", "reseal", "--settle", "0s"]);
        let resumed = started.elapsed();
        assert!(out.contains("every sealed value is under term 2"), "{out}");
        let counts = store.sealed_counts().await.unwrap();
        assert_eq!(counts.len(), 1, "{counts:?}");
        assert_eq!(counts[0].1, ITEMS as i64);

        // A whole re-seal of the 10,000, timed.
        let started = Instant::now();
        let out = cli_ok(dir.path(), &new_only, &["master-key", "reseal", "--settle", "0s"]);
        let whole = started.elapsed();
        assert!(out.contains("every sealed value is under term 3"), "{out}");
        println!(
            "{backend:?}: rotation {rotation:?}; re-seal of {ITEMS} sealed values {whole:?} (resuming one killed after \
             {seen}: {resumed:?})"
        );
        let keyring = master_key::open(&store, &Roots::from(new), now()).await.unwrap();
        for (context, blob, sealed_by) in sealed_values(&store).await {
            let context: Vec<&str> = context.iter().map(String::as_str).collect();
            keyring.open(&blob, &context, &sealed_by).unwrap();
        }
    }
}

/// `count` sealed keys of a key set no server serves, written straight to the table.
async fn bulk_sealed_keys(store: &Store, keyring: &Keyring, count: usize) {
    let der = vec![7u8; 138];
    let rows: Vec<(String, Vec<u8>, String)> = (0..count)
        .map(|i| {
            let kid = format!("bulk-{i:05}");
            let (blob, by) = keyring.seal(&der, &[&kid, "bulk", "ES256"]).unwrap();
            (kid, blob, by)
        })
        .collect();
    const INSERT: &str = "INSERT INTO keys (kid, key_set, algorithm, public_jwk, sealed_private, master_key_id, \
         created_at) VALUES ($1, 'bulk', 'ES256', '{}', $2, $3, 0)";
    match store {
        Store::Sqlite(s) => {
            let mut tx = keyward::store::sqlite::begin_write(s.pool()).await.unwrap();
            for (kid, blob, by) in &rows {
                sqlx::query(INSERT).bind(kid).bind(blob).bind(by).execute(&mut *tx).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        Store::Postgres(s) => {
            let mut tx = keyward::store::postgres::WriteTx::begin(s.pool()).await.unwrap();
            for (kid, blob, by) in &rows {
                sqlx::query(INSERT).bind(kid).bind(blob).bind(by).execute(&mut *tx).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
    }
}

/// A replica started with `config` (and `env`), up and answering.
async fn replica(dir: &Path, config: &Config, env: &[(&str, &str)], http: &reqwest::Client) -> Serve {
    let mut serve = serve_with_env(dir, config, "info", env);
    assert!(wait_healthy(http, &mut serve).await, "a replica did not come up: {}", serve.log_text());
    serve
}

/// Signs on `replica` and verifies the token against the JWKS it serves; the jti, or why not.
async fn sign_and_verify(http: &reqwest::Client, replica: &Serve, token: &str, n: usize) -> Result<String, String> {
    let response = http
        .post(format!("{}/v1/profiles/{PROFILE}/sign", replica.internal))
        .bearer_auth(token)
        .json(&json!({"sub": format!("acct-{n}")}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| format!("no answer from {}: {e}", replica.internal))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Err(format!("{status} from {}: {body}", replica.internal));
    }
    let jwks: Value = http
        .get(format!("{}{JWKS}", replica.public))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    verify(body["token"].as_str().unwrap(), &jwks).map_err(|e| format!("verification failed: {e}"))?;
    Ok(body["jti"].as_str().unwrap().to_owned())
}

/// A CLI command running beside the signing loop.
fn spawn_cli(dir: &Path, config: &Config, args: &[&str]) -> std::process::Child {
    let file = dir.join(format!("cli-{}.toml", rand::random::<u32>()));
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    let mut all = vec!["--config", file.to_str().unwrap()];
    all.extend_from_slice(args);
    keyward_bare(dir, &all).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_sign_through_a_rotation_and_a_reseal_then_start_with_the_new_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.key_sets[0].algorithm = Algorithm::Es256;
    config.profiles.push(partner_api());
    config.server.database_url = crate::postgres::fresh_database().await;
    let (old_path, old) = key_file(dir.path(), "old.key");
    let (new_path, new) = key_file(dir.path(), "new.key");
    let old_only = with_keys(&config, &old_path, None);
    let rotating = with_keys(&config, &new_path, Some(&old_path));
    let new_only = with_keys(&config, &new_path, None);
    // Replica B takes the new key from a variable instead of a file.
    let from_env = |config: &Config| {
        let mut config = config.clone();
        let table = config.master_key.as_mut().unwrap();
        table.source = MasterKeySource::Env;
        table.file = None;
        table.variable = Some("NEW_MASTER_KEY".to_owned());
        config
    };
    let new_b64 = std::fs::read_to_string(&new_path).unwrap();
    let env = [("NEW_MASTER_KEY", new_b64.trim())];
    let http = reqwest::Client::new();
    let mut replicas =
        vec![replica(dir.path(), &old_only, &[], &http).await, replica(dir.path(), &old_only, &[], &http).await];
    let store = Store::connect(&config.database()).await.unwrap();
    let token = keyward::ops::clients::add(&store, &config, "backend", &[PROFILE.to_owned()], false, now())
        .await
        .unwrap()
        .to_string();
    let admin = keyward::ops::clients::add(&store, &config, "ops", &[], true, now()).await.unwrap().to_string();
    keyward::ops::secrets::set(
        &store,
        &master_key::open(&store, &Roots::from(old.clone()), now()).await.unwrap(),
        &config,
        "partner-api",
        SECRET,
        now(),
    )
    .await
    .unwrap();

    // Steps, each taken once the one before finished, while both replicas (or the one up)
    // sign in a loop: give each replica the new key beside the old (a restart each, one at
    // a time), rotate, re-seal (with a key made by a replica meanwhile), then sign on a while.
    let (mut issued, mut failures) = (Vec::<String>::new(), Vec::<String>::new());
    let mut step = 0;
    let mut command: Option<std::process::Child> = None;
    let mut finished_at: Option<Instant> = None;
    let mut n = 0usize;
    let started = Instant::now();
    while finished_at.is_none_or(|at| at.elapsed() < Duration::from_secs(2)) {
        assert!(started.elapsed() < Duration::from_secs(240), "the steps did not finish (step {step})");
        n += 1;
        let target = &replicas[n % replicas.len()];
        match sign_and_verify(&http, target, &token, n).await {
            Ok(jti) => issued.push(jti),
            Err(why) => failures.push(why),
        }
        if !n.is_multiple_of(10) {
            continue;
        }
        match step {
            0 | 1 => {
                // Replica `step` restarts with both keys; the other signs meanwhile.
                replicas[step].terminate(Duration::from_secs(15)).await.expect("a replica stops on SIGTERM");
                let with_both = if step == 1 { from_env(&rotating) } else { rotating.clone() };
                replicas[step] = replica(dir.path(), &with_both, &env, &http).await;
                step += 1;
            }
            2 => {
                command = Some(spawn_cli(dir.path(), &rotating, &["master-key", "rotate"]));
                step += 1;
            }
            3 | 5 => {
                let child = command.as_mut().unwrap();
                if let Some(status) = child.try_wait().unwrap() {
                    let mut stderr = String::new();
                    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                    assert!(status.success(), "{stderr}");
                    command = match step {
                        3 => Some(spawn_cli(dir.path(), &new_only, &["master-key", "reseal", "--settle", "2s"])),
                        _ => None,
                    };
                    if step == 5 {
                        finished_at = Some(Instant::now());
                    }
                    step += 1;
                }
            }
            4 => {
                // A key made by a running replica during the re-seal.
                let rotated = http
                    .post(format!("{}/v1/key-sets/{}/rotate", replicas[0].internal, config.key_sets[0].name))
                    .bearer_auth(&admin)
                    .json(&json!({"force": true}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(rotated.status(), 200, "{}", rotated.text().await.unwrap());
                step += 1;
            }
            _ => {}
        }
    }
    println!(
        "two replicas: {} tokens issued and verified through rotation and re-seal, {} failures",
        issued.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    let rows: std::collections::HashSet<String> = store
        .issuance(&keyward::store::rows::Filter::default(), 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.jti)
        .collect();
    let missing: Vec<&String> = issued.iter().filter(|jti| !rows.contains(*jti)).collect();
    assert!(missing.is_empty(), "200s without a ledger row: {missing:?}");
    let counts = store.sealed_counts().await.unwrap();
    assert_eq!(counts.len(), 1, "everything under one term: {counts:?}");

    // The old key is gone: both replicas start with the new key alone, sign, and verify.
    for serve in &mut replicas {
        serve.terminate(Duration::from_secs(15)).await.expect("a replica stops on SIGTERM");
    }
    let fresh = [
        replica(dir.path(), &new_only, &[], &http).await,
        replica(dir.path(), &from_env(&new_only), &env, &http).await,
    ];
    for (i, serve) in fresh.iter().enumerate() {
        sign_and_verify(&http, serve, &token, i).await.unwrap();
    }
    let status: Value = http
        .get(format!("{}/v1/master-key", fresh[1].internal))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["master_key_id"], new.id());
    assert_eq!(status["needs_old_key"], json!([]), "{status}");
    assert_eq!(status["terms"][0]["number"], 2, "{status}");
    let metrics = http.get(format!("{}/metrics", fresh[0].internal)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keyward_master_key_age_seconds "), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_sealed_before_the_keyring_takes_its_master_key_as_term_1_until_a_reseal() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(Backend::Sqlite, dir.path()).await;
    let (old_path, old) = key_file(dir.path(), "old.key");
    let (new_path, new) = key_file(dir.path(), "new.key");
    // A database as keyward left it before the keyring: rows sealed under the master key
    // itself, no keyring record.
    let app = spawn_in(tempfile::tempdir().unwrap(), with_keys(&config, &old_path, None), old.clone()).await;
    keyward::ops::secrets::set(&app.store, &app.keyring(), &app.config, "partner-api", SECRET, now()).await.unwrap();
    let keyring = app.keyring();
    let store = app.store.clone();
    let pool = crate::helpers::sqlite(&store);
    for item in store.sealed_not_under("", 1000).await.unwrap() {
        let context = context_of(item.kind, &item.name, &item.key_set, &item.algorithm);
        let context: Vec<&str> = context.iter().map(String::as_str).collect();
        let plain = keyring.open(&item.blob, &context, &item.sealed_by).unwrap();
        let blob = old.seal(&plain, &context).unwrap();
        let statement = match item.kind {
            SealedKind::Key => "UPDATE keys SET sealed_private = ?, master_key_id = ? WHERE kid = ?",
            SealedKind::Secret => "UPDATE secrets SET sealed_secret = ?, master_key_id = ? WHERE profile = ?",
        };
        sqlx::query(statement).bind(blob).bind(old.id()).bind(&item.name).execute(pool).await.unwrap();
    }
    sqlx::query("DELETE FROM keyring").execute(pool).await.unwrap();

    // check-config accepts it without writing; the first start makes the keyring.
    cli_ok(dir.path(), &with_keys(&config, &old_path, None), &["check-config"]);
    assert!(store.keyring().await.unwrap().is_none(), "check-config wrote");
    let status: Value = serde_json::from_str(&text(
        &cli(dir.path(), &with_keys(&config, &old_path, None), &["master-key", "status", "--json"]).stdout,
    ))
    .unwrap();
    assert_eq!(status["terms"][0]["id"], old.id(), "{status}");
    assert_eq!(status["terms"][0]["legacy"], true, "{status}");
    assert!(status["needs_old_key"].to_string().contains("term 1 is the master key"), "{status}");

    // Another master key is refused, naming the one the rows need.
    let (other_path, _) = key_file(dir.path(), "other.key");
    let out = cli(dir.path(), &with_keys(&config, &other_path, None), &["check-config"]);
    assert!(!out.status.success() && text(&out.stderr).contains(old.id()), "{}", text(&out.stderr));

    cli_ok(dir.path(), &with_keys(&config, &new_path, Some(&old_path)), &["master-key", "rotate"]);
    cli_ok(dir.path(), &with_keys(&config, &new_path, None), &["master-key", "reseal", "--settle", "0s"]);
    let status: Value = serde_json::from_str(&text(
        &cli(dir.path(), &with_keys(&config, &new_path, None), &["master-key", "status", "--json"]).stdout,
    ))
    .unwrap();
    assert_eq!(status["master_key_id"], new.id());
    assert_eq!(status["needs_old_key"], json!([]), "{status}");
    let bytes = stored_bytes(&store, dir.path()).await;
    assert!(!holds(&bytes, old.id().as_bytes()), "the old key's id is still stored");
    for (context, blob, _) in sealed_values(&store).await {
        let context: Vec<&str> = context.iter().map(String::as_str).collect();
        assert!(old.open(&blob, &context).is_err());
    }
}

/// A transaction of another process that is open while a re-seal rewrites the values (a
/// running server's, slowed down by a loaded machine) could still see the replaced row
/// versions: `VACUUM FULL` would copy them into the new files. The re-seal waits until it
/// ends, and only then clears the files.
#[tokio::test]
async fn a_reseal_on_postgres_clears_the_files_only_once_older_transactions_have_ended() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(Backend::Postgres, dir.path()).await;
    let (old_path, old) = key_file(dir.path(), "old.key");
    let (new_path, _) = key_file(dir.path(), "new.key");
    let new_only = with_keys(&config, &new_path, None);
    let store = Store::connect(&config.database()).await.unwrap();
    let keyring = master_key::open(&store, &Roots::from(old.clone()), now()).await.unwrap();
    bulk_sealed_keys(&store, &keyring, 20).await;
    let old_values = sealed_values(&store).await;
    cli_ok(dir.path(), &with_keys(&config, &new_path, Some(&old_path)), &["master-key", "rotate"]);

    // Another session of the same database, in a transaction that has written (so it has
    // an id older than every re-sealed version) and touches none of the re-sealed tables.
    let Store::Postgres(pg) = &store else { unreachable!("a PostgreSQL store") };
    let mut other = pg.pool().acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *other).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *other).await.unwrap();

    let file = dir.path().join("reseal.toml");
    std::fs::write(&file, toml::to_string(&new_only).unwrap()).unwrap();
    let mut child =
        keyward_bare(dir.path(), &["--config", file.to_str().unwrap(), "master-key", "reseal", "--settle", "0s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    // Every value is under the new term: the re-seal is at its last step, and stays there.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.sealed_counts().await.unwrap().len() != 1 || sealed_values(&store).await == old_values {
        assert!(Instant::now() < deadline, "the re-seal did not rewrite the values");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.try_wait().unwrap().is_none(), "the re-seal cleared the files while an older transaction was open");

    sqlx::query("COMMIT").execute(&mut *other).await.unwrap();
    drop(other);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stderr) + &text(&out.stdout);
    assert!(said.contains("every sealed value is under term 2"), "{said}");
    let bytes = stored_bytes(&store, dir.path()).await;
    for (_, blob, _) in &old_values {
        assert!(!holds(&bytes, &blob[1..25]), "a blob sealed under the old term is still stored");
    }
}
