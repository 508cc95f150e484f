//! Key administration for admin clients: key sets and timelines, rotation, revocation.

use crate::ops::partners::NotYetFetched;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::auth::Admin;
use super::body::{parse_json, read_body};
use super::{no_store_json, InternalState};
use crate::http::problem::{ApiError, Problem};
use crate::keys::rotation::{Exposure, Refused, Step};
use crate::ops::{self, ActionError, Outcome};
use crate::policy::permission::Action;

impl From<ActionError> for ApiError {
    fn from(err: ActionError) -> Self {
        match err {
            ActionError::UnknownSet(name) => ApiError::NotFound(format!("no key set is named {name:?}")),
            ActionError::Refused(Refused::UnknownKey(kid)) => ApiError::NotFound(format!("no key {kid}")),
            ActionError::Refused(Refused::TooEarly { kid, not_before }) => ApiError::Conflict(format!(
                "the next key {kid} has not been published for publish_ahead yet; it may sign from {not_before} \
                 (Unix time); send {{\"force\": true}} to rotate now anyway"
            )),
            ActionError::Refused(refused) => ApiError::Conflict(refused.to_string()),
            ActionError::Failed(err) => ApiError::Internal(err),
        }
    }
}

#[utoipa::path(get, path = "/v1/key-sets", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Every key set's rules and keys' timelines", body = KeySets),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem)))]
pub(super) async fn key_sets(Admin(caller): Admin, state: web::Data<InternalState>) -> Result<HttpResponse, ApiError> {
    let scope = caller.scope(Action::KeysRead)?;
    let now = chrono::Utc::now().timestamp();
    let mut key_sets = ops::schedule(state.shared.store(), state.shared.config(), now).await?;
    key_sets.retain(|set| scope.covers(&set.name));
    Ok(no_store_json(&KeySets { key_sets }))
}

/// Every key set's rules and keys' timelines.
#[derive(Serialize, utoipa::ToSchema)]
struct KeySets {
    /// Per set: `name`, `rotate_every`, `publish_ahead`, `retain_after`,
    /// `published_after_signing` (the longest token lifetime plus `retain_after`; all in
    /// seconds) and `keys`.
    #[schema(value_type = Vec<Object>)]
    key_sets: Vec<ops::SetSchedule>,
}

/// Optional body of the rotate route.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    force: bool,
    /// Why, for the audit trail (optional).
    #[serde(default)]
    reason: Option<String>,
}

/// Optional body of the revoke route.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    /// Why, for the audit trail (optional; the README's compromise procedure gives one).
    #[serde(default)]
    reason: Option<String>,
}

/// What a key action did.
#[derive(Serialize, utoipa::ToSchema)]
struct ActionAnswer {
    key_set: String,
    /// Each step: `{"step": "promote" | "schedule" | "revoke" | "retire" | "create_current" | "create_next", "kid"?, "activates_at"?}`.
    #[schema(value_type = Vec<Object>)]
    steps: Vec<Step>,
    /// The set's signing key afterwards.
    signing_kid: Option<String>,
    /// When the action made another key sign: `kid`, `published_for` and `cache_window`
    /// (seconds), `within_cache_window`, and `may_be_rejected_until` (Unix seconds or null).
    #[schema(value_type = Option<Object>)]
    new_signer: Option<Exposure>,
    /// Then: each partner of the set not yet seen fetching the new signer (`partner`,
    /// `last_fetch` in Unix seconds or null).
    #[schema(value_type = Vec<Object>)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_yet_fetched: Vec<NotYetFetched>,
}

/// Answers a key action with its steps, the set's signing key afterwards and, if the action
/// made a new key sign, how long verifiers have had it.
async fn after_action(state: &InternalState, outcome: Outcome) -> Result<HttpResponse, ApiError> {
    state.shared.reload().await?;
    let snapshot = state.shared.snapshot();
    let signing_kid =
        snapshot.key_sets.get(&outcome.key_set).and_then(|v| v.signer.as_ref()).map(|s| s.kid().to_owned());
    let Outcome { key_set, steps, new_signer, not_yet_fetched } = outcome;
    Ok(no_store_json(&ActionAnswer { key_set, steps, signing_kid, new_signer, not_yet_fetched }))
}

