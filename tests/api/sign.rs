//! The internal signing API: tokens verified independently against the JWKS fetched over
//! HTTP, and every refusal.

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keyward::config::ClaimType;
use keyward::keys::Algorithm;
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, spawn_app_with_algorithm};
use crate::verify::{tamper_signature, verify};

const PROFILE: &str = "npm-sandbox";

#[tokio::test]
async fn tokens_of_every_algorithm_verify_against_the_published_jwks() {
    for algorithm in [Algorithm::Rs256, Algorithm::Ps256, Algorithm::Es256, Algorithm::Es384] {
        let app = spawn_app_with_algorithm(algorithm).await;
        let token = app.client("backend", &[PROFILE]).await;
        let before = chrono::Utc::now().timestamp();
        let body =
            app.sign_ok(PROFILE, &token, &json!({"sub": "acct-42", "claims": {"obo_user": "user@example.com"}})).await;
        let jwks = app.jwks("/path/to/your/jwks").await;
        assert_eq!(jwks, app.jwks("/.well-known/jwks.json").await);

        let jwt = body["token"].as_str().unwrap();
        let verified = verify(jwt, &jwks).unwrap_or_else(|e| panic!("{algorithm}: {e}"));
        assert!(verify(&tamper_signature(jwt), &jwks).is_err(), "{algorithm}: tampered token verified");

        let header = verified.header.as_object().unwrap();
        assert_eq!(header.len(), 3, "{header:?}");
        assert_eq!(header["alg"], algorithm.as_str());
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], body["kid"]);
        assert_eq!(jwks["keys"][0]["kid"], body["kid"], "the signing key is listed first");

        let claims = verified.claims.as_object().unwrap();
        let mut names: Vec<&str> = claims.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["aud", "exp", "iat", "iss", "jti", "jwks_uri", "obo_user", "sub"]);
        assert_eq!(claims["iss"], "https://yourdomain.com");
        assert_eq!(claims["aud"], "http://sandbox.npmdev.net/api/partners/acme/oauth2/v1/token");
        assert_eq!(claims["sub"], "acct-42");
        assert_eq!(claims["jwks_uri"], "/path/to/your/jwks");
        assert_eq!(claims["obo_user"], "user@example.com");
        let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
        assert!(iat >= before && iat <= chrono::Utc::now().timestamp());
        assert_eq!(exp - iat, 300, "default_ttl");

        assert_eq!(body["alg"], algorithm.as_str());
        assert_eq!(body["jti"], claims["jti"]);
        assert_eq!(body["issued_at"], iat);
        assert_eq!(body["expires_at"], exp);
        assert_eq!(body["expires_in"], 300);
    }
}

#[tokio::test]
async fn jti_is_unique_and_carries_at_least_128_bits() {
    let app = spawn_app_with_algorithm(Algorithm::Es256).await;
    let token = app.client("backend", &[PROFILE]).await;
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let body = app.sign_ok(PROFILE, &token, &json!({"sub": "a"})).await;
        let jti = body["jti"].as_str().unwrap().to_owned();
        assert!(URL_SAFE_NO_PAD.decode(&jti).unwrap().len() >= 16);
        assert!(seen.insert(jti), "jti repeated");
    }
}

#[tokio::test]
async fn ttl_up_to_max_ttl_is_honoured_and_stays_under_an_hour() {
    let app = spawn_app_with_algorithm(Algorithm::Es256).await;
    let token = app.client("backend", &[PROFILE]).await;
    for ttl in [1, 60, 3_300] {
        let body = app.sign_ok(PROFILE, &token, &json!({"sub": "a", "ttl_seconds": ttl})).await;
        let verified = verify(body["token"].as_str().unwrap(), &app.jwks("/.well-known/jwks.json").await).unwrap();
        let lifetime = verified.claims["exp"].as_i64().unwrap() - verified.claims["iat"].as_i64().unwrap();
        assert_eq!(lifetime, ttl);
        assert!(lifetime < 3_600);
    }
}

