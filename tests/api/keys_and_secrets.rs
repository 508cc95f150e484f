//! Shared-secret profiles, public-key export and key import.
//!
//! HS256/HS512 tokens are checked with the pure-Rust `hmac` crate, asymmetric ones with
//! `verify.rs`; `openssl` only makes the private keys fed to `keyward keys import`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use keyward::config::{Config, ProfileConfig};
use keyward::keys::Algorithm;
use keyward::keys::HmacAlgorithm;
use keyward::ops::secrets::SecretError;
use keyward::seal::MasterKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};

use crate::helpers::{
    assert_problem, contains, database_bytes, keyward, keyward_command, now, partner_api, shared_secret_profile,
    spawn_app_with, spawn_in, test_config, text, TestApp,
};
use crate::verify::verify;

const JWKS_PATH: &str = "/.well-known/jwks.json";
/// 45 bytes: enough for HS256.
const PARTNER_SECRET: &[u8] = b"partner-api-shared-secret-0123456789abcdefXYZ";
/// 72 bytes: enough for HS512.
const NPS_SECRET: &[u8] = b"nps-api-key-secret-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP";

// ---------------------------------------------------------------------------------------
// Profiles and secrets
// ---------------------------------------------------------------------------------------

/// The NPS seed: HS512 over `sub` (the API key id), `iat`, `exp`; 5 minutes, at most 30.
fn nps(name: &str) -> ProfileConfig {
    let claims = json!({"sub": "your-api-key-id", "iat": "{iat}", "exp": "{exp}"});
    shared_secret_profile(name, HmacAlgorithm::Hs512, claims, 300, 1_800)
}

/// A server whose key set is ES256 (quick to start), with `profiles` added.
async fn spawn_with_profiles(profiles: Vec<ProfileConfig>) -> TestApp {
    spawn_app_with(move |c| {
        c.key_sets[0].algorithm = Algorithm::Es256;
        c.profiles.extend(profiles);
    })
    .await
}

/// Stores a secret through the library, as an in-process admin action would.
async fn store_secret(app: &TestApp, profile: &str, secret: &[u8]) {
    keyward::ops::secrets::set(&app.store, &app.keyring(), &app.config, profile, secret, now()).await.unwrap();
    app.reload().await;
}

fn json_part(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Checks a compact JWS's HMAC with `secret`, independently of keyward; header and claims.
pub(crate) fn verify_hmac<M: Mac + KeyInit>(token: &str, secret: &[u8]) -> Result<(Value, Value), String> {
    let (signed, signature) = token.rsplit_once('.').ok_or("not a JWS")?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|e| e.to_string())?;
    let mut mac = <M as Mac>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(signed.as_bytes());
    mac.verify_slice(&signature).map_err(|_| "HMAC does not match".to_owned())?;
    let (header, claims) = signed.split_once('.').ok_or("not a JWS")?;
    Ok((json_part(header), json_part(claims)))
}

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

/// The binary with `input` piped to its standard input.
pub(crate) fn keyward_with_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child =
        keyward_command(dir, args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Makes the binary read `config`, as the server does: from ./keys.toml.
pub(crate) fn write_keys_toml(dir: &Path, config: &Config) {
    std::fs::write(dir.join("keys.toml"), toml::to_string(config).unwrap()).unwrap();
}

/// A server whose folder the binary shares: keys.toml and a master key file in it.
pub(crate) async fn spawn_for_cli(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    let (master, _) = MasterKey::resolve(None, &config.server.master_key_file, true).unwrap();
    write_keys_toml(dir.path(), &config);
    spawn_in(dir, config, master).await
}

/// `keyward keys list`: each kid's state.
fn key_states(dir: &Path) -> HashMap<String, String> {
    let out = keyward(dir, &["keys", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .skip(1)
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns[1].to_owned(), columns[3].to_owned())
        })
        .collect()
}

fn kid_in_state(states: &HashMap<String, String>, state: &str) -> String {
    let kids: Vec<&String> = states.iter().filter(|(_, s)| *s == state).map(|(kid, _)| kid).collect();
    assert_eq!(kids.len(), 1, "one {state} key expected: {states:?}");
    kids[0].clone()
}

