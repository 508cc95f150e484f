//! The internal listener: the authenticated signing API for backends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::app::ledger::{Ledger, NotRecorded};
use crate::app::snapshot::{Recheck, Shared, Snapshot};
use crate::config::ExchangeStyle;
use crate::http::problem::{ApiError, Problem};
use crate::http::public::{readiness_json, status_json, HealthStatus};
use crate::keys::export::{self, Format};
use crate::keys::rotation::{Exposure, Refused, Step};
use crate::ops::{self, ActionError, Outcome};
use crate::partner::cache::TokenCache;
use crate::partner::exchange::{self, ExchangeError};
use crate::policy::client::Client;
use crate::policy::profile::{Prepared, Profile, Refusal, RefusalKind, SignRequest, SignedBy};
use crate::policy::ratelimit::{Limit, RateLimiter};
use crate::store::rows::Entry;

/// Route paths, shared by the router and the OpenAPI document.
pub mod paths {
    /// Sign an assertion.
    pub const SIGN: &str = "/v1/profiles/{profile}/sign";
    /// Trade an assertion for a partner token.
    pub const TOKEN: &str = "/v1/profiles/{profile}/token";
    /// Key sets and their timelines (admin).
    pub const KEY_SETS: &str = "/v1/key-sets";
    /// Planned rotation (admin).
    pub const ROTATE: &str = "/v1/key-sets/{name}/rotate";
    /// Emergency revocation (admin).
    pub const REVOKE: &str = "/v1/keys/{kid}/revoke";
    /// A key's public half.
    pub const PUBLIC_KEY: &str = "/v1/keys/{kid}/public";
    /// Prometheus metrics.
    pub const METRICS: &str = "/metrics";
    /// This API's OpenAPI document.
    pub const OPENAPI: &str = "/openapi.json";
    /// Liveness.
    pub const HEALTHZ: &str = "/healthz";
    /// Readiness.
    pub const READYZ: &str = "/readyz";
}

/// Every route of the internal listener, as (method, path): what `configure` registers.
pub const ROUTES: [(&str, &str); 10] = [
    ("post", paths::SIGN),
    ("post", paths::TOKEN),
    ("get", paths::KEY_SETS),
    ("post", paths::ROTATE),
    ("post", paths::REVOKE),
    ("get", paths::PUBLIC_KEY),
    ("get", paths::METRICS),
    ("get", paths::OPENAPI),
    ("get", paths::HEALTHZ),
    ("get", paths::READYZ),
];

/// The OpenAPI 3 document, generated from the handlers' annotations and the body types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "keyward internal API", description = "Signing, token exchange and key administration."),
    paths(sign, token, key_sets, rotate, revoke, public_key, metrics, openapi, healthz, readyz),
    components(schemas(Format)),
    modifiers(&BearerAuth, &ProblemResponses)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// [`Problem`] bodies are `application/problem+json` (utoipa labels every body
/// `application/json`): relabelled once here rather than on each route's errors.
struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        let is_problem = |content: &utoipa::openapi::Content| matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"));
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.head, &mut item.put, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                for response in operation.responses.responses.values_mut() {
                    let RefOr::T(response) = response else { continue };
                    if response.content.get("application/json").is_some_and(is_problem) {
                        if let Some(problem) = response.content.shift_remove("application/json") {
                            response.content.insert("application/problem+json".to_owned(), problem);
                        }
                    }
                }
            }
        }
    }
}

#[utoipa::path(get, path = paths::OPENAPI, tag = "operations",
    responses((status = 200, description = "This document", body = Object, content_type = "application/json")))]
async fn openapi() -> HttpResponse {
    use utoipa::OpenApi;
    HttpResponse::Ok().content_type("application/json").body(ApiDoc::openapi().to_json().unwrap_or_default())
}

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the internal handlers need.
pub struct InternalState {
    shared: Arc<Shared>,
    profiles: HashMap<String, Profile>,
    tokens: TokenCache,
    http: reqwest::Client,
    ledger: Ledger,
    limiter: RateLimiter,
    started: Instant,
}

impl InternalState {
    /// Handlers over the shared snapshot, the compiled profiles and the ledger.
    pub fn new(shared: Arc<Shared>, profiles: HashMap<String, Profile>, ledger: Ledger) -> Self {
        InternalState {
            shared,
            profiles,
            tokens: TokenCache::default(),
            http: reqwest::Client::new(),
            ledger,
            limiter: RateLimiter::default(),
            started: Instant::now(),
        }
    }

