//! Trading our assertion (or registered key) for a partner's token, with a cache.
//!
//! Tokens are cached per key (profile, subject, request claims) until shortly before they
//! expire. Identical requests that arrive together wait for one upstream call: each key
//! has an async lock held for the duration of the call, and a failure is shared with the
//! requests that were waiting for it rather than retried by each.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::config::ExchangeConfig;

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

#[derive(Default)]
struct Slot {
    cached: Option<(Fetched, i64)>,
    failed: Option<(Instant, ExchangeError)>,
}

/// When a cached token stops being handed out: a tenth of its life before expiry, at
/// least one second and at most a minute early.
pub fn fresh_until(issued_at: i64, expires_at: i64) -> i64 {
    let margin = (expires_at.saturating_sub(issued_at) / 10).clamp(1, 60);
    expires_at.saturating_sub(margin)
}

/// The cache of partner tokens.
#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl TokenCache {
    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = match self.slots.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slots.len() > 10_000 {
            // Forget idle slots; a slot in use is held elsewhere and survives.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        Arc::clone(slots.entry(key.to_owned()).or_default())
    }

    /// The cached token for `key`, or the result of `fetch` (one call for concurrent
    /// requests). `fetch` gets the last refresh token, if any. `use_cache = false` always
    /// calls `fetch` and leaves the cache as it is.
    pub async fn get<F, Fut>(
        &self,
        key: &str,
        use_cache: bool,
        now: impl Fn() -> i64,
        fetch: F,
    ) -> Result<Issued, ExchangeError>
    where
        F: FnOnce(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Fetched, ExchangeError>>,
    {
        if !use_cache {
            return fetch(None).await.map(|f| f.issued);
        }
        let asked = Instant::now();
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        let refresh = match &slot.cached {
            Some((fetched, until)) if now() < *until => return Ok(fetched.issued.clone()),
            Some((fetched, _)) => fetched.refresh_token.clone(),
            None => None,
        };
        if let Some((at, err)) = &slot.failed {
            if *at >= asked {
                return Err(err.clone());
            }
        }
        let issued_at = now();
        match fetch(refresh).await {
            Ok(fetched) => {
                let until = fetched.issued.expires_at.map_or(issued_at, |exp| fresh_until(issued_at, exp));
                slot.cached = Some((fetched.clone(), until));
                slot.failed = None;
                Ok(fetched.issued)
            }
            Err(err) => {
                // Keep the stale entry: its refresh token may still work next time.
                slot.failed = Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }
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

async fn post(exchange: &ExchangeConfig, url: &str, request: reqwest::RequestBuilder) -> Result<Value, ExchangeError> {
    let secs = exchange.timeout.as_secs();
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
    exchange: &ExchangeConfig,
    assertion: &str,
) -> Result<Fetched, ExchangeError> {
    let url = &exchange.token_url;
    let reply = post(exchange, url, http.post(url).bearer_auth(assertion)).await?;
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
    exchange: &ExchangeConfig,
    public_key: &str,
    refresh_token: Option<String>,
    now: i64,
) -> Result<Fetched, ExchangeError> {
    if let (Some(refresh_token), Some(url)) = (refresh_token, &exchange.refresh_url) {
        let request = http.post(url).json(&serde_json::json!({ "refresh_token": refresh_token }));
        match post(exchange, url, request).await.and_then(|reply| account_tokens(reply, now)) {
            Ok(fetched) => return Ok(fetched),
            Err(err) => tracing::warn!(error = %err, "refreshing the partner token failed; requesting a new one"),
        }
    }
    let url = &exchange.token_url;
    let body = serde_json::json!({ "account_id": exchange.account_id, "public_key": public_key });
    let reply = post(exchange, url, http.post(url).json(&body)).await?;
    account_tokens(reply, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fetched(token: &str, expires_at: i64) -> Fetched {
        Fetched {
            issued: Issued { token: token.into(), expires_at: Some(expires_at) },
            refresh_token: Some("r".into()),
        }
    }

    #[test]
    fn cached_tokens_are_handed_out_until_shortly_before_expiry() {
        assert_eq!(fresh_until(0, 600), 540);
        assert_eq!(fresh_until(0, 3_600), 3_540);
        assert_eq!(fresh_until(0, 5), 4);
        assert_eq!(fresh_until(0, 86_400), 86_340);
    }

    #[tokio::test]
    async fn concurrent_identical_requests_share_one_fetch() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                cache
                    .get(
                        "k",
                        true,
                        || 100,
                        |_| async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Ok(fetched("t", 700))
                        },
                    )
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().token, "t");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stale_tokens_are_refetched_with_the_refresh_token_and_errors_are_not_cached() {
        let cache = TokenCache::default();
        cache.get("k", true, || 0, |_| async { Ok(fetched("a", 100)) }).await.unwrap();
        let got = cache.get("k", true, || 89, |_| async { Ok(fetched("b", 200)) }).await.unwrap();
        assert_eq!(got.token, "a", "still fresh at 89");
        let got = cache
            .get(
                "k",
                true,
                || 90,
                |refresh| async move {
                    assert_eq!(refresh.as_deref(), Some("r"));
                    Ok(fetched("b", 200))
                },
            )
            .await
            .unwrap();
        assert_eq!(got.token, "b");
        let err = cache.get("x", true, || 0, |_| async { Err(ExchangeError::Status(401)) }).await.unwrap_err();
        assert_eq!(err, ExchangeError::Status(401));
        let got = cache.get("x", true, || 0, |_| async { Ok(fetched("c", 100)) }).await.unwrap();
        assert_eq!(got.token, "c", "a later request tries again");
        let bypass = cache.get("x", false, || 0, |_| async { Ok(fetched("d", 100)) }).await.unwrap();
        assert_eq!(bypass.token, "d");
        assert_eq!(cache.get("x", true, || 1, |_| async { Ok(fetched("e", 100)) }).await.unwrap().token, "c");
    }

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