// ---------------------------------------------------------------------------------------
// Public keys
// ---------------------------------------------------------------------------------------

async fn get_public(app: &TestApp, bearer: Option<&str>, kid: &str, format: Option<&str>) -> reqwest::Response {
    let mut url = format!("{}/v1/keys/{kid}/public", app.internal);
    if let Some(format) = format {
        url.push_str(&format!("?format={format}"));
    }
    let mut request = app.http.get(url);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    request.send().await.unwrap()
}

fn b64url(jwk: &Value, member: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(jwk[member].as_str().unwrap()).unwrap()
}

/// The DER inside a PEM block.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// The uncompressed point of a P-256 SubjectPublicKeyInfo PEM.
fn p256_spki_point(pem: &str) -> Vec<u8> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }
    const PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
    let der = pem_der(pem);
    let prefix: Vec<u8> =
        (0..PREFIX.len()).step_by(2).map(|i| u8::from_str_radix(&PREFIX[i..i + 2], 16).unwrap()).collect();
    assert_eq!(der.len(), prefix.len() + 65, "not a P-256 SPKI: {pem}");
    assert_eq!(der[..prefix.len()], prefix[..], "not a P-256 SPKI: {pem}");
    der[prefix.len()..].to_vec()
}

/// Asserts that a SubjectPublicKeyInfo PEM holds exactly the key of `jwk`.
fn assert_pem_is_jwk(pem: &str, jwk: &Value) {
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert!(pem.ends_with("-----END PUBLIC KEY-----\n"), "{pem}");
    match jwk["kty"].as_str().unwrap() {
        "RSA" => {
            let key = rsa::RsaPublicKey::from_public_key_pem(pem).unwrap();
            assert_eq!(key.n().to_bytes_be(), b64url(jwk, "n"));
            assert_eq!(key.e().to_bytes_be(), b64url(jwk, "e"));
        }
        "EC" => {
            assert_eq!(jwk["crv"], "P-256");
            let point = p256_spki_point(pem);
            assert_eq!(point[0], 0x04);
            assert_eq!(point[1..33], b64url(jwk, "x")[..]);
            assert_eq!(point[33..], b64url(jwk, "y")[..]);
            p256::PublicKey::from_sec1_bytes(&point).expect("the point is on P-256");
        }
        other => panic!("unexpected kty {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Imported keys
// ---------------------------------------------------------------------------------------

/// n and e (base64url) of an RSA private key PEM, read with the pure-Rust `rsa` crate.
fn rsa_public_members(pem: &[u8]) -> (String, String) {
    let pem = std::str::from_utf8(pem).unwrap();
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem).or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem)).unwrap();
    (URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()), URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()))
}

/// The RFC 7638 thumbprint of an RSA public key.
fn rsa_thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn rsa_pkcs1_pem(bits: u32) -> Vec<u8> {
    openssl::rsa::Rsa::generate(bits).unwrap().private_key_to_pem().unwrap()
}

fn rsa_pkcs8_pem(bits: u32) -> Vec<u8> {
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(bits).unwrap()).unwrap();
    key.private_key_to_pem_pkcs8().unwrap()
}

fn write_pem(dir: &Path, name: &str, pem: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

fn import(dir: &Path, pem: &Path, flags: &[&str]) -> Output {
    let mut args = vec!["keys", "import", "npm", "--pem", pem.to_str().unwrap()];
    args.extend(flags);
    keyward(dir, &args)
}

fn jwks_entry<'a>(jwks: &'a Value, kid: &str) -> Option<&'a Value> {
    jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid)
}

// =======================================================================================
// Shared-secret profiles
// =======================================================================================

