//! Rotation in real time: accelerated schedules, a caching verifier, revocation, two
//! processes on one database, and crashes mid-rotation.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::config::Config;
use keyward::config::Duration as Span;
use keyward::keys::Algorithm;
use keyward::keys::{KeyRecord, KeyState};
use keyward::store::Store;
use serde_json::{json, Value};

use crate::helpers::{database_bytes, now, serve, spawn_app_with, sqlite, test_config, wait_healthy, TestApp};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";

/// Rotation every few seconds: the shortest schedule the rules allow for these caches.
pub(crate) fn fast(config: &mut Config, algorithm: Algorithm) {
    let set = &mut config.key_sets[0];
    set.algorithm = algorithm;
    set.jwks_max_age = Span::from_secs(2);
    set.clock_skew = Span::from_secs(1);
    set.publish_ahead = Span::from_secs(3);
    set.rotate_every = Span::from_secs(3);
    set.retain_after = Span::from_secs(3);
    let profile = &mut config.profiles[0];
    profile.default_ttl = Span::from_secs(3);
    profile.max_ttl = Span::from_secs(3);
}

async fn admin_token(app: &TestApp) -> String {
    let token = keyward::ops::clients::add(&app.store, &app.config, "ops", &[], true, 0).await.unwrap();
    app.reload().await;
    token.to_string()
}

