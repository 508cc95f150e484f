//! Partners seen fetching the JWKS, and hand-overs gated on them. Distinct partners are
//! distinct loopback source addresses (127.0.0.2, 127.0.0.3): each client binds its socket.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use keyward::config::{Config, PartnerConfig};
use keyward::keys::KeyRecord;
use keyward::store::Store;
use serde_json::{json, Value};

use crate::helpers::{now, serve, spawn_app_with, test_config, wait_healthy, TestApp};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";
const JWKS: &str = "/.well-known/jwks.json";

/// Rotation every few seconds.
pub(crate) fn fast(config: &mut Config) {
    let set = &mut config.key_sets[0];
    set.jwks_max_age = keyward::config::Duration::from_secs(2);
    set.clock_skew = keyward::config::Duration::from_secs(1);
    set.publish_ahead = keyward::config::Duration::from_secs(3);
    set.rotate_every = keyward::config::Duration::from_secs(3);
    set.retain_after = keyward::config::Duration::from_secs(3);
    let profile = &mut config.profiles[0];
    profile.default_ttl = keyward::config::Duration::from_secs(3);
    profile.max_ttl = keyward::config::Duration::from_secs(3);
}

/// A gating partner recognised by its source address.
pub(crate) fn partner(config: &Config, name: &str, address: &str, extra: &str) -> PartnerConfig {
    let set = &config.key_sets[0].name;
    toml::from_str(&format!(
        "name = \"{name}\"\nkey_sets = [\"{set}\"]\nmatch = {{ cidrs = [\"{address}\"] }}\ngate_handover = true\n{extra}"
    ))
    .unwrap()
}

/// Two gating partners: alpha (127.0.0.2) and beta (127.0.0.3).
fn gated(config: &mut Config, alpha_extra: &str) {
    fast(config);
    let alpha = partner(config, "alpha", "127.0.0.2", alpha_extra);
    let beta = partner(config, "beta", "127.0.0.3", "");
    config.partners = vec![alpha, beta];
}

/// An HTTP client whose connections come from `address`.
pub(crate) fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(address.parse::<IpAddr>().unwrap()).build().unwrap()
}

pub(crate) async fn fetch(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}{JWKS}")).send().await.unwrap().json().await.unwrap()
}

/// The kid the server signs with: the first of the JWKS.
pub(crate) async fn signer(base: &str) -> String {
    fetch(&reqwest::Client::new(), base).await["keys"][0]["kid"].as_str().unwrap().to_owned()
}

/// The latest planned hand-over as stored: the key that signs until it, and the next key.
/// (With a gate holding, the planned instant may be past while the first key still signs.)
pub(crate) async fn planned(store: &Store) -> (String, KeyRecord) {
    let keys = store.keys().await.unwrap();
    let next = keys.iter().filter(|k| k.is_published()).max_by_key(|k| k.activates_at).unwrap().clone();
    let current = keys.iter().find(|k| k.deactivates_at == next.activates_at).expect("a planned hand-over");
    (current.kid.clone(), next)
}

