//! Signing: `POST /v1/profiles/{profile}/sign`, and the issuance shared with the token exchange.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;

use super::auth::Caller;
use super::body::json_body;
use super::deadline::Deadline;
use super::{no_store_json, InternalState};
use crate::app::ledger::NotRecorded;
use crate::app::snapshot::Snapshot;
use crate::http::problem::{ApiError, Problem};
use crate::keys::custody::pkcs11::TokenError;
use crate::keys::custody::RemoteError;
use crate::keys::KeyError;
use crate::policy::client::Client;
use crate::policy::profile::{Prepared, Profile, ProfileKind, Refusal, RefusalKind, SignRequest};
use crate::store::rows::Entry;

#[utoipa::path(post, path = "/v1/profiles/{profile}/sign", tag = "signing", security(("bearer" = [])),
    params(("profile" = String, Path, description = "Profile name")), request_body = SignRequest,
    responses((status = 200, body = Signed), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 408, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem), (status = 503, body = Problem)))]
pub(super) async fn sign(
    caller: Caller,
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    let profile = caller.profile(&state, &name)?;
    let _serving = state.admit_signing()?;
    let request: SignRequest = json_body(&req, payload, state.body_timeout()).await?;
    if request.cache.is_some() {
        return Err(ApiError::InvalidBody {
            field: Some("cache".into()),
            detail: "only /token takes \"cache\"".into(),
        });
    }
    let signed = issue(&state, &caller, profile, request).await?;
    Ok(no_store_json(&signed))
}

/// Judges, signs and records one token. The caller gets it only once its ledger row is
/// committed; if the ledger cannot record it, nobody gets it. If the signing key was
/// revoked meanwhile (on any replica), the row is refused: the token is signed once more
/// with the signer of an up-to-date snapshot, or refused (503). If the client was revoked
/// meanwhile, 401; if it changed (a rotation, other rights), the request is judged once
/// more as the client is now. Nothing waits beyond the caller's deadline: what is not
/// recorded by then is refused (503), and never handed out later.
pub(super) async fn issue(
    state: &InternalState,
    caller: &Caller,
    profile: &Profile,
    request: SignRequest,
) -> Result<Signed, ApiError> {
    let (snapshot, client, deadline) = (&caller.snapshot, &caller.client, caller.deadline);
    match issue_once(state, snapshot, client, profile, request.clone(), deadline).await? {
        Ok(signed) => Ok(signed),
        Err(NotRecorded::KeyWithdrawn) => {
            let caught_up = tokio::time::timeout_at(deadline.at().into(), state.shared.catch_up(snapshot.generation));
            let fresh = caught_up.await.map_err(|_| ApiError::NotRecorded)?.map_err(|err| {
                tracing::warn!(error = format!("{err:#}"), "reloading after a withdrawn signer failed");
                ApiError::NotRecorded
            })?;
            match issue_once(state, &fresh, client, profile, request, deadline).await? {
                Ok(signed) => Ok(signed),
                Err(NotRecorded::ClientRevoked) => Err(ApiError::UnknownToken),
                Err(_) => Err(ApiError::NotRecorded),
            }
        }
        Err(NotRecorded::ClientRevoked) => {
            let refreshed = tokio::time::timeout_at(deadline.at().into(), caller.refreshed(state));
            let Some((fresh, client)) = refreshed.await.map_err(|_| ApiError::NotRecorded)?? else {
                return Err(ApiError::UnknownToken);
            };
            if !client.may_use(&profile.name) {
                return Err(ApiError::Forbidden(format!("profile {:?}", profile.name)));
            }
            match issue_once(state, &fresh, &client, profile, request, deadline).await? {
                Ok(signed) => Ok(signed),
                Err(NotRecorded::ClientRevoked) => Err(ApiError::UnknownToken),
                Err(_) => Err(ApiError::NotRecorded),
            }
        }
        Err(NotRecorded::Failed) => Err(ApiError::NotRecorded),
    }
}

/// One attempt of [`issue`]: the ledger's refusal is the inner error.
async fn issue_once(
    state: &InternalState,
    snapshot: &Snapshot,
    client: &Client,
    profile: &Profile,
    request: SignRequest,
    deadline: Deadline,
) -> Result<Result<Signed, NotRecorded>, ApiError> {
    let metrics = state.shared.metrics();
    let sub = request.sub.clone();
    let claim_names: Vec<String> = request.claims.keys().cloned().collect();
    let started = Instant::now();
    let jti = new_jti();
    let prepared = profile.prepare(request, chrono::Utc::now().timestamp(), jti.clone()).map_err(|refusal| {
        metrics.token(&profile.name, "none", "refused");
        refused(refusal)
    })?;
    let signed = sign_prepared(snapshot, profile, prepared, jti, deadline).await.inspect_err(|_| {
        metrics.token(&profile.name, "none", "failed");
    })?;
    metrics.signed_in(started.elapsed());
    let entry = Entry {
        jti: signed.jti.clone(),
        profile: profile.name.clone(),
        client: client.name.clone(),
        sub,
        kid: signed.kid.clone(),
        alg: signed.alg.to_owned(),
        iat: signed.issued_at,
        exp: signed.expires_at,
        claim_names,
        client_generation: client.generation,
    };
    let iat = signed.issued_at;
    let record_by = deadline.for_token(iat, chrono::Utc::now().timestamp_millis(), std::time::Instant::now());
    let recorded = state.ledger.record(entry, record_by).await;
    // Recorded, but too late to leave with the lifetime the caller asked for: the row stays
    // (an issuance nobody received), the token does not leave.
    let recorded = recorded.and_then(|()| {
        if deadline.token_fresh(iat, chrono::Utc::now().timestamp_millis()) {
            Ok(())
        } else {
            Err(NotRecorded::Failed)
        }
    });
    if let Err(refusal) = recorded {
        metrics.token(&profile.name, signed.alg, "failed");
        return Ok(Err(refusal));
    }
    metrics.token(&profile.name, signed.alg, "issued");
    tracing::debug!(profile = %profile.name, client = %client.name, kid = signed.kid, jti = signed.jti, "token issued");
    Ok(Ok(signed))
}