    /// How long a request body may take to arrive.
    fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shared.config().server.request_body_timeout.as_secs())
    }

    /// Admits one request of `client` under its rate limit (or the server default).
    fn admit(&self, client: &Client) -> Result<(), ApiError> {
        let server = &self.shared.config().server;
        let (rate, burst) = client.rate.unwrap_or((server.rate_limit, server.rate_burst));
        let limit = Limit { rate: f64::from(rate), burst: f64::from(burst) };
        self.limiter.admit(&client.name, limit, self.started.elapsed().as_secs_f64()).map_err(|wait| {
            self.shared.metrics().rate_limited(&client.name);
            ApiError::TooManyRequests(wait)
        })
    }
}

/// Registers the internal routes on an app: each answers its method and 405 to others.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(resource(paths::SIGN, web::post().to(sign), "POST"))
        .service(resource(paths::TOKEN, web::post().to(token), "POST"))
        .service(resource(paths::KEY_SETS, web::get().to(key_sets), "GET"))
        .service(resource(paths::ROTATE, web::post().to(rotate), "POST"))
        .service(resource(paths::REVOKE, web::post().to(revoke), "POST"))
        .service(resource(paths::PUBLIC_KEY, web::get().to(public_key), "GET"))
        .service(resource(paths::METRICS, web::get().to(metrics), "GET"))
        .service(resource(paths::OPENAPI, web::get().to(openapi), "GET"))
        .service(resource(paths::HEALTHZ, web::get().to(healthz), "GET, HEAD").route(web::head().to(healthz)))
        .service(resource(paths::READYZ, web::get().to(readyz), "GET, HEAD").route(web::head().to(readyz)))
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NotFound("no such resource".to_owned()))
        }));
}

/// A resource answering `route`, and 405 with `Allow: allow` to any other method.
fn resource(path: &str, route: actix_web::Route, allow: &'static str) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move || async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) }))
}

/// Prometheus text format; key set gauges are computed at scrape time.
#[utoipa::path(get, path = paths::METRICS, tag = "operations", responses((status = 200, description = "Prometheus text exposition", content_type = "application/openmetrics-text")))]
async fn metrics(state: web::Data<InternalState>) -> HttpResponse {
    let now = chrono::Utc::now().timestamp();
    let metrics = state.shared.metrics();
    for (name, view) in &state.shared.snapshot().key_sets {
        let age = view.activated_at.map_or(0, |at| now - at);
        let until = view.rotation_at.map_or(0, |at| (at - now).max(0));
        metrics.key_set(name, age, until);
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(metrics.render())
}

#[utoipa::path(method(get, head), path = paths::HEALTHZ, tag = "operations",
    responses((status = 200, description = "The process is alive", body = HealthStatus)))]
async fn healthz() -> HttpResponse {
    status_json(HttpResponse::Ok(), "ok")
}

#[utoipa::path(method(get, head), path = paths::READYZ, tag = "operations",
    responses((status = 200, description = "Ready: the database answers, the ledger commits and every key set can sign", body = HealthStatus),
        (status = 503, description = "Not ready; `reason` says why", body = HealthStatus, content_type = "application/json")))]
async fn readyz(state: web::Data<InternalState>) -> HttpResponse {
    readiness_json(state.shared.readiness())
}

/// The request's bearer token, if it sent one in the `Authorization: Bearer` form.
fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or(ApiError::Unauthorized)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized);
    }
    Ok(token.trim())
}

/// The snapshot to serve the request from, one that knows its bearer token if the store
/// does: a token `keyward clients add` printed a moment ago works on the next request,
/// before the change watch reloads.
async fn snapshot_for(req: &HttpRequest, state: &InternalState) -> Result<Arc<Snapshot>, ApiError> {
    let snapshot = state.shared.snapshot();
    let token = bearer(req)?;
    if snapshot.clients.authenticate(token).is_some() {
        return Ok(snapshot);
    }
    match state.shared.recheck(token).await {
        Recheck::Known(fresh) => Ok(fresh),
        Recheck::Unknown => Err(ApiError::UnknownToken),
        Recheck::NotChecked => Err(ApiError::TokenNotChecked),
    }
}

