//! The internal listener: the authenticated signing API for backends.
//!
//! Each handler's `#[utoipa::path]` states its method and path; [`internal_api!`] lists the
//! handlers once, and the OpenAPI document, the router ([`configure`]) and [`routes`] are
//! all built from that list.

mod admin;
mod auth;
mod body;
mod deadline;
mod events;
mod keys;
mod operations;
mod partners;
mod sign;
mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::{header, Method};
use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::OpenApi;

use crate::app::identity::IdentityProviders;
use crate::app::ledger::Ledger;
use crate::app::snapshot::Shared;
use crate::http::problem::ApiError;
use crate::keys::export::Format;
use crate::partner::cache::TokenCache;
use crate::policy::profile::Profile;
use crate::policy::ratelimit::RateLimiter;

pub use body::MAX_BODY_BYTES;
use operations::{BearerAuth, ProblemResponses};

/// Lists the internal API's handlers once: the OpenAPI document ([`ApiDoc`]) takes their
/// annotations, and [`handler`] maps each documented operation back to its handler.
macro_rules! internal_api {
    ($($module:ident :: $handler:ident),* $(,)?) => {
        /// The OpenAPI 3 document, generated from the handlers' annotations and the body types.
        #[derive(utoipa::OpenApi)]
        #[openapi(
            info(title = "keyward internal API", description = "Signing, token exchange and key administration."),
            paths($($module::$handler),*),
            components(schemas(Format)),
            modifiers(&BearerAuth, &ProblemResponses)
        )]
        pub struct ApiDoc;

        /// The handler of a documented operation (utoipa names an operation after its handler).
        fn handler(operation_id: &str) -> Option<actix_web::Route> {
            match operation_id {
                $(stringify!($handler) => Some(web::route().to($module::$handler)),)*
                _ => None,
            }
        }
    };
}

internal_api![
    sign::sign,
    token::token,
    admin::key_sets,
    admin::rotate,
    admin::revoke,
    admin::master_key,
    events::events,
    partners::partners,
    keys::public_key,
    operations::metrics,
    operations::openapi,
    operations::healthz,
    operations::readyz,
];

/// What the internal handlers need.
pub struct InternalState {
    shared: Arc<Shared>,
    profiles: HashMap<String, Profile>,
    tokens: TokenCache,
    http: reqwest::Client,
    ledger: Ledger,
    limiter: RateLimiter,
    /// One permit per sign or token request being served ([server] max_signing_requests).
    signing: tokio::sync::Semaphore,
    started: Instant,
    identities: IdentityProviders,
}

impl InternalState {
    /// Handlers over the shared snapshot, the compiled profiles, the ledger and the
    /// identity providers.
    pub fn new(
        shared: Arc<Shared>,
        profiles: HashMap<String, Profile>,
        ledger: Ledger,
        identities: IdentityProviders,
    ) -> Self {
        let signing = tokio::sync::Semaphore::new(shared.config().server.max_signing_requests as usize);
        InternalState {
            signing,
            shared,
            profiles,
            tokens: TokenCache::default(),
            http: reqwest::Client::new(),
            ledger,
            limiter: RateLimiter::default(),
            started: Instant::now(),
            identities,
        }
    }

    /// A place among the sign and token requests being served, or 503 at once when they
    /// are all taken: an overload is shed, not queued (the waiting would cost memory, and
    /// every request's deadline).
    fn admit_signing(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.signing.try_acquire().map_err(|_| {
            self.shared.metrics().shed();
            ApiError::Overloaded
        })
    }

    /// The deadline of a request arriving now.
    fn deadline(&self) -> deadline::Deadline {
        deadline::Deadline::starting_now(std::time::Duration::from_secs(
            self.shared.config().server.request_deadline.as_secs(),
        ))
    }

    /// How long a request body may take to arrive.
    fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shared.config().server.request_body_timeout.as_secs())
    }
}

/// The documented operations of one path, with their methods, in the order `Allow` lists them.
fn operations(item: &PathItem) -> impl Iterator<Item = (Method, &Operation)> {
    [
        (Method::GET, &item.get),
        (Method::HEAD, &item.head),
        (Method::POST, &item.post),
        (Method::PUT, &item.put),
        (Method::PATCH, &item.patch),
        (Method::DELETE, &item.delete),
        (Method::OPTIONS, &item.options),
        (Method::TRACE, &item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation.as_ref()?)))
}

/// Every route of the internal listener as (method, path), from the OpenAPI document: one
/// per path, its first method (HEAD beside GET is not listed apart).
pub fn routes() -> Vec<(&'static str, String)> {
    let method = |m: Method| match m {
        Method::GET => "get",
        Method::HEAD => "head",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "trace",
    };
    let doc = ApiDoc::openapi();
    let first = |item: &PathItem| operations(item).next().map(|(m, _)| method(m));
    doc.paths.paths.iter().filter_map(|(path, item)| Some((first(item)?, path.clone()))).collect()
}

/// Registers the documented routes on an app: each path answers its methods, and 405 with
/// `Allow` to others.
pub fn configure(config: &mut web::ServiceConfig) {
    for (path, item) in &ApiDoc::openapi().paths.paths {
        let mut resource = web::resource(path.as_str());
        let mut allow = Vec::new();
        for (method, operation) in operations(item) {
            let Some(route) = operation.operation_id.as_deref().and_then(handler) else { continue };
            resource = resource.route(route.method(method.clone()));
            allow.push(method.to_string());
        }
        let allow = allow.join(", ");
        config.service(resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) }
        })));
    }
    config.default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::NotFound("no such resource".to_owned()))
    }));
}

fn no_store_json(body: &impl Serialize) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_operation_has_a_handler() {
        for (path, item) in &ApiDoc::openapi().paths.paths {
            for (method, operation) in operations(item) {
                let id = operation.operation_id.as_deref();
                assert!(id.and_then(handler).is_some(), "{method} {path} ({id:?}) has no handler");
            }
        }
    }
}
