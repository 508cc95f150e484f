//! The `keyward` binary's subcommands, against the same database as a running server.

use std::time::Duration;

use keyward::keys::Algorithm;
use keyward::seal::MasterKey;
use serde_json::json;

use crate::helpers::{database_bytes, free_port, keyward, keyward_bare, spawn_app, spawn_in, test_config, text};

#[test]
fn check_config_names_the_file_table_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/keys.example")).unwrap();
    std::fs::write(&file, example.replace("rsa_bits = 2048", "rsa_bits = 1024")).unwrap();
    let out = keyward(dir.path(), &["--config", file.to_str().unwrap(), "check-config"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("[[key_set]] \"npm\"") && err.contains("field rsa_bits"), "{err}");

    std::fs::write(&file, &example).unwrap();
    let out = keyward(dir.path(), &["--config", file.to_str().unwrap(), "check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // ./keys.toml is picked up when present.
    std::fs::write(dir.path().join("keys.toml"), example.replace("max_ttl = \"55m\"", "max_ttl = \"2h\"")).unwrap();
    let out = keyward(dir.path(), &["check-config"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("keys.toml: [[profile]] \"npm-sandbox\", field max_ttl"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unknown_environment_variables_are_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward_bare(dir.path(), &["check-config"])
        .env("KEYWARD_PUBLIC_ADRR", "0.0.0.0:1")
        .env("KEYWARD_SERVICE_HOST", "10.0.0.1")
        .output()
        .unwrap();
    // Platforms inject KEYWARD_* variables of their own (Kubernetes services): warn, start.
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("KEYWARD_PUBLIC_ADRR") && err.contains("KEYWARD_SERVICE_HOST"), "{err}");
}

#[test]
fn a_missing_or_wrong_master_key_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward(dir.path(), &["--init", "keys", "rotate", "npm", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key_file = dir.path().join("master.key");
    let original = std::fs::read(&key_file).unwrap();

    // Another key in the file: refused, naming both ids; the file is left as it is.
    let other = format!("{}\n", base64_of([3u8; 32]));
    write_key_file(&key_file, &other);
    let out = keyward(dir.path(), &["keys", "rotate", "npm", "--force"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("sealed with master key"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), other);

    // No key file at all: no fresh development key is made for a database of sealed keys.
    std::fs::remove_file(&key_file).unwrap();
    let out = keyward(dir.path(), &["keys", "rotate", "npm", "--force"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("restore that key"), "{}", text(&out.stderr));
    assert!(!key_file.exists());

    write_key_file(&key_file, &original);
    let out = keyward(dir.path(), &["keys", "rotate", "npm", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A master key file as an operator must leave it: readable by its owner only.
fn write_key_file(path: &std::path::Path, text: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn base64_of(bytes: [u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn clients_add_prints_only_the_token_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyward(dir.path(), &["--init", "clients", "add", "billing", "--profiles", "npm-sandbox"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout:?}");
    let token = lines[0];
    assert!(token.starts_with("kw_"));
    assert!(!text(&out.stderr).contains(token));

    let list = keyward(dir.path(), &["clients", "list"]);
    let listed = text(&list.stdout);
    assert!(listed.contains("billing") && listed.contains("npm-sandbox") && !listed.contains(token));

    // kw_ + 16-character id + _ + secret (whose base64url alphabet includes '_').
    let secret = &token["kw_".len() + 16 + 1..];
    assert_eq!(secret.len(), 43);
    let stored = database_bytes(dir.path());
    assert!(!stored.windows(secret.len()).any(|w| w == secret.as_bytes()), "token stored in the clear");

    let again = keyward(dir.path(), &["clients", "add", "billing", "--profiles", "npm-sandbox"]);
    assert!(!again.status.success() && again.stdout.is_empty());
    let unknown = keyward(dir.path(), &["clients", "add", "x", "--profiles", "nope"]);
    assert!(!unknown.status.success() && text(&unknown.stderr).contains("nope"));

    let revoke = keyward(dir.path(), &["clients", "revoke", "billing"]);
    assert!(revoke.status.success());
    let missing = keyward(dir.path(), &["clients", "revoke", "ghost"]);
    assert!(!missing.status.success());
}

#[tokio::test]
async fn cli_changes_reach_a_running_server_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.key_sets[0].algorithm = Algorithm::Es256;
    let (master, _) = MasterKey::resolve(None, &config.server.master_key_file, true).unwrap();
    // The CLI reads the same configuration as the server, from ./keys.toml.
    std::fs::write(dir.path().join("keys.toml"), toml::to_string(&config).unwrap()).unwrap();
    let app = spawn_in(dir, config, master).await;
    let path = app.dir.path().to_owned();

    // A client made by the CLI works against the server already running.
    let out = keyward(&path, &["clients", "add", "svc", "--profiles", "npm-sandbox"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    let accepted = app
        .eventually(Duration::from_secs(5), || async {
            app.sign("npm-sandbox", &token, &json!({"sub": "a"})).await.status() == 200
        })
        .await;
    assert!(accepted, "CLI-created client not accepted within 5 s");

    let before = app.sign_ok("npm-sandbox", &token, &json!({"sub": "a"})).await["kid"].clone();
    // The next key was published just now: a planned rotation is refused, with the time.
    let out = keyward(&path, &["keys", "rotate", "npm"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("may sign from") && text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    let out = keyward(&path, &["keys", "rotate", "npm", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rotated = app
        .eventually(Duration::from_secs(5), || async {
            app.sign_ok("npm-sandbox", &token, &json!({"sub": "a"})).await["kid"] != before
        })
        .await;
    assert!(rotated, "server still signs with the old key 5 s after `keys rotate`");

    let list = text(&keyward(&path, &["keys", "list"]).stdout);
    assert_eq!(list.lines().filter(|l| l.contains(" current ")).count(), 1, "{list}");
    assert_eq!(list.lines().filter(|l| l.contains(" previous ")).count(), 1, "{list}");
    assert_eq!(list.lines().filter(|l| l.contains(" next ")).count(), 1, "{list}");

    let out = keyward(&path, &["keys", "rotate", "nope"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no key set is named \"nope\""));
}

#[test]
fn kids_and_names_that_start_with_a_hyphen_are_values_not_options() {
    // A kid is base64url: about one key in 64 has a kid starting with '-'.
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["audit", "--kid", "-nMObhUPmukzpuzzHBkXCsjtv_98tyLvbc7iMBKjqhs"][..],
        &["audit", "--sub", "-x", "--client", "-y", "--profile", "-z"][..],
        &["keys", "export", "-nMObhUPmukzpuzzHBkXCsjtv_98tyLvbc7iMBKjqhs"][..],
        &["keys", "revoke", "-nMObhUPmukzpuzzHBkXCsjtv_98tyLvbc7iMBKjqhs"][..],
    ] {
        let out = keyward(dir.path(), args);
        let err = text(&out.stderr);
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
    }
    // Parsed as a kid, it is simply not found.
    let out = keyward(dir.path(), &["--init", "keys", "export", "-nMObhUPmukzpuzzHBkXCsjtv_98tyLvbc7iMBKjqhs"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no key -nMOb"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn healthcheck_succeeds_against_a_running_server_past_any_proxy_and_fails_when_nothing_listens() {
    let app = spawn_app().await;
    let dir = app.dir.path();
    let file = dir.join("probe.toml");
    let probe = |public: &str| {
        let mut config = test_config(dir);
        config.server.public_addr = public.trim_start_matches("http://").parse().unwrap();
        std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
        // A proxy that does not exist: the probe of a local listener must not go through it.
        let proxy = format!("http://127.0.0.1:{}", free_port());
        keyward_bare(dir, &["--config", file.to_str().unwrap(), "healthcheck"])
            .env("HTTP_PROXY", &proxy)
            .env("http_proxy", &proxy)
            .output()
            .unwrap()
    };
    let up = probe(&app.public);
    assert!(up.status.success(), "{}", text(&up.stderr));
    let nothing = format!("http://127.0.0.1:{}", free_port());
    let down = probe(&nothing);
    assert!(!down.status.success());
    assert!(text(&down.stderr).contains("connecting to 127.0.0.1"), "{}", text(&down.stderr));
}