/// The client behind the request's bearer token, within its rate limit.
fn authenticate<'a>(req: &HttpRequest, snapshot: &'a Snapshot, state: &InternalState) -> Result<&'a Client, ApiError> {
    let client = identify(req, snapshot)?;
    state.admit(client)?;
    Ok(client)
}

/// The client behind the request's bearer token (in a snapshot from [`snapshot_for`]).
fn identify<'a>(req: &HttpRequest, snapshot: &'a Snapshot) -> Result<&'a Client, ApiError> {
    snapshot.clients.authenticate(bearer(req)?).ok_or(ApiError::UnknownToken)
}

/// The calling client, if it may use the admin routes.
fn admin<'a>(req: &HttpRequest, snapshot: &'a Snapshot, state: &InternalState) -> Result<&'a Client, ApiError> {
    let client = authenticate(req, snapshot, state)?;
    if client.admin {
        Ok(client)
    } else {
        Err(ApiError::Forbidden("the admin routes (create the client with --admin)".to_owned()))
    }
}

impl From<ActionError> for ApiError {
    fn from(err: ActionError) -> Self {
        match err {
            ActionError::UnknownSet(name) => ApiError::NotFound(format!("no key set is named {name:?}")),
            ActionError::Refused(Refused::UnknownKey(kid)) => ApiError::NotFound(format!("no key {kid}")),
            ActionError::Refused(Refused::TooEarly { kid, not_before }) => ApiError::Conflict(format!(
                "the next key {kid} has not been published for publish_ahead yet; it may sign from {not_before} \
                 (Unix time); send {{\"force\": true}} to rotate now anyway"
            )),
            ActionError::Refused(refused) => ApiError::Conflict(refused.to_string()),
            ActionError::Failed(err) => ApiError::Internal(err),
        }
    }
}

#[utoipa::path(get, path = paths::KEY_SETS, tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Every key set's rules and keys' timelines", body = KeySets),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem)))]
async fn key_sets(req: HttpRequest, state: web::Data<InternalState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &*snapshot_for(&req, &state).await?, &state)?;
    let now = chrono::Utc::now().timestamp();
    let key_sets = ops::schedule(state.shared.store(), state.shared.config(), now).await?;
    Ok(no_store_json(&KeySets { key_sets }))
}

/// Every key set's rules and keys' timelines.
#[derive(Serialize, utoipa::ToSchema)]
struct KeySets {
    /// Per set: `name`, `rotate_every`, `publish_ahead`, `retain_for` (seconds) and `keys`.
    #[schema(value_type = Vec<Object>)]
    key_sets: Vec<ops::SetSchedule>,
}

/// Optional body of the rotate route.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    force: bool,
}

/// What a key action did.
#[derive(Serialize, utoipa::ToSchema)]
struct ActionAnswer {
    key_set: String,
    /// Each step: `{"step": "promote" | "revoke" | "retire" | "create_current" | "create_next", "kid"?}`.
    #[schema(value_type = Vec<Object>)]
    steps: Vec<Step>,
    /// The set's signing key afterwards.
    signing_kid: Option<String>,
    /// When the action made another key sign: `kid`, `published_for` and `cache_window`
    /// (seconds), `within_cache_window`, and `may_be_rejected_until` (Unix seconds or null).
    #[schema(value_type = Option<Object>)]
    new_signer: Option<Exposure>,
}

/// Answers a key action with its steps, the set's signing key afterwards and, if the action
/// made a new key sign, how long verifiers have had it.
async fn after_action(state: &InternalState, outcome: Outcome) -> Result<HttpResponse, ApiError> {
    state.shared.reload().await?;
    let snapshot = state.shared.snapshot();
    let signing_kid =
        snapshot.key_sets.get(&outcome.key_set).and_then(|v| v.signer.as_ref()).map(|s| s.kid().to_owned());
    let Outcome { key_set, steps, new_signer } = outcome;
    Ok(no_store_json(&ActionAnswer { key_set, steps, signing_kid, new_signer }))
}

#[utoipa::path(post, path = paths::ROTATE, tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "Key set")),
    request_body(content = Option<RotateRequest>, description = "Optional: no body or `null` means `{\"force\": false}`"),
    responses((status = 200, description = "Steps taken and the new signing kid", body = ActionAnswer),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 408, body = Problem),
        (status = 409, body = Problem, description = "The next key was published too recently"),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem)))]