async fn admin_post(app: &TestApp, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app.http.post(format!("{}{path}", app.internal)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// A verifier as partners run them: caches the JWKS for its max-age and refetches on an
/// unknown kid at most once per `refetch_every`.
pub(crate) struct CachingVerifier {
    url: String,
    http: reqwest::Client,
    jwks: Value,
    fetched: Instant,
    max_age: Duration,
    refetch_every: Duration,
    pub(crate) fetches: usize,
}

impl CachingVerifier {
    pub(crate) async fn new(url: String, refetch_every: Duration) -> Self {
        let mut v = CachingVerifier {
            url,
            http: reqwest::Client::new(),
            jwks: Value::Null,
            fetched: Instant::now(),
            max_age: Duration::ZERO,
            refetch_every,
            fetches: 0,
        };
        v.fetch().await;
        v
    }

    async fn fetch(&mut self) {
        let response = self.http.get(&self.url).send().await.unwrap();
        let cache_control = response.headers()["cache-control"].to_str().unwrap().to_owned();
        let seconds: u64 = cache_control.rsplit("max-age=").next().unwrap().parse().unwrap();
        self.max_age = Duration::from_secs(seconds);
        self.jwks = response.json().await.unwrap();
        self.fetched = Instant::now();
        self.fetches += 1;
    }

    pub(crate) async fn verify(&mut self, token: &str) -> Result<Value, String> {
        if self.fetched.elapsed() >= self.max_age {
            self.fetch().await;
        }
        match verify(token, &self.jwks) {
            Err(e) if e.contains("is not in the JWKS") && self.fetched.elapsed() >= self.refetch_every => {
                self.fetch().await;
                verify(token, &self.jwks).map(|v| v.claims)
            }
            other => other.map(|v| v.claims),
        }
    }
}

#[tokio::test]
async fn accelerated_rotation_never_fails_a_caching_verifier() {
    let app = Arc::new(spawn_app_with(|c| fast(c, Algorithm::Es256)).await);
    let token = app.client("backend", &[PROFILE]).await;
    let url = format!("{}/path/to/your/jwks", app.public);
    // The strictest verifier: refetches on an unknown kid no more often than its cache expires.
    let mut verifier = CachingVerifier::new(url, Duration::from_secs(2)).await;

    let run_for = Duration::from_secs(14);
    let start = Instant::now();
    let mut live: Vec<(String, i64)> = Vec::new();
    let (mut issued, mut checks, mut failures) = (0usize, 0usize, Vec::new());
    let mut kids = BTreeSet::new();
    while start.elapsed() < run_for {
        let body = app.sign_ok(PROFILE, &token, &json!({"sub": "acct-1"})).await;
        issued += 1;
        kids.insert(body["kid"].as_str().unwrap().to_owned());
        live.push((body["token"].as_str().unwrap().to_owned(), body["expires_at"].as_i64().unwrap()));
        // Every token is checked again and again until its exp.
        let now = chrono::Utc::now().timestamp();
        live.retain(|(_, exp)| *exp > now);
        for (jwt, exp) in &live {
            checks += 1;
            if let Err(e) = verifier.verify(jwt).await {
                failures.push(format!("exp {exp}, now {now}: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "accelerated rotation: {issued} tokens, {checks} verifications, {} failures, {} signing keys, {} JWKS fetches",
        failures.len(),
        kids.len(),
        verifier.fetches
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(kids.len() >= 4, "only {} signing keys in {run_for:?}", kids.len());
    let keys = app.store.keys().await.unwrap();
    assert!(keys.iter().any(|k| k.state_at(now()) == KeyState::Retired), "no key was retired");
}

#[tokio::test]
async fn revoking_the_signing_key_swaps_in_the_next_with_no_gap() {
    let app = Arc::new(spawn_app_with(|c| c.key_sets[0].algorithm = Algorithm::Es256).await);
    let token = app.client("backend", &[PROFILE]).await;
    let ops = admin_token(&app).await;
    let before = app.jwks("/.well-known/jwks.json").await;
    let (current, next) =
        (before["keys"][0]["kid"].as_str().unwrap().to_owned(), before["keys"][1]["kid"].as_str().unwrap().to_owned());

    // A client signs continuously while the key is revoked.
    let failures = Arc::new(AtomicUsize::new(0));
    let signer = {
        let (app, token, failures) = (Arc::clone(&app), token.clone(), Arc::clone(&failures));
        tokio::spawn(async move {
            let mut kids = Vec::new();
            for _ in 0..60 {
                let response = app.sign(PROFILE, &token, &json!({"sub": "a"})).await;
                if response.status() == 200 {
                    kids.push(response.json::<Value>().await.unwrap()["kid"].as_str().unwrap().to_owned());
                } else {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            kids
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let response = admin_post(&app, &ops, &format!("/v1/keys/{current}/revoke"), None).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["signing_kid"], next.as_str());

    // Gone from the JWKS at once; the former next key signs; a new next key is published.
    let after = app.jwks("/.well-known/jwks.json").await;
    let kids: Vec<&str> = after["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(!kids.contains(&current.as_str()), "{kids:?}");
    assert_eq!(kids[0], next);
    assert_eq!(kids.len(), 2);

    let signed = signer.await.unwrap();
    assert_eq!(failures.load(Ordering::SeqCst), 0, "signing failed during the swap");
    assert!(signed.contains(&current) && signed.contains(&next), "the swap happened mid-run");
    let first_new = signed.iter().position(|k| *k == next).unwrap();
    assert!(signed[first_new..].iter().all(|k| *k == next), "the revoked key signed after the swap");

    let revoked = app.store.keys().await.unwrap().into_iter().find(|k| k.kid == current).unwrap();
    assert_eq!(revoked.state_at(now()), KeyState::Revoked);
    assert!(revoked.private().is_none());
    assert_eq!(admin_post(&app, &ops, &format!("/v1/keys/{current}/revoke"), None).await.status(), 409);
    assert_eq!(admin_post(&app, &ops, "/v1/keys/nope/revoke", None).await.status(), 404);
}

#[tokio::test]
async fn admin_routes_need_an_admin_client_and_rotation_respects_publish_ahead() {
    let app = spawn_app_with(|c| c.key_sets[0].algorithm = Algorithm::Es256).await;
    let plain = app.client("backend", &[PROFILE]).await;
    let ops = admin_token(&app).await;
    assert_eq!(admin_post(&app, &plain, "/v1/key-sets/npm/rotate", None).await.status(), 403);
    assert_eq!(admin_post(&app, "kw_nope", "/v1/key-sets/npm/rotate", None).await.status(), 401);
    let list = app.http.get(format!("{}/v1/key-sets", app.internal)).bearer_auth(&plain).send().await.unwrap();
    assert_eq!(list.status(), 403);

    // The next key was published moments ago: 24h publish_ahead refuses a planned rotation.
    let early = admin_post(&app, &ops, "/v1/key-sets/npm/rotate", None).await;
    assert_eq!(early.status(), 409);
    let problem: Value = early.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("force"), "{problem}");
    assert_eq!(admin_post(&app, &ops, "/v1/key-sets/nope/rotate", None).await.status(), 404);

    let forced = admin_post(&app, &ops, "/v1/key-sets/npm/rotate", Some(json!({"force": true}))).await;
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.unwrap();
    assert_eq!(forced["steps"][0]["step"], "promote");
    let signing = forced["signing_kid"].as_str().unwrap();
    assert_eq!(app.sign_ok(PROFILE, &plain, &json!({"sub": "a"})).await["kid"], signing);

    let schedule: Value = app
        .http
        .get(format!("{}/v1/key-sets", app.internal))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let set = &schedule["key_sets"][0];
    assert_eq!(set["name"], "npm");
    assert_eq!(set["publish_ahead"], 86_400);
    // The configuration's name and value, and what it adds up to with the longest token.
    assert_eq!(set["retain_after"], 86_400);
    let of_set = app.config.profiles.iter().filter(|p| p.key_set.as_deref() == Some("npm"));
    let max_ttl = of_set.map(|p| p.max_ttl.as_secs_i64()).max().unwrap();
    assert_eq!(set["published_after_signing"], max_ttl + 86_400);
    assert!(set.get("retain_for").is_none(), "one name for one setting: {set}");
    let keys = set["keys"].as_array().unwrap();
    let mut states: Vec<&str> = keys.iter().map(|k| k["state"].as_str().unwrap()).collect();
    states.sort();
    assert_eq!(states, ["current", "next", "previous"]);
    let by_state = |s: &str| keys.iter().find(|k| k["state"] == s).unwrap();
    assert_eq!(by_state("current")["kid"], signing);
    assert_eq!(by_state("current")["signing_until"]["planned"], true);
    assert_eq!(by_state("previous")["published_until"]["planned"], true, "the previous key's retirement is planned");
}

#[tokio::test]
async fn retired_keys_leave_no_private_material_in_the_database() {
    let app = spawn_app_with(|c| fast(c, Algorithm::Es256)).await;
    let first = app.store.keys().await.unwrap().into_iter().find(|k| k.state_at(now()) == KeyState::Current).unwrap();
    let blob = first.sealed().unwrap().0.to_vec();
    // rotate_every 3s, then max_ttl 3s + retain_after 3s: retired about 9 s after start.
    let retired = app
        .eventually(Duration::from_secs(15), || async {
            app.store.keys().await.unwrap().iter().any(|k| k.kid == first.kid && k.state_at(now()) == KeyState::Retired)
        })
        .await;
    assert!(retired, "the first key was not retired in time");
    let record = app.store.keys().await.unwrap().into_iter().find(|k| k.kid == first.kid).unwrap();
    assert!(record.private().is_none() && record.sealed().is_none());
    // The scheduler commits the retirement, then reloads the served snapshot: the JWKS
    // follows within moments (seen by this check only between the two, under load).
    let unpublished = app
        .eventually(Duration::from_secs(2), || async {
            !app.jwks("/.well-known/jwks.json").await.to_string().contains(&first.kid)
        })
        .await;
    assert!(unpublished, "a retired key is still published");

    let stored = database_bytes(app.dir.path());
    assert!(
        !stored.windows(32).any(|w| w == &blob[blob.len() - 32..]),
        "the retired key's sealed bytes remain on disk"
    );
}

/// Every set has exactly one current key at every instant ahead, and one next key; no kid
/// seen before is lost. A planned hand-over happens with no process running (nothing is
/// written then): after it, until a process publishes the successor, the new current key
/// signs with no planned end and the set has no next key.
async fn assert_valid_state(db: &std::path::Path, seen: &mut BTreeSet<String>) {
    let store = Store::open(db).await.unwrap();
    let keys = store.keys().await.unwrap();
    let at = now();
    let count = |s: KeyState, at: i64| keys.iter().filter(|k| k.state_at(at) == s).count();
    for later in at..at + 30 {
        assert_eq!(count(KeyState::Current, later), 1, "at {later}: {keys:?}");
    }
    let handed_over_unattended = keyward::keys::signer_at(&keys, at).is_some_and(|k| k.deactivates_at.is_none());
    if !handed_over_unattended {
        assert_eq!(count(KeyState::Next, at), 1, "{keys:?}");
    }
    let now: BTreeSet<String> = keys.iter().map(|k| k.kid.clone()).collect();
    assert!(seen.is_subset(&now), "keys were lost");
    *seen = now;
    sqlite(&store).close().await;
}

#[tokio::test]
async fn two_processes_on_one_database_rotate_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    fast(&mut config, Algorithm::Es256);
    let mut a = serve(dir.path(), &config, "info");
    let mut b = serve(dir.path(), &config, "info");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut a).await && wait_healthy(&http, &mut b).await);
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Both serve the same keys: the one that did not rotate picks the change up within about
    // a second, well inside the 3 s between rotations.
    let mut agreed = false;
    for _ in 0..30 {
        let fetch = |base: &str| http.get(format!("{base}/.well-known/jwks.json")).send();
        let jwks_a: Value = fetch(&a.public).await.unwrap().json().await.unwrap();
        let jwks_b: Value = fetch(&b.public).await.unwrap().json().await.unwrap();
        if jwks_a == jwks_b {
            agreed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((a, b));
    assert!(agreed, "the two processes never served the same JWKS");
    let store = Store::open(config.database_path()).await.unwrap();
    let keys = store.keys().await.unwrap();
    let mut activations: Vec<i64> = keys.iter().filter_map(|k| k.activates_at).filter(|at| *at <= now()).collect();
    activations.sort();
    assert!(activations.len() >= 3, "{activations:?}");
    for pair in activations.windows(2) {
        assert!(
            pair[1] - pair[0] >= 3,
            "two rotations {}s apart: both processes rotated ({activations:?})",
            pair[1] - pair[0]
        );
    }
    let created: HashMap<i64, usize> = keys.iter().fold(HashMap::new(), |mut m, k| {
        *m.entry(k.created_at).or_default() += 1;
        m
    });
    assert!(created.values().all(|n| *n <= 2), "more keys than one rotation makes in one second: {created:?}");
    assert_valid_state(&config.database_path(), &mut BTreeSet::new()).await;
}

#[tokio::test]
async fn a_process_killed_mid_rotation_restarts_into_a_valid_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // RSA keys take the longest to generate: the widest window for a kill mid-rotation.
    fast(&mut config, Algorithm::Rs256);
    config.key_sets[0].rotate_every = Span::from_secs(3);
    let http = reqwest::Client::new();
    let mut seen = BTreeSet::new();
    for round in 0..8u64 {
        let mut process = serve(dir.path(), &config, "info");
        assert!(wait_healthy(&http, &mut process).await, "round {round}: the server did not come up");
        let jwks: Value =
            http.get(format!("{}/.well-known/jwks.json", process.public)).send().await.unwrap().json().await.unwrap();
        assert!(!jwks["keys"].as_array().unwrap().is_empty(), "round {round}: empty JWKS");
        // Land the kill at varied points of the 3 s rotation cycle.
        tokio::time::sleep(Duration::from_millis(700 + 450 * round)).await;
        let _ = process.child.kill(); // SIGKILL
        let _ = process.child.wait();
        assert_valid_state(&config.database_path(), &mut seen).await;
    }
    assert!(seen.len() >= 4, "too few rotations happened to test anything: {}", seen.len());
}

fn utc(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn key(store: &Store, kid: &str) -> KeyRecord {
    store.keys().await.unwrap().into_iter().find(|k| k.kid == kid).unwrap()
}

async fn kid_in(store: &Store, state: KeyState) -> String {
    store.keys().await.unwrap().into_iter().find(|k| k.state_at(now()) == state).unwrap().kid
}

/// A rotation then an immediate revocation makes a seconds-old key sign: the CLI's output,
/// the admin route's answer and the server's log say so, and until when.
#[tokio::test]
async fn revoking_right_after_a_rotation_says_until_when_verifiers_may_reject_the_new_signer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.key_sets[0].algorithm = Algorithm::Es256;
    let mut server = serve(dir.path(), &config, "info");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut server).await);
    let config_file = server.config_file.to_str().unwrap().to_owned();
    let cli = |args: &[&str]| {
        crate::helpers::keyward_bare(dir.path(), &[&["--config", config_file.as_str()][..], args].concat())
            .output()
            .unwrap()
    };
    let store = Store::open(config.database_path()).await.unwrap();
    let window = 5 * 60 + 60; // jwks_max_age + clock_skew of the defaults

    // The CLI: rotate (forced), then revoke the signer at once.
    let out = cli(&["keys", "rotate", "npm", "--force"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    let (signer, fresh) = (kid_in(&store, KeyState::Current).await, kid_in(&store, KeyState::Next).await);
    // A forced rotation says the same of the key it made sign.
    assert!(said.contains(&format!("the new signing key {signer} has been published for only")), "{said}");
    let out = cli(&["keys", "revoke", &signer]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    // As the words say (measured 1 to 60 ms; the bound allows for a loaded machine).
    assert!(said.contains(&format!("running servers drop {signer} from the JWKS within about 0.1 s")), "{said}");
    let jwks = format!("{}/path/to/your/jwks", server.public);
    let dropped = crate::helpers::eventually(Duration::from_secs(5), || async {
        let doc: Value = http.get(&jwks).send().await.unwrap().json().await.unwrap();
        doc["keys"].as_array().unwrap().iter().all(|k| k["kid"] != signer.as_str())
    })
    .await;
    assert!(dropped, "the revoked key is still in the JWKS");
    let promoted = key(&store, &fresh).await;
    assert_eq!(promoted.state_at(now()), KeyState::Current, "revoke still swaps at once");
    let until = promoted.published_at.unwrap() + window;
    assert!(said.contains(&format!("the new signing key {fresh} has been published for only")), "{said}");
    assert!(said.contains("less than jwks_max_age + clock_skew (6m)"), "{said}");
    assert!(said.contains(&format!("may reject its tokens until {}", utc(until))), "{said}");

    // The admin route: the same facts as JSON, and a log line with them.
    let ops = String::from_utf8(cli(&["clients", "add", "ops", "--admin"]).stdout).unwrap().trim().to_owned();
    let next = kid_in(&store, KeyState::Next).await;
    let mut answer = None;
    for _ in 0..100 {
        // The server sees the CLI's client within about a second.
        let response =
            http.post(format!("{}/v1/keys/{fresh}/revoke", server.internal)).bearer_auth(&ops).send().await.unwrap();
        if response.status() != 401 {
            assert_eq!(response.status(), 200);
            answer = Some(response.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answer.expect("the admin client was never accepted");
    let published_at = key(&store, &next).await.published_at.unwrap();
    let new_signer = &answer["new_signer"];
    assert_eq!(answer["signing_kid"], next.as_str(), "{answer}");
    assert_eq!(new_signer["kid"], next.as_str(), "{answer}");
    assert_eq!(new_signer["within_cache_window"], true, "{answer}");
    assert_eq!(new_signer["cache_window"], window, "{answer}");
    assert!(new_signer["published_for"].as_i64().unwrap() < window, "{answer}");
    assert_eq!(new_signer["may_be_rejected_until"], published_at + window, "{answer}");
    let logged = server
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["new_signer"] == next.as_str());
    let fields = &logged.expect("no log line names the new signer")["fields"];
    assert_eq!(fields["may_be_rejected_until"], published_at + window, "{fields}");
    assert_eq!(fields["cache_window_s"], window, "{fields}");
    assert!(fields["message"].as_str().unwrap().contains("may reject its tokens until then"), "{fields}");
}

/// A next key published for longer than jwks_max_age + clock_skew is safe to promote: the
/// answer says so, with no time until which tokens may be rejected.
#[tokio::test]
async fn revoking_a_signer_whose_successor_is_published_long_enough_says_verifiers_have_it() {
    let app = spawn_app_with(|c| {
        let set = &mut c.key_sets[0];
        set.algorithm = Algorithm::Es256;
        set.jwks_max_age = Span::from_secs(1);
        set.clock_skew = Span::from_secs(1);
        set.publish_ahead = Span::from_secs(2);
        set.retain_after = Span::from_secs(2);
    })
    .await;
    let ops = admin_token(&app).await;
    let (signer, next) = (kid_in(&app.store, KeyState::Current).await, kid_in(&app.store, KeyState::Next).await);
    let published_at = key(&app.store, &next).await.published_at.unwrap();
    while chrono::Utc::now().timestamp() < published_at + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = admin_post(&app, &ops, &format!("/v1/keys/{signer}/revoke"), None).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["new_signer"]["kid"], next.as_str(), "{answer}");
    assert_eq!(answer["new_signer"]["within_cache_window"], false, "{answer}");
    assert!(answer["new_signer"]["published_for"].as_i64().unwrap() >= 2, "{answer}");
    assert!(answer["new_signer"]["may_be_rejected_until"].is_null(), "{answer}");
    // Revoking a key that was not signing hands over nothing.
    let response = admin_post(&app, &ops, &format!("/v1/keys/{signer}/revoke"), None).await;
    assert_eq!(response.status(), 409);
    let spare = kid_in(&app.store, KeyState::Next).await;
    let answer: Value = admin_post(&app, &ops, &format!("/v1/keys/{spare}/revoke"), None).await.json().await.unwrap();
    assert!(answer["new_signer"].is_null(), "{answer}");
}

/// The document allows a `null` rotate body: it means the defaults, as no body does.
#[tokio::test]
async fn a_null_rotate_body_is_taken_as_the_defaults() {
    let app = spawn_app_with(|c| c.key_sets[0].algorithm = Algorithm::Es256).await;
    let ops = admin_token(&app).await;
    for body in [None, Some(Value::Null)] {
        let response = admin_post(&app, &ops, "/v1/key-sets/npm/rotate", body.clone()).await;
        // Not forced: refused as too early, not as a malformed body.
        assert_eq!(response.status(), 409, "{body:?}");
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains("force"), "{problem}");
    }
    let forced = admin_post(&app, &ops, "/v1/key-sets/npm/rotate", Some(json!({"force": true}))).await;
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.unwrap();
    assert_eq!(forced["new_signer"]["kid"], forced["signing_kid"], "{forced}");
    assert_eq!(forced["new_signer"]["within_cache_window"], true, "{forced}");
}
