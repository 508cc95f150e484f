//! Who is calling: the client certificate on a mutual-TLS listener, the bearer token, the
//! client directory (re-checked against the store for a token newer than the snapshot) and
//! the client's rate limit, as extractors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::deadline::Deadline;
use super::InternalState;
use crate::app::snapshot::{Recheck, Snapshot};
use crate::http::client_cert;
use crate::http::problem::ApiError;
use crate::policy::client::Client;
use crate::policy::profile::Profile;
use crate::policy::ratelimit::Limit;

/// An authenticated client within its rate limit, and the snapshot that knows its token
/// (the one to serve the request from).
pub(super) struct Caller {
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) client: Client,
    /// From the request's arrival.
    pub(super) deadline: Deadline,
}

impl Caller {
    /// The profile `name`, if this client may use it.
    pub(super) fn profile<'a>(&self, state: &'a InternalState, name: &str) -> Result<&'a Profile, ApiError> {
        let profile =
            state.profiles.get(name).ok_or_else(|| ApiError::NotFound(format!("no profile is named {name:?}")))?;
        if !self.client.may_use(&profile.name) {
            return Err(ApiError::Forbidden(format!("profile {:?}", profile.name)));
        }
        Ok(profile)
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<InternalState>>()
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the internal state is not registered")))?;
            let deadline = state.deadline();
            client_cert::require_if_mutual(&req)?;
            let certificate_only = match req.headers().get(header::AUTHORIZATION) {
                None => client_cert::certificate_only_client(&req, state.shared.snapshot()),
                Some(_) => None,
            };
            let (snapshot, client) = match certificate_only {
                Some(found) => found,
                None => {
                    let token = bearer(&req)?;
                    let snapshot = snapshot_for(token, state, deadline).await?;
                    let client = snapshot.clients.authenticate(token).ok_or(ApiError::UnknownToken)?.clone();
                    client_cert::check_binding(&req, &client)?;
                    (snapshot, client)
                }
            };
            admit(state, &client)?;
            Ok(Caller { snapshot, client, deadline })
        })
    }
}

/// A [`Caller`] that may use the admin routes.
pub(super) struct Admin(pub(super) Caller);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(req, payload);
        Box::pin(async move {
            let caller = caller.await?;
            if !caller.client.admin {
                return Err(ApiError::Forbidden("the admin routes (create the client with --admin)".to_owned()));
            }
            Ok(Admin(caller))
        })
    }
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
/// The look-up waits no longer than the request's deadline (a database that does not
/// answer makes it "not checked": retry in a second).
async fn snapshot_for(token: &str, state: &InternalState, deadline: Deadline) -> Result<Arc<Snapshot>, ApiError> {
    let snapshot = state.shared.snapshot();
    if snapshot.clients.authenticate(token).is_some() {
        return Ok(snapshot);
    }
    match tokio::time::timeout_at(deadline.at().into(), state.shared.recheck(token)).await {
        Ok(Recheck::Known(fresh)) => Ok(fresh),
        Ok(Recheck::Unknown) => Err(ApiError::UnknownToken),
        Ok(Recheck::NotChecked) | Err(_) => Err(ApiError::TokenNotChecked),
    }
}

/// Admits one request of `client` under its rate limit (or the server default).
fn admit(state: &InternalState, client: &Client) -> Result<(), ApiError> {
    let server = &state.shared.config().server;
    let (rate, burst) = client.rate.unwrap_or((server.rate_limit, server.rate_burst));
    let limit = Limit { rate: f64::from(rate), burst: f64::from(burst) };
    state.limiter.admit(&client.name, limit, state.started.elapsed().as_secs_f64()).map_err(|wait| {
        state.shared.metrics().rate_limited(&client.name);
        ApiError::TooManyRequests(wait)
    })
}
