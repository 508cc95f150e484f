//! Operations: metrics, liveness, readiness and this API's OpenAPI document.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::{ApiDoc, InternalState};
use crate::app::metrics::KeySetGauges;
use crate::http::public::{readiness_json, status_json, HealthStatus};
use crate::ops;

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text exposition", content_type = "application/openmetrics-text")))]
pub(super) async fn metrics(state: web::Data<InternalState>) -> HttpResponse {
    let now = chrono::Utc::now().timestamp();
    let metrics = state.shared.metrics();
    let snapshot = state.shared.snapshot();
    for set in &state.shared.config().key_sets {
        let Some(view) = snapshot.key_sets.get(&set.name) else { continue };
        metrics.key_set(
            &set.name,
            KeySetGauges {
                age: view.activated_at.map_or(0, |at| now - at),
                until_rotation: view.rotation_at.map_or(0, |at| (at - now).max(0)),
                rotation_period: set.rotate_every.as_secs_i64(),
                next_key_published: view.next_key_published,
            },
        );
    }
    metrics.ready(state.shared.readiness().is_ok());
    match state.shared.store().keyring().await {
        Ok(Some(keyring)) => metrics.master_key_age(now - keyring.rotated_at),
        Ok(None) => {}
        Err(err) => tracing::warn!(error = format!("{err:#}"), "reading the keyring for metrics failed"),
    }
    if !state.shared.config().partners.is_empty() {
        match ops::partners::report(state.shared.store(), state.shared.config(), now).await {
            Ok(report) => {
                for partner in &report.partners {
                    let holds: Vec<(&str, bool)> =
                        partner.key_sets.iter().map(|s| (s.key_set.as_str(), s.holds_next)).collect();
                    metrics.partner(&partner.name, partner.last_fetch, partner.expect_fetch_every, &holds);
                    for set in &partner.key_sets {
                        metrics.gate(&set.key_set, set.gate.as_ref().is_some_and(|g| g.holds(now)));
                    }
                }
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "reading partner observations for metrics failed"),
        }
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(metrics.render())
}

#[utoipa::path(method(get, head), path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = HealthStatus)))]
pub(super) async fn healthz() -> HttpResponse {
    status_json(HttpResponse::Ok(), "ok")
}

#[utoipa::path(method(get, head), path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready: the database answers, the ledger commits and every key set can sign", body = HealthStatus),
        (status = 503, description = "Not ready; `reason` says why", body = HealthStatus, content_type = "application/json")))]
pub(super) async fn readyz(state: web::Data<InternalState>) -> HttpResponse {
    readiness_json(state.shared.readiness())
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object, content_type = "application/json")))]
pub(super) async fn openapi() -> HttpResponse {
    use utoipa::OpenApi;
    HttpResponse::Ok().content_type("application/json").body(ApiDoc::openapi().to_json().unwrap_or_default())
}

pub(super) struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// [`Problem`](crate::http::problem::Problem) bodies are `application/problem+json` (utoipa labels every body
/// `application/json`): relabelled once here rather than on each route's errors.
pub(super) struct ProblemResponses;

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
