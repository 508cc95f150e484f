//! Token exchange against mock partners, and onboarding.
//!
//! The mock NPM does what NPM's partner API documents: it fetches keyward's JWKS over
//! HTTP from `iss + jwks_uri`, verifies the assertion with the pure-Rust crates, checks
//! `iss`, `aud`, `jwks_uri`, `sub` and an `exp` less than an hour away, and issues its own
//! JWT, which `initiate_onboarding` and `status` then accept.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use keyward::config::Duration as Span;
use keyward::config::{Config, ExchangeConfig, ExchangeStyle};
use keyward::keys::Algorithm;
use keyward::seal::MasterKey;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, free_port, keyward_bare, now, spawn_in, spawn_on, test_config, TestApp};
use crate::verify::verify;

const PARTNER: &str = "acme";

/// Starts an actix app on a free port; returns its base URL.
fn start_mock<F, T>(app: F) -> String
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(app).workers(1).disable_signals().listen(listener).unwrap().run();
    tokio::spawn(server);
    base
}

/// NPM's partner API, as the seeds describe it.
#[derive(Default)]
struct MockNpm {
    /// What we were told at onboarding.
    issuer: String,
    jwks_uri: String,
    base: Mutex<String>,
    token_calls: AtomicUsize,
    /// Answer this status instead of a token (0: answer normally).
    fail_with: AtomicUsize,
    delay_ms: AtomicU64,
    /// Answer 200 with a body lacking the token.
    bad_reply: std::sync::atomic::AtomicBool,
    issued: Mutex<HashSet<String>>,
    issuers: Mutex<HashMap<String, String>>,
    http: reqwest::Client,
}

const MOCK_SECRET: &[u8] = b"mock-npm-signing-secret-0123456789abcdef";

fn mock_jwt(claims: &Value) -> String {
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(MOCK_SECRET).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn bearer(req: &HttpRequest) -> Option<String> {
    req.headers().get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_owned)
}

fn unverified_claims(jwt: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1)?).ok()?).ok()
}

async fn npm_token(req: HttpRequest, path: web::Path<String>, npm: web::Data<MockNpm>) -> HttpResponse {
    npm.token_calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(npm.delay_ms.load(Ordering::SeqCst))).await;
    let status = npm.fail_with.load(Ordering::SeqCst);
    if status != 0 {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status as u16).unwrap()).finish();
    }
    if npm.bad_reply.load(Ordering::SeqCst) {
        return HttpResponse::Ok().json(json!({ "access": "not where keyward looks" }));
    }
    let unauthorized = |why: &str| HttpResponse::Unauthorized().json(json!({ "error": why }));
    let Some(assertion) = bearer(&req) else { return unauthorized("no bearer") };
    let Some(claims) = unverified_claims(&assertion) else { return unauthorized("not a JWT") };
    // Onboarded values: iss and jwks_uri must be exactly what we were given.
    if claims["iss"] != npm.issuer.as_str() || claims["jwks_uri"] != npm.jwks_uri.as_str() {
        return unauthorized("iss or jwks_uri differ from onboarding");
    }
    let url = format!("{}{}", npm.issuer, npm.jwks_uri);
    let Ok(response) = npm.http.get(&url).send().await else { return unauthorized("JWKS unreachable") };
    let Ok(jwks) = response.json::<Value>().await else { return unauthorized("JWKS not JSON") };
    let Ok(verified) = verify(&assertion, &jwks) else { return unauthorized("bad signature") };
    let claims = verified.claims;
    let expected_aud = format!("{}/api/partners/{}/oauth2/v1/token", npm.base.lock().unwrap(), path.as_str());
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if claims["aud"] != expected_aud.as_str() {
        return unauthorized("aud");
    }
    if claims["sub"].as_str().is_none_or(str::is_empty) {
        return unauthorized("sub");
    }
    if exp <= now() || exp - now() >= 3_600 {
        return unauthorized("exp must be less than 1 hour away");
    }
    let token = mock_jwt(&json!({"iss": "npm", "sub": claims["sub"], "partner": path.as_str(), "exp": now() + 600}));
    npm.issued.lock().unwrap().insert(token.clone());
    HttpResponse::Ok().json(json!({ "token": token }))
}