async fn rotate(
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    let client = admin(&req, &*snapshot_for(&req, &state).await?, &state)?.name.clone();
    let body = read_body(&req, payload, state.body_timeout()).await?;
    // No body and `null` both mean the defaults.
    let request: RotateRequest =
        if body.is_empty() { None } else { parse_json::<Option<RotateRequest>>(&body)? }.unwrap_or_default();
    let shared = &state.shared;
    let now = chrono::Utc::now().timestamp();
    let steps = ops::rotate(shared.store(), shared.master(), shared.config(), &name, now, request.force).await?;
    tracing::info!(client, key_set = %name, force = request.force, "rotation requested through the admin API");
    after_action(&state, Outcome::of(shared.store(), shared.config(), &name, steps, now).await?).await
}

#[utoipa::path(post, path = paths::REVOKE, tag = "admin", security(("bearer" = [])),
    params(("kid" = String, Path, description = "The key's kid")),
    responses((status = 200, description = "Steps taken, the new signing kid and, if the revoked key was signing, how long its successor has been published", body = ActionAnswer),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Already revoked"), (status = 429, body = Problem)))]
async fn revoke(
    req: HttpRequest,
    kid: web::Path<String>,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    let client = admin(&req, &*snapshot_for(&req, &state).await?, &state)?.name.clone();
    let shared = &state.shared;
    let now = chrono::Utc::now().timestamp();
    let outcome = ops::revoke(shared.store(), shared.master(), shared.config(), &kid, now).await?;
    match &outcome.new_signer {
        Some(signer) if signer.within_cache_window => tracing::warn!(
            client,
            kid = %kid,
            key_set = %outcome.key_set,
            new_signer = %signer.kid,
            published_for_s = signer.published_for,
            cache_window_s = signer.cache_window,
            may_be_rejected_until = signer.may_be_rejected_until,
            "key revoked through the admin API; its successor was published for less than jwks_max_age + \
             clock_skew: verifiers that cached the JWKS before it appeared may reject its tokens until then"
        ),
        Some(signer) => tracing::warn!(
            client,
            kid = %kid,
            key_set = %outcome.key_set,
            new_signer = %signer.kid,
            published_for_s = signer.published_for,
            cache_window_s = signer.cache_window,
            "key revoked through the admin API; its successor was published long enough for cached JWKS to hold it"
        ),
        None => tracing::warn!(client, kid = %kid, key_set = %outcome.key_set, "key revoked through the admin API"),
    }
    after_action(&state, outcome).await
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`] within `timeout`.
async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    timeout: std::time::Duration,
) -> Result<T, ApiError> {
    parse_json(&read_body(req, payload, timeout).await?)
}

/// Reads a body of at most [`MAX_BODY_BYTES`], which must be JSON if it says what it is,
/// and must arrive within `timeout` (actix-web's own timeout covers the headers only).
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    timeout: std::time::Duration,
) -> Result<actix_web::web::Bytes, ApiError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let media = content_type.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
        let json = media.eq_ignore_ascii_case("application/json") || media.to_ascii_lowercase().ends_with("+json");
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    tokio::time::timeout(timeout, payload.to_bytes_limited(MAX_BODY_BYTES))
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout.as_secs()))?
        .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?
        .map_err(|_| ApiError::InvalidBody { field: None, detail: "the body could not be read".to_owned() })
}

/// Parses JSON, naming the offending field. The messages are keyward's own words, never
/// the parser's.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from an array of its fields in order: only objects count.
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'[') {
        return Err(ApiError::InvalidBody { field: None, detail: "the body must be a JSON object".to_owned() });
    }
    // Malformed JSON is reported as such, even after a duplicate.
    let well_formed = || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    if let Some(member) = duplicate_member(body).filter(|_| well_formed()) {
        return Err(ApiError::InvalidBody {
            detail: format!("the member {member:?} appears more than once"),
            field: Some(member),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        body_error(&path, &inner)
    })?;
    deserializer.end().map_err(|err| body_error(".", &err))?;
    Ok(value)
}

/// The path (`claims.role`, `a[2].b`) of the first member whose name appears twice in one
/// object of `body`, at any depth. serde_json keeps the last of two members silently, so
/// this looks before the body is read for real.
fn duplicate_member(body: &[u8]) -> Option<String> {
    let found = std::cell::RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let _ = serde::de::DeserializeSeed::deserialize(
        UniqueMembers { path: String::new(), found: &found },
        &mut deserializer,
    );
    found.into_inner()
}

/// Walks one JSON value, failing at the first duplicate member name (recorded in `found`).
struct UniqueMembers<'a> {
    path: String,
    found: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueMembers<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueMembers<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(UniqueMembers { path: format!("{}[{index}]", self.path), found: self.found })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { name.clone() } else { format!("{}.{name}", self.path) };
            if !seen.insert(name) {
                *self.found.borrow_mut() = Some(path);
                return Err(serde::de::Error::custom("duplicate member"));
            }
            map.next_value_seed(UniqueMembers { path, found: self.found })?;
        }
        Ok(())
    }
}

fn body_error(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = err.to_string();
    let quoted = message.split('`').nth(1).map(str::to_owned);
    let (field, detail) = match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            (None, format!("the body is not valid JSON (line {}, column {})", err.line(), err.column()))
        }
        Category::Data if message.starts_with("unknown field") => {
            let field = quoted.unwrap_or_default();
            (Some(field.clone()), format!("unknown field {field:?}"))
        }
        Category::Data if message.starts_with("missing field") => {
            let field = quoted.unwrap_or_default();
            (Some(field.clone()), format!("the required field {field:?} is missing"))
        }
        Category::Data if path == "." || path == "?" => (None, "the body must be a JSON object".to_owned()),
        Category::Data => (Some(path.to_owned()), format!("{path:?} has the wrong type")),
    };
    ApiError::InvalidBody { field, detail }
}

