//! API errors, rendered once as `application/problem+json` (RFC 9457) with no internal text.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::partner::exchange::ExchangeError;
use crate::policy::identity::Refusal;
use crate::policy::permission::Permission;

/// Every way an API request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No bearer token, or not in the `Authorization: Bearer` form.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// A bearer token that no active client has (checked against the store).
    #[error("unknown bearer token")]
    UnknownToken,
    /// A bearer token not in the snapshot and not looked up (too many unknown tokens).
    #[error("bearer token not recognised yet")]
    TokenNotChecked,
    /// A query parameter with a value it does not take.
    #[error("invalid query parameter {parameter}: {detail}")]
    InvalidQuery {
        /// The parameter.
        parameter: String,
        /// What it takes.
        detail: String,
    },
    /// The client may not use this resource.
    #[error("client may not use {0}")]
    Forbidden(String),
    /// The client lacks this administrative permission.
    #[error("this client lacks the permission {0}")]
    MissingPermission(Permission),
    /// A workload identity token that does not authenticate, and why.
    #[error(transparent)]
    IdentityRefused(Refusal),
    /// The identity provider's keys cannot be fetched now.
    #[error("the identity provider's keys cannot be fetched now; retry shortly")]
    IdentityProviderUnavailable,
    /// A valid workload identity token, but no active client is bound to its identity.
    #[error("no active client is bound to this workload identity")]
    UnknownIdentity,
    /// A mutual-TLS listener, and the connection presented no client certificate.
    #[error("a client certificate is required")]
    CertificateRequired,
    /// The client is bound to a certificate that the connection did not present; says why.
    #[error("{0}")]
    WrongCertificate(String),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The method is not supported here.
    #[error("method not allowed")]
    MethodNotAllowed(String),
    /// The body is not usable JSON of the expected shape.
    #[error("invalid request body: {detail}")]
    InvalidBody {
        /// The field at fault, when known.
        field: Option<String>,
        /// What is wrong.
        detail: String,
    },
    /// The body is well formed but the profile refuses it.
    #[error("request refused: {field}: {detail}")]
    Refused {
        /// The field at fault.
        field: String,
        /// Why.
        detail: String,
    },
    /// The request conflicts with the keys' state (e.g. rotation too early).
    #[error("{0}")]
    Conflict(String),
    /// The client is over its rate limit; retry after this many seconds.
    #[error("rate limit exceeded")]
    TooManyRequests(u64),
    /// The ledger could not record the issuance (within the request deadline), so no token
    /// is handed out.
    #[error("the issuance could not be recorded")]
    NotRecorded,
    /// `max_signing_requests` are being served: refused at once rather than queued.
    #[error("too many sign and token requests at once")]
    Overloaded,
    /// The body is over the limit.
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive within this many seconds; the connection is closed.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// The body is not JSON.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// No signing key is loaded for the profile's key set.
    #[error("{0}")]
    NoSigningKey(String),
    /// The key service holding the key set's signing key failed, refused or timed out
    /// (the cause is logged, not shown).
    #[error("key set {key_set}'s key service did not sign: {cause}")]
    KeyServiceFailed {
        /// The key set.
        key_set: String,
        /// Why, for the log.
        cause: String,
    },
    /// The partner did not give us a token.
    #[error(transparent)]
    Upstream(#[from] crate::partner::exchange::ExchangeError),
    /// Anything else: logged in full, answered with a generic 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// An RFC 9457 problem: every error response's body (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// A URN naming the kind of problem.
    #[serde(rename = "type")]
    type_: String,
    /// Short summary.
    title: &'a str,
    /// HTTP status.
    status: u16,
    /// What went wrong, for a person; never internal error text.
    detail: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// The administrative permission the client lacks (a 403 `missing-permission`).
    #[serde(skip_serializing_if = "Option::is_none")]
    permission: Option<String>,
}

