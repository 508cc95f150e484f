//! Administrative permissions: each admin route with a client holding exactly its
//! permission, scoped to one key set (or partner), and with every other permission; and
//! the CLI that grants, lists and changes them.

use keyward::config::{Config, PartnerConfig};
use keyward::ops::clients::{ClientChange, ClientOptions};
use keyward::policy::permission::{Action, Permission};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, keyward, spawn_app_with, spawn_in, test_config, text, TestApp};

const SET: &str = "npm";
const OTHER: &str = "other";

/// Two key sets (`npm`, `other`) and two partners of `npm` (`alpha`, `beta`).
fn two_sets_and_partners(config: &mut Config) {
    let mut other = config.key_sets[0].clone();
    other.name = OTHER.to_owned();
    other.jwks_paths = vec!["/other/jwks.json".to_owned()];
    config.key_sets.push(other);
    let partner = |name: &str, cidr: &str| -> PartnerConfig {
        toml::from_str(&format!("name = \"{name}\"\nkey_sets = [\"{SET}\"]\nmatch = {{ cidrs = [\"{cidr}\"] }}\n"))
            .unwrap()
    };
    config.partners = vec![partner("alpha", "192.0.2.1/32"), partner("beta", "192.0.2.2/32")];
}

/// The scope a test grants `action`: one key set, or one partner.
fn scoped(action: Action) -> String {
    match action {
        Action::PartnersRead => format!("{action}=alpha"),
        // The audit trail is about the whole server: only granted unscoped.
        Action::EventsRead => action.to_string(),
        _ => format!("{action}={SET}"),
    }
}

/// A client holding exactly `permissions`.
async fn client_with(app: &TestApp, name: &str, permissions: &[String]) -> String {
    let options = ClientOptions {
        permissions: permissions.iter().map(|p| p.parse::<Permission>().unwrap()).collect(),
        ..ClientOptions::default()
    };
    let (token, _) =
        keyward::ops::clients::create(&app.store, &app.config, name, &[], false, options, 0).await.unwrap();
    app.reload().await;
    token.to_string()
}

/// The newest key of `set` (not the signer: revoking it leaves the set signing).
async fn newest_kid(app: &TestApp, set: &str) -> String {
    let keys = app.store.keys_of_set(set).await.unwrap();
    keys.iter().filter(|k| k.is_published()).max_by_key(|k| k.created_at).unwrap().kid.clone()
}

/// Calls the route of `action` on `set` (ignored by the listing routes).
async fn call(app: &TestApp, token: &str, action: Action, set: &str) -> reqwest::Response {
    let http = &app.http;
    let base = &app.internal;
    match action {
        Action::KeysRead => http.get(format!("{base}/v1/key-sets")).bearer_auth(token).send().await,
        Action::KeysRotate => {
            http.post(format!("{base}/v1/key-sets/{set}/rotate"))
                .bearer_auth(token)
                .json(&json!({"force": true}))
                .send()
                .await
        }
        Action::KeysRevoke => {
            let kid = newest_kid(app, set).await;
            http.post(format!("{base}/v1/keys/{kid}/revoke")).bearer_auth(token).send().await
        }
        Action::PartnersRead => http.get(format!("{base}/v1/partners")).bearer_auth(token).send().await,
        Action::EventsRead => http.get(format!("{base}/v1/events")).bearer_auth(token).send().await,
    }
    .unwrap()
}

/// The permission a 403 from the route of `action` on `set` must name.
fn missing(action: Action, set: &str) -> String {
    match action {
        Action::KeysRead | Action::PartnersRead | Action::EventsRead => action.to_string(),
        _ => format!("{action}={set}"),
    }
}

async fn assert_missing(response: reqwest::Response, permission: &str) {
    let problem = assert_problem(response, 403).await;
    assert_eq!(problem["type"], "urn:keyward:problem:missing-permission", "{problem}");
    assert_eq!(problem["permission"], permission, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains(permission), "{problem}");
}