#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let app = spawn_app().await;
    let token = app.client("backend", &[PROFILE]).await;
    let url = format!("{}/v1/profiles/{PROFILE}/sign", app.internal);
    let body = json!({"sub": "a"});

    let response = app.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"keyward\"");
    assert_problem(response, 401).await;

    let mut wrong = token.clone();
    wrong.replace_range(wrong.len() - 4.., "AAAA");
    for bad in [wrong.as_str(), "kw_nope", "", &token[..token.len() - 1]] {
        assert_problem(app.sign(PROFILE, bad, &body).await, 401).await;
    }
    let basic = app.http.post(&url).header("authorization", format!("Basic {token}")).json(&body).send().await.unwrap();
    assert_problem(basic, 401).await;
    // Unauthenticated callers learn nothing about which profiles exist.
    assert_problem(app.sign("no-such-profile", "kw_nope", &body).await, 401).await;
}

#[tokio::test]
async fn revoked_client_is_refused_once_the_server_sees_the_change() {
    let app = spawn_app_with_algorithm(Algorithm::Es256).await;
    let token = app.client("backend", &[PROFILE]).await;
    app.sign_ok(PROFILE, &token, &json!({"sub": "a"})).await;
    keyward::ops::clients::revoke(&app.store, "backend", 0).await.unwrap();
    // No explicit reload: the server's watcher must notice the other writer's change.
    let refused = app
        .eventually(Duration::from_secs(5), || async {
            app.sign(PROFILE, &token, &json!({"sub": "a"})).await.status() == 401
        })
        .await;
    assert!(refused, "revoked token still accepted after 5 s");
}

#[tokio::test]
async fn a_profile_the_client_may_not_use_is_403_and_an_unknown_one_404() {
    let app = spawn_app_with(|c| {
        let mut second = c.profiles[0].clone();
        second.name = "other".to_owned();
        c.profiles.push(second);
    })
    .await;
    let token = app.client("backend", &["other"]).await;
    assert_problem(app.sign(PROFILE, &token, &json!({"sub": "a"})).await, 403).await;
    assert_problem(app.sign("missing", &token, &json!({"sub": "a"})).await, 404).await;
    app.sign_ok("other", &token, &json!({"sub": "a"})).await;
}

#[tokio::test]
async fn bad_bodies_are_refused_with_the_field_named() {
    // obo_user as long as a body may be, so that the body limit is what is tested below.
    let app = spawn_app_with(|c| {
        c.key_sets[0].algorithm = Algorithm::Es256;
        c.profiles[0].allowed_claim_types.insert("obo_user".into(), ClaimType::String { max_length: 16 * 1024 });
    })
    .await;
    let token = app.client("backend", &[PROFILE]).await;
    let cases = [
        (json!({"sub": "a", "scope": "all"}), 400, Some("scope")),
        (json!({"ttl_seconds": 60}), 400, Some("sub")),
        (json!({"sub": 12}), 400, Some("sub")),
        (json!({"sub": "a", "claims": "x"}), 400, Some("claims")),
        (json!({"sub": "has spaces"}), 422, Some("sub")),
        (json!({"sub": ""}), 422, Some("sub")),
        (json!({"sub": "a", "ttl_seconds": 0}), 422, Some("ttl_seconds")),
        (json!({"sub": "a", "ttl_seconds": 3_301}), 422, Some("ttl_seconds")),
        (json!({"sub": "a", "ttl_seconds": -1}), 422, Some("ttl_seconds")),
        (json!({"sub": "a", "claims": {"role": "admin"}}), 422, Some("claims.role")),
        (json!({"sub": "a", "claims": {"exp": 1}}), 422, Some("claims.exp")),
        (json!({"sub": "a", "claims": {"jwks_uri": "/x"}}), 422, Some("claims.jwks_uri")),
    ];
    let generation = app.store.generation().await.unwrap();
    for (body, status, field) in cases {
        let problem = assert_problem(app.sign(PROFILE, &token, &body).await, status).await;
        assert_eq!(problem["field"].as_str(), field, "{body}: {problem}");
    }
    assert_eq!(app.store.generation().await.unwrap(), generation, "a refused request changed state");

    let url = format!("{}/v1/profiles/{PROFILE}/sign", app.internal);
    let send = |body: String, content_type: &'static str| {
        app.http.post(&url).bearer_auth(&token).header("content-type", content_type).body(body).send()
    };
    assert_problem(send("{\"sub\": ".into(), "application/json").await.unwrap(), 400).await;
    assert_problem(send("not json".into(), "application/json").await.unwrap(), 400).await;
    assert_problem(send("{\"sub\":\"a\"}".into(), "text/plain").await.unwrap(), 415).await;
    let big = json!({"sub": "a", "claims": {"obo_user": "x".repeat(17 * 1024)}}).to_string();
    assert_problem(send(big, "application/json").await.unwrap(), 413).await;
    // Just under the limit is fine as far as size goes.
    let fits = json!({"sub": "a", "claims": {"obo_user": "x".repeat(15 * 1024)}}).to_string();
    assert_eq!(send(fits, "application/json").await.unwrap().status(), 200);
}

