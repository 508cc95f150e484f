//! Signing keys held by key services: Vault's Transit engine (a real OpenBao server, `bao
//! server -dev`) and AWS KMS (moto's KMS server, which signs with real keys), each started
//! on a free loopback port per test. Every signature is verified by an independent
//! implementation against the served JWKS; keys are checked in the service itself.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::types::KeyState;
use keyward::config::{AwsKmsConfig, Config, VaultConfig};
use keyward::keys::custody::CustodyKind;
use keyward::keys::Algorithm;
use keyward::store::Store;
use serde_json::{json, Value};

use crate::helpers::{free_port, keyward_bare, serve_with_env, sqlite, test_config, text, wait_healthy, Serve};
use crate::vault::{secret_file, Bao};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";
const SET: &str = "npm";

/// The Vault policy the README gives: exactly what keyward's key custody uses.
pub(crate) const VAULT_POLICY: &str = r#"path "transit/keys/keyward-*" { capabilities = ["update", "read", "delete"] }
path "transit/keys/keyward-*/config" { capabilities = ["update"] }
path "transit/sign/keyward-*" { capabilities = ["update"] }"#;

/// A Transit engine and a token holding only [`VAULT_POLICY`] (and Vault's default policy).
async fn vault_with_policy(bao: &Bao) -> String {
    bao.api(reqwest::Method::POST, "sys/mounts/transit", json!({"type": "transit"})).await;
    bao.api(reqwest::Method::PUT, "sys/policies/acl/keyward-keys", json!({"policy": VAULT_POLICY})).await;
    let answer = bao
        .api(
            reqwest::Method::POST,
            "auth/token/create",
            json!({"policies": ["keyward-keys"], "ttl": "1h", "renewable": true, "no_parent": true}),
        )
        .await;
    answer["auth"]["client_token"].as_str().unwrap().to_owned()
}

fn vault_config(dir: &Path, bao: &Bao, algorithm: Algorithm, token: &str) -> Config {
    let mut config = test_config(dir);
    config.key_sets[0].algorithm = algorithm;
    config.key_sets[0].custody = CustodyKind::VaultTransit;
    config.vault = Some(VaultConfig {
        address: bao.address.clone(),
        mount: "transit".to_owned(),
        namespace: None,
        ca_file: None,
        token_file: Some(secret_file(dir, "vault-token", token)),
        token_variable: None,
        approle_role_id: None,
        approle_secret_id_file: None,
        max_in_flight: 64,
        sign_timeout_ms: 500,
    });
    config
}

/// A moto KMS server of its own, stopped when dropped. Without moto the test fails saying
/// how to install it.
struct Moto {
    child: Child,
    address: String,
    _home: tempfile::TempDir,
}

/// The environment keyward runs with against moto: dummy credentials, no instance metadata.
const AWS_ENV: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_EC2_METADATA_DISABLED", "true")];

impl Moto {
    async fn start() -> Moto {
        let installed = Command::new("moto_server").arg("--help").output().is_ok_and(|o| o.status.success());
        assert!(
            installed,
            "moto is not installed: the AWS KMS tests need `moto_server` (pip install 'moto[server]'; scripts/test.sh \
             installs it)"
        );
        let home = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.path().join("moto.log")).unwrap())
            .spawn()
            .unwrap();
        let moto = Moto { child, address: format!("http://127.0.0.1:{port}"), _home: home };
        let started = Instant::now();
        let http = reqwest::Client::new();
        while !http.get(format!("{}/moto-api/", moto.address)).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(started.elapsed() < Duration::from_secs(30), "moto_server did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    /// A KMS client of moto, for checking what keyward did.
    fn client(&self) -> aws_sdk_kms::Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url(&self.address)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .http_client(http)
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kms_config(dir: &Path, moto: &Moto, algorithm: Algorithm) -> Config {
    let mut config = test_config(dir);
    config.key_sets[0].algorithm = algorithm;
    config.key_sets[0].custody = CustodyKind::AwsKms;
    config.aws_kms = Some(AwsKmsConfig {
        region: Some("eu-west-1".to_owned()),
        endpoint: Some(moto.address.clone()),
        max_in_flight: 64,
        sign_timeout_ms: 500,
    });
    config
}

/// A keyward server on `config`, ready.
async fn serve_ready(dir: &Path, config: &Config, env: &[(&str, &str)]) -> (Serve, reqwest::Client) {
    let mut server = serve_with_env(dir, config, "info", env);
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut server).await, "keyward did not start: {}", server.log_text());
    (server, http)
}

