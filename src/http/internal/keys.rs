//! A key's public half: `GET /v1/keys/{kid}/public`, for a partner to register.

use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::Caller;
use super::InternalState;
use crate::http::problem::{ApiError, Problem};
use crate::keys::export::{self, Format};

#[utoipa::path(get, path = "/v1/keys/{kid}/public", tag = "keys", security(("bearer" = [])),
    params(("kid" = String, Path, description = "The key's kid"), ("format" = Option<Format>, Query, description = "The key's form (default jwk)")),
    responses((status = 200, description = "The public key in the form asked for", content(
            (String = "application/x-pem-file"), (String = "text/plain"), (Object = "application/jwk+json"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 429, body = Problem)))]
pub(super) async fn public_key(
    _: Caller,
    req: HttpRequest,
    kid: web::Path<String>,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    let format = export_format(req.query_string())?;
    let record =
        state.shared.store().key(&kid).await?.ok_or_else(|| ApiError::NotFound(format!("no key {}", kid.as_str())))?;
    // A revoked or retired key must not be handed out for a partner to register or trust.
    if !record.is_published() {
        let state = record.state_at(chrono::Utc::now().timestamp());
        return Err(ApiError::NotFound(format!("key {} is {state} and no longer published", record.kid)));
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