async fn npm_initiate(req: HttpRequest, body: web::Json<Value>, npm: web::Data<MockNpm>) -> HttpResponse {
    if !bearer(&req).is_some_and(|t| npm.issued.lock().unwrap().contains(&t)) {
        return HttpResponse::Unauthorized().finish();
    }
    let id = format!("issuer-{}", npm.issuers.lock().unwrap().len() + 1);
    let name = body["issuer_legal_name"].as_str().unwrap_or_default().to_owned();
    npm.issuers.lock().unwrap().insert(id.clone(), name);
    HttpResponse::Ok().json(json!({ "id": id }))
}

async fn npm_status(req: HttpRequest, path: web::Path<(String, String)>, npm: web::Data<MockNpm>) -> HttpResponse {
    if !bearer(&req).is_some_and(|t| npm.issued.lock().unwrap().contains(&t)) {
        return HttpResponse::Unauthorized().finish();
    }
    match npm.issuers.lock().unwrap().get(&path.1) {
        Some(name) => HttpResponse::Ok().json(json!({"legal_name": name, "onboarding_status": "pending"})),
        None => HttpResponse::NotFound().finish(),
    }
}

/// keyward with an NPM profile whose issuer is its own public listener, and the mock NPM.
struct NpmWorld {
    app: TestApp,
    npm: Arc<MockNpm>,
    npm_base: String,
    token: String,
}

async fn npm_world(adjust: impl FnOnce(&mut Config)) -> NpmWorld {
    let public = TcpListener::bind("127.0.0.1:0").unwrap();
    let public_port = public.local_addr().unwrap().port();
    let issuer = format!("http://127.0.0.1:{public_port}");
    let npm = Arc::new(MockNpm { issuer: issuer.clone(), jwks_uri: "/path/to/your/jwks".into(), ..Default::default() });
    let data = web::Data::from(Arc::clone(&npm));
    let npm_base = start_mock(move || {
        App::new()
            .app_data(data.clone())
            .route("/api/partners/{partner}/oauth2/v1/token", web::post().to(npm_token))
            .route("/api/partners/{partner}/initiate_onboarding", web::post().to(npm_initiate))
            .route("/api/partners/{partner}/issuer/{id}/status", web::get().to(npm_status))
    });
    *npm.base.lock().unwrap() = npm_base.clone();

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.public_addr = format!("127.0.0.1:{public_port}").parse().unwrap();
    config.key_sets[0].algorithm = Algorithm::Es256;
    let token_url = format!("{npm_base}/api/partners/{PARTNER}/oauth2/v1/token");
    let profile = &mut config.profiles[0];
    profile.issuer = Some(issuer);
    profile.audience = Some(token_url.clone());
    profile.partner_name = Some(PARTNER.into());
    profile.exchange = Some(ExchangeConfig {
        style: ExchangeStyle::BearerAssertion,
        token_url,
        token_field: "token".into(),
        account_id: None,
        refresh_url: None,
        timeout: Span::from_secs(1),
    });
    adjust(&mut config);
    let app = spawn_on(dir, config, MasterKey::generate(), public).await;
    let token = app.client("backend", &["npm-sandbox"]).await;
    NpmWorld { app, npm, npm_base, token }
}

