//! The read-only operator console at `/console/` on the internal listener: key-set
//! timelines, partners, ledger and health, rendered on the server from the same operations
//! the CLI prints (`keys schedule`, `partners`), with no script at all.

mod pages;
mod session;
mod timeline;

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::Markup;
use serde::Deserialize;

use crate::app::snapshot::{Recheck, Shared};
use crate::http::client_cert;
use crate::http::problem::ApiError;
use crate::ops;
use crate::policy::client::Client;
use crate::policy::permission::{Action, Scope};
use session::{random_token, same_secret, set_cookie, Sessions, Viewer, SESSION_COOKIE, SIGN_IN_COOKIE};

/// Only this origin's own stylesheet and images; no script, no frames, forms post here only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The stylesheet every page links (served by keyward itself).
const STYLESHEET: &str = include_str!("console.css");

/// What the console's handlers need.
pub struct ConsoleState {
    shared: Arc<Shared>,
    sessions: Sessions,
    secure: bool,
}

impl ConsoleState {
    /// The console over the shared snapshot; its cookies are `Secure` when `secure` (TLS).
    pub fn new(shared: Arc<Shared>, secure: bool) -> Self {
        ConsoleState { shared, sessions: Sessions::default(), secure }
    }
}

/// Registers the console's routes under `/console/`.
pub fn configure(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/console")
            .route("", web::get().to(|| async { see_other("/console/").finish() }))
            .route("/", web::get().to(home))
            .route("/console.css", web::get().to(stylesheet))
            .route("/sign-in", web::get().to(sign_in_form))
            .route("/sign-in", web::post().to(sign_in))
            .route("/sign-out", web::post().to(sign_out))
            .route("/keys", web::get().to(keys))
            .route("/partners", web::get().to(partners))
            .route("/health", web::get().to(health)),
    );
}

/// An HTML page with the console's headers: strict CSP, never cached, never framed.
fn page(status: actix_web::http::StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(markup.into_string())
}

fn ok(markup: Markup) -> HttpResponse {
    page(actix_web::http::StatusCode::OK, markup)
}

fn see_other(to: &str) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::SeeOther();
    response.insert_header((header::LOCATION, to)).insert_header((header::CACHE_CONTROL, "no-store"));
    response
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(STYLESHEET)
}

async fn home(viewer: Viewer) -> HttpResponse {
    let first = if viewer.client.permissions.check_any(Action::KeysRead).is_ok() { "keys" } else { "partners" };
    see_other(&format!("/console/{first}")).finish()
}

/// The sign-in form, with a fresh anti-forgery value in a cookie and in the form.
async fn sign_in_form(req: HttpRequest, state: web::Data<ConsoleState>) -> HttpResponse {
    let certificate = client_cert::certificate_only_client(&req, state.shared.snapshot()).map(|(_, c)| c.name);
    sign_in_page(&state, actix_web::http::StatusCode::OK, certificate.as_deref(), None)
}

fn sign_in_page(
    state: &ConsoleState,
    status: actix_web::http::StatusCode,
    certificate: Option<&str>,
    refusal: Option<&str>,
) -> HttpResponse {
    let csrf = random_token();
    let mut response = page(status, pages::sign_in(&csrf, certificate, refusal));
    if let Ok(value) = header::HeaderValue::from_str(&set_cookie(SIGN_IN_COOKIE, &csrf, 600, state.secure)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct SignIn {
    csrf: String,
    #[serde(default)]
    token: String,
}

/// Signs a client in by its token, or a certificate-only client by its certificate, if it
/// may read something the console shows.
async fn sign_in(req: HttpRequest, state: web::Data<ConsoleState>, form: web::Form<SignIn>) -> HttpResponse {
    let bad = actix_web::http::StatusCode::BAD_REQUEST;
    let forbidden = actix_web::http::StatusCode::FORBIDDEN;
    let expected = session::cookie(&req, SIGN_IN_COOKIE);
    if !expected.is_some_and(|expected| same_secret(&expected, &form.csrf)) {
        return sign_in_page(&state, bad, None, Some("The form expired or came from elsewhere: sign in again."));
    }
    if client_cert::require_if_mutual(&req).is_err() {
        return sign_in_page(&state, forbidden, None, Some("This listener requires a client certificate."));
    }
    let token = form.token.trim();
    let client = if token.is_empty() {
        client_cert::certificate_only_client(&req, state.shared.snapshot()).map(|(_, c)| c)
    } else {
        client_by_token(&state, token).await
    };
    let Some(client) = client else {
        return sign_in_page(&state, actix_web::http::StatusCode::UNAUTHORIZED, None, Some("Unknown token."));
    };
    if client_cert::check_binding(&req, &client).is_err() {
        return sign_in_page(&state, forbidden, None, Some("This client must connect with its certificate."));
    }
    let may_read = [Action::KeysRead, Action::PartnersRead].iter().any(|a| client.permissions.check_any(*a).is_ok());
    if !may_read {
        return sign_in_page(&state, forbidden, None, Some("This client has neither keys:read nor partners:read."));
    }
    let lifetime = state.shared.config().server.console_session.as_secs_i64();
    let id = state.sessions.start(&client, now() + lifetime, now());
    tracing::info!(client = %client.name, "console sign-in");
    see_other("/console/")
        .append_header((header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, lifetime, state.secure)))
        .append_header((header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, "", 0, state.secure)))
        .finish()
}

