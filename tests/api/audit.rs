//! The audit trail: every administrative change recorded with who, what, before/after and
//! why, through the CLI and the admin API; read back with `audit events` and
//! `GET /v1/events`; and `audit verify` naming the record someone removed, altered,
//! reordered or inserted.

use std::path::Path;

use serde_json::{json, Value};

use crate::helpers::{keyward, spawn_app, text};

/// Every event `audit events --json` prints, oldest first.
fn cli_events(dir: &Path, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "events", "--json"];
    args.extend_from_slice(filters);
    let out = keyward(dir, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// The one event of `action` on `object`.
fn the<'a>(events: &'a [Value], action: &str, object: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["action"] == action && e["object"] == object).collect();
    assert_eq!(found.len(), 1, "one {action} of {object} in {events:#?}");
    found[0]
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = keyward(dir, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn each_cli_action_is_recorded_with_the_os_user_host_pid_object_before_after_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    run_ok(path, &["--init", "keys", "rotate", "npm", "--force", "--reason", "first keys"]);
    let token = run_ok(path, &["clients", "add", "ci", "--profiles", "npm-sandbox", "--reason", "onboarding ci"]);
    let rotated = run_ok(path, &["clients", "rotate", "ci", "--reason", "token seen in a log"]);
    run_ok(path, &["clients", "update", "ci", "--permission", "keys:read", "--reason", "dashboards"]);
    run_ok(path, &["clients", "revoke", "ci"]);
    let keys: Value = serde_json::from_str(&run_ok(path, &["keys", "list", "--json"])).unwrap();
    let signer =
        keys.as_array().unwrap().iter().find(|k| k["state"] == "current").unwrap()["kid"].as_str().unwrap().to_owned();
    run_ok(path, &["keys", "revoke", &signer, "--reason", "INC-1234 key material exposed"]);

    let events = cli_events(path, &[]);
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok();
    for event in &events {
        assert_eq!(event["actor"]["kind"], "cli", "{event}");
        assert!(event["actor"]["pid"].as_u64().is_some_and(|pid| pid > 0), "{event}");
        assert!(event["actor"]["host"].is_string(), "{event}");
        if let Some(user) = &user {
            // keyward_bare clears the environment: the user falls back to the uid.
            assert!(
                event["actor"]["user"] == user.as_str() || event["actor"]["user"].as_str().unwrap().starts_with("uid "),
                "{event}"
            );
        }
        let line = event.to_string();
        for secret in [token.trim(), rotated.trim()] {
            assert!(!line.contains(secret), "a token in {line}");
        }
    }
    let revoked = the(&events, "key.revoked", &format!("key:{signer}"));
    assert_eq!(revoked["reason"], "INC-1234 key material exposed");
    assert_eq!(revoked["before"]["status"], "live");
    assert_eq!(revoked["after"]["status"], "revoked");
    let first: Vec<&Value> = events.iter().filter(|e| e["reason"] == "first keys").collect();
    assert_eq!(first.len(), 2, "current and next: {events:#?}");
    assert!(first.iter().all(|e| e["action"] == "key.generated" && e["after"]["key_set"] == "npm"));
    // The revocation made the next key sign at once, and a new next key: the same reason.
    let after_revoke: Vec<&str> = events
        .iter()
        .filter(|e| e["reason"] == "INC-1234 key material exposed")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(after_revoke, ["key.revoked", "key.rotated", "key.generated"]);

    let added = the(&events, "client.added", "client:ci");
    assert_eq!((&added["reason"], &added["after"]["profiles"]), (&json!("onboarding ci"), &json!(["npm-sandbox"])));
    assert_eq!(added["before"], Value::Null);
    let rotated_event = the(&events, "client.rotated", "client:ci");
    assert_eq!(rotated_event["reason"], "token seen in a log");
    let changed = the(&events, "client.changed", "client:ci");
    assert_eq!(
        (&changed["before"]["permissions"], &changed["after"]["permissions"]),
        (&json!([]), &json!(["keys:read"])),
        "{changed}"
    );
    assert!(changed["before"].get("profiles").is_none(), "only what changed: {changed}");
    let gone = the(&events, "client.revoked", "client:ci");
    assert_eq!((&gone["before"]["revoked_at"], gone.get("reason")), (&Value::Null, None), "{gone}");

    // Filters: by action family, by object, by actor.
    let client_events = cli_events(path, &["--object", "client:"]);
    assert_eq!(client_events.len(), 4, "{client_events:#?}");
    assert_eq!(cli_events(path, &["--action", "key.revoked"]).len(), 1);
    let actor =
        events[0]["actor"]["user"].as_str().unwrap().to_owned() + "@" + events[0]["actor"]["host"].as_str().unwrap();
    assert_eq!(cli_events(path, &["--actor", &actor]).len(), events.len());
    assert_eq!(cli_events(path, &["--actor", "someone-else"]).len(), 0);

    let out = keyward(path, &["audit", "verify"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

#[tokio::test]
async fn admin_api_rotations_and_revocations_are_recorded_with_the_client_address_request_id_and_reason() {
    let app = spawn_app().await;
    let (token, _) = keyward::ops::clients::create(
        &app.store,
        &app.config,
        "ops-bot",
        &[],
        false,
        keyward::ops::clients::ClientOptions {
            permissions: ["keys:rotate", "keys:revoke", "events:read"].iter().map(|p| p.parse().unwrap()).collect(),
            ..Default::default()
        },
        0,
    )
    .await
    .unwrap();
    app.reload().await;
    let rotate = app
        .http
        .post(format!("{}/v1/key-sets/npm/rotate", app.internal))
        .bearer_auth(token.as_str())
        .header("x-request-id", "req-rotate-1")
        .json(&json!({"force": true, "reason": "quarterly drill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotate.status(), 200);
    let new_signer = rotate.json::<Value>().await.unwrap()["signing_kid"].as_str().unwrap().to_owned();
    let revoke = app
        .http
        .post(format!("{}/v1/keys/{new_signer}/revoke", app.internal))
        .bearer_auth(token.as_str())
        .header("x-request-id", "req-revoke-1")
        .json(&json!({"reason": "INC-77"}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200, "{}", revoke.text().await.unwrap());

    let page: Value = app
        .http
        .get(format!("{}/v1/events?actor=ops-bot", app.internal))
        .bearer_auth(token.as_str())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    let rotated = the(events, "key.rotated", &format!("key:{new_signer}"));
    assert_eq!(
        rotated["actor"],
        json!({"kind": "admin", "client": "ops-bot", "remote": "127.0.0.1", "request_id": "req-rotate-1"})
    );
    assert_eq!((&rotated["reason"], &rotated["after"]["forced"]), (&json!("quarterly drill"), &json!(true)));
    assert_eq!(rotated["after"]["status"], "live");
    let revoked = the(events, "key.revoked", &format!("key:{new_signer}"));
    assert_eq!((&revoked["actor"]["request_id"], &revoked["reason"]), (&json!("req-revoke-1"), &json!("INC-77")));
    assert_eq!((&revoked["before"]["status"], &revoked["after"]["status"]), (&json!("live"), &json!("revoked")));

    // Paged: one event a page, each page after the last.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let after = next.as_ref().map(|n| format!("&after={n}")).unwrap_or_default();
        let page: Value = app
            .http
            .get(format!("{}/v1/events?actor=ops-bot&limit=1{after}", app.internal))
            .bearer_auth(token.as_str())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(token) => next = Some(token.to_owned()),
            None => break,
        }
    }
    assert_eq!(&seen, events);

    // The server's own start is recorded, with its version and a digest of its configuration.
    let started: Value = app
        .http
        .get(format!("{}/v1/events?action=server.started", app.internal))
        .bearer_auth(token.as_str())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let started = &started["events"][0];
    assert_eq!(started["after"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(started["after"]["config_sha256"].as_str().unwrap().len(), 64);
}
