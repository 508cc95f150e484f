//! Request ids and the access log: every log line of a request carries its id, which the
//! response returns as `X-Request-Id` (a sane incoming one is kept, for tracing across
//! services).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use rand::RngCore;
use tracing::Instrument;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(req: &ServiceRequest) -> String {
    let sane = |id: &&str| {
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).filter(sane) {
        Some(id) => id.to_owned(),
        None => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut bytes = [0u8; 8];
            rand::rng().fill_bytes(&mut bytes);
            bytes.iter().flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]).map(char::from).collect()
        }
    }
}

async fn handle(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
    access_log_at_info: bool,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request_id(&req);
    let span = tracing::info_span!("request", id = %id);
    let (method, path) = (req.method().clone(), req.path().to_owned());
    let started = Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    span.in_scope(|| {
        if access_log_at_info {
            tracing::info!(%method, %path, status, micros, "request");
        } else {
            tracing::debug!(%method, %path, status, micros, "request");
        }
    });
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
