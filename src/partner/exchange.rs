//! Trading our assertion (or registered key) for a partner's token (cached by `super::cache`).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Duration;
use crate::policy::profile::{AccountKey, BearerAssertion};

/// Why a partner did not give us a token. Never carries a token or an assertion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The partner answered with a non-success status.
    #[error("the partner's token endpoint answered HTTP {0}")]
    Status(u16),
    /// No answer within the configured timeout.
    #[error("the partner's token endpoint did not answer within {0}s")]
    Timeout(u64),
    /// The connection failed.
    #[error("the partner's token endpoint could not be reached")]
    Unreachable,
    /// The answer lacked what we need.
    #[error("the partner's reply had no usable {0}")]
    BadReply(&'static str),
    /// The issuance ledger could not record our assertion, so it was not sent.
    #[error("the issuance ledger could not record the assertion, so it was not sent")]
    NotRecorded,
    /// We could not produce our side (e.g. no signing key); details are in the log.
    #[error("keyward could not prepare the request to the partner")]
    Local,
}

/// A partner token as handed to the caller.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The partner's token.
    pub token: String,
    /// When it expires (Unix seconds), if known.
    pub expires_at: Option<i64>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("token", &"<hidden>").field("expires_at", &self.expires_at).finish()
    }
}

/// What one upstream call returned.
#[derive(Clone)]
pub struct Fetched {
    /// The token and its expiry.
    pub issued: Issued,
    /// A refresh token, for `account_key` partners.
    pub refresh_token: Option<String>,
}

fn classify(err: &reqwest::Error, timeout_secs: u64) -> ExchangeError {
    if err.is_timeout() {
        ExchangeError::Timeout(timeout_secs)
    } else if let Some(status) = err.status() {
        ExchangeError::Status(status.as_u16())
    } else {
        ExchangeError::Unreachable
    }
}

async fn post(timeout: Duration, url: &str, request: reqwest::RequestBuilder) -> Result<Value, ExchangeError> {
    let secs = timeout.as_secs();
    let response = request
        .timeout(std::time::Duration::from_secs(secs))
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| classify(&e, secs))?;
    let status = response.status();
    // The host only: a URL's path or query may carry a partner credential.
    let host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    tracing::info!(host, status = status.as_u16(), "partner token endpoint answered");
    if !status.is_success() {
        return Err(ExchangeError::Status(status.as_u16()));
    }
    response.json::<Value>().await.map_err(|e| {
        if e.is_timeout() {
            ExchangeError::Timeout(secs)
        } else {
            ExchangeError::BadReply("JSON")
        }
    })
}

/// The `exp` of a JWT, read without verifying it (the partner's token is opaque to us).
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("exp")?.as_i64()
}

/// NPM's style: POST the assertion as a bearer token, read the token from the reply.
pub async fn bearer_assertion(
    http: &reqwest::Client,
    exchange: &BearerAssertion,
    assertion: &str,
) -> Result<Fetched, ExchangeError> {
    let url = &exchange.token_url;
    let reply = post(exchange.timeout, url, http.post(url).bearer_auth(assertion)).await?;
    let token = reply.get(&exchange.token_field).and_then(Value::as_str).ok_or(ExchangeError::BadReply("token"))?;
    Ok(Fetched { issued: Issued { token: token.to_owned(), expires_at: jwt_expiry(token) }, refresh_token: None })
}

#[derive(Deserialize)]
struct AccountTokens {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    expires_in: i64,
}

fn account_tokens(reply: Value, now: i64) -> Result<Fetched, ExchangeError> {
    let tokens: AccountTokens = serde_json::from_value(reply).map_err(|_| ExchangeError::BadReply("access_token"))?;
    Ok(Fetched {
        issued: Issued { token: tokens.access_token, expires_at: Some(now.saturating_add(tokens.expires_in)) },
        refresh_token: tokens.refresh_token,
    })
}

/// PaymentsGate's style: refresh if we can, else POST `{account_id, public_key}`.
pub async fn account_key(
    http: &reqwest::Client,
    exchange: &AccountKey,
    public_key: &str,
    refresh_token: Option<String>,
    now: i64,
) -> Result<Fetched, ExchangeError> {
    if let (Some(refresh_token), Some(url)) = (refresh_token, &exchange.refresh_url) {
        let request = http.post(url).json(&serde_json::json!({ "refresh_token": refresh_token }));
        match post(exchange.timeout, url, request).await.and_then(|reply| account_tokens(reply, now)) {
            Ok(fetched) => return Ok(fetched),
            Err(err) => tracing::warn!(error = %err, "refreshing the partner token failed; requesting a new one"),
        }
    }
    let url = &exchange.token_url;
    let body = serde_json::json!({ "account_id": exchange.account_id, "public_key": public_key });
    let reply = post(exchange.timeout, url, http.post(url).json(&body)).await?;
    account_tokens(reply, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_expiry_of_a_jwt_and_nothing_else() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":1234}"#);
        assert_eq!(jwt_expiry(&format!("h.{payload}.s")), Some(1234));
        assert_eq!(jwt_expiry("opaque-token"), None);
        assert_eq!(jwt_expiry("a.!!.c"), None);
    }

    #[test]
    fn debug_hides_the_token() {
        let shown = format!("{:?}", Issued { token: "secret-token".into(), expires_at: None });
        assert!(!shown.contains("secret-token"));
    }
}
