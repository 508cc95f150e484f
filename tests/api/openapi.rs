//! The OpenAPI document against the running app: every documented operation is sent valid
//! and invalid requests (auth, path ids, bodies, query values), and every answer must be
//! documented for that operation: its status, its content type and, for JSON, the
//! required properties of the documented schema.

use std::collections::BTreeSet;

use keyward::config::Duration as Span;
use keyward::config::{ExchangeConfig, ExchangeStyle};
use keyward::keys::Algorithm;
use keyward::keys::KeyState;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::spawn_app_with;

/// The document, with `$ref`s followed on demand.
struct Doc(Value);

impl Doc {
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
            Some(name) => &self.0["components"]["schemas"][name],
            None => schema,
        }
    }

    /// Why `operation` should not have answered this way, if it should not.
    fn mismatch(&self, operation: &Value, status: u16, content_type: Option<&str>, body: &[u8]) -> Option<String> {
        let responses = &operation["responses"];
        let Some(documented) = responses.get(status.to_string()).or_else(|| responses.get("default")) else {
            return Some(format!("status {status} is not documented"));
        };
        let content = documented["content"].as_object().filter(|c| !c.is_empty());
        let media = content_type.map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
        let Some(content) = content else {
            return (!body.is_empty()).then(|| format!("{status} has a body but no documented content"));
        };
        let Some(media) = media else {
            return (!body.is_empty()).then(|| format!("{status} has a body without a content type"));
        };
        let Some(entry) = content.get(&media) else {
            let documented: Vec<&String> = content.keys().collect();
            return Some(format!("{status} is {media}, documented as {documented:?}"));
        };
        let is_json = media == "application/json" || media.ends_with("+json");
        if body.is_empty() || !is_json {
            return None;
        }
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Some(format!("{status} {media} body is not JSON"));
        };
        let schema = self.resolve(&entry["schema"]);
        if schema["type"] == "object" && !value.is_object() {
            return Some(format!("{status} body is not an object: {value}"));
        }
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if value.get(required).is_none() {
                return Some(format!("{status} body lacks required {required:?}: {value}"));
            }
        }
        None
    }
}

