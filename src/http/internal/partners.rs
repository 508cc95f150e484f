//! Partners: their JWKS fetches, the keys they hold and the hand-over gates.

use actix_web::{web, HttpResponse};

use super::auth::Admin;
use super::{no_store_json, InternalState};
use crate::http::problem::{ApiError, Problem};
use crate::ops;
use crate::policy::permission::{Action, Scope};

#[utoipa::path(get, path = "/v1/partners", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Per partner: last fetch, fetches and addresses in 24 h, whether it holds the current and the next key, gate states; and unmatched fetches by user agent", body = Object),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem)))]
pub(super) async fn partners(Admin(caller): Admin, state: web::Data<InternalState>) -> Result<HttpResponse, ApiError> {
    let scope = caller.scope(Action::PartnersRead)?;
    let shared = &state.shared;
    let mut report = ops::partners::report(shared.store(), shared.config(), chrono::Utc::now().timestamp()).await?;
    if let Scope::Only(_) = scope {
        // Only the partners named: fetches no partner matched, and hand-overs across
        // partners, are for a client that may read every partner.
        report.partners.retain(|p| scope.covers(&p.name));
        report.unmatched.clear();
        report.handovers.clear();
    }
    Ok(no_store_json(&report))
}