/// A signed token.
#[derive(Serialize, utoipa::ToSchema)]
struct Signed {
    token: String,
    kid: Option<String>,
    alg: &'static str,
    jti: String,
    issued_at: i64,
    expires_at: i64,
    expires_in: i64,
}

/// A fresh `jti`: the issue time in milliseconds (48 bits) then 80 random bits, base64url.
///
/// The time prefix keeps the ledger's `jti` index local: the rows of one commit land on
/// neighbouring pages instead of one random page each (which cost a page write apiece).
/// Uniqueness rests on the random part: 2^40 tokens in one millisecond before a collision
/// becomes likely.
fn new_jti() -> String {
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    jti_from(chrono::Utc::now().timestamp_millis(), random)
}

fn jti_from(unix_millis: i64, random: [u8; 10]) -> String {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&unix_millis.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal.kind {
        RefusalKind::Malformed => ApiError::InvalidBody { field: Some(refusal.field), detail: refusal.detail },
        RefusalKind::Unacceptable => ApiError::Refused { field: refusal.field, detail: refusal.detail },
        RefusalKind::NotNow => ApiError::Conflict(refusal.detail),
    }
}

/// The authenticated client and the profile it may use.
fn authorize<'a>(
    req: &HttpRequest,
    snapshot: &'a Snapshot,
    state: &'a InternalState,
    name: &str,
) -> Result<(&'a Client, &'a Profile), ApiError> {
    let client = authenticate(req, snapshot, state)?;
    let profile =
        state.profiles.get(name).ok_or_else(|| ApiError::NotFound(format!("no profile is named {name:?}")))?;
    if !client.may_use(&profile.name) {
        return Err(ApiError::Forbidden(format!("profile {:?}", profile.name)));
    }
    Ok((client, profile))
}

/// Signs prepared claims with the profile's key set or secret.
fn sign_prepared(snapshot: &Snapshot, profile: &Profile, prepared: Prepared, jti: String) -> Result<Signed, ApiError> {
    let (token, kid, alg) = match &profile.signed_by {
        SignedBy::KeySet(set) => {
            let signer = snapshot
                .key_sets
                .get(set)
                .and_then(|view| view.signer.clone())
                .ok_or_else(|| ApiError::NoSigningKey(format!("key set {set} has no signing key yet")))?;
            let token = signer.sign(prepared.claims).map_err(anyhow::Error::from)?;
            (token, Some(signer.kid().to_owned()), signer.algorithm().as_str())
        }
        SignedBy::Secret(_) => {
            let secret = snapshot.secrets.get(&profile.name).ok_or_else(|| {
                ApiError::NoSigningKey(format!(
                    "profile {0} has no secret yet (an operator sets it with `keyward secrets set {0}`)",
                    profile.name
                ))
            })?;
            let token = secret.sign(prepared.claims).map_err(anyhow::Error::from)?;
            (token, None, secret.algorithm().as_str())
        }
    };
    Ok(Signed {
        token,
        kid,
        alg,
        jti,
        issued_at: prepared.issued_at,
        expires_at: prepared.expires_at,
        expires_in: prepared.expires_at - prepared.issued_at,
    })
}

