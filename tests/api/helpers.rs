//! Starting the real application on port 0 with a fresh database: a SQLite file, or a
//! database on the tests' PostgreSQL server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyward::app::snapshot::Shared;
use keyward::config::Duration as Span;
use keyward::config::{Config, ProfileConfig};
use keyward::keys::{Algorithm, HmacAlgorithm};
use keyward::master_key::Keyring;
use keyward::seal::MasterKey;
use keyward::startup::Application;
use keyward::store::Store;
use serde_json::Value;
use sqlx::SqlitePool;
use std::sync::Arc;

/// The SQLite pool under `store` (for tests of what only SQLite has).
pub fn sqlite(store: &Store) -> &SqlitePool {
    match store {
        Store::Sqlite(sqlite) => sqlite.pool(),
        Store::Postgres(_) => panic!("this test looks at SQLite tables, but the store is PostgreSQL"),
    }
}

/// The store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// A `database_url` of a new, empty database (a file in `dir` for SQLite).
    pub async fn new_database_url(self, dir: &Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}", dir.join("keyward.db").display()),
            Backend::Postgres => crate::postgres::fresh_database().await,
        }
    }
}

/// Each `async fn name(backend: Backend) { ... }` becomes two tests, `name::sqlite` and
/// `name::postgres`: one suite, run against both stores.
macro_rules! on_both_stores {
    ($($(#[$meta:meta])* async fn $name:ident($backend:ident: Backend) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            use super::*;

            async fn run($backend: $crate::helpers::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run($crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}
pub(crate) use on_both_stores;

/// A running keyward and what a test needs to talk to it.
pub struct TestApp {
    pub public: String,
    pub internal: String,
    pub config: Config,
    pub master: MasterKey,
    pub store: Store,
    pub http: reqwest::Client,
    pub shared: Arc<Shared>,
    pub dir: tempfile::TempDir,
}

/// The example configuration, on port 0 and a fresh database in `dir`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.public_addr = "127.0.0.1:0".parse().unwrap();
    config.server.internal_addr = "127.0.0.1:0".parse().unwrap();
    config.server.database_url = format!("sqlite://{}", dir.join("keyward.db").display());
    config.server.master_key_file = dir.join("master.key");
    config
}

/// The default configuration, unchanged but for addresses and files.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The default configuration with the key set's algorithm changed.
pub async fn spawn_app_with_algorithm(algorithm: Algorithm) -> TestApp {
    spawn_app_with(|c| c.key_sets[0].algorithm = algorithm).await
}

/// A configuration adjusted by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(Backend::Sqlite, adjust).await
}

/// A configuration adjusted by `adjust`, over a new database of `backend`.
pub async fn spawn_app_on(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.database_url = backend.new_database_url(dir.path()).await;
    adjust(&mut config);
    spawn_in(dir, config, MasterKey::generate()).await
}

/// Starts the application over an existing folder (and database).
pub async fn spawn_in(dir: tempfile::TempDir, config: Config, master: MasterKey) -> TestApp {
    let public = std::net::TcpListener::bind(config.server.public_addr).unwrap();
    spawn_on(dir, config, master, public).await
}

/// Starts the application with its public listener bound already (so that a test can put
/// the public address in the configuration first, with no window for another to take it).
pub async fn spawn_on(
    dir: tempfile::TempDir,
    config: Config,
    master: MasterKey,
    public: std::net::TcpListener,
) -> TestApp {
    let internal = std::net::TcpListener::bind(config.server.internal_addr).unwrap();
    let app =
        Application::build_on(config.clone(), master.clone(), 1, public, internal).await.expect("application builds");
    let public = format!("http://127.0.0.1:{}", app.public_port());
    let internal = format!("http://127.0.0.1:{}", app.internal_port());
    let shared = app.shared();
    tokio::spawn(app.run_until_stopped());
    let store = Store::connect(&config.database()).await.unwrap();
    TestApp { public, internal, config, master, store, http: reqwest::Client::new(), shared, dir }
}

impl TestApp {
    /// The store's SQLite pool, for tests that look at or alter tables directly.
    pub fn pool(&self) -> &SqlitePool {
        sqlite(&self.store)
    }

    /// The keyring the server seals with (its terms sealed under `master`).
    pub fn keyring(&self) -> Arc<Keyring> {
        self.shared.keyring()
    }

    /// A client allowed to use `profiles`, created through the library.
    pub async fn client(&self, name: &str, profiles: &[&str]) -> String {
        let profiles: Vec<String> = profiles.iter().map(|p| p.to_string()).collect();
        let token = keyward::ops::clients::add(&self.store, &self.config, name, &profiles, false, 0).await.unwrap();
        self.reload().await;
        token.to_string()
    }

    /// Makes the server see a change made through the library at once, as an in-process
    /// admin action does (changes by other processes are found by the watcher instead).
    pub async fn reload(&self) {
        self.shared.reload().await.unwrap();
    }

    /// Rotates the first key set now, even if its next key is fresh; returns the new signer.
    pub async fn force_rotate(&self) -> String {
        let set = &self.config.key_sets[0].name;
        let steps = keyward::ops::rotate(&self.store, self.shared.custody(), &self.config, set, true).await.unwrap();
        match &steps[0] {
            keyward::keys::rotation::Step::Promote { kid } => kid.clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// POST /v1/profiles/{profile}/sign with a bearer token and a JSON body.
    pub async fn sign(&self, profile: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/profiles/{profile}/sign", self.internal))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Signs and returns the 200 body, failing the test otherwise.
    pub async fn sign_ok(&self, profile: &str, token: &str, body: &Value) -> Value {
        let response = self.sign(profile, token, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// GET a JWKS path on the public listener.
    pub async fn jwks(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.public)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Polls `check` every 100 ms until it holds or `limit` passes (slower than
    /// [`eventually`]: a check that reads the database holds the log a checkpoint waits for).
    pub async fn eventually<F, Fut>(&self, limit: Duration, check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        poll_until(limit, Duration::from_millis(100), check).await
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(limit, Duration::from_millis(20), check).await
}

async fn poll_until<F, Fut>(limit: Duration, every: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    false
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether `needle` (not empty) occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Everything SQLite wrote for the database in `dir`: the file and its write-ahead log.
pub fn database_bytes(dir: &Path) -> Vec<u8> {
    let mut stored = std::fs::read(dir.join("keyward.db")).unwrap();
    stored.extend(std::fs::read(dir.join("keyward.db-wal")).unwrap_or_default());
    stored
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `program`, which the Debian package `package` installs; a test that needs it and does
/// not find it fails saying how to install it (never skips).
pub fn tool(program: &str, package: &str) -> Command {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "this test runs `{program}`, which is not installed: apt-get install {package} \
         (Debian/Ubuntu), or run scripts/test.sh, which installs what the tests need"
    );
    Command::new(program)
}

/// The binary, run in `dir` with its database and master key file there.
pub fn keyward(dir: &Path, args: &[&str]) -> Output {
    keyward_command(dir, args).output().unwrap()
}

/// A shared-secret profile: the built-in profile without its key set and assertion claims.
pub fn shared_secret_profile(
    name: &str,
    algorithm: HmacAlgorithm,
    claims: Value,
    default_ttl: u64,
    max_ttl: u64,
) -> ProfileConfig {
    let mut profile = Config::default().profiles[0].clone();
    profile.name = name.to_owned();
    profile.key_set = None;
    profile.algorithm = Some(algorithm);
    profile.issuer = None;
    profile.audience = None;
    profile.static_claims.clear();
    profile.allowed_claims.clear();
    profile.claims = Some(serde_json::from_value(claims).unwrap());
    profile.default_ttl = Span::from_secs(default_ttl);
    profile.max_ttl = Span::from_secs(max_ttl);
    profile
}

/// The partner API seed: HS256 over `clientId`, `iat`, `exp`, 15 minutes.
pub fn partner_api() -> ProfileConfig {
    let claims = serde_json::json!({"clientId": "your-client-id", "iat": "{iat}", "exp": "{exp}"});
    shared_secret_profile("partner-api", HmacAlgorithm::Hs256, claims, 900, 900)
}

/// Asserts a problem+json response with `status`, returning its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    for member in ["type", "title", "status", "detail"] {
        assert!(body.get(member).is_some(), "problem lacks {member}: {body}");
    }
    assert_eq!(body["status"], status);
    let allowed = ["type", "title", "status", "detail", "field", "permission"];
    for key in body.as_object().unwrap().keys() {
        assert!(allowed.contains(&key.as_str()), "unexpected member {key} in {body}");
    }
    body
}

/// A `keyward serve` process with its own ports, over a configuration file in `dir`.
pub struct Serve {
    pub child: Child,
    pub public: String,
    pub internal: String,
    pub log: PathBuf,
    pub config_file: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Sends SIGTERM; waits up to `limit` for the exit status.
    pub async fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

static SERVES: AtomicUsize = AtomicUsize::new(0);

/// Starts `keyward serve` on port 0 over a configuration file in `dir`, logging JSON at
/// `level` to a file.
pub fn serve(dir: &Path, config: &Config, level: &str) -> Serve {
    serve_with_env(dir, config, level, &[])
}

/// [`serve`], with these environment variables too.
pub fn serve_with_env(dir: &Path, config: &Config, level: &str, env: &[(&str, &str)]) -> Serve {
    let mut config = config.clone();
    config.server.public_addr = "127.0.0.1:0".parse().unwrap();
    config.server.internal_addr = "127.0.0.1:0".parse().unwrap();
    let n = SERVES.fetch_add(1, Ordering::SeqCst);
    let config_file = dir.join(format!("keys-{n}.toml"));
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    let log = dir.join(format!("serve-{n}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["--config", config_file.to_str().unwrap(), "serve"])
        .current_dir(dir)
        .env_clear()
        .env("RUST_LOG", level)
        .env("KEYWARD_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Serve { child, public: String::new(), internal: String::new(), log, config_file }
}

/// Waits for the "listening" log line, then for /readyz to answer 200.
pub async fn wait_healthy(http: &reqwest::Client, serve: &mut Serve) -> bool {
    for _ in 0..300 {
        if serve.public.is_empty() {
            let log = serve.log_text();
            let listening = log
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["fields"]["message"] == "listening");
            if let Some(line) = listening {
                serve.public = format!("http://{}", line["fields"]["public"].as_str().unwrap());
                serve.internal = format!("http://{}", line["fields"]["internal"].as_str().unwrap());
            }
        }
        if !serve.public.is_empty()
            && http.get(format!("{}/readyz", serve.public)).send().await.is_ok_and(|r| r.status() == 200)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = serve.log_text();
    eprintln!("keyward serve did not come up; its log:\n{}", &log[log.len().saturating_sub(20_000)..]);
    false
}

/// The keyward binary, run in `dir` with a clean environment (`PATH` only).
pub fn keyward_bare(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyward"));
    command.args(args).current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// The keyward binary, run in `dir` with its database and master key file there.
pub fn keyward_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = keyward_bare(dir, args);
    command
        .env("KEYWARD_DATABASE_URL", format!("sqlite://{}", dir.join("keyward.db").display()))
        .env("KEYWARD_MASTER_KEY_FILE", dir.join("master.key"));
    command
}