#[tokio::test]
async fn each_admin_route_answers_a_client_with_exactly_its_permission_and_names_the_missing_one_to_every_other() {
    let app = spawn_app_with(two_sets_and_partners).await;
    for action in Action::ALL {
        let name = format!("only-{}", action.name().replace(':', "-"));
        let token = client_with(&app, &name, &[scoped(action)]).await;

        let allowed = call(&app, &token, action, SET).await;
        assert_eq!(allowed.status(), 200, "{name} on {SET}: {}", allowed.text().await.unwrap());
        let body: Value = allowed.json().await.unwrap_or_default();
        match action {
            Action::KeysRead => {
                let sets: Vec<&str> =
                    body["key_sets"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
                assert_eq!(sets, [SET], "a client scoped to {SET} sees only {SET}");
            }
            Action::PartnersRead => {
                let partners: Vec<&str> =
                    body["partners"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
                assert_eq!(partners, ["alpha"], "a client scoped to alpha sees only alpha");
            }
            Action::EventsRead => {
                let actions: Vec<&str> =
                    body["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
                assert!(actions.contains(&"server.started") && actions.contains(&"client.added"), "{body}");
            }
            Action::KeysRotate | Action::KeysRevoke => {
                assert_eq!(body["key_set"], SET);
                // Outside its scope: 403 naming the set it lacks.
                assert_missing(call(&app, &token, action, OTHER).await, &missing(action, OTHER)).await;
            }
        }

        for other in Action::ALL.into_iter().filter(|a| *a != action) {
            assert_missing(call(&app, &token, other, SET).await, &missing(other, SET)).await;
        }
    }

    // A signer (profiles only) holds no administrative permission.
    let signer = app.client("backend", &["npm-sandbox"]).await;
    for action in Action::ALL {
        assert_missing(call(&app, &signer, action, SET).await, &missing(action, SET)).await;
    }
    // --admin holds them all, everywhere.
    let admin = keyward::ops::clients::add(&app.store, &app.config, "ops", &[], true, 0).await.unwrap();
    app.reload().await;
    for action in Action::ALL {
        assert_eq!(call(&app, &admin, action, OTHER).await.status(), 200, "--admin may {action} on {OTHER}");
    }
}

#[tokio::test]
async fn a_permission_change_applies_to_the_next_request_without_a_reload() {
    let app = spawn_app_with(two_sets_and_partners).await;
    let token = client_with(&app, "rotator", &[scoped(Action::KeysRotate)]).await;
    assert_eq!(call(&app, &token, Action::KeysRotate, SET).await.status(), 200);

    // Changed in the store only (as another process would): the served snapshot still
    // holds the old rights, yet the next request is judged by the new ones.
    let change = ClientChange { permissions: Some(vec!["keys:read".parse().unwrap()]), ..ClientChange::default() };
    keyward::ops::clients::update(&app.store, &app.config, "rotator", change).await.unwrap();
    assert_missing(call(&app, &token, Action::KeysRotate, SET).await, "keys:rotate=npm").await;
    assert_eq!(call(&app, &token, Action::KeysRead, SET).await.status(), 200);

    // Revoked in the store only: the next admin request is refused with 401.
    keyward::ops::clients::revoke(&app.store, "rotator", 0).await.unwrap();
    assert_problem(call(&app, &token, Action::KeysRead, SET).await, 401).await;
}

#[tokio::test]
async fn the_cli_grants_lists_and_changes_permissions_and_the_running_server_applies_them_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    two_sets_and_partners(&mut config);
    let (master, _) = keyward::seal::MasterKey::resolve(None, &config.server.master_key_file, true).unwrap();
    std::fs::write(dir.path().join("keys.toml"), toml::to_string(&config).unwrap()).unwrap();
    let app = spawn_in(dir, config, master).await;
    let path = app.dir.path().to_owned();

    let out = keyward(&path, &["clients", "add", "ci", "--permission", "keys:rotate=npm", "--permission", "keys:read"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();

    let list = text(&keyward(&path, &["clients", "list"]).stdout);
    let row = list.lines().find(|l| l.starts_with("ci ")).unwrap();
    assert!(row.contains("keys:read keys:rotate=npm"), "{list}");
    let json: Value = serde_json::from_slice(&keyward(&path, &["clients", "list", "--json"]).stdout).unwrap();
    let ci = json.as_array().unwrap().iter().find(|c| c["name"] == "ci").unwrap();
    assert_eq!(ci["permissions"], json!(["keys:read", "keys:rotate=npm"]));

    assert_eq!(call(&app, &token, Action::KeysRotate, SET).await.status(), 200);
    assert_missing(call(&app, &token, Action::KeysRotate, OTHER).await, "keys:rotate=other").await;

    // Unknown permissions and scopes are refused, naming what is known.
    let bad = keyward(&path, &["clients", "update", "ci", "--permission", "keys:destroy"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("keys:rotate"), "{}", text(&bad.stderr));
    let bad = keyward(&path, &["clients", "update", "ci", "--permission", "keys:rotate=nope"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("no key set is named \"nope\""));

    // Once `clients update` has returned, the server answers by the new rights: no wait.
    let out = keyward(&path, &["clients", "update", "ci", "--permission", "keys:rotate=other"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_missing(call(&app, &token, Action::KeysRotate, SET).await, "keys:rotate=npm").await;
    assert_missing(call(&app, &token, Action::KeysRead, SET).await, "keys:read").await;
    assert_eq!(call(&app, &token, Action::KeysRotate, OTHER).await.status(), 200);

    let out = keyward(&path, &["clients", "update", "ci", "--no-permissions"]);
    assert!(!out.status.success() && text(&out.stderr).contains("revoke it instead"), "{}", text(&out.stderr));
    let out = keyward(&path, &["clients", "update", "ci", "--admin", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(call(&app, &token, Action::PartnersRead, SET).await.status(), 200);
    let list = text(&keyward(&path, &["clients", "list"]).stdout);
    assert!(list.lines().find(|l| l.starts_with("ci ")).unwrap().contains("all (--admin)"), "{list}");
}

#[tokio::test]
async fn the_master_key_status_needs_keys_read_on_every_key_set() {
    let app = spawn_app_with(two_sets_and_partners).await;
    let status = |token: String| {
        let request = app.http.get(format!("{}/v1/master-key", app.internal)).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };

    let everywhere = client_with(&app, "reader", &["keys:read".to_owned()]).await;
    let answer = status(everywhere).await;
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert!(body.is_object(), "{body}");

    // The master key seals every set's keys: a client scoped to one set does not see it.
    let scoped_reader = client_with(&app, "npm-reader", &[scoped(Action::KeysRead)]).await;
    assert_missing(status(scoped_reader).await, "keys:read").await;
    let rotator = client_with(&app, "rotator", &["keys:rotate".to_owned()]).await;
    assert_missing(status(rotator).await, "keys:read").await;
    let signer = app.client("backend", &["npm-sandbox"]).await;
    assert_missing(status(signer).await, "keys:read").await;
}
