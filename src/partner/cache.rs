//! The cache of partner tokens.
//!
//! Tokens are cached per key (profile, subject, request claims) until shortly before they
//! expire. Identical requests that arrive together wait for one upstream call: each key
//! has an async lock held for the duration of the call, and a failure is shared with the
//! requests that were waiting for it rather than retried by each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::exchange::{ExchangeError, Fetched, Issued};

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
}