#[tokio::test]
async fn claim_values_of_the_wrong_type_or_size_are_422_naming_the_claim() {
    let app = spawn_app_with(|c| {
        c.key_sets[0].algorithm = Algorithm::Es256;
        let profile = &mut c.profiles[0];
        profile.allowed_claims.extend(["roles".to_owned(), "tier".to_owned()]);
        profile.allowed_claim_types.insert("roles".into(), ClaimType::StringArray { max_items: 3, max_length: 8 });
        profile.allowed_claim_types.insert("tier".into(), ClaimType::Integer { min: Some(1), max: Some(3) });
    })
    .await;
    let token = app.client("backend", &[PROFILE]).await;
    let mut deep = json!("x");
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let cases = [
        ("obo_user", json!("x".repeat(16 * 1024 - 100)), "must be a string of at most 256 characters"),
        ("obo_user", deep, "must be a string of at most 256 characters"),
        ("obo_user", json!(12), "must be a string of at most 256 characters"),
        ("roles", json!(["a", "b", "c", "d"]), "must be an array of at most 3 strings of at most 8 characters each"),
        ("roles", json!(["waytoolong"]), "must be an array of at most 3 strings of at most 8 characters each"),
        ("tier", json!(4), "must be an integer from 1 to 3"),
        ("tier", json!("2"), "must be an integer from 1 to 3"),
    ];
    let before = app.store.generation().await.unwrap();
    for (name, value, detail) in cases {
        let response = app.sign(PROFILE, &token, &json!({"sub": "a", "claims": {name: value}})).await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(problem["field"], format!("claims.{name}"), "{problem}");
        assert_eq!(problem["detail"], detail, "{problem}");
    }
    assert_eq!(app.store.generation().await.unwrap(), before);
    let body = json!({"sub": "a", "claims": {"obo_user": "x".repeat(256), "roles": ["a", "b"], "tier": 3}});
    let signed = app.sign_ok(PROFILE, &token, &body).await;
    let jwks = app.jwks("/.well-known/jwks.json").await;
    let claims = verify(signed["token"].as_str().unwrap(), &jwks).unwrap().claims;
    assert_eq!((claims["roles"].clone(), claims["tier"].clone()), (json!(["a", "b"]), json!(3)));
}

