//! Request ids, the access log and the request counters: every log line of a request
//! carries its id, which the response returns as `X-Request-Id` (a sane incoming one is
//! kept, for tracing across services).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use rand::RngCore;
use tracing::{Instrument, Level};

use crate::app::metrics::ListenerMetrics;

/// The request's id, in its extensions, for handlers that record it (the audit trail).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: a sane incoming one, else 16 fresh hex digits.
fn request_id(req: &ServiceRequest) -> HeaderValue {
    let sane = |id: &&HeaderValue| {
        let id = id.as_bytes();
        !id.is_empty() && id.len() <= 64 && id.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if let Some(id) = req.headers().get(&REQUEST_ID).filter(sane) {
        return id.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let mut digits = [0u8; 16];
    for (pair, b) in digits.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }
    // Hex digits are always a valid header value; the fallback is never taken.
    HeaderValue::from_bytes(&digits).unwrap_or(HeaderValue::from_static("0000000000000000"))
}

async fn handle(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
    access_log_at_info: bool,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request_id(&req);
    let text = id.to_str().unwrap_or_default();
    let span = tracing::info_span!("request", id = %text);
    actix_web::HttpMessage::extensions_mut(&req).insert(RequestId(text.to_owned()));
    // The access line's fields are gathered only when it is written: the public listener
    // answers partners' polls at a rate where every allocation shows.
    let logged = if access_log_at_info { tracing::enabled!(Level::INFO) } else { tracing::enabled!(Level::DEBUG) };
    let line = logged.then(|| (req.method().clone(), req.path().to_owned(), Instant::now()));
    let counters = req.app_data::<web::Data<ListenerMetrics>>().cloned();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    if let Some(counters) = counters {
        counters.answered(status);
    }
    if let Some((method, path, started)) = line {
        let micros = started.elapsed().as_micros() as u64;
        span.in_scope(|| {
            if access_log_at_info {
                tracing::info!(%method, %path, status, micros, "request");
            } else {
                tracing::debug!(%method, %path, status, micros, "request");
            }
        });
    }
    response.headers_mut().insert(REQUEST_ID, id);
    Ok(response)
}

/// The internal listener: every request in the access log at info.
pub async fn logged(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    handle(req, next, true).await
}

/// The public listener: polled constantly by partners, so its access log is at debug.
pub async fn quiet(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    handle(req, next, false).await
}
