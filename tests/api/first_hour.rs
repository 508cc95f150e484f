//! What a new operator meets first: the CLI against a running server, where the database
//! is, logs, errors, and the README's Quickstart run as written.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use keyward::config::Config;
use keyward::seal::MasterKey;
use serde_json::{json, Value};

use crate::helpers::{
    assert_problem, eventually, free_port, keyward, keyward_bare, keyward_command, serve, spawn_app, spawn_on,
    test_config, text, wait_healthy, Serve,
};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";

/// The binary against a running `serve`'s configuration file.
fn keyward_for(server: &Serve, dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--config", server.config_file.to_str().unwrap()];
    all.extend_from_slice(args);
    keyward_bare(dir, &all).output().unwrap()
}

async fn sign_at(http: &reqwest::Client, internal: &str, token: &str) -> reqwest::Response {
    http.post(format!("{internal}/v1/profiles/{PROFILE}/sign"))
        .bearer_auth(token)
        .json(&json!({"sub": "acct-42"}))
        .send()
        .await
        .unwrap()
}

async fn started(dir: &Path) -> (Serve, reqwest::Client) {
    let mut config = test_config(dir);
    config.key_sets[0].algorithm = keyward::keys::Algorithm::Es256;
    let mut server = serve(dir, &config, "info");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut server).await);
    (server, http)
}

// ---------------------------------------------------------------------------------------
// A new client works at once; revocation follows within the change watch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_clients_add_printed_works_on_the_very_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let (server, http) = started(dir.path()).await;
    for name in ["first", "second", "third"] {
        let out = keyward_for(&server, dir.path(), &["clients", "add", name, "--profiles", PROFILE]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let token = text(&out.stdout).trim().to_owned();
        // No waiting: the very next request is accepted.
        let response = sign_at(&http, &server.internal, &token).await;
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap());
    }
}

#[tokio::test]
async fn a_client_stored_a_moment_ago_is_accepted_before_the_watch_reloads() {
    let app = spawn_app().await;
    for name in ["a", "b", "c", "d", "e"] {
        // Stored as the CLI stores it, with no reload: the next request must find it anyway.
        let token =
            keyward::ops::clients::add(&app.store, &app.config, name, &[PROFILE.into()], false, 0).await.unwrap();
        let response = app.sign(PROFILE, &token, &json!({"sub": "a"})).await;
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap());
    }
}

#[tokio::test]
async fn an_unknown_token_is_refused_without_blaming_a_missing_header() {
    let app = spawn_app().await;
    let unknown = format!("kw_0123456789abcdef_{}", "A".repeat(43));
    let response = app.sign(PROFILE, &unknown, &json!({"sub": "a"})).await;
    assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    let body = assert_problem(response, 401).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("no active client has this token") && detail.contains("revoked"), "{detail}");
    // No header at all is another matter.
    let response = app.http.post(format!("{}/v1/profiles/{PROFILE}/sign", app.internal)).send().await.unwrap();
    let body = assert_problem(response, 401).await;
    assert!(body["detail"].as_str().unwrap().contains("send Authorization: Bearer"), "{body}");
}