#[tokio::test]
async fn partner_api_hs256_token_is_exactly_the_seed_token() {
    let app = spawn_with_profiles(vec![partner_api()]).await;
    store_secret(&app, "partner-api", PARTNER_SECRET).await;
    let token = app.client("backend", &["partner-api"]).await;

    let before = now();
    let body = app.sign_ok("partner-api", &token, &json!({})).await;
    let jwt = body["token"].as_str().unwrap();
    let (header, claims) = verify_hmac::<Hmac<Sha256>>(jwt, PARTNER_SECRET).unwrap();
    assert!(verify_hmac::<Hmac<Sha256>>(jwt, b"another-secret-of-at-least-32-bytes!!").is_err());

    assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}), "no kid for a shared secret");
    let iat = claims["iat"].as_i64().unwrap();
    assert!(iat >= before && iat <= now(), "iat {iat}");
    assert_eq!(claims, json!({"clientId": "your-client-id", "iat": iat, "exp": iat + 900}));

    assert!(body.get("kid").is_none(), "no kid in the answer either: {body}");
    assert_eq!(body["alg"], "HS256");
    // The template has no "{jti}": the answer's jti is the ledger's id for the token.
    let rows = app.store.issuance(&keyward::store::rows::Filter::default(), 100).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.jti.as_str()).collect::<Vec<_>>(), [body["jti"].as_str().unwrap()]);
    assert_eq!(body["issued_at"], iat);
    assert_eq!(body["expires_at"], iat + 900);
    assert_eq!(body["expires_in"], 900);

    // The template has no "{sub}": a caller's subject has nowhere to go.
    let refused = assert_problem(app.sign("partner-api", &token, &json!({"sub": "someone"})).await, 400).await;
    assert_eq!(refused["field"], "sub");
}

#[tokio::test]
async fn a_shared_secret_template_with_jti_carries_the_answers_jti() {
    let profile = shared_secret_profile(
        "with-jti",
        HmacAlgorithm::Hs256,
        json!({"clientId": "c", "jti": "{jti}", "iat": "{iat}", "exp": "{exp}"}),
        300,
        300,
    );
    let app = spawn_with_profiles(vec![profile]).await;
    store_secret(&app, "with-jti", PARTNER_SECRET).await;
    let token = app.client("backend", &["with-jti"]).await;
    let body = app.sign_ok("with-jti", &token, &json!({})).await;
    let (_, claims) = verify_hmac::<Hmac<Sha256>>(body["token"].as_str().unwrap(), PARTNER_SECRET).unwrap();
    assert_eq!(claims["jti"], body["jti"], "{body}");
    assert!(body.get("kid").is_none(), "{body}");
}

#[tokio::test]
async fn nps_hs512_token_is_the_seed_token_and_the_api_key_limits_hold() {
    let expired = ProfileConfig { valid_until: Some("2020-01-01T00:00:00Z".to_owned()), ..nps("nps-expired") };
    let tomorrow = (chrono::Utc::now() + chrono::TimeDelta::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let not_yet = ProfileConfig { valid_from: Some(tomorrow), ..nps("nps-not-yet") };
    let app = spawn_with_profiles(vec![nps("nps"), expired, not_yet]).await;
    for profile in ["nps", "nps-expired", "nps-not-yet"] {
        store_secret(&app, profile, NPS_SECRET).await;
    }
    let token = app.client("backend", &["nps", "nps-expired", "nps-not-yet"]).await;

    let before = now();
    let body = app.sign_ok("nps", &token, &json!({})).await;
    let (header, claims) = verify_hmac::<Hmac<Sha512>>(body["token"].as_str().unwrap(), NPS_SECRET).unwrap();
    assert_eq!(header, json!({"alg": "HS512", "typ": "JWT"}));
    let iat = claims["iat"].as_i64().unwrap();
    assert!(iat >= before && iat <= now(), "iat {iat}");
    assert_eq!(claims, json!({"sub": "your-api-key-id", "iat": iat, "exp": iat + 300}));
    assert_eq!((body["alg"].as_str(), body["expires_in"].as_i64()), (Some("HS512"), Some(300)));

    // The API key's maximum token duration is max_ttl, inclusive.
    let longest = app.sign_ok("nps", &token, &json!({"ttl_seconds": 1_800})).await;
    let (_, claims) = verify_hmac::<Hmac<Sha512>>(longest["token"].as_str().unwrap(), NPS_SECRET).unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 1_800);
    let too_long = assert_problem(app.sign("nps", &token, &json!({"ttl_seconds": 1_801})).await, 422).await;
    assert_eq!(too_long["field"], "ttl_seconds");

    // Outside the key's start and end dates: 409, though a secret is stored.
    let after_end = assert_problem(app.sign("nps-expired", &token, &json!({})).await, 409).await;
    assert!(after_end["detail"].as_str().unwrap().contains("expired"), "{after_end}");
    let before_start = assert_problem(app.sign("nps-not-yet", &token, &json!({})).await, 409).await;
    assert!(before_start["detail"].as_str().unwrap().contains("valid from"), "{before_start}");
}

