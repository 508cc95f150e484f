//! Who is calling: the client certificate on a mutual-TLS listener, the bearer token or
//! workload identity token, the client directory (re-checked against the store for a token
//! newer than the snapshot) and the client's rate limit, as extractors; and what it may
//! administer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::deadline::Deadline;
use super::InternalState;
use crate::app::identity::IdentityError;
use crate::app::snapshot::{Recheck, Snapshot};
use crate::audit::{Actor, Attribution};
use crate::http::client_cert;
use crate::http::middleware::RequestId;
use crate::http::problem::ApiError;
use crate::policy::certificate::CertFingerprint;
use crate::policy::client::{self, Client};
use crate::policy::permission::{Action, Permission, Scope};
use crate::policy::profile::Profile;
use crate::policy::ratelimit::Limit;

/// What the caller authenticated with: enough to find its client again in a newer
/// snapshot (never logged, never shown).
pub(super) enum Credential {
    /// A keyward client token.
    Token(String),
    /// A certificate-only client's certificate.
    Certificate(CertFingerprint),
    /// A verified workload identity.
    Identity { issuer: String, subject: String },
}

impl Credential {
    /// The active client this credential authenticates in `snapshot`.
    fn client_in(&self, snapshot: &Snapshot) -> Option<Client> {
        match self {
            Credential::Token(token) => snapshot.clients.authenticate(token),
            Credential::Certificate(certificate) => snapshot.clients.by_certificate(certificate),
            Credential::Identity { issuer, subject } => snapshot.clients.by_identity(issuer, subject),
        }
        .cloned()
    }
}

/// An authenticated client within its rate limit, and the snapshot that knows its
/// credential (the one to serve the request from).
pub(super) struct Caller {
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) client: Client,
    credential: Credential,
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

    /// This caller as the store has it now: after a change to its client (a revocation,
    /// a rotation, new rights), found again by its credential in a snapshot reloaded past
    /// that change; `UnknownToken` when the credential no longer authenticates.
    pub(super) async fn confirmed(self, state: &InternalState) -> Result<Caller, ApiError> {
        match self.refreshed(state).await? {
            None => Ok(self),
            Some((snapshot, client)) => {
                Ok(Caller { snapshot, client, credential: self.credential, deadline: self.deadline })
            }
        }
    }

    /// `None` when the stored client is the one this caller authenticated as; else its
    /// client now, and a snapshot that knows it.
    pub(super) async fn refreshed(&self, state: &InternalState) -> Result<Option<(Arc<Snapshot>, Client)>, ApiError> {
        let shared = &state.shared;
        let stored = shared.store().client_generation(&self.client.name).await?;
        if stored == Some(self.client.generation) {
            return Ok(None);
        }
        let Some(stored) = stored else { return Err(ApiError::UnknownToken) };
        let mut snapshot = shared.catch_up(self.snapshot.generation).await?;
        if self.credential.client_in(&snapshot).is_none_or(|c| c.generation < stored) {
            // That snapshot was loaded before the change: load one after it.
            shared.reload().await?;
            snapshot = shared.snapshot();
        }
        match self.credential.client_in(&snapshot) {
            Some(client) if client.name == self.client.name && client.generation >= stored => {
                Ok(Some((snapshot, client)))
            }
            _ => Err(ApiError::UnknownToken),
        }
    }

    /// Whether this client may take `action` on `name` (a key set or partner); else a 403
    /// that names the missing permission.
    pub(super) fn permit(&self, action: Action, name: &str) -> Result<(), ApiError> {
        self.client.permissions.check(action, name).map_err(|missing| ApiError::MissingPermission(missing.missing))
    }

    /// Whether this client may take `action` on every key set (or partner), as a route about
    /// the whole server (the master key) needs; else a 403 naming the unscoped permission.
    pub(super) fn permit_everywhere(&self, action: Action) -> Result<(), ApiError> {
        match self.scope(action)? {
            Scope::All => Ok(()),
            Scope::Only(_) => Err(ApiError::MissingPermission(Permission { action, scope: Scope::All })),
        }
    }

    /// This caller as the audit trail records it: its client, the certificate its
    /// connection presented, its address and the request id; with the body's `reason`.
    pub(super) fn attribution(&self, req: &HttpRequest, reason: Option<String>) -> Attribution {
        let request_id = actix_web::HttpMessage::extensions(req).get::<RequestId>().map(|id| id.0.clone());
        Attribution::of(Actor::Admin {
            client: self.client.name.clone(),
            cert_sha256: client_cert::presented(req).map(|c| c.to_string()),
            remote: req.peer_addr().map(|a| a.ip().to_string()),
            request_id,
        })
        .because(reason)
    }

    /// Where this client may take `action`; a 403 naming it when nowhere.
    pub(super) fn scope(&self, action: Action) -> Result<Scope, ApiError> {
        self.client
            .permissions
            .check_any(action)
            .cloned()
            .map_err(|missing| ApiError::MissingPermission(missing.missing))
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
            let caller = match certificate_only {
                Some((snapshot, client)) => {
                    let certificate = client.certificate.ok_or(ApiError::Unauthorized)?;
                    Caller { snapshot, client, credential: Credential::Certificate(certificate), deadline }
                }
                None => {
                    let token = bearer(&req)?;
                    if client::token_id(token).is_none() && looks_like_jwt(token) {
                        by_identity(token, state, deadline).await?
                    } else {
                        let snapshot = snapshot_for(token, state, deadline).await?;
                        let client = snapshot.clients.authenticate(token).ok_or(ApiError::UnknownToken)?.clone();
                        Caller { snapshot, client, credential: Credential::Token(token.to_owned()), deadline }
                    }
                }
            };
            client_cert::check_binding(&req, &caller.client)?;
            admit(state, &caller.client)?;
            Ok(caller)
        })
    }
}

