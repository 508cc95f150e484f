//! The public listener: JWKS documents, caching validators, health, and nothing else.

use std::time::Duration;

use base64::Engine;
use keyward::keys::Algorithm;
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with_algorithm};
use crate::verify::verify;

#[tokio::test]
async fn jwks_holds_public_members_only_with_cache_headers() {
    for (algorithm, members) in [
        (Algorithm::Rs256, vec!["alg", "e", "kid", "kty", "n", "use"]),
        (Algorithm::Es256, vec!["alg", "crv", "kid", "kty", "use", "x", "y"]),
        (Algorithm::EdDsa, vec!["alg", "crv", "kid", "kty", "use", "x"]),
    ] {
        let app = spawn_app_with_algorithm(algorithm).await;
        for path in ["/path/to/your/jwks", "/.well-known/jwks.json"] {
            let response = app.http.get(format!("{}{path}", app.public)).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let headers = response.headers().clone();
            assert_eq!(headers["content-type"], "application/json");
            assert_eq!(headers["cache-control"], "public, max-age=300");
            assert_eq!(headers["access-control-allow-origin"], "*");
            let etag = headers["etag"].to_str().unwrap();
            assert!(etag.starts_with('"') && !etag.starts_with("W/"), "strong etag: {etag}");
            let body: serde_json::Value = response.json().await.unwrap();
            let keys = body["keys"].as_array().unwrap();
            assert_eq!(keys.len(), 2, "the signing key and the next key");
            for key in keys {
                let mut names: Vec<&str> = key.as_object().unwrap().keys().map(String::as_str).collect();
                names.sort();
                assert_eq!(names, members, "{algorithm}");
                assert_eq!(key["use"], "sig");
                assert_eq!(key["alg"], algorithm.as_str());
                if algorithm == Algorithm::EdDsa {
                    assert_eq!((&key["kty"], &key["crv"]), (&json!("OKP"), &json!("Ed25519")));
                    // RFC 7638 with the OKP members of RFC 8037, computed here independently.
                    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, key["x"].as_str().unwrap());
                    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(<sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes()));
                    assert_eq!(key["kid"], thumbprint.as_str());
                }
            }
            assert_eq!(body.as_object().unwrap().len(), 1, "only the keys member");
        }
    }
}

#[tokio::test]
async fn if_none_match_gives_304_until_the_keys_change() {
    let app = spawn_app_with_algorithm(Algorithm::Es256).await;
    let url = format!("{}/.well-known/jwks.json", app.public);
    let first = app.http.get(&url).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    let cached = app.http.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(cached.headers()["cache-control"], "public, max-age=300");
    assert!(cached.bytes().await.unwrap().is_empty());

    let other = app.http.get(&url).header("if-none-match", "\"stale\"").send().await.unwrap();
    assert_eq!(other.status(), 200);
    // A tag on a second header line counts too.
    let split =
        app.http.get(&url).header("if-none-match", "\"stale\"").header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(split.status(), 304);

    app.force_rotate().await;
    app.reload().await;
    let after = app.http.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(after.status(), 200, "a rotation must change the etag");
    assert_ne!(after.headers()["etag"].to_str().unwrap(), etag);
}

#[tokio::test]
async fn rotation_publishes_the_new_signing_key_first_and_keeps_the_old_one() {
    let app = spawn_app_with_algorithm(Algorithm::Es256).await;
    let token = app.client("backend", &["npm-sandbox"]).await;
    let old = app.sign_ok("npm-sandbox", &token, &json!({"sub": "a"})).await;

    let rotated = app.force_rotate().await;
    // No explicit reload: the watcher must pick up a change made by another writer.
    let picked_up = app
        .eventually(Duration::from_secs(5), || async {
            app.sign_ok("npm-sandbox", &token, &json!({"sub": "a"})).await["kid"] == rotated
        })
        .await;
    assert!(picked_up, "the server did not switch to the rotated key within 5 s");

    let jwks = app.jwks("/.well-known/jwks.json").await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), 3, "current, next, previous: {kids:?}");
    assert_eq!(kids[0], rotated, "the signing key first");
    assert_eq!(kids[2], old["kid"].as_str().unwrap(), "the previous key last");
    verify(old["token"].as_str().unwrap(), &jwks).expect("tokens of the previous key still verify");
}

#[tokio::test]
async fn every_other_public_path_is_404_including_internal_routes() {
    let app = spawn_app().await;
    for path in ["/", "/v1/profiles/npm-sandbox/sign", "/metrics", "/path/to/your/jwks/", "/path/to/your", "/jwks.json"]
    {
        assert_problem(app.http.get(format!("{}{path}", app.public)).send().await.unwrap(), 404).await;
    }
    let post_sign = app
        .http
        .post(format!("{}/v1/profiles/npm-sandbox/sign", app.public))
        .json(&json!({"sub": "a"}))
        .send()
        .await
        .unwrap();
    assert_problem(post_sign, 404).await;
    let post_jwks = app.http.post(format!("{}/.well-known/jwks.json", app.public)).send().await.unwrap();
    assert_eq!(post_jwks.headers()["allow"], "GET, HEAD");
    assert_problem(post_jwks, 405).await;
}

#[tokio::test]
async fn public_health_and_head_requests() {
    let app = spawn_app().await;
    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = app.http.get(format!("{}{path}", app.public)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["status"], status);
    }
    let head = app.http.head(format!("{}/.well-known/jwks.json", app.public)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.headers().contains_key("etag"));
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
}
