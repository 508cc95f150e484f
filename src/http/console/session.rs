//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie (`Secure` under
//! TLS) standing for a client for a while; kept in memory, so a restart signs everyone out.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::Mutex;

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use super::ConsoleState;
use crate::http::client_cert;
use crate::policy::client::Client;

/// The session cookie.
pub(super) const SESSION_COOKIE: &str = "kw_console";
/// The sign-in form's anti-forgery cookie (double submit: the form carries the same value).
pub(super) const SIGN_IN_COOKIE: &str = "kw_console_csrf";

/// A fresh random value for a cookie or a form (256 bits).
pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether two secrets are equal, in time independent of where they differ.
pub(super) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a.as_bytes(), b.as_bytes())
}

/// One signed-in client.
struct Session {
    client: String,
    generation: i64,
    expires_at: i64,
    csrf: String,
}

/// Every live session, by id.
#[derive(Default)]
pub(super) struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    /// Starts a session for `client` until `expires_at`; returns its id.
    pub(super) fn start(&self, client: &Client, expires_at: i64, now: i64) -> String {
        let id = random_token();
        let session =
            Session { client: client.name.clone(), generation: client.generation, expires_at, csrf: random_token() };
        if let Ok(mut sessions) = self.0.lock() {
            sessions.retain(|_, s| s.expires_at > now);
            sessions.insert(id.clone(), session);
        }
        id
    }

    /// Ends session `id`.
    pub(super) fn end(&self, id: &str) {
        if let Ok(mut sessions) = self.0.lock() {
            sessions.remove(id);
        }
    }

    /// The live session `id` at `now`: its client's name and generation, and its form token.
    fn find(&self, id: &str, now: i64) -> Option<(String, i64, String)> {
        let mut sessions = self.0.lock().ok()?;
        match sessions.get(id) {
            Some(s) if s.expires_at > now => Some((s.client.clone(), s.generation, s.csrf.clone())),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }
}

/// The value of cookie `name` in the request.
pub(super) fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value for the console's path: HttpOnly, SameSite=Strict, `Secure` when
/// the listener is TLS; `max_age` 0 deletes it.
pub(super) fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/console/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// A signed-in client viewing the console, as the store has it now.
pub(super) struct Viewer {
    pub(super) client: Client,
    pub(super) session: String,
    pub(super) csrf: String,
}

/// No live session: the browser is sent to the sign-in form.
#[derive(Debug, thiserror::Error)]
#[error("sign in to the console first")]
pub(super) struct SignInRequired;

impl ResponseError for SignInRequired {
    fn status_code(&self) -> StatusCode {
        StatusCode::SEE_OTHER
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/console/sign-in"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish()
    }
}

impl FromRequest for Viewer {
    type Error = SignInRequired;
    type Future = Ready<Result<Self, SignInRequired>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(viewer(req).ok_or(SignInRequired))
    }
}

fn viewer(req: &HttpRequest) -> Option<Viewer> {
    let state = req.app_data::<web::Data<ConsoleState>>()?;
    let session = cookie(req, SESSION_COOKIE)?;
    let (name, generation, csrf) = state.sessions.find(&session, chrono::Utc::now().timestamp())?;
    // A client changed since sign-in (token rotated, rights changed, removed) signs in again.
    let client = state.shared.snapshot().clients.by_name(&name).filter(|c| c.generation == generation).cloned();
    let Some(client) = client else {
        state.sessions.end(&session);
        return None;
    };
    client_cert::require_if_mutual(req).ok()?;
    client_cert::check_binding(req, &client).ok()?;
    Some(Viewer { client, session, csrf })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client {
            name: "ops".to_owned(),
            profiles: Default::default(),
            permissions: Default::default(),
            rate: None,
            certificate: None,
            certificate_only: false,
            identity: None,
            generation: 0,
            token_hash: [0; 32],
        }
    }

    #[test]
    fn a_session_ends_when_it_expires_or_is_ended() {
        let sessions = Sessions::default();
        let id = sessions.start(&client(), 100, 0);
        assert_eq!(sessions.find(&id, 99).map(|(name, ..)| name).as_deref(), Some("ops"));
        assert!(sessions.find(&id, 100).is_none(), "a session lives until expires_at, not at it");
        let id = sessions.start(&client(), 100, 0);
        sessions.end(&id);
        assert!(sessions.find(&id, 1).is_none());
        assert!(sessions.find("made-up", 1).is_none());
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_only_under_tls() {
        assert_eq!(set_cookie("a", "b", 60, false), "a=b; Path=/console/; Max-Age=60; HttpOnly; SameSite=Strict");
        assert!(set_cookie("a", "b", 60, true).ends_with("; Secure"));
    }
}