#[tokio::test]
async fn secrets_too_short_for_rfc_7518_or_for_key_set_profiles_are_refused() {
    let app = spawn_with_profiles(vec![partner_api(), nps("nps")]).await;
    let set = |profile: &'static str, secret: Vec<u8>| {
        let app = &app;
        async move { keyward::ops::secrets::set(&app.store, &app.keyring(), &app.config, profile, &secret, now()).await }
    };

    for (profile, min) in [("partner-api", 32), ("nps", 64)] {
        let err = set(profile, vec![b'k'; min - 1]).await.unwrap_err();
        assert!(matches!(err, SecretError::TooShort { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("RFC 7518") && message.contains(&format!("{}", min - 1)), "{message}");
        set(profile, vec![b'k'; min]).await.unwrap();
    }
    let err = set("npm-sandbox", PARTNER_SECRET.to_vec()).await.unwrap_err();
    assert!(matches!(err, SecretError::NotSecretProfile(ref p) if p == "npm-sandbox"), "{err:?}");
    assert!(matches!(set("nope", PARTNER_SECRET.to_vec()).await, Err(SecretError::NotSecretProfile(_))));

    let listed: Vec<String> =
        keyward::ops::secrets::list(&app.store, &app.config).await.unwrap().into_iter().map(|s| s.profile).collect();
    assert_eq!(listed, ["nps", "partner-api"]);
}

#[tokio::test]
async fn signing_before_a_secret_is_set_answers_503_naming_the_command() {
    let app = spawn_with_profiles(vec![partner_api()]).await;
    let token = app.client("backend", &["partner-api"]).await;

    let problem = assert_problem(app.sign("partner-api", &token, &json!({})).await, 503).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("keyward secrets set partner-api"), "{detail}");

    store_secret(&app, "partner-api", PARTNER_SECRET).await;
    let body = app.sign_ok("partner-api", &token, &json!({})).await;
    verify_hmac::<Hmac<Sha256>>(body["token"].as_str().unwrap(), PARTNER_SECRET).unwrap();
}