impl NpmWorld {
    async fn partner_token(&self, body: Value) -> reqwest::Response {
        self.app
            .http
            .post(format!("{}/v1/profiles/npm-sandbox/token", self.app.internal))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn npm_getting_started_runs_end_to_end_through_keyward() {
    let world = npm_world(|_| {}).await;
    // 1-2: keyward signs the assertion and trades it for NPM's token.
    let response = world.partner_token(json!({"sub": "acct-42", "claims": {"obo_user": "user@example.com"}})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let npm_token = body["token"].as_str().unwrap().to_owned();
    assert!(world.npm.issued.lock().unwrap().contains(&npm_token), "the token is the one NPM issued");
    let exp = unverified_claims(&npm_token).unwrap()["exp"].as_i64().unwrap();
    assert_eq!(body["expires_at"], exp, "expiry read from NPM's JWT");

    // 3: create an issuer with NPM's token.
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/api/partners/{PARTNER}/initiate_onboarding", world.npm_base))
        .bearer_auth(&npm_token)
        .json(&json!({
            "issuer_admin_contact_info": {
                "email": {"email_type": "BUSINESS", "email_address": "admin@acme.example"},
                "phone": {"phone_type": "BUSINESS", "phone_number": "+1 555 123 1234"}
            },
            "issuer_legal_name": "Acme Co"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();

    // 4: its onboarding status.
    let status: Value = http
        .get(format!("{}/api/partners/{PARTNER}/issuer/{id}/status", world.npm_base))
        .bearer_auth(&npm_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status, json!({"legal_name": "Acme Co", "onboarding_status": "pending"}));
}

#[tokio::test]
async fn a_token_whose_assertion_cannot_be_recorded_is_refused_and_never_reaches_the_partner() {
    let world = npm_world(|_| {}).await;
    sqlx::query("DROP TABLE issuance").execute(world.app.pool()).await.unwrap();
    let response = world.partner_token(json!({"sub": "acct-42"})).await;
    // assert_problem allows only the problem members: no token.
    let problem = assert_problem(response, 503).await;
    assert_eq!(problem["type"], "urn:keyward:problem:not-recorded", "{problem}");
    assert!(world.npm.issued.lock().unwrap().is_empty(), "the unrecorded assertion was sent to NPM");
}

#[tokio::test]
async fn concurrent_identical_requests_share_one_upstream_call() {
    let world = Arc::new(npm_world(|_| {}).await);
    world.npm.delay_ms.store(300, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let world = Arc::clone(&world);
        tasks.push(tokio::spawn(async move {
            let response = world.partner_token(json!({"sub": "acct-1"})).await;
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned()
        }));
    }
    let mut tokens = HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap());
    }
    assert_eq!(tokens.len(), 1, "everyone got the one token");
    assert_eq!(world.npm.token_calls.load(Ordering::SeqCst), 1, "one upstream call for 8 requests");

    // Later identical requests come from the cache too.
    let cached: Value = world.partner_token(json!({"sub": "acct-1"})).await.json().await.unwrap();
    assert!(tokens.contains(cached["token"].as_str().unwrap()));
    assert_eq!(world.npm.token_calls.load(Ordering::SeqCst), 1);

    // "cache": false asks NPM again; another subject or other claims are other tokens.
    let fresh: Value = world.partner_token(json!({"sub": "acct-1", "cache": false})).await.json().await.unwrap();
    assert_eq!(world.npm.token_calls.load(Ordering::SeqCst), 2);
    assert!(fresh["token"].is_string(), "{fresh}");
    world.partner_token(json!({"sub": "acct-2"})).await;
    world.partner_token(json!({"sub": "acct-1", "claims": {"obo_user": "u@example.com"}})).await;
    assert_eq!(world.npm.token_calls.load(Ordering::SeqCst), 4);

    // Another client never gets a token obtained with this client's assertion (whose
    // ledger row names this client): same subject, its own upstream call.
    let other = world.app.client("other-backend", &["npm-sandbox"]).await;
    let response = world
        .app
        .http
        .post(format!("{}/v1/profiles/npm-sandbox/token", world.app.internal))
        .bearer_auth(&other)
        .json(&json!({"sub": "acct-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(world.npm.token_calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn upstream_failures_are_502_or_504_and_never_leak_the_assertion() {
    let world = npm_world(|_| {}).await;
    world.npm.fail_with.store(401, Ordering::SeqCst);
    let problem = assert_problem(world.partner_token(json!({"sub": "acct-1"})).await, 502).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("401"), "{detail}");
    assert!(!problem.to_string().contains("eyJ"), "a JWT leaked: {problem}");

    // A failure is not cached: the next request asks again and succeeds.
    world.npm.fail_with.store(0, Ordering::SeqCst);
    assert_eq!(world.partner_token(json!({"sub": "acct-1"})).await.status(), 200);

    world.npm.delay_ms.store(1_500, Ordering::SeqCst);
    let problem = assert_problem(world.partner_token(json!({"sub": "acct-9"})).await, 504).await;
    assert!(!problem.to_string().contains("eyJ"));

    world.npm.delay_ms.store(0, Ordering::SeqCst);
    world.npm.bad_reply.store(true, Ordering::SeqCst);
    let problem = assert_problem(world.partner_token(json!({"sub": "acct-8"})).await, 502).await;
    assert!(problem["detail"].as_str().unwrap().contains("no usable token"), "{problem}");

    // Bad requests are the caller's, judged before anything is sent.
    let calls = world.npm.token_calls.load(Ordering::SeqCst);
    assert_problem(world.partner_token(json!({"sub": "bad sub"})).await, 422).await;
    assert_eq!(world.npm.token_calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn a_partner_slower_than_the_request_deadline_is_504_at_the_deadline_whatever_its_own_timeout() {
    // request_deadline is 2s by default; the profile would wait 10 s for the partner.
    let world = npm_world(|c| c.profiles[0].exchange.as_mut().unwrap().timeout = Span::from_secs(10)).await;
    world.npm.delay_ms.store(5_000, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let response = world.partner_token(json!({"sub": "acct-1"})).await;
    let took = started.elapsed();
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 504).await;
    assert!(took >= Duration::from_millis(1_900) && took < Duration::from_millis(2_250), "answered after {took:?}");
}

#[tokio::test]
async fn an_unreachable_partner_is_502_and_a_profile_without_exchange_is_404() {
    let dead = free_port();
    let world = npm_world(|c| {
        let mut plain = c.profiles[0].clone();
        plain.name = "plain".into();
        plain.exchange = None;
        c.profiles.push(plain);
        c.profiles[0].exchange.as_mut().unwrap().token_url = format!("http://127.0.0.1:{dead}/token");
    })
    .await;
    assert_problem(world.partner_token(json!({"sub": "acct-1"})).await, 502).await;
    let token = world.app.client("other", &["plain"]).await;
    let response = world
        .app
        .http
        .post(format!("{}/v1/profiles/plain/token", world.app.internal))
        .bearer_auth(&token)
        .json(&json!({"sub": "a"}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 404).await;
}

/// PaymentsGate's service-account API.
#[derive(Default)]
struct MockPaymentsGate {
    token_calls: AtomicUsize,
    refresh_calls: AtomicUsize,
    refresh_fails: std::sync::atomic::AtomicBool,
    counter: AtomicUsize,
    registered_n: Mutex<Option<String>>,
    refresh_tokens: Mutex<HashSet<String>>,
}

impl MockPaymentsGate {
    fn tokens(&self) -> Value {
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let refresh = format!("rt-{n}");
        self.refresh_tokens.lock().unwrap().insert(refresh.clone());
        json!({"access_token": format!("at-{n}"), "refresh_token": refresh, "expires_in": 3})
    }
}

async fn pg_token(body: web::Json<Value>, pg: web::Data<MockPaymentsGate>) -> HttpResponse {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    pg.token_calls.fetch_add(1, Ordering::SeqCst);
    if body["account_id"] != "00000000-0000-4000-0000-000000000000" {
        return HttpResponse::Unauthorized().finish();
    }
    let pem = body["public_key"].as_str().and_then(|b| STANDARD.decode(b).ok()).and_then(|p| String::from_utf8(p).ok());
    let Some(key) = pem.and_then(|p| rsa::RsaPublicKey::from_public_key_pem(&p).ok()) else {
        return HttpResponse::BadRequest().finish();
    };
    *pg.registered_n.lock().unwrap() = Some(URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()));
    HttpResponse::Ok().json(pg.tokens())
}

async fn pg_refresh(body: web::Json<Value>, pg: web::Data<MockPaymentsGate>) -> HttpResponse {
    pg.refresh_calls.fetch_add(1, Ordering::SeqCst);
    let known = body["refresh_token"].as_str().is_some_and(|t| pg.refresh_tokens.lock().unwrap().contains(t));
    if pg.refresh_fails.load(Ordering::SeqCst) || !known {
        return HttpResponse::Unauthorized().finish();
    }
    HttpResponse::Ok().json(pg.tokens())
}

#[tokio::test]
async fn account_key_exchange_registers_our_public_key_and_refreshes() {
    let pg = Arc::new(MockPaymentsGate::default());
    let data = web::Data::from(Arc::clone(&pg));
    let base = start_mock(move || {
        App::new()
            .app_data(data.clone())
            .route("/auth/token", web::post().to(pg_token))
            .route("/auth/refresh", web::post().to(pg_refresh))
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let mut profile = config.profiles[0].clone();
    profile.name = "paymentsgate".into();
    profile.exchange = Some(ExchangeConfig {
        style: ExchangeStyle::AccountKey,
        token_url: format!("{base}/auth/token"),
        token_field: "token".into(),
        account_id: Some("00000000-0000-4000-0000-000000000000".into()),
        refresh_url: Some(format!("{base}/auth/refresh")),
        timeout: Span::from_secs(2),
    });
    config.profiles.push(profile);
    let app = spawn_in(dir, config, MasterKey::generate()).await;
    let client = app.client("payments", &["paymentsgate"]).await;
    let get = |body: Value| {
        let request = app.http.post(format!("{}/v1/profiles/paymentsgate/token", app.internal)).bearer_auth(&client);
        async move {
            let response = request.json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned()
        }
    };

    assert_eq!(get(json!({})).await, "at-1");
    let jwks = app.jwks("/.well-known/jwks.json").await;
    assert_eq!(pg.registered_n.lock().unwrap().as_deref(), jwks["keys"][0]["n"].as_str(), "our signing key was sent");
    assert_eq!(get(json!({})).await, "at-1", "cached");
    assert_eq!(pg.token_calls.load(Ordering::SeqCst), 1);

    // expires_in 3 s: handed out until a second before expiry, then refreshed.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(get(json!({})).await, "at-2");
    assert_eq!((pg.token_calls.load(Ordering::SeqCst), pg.refresh_calls.load(Ordering::SeqCst)), (1, 1));

    // A failing refresh falls back to a new token request.
    pg.refresh_fails.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(get(json!({})).await, "at-3");
    assert_eq!((pg.token_calls.load(Ordering::SeqCst), pg.refresh_calls.load(Ordering::SeqCst)), (2, 2));

    let response = app
        .http
        .post(format!("{}/v1/profiles/paymentsgate/token", app.internal))
        .bearer_auth(&client)
        .json(&json!({"sub": "x"}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 400).await;
}

#[tokio::test]
async fn onboarding_prints_what_npm_asks_for_and_checks_the_published_keys() {
    let world = npm_world(|_| {}).await;
    let dir = world.app.dir.path();
    std::fs::write(dir.join("keys.toml"), toml::to_string(&world.app.config).unwrap()).unwrap();
    let run = |dir: &std::path::Path| keyward_bare(dir, &["onboarding", "npm-sandbox"]).output().unwrap();
    let out = run(dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let issuer = world.app.config.profiles[0].issuer.clone().unwrap();
    assert_eq!(stdout, format!("partner_name: {PARTNER}\niss: {issuer}\njwks_uri: /path/to/your/jwks\n"));
    assert!(stderr.contains("current key") && stderr.contains("next key") && stderr.contains("ok:"), "{stderr}");
    assert_eq!(stderr.matches(": published").count(), 2, "{stderr}");

    // Pointed at a host that does not serve our JWKS, the check fails.
    let mut elsewhere = world.app.config.clone();
    elsewhere.profiles[0].issuer = Some(format!("http://127.0.0.1:{}", free_port()));
    std::fs::write(dir.join("keys.toml"), toml::to_string(&elsewhere).unwrap()).unwrap();
    let out = run(dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be fetched"));
}