fn no_store_json(body: &impl Serialize) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(body)
}

#[utoipa::path(post, path = paths::SIGN, tag = "signing", security(("bearer" = [])),
    params(("profile" = String, Path, description = "Profile name")), request_body = SignRequest,
    responses((status = 200, body = Signed), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 408, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem), (status = 503, body = Problem)))]
async fn sign(
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = snapshot_for(&req, &state).await?;
    let (client, profile) = authorize(&req, &snapshot, &state, &name)?;
    let request: SignRequest = json_body(&req, payload, state.body_timeout()).await?;
    if request.cache.is_some() {
        return Err(ApiError::InvalidBody {
            field: Some("cache".into()),
            detail: "only /token takes \"cache\"".into(),
        });
    }
    let signed = issue(&state, &snapshot, client, profile, request).await?;
    Ok(no_store_json(&signed))
}

/// Judges, signs and records one token. The caller gets it only once its ledger row is
/// committed; if the ledger cannot record it, nobody gets it. If the signing key was
/// revoked meanwhile (on any replica), the row is refused: the token is signed once more
/// with the signer of an up-to-date snapshot, or refused (503). If the client was revoked
/// meanwhile, 401.
async fn issue(
    state: &InternalState,
    snapshot: &Snapshot,
    client: &Client,
    profile: &Profile,
    request: SignRequest,
) -> Result<Signed, ApiError> {
    match issue_once(state, snapshot, client, profile, request.clone()).await? {
        Ok(signed) => Ok(signed),
        Err(NotRecorded::KeyWithdrawn) => {
            let fresh = state.shared.catch_up(snapshot.generation).await.map_err(|err| {
                tracing::warn!(error = format!("{err:#}"), "reloading after a withdrawn signer failed");
                ApiError::NotRecorded
            })?;
            match issue_once(state, &fresh, client, profile, request).await? {
                Ok(signed) => Ok(signed),
                Err(NotRecorded::ClientRevoked) => Err(ApiError::Unauthorized),
                Err(_) => Err(ApiError::NotRecorded),
            }
        }
        Err(NotRecorded::ClientRevoked) => Err(ApiError::Unauthorized),
        Err(NotRecorded::Failed) => Err(ApiError::NotRecorded),
    }
}

/// One attempt of [`issue`]: the ledger's refusal is the inner error.
async fn issue_once(
    state: &InternalState,
    snapshot: &Snapshot,
    client: &Client,
    profile: &Profile,
    request: SignRequest,
) -> Result<Result<Signed, NotRecorded>, ApiError> {
    let metrics = state.shared.metrics();
    let sub = request.sub.clone();
    let claim_names: Vec<String> = request.claims.keys().cloned().collect();
    let started = Instant::now();
    let jti = new_jti();
    let prepared = profile.prepare(request, chrono::Utc::now().timestamp(), jti.clone()).map_err(|refusal| {
        metrics.token(&profile.name, "none", "refused");
        refused(refusal)
    })?;
    let signed = sign_prepared(snapshot, profile, prepared, jti).inspect_err(|_| {
        metrics.token(&profile.name, "none", "failed");
    })?;
    metrics.signed_in(started.elapsed());
    let entry = Entry {
        jti: signed.jti.clone(),
        profile: profile.name.clone(),
        client: client.name.clone(),
        sub,
        kid: signed.kid.clone(),
        alg: signed.alg.to_owned(),
        iat: signed.issued_at,
        exp: signed.expires_at,
        claim_names,
    };
    if let Err(refusal) = state.ledger.record(entry).await {
        metrics.token(&profile.name, signed.alg, "failed");
        return Ok(Err(refusal));
    }
    metrics.token(&profile.name, signed.alg, "issued");
    tracing::debug!(profile = %profile.name, client = %client.name, kid = signed.kid, jti = signed.jti, "token issued");
    Ok(Ok(signed))
}

/// A partner's token.
#[derive(Serialize, utoipa::ToSchema)]
struct PartnerToken {
    token: String,
    expires_at: Option<i64>,
}

#[utoipa::path(post, path = paths::TOKEN, tag = "signing", security(("bearer" = [])),
    params(("profile" = String, Path, description = "Profile name")), request_body = SignRequest,
    responses((status = 200, body = PartnerToken), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 408, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem), (status = 502, body = Problem),
        (status = 503, body = Problem), (status = 504, body = Problem)))]
