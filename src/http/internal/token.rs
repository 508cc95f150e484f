//! Token exchange: `POST /v1/profiles/{profile}/token`, a partner's token for our assertion
//! or our account key, cached.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::auth::Caller;
use super::body::json_body;
use super::deadline::Deadline;
use super::sign::{issue, refused};
use super::{no_store_json, InternalState};
use crate::http::problem::{ApiError, Problem};
use crate::keys::export::{self, Format};
use crate::partner::exchange::{self, ExchangeError};
use crate::policy::profile::{Exchange, SignRequest};

/// A partner's token.
#[derive(Serialize, utoipa::ToSchema)]
struct PartnerToken {
    token: String,
    expires_at: Option<i64>,
}

#[utoipa::path(post, path = "/v1/profiles/{profile}/token", tag = "signing", security(("bearer" = [])),
    params(("profile" = String, Path, description = "Profile name")), request_body = SignRequest,
    responses((status = 200, body = PartnerToken), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 408, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem), (status = 502, body = Problem),
        (status = 503, body = Problem), (status = 504, body = Problem)))]
pub(super) async fn token(
    caller: Caller,
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    let profile = caller.profile(&state, &name)?;
    let _serving = state.admit_signing()?;
    let Caller { snapshot, client, deadline, .. } = &caller;
    let request: SignRequest = json_body(&req, payload, state.body_timeout()).await?;
    let exchange = profile
        .exchange
        .as_ref()
        .ok_or_else(|| ApiError::NotFound(format!("profile {:?} has no [profile.exchange]", profile.name)))?;
    let use_cache = request.cache.unwrap_or(true);
    let clock = || chrono::Utc::now().timestamp();
    let issued = match exchange {
        Exchange::BearerAssertion(bearer) => {
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
                let signed = issue(&state, &caller, profile, request).await.map_err(|err| match err {
                    ApiError::NotRecorded => ExchangeError::NotRecorded,
                    err => {
                        tracing::error!(error = %err, profile = %profile.name, "could not sign the assertion");
                        ExchangeError::Local
                    }
                })?;
                exchange::bearer_assertion(&state.http, bearer, &signed.token).await
            };
            within(*deadline, state.tokens.get(&key, use_cache, clock, fetch)).await?
        }
        Exchange::AccountKey(account) => {
            if request.sub.is_some() || !request.claims.is_empty() || request.ttl_seconds.is_some() {
                return Err(ApiError::InvalidBody {
                    field: None,
                    detail: "this profile's exchange takes only \"cache\"".into(),
                });
            }
            let set = &account.key_set;
            let view = snapshot.key_sets.get(set);
            let (Some(signer), Some(public)) =
                (view.and_then(|v| v.signer.clone()), view.and_then(|v| v.public.clone()))
            else {
                return Err(ApiError::NoSigningKey(format!("key set {set} has no signing key yet")));
            };
            let public_key = export::render(signer.kid(), signer.algorithm(), &public, Format::PemBase64)?;
            // The partner knows us by our current key: a rotation starts a new cache entry.
            let key = format!("{}\0account\0{}", profile.name, signer.kid());
            let fetch = |refresh| exchange::account_key(&state.http, account, &public_key, refresh, clock());
            within(*deadline, state.tokens.get(&key, use_cache, clock, fetch)).await?
        }
    };
    // A cached token passed no ledger commit: confirm the client as stored now, so that no
    // token is handed out under a credential or right withdrawn before this request.
    let refreshed = tokio::time::timeout_at(deadline.at().into(), caller.refreshed(&state));
    if let Some((_, now_client)) = refreshed.await.map_err(|_| ApiError::TokenNotChecked)?? {
        if !now_client.may_use(&profile.name) {
            return Err(ApiError::Forbidden(format!("profile {:?}", profile.name)));
        }
    }
    tracing::debug!(profile = %profile.name, client = %client.name, cached = use_cache, "partner token handed out");
    Ok(no_store_json(&PartnerToken { token: issued.token, expires_at: issued.expires_at }))
}

/// The partner exchange (or the wait for a concurrent request's), cut off at the request's
/// deadline even when the profile's own upstream `timeout` is longer: 504.
async fn within<T>(
    deadline: Deadline,
    exchange: impl std::future::Future<Output = Result<T, ExchangeError>>,
) -> Result<T, ExchangeError> {
    let waited = deadline.span().as_secs();
    tokio::time::timeout_at(deadline.at().into(), exchange).await.unwrap_or(Err(ExchangeError::Timeout(waited)))
}