/// Waits until `at` has passed by `margin`, while `beta` keeps fetching (it holds every key).
pub(crate) async fn wait_past(at: i64, margin: i64, beta: &reqwest::Client, base: &str) {
    loop {
        fetch(beta, base).await;
        if now() >= at + margin {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn partners(app: &TestApp, admin: &str) -> Value {
    app.http.get(format!("{}/v1/partners", app.internal)).bearer_auth(admin).send().await.unwrap().json().await.unwrap()
}

async fn admin(app: &TestApp) -> String {
    let token = keyward::ops::clients::add(&app.store, &app.config, "ops", &[], true, 0).await.unwrap();
    app.reload().await;
    token.to_string()
}

fn partner_named<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["partners"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()
}

#[tokio::test]
async fn a_gating_partner_that_never_fetches_holds_the_hand_over_and_its_first_fetch_releases_it() {
    let app = spawn_app_with(|c| gated(c, "gate_max_wait = \"10m\"")).await;
    let token = app.client("backend", &[PROFILE]).await;
    let ops = admin(&app).await;
    let (alpha, beta) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    let (current, next) = planned(&app.store).await;
    let at = next.activates_at.unwrap();

    wait_past(at, 3, &beta, &app.public).await;
    assert_eq!(signer(&app.public).await, current, "handed over although alpha never fetched");
    assert_eq!(app.sign_ok(PROFILE, &token, &json!({"sub": "a"})).await["kid"], current.as_str());
    let report = partners(&app, &ops).await;
    let a = partner_named(&report, "alpha");
    assert!(a["last_fetch"].is_null(), "{report}");
    assert_eq!(a["key_sets"][0]["holds_next"], false, "{report}");
    assert_eq!(a["key_sets"][0]["gate"]["gate"], "waiting", "{report}");
    assert_eq!(a["key_sets"][0]["gate"]["missing"], json!(["alpha"]), "{report}");
    assert_eq!(partner_named(&report, "beta")["key_sets"][0]["holds_next"], true, "{report}");

    // Alpha's first fetch releases it (once written, within a second or so).
    let fetched_at = now();
    fetch(&alpha, &app.public).await;
    let released = app.eventually(Duration::from_secs(15), || async { signer(&app.public).await == next.kid }).await;
    assert!(released, "alpha's fetch did not release the hand-over");
    let body = app.sign_ok(PROFILE, &token, &json!({"sub": "a"})).await;
    assert_eq!(body["kid"], next.kid.as_str());
    verify(body["token"].as_str().unwrap(), &app.jwks(JWKS).await).unwrap();
    let report = partners(&app, &ops).await;
    let a = partner_named(&report, "alpha");
    assert!(a["last_fetch"].as_i64().unwrap() >= fetched_at, "{report}");
    assert_eq!(a["addresses_24h"], json!(["127.0.0.2"]), "{report}");
    assert_eq!(a["key_sets"][0]["holds_current"], true, "{report}");
}

#[tokio::test]
async fn a_304_counts_as_holding_the_version_it_confirms() {
    let app = spawn_app_with(|c| gated(c, "gate_max_wait = \"10m\"")).await;
    let (alpha, beta) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    let (current, next) = planned(&app.store).await;
    wait_past(next.activates_at.unwrap(), 2, &beta, &app.public).await;
    assert_eq!(signer(&app.public).await, current);
    // Alpha already has this version (fetched elsewhere): it only revalidates.
    let etag = reqwest::get(format!("{}{JWKS}", app.public)).await.unwrap().headers()["etag"].clone();
    let response = alpha.get(format!("{}{JWKS}", app.public)).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(response.status(), 304);
    let released = app.eventually(Duration::from_secs(15), || async { signer(&app.public).await == next.kid }).await;
    assert!(released, "a 304 to alpha did not count as alpha holding the next key");
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app_with(|c| gated(c, "gate_max_wait = \"10m\"")).await;
    let ops = admin(&app).await;
    let beta = client_from("127.0.0.3");
    let (current, next) = planned(&app.store).await;
    // Beta claims to be alpha; no proxy is trusted, so it stays beta.
    for _ in 0..5 {
        beta.get(format!("{}{JWKS}", app.public)).header("x-forwarded-for", "127.0.0.2").send().await.unwrap();
        beta.get(format!("{}{JWKS}", app.public)).header("forwarded", "for=127.0.0.2").send().await.unwrap();
    }
    wait_past(next.activates_at.unwrap(), 3, &beta, &app.public).await;
    assert_eq!(signer(&app.public).await, current, "the spoofed header passed for alpha");
    let report = partners(&app, &ops).await;
    assert!(partner_named(&report, "alpha")["last_fetch"].is_null(), "{report}");
    assert_eq!(partner_named(&report, "beta")["addresses_24h"], json!(["127.0.0.3"]), "{report}");
}

#[tokio::test]
async fn proceed_hands_over_unconfirmed_when_the_wait_is_over_and_hold_keeps_the_current_key() {
    let proceeding = spawn_app_with(|c| gated(c, "gate_max_wait = \"3s\"\non_gate_timeout = \"proceed\"")).await;
    let holding = spawn_app_with(|c| gated(c, "gate_max_wait = \"2s\"")).await;
    let beta = client_from("127.0.0.3");
    let (p_current, p_next) = planned(&proceeding.store).await;
    let (h_current, h_next) = planned(&holding.store).await;
    let p_at = p_next.activates_at.unwrap();
    // Beta holds every key of both (only alpha is missing), however long the set-up took.
    fetch(&beta, &proceeding.public).await;
    fetch(&beta, &holding.public).await;
    // Proceed: not before the planned instant plus gate_max_wait, then the next key signs.
    while now() < p_at + 2 {
        fetch(&beta, &proceeding.public).await;
        assert_eq!(signer(&proceeding.public).await, p_current, "proceeded before gate_max_wait");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let proceeded = proceeding
        .eventually(Duration::from_secs(10), || async { signer(&proceeding.public).await == p_next.kid })
        .await;
    assert!(proceeded, "proceed did not hand over after gate_max_wait");
    // Recorded as unconfirmed, naming the partner that had not fetched it.
    let p_ops = admin(&proceeding).await;
    let recorded = proceeding
        .eventually(Duration::from_secs(10), || async {
            let report = partners(&proceeding, &p_ops).await;
            report["handovers"].as_array().unwrap().iter().any(|h| h["kid"] == p_next.kid.as_str())
        })
        .await;
    assert!(recorded, "the unconfirmed hand-over was not recorded");
    let report = partners(&proceeding, &p_ops).await;
    let handover = report["handovers"].as_array().unwrap().iter().find(|h| h["kid"] == p_next.kid.as_str()).unwrap();
    assert_eq!((&handover["confirmed"], &handover["missing"]), (&json!(false), &json!(["alpha"])), "{report}");
    // Hold: past the wait, the current key still signs, and the gate says held.
    let ops = admin(&holding).await;
    wait_past(h_next.activates_at.unwrap() + 2, 3, &beta, &holding.public).await;
    assert_eq!(signer(&holding.public).await, h_current);
    let report = partners(&holding, &ops).await;
    assert_eq!(partner_named(&report, "alpha")["key_sets"][0]["gate"]["gate"], "held", "{report}");
    let metrics = holding.http.get(format!("{}/metrics", holding.internal)).bearer_auth(&ops).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    let set = &holding.config.key_sets[0].name;
    assert!(text.contains(&format!("keyward_handover_gate_held{{key_set=\"{set}\"}} 1")), "{text}");
    assert_eq!(gauge(&holding, &ops, "next_rotation_seconds").await, 0, "the hand-over is due and held");
    let printed = schedule(&holding);
    assert!(
        printed.contains(&format!(
            "gate: HELD since {}: alpha never fetched {}",
            shown(h_next.activates_at.unwrap() + 2),
            h_next.kid
        )),
        "{printed}"
    );
    assert!(key_line(&printed, &h_current).contains("held by gate"), "{printed}");
}

#[tokio::test]
async fn a_gate_that_proceeded_unconfirmed_holds_nothing_and_the_next_rotation_is_planned_again() {
    let app = spawn_app_with(|c| {
        gated(c, "gate_max_wait = \"2s\"\non_gate_timeout = \"proceed\"");
        c.key_sets[0].rotate_every = keyward::config::Duration::from_secs(12);
    })
    .await;
    let ops = admin(&app).await;
    let beta = client_from("127.0.0.3");
    let (_, next) = planned(&app.store).await;
    let at = next.activates_at.unwrap();
    wait_past(at, 0, &beta, &app.public).await;
    let proceeded = app.eventually(Duration::from_secs(10), || async { signer(&app.public).await == next.kid }).await;
    assert!(proceeded, "proceed did not hand over after gate_max_wait");

    assert_eq!(gauge(&app, &ops, "handover_gate_held").await, 0, "a gate that proceeded holds nothing");
    let until = gauge(&app, &ops, "next_rotation_seconds").await;
    assert!(until > 0 && until <= 12, "the next rotation is planned a rotation after the hand-over: {until}s");
    let printed = schedule(&app);
    let line =
        format!("gate: proceeded UNCONFIRMED at {}: {} signs although alpha never fetched it", shown(at + 2), next.kid);
    assert!(printed.contains(&line), "{printed}");
    assert!(!printed.contains("~-") && !printed.contains("held by gate"), "{printed}");
}

#[tokio::test]
async fn observations_made_on_one_replica_release_the_hand_over_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    gated(&mut config, "gate_max_wait = \"10m\"");
    let mut x = serve(dir.path(), &config, "info");
    let mut y = serve(dir.path(), &config, "info");
    let http = reqwest::Client::new();
    assert!(wait_healthy(&http, &mut x).await && wait_healthy(&http, &mut y).await);
    let store = Store::open(config.database_path()).await.unwrap();
    let (current, next) = planned(&store).await;
    let beta = client_from("127.0.0.3");
    wait_past(next.activates_at.unwrap(), 3, &beta, &x.public).await;
    assert_eq!((signer(&x.public).await, signer(&y.public).await), (current.clone(), current.clone()));
    // Alpha fetches from replica x only; y switches too.
    fetch(&client_from("127.0.0.2"), &x.public).await;
    let start = Instant::now();
    let mut switched = false;
    while start.elapsed() < Duration::from_secs(15) && !switched {
        switched = signer(&y.public).await == next.kid;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "replica y did not see alpha's fetch made on x");
    assert_eq!(signer(&x.public).await, next.kid);
}

#[tokio::test]
async fn revoking_the_signer_ignores_the_gate_and_names_the_partners_that_have_not_fetched_its_successor() {
    let app = spawn_app_with(|c| gated(c, "gate_max_wait = \"10m\"")).await;
    let ops = admin(&app).await;
    let (current, next) = planned(&app.store).await;
    // Beta holds the successor; alpha never fetched.
    fetch(&client_from("127.0.0.3"), &app.public).await;
    let written = app
        .eventually(Duration::from_secs(10), || async {
            !partner_named(&partners(&app, &ops).await, "beta")["last_fetch"].is_null()
        })
        .await;
    assert!(written);
    let answer: Value = app
        .http
        .post(format!("{}/v1/keys/{current}/revoke", app.internal))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["signing_kid"], next.kid.as_str(), "revocation waited for the gate: {answer}");
    assert_eq!(answer["not_yet_fetched"], json!([{"partner": "alpha", "last_fetch": null}]), "{answer}");
}

#[tokio::test]
async fn fetches_matching_no_partner_are_counted_per_user_agent_and_keyward_partners_lists_them() {
    let app = spawn_app_with(|c| gated(c, "gate_max_wait = \"10m\"")).await;
    let curious = reqwest::Client::builder().user_agent("curious-verifier/2.1").build().unwrap();
    for _ in 0..3 {
        fetch(&curious, &app.public).await;
    }
    fetch(&client_from("127.0.0.3"), &app.public).await;
    let config_file = app.dir.path().join("keys-partners.toml");
    std::fs::write(&config_file, toml::to_string(&app.config).unwrap()).unwrap();
    let run = || {
        let args = ["--config", config_file.to_str().unwrap(), "partners", "--json"];
        crate::helpers::keyward_command(app.dir.path(), &args).output().unwrap()
    };
    let mut report = Value::Null;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let out = run();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        report = serde_json::from_slice(&out.stdout).unwrap();
        let counted = report["unmatched"].as_array().unwrap().iter().any(|u| u["user_agent"] == "curious-verifier/2.1");
        if counted && !partner_named(&report, "beta")["last_fetch"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let curious = report["unmatched"].as_array().unwrap().iter().find(|u| u["user_agent"] == "curious-verifier/2.1");
    assert_eq!(curious.map(|u| u["count"].clone()), Some(json!(3)), "{report}");
    let beta = partner_named(&report, "beta");
    assert_eq!((&beta["fetches_24h"], &beta["key_sets"][0]["holds_next"]), (&json!(1), &json!(true)), "{report}");
    assert_eq!(partner_named(&report, "alpha")["key_sets"][0]["holds_current"], false, "{report}");
}

/// Two gating partners on the default (30-day) rotation: alpha waits up to 10 minutes.
fn gated_slowly(config: &mut Config) {
    let alpha = partner(config, "alpha", "127.0.0.2", "gate_max_wait = \"10m\"");
    let beta = partner(config, "beta", "127.0.0.3", "");
    config.partners = vec![alpha, beta];
}

/// The value of the metric `keyward_<name>{key_set="<set>"}` in `/metrics`.
async fn gauge(app: &TestApp, ops: &str, name: &str) -> i64 {
    let text =
        app.http.get(format!("{}/metrics", app.internal)).bearer_auth(ops).send().await.unwrap().text().await.unwrap();
    let prefix = format!("keyward_{name}{{key_set=\"{}\"}} ", app.config.key_sets[0].name);
    let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix}in\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

/// `keyward keys schedule` over the app's database, as printed.
fn schedule(app: &TestApp) -> String {
    let config_file = app.dir.path().join("keys-schedule.toml");
    std::fs::write(&config_file, toml::to_string(&app.config).unwrap()).unwrap();
    let args = ["--config", config_file.to_str().unwrap(), "keys", "schedule"];
    let out = crate::helpers::keyward_command(app.dir.path(), &args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The row of `kid` in `keys schedule`'s output.
pub(crate) fn key_line<'a>(printed: &'a str, kid: &str) -> &'a str {
    printed.lines().find(|l| l.trim_start().starts_with(kid)).unwrap_or_else(|| panic!("no row for {kid}:\n{printed}"))
}

/// How `keys schedule` prints an instant.
pub(crate) fn shown(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[tokio::test]
async fn a_gate_waiting_before_the_planned_instant_holds_nothing_and_the_planned_instant_is_shown() {
    let app = spawn_app_with(gated_slowly).await;
    let ops = admin(&app).await;
    let (current, next) = planned(&app.store).await;
    let at = next.activates_at.unwrap();
    assert!(at - now() > 86_400, "the default rotation plans the hand-over days ahead");

    assert_eq!(
        gauge(&app, &ops, "handover_gate_held").await,
        0,
        "a gate waiting before the planned instant holds nothing"
    );
    let until = gauge(&app, &ops, "next_rotation_seconds").await;
    assert!((at - now() - until).abs() <= 5, "next rotation in {until}s, planned in {}s", at - now());
    let report = partners(&app, &ops).await;
    let gate = &partner_named(&report, "alpha")["key_sets"][0]["gate"];
    assert_eq!(
        (&gate["gate"], &gate["planned"], &gate["missing"]),
        (&json!("waiting"), &json!(at), &json!(["alpha", "beta"]))
    );

    let printed = schedule(&app);
    let current_line = key_line(&printed, &current);
    assert!(
        current_line.contains(&format!("~{}", shown(at))),
        "the current key's end is not the planned instant:\n{printed}"
    );
    let next_line = key_line(&printed, &next.kid);
    assert!(
        next_line.contains(&format!("~{}", shown(at))),
        "the next key's start is not the planned instant:\n{printed}"
    );
    assert!(!printed.contains("~-") && !printed.contains("held by gate"), "{printed}");
    let gate_line =
        format!("gate: the hand-over planned for {} waits for alpha, beta to fetch {}", shown(at), next.kid);
    assert!(printed.contains(&gate_line), "no line saying the gate waits for the partners:\n{printed}");
    // Nothing changed who signs.
    assert_eq!(signer(&app.public).await, current);
}

#[tokio::test]
async fn a_gate_released_before_the_planned_instant_keeps_the_plan() {
    let app = spawn_app_with(gated_slowly).await;
    let ops = admin(&app).await;
    let (current, next) = planned(&app.store).await;
    let at = next.activates_at.unwrap();
    fetch(&client_from("127.0.0.2"), &app.public).await;
    fetch(&client_from("127.0.0.3"), &app.public).await;
    let released = app
        .eventually(Duration::from_secs(15), || async {
            partner_named(&partners(&app, &ops).await, "alpha")["key_sets"][0]["gate"]["gate"] == "released"
        })
        .await;
    assert!(released, "{}", partners(&app, &ops).await);
    let report = partners(&app, &ops).await;
    assert_eq!(partner_named(&report, "alpha")["key_sets"][0]["gate"]["at"], at, "released to the planned instant");

    assert_eq!(gauge(&app, &ops, "handover_gate_held").await, 0);
    let until = gauge(&app, &ops, "next_rotation_seconds").await;
    assert!((at - now() - until).abs() <= 5, "next rotation in {until}s, planned in {}s", at - now());
    let printed = schedule(&app);
    assert!(printed.contains(&format!("gate: released: {} signs from {}", next.kid, shown(at))), "{printed}");
    let current_line = key_line(&printed, &current);
    assert!(current_line.contains(&format!("~{}", shown(at))), "{printed}");
    assert_eq!(signer(&app.public).await, current, "released early, the next key still waits for its instant");
}

#[tokio::test]
async fn a_gate_holds_from_the_planned_instant_until_its_wait_is_over() {
    let app = spawn_app_with(|c| gated(c, "gate_max_wait = \"10m\"")).await;
    let ops = admin(&app).await;
    let beta = client_from("127.0.0.3");
    let (current, next) = planned(&app.store).await;
    let at = next.activates_at.unwrap();
    wait_past(at, 2, &beta, &app.public).await;
    assert_eq!(signer(&app.public).await, current);

    assert_eq!(gauge(&app, &ops, "handover_gate_held").await, 1, "held from the planned instant");
    assert_eq!(gauge(&app, &ops, "next_rotation_seconds").await, 0, "the hand-over is due and held");
    let report = partners(&app, &ops).await;
    assert_eq!(partner_named(&report, "alpha")["key_sets"][0]["gate"]["gate"], "waiting", "{report}");
    let printed = schedule(&app);
    let current_line = key_line(&printed, &current);
    assert!(current_line.contains("held by gate"), "{printed}");
    assert!(printed.contains(&format!("waits for alpha to fetch {}", next.kid)), "{printed}");
    assert!(!printed.contains("~-"), "{printed}");
}