async fn token(
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = snapshot_for(&req, &state).await?;
    let (client, profile) = authorize(&req, &snapshot, &state, &name)?;
    let request: SignRequest = json_body(&req, payload, state.body_timeout()).await?;
    let exchange = profile
        .exchange
        .as_ref()
        .ok_or_else(|| ApiError::NotFound(format!("profile {:?} has no [profile.exchange]", profile.name)))?;
    let use_cache = request.cache.unwrap_or(true);
    let clock = || chrono::Utc::now().timestamp();
    let issued = match exchange.style {
        ExchangeStyle::BearerAssertion => {
            // Per client too: a token obtained with one client's assertion (and ledger row)
            // is never handed to another; and per ttl_seconds, which shapes the assertion.
            let key = format!(
                "{}\0{}\0{}\0{}\0{}",
                profile.name,
                client.name,
                request.sub.as_deref().unwrap_or_default(),
                request.ttl_seconds.map(|t| t.to_string()).unwrap_or_default(),
                serde_json::to_string(&request.claims).map_err(anyhow::Error::from)?
            );
            // Judge the request first (the caller's errors are 4xx); sign only on a miss.
            profile.prepare(request.clone(), clock(), String::new()).map_err(refused)?;
            let fetch = |_refresh| async {
                let signed = issue(&state, &snapshot, client, profile, request).await.map_err(|err| match err {
                    ApiError::NotRecorded => ExchangeError::NotRecorded,
                    err => {
                        tracing::error!(error = %err, profile = %profile.name, "could not sign the assertion");
                        ExchangeError::Local
                    }
                })?;
                exchange::bearer_assertion(&state.http, exchange, &signed.token).await
            };
            state.tokens.get(&key, use_cache, clock, fetch).await?
        }
        ExchangeStyle::AccountKey => {
            if request.sub.is_some() || !request.claims.is_empty() || request.ttl_seconds.is_some() {
                return Err(ApiError::InvalidBody {
                    field: None,
                    detail: "this profile's exchange takes only \"cache\"".into(),
                });
            }
            let set = profile.key_set().unwrap_or_default();
            let view = snapshot.key_sets.get(set);
            let (Some(signer), Some(public)) =
                (view.and_then(|v| v.signer.clone()), view.and_then(|v| v.public.clone()))
            else {
                return Err(ApiError::NoSigningKey(format!("key set {set} has no signing key yet")));
            };
            let public_key = export::render(signer.kid(), signer.algorithm(), &public, Format::PemBase64)?;
            // The partner knows us by our current key: a rotation starts a new cache entry.
            let key = format!("{}\0account\0{}", profile.name, signer.kid());
            let fetch = |refresh| exchange::account_key(&state.http, exchange, &public_key, refresh, clock());
            state.tokens.get(&key, use_cache, clock, fetch).await?
        }
    };
    tracing::debug!(profile = %profile.name, client = %client.name, cached = use_cache, "partner token handed out");
    Ok(no_store_json(&PartnerToken { token: issued.token, expires_at: issued.expires_at }))
}

#[utoipa::path(get, path = paths::PUBLIC_KEY, tag = "keys", security(("bearer" = [])),
    params(("kid" = String, Path, description = "The key's kid"), ("format" = Option<Format>, Query, description = "The key's form (default jwk)")),
    responses((status = 200, description = "The public key in the form asked for", content(
            (String = "application/x-pem-file"), (String = "text/plain"), (Object = "application/jwk+json"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 429, body = Problem)))]
async fn public_key(
    req: HttpRequest,
    kid: web::Path<String>,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&req, &*snapshot_for(&req, &state).await?, &state)?;
    let format = export_format(req.query_string())?;
    let record =
        state.shared.store().key(&kid).await?.ok_or_else(|| ApiError::NotFound(format!("no key {}", kid.as_str())))?;
    // A revoked or retired key must not be handed out for a partner to register or trust.
    if !record.is_published() {
        return Err(ApiError::NotFound(format!("key {} is {} and no longer published", record.kid, record.state())));
    }
    let body = export::render(&record.kid, record.algorithm, &record.public, format)?;
    let content_type = match format {
        Format::Pem => "application/x-pem-file",
        Format::PemBase64 => "text/plain; charset=utf-8",
        Format::Jwk => "application/jwk+json",
    };
    Ok(HttpResponse::Ok().content_type(content_type).body(body))
}

