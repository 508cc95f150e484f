//! Issuer discovery: a verifier that knows only a token's `iss` finds the keys through the
//! discovery document the public listener serves.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keyward::config::TlsConfig;
use keyward::keys::Algorithm;
use keyward::seal::MasterKey;
use serde_json::{json, Value};

use crate::certs::{https_client, Ca, HOST};
use crate::helpers::{assert_problem, spawn_app, spawn_on, test_config};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";

#[tokio::test]
async fn a_verifier_that_resolves_keys_from_the_discovery_document_verifies_a_token() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("https://{HOST}:{}/tenant", public.local_addr().unwrap().port());
    let mut config = test_config(dir.path());
    let (cert_file, key_file) = ca.server(None).write(dir.path(), "public");
    config.server.public_tls = Some(TlsConfig { cert_file, key_file, client_ca_file: None });
    config.key_sets[0].algorithm = Algorithm::Es256;
    config.profiles[0].issuer = Some(issuer.clone());
    config.profiles[0].discovery = true;
    let app = spawn_on(dir, config, MasterKey::generate(), public).await;
    let token = app.client("backend", &[PROFILE]).await;
    let jwt = app.sign_ok(PROFILE, &token, &json!({"sub": "acct-7"})).await["token"].as_str().unwrap().to_owned();

    // The verifier starts from the token's (not yet trusted) iss, as OIDC libraries do.
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let iss = payload["iss"].as_str().unwrap();
    assert_eq!(iss, issuer);
    let client = https_client(&ca, None);
    let response = client.get(format!("{iss}/.well-known/openid-configuration")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let metadata: Value = response.json().await.unwrap();
    assert_eq!(metadata["issuer"], iss, "the document must name the issuer it was fetched for");
    let jwks_uri = metadata["jwks_uri"].as_str().unwrap();
    assert!(jwks_uri.starts_with(&format!("https://{HOST}:")), "absolute: {jwks_uri}");
    assert_eq!(metadata["id_token_signing_alg_values_supported"], json!(["ES256"]));

    let jwks_response = client.get(jwks_uri).send().await.unwrap();
    assert_eq!(headers["cache-control"], jwks_response.headers()["cache-control"], "cached as the JWKS");
    let jwks: Value = jwks_response.json().await.unwrap();
    let verified = verify(&jwt, &jwks).unwrap();
    assert_eq!(verified.claims["sub"], "acct-7");

    // RFC 8414's location holds the same document, and the validators work.
    let origin = iss.trim_end_matches("/tenant");
    let oauth = client.get(format!("{origin}/.well-known/oauth-authorization-server/tenant")).send().await.unwrap();
    assert_eq!(oauth.json::<Value>().await.unwrap(), metadata);
    let etag = headers["etag"].to_str().unwrap();
    let again = client
        .get(format!("{iss}/.well-known/openid-configuration"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

#[tokio::test]
async fn discovery_is_off_unless_a_profile_asks_for_it() {
    let app = spawn_app().await;
    for path in ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"] {
        assert_problem(app.http.get(format!("{}{path}", app.public)).send().await.unwrap(), 404).await;
    }
}
