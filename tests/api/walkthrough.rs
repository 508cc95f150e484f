//! What a new operator following the README meets in the listings and error messages.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::helpers::{assert_problem, keyward_bare, keyward_command, spawn_app, text};

/// The binary in `dir` with the database and master key there; asserts it succeeded.
fn keyward_ok(dir: &Path, args: &[&str]) -> Output {
    let out = keyward_command(dir, args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    out
}

#[test]
fn keys_list_json_gives_each_keys_state_as_the_table_does() {
    let dir = tempfile::tempdir().unwrap();
    keyward_ok(dir.path(), &["--init", "keys", "rotate", "npm", "--force"]);
    keyward_ok(dir.path(), &["keys", "rotate", "npm", "--force"]);
    let table: Vec<(String, String)> = text(&keyward_ok(dir.path(), &["keys", "list"]).stdout)
        .lines()
        .skip(1)
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns[1].to_owned(), columns[3].to_owned())
        })
        .collect();
    let listed: Value = serde_json::from_slice(&keyward_ok(dir.path(), &["keys", "list", "--json"]).stdout).unwrap();
    let json: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|key| (key["kid"].as_str().unwrap().to_owned(), key["state"].as_str().unwrap_or("(none)").to_owned()))
        .collect();
    assert_eq!(json, table);
    for state in ["current", "next", "previous"] {
        assert!(json.iter().any(|(_, s)| s == state), "no {state} key: {json:?}");
    }
}

#[test]
fn clients_list_shows_each_clients_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    keyward_ok(dir.path(), &["--init", "clients", "add", "own", "--profiles", "npm-sandbox", "--rate", "7"]);
    keyward_ok(dir.path(), &["clients", "add", "usual", "--profiles", "npm-sandbox"]);
    let listed = text(&keyward_ok(dir.path(), &["clients", "list"]).stdout);
    let row = |name: &str| listed.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
    assert!(listed.lines().next().unwrap().contains("RATE LIMIT"), "{listed}");
    assert!(row("own").contains("7/s, burst 14"), "{listed}");
    assert!(row("usual").contains("100/s, burst 200 (default)"), "{listed}");
}

#[test]
fn a_rust_log_that_is_not_a_filter_is_refused_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward_bare(dir.path(), &["check-config"]).env("RUST_LOG", "keyward==debug").output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("environment: RUST_LOG") && err.contains("keyward==debug"), "{err}");
    let out = keyward_bare(dir.path(), &["check-config"]).env("RUST_LOG", "keyward=debug,sqlx=warn").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_backup_into_a_missing_folder_names_the_folder_without_database_internals() {
    let dir = tempfile::tempdir().unwrap();
    keyward_ok(dir.path(), &["--init", "keys", "list"]);
    let target = dir.path().join("no-such-folder").join("keyward.db");
    let out = keyward_command(dir.path(), &["backup", target.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let folder = dir.path().join("no-such-folder");
    assert!(err.contains(&format!("the folder {} does not exist", folder.display())), "{err}");
    assert!(!err.contains("code: 14") && !err.contains("error returned from database"), "{err}");
}

#[test]
fn a_refused_rotation_says_how_long_to_wait_in_hours_and_minutes() {
    let dir = tempfile::tempdir().unwrap();
    keyward_ok(dir.path(), &["--init", "keys", "rotate", "npm", "--force"]);
    let out = keyward_command(dir.path(), &["keys", "rotate", "npm"]).output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    // The new next key was published moments ago (maybe this very second); publish_ahead is 24h.
    assert!(err.contains("(in 1d)") || err.contains("(in 23h "), "{err}");
}

#[test]
fn check_config_says_the_master_key_is_well_formed_before_what_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    keyward_ok(dir.path(), &["--init", "keys", "rotate", "npm", "--force"]);
    let err = text(&keyward_ok(dir.path(), &["check-config"]).stderr);
    let well_formed = err.find("is well formed").unwrap_or(usize::MAX);
    let opens = err.find("opens every sealed key").unwrap_or(usize::MAX);
    assert!(well_formed < opens && opens != usize::MAX, "{err}");
}

#[tokio::test]
async fn a_revoked_keys_public_half_is_not_handed_out_for_registration() {
    let app = spawn_app().await;
    let token = app.client("billing", &["npm-sandbox"]).await;
    let signer = app.force_rotate().await;
    let get = |kid: String| {
        app.http.get(format!("{}/v1/keys/{kid}/public?format=pem-base64", app.internal)).bearer_auth(&token).send()
    };
    assert_eq!(get(signer.clone()).await.unwrap().status(), 200);
    keyward::ops::revoke(&app.store, app.shared.custody(), &app.config, &signer).await.unwrap();
    let problem = assert_problem(get(signer.clone()).await.unwrap(), 404).await;
    assert!(problem["detail"].as_str().unwrap().contains("revoked"), "{problem}");
}