impl ApiError {
    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::Unauthorized | ApiError::UnknownToken | ApiError::TokenNotChecked => {
                ("unauthorized", "Unauthorized")
            }
            ApiError::InvalidQuery { .. } => ("invalid-query", "Invalid query parameter"),
            ApiError::Forbidden(_) => ("forbidden", "Forbidden"),
            ApiError::MissingPermission(_) => ("missing-permission", "Permission missing"),
            ApiError::IdentityRefused(_) => ("invalid-identity-token", "Workload identity token refused"),
            ApiError::IdentityProviderUnavailable => {
                ("identity-provider-unavailable", "The identity provider's keys cannot be fetched")
            }
            ApiError::UnknownIdentity => ("unknown-identity", "No client is bound to this identity"),
            ApiError::CertificateRequired => ("certificate-required", "Client certificate required"),
            ApiError::WrongCertificate(_) => ("wrong-certificate", "Client certificate refused"),
            ApiError::NotFound(_) => ("not-found", "Not Found"),
            ApiError::MethodNotAllowed(_) => ("method-not-allowed", "Method Not Allowed"),
            ApiError::InvalidBody { .. } => ("invalid-body", "Invalid request body"),
            ApiError::Refused { .. } => ("request-refused", "Request refused by the profile"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::TooManyRequests(_) => ("rate-limited", "Too Many Requests"),
            // The same for /token (the assertion behind it): callers handle one type.
            ApiError::NotRecorded | ApiError::Upstream(ExchangeError::NotRecorded) => {
                ("not-recorded", "The issuance could not be recorded")
            }
            ApiError::Overloaded => ("overloaded", "Too many requests at once"),
            ApiError::TooLarge(_) => ("body-too-large", "Request body too large"),
            ApiError::BodyTimeout(_) => ("body-timeout", "Request Timeout"),
            ApiError::UnsupportedMediaType => ("unsupported-media-type", "Unsupported Media Type"),
            ApiError::NoSigningKey(_) => ("no-signing-key", "No signing key available"),
            ApiError::KeyServiceFailed { .. } => ("key-service-failed", "The key service did not sign"),
            ApiError::Upstream(_) => ("upstream", "The partner did not issue a token"),
            ApiError::Internal(_) => ("internal", "Internal Server Error"),
        }
    }

    /// The text a caller may see: never internal error text.
    fn public_detail(&self) -> String {
        match self {
            ApiError::Internal(_) => "the server could not complete the request; see its log".to_owned(),
            ApiError::NoSigningKey(what) => format!("{what}; try again shortly"),
            ApiError::KeyServiceFailed { key_set, .. } => format!(
                "the key service holding key set {key_set}'s signing key failed or did not answer in time, so no \
                 token was issued; try again shortly"
            ),
            ApiError::MethodNotAllowed(allow) => format!("this resource allows {allow}"),
            ApiError::TooManyRequests(wait) => format!("this client's rate limit is exceeded; retry in {wait} s"),
            ApiError::NotRecorded => "the issuance ledger could not record the token within the request \
                                      deadline, so none was issued; try again shortly"
                .to_owned(),
            ApiError::Overloaded => {
                "the server is serving as many sign and token requests as it takes at once; try again shortly"
                    .to_owned()
            }
            ApiError::Unauthorized => {
                "send Authorization: Bearer <client token> (create one with `keyward clients add`)".to_owned()
            }
            ApiError::UnknownToken => "no active client has this token: it was revoked or replaced, or it belongs \
                                       to another keyward database (`keyward clients list` shows the clients)"
                .to_owned(),
            ApiError::TokenNotChecked => {
                "this token is not known yet and too many unknown tokens arrived to look it up now; retry in a \
                 second"
                    .to_owned()
            }
            ApiError::UnsupportedMediaType => {
                "the body must be JSON sent with Content-Type: application/json (curl: -H 'Content-Type: \
                 application/json', or --json)"
                    .to_owned()
            }
            ApiError::CertificateRequired => "this listener takes mutual TLS only: connect with a client \
                                              certificate issued by its client CA"
                .to_owned(),
            ApiError::MissingPermission(permission) => format!(
                "this client lacks the permission {permission} (an operator grants it with `keyward clients update \
                 NAME --permission {permission}`)"
            ),
            ApiError::InvalidQuery { detail, .. } => detail.clone(),
            ApiError::InvalidBody { detail, .. } | ApiError::Refused { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::InvalidBody { field, .. } => field.as_deref(),
            ApiError::Refused { field, .. } => Some(field),
            ApiError::InvalidQuery { parameter, .. } => Some(parameter),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::UnknownToken | ApiError::TokenNotChecked => StatusCode::UNAUTHORIZED,
            ApiError::InvalidQuery { .. } => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) | ApiError::WrongCertificate(_) | ApiError::MissingPermission(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::IdentityRefused(_) | ApiError::IdentityProviderUnavailable | ApiError::UnknownIdentity => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::CertificateRequired => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidBody { .. } => StatusCode::BAD_REQUEST,
            ApiError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotRecorded | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NoSigningKey(_) | ApiError::KeyServiceFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(ExchangeError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Upstream(ExchangeError::Local) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Upstream(ExchangeError::NotRecorded) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            // A ledger outage or a missing key or secret is one episode for the operator, logged
            // once where it starts (ledger writer, scheduler) and shown by /readyz: not once per
            // request.
            let episode = matches!(
                self,
                ApiError::NotRecorded
                    | ApiError::Upstream(ExchangeError::NotRecorded)
                    | ApiError::NoSigningKey(_)
                    | ApiError::Overloaded
            );
            if episode {
                tracing::debug!(error = format!("{self:#}"), status = status.as_u16(), "request refused");
            } else {
                tracing::error!(error = format!("{self:#}"), status = status.as_u16(), "request failed");
            }
        }
        let (slug, title) = self.slug_and_title();
        let problem = Problem {
            type_: format!("urn:keyward:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: self.public_detail(),
            field: self.field(),
            permission: match self {
                ApiError::MissingPermission(permission) => Some(permission.to_string()),
                _ => None,
            },
        };
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        match self {
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"keyward\""));
            }
            ApiError::UnknownToken | ApiError::IdentityRefused(_) | ApiError::UnknownIdentity => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"keyward\", error=\"invalid_token\""));
            }
            ApiError::IdentityProviderUnavailable => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"keyward\", error=\"invalid_token\""));
                response.insert_header((header::RETRY_AFTER, "5"));
            }
            ApiError::TokenNotChecked => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"keyward\", error=\"invalid_token\""));
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            ApiError::TooManyRequests(wait) => {
                response.insert_header((header::RETRY_AFTER, wait.to_string()));
            }
            // Every 503 and 504 is worth trying again a second later (on another replica, say).
            _ if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            ApiError::BodyTimeout(_) => {
                response.force_close();
            }
            _ => {}
        }
        response.body(serde_json::to_vec(&problem).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn internal_errors_answer_generic_text_only() {
        let err = ApiError::Internal(anyhow::anyhow!("sqlite: disk I/O error at /srv/secret/path"));
        let body = err.error_response().into_body().try_into_bytes().unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 500);
        assert_eq!(problem["detail"], "the server could not complete the request; see its log");
        assert!(!String::from_utf8_lossy(&body).contains("sqlite") && !String::from_utf8_lossy(&body).contains("/srv"));
    }
}
