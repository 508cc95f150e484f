//! The operator console: a real headless browser signs in, reads each page (the key-set
//! timeline checked against `keys schedule --json`) and signs out; who is refused; and the
//! cookie, CSP and anti-forgery rules, over plain HTTP and mutual TLS.

use std::path::PathBuf;
use std::time::Duration;

use keyward::config::{Config, PartnerConfig};
use keyward::ops::clients::ClientOptions;
use keyward::policy::permission::Permission;
use keyward::seal::MasterKey;
use serde_json::Value;

use crate::browser::Browser;
use crate::certs::{https_builder, Ca};
use crate::helpers::{
    keyward, now, on_both_stores, spawn_app, spawn_app_on, spawn_app_with, spawn_in, test_config, TestApp,
};
use crate::tls::{https, spawn_tls};

/// Where the test writes the README's pictures.
fn screenshot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console").join(format!("{name}.png"))
}

/// A client holding exactly `permissions`.
async fn client_with(app: &TestApp, name: &str, permissions: &[&str]) -> String {
    let options = ClientOptions {
        permissions: permissions.iter().map(|p| p.parse::<Permission>().unwrap()).collect(),
        ..ClientOptions::default()
    };
    let (token, _) =
        keyward::ops::clients::create(&app.store, &app.config, name, &[], false, options, 0).await.unwrap();
    app.reload().await;
    token.to_string()
}

/// Fast rotation, one partner (alpha, 127.0.0.2) that gates hand-overs, never fetches, and
/// holds the hand-over two seconds after its planned instant; the console on.
fn held_gate(config: &mut Config) {
    let set = &mut config.key_sets[0];
    for span in [&mut set.publish_ahead, &mut set.rotate_every, &mut set.retain_after] {
        *span = keyward::config::Duration::from_secs(3);
    }
    set.jwks_max_age = keyward::config::Duration::from_secs(2);
    set.clock_skew = keyward::config::Duration::from_secs(1);
    let name = set.name.clone();
    let alpha: PartnerConfig = toml::from_str(&format!(
        "name = \"alpha\"\nkey_sets = [\"{name}\"]\nmatch = {{ cidrs = [\"127.0.0.2\"] }}\ngate_handover = true\n\
         gate_max_wait = \"2s\"\nexpect_fetch_every = \"1h\""
    ))
    .unwrap();
    config.partners = vec![alpha];
    config.server.console = true;
}

