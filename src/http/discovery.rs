//! Issuer discovery documents on the public listener, cached as the JWKS they point to.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::app::snapshot::Snapshot;
use crate::config::discovery::Discovery;
use crate::http::problem::ApiError;
use crate::keys::jwks;

/// A serialized discovery document with its entity tag; made once, at start-up.
pub struct DiscoveryDocument {
    body: Bytes,
    etag: String,
    /// The key set whose JWKS caching headers the document shares.
    key_set: String,
}

impl DiscoveryDocument {
    /// Each document under both of its paths.
    pub fn by_path(documents: Vec<Discovery>) -> HashMap<String, Arc<DiscoveryDocument>> {
        let mut by_path = HashMap::new();
        for discovery in documents {
            // Serializing plain strings cannot fail.
            let body = serde_json::to_vec(&discovery.metadata).unwrap_or_default();
            let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(openssl::sha::sha256(&body)));
            let document = Arc::new(DiscoveryDocument { body: Bytes::from(body), etag, key_set: discovery.key_set });
            for path in discovery.paths {
                by_path.insert(path, Arc::clone(&document));
            }
        }
        by_path
    }

    /// 200 with the document, or 304 when the caller has it; `Cache-Control` as the JWKS.
    pub fn respond(&self, req: &HttpRequest, snapshot: &Snapshot) -> Result<HttpResponse, ApiError> {
        let served =
            snapshot.key_sets.get(&self.key_set).ok_or_else(|| ApiError::NotFound("no such key set".to_owned()))?;
        let not_modified = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .filter_map(|v| v.to_str().ok())
            .any(|v| jwks::if_none_match(v, &self.etag));
        let mut response = if not_modified { HttpResponse::NotModified() } else { HttpResponse::Ok() };
        let etag = HeaderValue::from_str(&self.etag).map_err(|e| ApiError::Internal(e.into()))?;
        response
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, served.jwks.headers.1.clone()))
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
        if not_modified {
            Ok(response.finish())
        } else {
            Ok(response.content_type("application/json").body(self.body.clone()))
        }
    }
}