/// Signs prepared claims with the profile's key set or secret.
async fn sign_prepared(
    snapshot: &Snapshot,
    profile: &Profile,
    prepared: Prepared,
    jti: String,
    deadline: Deadline,
) -> Result<Signed, ApiError> {
    let (token, kid, alg) = match &profile.kind {
        ProfileKind::KeySet { key_set: set, .. } => {
            let signer = snapshot
                .key_sets
                .get(set)
                .and_then(|view| view.signer.clone())
                .ok_or_else(|| ApiError::NoSigningKey(format!("key set {set} has no signing key yet")))?;
            // A PKCS#11 token that hangs, or a queue of signatures longer than the deadline,
            // costs the request its deadline, not more.
            // A key service that fails or is slow costs the request at most its deadline (and
            // the service's own sign_timeout_ms), and never a token or a ledger row.
            let silent = || ApiError::NoSigningKey(format!("key set {set}'s PKCS#11 token does not answer"));
            let service_failed = |cause: String| ApiError::KeyServiceFailed { key_set: set.clone(), cause };
            let signed =
                tokio::time::timeout_at(deadline.at().into(), signer.sign_async(prepared.claims, deadline.at()))
                    .await
                    .map_err(|_| {
                        if signer.on_token() {
                            silent()
                        } else if signer.on_key_service() {
                            service_failed("no answer within the request deadline".to_owned())
                        } else {
                            ApiError::Overloaded
                        }
                    })?;
            let token = signed.map_err(|err| match err {
                KeyError::Token(TokenError::Unavailable) => silent(),
                KeyError::TooLate | KeyError::Remote(RemoteError::Busy(_)) => ApiError::Overloaded,
                KeyError::Remote(RemoteError::Failed(cause)) => service_failed(cause),
                other => ApiError::from(anyhow::Error::from(other)),
            })?;
            (token, Some(signer.kid().to_owned()), signer.algorithm().as_str())
        }
        ProfileKind::SharedSecret { .. } => {
            let secret = snapshot.secrets.get(&profile.name).ok_or_else(|| {
                ApiError::NoSigningKey(format!(
                    "profile {0} has no secret yet (an operator sets it with `keyward secrets set {0}`)",
                    profile.name
                ))
            })?;
            let token = secret.sign(prepared.claims).map_err(anyhow::Error::from)?;
            (token, None, secret.algorithm().as_str())
        }
    };
    Ok(Signed {
        token,
        kid,
        alg,
        jti,
        issued_at: prepared.issued_at,
        expires_at: prepared.expires_at,
        expires_in: prepared.expires_at - prepared.issued_at,
    })
}

/// A signed token.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Signed {
    pub(super) token: String,
    /// The signing key; absent for a shared-secret profile (the token's header has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    alg: &'static str,
    /// The ledger's id for the token; the token holds it as its `jti` claim unless a
    /// shared-secret template leaves `{jti}` out.
    jti: String,
    issued_at: i64,
    expires_at: i64,
    expires_in: i64,
}

/// A fresh `jti`: the issue time in milliseconds (48 bits) then 96 random bits, base64url
/// (24 characters).
///
/// The time prefix keeps the ledger's `jti` index local: the rows of one commit land on
/// neighbouring pages instead of one random page each (which cost a page write apiece).
/// Uniqueness and unguessability rest on the random part: 2^48 tokens in one millisecond
/// before a collision becomes likely.
fn new_jti() -> String {
    let mut random = [0u8; 12];
    rand::rng().fill_bytes(&mut random);
    jti_from(chrono::Utc::now().timestamp_millis(), random)
}

fn jti_from(unix_millis: i64, random: [u8; 12]) -> String {
    let mut bytes = [0u8; 18];
    bytes[..6].copy_from_slice(&unix_millis.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) fn refused(refusal: Refusal) -> ApiError {
    match refusal.kind {
        RefusalKind::Malformed => ApiError::InvalidBody { field: Some(refusal.field), detail: refusal.detail },
        RefusalKind::Unacceptable => ApiError::Refused { field: refusal.field, detail: refusal.detail },
        RefusalKind::NotNow => ApiError::Conflict(refusal.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_is_the_time_then_96_random_bits() {
        let a = new_jti();
        assert_eq!(a.len(), 24);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 18);
        assert_ne!(a, new_jti());
        let jti = jti_from(0x0123_4567_89ab, [0xff; 12]);
        let mut expected = vec![0x01, 0x23, 0x45, 0x67, 0x89, 0xab];
        expected.extend([0xff; 12]);
        assert_eq!(URL_SAFE_NO_PAD.decode(&jti).unwrap(), expected);
        // Tokens issued close together share a prefix (and so neighbouring index pages):
        // the first five characters are the top 30 bits of the time, 2^18 ms (4.4 minutes).
        let window_start = 1_795_000_000_000 & !0x3_ffff;
        let (first, last) = (jti_from(window_start, [0; 12]), jti_from(window_start + 0x3_ffff, [0xff; 12]));
        assert_eq!(first[..5], last[..5]);
        assert_ne!(first[..5], jti_from(window_start + 0x4_0000, [0; 12])[..5]);
    }
}
