//! Moving to PostgreSQL and backing it up, through the `keyward` binary.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use serde_json::{json, Value};

use crate::helpers::{keyward_bare, keyward_command, spawn_app_on, Backend};
use crate::postgres::{bin_dir, fresh_database};

const PROFILE: &str = "npm-sandbox";

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_moves_a_sqlite_database_to_postgres_with_counts_verified() {
    let app = spawn_app_on(Backend::Sqlite, |_| {}).await;
    let token = app.client("backend", &[PROFILE]).await;
    for sub in ["a", "b", "c"] {
        app.sign_ok(PROFILE, &token, &json!({ "sub": sub })).await;
    }
    let dir = app.dir.path();
    let source = format!("sqlite://{}", dir.join("keyward.db").display());
    let target = fresh_database().await;

    let out = keyward_command(dir, &["migrate-store", "--from", &source, "--to", &target]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("copied 2 keys, 1 clients, 0 secrets, 3 ledger rows"), "{}", text(&out));

    // The same keys and ledger, read from PostgreSQL by the CLI.
    let on = |args: &[&str], url: &str| {
        let out = keyward_command(dir, args).env("KEYWARD_DATABASE_URL", url).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    // Oldest first on both; keys made in the same second may list in either order.
    let keys = |url: &str| {
        let mut keys = on(&["keys", "list", "--json"], url).as_array().unwrap().clone();
        keys.sort_by_key(|k| k["kid"].as_str().unwrap().to_owned());
        keys
    };
    assert_eq!(keys(&target), keys(&source));
    assert_eq!(on(&["audit", "--json"], &target), on(&["audit", "--json"], &source));

    let again = keyward_command(dir, &["migrate-store", "--from", &source, "--to", &target]).output().unwrap();
    assert!(!again.status.success());
    assert!(text(&again).contains("not empty"), "{}", text(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_on_postgres_runs_pg_dump_into_a_private_file_or_says_what_to_install() {
    let app = spawn_app_on(Backend::Postgres, |_| {}).await;
    let dir = app.dir.path();
    let url = &app.config.server.database_url;
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let out = keyward_command(dir, &["backup", "copy.dump"])
        .env("KEYWARD_DATABASE_URL", url)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dump = dir.join("copy.dump");
    assert!(std::fs::read(&dump).unwrap().starts_with(b"PGDMP"), "not a pg_dump archive");
    assert_eq!(std::fs::metadata(&dump).unwrap().permissions().mode() & 0o777, 0o600);

    let out = keyward_command(dir, &["backup", "other.dump"])
        .env("KEYWARD_DATABASE_URL", url)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("pg_dump") && text(&out).contains("postgresql-client"), "{}", text(&out));
    assert!(!dir.join("other.dump").exists(), "a failed backup left a file behind");
}

#[test]
fn migrate_store_names_the_databases_it_works_on_not_the_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        keyward_bare(dir.path(), &["--init", "clients", "add", "billing", "--profiles", PROFILE]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::create_dir(dir.path().join("moved")).unwrap();
    let args = ["migrate-store", "--from", "sqlite://data/keyward.db", "--to", "sqlite://moved/keyward.db"];
    let out = keyward_bare(dir.path(), &args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert_eq!(said.lines().next(), Some("keyward: migrate-store from data/keyward.db to moved/keyward.db"), "{said}");
    assert!(!said.contains("configuration"), "the configuration's database is not the one it works on: {said}");
    assert!(said.contains("copied 0 keys, 1 clients"), "{said}");
}