/// The CLI against `server`'s configuration and environment.
fn cli(dir: &Path, server: &Serve, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut all = vec!["--config", server.config_file.to_str().unwrap()];
    all.extend_from_slice(args);
    keyward_bare(dir, &all).envs(env.iter().copied()).output().unwrap()
}

fn add_client(dir: &Path, server: &Serve, env: &[(&str, &str)], name: &str, admin: bool) -> String {
    let mut args = vec!["clients", "add", name, "--profiles", PROFILE];
    if admin {
        args.push("--admin");
    }
    let out = cli(dir, server, env, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

async fn sign(http: &reqwest::Client, server: &Serve, token: &str, sub: &str) -> reqwest::Response {
    http.post(format!("{}/v1/profiles/{PROFILE}/sign", server.internal))
        .bearer_auth(token)
        .json(&json!({ "sub": sub }))
        .send()
        .await
        .unwrap()
}

async fn jwks(http: &reqwest::Client, server: &Serve) -> Value {
    http.get(format!("{}/.well-known/jwks.json", server.public)).send().await.unwrap().json().await.unwrap()
}

/// Signs and verifies against the served JWKS with the independent verifier; the kid.
async fn sign_verified(http: &reqwest::Client, server: &Serve, token: &str, sub: &str) -> String {
    let response = sign(http, server, token, sub).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let verified = verify(body["token"].as_str().unwrap(), &jwks(http, server).await).unwrap();
    assert_eq!(verified.claims["sub"], sub);
    body["kid"].as_str().unwrap().to_owned()
}

/// `keys list --json`: each key's kid, state and holder (`held_by`).
fn listed(dir: &Path, server: &Serve, env: &[(&str, &str)]) -> Vec<(String, String, String)> {
    let out = cli(dir, server, env, &["keys", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let held = k["held_by"].as_str().unwrap_or_default().to_owned();
            (k["kid"].as_str().unwrap().to_owned(), k["state"].as_str().unwrap().to_owned(), held)
        })
        .collect()
}

fn holder_of<'a>(keys: &'a [(String, String, String)], kid: &str) -> &'a str {
    keys.iter().find(|(k, ..)| k == kid).map(|(.., held)| held.as_str()).unwrap_or_default()
}

/// The jtis of the ledger's rows.
async fn ledger_jtis(dir: &Path) -> Vec<String> {
    let store = Store::open(dir.join("keyward.db")).await.unwrap();
    let mut jtis: Vec<String> = sqlx::query_scalar("SELECT jti FROM issuance").fetch_all(sqlite(&store)).await.unwrap();
    sqlite(&store).close().await;
    jtis.sort();
    jtis
}

fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// Signs from 8 tasks for 4 s while the key service (`pid`) is stopped for 2 s of them:
/// during the stop, 503s saying the key service failed and `/readyz` 503 naming it; no
/// ledger row without a token and no token without a row; signing again once it continues.
async fn outage_mid_load(dir: &Path, server: &Serve, http: &reqwest::Client, token: &str, pid: u32, named: &str) {
    let before = ledger_jtis(dir).await;
    let started = Instant::now();
    let loads: Vec<_> = (0..8)
        .map(|task| {
            let (http, url, token) =
                (http.clone(), format!("{}/v1/profiles/{PROFILE}/sign", server.internal), token.to_owned());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = 0;
                while started.elapsed() < Duration::from_secs(4) {
                    let sent = http.post(&url).bearer_auth(&token).json(&json!({"sub": format!("t{task}-{i}")}));
                    let response = sent.send().await.unwrap();
                    let status = response.status().as_u16();
                    answers.push((status, response.json::<Value>().await.unwrap()));
                    i += 1;
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(pid, "-STOP");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ready = http.get(format!("{}/readyz", server.public)).send().await.unwrap();
    let (ready_status, ready_text) = (ready.status().as_u16(), ready.text().await.unwrap());
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(pid, "-CONT");
    let mut answers = Vec::new();
    for load in loads {
        answers.extend(load.await.unwrap());
    }
    assert_eq!(ready_status, 503, "readyz during the outage: {ready_text}");
    assert!(ready_text.contains(named), "{ready_text}");

    let served = jwks(http, server).await;
    let mut issued = Vec::new();
    let mut failed = 0;
    for (status, body) in &answers {
        match status {
            200 => {
                verify(body["token"].as_str().unwrap(), &served).expect("every token handed out verifies");
                issued.push(body["jti"].as_str().unwrap().to_owned());
            }
            503 => {
                let kind = body["type"].as_str().unwrap();
                assert!(
                    kind == "urn:keyward:problem:key-service-failed" || kind == "urn:keyward:problem:overloaded",
                    "{body}"
                );
                assert!(body.get("token").is_none());
                failed += usize::from(kind.ends_with("key-service-failed"));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(failed > 0, "no request failed while the key service was stopped: {} answers", answers.len());
    assert!(!issued.is_empty());
    let recorded: Vec<String> = ledger_jtis(dir).await.into_iter().filter(|jti| !before.contains(jti)).collect();
    issued.sort();
    assert_eq!(recorded.len(), issued.len(), "the ledger holds a row for each token handed out and no other");
    assert_eq!(recorded, issued, "the ledger holds exactly the tokens handed out");

    let back = crate::helpers::eventually(Duration::from_secs(20), || async {
        sign(http, server, token, "after").await.status() == 200
            && http.get(format!("{}/readyz", server.public)).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(back, "keyward did not sign again after the key service returned: {}", server.log_text());
    sign_verified(http, server, token, "after-2").await;
}

/// Runs `keyward serve` on `config` expecting it to refuse to start; returns its stderr.
fn refused_start(dir: &Path, config: &Config, env: &[(&str, &str)]) -> String {
    let file = dir.join("refused.toml");
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    let mut child = keyward_bare(dir, &["--config", file.to_str().unwrap(), "serve"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("keyward started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    text(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_transit_keys_sign_every_algorithm_verified_against_the_jwks_and_never_leave_vault() {
    let bao = Bao::start().await;
    let token = vault_with_policy(&bao).await;
    for algorithm in Algorithm::ALL {
        let dir = tempfile::tempdir().unwrap();
        let config = vault_config(dir.path(), &bao, algorithm, &token);
        let (server, http) = serve_ready(dir.path(), &config, &[]).await;
        let client = add_client(dir.path(), &server, &[], "backend", false);
        // Several signatures: an ECDSA r or s with leading zeros must keep its width.
        for sub in ["a", "b", "c", "d", "e", "f"] {
            sign_verified(&http, &server, &client, sub).await;
        }
        let keys = listed(dir.path(), &server, &[]);
        assert_eq!(keys.len(), 2, "{algorithm}: current and next");
        for (kid, _, held) in &keys {
            let name = held.strip_prefix("vault-transit:").unwrap_or_else(|| panic!("{algorithm}: {held}"));
            let key = bao.api(reqwest::Method::GET, &format!("transit/keys/{name}"), Value::Null).await;
            assert_eq!(key["data"]["exportable"], false, "{algorithm}: {key}");
            assert_eq!(key["data"]["deletion_allowed"], false, "{algorithm}: {key}");
            let served = jwks(&http, &server).await;
            assert!(served["keys"].as_array().unwrap().iter().any(|k| k["kid"] == kid.as_str()));
        }
        // The database holds references and public keys only; nothing needed a master key.
        let store = Store::open(dir.path().join("keyward.db")).await.unwrap();
        assert!(!store.holds_sealed_material().await.unwrap(), "{algorithm}");
        sqlite(&store).close().await;
        assert!(!dir.path().join("master.key").exists(), "{algorithm}: a master key was generated for nothing");

        // check-config reaches Vault and finds the policy sufficient.
        let out = cli(dir.path(), &server, &[], &["check-config"]);
        assert!(out.status.success(), "{algorithm}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("Vault Transit"), "{}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_transit_keys_rotate_and_retired_or_revoked_keys_are_deleted_in_vault() {
    let bao = Bao::start().await;
    let token = vault_with_policy(&bao).await;
    let dir = tempfile::tempdir().unwrap();
    let config = vault_config(dir.path(), &bao, Algorithm::Es256, &token);
    let (server, http) = serve_ready(dir.path(), &config, &[]).await;
    let client = add_client(dir.path(), &server, &[], "backend", false);
    let admin = add_client(dir.path(), &server, &[], "ops", true);
    let first = sign_verified(&http, &server, &client, "a").await;
    let keys = listed(dir.path(), &server, &[]);
    let first_name = holder_of(&keys, &first).strip_prefix("vault-transit:").unwrap().to_owned();

    let out = cli(dir.path(), &server, &[], &["keys", "rotate", SET, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let moved_on = crate::helpers::eventually(Duration::from_secs(10), || async {
        sign(&http, &server, &client, "b").await.json::<Value>().await.unwrap()["kid"].as_str() != Some(&first)
    })
    .await;
    assert!(moved_on, "the rotation did not hand over");
    let second = sign_verified(&http, &server, &client, "c").await;

    let revoked =
        http.post(format!("{}/v1/keys/{first}/revoke", server.internal)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(revoked.status(), 200, "{}", revoked.text().await.unwrap());
    assert_eq!(transit_key_status(&bao, &first_name).await, 404, "the revoked key is deleted in Transit");
    let keys = listed(dir.path(), &server, &[]);
    assert!(keys.iter().any(|(kid, state, held)| kid == &first && state == "revoked" && held.is_empty()), "{keys:?}");
    sign_verified(&http, &server, &client, "d").await;
    assert_ne!(second, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_stopped_mid_load_gives_503s_and_no_ledger_row_without_a_token_and_signing_recovers() {
    let bao = Bao::start().await;
    let token = vault_with_policy(&bao).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = vault_config(dir.path(), &bao, Algorithm::Es256, &token);
    // The load is 8 callers as fast as they are answered: no client rate limit in the way.
    (config.server.rate_limit, config.server.rate_burst) = (1_000_000, 1_000_000);
    let (server, http) = serve_ready(dir.path(), &config, &[]).await;
    let client = add_client(dir.path(), &server, &[], "backend", false);
    sign_verified(&http, &server, &client, "before").await;
    outage_mid_load(dir.path(), &server, &http, &client, bao.pid(), "Vault Transit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_vault_credentials_or_a_missing_permission_are_refused_at_start_up_naming_vault_and_the_cause() {
    let bao = Bao::start().await;
    let token = vault_with_policy(&bao).await;
    let dir = tempfile::tempdir().unwrap();
    let bogus = vault_config(dir.path(), &bao, Algorithm::Es256, "s.not-a-token");
    let refused = refused_start(dir.path(), &bogus, &[]);
    assert!(refused.contains("[vault]") && refused.contains("vault-transit"), "{refused}");
    assert!(refused.contains("permission denied") || refused.contains("403"), "{refused}");

    // A token that may not sign: check-config names the missing capability.
    let policy = r#"path "transit/keys/keyward-*" { capabilities = ["update", "read", "delete"] }"#;
    bao.api(reqwest::Method::PUT, "sys/policies/acl/no-sign", json!({"policy": policy})).await;
    let answer =
        bao.api(reqwest::Method::POST, "auth/token/create", json!({"policies": ["no-sign"], "no_parent": true})).await;
    let weak = answer["auth"]["client_token"].as_str().unwrap();
    let config = vault_config(dir.path(), &bao, Algorithm::Es256, weak);
    let file = dir.path().join("weak.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let out = keyward_bare(dir.path(), &["--config", file.to_str().unwrap(), "check-config"]).output().unwrap();
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains("update on transit/sign/keyward-check"), "{said}");
    drop(token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_keys_sign_rs256_es256_and_es384_verified_against_the_jwks_tagged_and_checked_in_kms() {
    let moto = Moto::start().await;
    let kms = moto.client();
    for algorithm in [Algorithm::Rs256, Algorithm::Es256, Algorithm::Es384] {
        let dir = tempfile::tempdir().unwrap();
        let config = kms_config(dir.path(), &moto, algorithm);
        let (server, http) = serve_ready(dir.path(), &config, &AWS_ENV).await;
        let client = add_client(dir.path(), &server, &AWS_ENV, "backend", false);
        for sub in ["a", "b", "c", "d", "e", "f"] {
            sign_verified(&http, &server, &client, sub).await;
        }
        let keys = listed(dir.path(), &server, &AWS_ENV);
        assert_eq!(keys.len(), 2, "{algorithm}");
        for (kid, _, held) in &keys {
            let arn = held.strip_prefix("aws-kms:").unwrap_or_else(|| panic!("{algorithm}: {held}"));
            let described = kms.describe_key().key_id(arn).send().await.unwrap();
            let metadata = described.key_metadata().unwrap();
            assert_eq!(metadata.key_state(), Some(&KeyState::Enabled));
            assert_eq!(metadata.key_usage().map(|u| u.as_str()), Some("SIGN_VERIFY"));
            let tags = kms.list_resource_tags().key_id(arn).send().await.unwrap();
            let tag = |key: &str| {
                tags.tags().iter().find(|t| t.tag_key() == key).map(|t| t.tag_value().to_owned()).unwrap_or_default()
            };
            assert_eq!((tag("keyward:key-set"), tag("keyward:kid")), (SET.to_owned(), kid.clone()), "{algorithm}");
        }
        let out = cli(dir.path(), &server, &AWS_ENV, &["check-config"]);
        assert!(out.status.success(), "{algorithm}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("AWS KMS"), "{}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_keys_rotate_and_a_revoked_key_is_disabled_and_scheduled_for_deletion_in_kms() {
    let moto = Moto::start().await;
    let kms = moto.client();
    let dir = tempfile::tempdir().unwrap();
    let config = kms_config(dir.path(), &moto, Algorithm::Es256);
    let (server, http) = serve_ready(dir.path(), &config, &AWS_ENV).await;
    let client = add_client(dir.path(), &server, &AWS_ENV, "backend", false);
    let admin = add_client(dir.path(), &server, &AWS_ENV, "ops", true);
    let first = sign_verified(&http, &server, &client, "a").await;
    let keys = listed(dir.path(), &server, &AWS_ENV);
    let arn = holder_of(&keys, &first).strip_prefix("aws-kms:").unwrap().to_owned();

    let out = cli(dir.path(), &server, &AWS_ENV, &["keys", "rotate", SET, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let moved_on = crate::helpers::eventually(Duration::from_secs(10), || async {
        sign(&http, &server, &client, "b").await.json::<Value>().await.unwrap()["kid"].as_str() != Some(&first)
    })
    .await;
    assert!(moved_on, "the rotation did not hand over");

    let revoked =
        http.post(format!("{}/v1/keys/{first}/revoke", server.internal)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(revoked.status(), 200, "{}", revoked.text().await.unwrap());
    let described = kms.describe_key().key_id(&arn).send().await.unwrap();
    let metadata = described.key_metadata().unwrap();
    let log = server.log_text();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("KMS")).collect();
    assert_eq!(metadata.key_state(), Some(&KeyState::PendingDeletion), "{metadata:?}: {said:?}");
    assert!(metadata.deletion_date().is_some());
    // Disabled first (KMS refuses to sign with a disabled key or one pending deletion; moto
    // does not enforce that, so only the state is checked here).
    assert!(!metadata.enabled(), "{metadata:?}");
    sign_verified(&http, &server, &client, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_kms_stopped_mid_load_gives_503s_and_no_ledger_row_without_a_token_and_signing_recovers() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = kms_config(dir.path(), &moto, Algorithm::Es256);
    // The load is 8 callers as fast as they are answered: no client rate limit in the way.
    (config.server.rate_limit, config.server.rate_burst) = (1_000_000, 1_000_000);
    let (server, http) = serve_ready(dir.path(), &config, &AWS_ENV).await;
    let client = add_client(dir.path(), &server, &AWS_ENV, "backend", false);
    sign_verified(&http, &server, &client, "before").await;
    outage_mid_load(dir.path(), &server, &http, &client, moto.child.id(), "AWS KMS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_aws_credentials_or_an_unreachable_kms_are_refused_at_start_up_naming_kms_and_the_cause() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kms_config(dir.path(), &moto, Algorithm::Es256);
    let refused = refused_start(dir.path(), &config, &[("AWS_EC2_METADATA_DISABLED", "true")]);
    assert!(refused.contains("[aws_kms]") && refused.contains("no AWS credentials"), "{refused}");

    let mut unreachable = config.clone();
    unreachable.aws_kms.as_mut().unwrap().endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    let refused = refused_start(dir.path(), &unreachable, &AWS_ENV);
    assert!(refused.contains("[aws_kms]") && refused.contains("ListKeys"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_in_flight_a_request_gets_503_overloaded_at_once_and_a_timed_out_call_key_service_failed() {
    let bao = Bao::start().await;
    let token = vault_with_policy(&bao).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = vault_config(dir.path(), &bao, Algorithm::Es256, &token);
    let vault = config.vault.as_mut().unwrap();
    (vault.max_in_flight, vault.sign_timeout_ms) = (1, 1500);
    let (server, http) = serve_ready(dir.path(), &config, &[]).await;
    let client = add_client(dir.path(), &server, &[], "backend", false);
    sign_verified(&http, &server, &client, "before").await;

    // Vault hangs: the first call holds the key set's only slot until its timeout.
    signal(bao.pid(), "-STOP");
    let first = {
        let (http, url, client) =
            (http.clone(), format!("{}/v1/profiles/{PROFILE}/sign", server.internal), client.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http.post(url).bearer_auth(client).json(&json!({"sub": "first"})).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let second = sign(&http, &server, &client, "second").await;
    let waited = started.elapsed();
    let retry_after = second.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["type"], "urn:keyward:problem:overloaded", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(waited < Duration::from_millis(1000), "refused at once, not queued: {waited:?}");
    let (status, body, took) = first.await.unwrap();
    signal(bao.pid(), "-CONT");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "urn:keyward:problem:key-service-failed", "{body}");
    assert!(!body["detail"].as_str().unwrap().contains("ms"), "no internal text: {body}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "bounded by sign_timeout_ms: {took:?}"
    );
    let back = crate::helpers::eventually(Duration::from_secs(10), || async {
        sign(&http, &server, &client, "after").await.status() == 200
    })
    .await;
    assert!(back);
    let log = server.log_text();
    assert!(!log.contains(&token), "the Vault token never reaches the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transit_master_key_without_an_address_shares_the_vault_block_of_the_key_custody() {
    let bao = Bao::start().await;
    vault_with_policy(&bao).await;
    bao.api(reqwest::Method::POST, "transit/keys/keyward-master", json!({})).await;
    let policy = format!(
        "{VAULT_POLICY}\npath \"transit/encrypt/keyward-master\" {{ capabilities = [\"update\"] }}\npath \
         \"transit/decrypt/keyward-master\" {{ capabilities = [\"update\"] }}"
    );
    bao.api(reqwest::Method::PUT, "sys/policies/acl/keyward-both", json!({"policy": policy})).await;
    let answer = bao
        .api(reqwest::Method::POST, "auth/token/create", json!({"policies": ["keyward-both"], "no_parent": true}))
        .await;
    let token = answer["auth"]["client_token"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = vault_config(dir.path(), &bao, Algorithm::Es256, token);
    config.master_key = Some(Box::new(keyward::config::MasterKeyConfig {
        key_name: Some("keyward-master".to_owned()),
        ..keyward::config::MasterKeyConfig::of(keyward::config::MasterKeySource::Transit)
    }));
    let (server, http) = serve_ready(dir.path(), &config, &[]).await;
    let client = add_client(dir.path(), &server, &[], "backend", false);
    sign_verified(&http, &server, &client, "a").await;
    let store = Store::open(dir.path().join("keyward.db")).await.unwrap();
    let keyring = store.keyring().await.unwrap().expect("the keyring is sealed through Transit");
    assert!(keyring.root_key_id.contains("keyward-master"), "{}", keyring.root_key_id);
    sqlite(&store).close().await;
}

/// Two replicas of `config` on one PostgreSQL database (PATH and `env` only): both sign with
/// the one key in the service; a rotation and a revocation made through one are seen by
/// the other, whose tokens verify against either replica's JWKS. Returns the revoked key's
/// reference in the service (`held_by` without its `<custody>:` prefix).
async fn two_replicas_on_postgres(dir: &Path, mut config: Config, env: &[(&str, &str)], custody: &str) -> String {
    let pg = crate::postgres::PgServer::start();
    config.server.database_url = pg.new_database().await;
    let http = reqwest::Client::new();
    let mut replicas: Vec<Serve> = (0..2).map(|_| serve_with_env(dir, &config, "info", env)).collect();
    for replica in &mut replicas {
        assert!(wait_healthy(&http, replica).await, "a replica did not come up: {}", replica.log_text());
    }
    let client = add_client(dir, &replicas[0], env, "backend", false);
    let admin = add_client(dir, &replicas[0], env, "ops", true);
    let first = sign_verified(&http, &replicas[0], &client, "a").await;
    assert_eq!(sign_verified(&http, &replicas[1], &client, "b").await, first, "both sign with the one key");
    let keys = listed(dir, &replicas[0], env);
    let held = holder_of(&keys, &first).strip_prefix(&format!("{custody}:")).map(str::to_owned);
    let held = held.unwrap_or_else(|| panic!("the first key is not held by {custody}: {keys:?}"));

    let out = cli(dir, &replicas[0], env, &["keys", "rotate", SET, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rotated = crate::helpers::eventually(Duration::from_secs(10), || async {
        let body: Value = sign(&http, &replicas[1], &client, "c").await.json().await.unwrap();
        body["kid"].as_str().is_some_and(|kid| kid != first)
    })
    .await;
    assert!(rotated, "the replica that did not rotate still signs with the first key");
    let second = sign_verified(&http, &replicas[1], &client, "d").await;
    assert!(
        holder_of(&listed(dir, &replicas[1], env), &second).starts_with(&format!("{custody}:")),
        "the key made by the rotation is in the service"
    );
    let revoked =
        http.post(format!("{}/v1/keys/{first}/revoke", replicas[1].internal)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(revoked.status(), 200, "{}", revoked.text().await.unwrap());
    for (replica, other) in [(&replicas[0], &replicas[1]), (&replicas[1], &replicas[0])] {
        let moved_on = crate::helpers::eventually(Duration::from_secs(10), || async {
            let body: Value = sign(&http, replica, &client, "e").await.json().await.unwrap();
            body["kid"].as_str().is_some_and(|kid| kid != first)
        })
        .await;
        assert!(moved_on, "a replica still signs with the revoked key");
        let body: Value = sign(&http, replica, &client, "f").await.json().await.unwrap();
        assert_eq!(body["kid"], second.as_str(), "{body}");
        let token = body["token"].as_str().unwrap();
        verify(token, &jwks(&http, replica).await).unwrap();
        verify(token, &jwks(&http, other).await).expect("a replica's token verifies against the other's JWKS");
    }
    let keys = listed(dir, &replicas[0], env);
    assert!(keys.iter().any(|(kid, state, _)| kid == &first && state == "revoked"), "{keys:?}");
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_share_transit_keys_through_rotation_and_revocation() {
    let bao = Bao::start().await;
    let token = vault_with_policy(&bao).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = vault_config(dir.path(), &bao, Algorithm::Es256, &token);
    // Two replicas, PostgreSQL and OpenBao share the machine: a signature may take longer
    // than the other tests' 500 ms, and timeouts are not what this test is about.
    config.vault.as_mut().unwrap().sign_timeout_ms = 5000;
    let name = two_replicas_on_postgres(dir.path(), config, &[], "vault-transit").await;
    assert_eq!(transit_key_status(&bao, &name).await, 404, "the revoked key is deleted in Transit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_share_aws_kms_keys_through_rotation_and_revocation() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = kms_config(dir.path(), &moto, Algorithm::Es256);
    // Two replicas, PostgreSQL and moto (Python) share the machine: a signature may take
    // longer than the other tests' 500 ms, and timeouts are not what this test is about.
    config.aws_kms.as_mut().unwrap().sign_timeout_ms = 5000;
    let arn = two_replicas_on_postgres(dir.path(), config, &AWS_ENV, "aws-kms").await;
    let described = moto.client().describe_key().key_id(&arn).send().await.unwrap();
    let metadata = described.key_metadata().unwrap();
    assert_eq!(metadata.key_state(), Some(&KeyState::PendingDeletion), "the revoked key is deleted in KMS");
    assert!(!metadata.enabled(), "{metadata:?}");
}

/// A planned rotation with the keys in a key service, gated on a partner: with `config`
/// rotating every few seconds and alpha (127.0.0.2) gating the hand-over, the current key
/// goes on signing past the planned instant and `keys schedule` says the gate holds it;
/// alpha's fetch releases it and the next key signs (verified against the JWKS); the
/// scheduler then makes a third key in the service. Returns the first key's reference in
/// the service and a server still running, for the caller to see the key retired there.
async fn gated_planned_rotation(
    dir: &Path,
    mut config: Config,
    env: &[(&str, &str)],
    custody: &str,
) -> (String, String, Serve) {
    use crate::gates::{client_from, fast, fetch, key_line, partner, planned, signer, wait_past};
    fast(&mut config);
    let alpha = partner(&config, "alpha", "127.0.0.2", "gate_max_wait = \"10m\"");
    let beta = partner(&config, "beta", "127.0.0.3", "");
    config.partners = vec![alpha, beta];
    let (server, http) = serve_ready(dir, &config, env).await;
    let client = add_client(dir, &server, env, "backend", false);
    let store = Store::open(config.database_path()).await.unwrap();
    let (current, next) = planned(&store).await;
    sqlite(&store).close().await;
    let keys = listed(dir, &server, env);
    let prefix = format!("{custody}:");
    let first = holder_of(&keys, &current).strip_prefix(&prefix).map(str::to_owned);
    let first = first.unwrap_or_else(|| panic!("the current key is not held by {custody}: {keys:?}"));
    assert!(holder_of(&keys, &next.kid).starts_with(&prefix), "the next key is made in the service: {keys:?}");

    let beta = client_from("127.0.0.3");
    wait_past(next.activates_at.unwrap(), 2, &beta, &server.public).await;
    assert_eq!(signer(&server.public).await, current, "handed over although alpha never fetched");
    assert_eq!(sign_verified(&http, &server, &client, "held").await, current);
    let out = cli(dir, &server, env, &["keys", "schedule"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(key_line(&printed, &current).contains("held by gate"), "{printed}");
    assert!(printed.contains(&format!("waits for alpha to fetch {}", next.kid)), "{printed}");

    fetch(&client_from("127.0.0.2"), &server.public).await;
    let released =
        crate::helpers::eventually(Duration::from_secs(15), || async { signer(&server.public).await == next.kid })
            .await;
    assert!(released, "alpha's fetch did not release the hand-over: {}", server.log_text());
    assert_eq!(sign_verified(&http, &server, &client, "released").await, next.kid);
    let third = crate::helpers::eventually(Duration::from_secs(15), || async {
        listed(dir, &server, env)
            .iter()
            .any(|(kid, _, held)| kid != &current && kid != &next.kid && held.starts_with(&prefix))
    })
    .await;
    assert!(third, "the scheduler planned no further key in the service: {:?}", listed(dir, &server, env));
    (current, first, server)
}

/// Waits until `kid` is retired and no longer held in the service, per `keys list`.
async fn retired(dir: &Path, server: &Serve, env: &[(&str, &str)], kid: &str) {
    let done = crate::helpers::eventually(Duration::from_secs(30), || async {
        listed(dir, server, env).iter().any(|(k, state, held)| k == kid && state == "retired" && held.is_empty())
    })
    .await;
    assert!(done, "{kid} was not retired: {:?}\n{}", listed(dir, server, env), server.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_holds_and_releases_the_planned_hand_over_between_transit_keys_and_the_retired_key_is_deleted() {
    let bao = Bao::start().await;
    let token = vault_with_policy(&bao).await;
    let dir = tempfile::tempdir().unwrap();
    let config = vault_config(dir.path(), &bao, Algorithm::Es256, &token);
    let (kid, name, server) = gated_planned_rotation(dir.path(), config, &[], "vault-transit").await;
    retired(dir.path(), &server, &[], &kid).await;
    assert_eq!(transit_key_status(&bao, &name).await, 404, "the retired key is deleted in Transit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_holds_and_releases_the_planned_hand_over_between_aws_kms_keys_and_the_retired_key_is_deleted() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kms_config(dir.path(), &moto, Algorithm::Es256);
    let (kid, arn, server) = gated_planned_rotation(dir.path(), config, &AWS_ENV, "aws-kms").await;
    retired(dir.path(), &server, &AWS_ENV, &kid).await;
    let described = moto.client().describe_key().key_id(&arn).send().await.unwrap();
    let metadata = described.key_metadata().unwrap();
    assert_eq!(metadata.key_state(), Some(&KeyState::PendingDeletion), "the retired key is deleted in KMS");
}

/// The HTTP status of OpenBao's answer for Transit key `name` (404 once it is deleted).
async fn transit_key_status(bao: &Bao, name: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .get(format!("{}/v1/transit/keys/{name}", bao.address))
        .header("X-Vault-Token", "root")
        .send()
        .await
        .unwrap()
        .status()
}