/// `keyward keys schedule --json`, run as an operator would beside the running server.
fn schedule_json(app: &TestApp) -> Value {
    let file = app.dir.path().join("keys.toml");
    std::fs::write(&file, toml::to_string(&app.config).unwrap()).unwrap();
    let out = keyward(app.dir.path(), &["--config", file.to_str().unwrap(), "keys", "schedule", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bands a key's schedule entry stands for: (kid, band, from, until).
fn expected_bands(key: &Value) -> Vec<(String, String, i64, Option<i64>)> {
    let at = |field: &str| key[field]["at"].as_i64();
    let kid = key["kid"].as_str().unwrap().to_owned();
    let (published_from, published_until) = (at("published_from"), at("published_until"));
    let (signing_from, signing_until) = (at("signing_from"), at("signing_until"));
    let mut bands = Vec::new();
    if let Some(from) = published_from {
        let until = signing_from.or(published_until);
        if until.is_none_or(|u| u > from) {
            bands.push((kid.clone(), "published".to_owned(), from, until));
        }
    }
    if let Some(from) = signing_from {
        bands.push((kid.clone(), "signing".to_owned(), from, signing_until.or(published_until)));
    }
    if let (Some(from), Some(until)) = (signing_until, published_until) {
        if until > from {
            bands.push((kid, "retained".to_owned(), from, Some(until)));
        }
    }
    bands
}

/// The bands the browser shows for `set`: (kid, band, from, until).
fn shown_bands(browser: &mut Browser, set: &str) -> Vec<(String, String, i64, Option<i64>)> {
    let script = format!(
        "JSON.stringify([...document.querySelectorAll('svg[data-key-set=\"{set}\"] rect.band')].map(r => \
         [r.closest('g').dataset.kid, r.dataset.band, r.dataset.from, r.dataset.until]))"
    );
    // As text: a gate that holds puts moments at the end of time, past a JavaScript number.
    let shown: Vec<(String, String, String, String)> =
        serde_json::from_str(browser.eval(&script).as_str().unwrap()).unwrap();
    shown.into_iter().map(|(kid, band, from, until)| (kid, band, from.parse().unwrap(), until.parse().ok())).collect()
}

/// The cells' text of each body row of `table.<class>`.
fn table_rows(browser: &mut Browser, class: &str) -> Vec<Vec<String>> {
    let script = format!(
        "JSON.stringify([...document.querySelectorAll('table.{class} tbody tr')].map(r => \
         [...r.querySelectorAll('td')].map(d => d.innerText)))"
    );
    serde_json::from_str(browser.eval(&script).as_str().unwrap()).unwrap()
}

async fn sign_in(browser: &mut Browser, app: &TestApp, token: &str) {
    browser.open(&format!("{}/console/sign-in", app.internal));
    browser.fill("#token", token);
    browser.click("form.sign-in button");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_reads_each_page_and_the_timeline_matches_keys_schedule_then_signs_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    held_gate(&mut config);
    let (master, _) = MasterKey::resolve(None, &config.server.master_key_file, true).unwrap();
    let app = spawn_in(dir, config, master).await;
    let set = app.config.key_sets[0].name.clone();
    let admin = keyward::ops::clients::add(&app.store, &app.config, "ops", &[], true, 0).await.unwrap().to_string();
    // Mid-rotation: the first key hands over at once, then is revoked; the next hand-over
    // waits for alpha, which never fetches, and holds.
    let first = app.store.keys_of_set(&set).await.unwrap().into_iter().find(|k| k.activates_at.is_some()).unwrap();
    app.force_rotate().await;
    keyward::ops::revoke(&app.store, app.shared.custody(), &app.config, &first.kid).await.unwrap();
    app.reload().await;
    let held = app
        .eventually(Duration::from_secs(30), || async {
            let report = keyward::ops::partners::report(&app.store, &app.config, now()).await.unwrap();
            report.partners[0].key_sets[0]
                .gate
                .as_ref()
                .is_some_and(|g| matches!(g, keyward::keys::gate::GateState::Held { .. }))
        })
        .await;
    assert!(held, "the hand-over was not held");
    let token = app.client("backend", &["npm-sandbox"]).await;

    let mut browser = Browser::start();
    browser.open(&format!("{}/console/sign-in", app.internal));
    browser.screenshot(&screenshot("sign-in"));
    sign_in(&mut browser, &app, &admin).await;
    assert_eq!(browser.path(), "/console/keys");

    let schedule = schedule_json(&app);
    let keys = schedule[0]["keys"].as_array().unwrap();
    let expected: Vec<_> = keys.iter().flat_map(expected_bands).collect();
    assert_eq!(shown_bands(&mut browser, &set), expected, "{schedule}");
    let states: Vec<&str> = keys.iter().map(|k| k["state"].as_str().unwrap()).collect();
    assert!(states.contains(&"revoked") && states.contains(&"current") && states.contains(&"next"), "{states:?}");
    let revoked =
        browser.eval(&format!("document.querySelector('g[data-kid=\"{}\"] .revoked-mark') !== null", first.kid));
    assert_eq!(revoked, Value::Bool(true), "the revoked key is not marked");
    assert_eq!(browser.eval("document.querySelector('svg .gate-held').dataset.gate"), "held");
    assert_eq!(browser.eval("document.querySelectorAll('svg line.now').length"), 1);
    for key in keys {
        let kid = key["kid"].as_str().unwrap();
        assert!(browser.eval("document.querySelector('table').innerText").as_str().unwrap().contains(kid));
    }
    browser.screenshot(&screenshot("keys"));

    browser.open(&format!("{}/console/partners", app.internal));
    let text = browser.eval("document.querySelector('main').innerText").as_str().unwrap().to_owned();
    assert!(
        text.contains("alpha") && text.contains("never") && text.contains("OVERDUE") && text.contains("HELD"),
        "{text}"
    );
    browser.screenshot(&screenshot("partners"));

    app.sign_ok("npm-sandbox", &token, &serde_json::json!({"sub": "console"})).await;
    let counted = app
        .eventually(Duration::from_secs(10), || async {
            !app.store.issuance_per_minute(now() - 60).await.unwrap().is_empty()
        })
        .await;
    assert!(counted, "the ledger did not record the token");
    browser.open(&format!("{}/console/health", app.internal));
    assert_eq!(browser.eval("document.querySelector('figure.rate').dataset.profile"), "npm-sandbox");
    assert_eq!(browser.eval("document.querySelector('figure.rate').dataset.total"), "1");
    let master_id = app.master.id().to_owned();
    assert!(browser.html().contains(&master_id));
    // The recent admin events, newest first: the `clients add` above, by this test's store.
    let events = table_rows(&mut browser, "events");
    assert!(!events.is_empty() && events.len() <= 20, "{events:?}");
    let actor = app.store.trail().by.actor.name();
    assert!(
        events.iter().any(|e| e[1] == actor && e[2] == "client.added" && e[3] == "client:ops"),
        "no client.added of ops by {actor}: {events:?}"
    );
    let times: Vec<&String> = events.iter().map(|e| &e[0]).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "not newest first: {times:?}");
    assert!(!browser.html().contains("config_sha256"), "an event's after values are shown");
    // The replica serving the page is listed, with the version it started.
    let replica = app.shared.store().trail().writer.to_string();
    let replicas = table_rows(&mut browser, "replicas");
    let this = replicas.iter().find(|r| r[0].starts_with(&replica)).unwrap_or_else(|| panic!("{replicas:?}"));
    assert_eq!(this[1], env!("CARGO_PKG_VERSION"));
    assert!(this[0].ends_with("(this page)"), "{this:?}");
    assert_eq!(browser.eval("document.querySelectorAll('.needs-events-read').length"), 0);
    for table in ["events", "replicas"] {
        let caption = browser.eval(&format!("document.querySelector('table.{table} caption') !== null"));
        assert_eq!(caption, Value::Bool(true), "{table} has no caption");
    }
    browser.screenshot(&screenshot("health"));

    // No page carries a token or a secret: not the admin's, not the backend's.
    for page in ["keys", "partners", "health"] {
        browser.open(&format!("{}/console/{page}", app.internal));
        let html = browser.html();
        for secret in [&admin, &token] {
            // The part after `kw_<id>_`: the secret itself (base64url, so it may hold '_' too).
            let secret_part = secret.splitn(3, '_').nth(2).unwrap();
            assert!(!html.contains(secret_part), "{page} shows a token");
        }
    }

    browser.click("form.sign-out button");
    assert_eq!(browser.path(), "/console/sign-in");
    let cookies = browser.cookies();
    assert!(!cookies.as_array().unwrap().iter().any(|c| c["name"] == "kw_console"), "{cookies}");
    browser.open(&format!("{}/console/keys", app.internal));
    assert_eq!(browser.path(), "/console/sign-in", "the session outlived sign-out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_read_permissions_and_a_browser_without_a_session_are_refused() {
    let app = spawn_app_with(|c| c.server.console = true).await;
    let signer = app.client("backend", &["npm-sandbox"]).await;
    let partners_only = client_with(&app, "partner-desk", &["partners:read"]).await;
    let mut browser = Browser::start();
    for page in ["keys", "partners", "health", ""] {
        browser.open(&format!("{}/console/{page}", app.internal));
        assert_eq!(browser.path(), "/console/sign-in", "/console/{page} without a session");
    }
    sign_in(&mut browser, &app, &signer).await;
    assert_eq!(browser.path(), "/console/sign-in");
    let refusal = browser.eval("document.querySelector('.refusal').innerText");
    assert!(refusal.as_str().unwrap().contains("neither keys:read nor partners:read"), "{refusal}");
    assert!(!browser.cookies().as_array().unwrap().iter().any(|c| c["name"] == "kw_console"));

    sign_in(&mut browser, &app, &partners_only).await;
    assert_eq!(browser.path(), "/console/partners");
    browser.open(&format!("{}/console/keys", app.internal));
    assert!(browser.eval("document.querySelector('.refusal').innerText").as_str().unwrap().contains("keys:read"));
    assert_eq!(browser.eval("document.querySelectorAll('svg.timeline').length"), 0);

    // keys:read without events:read: the health page, but neither events nor replicas.
    let keys_only = client_with(&app, "key-desk", &["keys:read"]).await;
    browser.click("form.sign-out button");
    sign_in(&mut browser, &app, &keys_only).await;
    browser.open(&format!("{}/console/health", app.internal));
    assert_eq!(browser.path(), "/console/health");
    let needs =
        browser.eval("JSON.stringify([...document.querySelectorAll('.needs-events-read')].map(p => p.innerText))");
    let needs: Vec<String> = serde_json::from_str(needs.as_str().unwrap()).unwrap();
    assert_eq!(needs.len(), 2, "{needs:?}");
    assert!(needs.iter().all(|line| line.contains("events:read")), "{needs:?}");
    assert_eq!(browser.eval("document.querySelectorAll('table.events, table.replicas').length"), 0);
    assert!(!browser.html().contains("client.added"), "an event is shown without events:read");
}

/// The sign-in form's anti-forgery value and its cookie.
async fn sign_in_form(http: &reqwest::Client, base: &str) -> (String, String) {
    let response = http.get(format!("{base}/console/sign-in")).send().await.unwrap();
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    let html = response.text().await.unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    (csrf, cookie.split(';').next().unwrap().to_owned())
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn the_console_is_off_unless_configured() {
    let app = spawn_app().await;
    let response = no_redirects().get(format!("{}/console/sign-in", app.internal)).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn session_cookies_are_http_only_and_strict_pages_have_a_strict_csp_and_forms_need_their_token() {
    let app = spawn_app_with(|c| c.server.console = true).await;
    let admin = keyward::ops::clients::add(&app.store, &app.config, "ops", &[], true, 0).await.unwrap().to_string();
    app.reload().await;
    let http = no_redirects();
    let base = &app.internal;
    let (csrf, form_cookie) = sign_in_form(&http, base).await;

    // Without the form's cookie (a post from another site's page), or with another value:
    // refused, and no session.
    for (cookie, value) in [(None, csrf.as_str()), (Some(form_cookie.as_str()), "forged")] {
        let mut request = http.post(format!("{base}/console/sign-in")).form(&[("csrf", value), ("token", &admin)]);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        assert!(!response
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("kw_console=")));
    }

    let response = http
        .post(format!("{base}/console/sign-in"))
        .header("cookie", &form_cookie)
        .form(&[("csrf", csrf.as_str()), ("token", &admin)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let session = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("kw_console="))
        .unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console/", "Max-Age=1800"] {
        assert!(session.contains(flag), "{session} lacks {flag}");
    }
    assert!(!session.contains("Secure"), "plain HTTP: a Secure cookie would never come back");
    let session = session.split(';').next().unwrap().to_owned();

    for page in ["keys", "partners", "health", "sign-in"] {
        let response = http.get(format!("{base}/console/{page}")).header("cookie", &session).send().await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
        let csp = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("script-src") && !csp.contains("unsafe"), "{csp}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let html = response.text().await.unwrap();
        assert!(
            !html.contains("<script") && !html.contains(" style=") && !html.contains("http://")
                || html.contains("xmlns=\"http://www.w3.org/2000/svg\"")
        );
        assert!(!html.contains("<script") && !html.contains(" style="), "{page} has inline script or style");
        assert!(!html.contains(admin.splitn(3, '_').nth(2).unwrap()), "{page} shows the token");
    }
    let css = http.get(format!("{base}/console/console.css")).send().await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    // Signing out takes the session's own form token.
    let keys = http.get(format!("{base}/console/keys")).header("cookie", &session).send().await.unwrap();
    let html = keys.text().await.unwrap();
    let out_csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let forged = http.post(format!("{base}/console/sign-out")).header("cookie", &session).form(&[("csrf", "forged")]);
    assert_eq!(forged.send().await.unwrap().status(), 400);
    let still = http.get(format!("{base}/console/keys")).header("cookie", &session).send().await.unwrap();
    assert_eq!(still.status(), 200, "a forged sign-out ended the session");
    let out = http.post(format!("{base}/console/sign-out")).header("cookie", &session).form(&[("csrf", &out_csrf)]);
    let out = out.send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let after = http.get(format!("{base}/console/keys")).header("cookie", &session).send().await.unwrap();
    assert_eq!((after.status().as_u16(), after.headers()["location"].to_str().unwrap()), (303, "/console/sign-in"));
}

#[tokio::test]
async fn a_certificate_only_client_signs_in_by_its_certificate_and_the_cookie_is_secure_under_tls() {
    let ca = Ca::new("test CA");
    let clients_ca = Ca::new("clients CA");
    let machine = clients_ca.client("machine");
    let app = spawn_tls(None, Some(&ca.server(None)), Some(&clients_ca), |c| c.server.console = true).await;
    let output = crate::helpers::keyward_command(
        app.dir.path(),
        &["clients", "add", "machine", "--admin", "--cert-sha256", &machine.fingerprint(), "--cert-only"],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    app.reload().await;
    let http = https_builder(&ca, Some(&machine)).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let form = http.get(https(&app.internal, "/console/sign-in")).send().await.unwrap();
    let cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Secure"), "{cookie}");
    let html = form.text().await.unwrap();
    assert!(html.contains("certificate of client") && html.contains("machine"), "{html}");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let signed_in = http
        .post(https(&app.internal, "/console/sign-in"))
        .header("cookie", cookie.split(';').next().unwrap())
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let session = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("kw_console="))
        .unwrap();
    assert!(session.contains("Secure") && session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    let keys = http
        .get(https(&app.internal, "/console/keys"))
        .header("cookie", session.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), 200);
}

on_both_stores! {
    async fn the_ledger_counts_tokens_per_profile_and_minute_on_either_store(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        let token = app.client("backend", &["npm-sandbox"]).await;
        for sub in ["a", "b"] {
            app.sign_ok("npm-sandbox", &token, &serde_json::json!({"sub": sub})).await;
        }
        let counted = app
            .eventually(Duration::from_secs(10), || async {
                let minutes = app.store.issuance_per_minute(now() - 120).await.unwrap();
                minutes.iter().map(|m| m.tokens).sum::<i64>() == 2
            })
            .await;
        assert!(counted, "the ledger's rows were not counted");
        let minutes = app.store.issuance_per_minute(now() - 120).await.unwrap();
        assert!(minutes.iter().all(|m| m.profile == "npm-sandbox" && m.minute % 60 == 0), "{minutes:?}");
        assert!(app.store.issuance_per_minute(now() + 60).await.unwrap().is_empty());
    }
}

on_both_stores! {
    async fn the_health_page_reads_the_newest_events_first_on_either_store(backend: Backend) {
        let app = spawn_app_on(backend, |_| {}).await;
        for name in ["c1", "c2", "c3", "c4"] {
            keyward::ops::clients::add(&app.store, &app.config, name, &["npm-sandbox".to_owned()], false, 0).await.unwrap();
        }
        let added = keyward::audit::EventFilter { action: Some("client.added".into()), ..Default::default() };
        let latest = app.store.latest_events(&added, 3).await.unwrap();
        let objects: Vec<&str> = latest.iter().map(|e| e.object.as_str()).collect();
        assert_eq!(objects, ["client:c4", "client:c3", "client:c2"]);
        // The server's own start, found by its action.
        let starts = keyward::audit::EventFilter { action: Some("server.started".into()), ..Default::default() };
        let started = app.store.latest_events(&starts, 10).await.unwrap();
        let replica = app.shared.store().trail().writer.to_string();
        assert!(started.iter().any(|e| e.object == format!("replica:{replica}")), "{started:?}");
    }
}