#[tokio::test]
async fn secrets_are_stored_sealed_never_in_the_clear() {
    let app = spawn_with_profiles(vec![partner_api(), nps("nps")]).await;
    let token = app.client("backend", &["partner-api", "nps"]).await;
    store_secret(&app, "partner-api", PARTNER_SECRET).await;
    store_secret(&app, "nps", NPS_SECRET).await;
    app.sign_ok("partner-api", &token, &json!({})).await;
    app.sign_ok("nps", &token, &json!({})).await;
    // A replaced secret must not linger either.
    let replacement = b"partner-api-replacement-secret-9876543210-zyxwvu";
    store_secret(&app, "partner-api", replacement).await;
    let body = app.sign_ok("partner-api", &token, &json!({})).await;
    verify_hmac::<Hmac<Sha256>>(body["token"].as_str().unwrap(), replacement).unwrap();

    let stored = database_bytes(app.dir.path());
    for secret in [PARTNER_SECRET, NPS_SECRET, replacement.as_slice()] {
        assert!(!contains(&stored, secret), "a secret is stored in the clear");
        assert!(!contains(&stored, &secret[..16]), "part of a secret is stored in the clear");
    }
    // The audit trail records each setting (and the client), never a secret, the client's
    // token or any part of them.
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT action || ' ' || object || ' ' || actor || ' ' || COALESCE(before, '') || ' ' || COALESCE(after, '') \
         FROM events",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(events.iter().filter(|e| e.starts_with("secret.set profile:partner-api")).count(), 2, "{events:#?}");
    assert!(events.iter().any(|e| e.starts_with("client.added client:backend")), "{events:#?}");
    let token_tail = &token.as_bytes()[token.len() - 16..];
    for event in &events {
        for secret in [PARTNER_SECRET, NPS_SECRET, replacement.as_slice(), token_tail] {
            assert!(!contains(event.as_bytes(), &secret[..16]), "a secret in the event {event}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_set_reads_standard_input_and_a_server_on_that_database_signs_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.key_sets[0].algorithm = Algorithm::Es256;
    config.profiles.push(partner_api());
    write_keys_toml(dir.path(), &config);
    let path = dir.path().to_owned();

    // Before a secret is set, the profile is listed as not set (it cannot sign yet).
    let list = keyward(&path, &["--init", "secrets", "list"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed = text(&list.stdout);
    let row: Vec<&str> =
        listed.lines().find(|l| l.starts_with("partner-api ")).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row, ["partner-api", "NOT", "SET", "-", "-"], "{listed}");
    assert!(text(&list.stderr).contains("keyward secrets set partner-api"), "{}", text(&list.stderr));

    // As `printf '%s\n' "$SECRET" | keyward secrets set partner-api`: the shell's newline goes.
    let mut piped = PARTNER_SECRET.to_vec();
    piped.push(b'\n');
    let out = keyward_with_stdin(&path, &["--init", "secrets", "set", "partner-api"], &piped);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "stdout: {:?}", text(&out.stdout));
    assert!(!contains(&out.stderr, PARTNER_SECRET));
    assert!(!contains(&database_bytes(&path), PARTNER_SECRET), "secret stored in the clear");

    let list = keyward(&path, &["secrets", "list"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed = text(&list.stdout);
    let row = listed.lines().find(|l| l.starts_with("partner-api ")).unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(1), Some("set"), "{listed}");
    assert!(!contains(&list.stdout, &PARTNER_SECRET[..16]) && !contains(&list.stderr, &PARTNER_SECRET[..16]));

    // Refused: a key-set profile, and a secret one byte short (the stored one stays).
    let out = keyward_with_stdin(&path, &["secrets", "set", "npm-sandbox"], PARTNER_SECRET);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(text(&out.stderr).contains("not a shared-secret"), "{}", text(&out.stderr));
    let short = &PARTNER_SECRET[..31];
    let out = keyward_with_stdin(&path, &["secrets", "set", "partner-api"], short);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(text(&out.stderr).contains("RFC 7518"), "{}", text(&out.stderr));
    assert!(!contains(&out.stderr, short));

    // A server on the same database and master key file signs with the piped secret.
    let (master, _) = MasterKey::resolve(None, &config.server.master_key_file, false).unwrap();
    let app = spawn_in(dir, config, master).await;
    let token = app.client("backend", &["partner-api"]).await;
    let body = app.sign_ok("partner-api", &token, &json!({})).await;
    let (_, claims) = verify_hmac::<Hmac<Sha256>>(body["token"].as_str().unwrap(), PARTNER_SECRET).unwrap();
    assert_eq!(claims["clientId"], "your-client-id");
}

// =======================================================================================
// Public-key export
// =======================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_export_as_pem_pem_base64_and_jwk_equal_to_the_jwks() {
    for algorithm in [Algorithm::Rs256, Algorithm::Es256] {
        let app = spawn_app_with(|c| c.key_sets[0].algorithm = algorithm).await;
        let token = app.client("reader", &["npm-sandbox"]).await;
        let jwks = app.jwks(JWKS_PATH).await;
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2, "current and next: {jwks}");

        for jwk in keys {
            let kid = jwk["kid"].as_str().unwrap();
            assert_eq!(jwk["alg"], algorithm.as_str());

            // JWK (also the default format).
            let response = get_public(&app, Some(&token), kid, Some("jwk")).await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/jwk+json");
            assert_eq!(&response.json::<Value>().await.unwrap(), jwk, "{algorithm}");
            let default: Value = get_public(&app, Some(&token), kid, None).await.json().await.unwrap();
            assert_eq!(&default, jwk);

            // PEM: a SubjectPublicKeyInfo of the very key the JWKS publishes.
            let response = get_public(&app, Some(&token), kid, Some("pem")).await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/x-pem-file");
            let pem = response.text().await.unwrap();
            assert_pem_is_jwk(&pem, jwk);

            // Base64 (standard alphabet, padded) of exactly that PEM.
            let response = get_public(&app, Some(&token), kid, Some("pem-base64")).await;
            assert_eq!(response.status(), 200);
            let pem_base64 = response.text().await.unwrap();
            assert_eq!(pem_base64, STANDARD.encode(&pem));
            assert_eq!(STANDARD.decode(&pem_base64).unwrap(), pem.as_bytes());

            // The binary prints the same three.
            let dir = app.dir.path();
            let out = keyward(dir, &["keys", "export", kid, "--format", "pem"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert_eq!(text(&out.stdout), pem);
            let out = keyward(dir, &["keys", "export", kid]);
            assert_eq!(&serde_json::from_slice::<Value>(&out.stdout).unwrap(), jwk, "jwk is the default, as the API's");
            let out = keyward(dir, &["keys", "export", kid, "--format", "pem-base64"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert_eq!(text(&out.stdout), format!("{pem_base64}\n"));
            let out = keyward(dir, &["keys", "export", kid, "--format", "jwk"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert_eq!(&serde_json::from_slice::<Value>(&out.stdout).unwrap(), jwk);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_export_refuses_unknown_kids_bad_formats_and_strangers() {
    let app = spawn_with_profiles(vec![partner_api()]).await;
    // Any authenticated client may read public keys, even one of an unrelated profile.
    let token = app.client("hs-only", &["partner-api"]).await;
    let kid = app.jwks(JWKS_PATH).await["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_eq!(get_public(&app, Some(&token), &kid, Some("pem")).await.status(), 200);

    let unknown = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_problem(get_public(&app, Some(&token), unknown, Some("jwk")).await, 404).await;
    let bad = assert_problem(get_public(&app, Some(&token), &kid, Some("der")).await, 400).await;
    assert_eq!(bad["field"], "format");
    assert_problem(get_public(&app, None, &kid, Some("pem")).await, 401).await;
    assert_problem(get_public(&app, Some("kw_not_a_real_token"), &kid, Some("pem")).await, 401).await;

    let dir = app.dir.path();
    let out = keyward(dir, &["keys", "export", unknown, "--format", "pem"]);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(text(&out.stderr).contains(unknown), "{}", text(&out.stderr));
    let out = keyward(dir, &["keys", "export", &kid, "--format", "der"]);
    assert!(!out.status.success() && out.stdout.is_empty());
}

// =======================================================================================
// Key import
// =======================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_retired_key_does_not_claim_to_drop_it_from_the_jwks() {
    let app = spawn_for_cli(|_| {}).await;
    let dir = app.dir.path().to_owned();
    let old_next = kid_in_state(&key_states(&dir), "next");
    let pem = write_pem(&dir, "next.pem", &rsa_pkcs1_pem(2048));
    assert!(import(&dir, &pem, &["--replace-next"]).status.success());
    assert_eq!(key_states(&dir)[&old_next], "retired");

    let out = keyward(&dir, &["keys", "revoke", &old_next]);
    let said = text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("{old_next} was no longer in the JWKS")), "{said}");
    assert!(!said.contains("drop"), "{said}");
    assert_eq!(key_states(&dir)[&old_next], "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_rsa_keys_join_as_next_or_with_activate_sign_at_once() {
    let app = spawn_for_cli(|_| {}).await;
    let dir = app.dir.path().to_owned();
    let token = app.client("backend", &["npm-sandbox"]).await;
    let before = key_states(&dir);
    let (old_current, old_next) = (kid_in_state(&before, "current"), kid_in_state(&before, "next"));

    // PKCS#1 ("BEGIN RSA PRIVATE KEY", as `openssl genrsa` wrote it): the next key.
    let pkcs1 = rsa_pkcs1_pem(2048);
    assert!(pkcs1.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
    let pkcs1_file = write_pem(&dir, "pkcs1.pem", &pkcs1);
    let (n1, e1) = rsa_public_members(&pkcs1);
    let kid1 = rsa_thumbprint(&n1, &e1);
    let out = import(&dir, &pkcs1_file, &["--replace-next"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains(&kid1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("{old_next} is retired")), "{}", text(&out.stderr));
    let states = key_states(&dir);
    assert_eq!(states[&kid1], "next", "{states:?}");
    assert_eq!(states[&old_next], "retired", "{states:?}");
    assert_eq!(states[&old_current], "current", "{states:?}");
    let published = app
        .eventually(Duration::from_secs(5), || async {
            let jwks = app.jwks(JWKS_PATH).await;
            jwks_entry(&jwks, &kid1).is_some() && jwks_entry(&jwks, &old_next).is_none()
        })
        .await;
    assert!(published, "the imported next key is not in the JWKS 5 s later");
    let jwks = app.jwks(JWKS_PATH).await;
    let entry = jwks_entry(&jwks, &kid1).unwrap();
    assert_eq!((entry["n"].as_str(), entry["e"].as_str()), (Some(n1.as_str()), Some(e1.as_str())));

    // PKCS#8 ("BEGIN PRIVATE KEY") with --activate: signs at once.
    let pkcs8 = rsa_pkcs8_pem(2048);
    assert!(pkcs8.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    let pkcs8_file = write_pem(&dir, "pkcs8.pem", &pkcs8);
    let (n2, e2) = rsa_public_members(&pkcs8);
    let kid2 = rsa_thumbprint(&n2, &e2);
    let out = import(&dir, &pkcs8_file, &["--activate", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let states = key_states(&dir);
    assert_eq!(states[&kid2], "current", "{states:?}");
    assert_eq!(states[&old_current], "previous", "{states:?}");
    assert_eq!(states[&kid1], "next", "{states:?}");

    let signs = app
        .eventually(Duration::from_secs(5), || async {
            app.sign_ok("npm-sandbox", &token, &json!({"sub": "acct-1"})).await["kid"] == kid2.as_str()
        })
        .await;
    assert!(signs, "the running server does not sign with the activated key 5 s later");
    let body = app.sign_ok("npm-sandbox", &token, &json!({"sub": "acct-1"})).await;
    let jwks = app.jwks(JWKS_PATH).await;
    let verified = verify(body["token"].as_str().unwrap(), &jwks).unwrap();
    assert_eq!(verified.header["kid"], kid2.as_str());
    assert_eq!(verified.claims["sub"], "acct-1");
    let entry = jwks_entry(&jwks, &kid2).unwrap();
    assert_eq!((entry["n"].as_str(), entry["e"].as_str()), (Some(n2.as_str()), Some(e2.as_str())));
    assert_eq!(jwks["keys"][0]["kid"], kid2.as_str(), "the signing key is listed first");

    // The same key twice: refused, nothing changes.
    for (file, flags) in [(&pkcs1_file, &["--replace-next"][..]), (&pkcs8_file, &["--activate", "--force"][..])] {
        let out = import(&dir, file, flags);
        assert!(!out.status.success(), "a key was imported twice");
        assert!(text(&out.stderr).contains("already stored"), "{}", text(&out.stderr));
    }
    assert_eq!(key_states(&dir), states);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_neither_retires_the_next_key_nor_signs_with_an_unpublished_key_unless_told() {
    let app = spawn_for_cli(|_| {}).await;
    let dir = app.dir.path().to_owned();
    let before = key_states(&dir);
    let (old_current, old_next) = (kid_in_state(&before, "current"), kid_in_state(&before, "next"));
    let first = write_pem(&dir, "first.pem", &rsa_pkcs8_pem(2048));
    let (n, e) = rsa_public_members(&std::fs::read(&first).unwrap());
    let first_kid = rsa_thumbprint(&n, &e);

    // As the next key: the published next key would be retired, so it is refused, naming it.
    let out = import(&dir, &first, &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&old_next) && err.contains("--replace-next"), "{err}");
    assert_eq!(key_states(&dir), before, "a refused import changed the keys");

    // As the signing key: never published, so refused as `keys rotate` refuses a fresh key.
    let out = import(&dir, &first, &["--activate"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("never been published") && err.contains("--force"), "{err}");
    assert_eq!(key_states(&dir), before, "a refused import changed the keys");

    // --replace-next says what it retired.
    let out = import(&dir, &first, &["--replace-next"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains(&format!("{old_next} is retired")) && said.contains(&first_kid), "{said}");
    let states = key_states(&dir);
    assert_eq!((states[&first_kid].as_str(), states[&old_next].as_str()), ("next", "retired"), "{states:?}");

    // --activate --force signs at once, and says until when verifiers may reject its tokens.
    let second = write_pem(&dir, "second.pem", &rsa_pkcs8_pem(2048));
    let (n, e) = rsa_public_members(&std::fs::read(&second).unwrap());
    let second_kid = rsa_thumbprint(&n, &e);
    let out = import(&dir, &second, &["--activate", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains(&format!("the new signing key {second_kid} has been published for only")), "{said}");
    assert!(said.contains("may reject its tokens until"), "{said}");
    let states = key_states(&dir);
    assert_eq!((states[&second_kid].as_str(), states[&old_current].as_str()), ("current", "previous"));
    assert_eq!(states[&first_kid], "next", "an activated import leaves the next key alone");
}

#[test]
fn unusable_private_keys_are_refused_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let ec = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap()
    .private_key_to_pem()
    .unwrap();
    // A real PKCS#1 key with one body line damaged.
    let mut damaged: Vec<String> = text(&rsa_pkcs1_pem(2048)).lines().map(str::to_owned).collect();
    damaged[5] = damaged[5].chars().rev().collect();
    let damaged = damaged.join("\n").into_bytes();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("rsa1024.pem", rsa_pkcs1_pem(1024), "2048"),
        ("ec.pem", ec, "RS256"),
        ("garbage.pem", b"this is not a key at all\nAAAAbbbbCCCCddddEEEE\n".to_vec(), "not a PEM private key"),
        ("damaged.pem", damaged, ""),
    ];
    // The database exists (only `serve` or `--init` creates one).
    assert!(keyward(dir, &["--init", "keys", "list"]).status.success());
    for (name, pem, says) in cases {
        let file = write_pem(dir, name, &pem);
        let out = import(dir, &file, &[]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{name} was imported");
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
        assert!(err.contains(says), "{name}: {err}");
        for line in text(&pem).lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
            assert!(!err.contains(line), "{name}: stderr quotes the key: {err}");
        }
    }
    assert!(key_states(dir).is_empty(), "a refused import stored a key");
}

/// An imported key that does not fit the set's policy (here 3072 bits in a 2048-bit set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_key_of_another_size_than_the_set_makes_is_refused_and_changes_nothing() {
    // The scheduler replaces keys that do not fit the set's settings, so an imported key
    // of another size would be thrown away at its next pass: it is refused up front.
    let app = spawn_for_cli(|_| {}).await;
    let dir = app.dir.path().to_owned();
    let before = key_states(&dir);
    let pem = rsa_pkcs8_pem(3072);
    let out = import(&dir, &write_pem(&dir, "rsa3072.pem", &pem), &["--replace-next"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("2048") && err.contains("3072") && err.contains("rsa_bits"), "{err}");
    assert_eq!(key_states(&dir), before, "a refused import changed the keys");
}