#[utoipa::path(post, path = "/v1/key-sets/{name}/rotate", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "Key set")),
    request_body(content = Option<RotateRequest>, description = "Optional: no body or `null` means `{\"force\": false}`; `reason` is recorded in the audit trail"),
    responses((status = 200, description = "Steps taken and the new signing kid", body = ActionAnswer),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 408, body = Problem),
        (status = 409, body = Problem, description = "The next key was published too recently"),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem)))]
pub(super) async fn rotate(
    Admin(caller): Admin,
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    caller.permit(Action::KeysRotate, &name)?;
    let body = read_body(&req, payload, state.body_timeout()).await?;
    // No body and `null` both mean the defaults.
    let request: RotateRequest =
        if body.is_empty() { None } else { parse_json::<Option<RotateRequest>>(&body)? }.unwrap_or_default();
    let shared = &state.shared;
    let store = shared.store().attributed(caller.attribution(&req, request.reason));
    let client = caller.client.name;
    let steps = ops::rotate(&store, shared.custody(), shared.config(), &name, request.force).await?;
    let now = chrono::Utc::now().timestamp();
    tracing::info!(client, key_set = %name, force = request.force, "rotation requested through the admin API");
    after_action(&state, Outcome::of(shared.store(), shared.config(), &name, steps, now).await?).await
}

#[utoipa::path(post, path = "/v1/keys/{kid}/revoke", tag = "admin", security(("bearer" = [])),
    params(("kid" = String, Path, description = "The key's kid")),
    request_body(content = Option<RevokeRequest>, description = "Optional: `{\"reason\": \"...\"}`, recorded in the audit trail"),
    responses((status = 200, description = "Steps taken, the new signing kid and, if the revoked key was signing, how long its successor has been published", body = ActionAnswer),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 408, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 409, body = Problem, description = "Already revoked"), (status = 429, body = Problem)))]
pub(super) async fn revoke(
    Admin(caller): Admin,
    req: HttpRequest,
    kid: web::Path<String>,
    payload: web::Payload,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    let shared = &state.shared;
    let record = shared.store().key(&kid).await?.ok_or_else(|| ApiError::NotFound(format!("no key {kid}")))?;
    caller.permit(Action::KeysRevoke, &record.key_set)?;
    let body = read_body(&req, payload, state.body_timeout()).await?;
    let request: RevokeRequest =
        if body.is_empty() { None } else { parse_json::<Option<RevokeRequest>>(&body)? }.unwrap_or_default();
    let store = shared.store().attributed(caller.attribution(&req, request.reason));
    let client = caller.client.name;
    let outcome = ops::revoke(&store, shared.custody(), shared.config(), &kid).await?;
    match &outcome.new_signer {
        Some(signer) if signer.within_cache_window => tracing::warn!(
            client,
            kid = %kid,
            key_set = %outcome.key_set,
            new_signer = %signer.kid,
            published_for_s = signer.published_for,
            cache_window_s = signer.cache_window,
            may_be_rejected_until = signer.may_be_rejected_until,
            "key revoked through the admin API; its successor was published for less than jwks_max_age + \
             clock_skew: verifiers that cached the JWKS before it appeared may reject its tokens until then"
        ),
        Some(signer) => tracing::warn!(
            client,
            kid = %kid,
            key_set = %outcome.key_set,
            new_signer = %signer.kid,
            published_for_s = signer.published_for,
            cache_window_s = signer.cache_window,
            "key revoked through the admin API; its successor was published long enough for cached JWKS to hold it"
        ),
        None => tracing::warn!(client, kid = %kid, key_set = %outcome.key_set, "key revoked through the admin API"),
    }
    for lagging in &outcome.not_yet_fetched {
        tracing::warn!(
            partner = %lagging.partner,
            last_fetch = lagging.last_fetch,
            key_set = %outcome.key_set,
            "partner has not yet fetched the new signing key (revocation does not wait for the gate)"
        );
    }
    after_action(&state, outcome).await
}

#[utoipa::path(get, path = "/v1/master-key", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Which master key seals the keyring, its source, when it last changed, \
        how many values each term seals, and what still needs an older key", body = ops::master_key::Status),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem)))]
pub(super) async fn master_key(
    Admin(caller): Admin,
    state: web::Data<InternalState>,
) -> Result<HttpResponse, ApiError> {
    caller.permit_everywhere(Action::KeysRead)?;
    let shared = &state.shared;
    let status = ops::master_key::status(shared.store(), Some(&shared.keyring()), Some(shared.roots())).await?;
    Ok(no_store_json(&status))
}