#[tokio::test]
async fn a_member_named_twice_at_any_depth_is_400_naming_it_on_every_json_route() {
    let app = spawn_app_with_algorithm(Algorithm::Es256).await;
    let token = app.client("backend", &[PROFILE]).await;
    let admin = keyward::ops::clients::add(&app.store, &app.config, "ops", &[], true, 0).await.unwrap().to_string();
    app.reload().await;
    let cases = [
        ("/v1/profiles/npm-sandbox/sign", &token, r#"{"sub": "a", "sub": "b"}"#, "sub"),
        (
            "/v1/profiles/npm-sandbox/sign",
            &token,
            r#"{"sub": "a", "claims": {"obo_user": "x", "obo_user": "y"}}"#,
            "claims.obo_user",
        ),
        (
            "/v1/profiles/npm-sandbox/token",
            &token,
            r#"{"sub": "a", "ttl_seconds": 5, "ttl_seconds": 6}"#,
            "ttl_seconds",
        ),
        ("/v1/key-sets/npm/rotate", &admin, r#"{"force": false, "force": true}"#, "force"),
    ];
    let generation = app.store.generation().await.unwrap();
    for (path, bearer, body, member) in cases {
        let response = app
            .http
            .post(format!("{}{path}", app.internal))
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 400).await;
        assert_eq!(problem["field"], member, "{path} {body}: {problem}");
        assert_eq!(problem["detail"], format!("the member {member:?} appears more than once"), "{problem}");
    }
    assert_eq!(app.store.generation().await.unwrap(), generation, "a refused request changed state");
}

/// A client that sends its headers, then its body a byte at a time, is cut off after
/// request_body_timeout instead of holding the connection for as long as it likes.
#[tokio::test]
async fn a_body_that_trickles_in_gets_408_and_the_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| {
        c.key_sets[0].algorithm = Algorithm::Es256;
        c.server.request_body_timeout = keyward::config::Duration::from_secs(1);
    })
    .await;
    let token = app.client("backend", &[PROFILE]).await;
    // 300 bytes at one per 100 ms: the whole body would take 30 s.
    let body = format!("{:<300}", r#"{"sub": "a"}"#).into_bytes();
    let stream = tokio::net::TcpStream::connect(app.internal.trim_start_matches("http://")).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/profiles/{PROFILE}/sign HTTP/1.1\r\nHost: keyward\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    // Read until the server closes the connection (or resets it, having unread bytes).
    let closed = tokio::time::timeout(Duration::from_secs(25), async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was still open after 25 s");
    assert!(!trickle.is_finished() || !trickle.await.unwrap(), "the server waited for the whole body");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/problem+json"), "{answer}");
    assert!(lower.contains("connection: close"), "{answer}");
    assert!(answer.contains("the request body did not arrive within 1 s"), "{answer}");
}

#[tokio::test]
async fn head_of_health_routes_is_200_with_no_body_on_both_listeners() {
    let app = spawn_app().await;
    for base in [&app.public, &app.internal] {
        for path in ["/healthz", "/readyz"] {
            let response = app.http.head(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "HEAD {base}{path}");
            assert!(response.bytes().await.unwrap().is_empty(), "HEAD {base}{path} has a body");
        }
    }
    let post = app.http.post(format!("{}/healthz", app.internal)).send().await.unwrap();
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    assert_problem(post, 405).await;
}

#[tokio::test]
async fn responses_carry_no_internal_error_text() {
    let app = spawn_app_with_algorithm(Algorithm::Es256).await;
    let token = app.client("backend", &[PROFILE]).await;
    let cases = [
        (json!({"sub": "a", "ttl_seconds": "x"}), "\"ttl_seconds\" has the wrong type"),
        (json!({"sub": "a", "extra": 1}), "unknown field \"extra\""),
        (json!({}), "the required field \"sub\" is missing"),
        (json!(["sub"]), "the body must be a JSON object"),
    ];
    for (body, detail) in cases {
        let problem = assert_problem(app.sign(PROFILE, &token, &body).await, 400).await;
        assert_eq!(problem["detail"], detail);
    }
}

#[tokio::test]
async fn internal_listener_serves_health_and_404s_the_rest() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.http.get(format!("{}{path}", app.internal)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    for path in ["/path/to/your/jwks", "/.well-known/jwks.json", "/v1/profiles", "/"] {
        assert_problem(app.http.get(format!("{}{path}", app.internal)).send().await.unwrap(), 404).await;
    }
    let get_sign = app.http.get(format!("{}/v1/profiles/{PROFILE}/sign", app.internal)).send().await.unwrap();
    assert_problem(get_sign, 405).await;
}

#[tokio::test]
async fn every_internal_route_is_in_the_generated_openapi_document() {
    let app = spawn_app().await;
    let doc: serde_json::Value =
        app.http.get(format!("{}/openapi.json", app.internal)).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    for (method, path) in &keyward::http::internal::routes() {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not documented");
        // The router serves it too: the request never falls through to the catch-all 404.
        let url = path.replace("{profile}", PROFILE).replace("{name}", "npm").replace("{kid}", "some-kid");
        let response =
            app.http.request(method.to_uppercase().parse().unwrap(), format!("{}{url}", app.internal)).send().await;
        let body = response.unwrap().text().await.unwrap();
        assert!(!body.contains("no such resource"), "{method} {path} is documented but not routed: {body}");
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        keyward::http::internal::routes().len(),
        "documented routes that do not exist"
    );
    assert!(doc["components"]["schemas"]["SignRequest"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