/// The active client of `token`, as the store has it (a token printed a moment ago works).
async fn client_by_token(state: &ConsoleState, token: &str) -> Option<Client> {
    if let Some(client) = state.shared.snapshot().clients.authenticate(token) {
        return Some(client.clone());
    }
    match state.shared.recheck(token).await {
        Recheck::Known(fresh) => fresh.clients.authenticate(token).cloned(),
        Recheck::Unknown | Recheck::NotChecked => None,
    }
}

#[derive(Deserialize)]
struct SignOut {
    csrf: String,
}

/// Ends the session (the form carries the session's own token).
async fn sign_out(viewer: Viewer, state: web::Data<ConsoleState>, form: web::Form<SignOut>) -> HttpResponse {
    if !same_secret(&viewer.csrf, &form.csrf) {
        return page(
            actix_web::http::StatusCode::BAD_REQUEST,
            pages::refused(&viewer, "The form came from elsewhere."),
        );
    }
    state.sessions.end(&viewer.session);
    tracing::info!(client = %viewer.client.name, "console sign-out");
    see_other("/console/sign-in")
        .append_header((header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0, state.secure)))
        .finish()
}

/// A page the viewer lacks `action` for.
fn missing(viewer: &Viewer, action: Action) -> HttpResponse {
    page(actix_web::http::StatusCode::FORBIDDEN, pages::refused(viewer, &format!("This client lacks {action}.")))
}

async fn keys(viewer: Viewer, state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    let Ok(scope) = viewer.client.permissions.check_any(Action::KeysRead).cloned() else {
        return Ok(missing(&viewer, Action::KeysRead));
    };
    let now = now();
    let mut sets = ops::schedule(state.shared.store(), state.shared.config(), now).await?;
    sets.retain(|set| scope.covers(&set.name));
    Ok(ok(pages::keys(&viewer, &sets, now)))
}

async fn partners(viewer: Viewer, state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    let Ok(scope) = viewer.client.permissions.check_any(Action::PartnersRead).cloned() else {
        return Ok(missing(&viewer, Action::PartnersRead));
    };
    let now = now();
    let mut report = ops::partners::report(state.shared.store(), state.shared.config(), now).await?;
    report.partners.retain(|p| scope.covers(&p.name));
    Ok(ok(pages::partners(&viewer, &report, now)))
}

async fn health(viewer: Viewer, state: web::Data<ConsoleState>) -> Result<HttpResponse, ApiError> {
    if viewer.client.permissions.check_any(Action::KeysRead).is_err() {
        return Ok(missing(&viewer, Action::KeysRead));
    }
    let now = now();
    // The audit trail names every key set and client: like `GET /v1/events`, only for
    // `events:read` everywhere.
    let with_audit = matches!(viewer.client.permissions.check_any(Action::EventsRead), Ok(Scope::All));
    let health = pages::Health::gather(&state.shared, now, with_audit).await?;
    Ok(ok(pages::health(&viewer, &health, now)))
}