#[tokio::test]
async fn a_client_revoked_by_the_cli_is_refused_once_the_watch_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, http) = started(dir.path()).await;
    let out = keyward_for(&server, dir.path(), &["clients", "add", "gone", "--profiles", PROFILE]);
    let token = text(&out.stdout).trim().to_owned();
    assert_eq!(sign_at(&http, &server.internal, &token).await.status(), 200);
    let out = keyward_for(&server, dir.path(), &["clients", "revoke", "gone"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The watch polls every 50 ms; the bound here allows for a loaded machine.
    let refused =
        eventually(Duration::from_secs(5), || async { sign_at(&http, &server.internal, &token).await.status() == 401 })
            .await;
    assert!(refused, "a revoked token was still accepted after 5 s");
}

// ---------------------------------------------------------------------------------------
// clients rotate, reuse of a revoked name, revoking twice
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn clients_rotate_replaces_the_token_at_once_or_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (server, http) = started(dir.path()).await;
    let add = |name: &str| {
        let out = keyward_for(&server, dir.path(), &["clients", "add", name, "--profiles", PROFILE]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    };
    let rotate = |args: &[&str]| {
        let mut all = vec!["clients", "rotate"];
        all.extend_from_slice(args);
        let out = keyward_for(&server, dir.path(), &all);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().count(), 1, "only the token on standard output");
        (text(&out.stdout).trim().to_owned(), text(&out.stderr))
    };

    // Without a grace: the new token works at once, the old one stops.
    let old = add("at-once");
    let (new, said) = rotate(&["at-once"]);
    assert!(said.contains("no longer works"), "{said}");
    assert_ne!(old, new);
    assert_eq!(sign_at(&http, &server.internal, &new).await.status(), 200);
    let stopped =
        eventually(Duration::from_secs(5), || async { sign_at(&http, &server.internal, &old).await.status() == 401 })
            .await;
    assert!(stopped, "the rotated-out token still works");

    // With a grace: both work meanwhile.
    let old = add("graceful");
    let (new, said) = rotate(&["graceful", "--grace", "1h"]);
    assert!(said.contains("the old one works until"), "{said}");
    assert_eq!(sign_at(&http, &server.internal, &new).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sign_at(&http, &server.internal, &old).await.status(), 200, "the old token is in its grace");
    let listed = text(&keyward_for(&server, dir.path(), &["clients", "list"]).stdout);
    assert!(listed.contains("OLD TOKEN UNTIL"), "{listed}");

    // A revoked client cannot be rotated; an unknown one neither.
    let out = keyward_for(&server, dir.path(), &["clients", "revoke", "graceful"]);
    assert!(out.status.success());
    let out = keyward_for(&server, dir.path(), &["clients", "rotate", "graceful"]);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(text(&out.stderr).contains("is revoked"), "{}", text(&out.stderr));
    let stopped = eventually(Duration::from_secs(5), || async {
        sign_at(&http, &server.internal, &old).await.status() == 401
            && sign_at(&http, &server.internal, &new).await.status() == 401
    })
    .await;
    assert!(stopped, "revoking a rotated client must stop both of its tokens");
}

