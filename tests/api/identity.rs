//! Backends that authenticate with a workload identity's JWT instead of a keyward token.
//!
//! The tests run identity providers of their own: an HTTPS server with its own CA serving
//! a JWKS, and a JWKS file as a Kubernetes cluster publishes it. Their tokens are signed
//! with the pure-Rust `p256` crate (ES256), independent of keyward's verifier.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use keyward::config::{Config, IdentityProviderConfig};
use keyward::ops::clients::ClientOptions;
use keyward::store::rows::Filter;
use p256::ecdsa::signature::Signer;
use serde_json::{json, Value};

use crate::certs::{write_atomically, Ca};
use crate::helpers::{assert_problem, keyward, now, serve, spawn_app_with, text, wait_healthy, TestApp};

const PROFILE: &str = "npm-sandbox";
const AUDIENCE: &str = "keyward";
/// The HTTPS provider: a CI's OIDC issuer, say.
const CI: &str = "https://ci.example";
/// The file provider: a Kubernetes cluster's service-account issuer.
const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";

/// An identity provider's signing key (ES256).
struct IdpKey {
    key: p256::ecdsa::SigningKey,
    kid: String,
}

impl IdpKey {
    fn new(kid: &str) -> IdpKey {
        let key = loop {
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
                break key;
            }
        };
        IdpKey { key, kid: kid.to_owned() }
    }

    fn jwk(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        })
    }

    /// A token with `header` (alg ES256 and this kid unless given) and `claims`.
    fn sign_with_header(&self, header: Value, claims: &Value) -> String {
        let mut full = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        for (name, value) in header.as_object().unwrap() {
            full[name] = value.clone();
        }
        let input = format!("{}.{}", b64(&full), b64(claims));
        let signature: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(json!({}), claims)
    }
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn jwks(keys: &[&IdpKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Claims of a fresh token of `iss` about `sub` for keyward.
fn claims(iss: &str, sub: &str) -> Value {
    let now = now();
    json!({"iss": iss, "sub": sub, "aud": [AUDIENCE], "iat": now, "nbf": now, "exp": now + 600})
}

/// An HTTPS server with its own CA serving the JWKS in `document`, counting its fetches in
/// `fetches`; returns its URL.
fn https_jwks(ca: &Ca, document: Arc<Mutex<String>>, fetches: Arc<AtomicUsize>) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let leaf = ca.server(None);
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}/keys", listener.local_addr().unwrap().port());
    let server = HttpServer::new(move || {
        let (document, fetches) = (Arc::clone(&document), Arc::clone(&fetches));
        App::new().route(
            "/keys",
            web::get().to(move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = document.lock().unwrap().clone();
                async move { HttpResponse::Ok().content_type("application/json").body(body) }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen_rustls_0_23(listener, tls)
    .unwrap()
    .run();
    tokio::spawn(server);
    url
}

fn provider(issuer: &str, source: &str) -> IdentityProviderConfig {
    toml::from_str(&format!("issuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\n{source}\n")).unwrap()
}

/// Binds a new client to `identity`, allowed to sign with the profile.
async fn bind(app: &TestApp, name: &str, identity: &str) {
    let options = ClientOptions { identity: Some(identity.parse().unwrap()), ..ClientOptions::default() };
    keyward::ops::clients::create(&app.store, &app.config, name, &[PROFILE.to_owned()], false, options, 0)
        .await
        .unwrap();
    app.reload().await;
}

/// The two providers (CI over HTTPS with `ca`, the cluster's JWKS file in `dir`) and a
/// third whose JWKS address answers nothing.
fn with_providers(config: &mut Config, ca_file: &Path, ci_url: &str, cluster_file: &Path, dead_url: &str) {
    config.identity_providers = vec![
        provider(CI, &format!("jwks_uri = \"{ci_url}\"\nca_file = \"{}\"", ca_file.display())),
        provider(CLUSTER, &format!("jwks_file = \"{}\"", cluster_file.display())),
        provider("https://dead.example", &format!("jwks_uri = \"{dead_url}\"\nca_file = \"{}\"", ca_file.display())),
    ];
}

struct World {
    app: TestApp,
    ci: IdpKey,
    cluster: IdpKey,
    ci_jwks: Arc<Mutex<String>>,
    ci_fetches: Arc<AtomicUsize>,
    cluster_file: std::path::PathBuf,
}

async fn world() -> World {
    let files = tempfile::tempdir().unwrap();
    let ca = Ca::new("identity provider CA");
    let ca_file = files.path().join("idp-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let ci = IdpKey::new("ci-1");
    let cluster = IdpKey::new("cluster-1");
    let ci_jwks = Arc::new(Mutex::new(jwks(&[&ci])));
    let ci_fetches = Arc::new(AtomicUsize::new(0));
    let ci_url = https_jwks(&ca, Arc::clone(&ci_jwks), Arc::clone(&ci_fetches));
    let cluster_file = files.path().join("cluster-jwks.json");
    write_atomically(&cluster_file, &jwks(&[&cluster]), 0o644);
    let dead = format!("https://127.0.0.1:{}/keys", crate::helpers::free_port());
    let app = spawn_app_with(|c| with_providers(c, &ca_file, &ci_url, &cluster_file, &dead)).await;
    // The temporary folder lives as long as the test process needs the files.
    std::mem::forget(files);
    World { app, ci, cluster, ci_jwks, ci_fetches, cluster_file }
}

async fn sign(app: &TestApp, token: &str) -> reqwest::Response {
    app.sign(PROFILE, token, &json!({"sub": "user-1"})).await
}

async fn refused(app: &TestApp, token: &str, problem: &str) -> Value {
    let body = assert_problem(sign(app, token).await, 401).await;
    assert_eq!(body["type"], format!("urn:keyward:problem:{problem}"), "{body}");
    body
}

#[tokio::test]
async fn a_workload_token_authenticates_the_client_bound_to_its_subject_or_pattern_and_the_ledger_names_the_client() {
    let World { app, ci, cluster, .. } = world().await;
    bind(&app, "deployer", &format!("{CI}|repo:acme/app:ref:refs/heads/main")).await;
    bind(&app, "payments", &format!("{CLUSTER}|system:serviceaccount:payments:*")).await;
    bind(&app, "payments-api", &format!("{CLUSTER}|system:serviceaccount:payments:api")).await;

    let token = ci.sign(&claims(CI, "repo:acme/app:ref:refs/heads/main"));
    let response = sign(&app, &token).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    // A pattern admits every subject under it; an exact binding wins over the pattern.
    for (sub, client) in
        [("system:serviceaccount:payments:worker", "payments"), ("system:serviceaccount:payments:api", "payments-api")]
    {
        let token = cluster.sign(&claims(CLUSTER, sub));
        let signed: Value = sign(&app, &token).await.json().await.unwrap();
        let jti = signed["jti"].as_str().unwrap_or_else(|| panic!("{sub}: {signed}"));
        let rows =
            app.store.issuance(&Filter { client: Some(client.to_owned()), ..Filter::default() }, 10).await.unwrap();
        assert!(rows.iter().any(|r| r.jti == jti), "{sub} signs as {client}: {rows:?}");
    }

    // A valid token of a subject no client is bound to.
    let stranger = cluster.sign(&claims(CLUSTER, "system:serviceaccount:billing:api"));
    refused(&app, &stranger, "unknown-identity").await;
    let metrics = app.http.get(format!("{}/metrics", app.internal)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!("keyward_identity_tokens_total{{issuer=\"{CLUSTER}\",outcome=\"accepted\"}} 3")),
        "{metrics}"
    );

    // Revoked: its identity no longer authenticates, at once.
    keyward::ops::clients::revoke(&app.store, "deployer", 0).await.unwrap();
    assert_eq!(sign(&app, &token).await.status(), 401);
}

#[tokio::test]
async fn bad_workload_tokens_get_a_401_that_says_why_and_nothing_else() {
    let World { app, ci, cluster, ci_fetches, .. } = world().await;
    bind(&app, "deployer", &format!("{CI}|main")).await;
    let good = claims(CI, "main");
    assert_eq!(sign(&app, &ci.sign(&good)).await.status(), 200, "the good token works");

    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        change(&mut c);
        c
    };
    let cases: Vec<(&str, String)> = vec![
        ("malformed", "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c2ln".to_owned()),
        ("unknown issuer", ci.sign(&with(&|c| c["iss"] = json!("https://elsewhere.example")))),
        ("other audience", ci.sign(&with(&|c| c["aud"] = json!(["another-service"])))),
        ("expired", ci.sign(&with(&|c| c["exp"] = json!(now() - 120)))),
        (
            "no exp",
            ci.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
        ),
        ("not yet valid", ci.sign(&with(&|c| c["nbf"] = json!(now() + 600)))),
        ("too old", ci.sign(&with(&|c| c["iat"] = json!(now() - 7_200)))),
        // Signed by a key of another issuer that claims the CI's kid.
        ("another issuer's key", IdpKey::new("ci-1").sign(&good)),
        // The right `iss`, signed by the other (configured) provider.
        ("iss right, signed by another provider", cluster.sign(&good)),
        ("kid not in the JWKS", IdpKey::new("ci-unknown").sign(&good)),
        ("no kid", ci.sign_with_header(json!({"kid": null}), &good)),
        ("key in the header", ci.sign_with_header(json!({"jwk": ci.jwk()}), &good)),
        ("alg none", format!("{}.{}.", b64(&json!({"alg": "none", "kid": "ci-1"})), b64(&good))),
        ("HS256 keyed with the provider's public key", hs256_with_public_key(&ci, &good)),
        ("tampered claims", {
            let token = ci.sign(&good);
            let parts: Vec<&str> = token.split('.').collect();
            format!("{}.{}.{}", parts[0], b64(&with(&|c| c["sub"] = json!("admin"))), parts[2])
        }),
    ];
    for (case, token) in &cases {
        let body = assert_problem(sign(&app, token).await, 401).await;
        assert_eq!(body["type"], "urn:keyward:problem:invalid-identity-token", "{case}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(!detail.contains(token.as_str()), "{case}: the answer repeats the token");
    }

    // A burst of unknown kids fetches the JWKS again at most once per 5 s.
    let before = ci_fetches.load(Ordering::SeqCst);
    for n in 0..20 {
        assert_eq!(sign(&app, &IdpKey::new(&format!("made-up-{n}")).sign(&good)).await.status(), 401);
    }
    let fetched = ci_fetches.load(Ordering::SeqCst) - before;
    assert!(fetched <= 2, "20 unknown kids fetched the JWKS {fetched} times");

    // A provider whose JWKS cannot be fetched: 401 saying so, /readyz still 200, counted.
    let dead = ci.sign(&with(&|c| c["iss"] = json!("https://dead.example")));
    refused(&app, &dead, "identity-provider-unavailable").await;
    let ready = app.http.get(format!("{}/readyz", app.public)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = app.http.get(format!("{}/metrics", app.internal)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            "keyward_identity_tokens_total{issuer=\"https://dead.example\",outcome=\"provider_unavailable\"} 1"
        ),
        "{metrics}"
    );
}

/// The algorithm-confusion attack: HS256 with the provider's public key as the secret.
fn hs256_with_public_key(key: &IdpKey, claims: &Value) -> String {
    let input = format!("{}.{}", b64(&json!({"alg": "HS256", "kid": key.kid})), b64(claims));
    let public = key.key.verifying_key().to_encoded_point(false);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(public.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_jwks_rotation_at_the_provider_is_picked_up_without_a_restart() {
    let World { app, ci, cluster, ci_jwks, cluster_file, .. } = world().await;
    bind(&app, "deployer", &format!("{CI}|main")).await;
    bind(&app, "payments", &format!("{CLUSTER}|system:serviceaccount:payments:*")).await;
    let sub = "system:serviceaccount:payments:api";
    assert_eq!(sign(&app, &ci.sign(&claims(CI, "main"))).await.status(), 200);
    assert_eq!(sign(&app, &cluster.sign(&claims(CLUSTER, sub))).await.status(), 200);

    // The HTTPS provider publishes a new key and signs with it: an unknown kid fetches the
    // JWKS again (at most once per 5 s).
    let ci_next = IdpKey::new("ci-2");
    *ci_jwks.lock().unwrap() = jwks(&[&ci, &ci_next]);
    let picked_up = app
        .eventually(Duration::from_secs(15), || async {
            sign(&app, &ci_next.sign(&claims(CI, "main"))).await.status() == 200
        })
        .await;
    assert!(picked_up, "the HTTPS provider's new key is not accepted 15 s after it appeared");

    // The cluster rotates its key file: the old key is gone, the new one works.
    let cluster_next = IdpKey::new("cluster-2");
    write_atomically(&cluster_file, &jwks(&[&cluster_next]), 0o644);
    let picked_up = app
        .eventually(Duration::from_secs(15), || async {
            sign(&app, &cluster_next.sign(&claims(CLUSTER, sub))).await.status() == 200
        })
        .await;
    assert!(picked_up, "the new key of the JWKS file is not accepted 15 s after the file changed");
    refused(&app, &cluster.sign(&claims(CLUSTER, sub)), "invalid-identity-token").await;
}

#[tokio::test]
async fn the_cli_binds_a_client_to_an_identity_and_the_log_names_issuer_and_subject_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::helpers::test_config(dir.path());
    config.key_sets[0].algorithm = keyward::keys::Algorithm::Es256;
    let cluster = IdpKey::new("cluster-1");
    let jwks_file = dir.path().join("cluster-jwks.json");
    write_atomically(&jwks_file, &jwks(&[&cluster]), 0o644);
    config.identity_providers = vec![provider(CLUSTER, &format!("jwks_file = \"{}\"", jwks_file.display()))];
    let master = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    write_atomically(&config.server.master_key_file, &master, 0o600);
    let http = reqwest::Client::new();
    let mut server = serve(dir.path(), &config, "info");
    assert!(wait_healthy(&http, &mut server).await, "keyward serve did not come up");
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", server.config_file.to_str().unwrap()];
        all.extend_from_slice(args);
        keyward(dir.path(), &all)
    };

    let identity = format!("{CLUSTER}|system:serviceaccount:payments:*");
    let out = cli(&["clients", "add", "payments", "--profiles", PROFILE, "--identity", &identity]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "an identity-only client gets no token: {}", text(&out.stdout));
    let out =
        cli(&["clients", "add", "both", "--profiles", PROFILE, "--identity", &format!("{CLUSTER}|x"), "--with-token"]);
    assert!(out.status.success() && text(&out.stdout).starts_with("kw_"), "{}", text(&out.stderr));
    let out = cli(&["clients", "add", "stray", "--profiles", PROFILE, "--identity", "https://elsewhere|x"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no [[identity_provider]]"), "{}", text(&out.stderr));
    let out = cli(&["clients", "add", "wide", "--profiles", PROFILE, "--identity", &format!("{CLUSTER}|*")]);
    assert!(!out.status.success() && text(&out.stderr).contains("every workload"), "{}", text(&out.stderr));
    let list = text(&cli(&["clients", "list"]).stdout);
    assert!(list.lines().any(|l| l.starts_with("payments ") && l.ends_with(&identity)), "{list}");

    // Bound a moment ago by another process: works on the next request already.
    let sub = "system:serviceaccount:payments:api";
    let token = cluster.sign(&claims(CLUSTER, sub));
    let response = http
        .post(format!("{}/v1/profiles/{PROFILE}/sign", server.internal))
        .bearer_auth(&token)
        .json(&json!({"sub": "acct-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let other_audience = cluster.sign(&{
        let mut c = claims(CLUSTER, sub);
        c["aud"] = json!("someone-else");
        c
    });
    let response = http
        .post(format!("{}/v1/profiles/{PROFILE}/sign", server.internal))
        .bearer_auth(&other_audience)
        .json(&json!({"sub": "acct-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let audit: Value =
        serde_json::from_slice(&cli(&["audit", "--client", "payments", "--json"]).stdout).unwrap_or(Value::Null);
    assert!(audit.to_string().contains("acct-1"), "the ledger names the bound client: {audit}");
    let log = server.log_text();
    assert!(log.contains(sub) && log.contains(CLUSTER), "the log names the subject and issuer:\n{log}");
    for (what, secret) in [("accepted", &token), ("refused", &other_audience)] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "the {what} token is in the log");
    }
}
