//! The public listener: JWKS documents and health, nothing else.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};

use prometheus_client::metrics::counter::Counter;

use crate::app::observe::Fetched;
use crate::app::snapshot::{ServedJwks, Shared};
use crate::http::forwarded;
use crate::http::problem::ApiError;
use crate::keys::jwks;

/// What the public handlers need.
pub struct PublicState {
    shared: Arc<Shared>,
    /// JWKS path to its key set and its counters.
    routes: HashMap<String, Route>,
}

struct Route {
    key_set: String,
    /// Requests answered 200 and 304, counted without building labels per request.
    ok: Counter,
    not_modified: Counter,
}

impl PublicState {
    /// Routes every configured JWKS path (path to key set name) to its key set.
    pub fn new(shared: Arc<Shared>, routes: HashMap<String, String>) -> Self {
        let metrics = shared.metrics().clone();
        let routes = routes
            .into_iter()
            .map(|(path, key_set)| {
                let route = Route { key_set, ok: metrics.jwks(&path, 200), not_modified: metrics.jwks(&path, 304) };
                (path, route)
            })
            .collect();
        PublicState { shared, routes }
    }
}

/// Registers the public routes on an app.
pub fn configure(config: &mut web::ServiceConfig) {
    config.default_service(web::to(dispatch));
}

/// One handler for every path: the set of JWKS paths comes from the configuration.
async fn dispatch(req: HttpRequest, state: web::Data<PublicState>) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    let route = state.routes.get(path);
    let known = route.is_some() || path == "/healthz" || path == "/readyz";
    if !known {
        return Err(ApiError::NotFound("no such resource".to_owned()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ApiError::MethodNotAllowed("GET, HEAD".to_owned()));
    }
    let snapshot = state.shared.snapshot();
    match (path, route) {
        ("/healthz", _) => Ok(status_json(HttpResponse::Ok(), "ok")),
        ("/readyz", _) => Ok(readiness_json(state.shared.readiness())),
        (_, Some(route)) => {
            let doc = snapshot
                .key_sets
                .get(&route.key_set)
                .map(|view| Arc::clone(&view.jwks))
                .ok_or_else(|| ApiError::NotFound("no such key set".to_owned()))?;
            // The header may come as several lines; each is a list of tags.
            let not_modified = req
                .headers()
                .get_all(header::IF_NONE_MATCH)
                .filter_map(|v| v.to_str().ok())
                .any(|v| jwks::if_none_match(v, &doc.etag));
            if not_modified { &route.not_modified } else { &route.ok }.inc();
            observe(&req, &state.shared, &route.key_set, &doc);
            let mut response = if not_modified { HttpResponse::NotModified() } else { HttpResponse::Ok() };
            response
                .insert_header((header::ETAG, doc.headers.0.clone()))
                .insert_header((header::CACHE_CONTROL, doc.headers.1.clone()))
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
            if not_modified {
                Ok(response.finish())
            } else {
                Ok(response.content_type("application/json").body(doc.body.clone()))
            }
        }
        _ => Err(ApiError::NotFound("no such resource".to_owned())),
    }
}

/// Records the fetch for partner observation (from memory; written in batches).
fn observe(req: &HttpRequest, shared: &Shared, key_set: &str, doc: &ServedJwks) {
    let Some(peer) = req.peer_addr() else { return };
    let address = forwarded::client_address(peer.ip(), req.headers(), &shared.config().server.trusted_proxies);
    let user_agent = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let fetched = Fetched { key_set, etag: &doc.etag, kids: &doc.kids };
    shared.observer().observe(address, user_agent, &fetched, chrono::Utc::now().timestamp());
}

/// The body of the health routes.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HealthStatus {
    /// `ok`, `ready` or `not ready`.
    status: &'static str,
    /// Why the server is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `/readyz`'s answer: 200 `ready`, or 503 `not ready` with the reason.
pub fn readiness_json(readiness: Result<(), &str>) -> HttpResponse {
    match readiness {
        Ok(()) => status_json(HttpResponse::Ok(), "ready"),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(HealthStatus { status: "not ready", reason: Some(reason.to_owned()) }),
    }
}

/// A tiny `{"status": ...}` body, never cached.
pub fn status_json(mut builder: actix_web::HttpResponseBuilder, status: &'static str) -> HttpResponse {
    builder.insert_header((header::CACHE_CONTROL, "no-store")).json(HealthStatus { status, reason: None })
}