/// The `format` of a public key request: the only query parameter, JWK when absent (as
/// `keyward keys export`).
fn export_format(query: &str) -> Result<Format, ApiError> {
    let mut format = Format::DEFAULT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "format" {
            return Err(ApiError::InvalidQuery {
                parameter: name.to_owned(),
                detail: format!("unknown query parameter {name:?}: this resource takes only format"),
            });
        }
        format = Format::parse(value).ok_or_else(|| ApiError::InvalidQuery {
            parameter: "format".to_owned(),
            detail: format!("format must be one of {} (default jwk)", Format::NAMES.join(", ")),
        })?;
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> (Option<String>, String) {
        match parse_json::<SignRequest>(body.as_bytes()) {
            Err(ApiError::InvalidBody { field, detail }) => (field, detail),
            other => panic!("{body}: expected InvalidBody, got {other:?}"),
        }
    }

    #[test]
    fn body_errors_name_the_field_in_keywards_own_words() {
        assert_eq!(field_of(r#"{"sub": "a", "nope": 1}"#), (Some("nope".into()), "unknown field \"nope\"".into()));
        assert_eq!(field_of(r#"{"sub": 5}"#), (Some("sub".into()), "\"sub\" has the wrong type".into()));
        assert_eq!(field_of(r#"[1]"#), (None, "the body must be a JSON object".into()));
        assert_eq!(field_of("{\"sub\": "), (None, "the body is not valid JSON (line 1, column 8)".into()));
        assert_eq!(field_of(r#"{"sub": "a", "nope": 1}"#).0.as_deref(), Some("nope"));
        assert_eq!(field_of(r#"{"sub": 5}"#).0.as_deref(), Some("sub"));
        assert_eq!(field_of(r#"{"sub": "a", "ttl_seconds": "5"}"#).0.as_deref(), Some("ttl_seconds"));
        assert_eq!(field_of(r#"{"sub": "a", "claims": []}"#).0.as_deref(), Some("claims"));
        assert_eq!(field_of(r#"{"sub": "a""#).0, None);
        assert_eq!(field_of(r#"{"sub": "a"} trailing"#).0, None);
    }

    #[test]
    fn a_member_named_twice_in_any_object_is_refused_naming_it() {
        let cases = [
            (r#"{"sub": "a", "sub": "b"}"#, "sub"),
            (r#"{"sub": "a", "claims": {"obo_user": "x", "obo_user": "y"}}"#, "claims.obo_user"),
            (r#"{"sub": "a", "claims": {"roles": [{"k": 1}, {"k": 1, "k": 2}]}}"#, "claims.roles[1].k"),
            (r#"{"s\u0075b": "a", "sub": "b"}"#, "sub"),
        ];
        for (body, member) in cases {
            let (field, detail) = field_of(body);
            assert_eq!(field.as_deref(), Some(member), "{body}");
            assert_eq!(detail, format!("the member {member:?} appears more than once"));
        }
        // The same name in different objects is fine; malformed JSON keeps its own message.
        assert!(duplicate_member(br#"{"a": {"x": 1}, "b": {"x": 1}, "x": [{"x": 1}, {"x": 2}]}"#).is_none());
        assert_eq!(
            field_of(r#"{"claims": {"a": 1, "a": 2}, "sub": "#).1,
            "the body is not valid JSON (line 1, column 36)"
        );
    }

    #[test]
    fn jti_is_the_time_then_80_random_bits() {
        let a = new_jti();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 16);
        assert_ne!(a, new_jti());
        let jti = jti_from(0x0123_4567_89ab, [0xff; 10]);
        let mut expected = vec![0x01, 0x23, 0x45, 0x67, 0x89, 0xab];
        expected.extend([0xff; 10]);
        assert_eq!(URL_SAFE_NO_PAD.decode(&jti).unwrap(), expected);
        // Tokens issued close together share a prefix (and so neighbouring index pages):
        // the first five characters are the top 30 bits of the time, 2^18 ms (4.4 minutes).
        let window_start = 1_795_000_000_000 & !0x3_ffff;
        let (first, last) = (jti_from(window_start, [0; 10]), jti_from(window_start + 0x3_ffff, [0xff; 10]));
        assert_eq!(first[..5], last[..5]);
        assert_ne!(first[..5], jti_from(window_start + 0x4_0000, [0; 10])[..5]);
    }
}