#[test]
fn a_revoked_name_can_be_reused_and_revoking_twice_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward(dir.path(), &["--init", "clients", "add", "billing", "--profiles", PROFILE]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = keyward(dir.path(), &["clients", "add", "billing", "--profiles", PROFILE]);
    assert!(!out.status.success() && text(&out.stderr).contains("clients rotate billing"), "{}", text(&out.stderr));

    let out = keyward(dir.path(), &["clients", "revoke", "billing"]);
    assert!(out.status.success() && text(&out.stderr).contains("revoked client \"billing\""));
    let out = keyward(dir.path(), &["clients", "revoke", "billing"]);
    assert!(out.status.success(), "revoking again is not an error: the client is revoked");
    assert!(text(&out.stderr).contains("was already revoked at"), "{}", text(&out.stderr));
    let out = keyward(dir.path(), &["clients", "revoke", "ghost"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no client is named \"ghost\""));

    let out = keyward(dir.path(), &["clients", "add", "billing", "--profiles", PROFILE]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("was a client revoked at"), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&keyward(dir.path(), &["clients", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(list[0]["revoked_at"].is_null(), "{list}");
}

#[test]
fn a_rate_without_a_burst_gets_twice_the_rate_as_its_burst() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward(dir.path(), &["--init", "clients", "add", "paced", "--profiles", PROFILE, "--rate", "7"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = keyward(dir.path(), &["clients", "add", "both", "--profiles", PROFILE, "--rate", "7", "--burst", "9"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&keyward(dir.path(), &["clients", "list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["name"], "both");
    assert_eq!(list[0]["rate"], json!([7, 9]));
    assert_eq!(list[1]["rate"], json!([7, 14]));
}

// ---------------------------------------------------------------------------------------
// Which configuration and database
// ---------------------------------------------------------------------------------------

#[test]
fn a_cli_command_refuses_to_create_a_database_without_init() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward_bare(dir.path(), &["clients", "add", "billing", "--profiles", PROFILE]).output().unwrap();
    assert!(!out.status.success() && out.stdout.is_empty());
    let err = text(&out.stderr);
    let expected = dir.path().canonicalize().unwrap().join("data/keyward.db");
    assert!(err.contains(&format!("no database at {}", expected.display())), "{err}");
    assert!(err.contains("working directory") && err.contains("--init"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing may be created");

    let out =
        keyward_bare(dir.path(), &["--init", "clients", "add", "billing", "--profiles", PROFILE]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join("data/keyward.db").exists());
}

#[test]
fn relative_paths_in_a_config_file_are_relative_to_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("etc");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut config = Config::default();
    config.server.database_url = "sqlite://state/k.db".to_owned();
    config.server.master_key_file = "state/master.key".into();
    let file = conf.join("keys.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();

    let config_arg = file.to_str().unwrap();
    let out = keyward_bare(&elsewhere, &["--config", config_arg, "--init", "keys", "rotate", "npm", "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(conf.join("state/k.db").exists() && conf.join("state/master.key").exists());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing in the working directory");
    // One line on standard error says which file and which database.
    let err = text(&out.stderr);
    let said = err.lines().find(|l| l.starts_with("keyward: configuration")).unwrap_or_else(|| panic!("{err}"));
    assert!(said.contains(config_arg) && said.contains(&conf.join("state/k.db").display().to_string()), "{said}");

    // From yet another folder, the same file means the same database.
    let out = keyward_bare(dir.path(), &["--config", config_arg, "keys", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).lines().filter(|l| l.starts_with("npm ")).count() >= 2, "{}", text(&out.stdout));
}

#[test]
fn database_url_takes_sqlx_forms_and_plain_paths_and_env_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["sqlite:a.db", "sqlite://b.db", &format!("sqlite://{}/c.db", dir.path().display()), "d.db"] {
        let out =
            keyward_bare(dir.path(), &["--init", "keys", "list"]).env("KEYWARD_DATABASE_URL", url).output().unwrap();
        assert!(out.status.success(), "{url}: {}", text(&out.stderr));
    }
    for name in ["a.db", "b.db", "c.db", "d.db"] {
        assert!(dir.path().join(name).exists(), "{name}");
    }
    let out =
        keyward_bare(dir.path(), &["check-config"]).env("KEYWARD_DATABASE_URL", "sqlite::memory:").output().unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("KEYWARD_DATABASE_URL"), "{}", text(&out.stderr));
    let out = keyward_bare(dir.path(), &["check-config"]).env("KEYWARD_RATE_LIMIT", "0").output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("environment: KEYWARD_RATE_LIMIT"), "{}", text(&out.stderr));
    let out = keyward_bare(dir.path(), &["check-config"]).env("KEYWARD_LOG_FORMAT", "josn").output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("KEYWARD_LOG_FORMAT") && err.contains("josn") && err.contains("text or json"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Pipes, colour, log level, help
// ---------------------------------------------------------------------------------------

#[test]
fn every_command_exits_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    assert!(keyward(dir.path(), &["--init", "keys", "list"]).status.success());
    for args in [&["audit", "--json"][..], &["keys", "list", "--json"], &["clients", "list"], &["keys", "schedule"]] {
        let mut child =
            keyward_command(dir.path(), args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // The reader is gone before the command writes anything, as with `| head` done early.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
    }
}

#[test]
fn cli_logs_are_uncoloured_when_redirected_and_warnings_only_unless_verbose() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward(dir.path(), &["--init", "keys", "rotate", "npm", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(!err.contains('\u{1b}'), "colour escapes in a redirected log: {err:?}");
    assert!(err.contains("WARN") && !err.contains("INFO"), "{err}");

    let out = keyward(dir.path(), &["-v", "keys", "rotate", "npm", "--force"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("INFO") && err.contains("master key from file") && !err.contains('\u{1b}'), "{err}");
}

#[tokio::test]
async fn serve_writes_no_colour_escapes_to_a_redirected_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let log = dir.path().join("serve.log");
    let mut child = keyward_bare(dir.path(), &["--config", file.to_str().unwrap(), "serve"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let listening = eventually(Duration::from_secs(60), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("listening")
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(listening, "{text}");
    assert!(!text.contains('\u{1b}'), "colour escapes in serve's redirected log: {text:?}");
    assert!(text.contains("starting keyward") && text.contains("keyward.db"), "names the database: {text}");
}

#[test]
fn help_names_the_environment_variables_and_the_database() {
    keyward::cli::command().debug_assert();
    let out = keyward_bare(Path::new("."), &["--help"]).output().unwrap();
    let help = text(&out.stdout);
    for name in ["KEYWARD_CONFIG", "KEYWARD_DATABASE_URL", "KEYWARD_MASTER_KEY", "KEYWARD_DEV", "KEYWARD_LOG_FORMAT"] {
        assert!(help.contains(name), "--help lacks {name}:\n{help}");
    }
    assert!(help.contains("Database:") && help.contains("sqlite://data/keyward.db"), "{help}");
    assert!(help.contains("--init") && help.contains("--verbose"), "{help}");
}

// ---------------------------------------------------------------------------------------
// check-config, master key
// ---------------------------------------------------------------------------------------

#[test]
fn check_config_checks_the_master_key_and_that_it_opens_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let short = keyward_command(dir.path(), &["check-config"]).env("KEYWARD_MASTER_KEY", "short").output().unwrap();
    assert!(!short.status.success());
    assert!(text(&short.stderr).contains("KEYWARD_MASTER_KEY"), "{}", text(&short.stderr));
    assert!(text(&short.stderr).contains("openssl rand -base64 32"), "{}", text(&short.stderr));

    // A database with sealed keys: the right key opens them, another is refused.
    assert!(keyward(dir.path(), &["--init", "keys", "rotate", "npm", "--force"]).status.success());
    let out = keyward(dir.path(), &["check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("opens every sealed key"), "{}", text(&out.stderr));
    let other = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";
    let out = keyward_command(dir.path(), &["check-config"]).env("KEYWARD_MASTER_KEY", other).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("sealed with master key"), "{}", text(&out.stderr));
    std::fs::remove_file(dir.path().join("master.key")).unwrap();
    let out = keyward(dir.path(), &["check-config"]);
    assert!(!out.status.success() && text(&out.stderr).contains("holds sealed keys"), "{}", text(&out.stderr));
}

/// The `ENV` of the Docker image's final stage, as (name, value) pairs.
fn image_env() -> Vec<(String, String)> {
    let dockerfile = include_str!("../../Dockerfile");
    let stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let start = stage.find("\nENV ").expect("the image sets its environment") + "\nENV ".len();
    let mut pairs = Vec::new();
    for line in stage[start..].lines() {
        let continued = line.trim_end().ends_with('\\');
        let (name, value) = line.trim().trim_end_matches('\\').trim().split_once('=').expect("NAME=value");
        pairs.push((name.to_owned(), value.to_owned()));
        if !continued {
            break;
        }
    }
    pairs
}

#[tokio::test]
async fn under_the_images_environment_serve_refuses_to_generate_a_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    // The image's variables, its /data volume moved to a temporary folder.
    let env: Vec<(String, String)> = image_env().into_iter().map(|(k, v)| (k, v.replace("/data", &data))).collect();
    assert!(env.iter().any(|(k, v)| k == "KEYWARD_DEV" && v == "0"), "{env:?}");
    let run = |extra: &[(&str, &str)], args: &[&str]| {
        let mut command = keyward_bare(dir.path(), args);
        command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command.env("KEYWARD_PUBLIC_ADDR", "127.0.0.1:0").env("KEYWARD_INTERNAL_ADDR", "127.0.0.1:0");
        command.envs(extra.iter().copied());
        command
    };
    let out = run(&[], &["serve"]).output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for hint in ["openssl rand -base64 32", "KEYWARD_MASTER_KEY", "10001", "KEYWARD_DEV=1"] {
        assert!(err.contains(hint), "{hint} missing from {err}");
    }
    assert!(!dir.path().join("master.key").exists(), "no key may be generated");
    let out = run(&[], &["check-config"]).output().unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("openssl rand"), "{}", text(&out.stderr));

    // KEYWARD_DEV=1 allows a development key.
    let mut child = run(&[("KEYWARD_DEV", "1")], &["serve"]).stderr(Stdio::null()).spawn().unwrap();
    let generated = eventually(Duration::from_secs(60), || async { dir.path().join("master.key").exists() }).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(generated, "KEYWARD_DEV=1 must allow a development key");

    let ignored = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dockerignore")).unwrap();
    assert!(ignored.lines().any(|l| l == "target/") && ignored.lines().any(|l| l == "data/"), "{ignored}");
}

// ---------------------------------------------------------------------------------------
// Audit dates, exports, 415, onboarding
// ---------------------------------------------------------------------------------------

#[test]
fn audit_takes_a_date_for_since_and_until() {
    let dir = tempfile::tempdir().unwrap();
    assert!(keyward(dir.path(), &["--init", "keys", "list"]).status.success());
    let out = keyward(dir.path(), &["audit", "--since", "2026-11-17", "--until", "2026-11-18", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = keyward(dir.path(), &["audit", "--until", "2026-13-40"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--until \"2026-13-40\""), "{}", text(&out.stderr));
}

#[tokio::test]
async fn a_bad_export_format_names_the_parameter_and_the_allowed_values() {
    let app = spawn_app().await;
    let token = app.client("reader", &[PROFILE]).await;
    let kid = app.jwks("/.well-known/jwks.json").await["keys"][0]["kid"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/keys/{kid}/public", app.internal);
    let response = app.http.get(format!("{url}?format=bogus")).bearer_auth(&token).send().await.unwrap();
    let body = assert_problem(response, 400).await;
    assert_eq!(body["field"], "format");
    assert_eq!(body["title"], "Invalid query parameter");
    assert!(body["detail"].as_str().unwrap().contains("jwk, pem, pem-base64"), "{body}");
    let response = app.http.get(format!("{url}?fromat=jwk")).bearer_auth(&token).send().await.unwrap();
    let body = assert_problem(response, 400).await;
    assert_eq!(body["field"], "fromat");
}

#[tokio::test]
async fn a_form_encoded_body_is_415_saying_application_json_is_expected() {
    let app = spawn_app().await;
    let token = app.client("former", &[PROFILE]).await;
    // What `curl -d '{...}'` sends without -H 'Content-Type: application/json'.
    let response = app
        .http
        .post(format!("{}/v1/profiles/{PROFILE}/sign", app.internal))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"sub": "a"}"#)
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 415).await;
    assert!(body["detail"].as_str().unwrap().contains("Content-Type: application/json"), "{body}");
}

#[tokio::test]
async fn onboarding_prints_partner_name_on_the_defaults_and_checks_its_own_listener_with_local() {
    let dir = tempfile::tempdir().unwrap();
    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = test_config(dir.path());
    config.server.public_addr = public.local_addr().unwrap();
    std::fs::write(dir.path().join("keys.toml"), toml::to_string(&config).unwrap()).unwrap();
    let master = MasterKey::resolve(None, &config.server.master_key_file, true).unwrap().0;
    let app = spawn_on(dir, config, master, public).await;
    let path = app.dir.path();

    let out = keyward_bare(path, &["onboarding", PROFILE, "--local"]).output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "partner_name: acme\niss: https://yourdomain.com\njwks_uri: /path/to/your/jwks\n");
    assert!(stderr.contains(&format!("http://{}/path/to/your/jwks", app.public.trim_start_matches("http://"))));
    assert_eq!(stderr.matches(": published").count(), 2, "{stderr}");
}

// ---------------------------------------------------------------------------------------
// The README's Quickstart, as written
// ---------------------------------------------------------------------------------------

/// The ```sh blocks under `## Quickstart` in README.md, read now (not copied here).
fn quickstart_blocks() -> Vec<String> {
    readme_blocks("## Quickstart")
}

/// The ```sh blocks of the README section headed `heading` (up to the next heading of the
/// same or a higher level), read now.
fn readme_blocks(heading: &str) -> Vec<String> {
    let readme = include_str!("../../README.md");
    let start = readme.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README.md has {heading}"));
    let section = &readme[start + 1 + heading.len()..];
    let level = heading.split(' ').next().unwrap();
    let ends: Vec<String> = (2..=level.len()).map(|n| format!("\n{} ", "#".repeat(n))).collect();
    let end = ends.iter().filter_map(|e| section.find(e.as_str())).min().unwrap_or(section.len());
    let section = &section[..end];
    section.split("```sh\n").skip(1).map(|rest| rest.split("\n```").next().unwrap().to_owned()).collect()
}

/// Shell commands of a block: comments dropped, `\` continuations joined.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.split(" # ").next().unwrap().trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// Runs the Quickstart in a fresh folder. The only changes to what the README says: the
/// `cargo run [-q] --` prefix becomes the binary cargo built for this test, the fixed ports
/// 8080 and 8081 become free ones (the servers of other tests and the machine's own may hold
/// them: `serve` gets them by KEYWARD_PUBLIC_ADDR/KEYWARD_INTERNAL_ADDR, the commands by
/// rewriting `localhost:8080`/`localhost:8081`), and the test command (`scripts/test.sh`,
/// this very run) is only checked to be the script CI runs, not run again.
#[tokio::test]
async fn the_readme_quickstart_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_keyward");
    let (public, internal) = (free_port(), free_port());
    let substitute = |command: &str| {
        command
            .replace("cargo run -q --", binary)
            .replace("cargo run --", binary)
            .replace("localhost:8080", &format!("localhost:{public}"))
            .replace("localhost:8081", &format!("localhost:{internal}"))
    };
    let env = [
        ("KEYWARD_PUBLIC_ADDR", format!("127.0.0.1:{public}")),
        ("KEYWARD_INTERNAL_ADDR", format!("127.0.0.1:{internal}")),
    ];
    let blocks = quickstart_blocks();
    assert!(blocks.len() >= 2, "the Quickstart has a serve block and a client block: {blocks:?}");

    let mut server: Option<std::process::Child> = None;
    let mut test_commands = 0;
    let mut outputs: Vec<(String, Output)> = Vec::new();
    for block in &blocks {
        for command in commands(block) {
            if command.trim() == "scripts/test.sh" {
                test_commands += 1;
                continue;
            }
            assert!(
                command.contains("cargo run") || command.starts_with("curl") || command.contains("TOKEN="),
                "{command}"
            );
            let run = substitute(&command);
            if command.trim_end().ends_with(" serve") {
                assert!(server.is_none(), "one serve step");
                let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
                let child = std::process::Command::new("sh")
                    .args(["-c", &format!("exec {run}")])
                    .current_dir(dir.path())
                    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                server = Some(child);
                let http = reqwest::Client::new();
                let ready = eventually(Duration::from_secs(120), || async {
                    http.get(format!("http://127.0.0.1:{public}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
                })
                .await;
                let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
                assert!(ready, "serve did not become ready: {log}");
                continue;
            }
            assert!(server.is_some(), "{command}: the server runs first");
            outputs.push((command.clone(), run_in_shell(dir.path(), &outputs, &run)));
        }
    }
    let mut server = server.expect("the Quickstart starts the server");
    assert_eq!(test_commands, 1, "the Quickstart gives one test command, scripts/test.sh");
    // CI runs the same script, so the README's command cannot drift from CI's.
    let ci = include_str!("../../.ci/run");
    assert!(ci.lines().any(|l| l.trim() == "scripts/test.sh --locked"), "{ci}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test.sh");
    let syntax = std::process::Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));
    // The packages the tests' failures name are the ones the script installs.
    let listed = std::fs::read_to_string(&script).unwrap();
    for package in ["libssl-dev", "softhsm2", "postgresql", "openssl"] {
        assert!(listed.contains(&format!("\"apt {package} ")), "scripts/test.sh does not install {package}");
    }

    // Each step's outcome: the client was added, the JWKS has keys, the token verifies.
    let added = &outputs.iter().find(|(c, _)| c.contains("clients add")).expect("a clients add step").1;
    assert!(added.status.success(), "clients add: {}", text(&added.stderr));
    let jwks_step = &outputs.iter().find(|(c, _)| c.contains("jwks")).expect("a JWKS step").1;
    let jwks: Value =
        serde_json::from_slice(&jwks_step.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&jwks_step.stdout)));
    assert!(jwks["keys"].as_array().is_some_and(|k| k.len() == 2), "{jwks}");
    let sign_step = &outputs.iter().find(|(c, _)| c.contains("/sign")).expect("a sign step").1;
    let signed: Value =
        serde_json::from_slice(&sign_step.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&sign_step.stdout)));
    let token = signed["token"].as_str().unwrap_or_else(|| panic!("no token: {signed}"));
    // Verified independently, against the JWKS fetched over HTTP.
    let fetched: Value =
        reqwest::get(format!("http://127.0.0.1:{public}/path/to/your/jwks")).await.unwrap().json().await.unwrap();
    let verified = verify(token, &fetched).unwrap();
    assert_eq!(verified.claims["sub"], "acct-42");
    assert_eq!(verified.claims["obo_user"], "user@example.com");
    assert_eq!(verified.claims["iss"], "https://yourdomain.com");

    let _ = server.kill();
    let _ = server.wait();
}

/// Runs `command` in bash in `dir`, after the earlier steps' variable assignments (the
/// Quickstart's second block shares `TOKEN` between its lines, as one terminal does).
fn run_in_shell(dir: &Path, earlier: &[(String, Output)], command: &str) -> Output {
    let mut script = String::from("set -e\n");
    for (previous, output) in earlier {
        if let Some((name, _)) = previous.split_once("=$(") {
            script.push_str(&format!("{name}='{}'\n", text(&output.stdout).trim()));
        }
    }
    script.push_str(command);
    if let Some((name, _)) = command.split_once("=$(") {
        script.push_str(&format!("\nprintf '%s' \"${name}\""));
    }
    std::process::Command::new("bash").args(["-c", &script]).current_dir(dir).output().unwrap()
}

/// The README's backup command, as written (its folder made a temporary one): a second
/// backup made later the same day gets a name of its own.
#[test]
fn the_readme_backup_example_makes_a_new_file_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        keyward_bare(dir.path(), &["--init", "clients", "add", "billing", "--profiles", PROFILE]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let blocks = readme_blocks("### Back up and restore");
    let command = commands(&blocks[0]).into_iter().find(|c| c.starts_with("keyward backup")).expect("a backup command");
    let run = command
        .replacen("keyward ", &format!("{} ", env!("CARGO_BIN_EXE_keyward")), 1)
        .replace("/backups/", &format!("{}/", backups.display()));
    for _ in 0..2 {
        let out = std::process::Command::new("bash")
            .args(["-c", &run])
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        // The name carries the time to the second.
        std::thread::sleep(Duration::from_millis(1_100));
    }
    let made: Vec<_> = std::fs::read_dir(&backups).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(made.len(), 2, "{made:?}");
    for file in made {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "{}", file.display());
    }
}