/// A [`Caller`] for the admin routes: confirmed against the store, so that a change to its
/// client that has returned applies to this request, whichever replica made it.
pub(super) struct Admin(pub(super) Caller);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(req, payload);
        let state = req.app_data::<web::Data<InternalState>>().cloned();
        Box::pin(async move {
            let caller = caller.await?;
            let state =
                state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the internal state is not registered")))?;
            Ok(Admin(caller.confirmed(&state).await?))
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

/// Whether a bearer that is not a keyward token is meant as a JWT (three dot-separated
/// parts, the first a JSON header in base64url: `eyJ`).
fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

/// The client bound to the workload identity a JWT proves. Its issuer and subject are
/// logged, never the token.
/// Bounded by the request's deadline: a provider or database that does not answer in time
/// makes the token "not checked" (retry in a second).
async fn by_identity(token: &str, state: &InternalState, deadline: Deadline) -> Result<Caller, ApiError> {
    tokio::time::timeout_at(deadline.at().into(), identified(token, state, deadline))
        .await
        .unwrap_or(Err(ApiError::TokenNotChecked))
}

async fn identified(token: &str, state: &InternalState, deadline: Deadline) -> Result<Caller, ApiError> {
    let verified = state.identities.authenticate(token, chrono::Utc::now().timestamp()).await.map_err(|err| {
        tracing::info!(reason = %err, "workload identity token refused");
        match err {
            IdentityError::Refused(refusal) => ApiError::IdentityRefused(refusal),
            IdentityError::Unavailable => ApiError::IdentityProviderUnavailable,
        }
    })?;
    let mut snapshot = state.shared.snapshot();
    let mut client = snapshot.clients.by_identity(&verified.issuer, &verified.subject).cloned();
    if client.is_none() && state.shared.store().generation().await? != snapshot.generation {
        // A client bound a moment ago (by another process): its identity works on the
        // next request, before the change watch reloads. Only for a verified token.
        snapshot = state.shared.catch_up(snapshot.generation).await?;
        client = snapshot.clients.by_identity(&verified.issuer, &verified.subject).cloned();
    }
    let Some(client) = client else {
        tracing::info!(issuer = %verified.issuer, sub = %verified.subject, "no client is bound to this workload identity");
        return Err(ApiError::UnknownIdentity);
    };
    tracing::info!(issuer = %verified.issuer, sub = %verified.subject, client = %client.name, "workload identity authenticated");
    Ok(Caller {
        snapshot,
        client,
        credential: Credential::Identity { issuer: verified.issuer, subject: verified.subject },
        deadline,
    })
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