/// A request body and the content type it is sent with.
fn bodies() -> Vec<(&'static str, String)> {
    let json = "application/json";
    let mut bodies: Vec<(&str, String)> = [
        json!({"sub": "acct-1"}),
        json!({"sub": "acct-1", "ttl_seconds": 60, "claims": {"obo_user": "u@example.com"}}),
        json!({"force": true}),
        json!({"force": false}),
        json!({}),
        Value::Null,
        json!([]),
        json!("sub"),
        json!(12),
        json!({"force": "yes"}),
        json!({"unknown": 1}),
        json!({"sub": 12}),
        json!({"sub": "has spaces"}),
        json!({"sub": "acct-1", "ttl_seconds": -1}),
        json!({"sub": "acct-1", "claims": {"obo_user": ["u"]}}),
        json!({"sub": "acct-1", "claims": {"role": "admin"}}),
        json!({"sub": "acct-1", "cache": false}),
    ]
    .into_iter()
    .map(|v| (json, v.to_string()))
    .collect();
    bodies.extend([
        (json, r#"{"sub": "a", "sub": "b"}"#.to_owned()),
        (json, r#"{"force": true, "force": false}"#.to_owned()),
        (json, "{\"sub\": ".to_owned()),
        (json, json!({"sub": "a", "claims": {"obo_user": "x".repeat(17 * 1024)}}).to_string()),
        ("text/plain", r#"{"sub": "acct-1"}"#.to_owned()),
        ("application/merge-patch+json", r#"{"force": true}"#.to_owned()),
    ]);
    bodies
}

/// A partner token endpoint that hands out a token for any assertion.
fn start_partner() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = || {
        actix_web::App::new().route(
            "/token",
            actix_web::web::post()
                .to(|| async { actix_web::HttpResponse::Ok().json(json!({"token": "partner-token"})) }),
        )
    };
    let server = actix_web::HttpServer::new(app).workers(1).disable_signals().listen(listener).unwrap().run();
    tokio::spawn(server);
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_to_valid_and_invalid_requests_is_documented_in_openapi_json() {
    let partner = start_partner();
    let app = spawn_app_with(|c| {
        c.key_sets[0].algorithm = Algorithm::Es256;
        c.server.rate_limit = 1_000_000;
        c.server.rate_burst = 1_000_000;
        let mut other = c.profiles[0].clone();
        other.name = "other".into();
        let mut exchanging = c.profiles[0].clone();
        exchanging.name = "exchanging".into();
        exchanging.exchange = Some(ExchangeConfig {
            style: ExchangeStyle::BearerAssertion,
            token_url: format!("{partner}/token"),
            token_field: "token".into(),
            account_id: None,
            refresh_url: None,
            timeout: Span::from_secs(5),
        });
        c.profiles.extend([other, exchanging]);
    })
    .await;
    let client = app.client("backend", &["npm-sandbox", "exchanging"]).await;
    let admin = keyward::ops::clients::add(&app.store, &app.config, "ops", &[], true, 0).await.unwrap().to_string();
    app.reload().await;
    let response = app.http.get(format!("{}/openapi.json", app.internal)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc = Doc(response.json().await.unwrap());

    let keys = app.store.keys().await.unwrap();
    let kid_in = |state| keys.iter().find(|k| k.state_at(chrono::Utc::now().timestamp()) == state).unwrap().kid.clone();
    let (current, next) = (kid_in(KeyState::Current), kid_in(KeyState::Next));
    // Valid and unknown values of each path parameter.
    let path_values = |name: &str| -> Vec<String> {
        let values: &[&str] = match name {
            "profile" => &["npm-sandbox", "exchanging", "other", "nope"],
            "name" => &["npm", "nope"],
            "kid" => &[next.as_str(), current.as_str(), "nope"],
            other => panic!("no values for path parameter {other}"),
        };
        values.iter().map(|v| v.to_string()).collect()
    };
    let auths: Vec<Option<String>> = vec![
        None,
        Some("Bearer kw_nope".into()),
        Some("Basic b3BzOm9wcw==".into()),
        Some(format!("Bearer {client}")),
        Some(format!("Bearer {admin}")),
    ];

    let mut mismatches = Vec::new();
    let mut sent = 0;
    let mut seen: BTreeSet<(String, String, u16)> = BTreeSet::new();
    let paths = doc.0["paths"].as_object().unwrap().clone();
    for (template, item) in &paths {
        for (method, operation) in item.as_object().unwrap() {
            let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
            // Every combination of path parameter values (one parameter per path here).
            let mut urls = vec![template.clone()];
            for parameter in parameters.iter().filter(|p| p["in"] == "path") {
                let name = parameter["name"].as_str().unwrap();
                urls = urls
                    .iter()
                    .flat_map(|url| path_values(name).into_iter().map(move |v| url.replace(&format!("{{{name}}}"), &v)))
                    .collect();
            }
            // Query strings: none, each allowed value (or the documented example of a free
            // one), an unknown one, an empty one, a repeated one.
            let mut queries = vec![String::new()];
            for parameter in parameters.iter().filter(|p| p["in"] == "query") {
                let name = parameter["name"].as_str().unwrap();
                let mut allowed = doc.resolve(&parameter["schema"])["enum"].as_array().cloned().unwrap_or_default();
                allowed.extend(parameter.get("example").cloned());
                assert!(
                    !allowed.is_empty(),
                    "query parameter {name} of {method} {template} lists no allowed values and no example"
                );
                for value in &allowed {
                    let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                    queries.push(format!("?{name}={value}"));
                }
                queries.extend([format!("?{name}=bogus"), format!("?{name}="), format!("?{name}=pem&{name}=jwk")]);
            }
            let bodies: Vec<Option<(&str, String)>> = if operation.get("requestBody").is_some() {
                std::iter::once(None).chain(bodies().into_iter().map(Some)).collect()
            } else {
                vec![None]
            };
            for url in &urls {
                for query in &queries {
                    for auth in &auths {
                        for body in &bodies {
                            let mut request = app.http.request(
                                method.to_uppercase().parse::<Method>().unwrap(),
                                format!("{}{url}{query}", app.internal),
                            );
                            if let Some(auth) = auth {
                                request = request.header("authorization", auth);
                            }
                            if let Some((content_type, body)) = body {
                                request = request.header("content-type", *content_type).body(body.clone());
                            }
                            let response = request.send().await.unwrap();
                            sent += 1;
                            let status = response.status().as_u16();
                            let content_type =
                                response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
                            let bytes = response.bytes().await.unwrap();
                            seen.insert((method.clone(), template.clone(), status));
                            if let Some(why) = doc.mismatch(operation, status, content_type.as_deref(), &bytes) {
                                let sent_body =
                                    body.as_ref().map(|(t, b)| format!("{t} {:.60}", b)).unwrap_or_default();
                                mismatches.push(format!(
                                    "{} {url}{query} auth={:?} body={sent_body}: {why}",
                                    method.to_uppercase(),
                                    auth.as_deref().map(|a| &a[..a.len().min(12)])
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {sent} answers do not match the document:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The valid requests were valid and the invalid ones invalid: each operation answered
    // 2xx at least once, and each that takes a token, a body or a parameter also 4xx.
    for (template, item) in &paths {
        for (method, operation) in item.as_object().unwrap() {
            let statuses: Vec<u16> =
                seen.iter().filter(|(m, t, _)| m == method && t == template).map(|(_, _, s)| *s).collect();
            assert!(
                statuses.iter().any(|s| (200..300).contains(s)),
                "{method} {template} never succeeded: {statuses:?}"
            );
            let takes_input = operation.get("security").is_some()
                || operation.get("requestBody").is_some()
                || operation.get("parameters").is_some();
            if takes_input {
                assert!(
                    statuses.iter().any(|s| (400..500).contains(s)),
                    "{method} {template} never refused: {statuses:?}"
                );
            }
        }
    }
    eprintln!("{sent} requests, statuses seen: {seen:?}");
}
