//! Per-client rate limits: a token bucket per client, decided as a pure function of the
//! bucket, the limit and the time.

use std::collections::HashMap;
use std::sync::Mutex;

/// A client's allowance: `rate` requests per second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Requests per second.
    pub rate: f64,
    /// Bucket size.
    pub burst: f64,
}

/// A bucket's level at an instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: f64,
}

/// Takes one request from `bucket` at `now` (seconds): the new bucket, or how many
/// seconds until a request would be allowed.
pub fn take(bucket: Option<Bucket>, limit: Limit, now: f64) -> Result<Bucket, f64> {
    let bucket = bucket.unwrap_or(Bucket { tokens: limit.burst, at: now });
    let tokens = (bucket.tokens + (now - bucket.at).max(0.0) * limit.rate).min(limit.burst);
    if tokens >= 1.0 {
        Ok(Bucket { tokens: tokens - 1.0, at: now })
    } else {
        Err((1.0 - tokens) / limit.rate)
    }
}

/// Every client's bucket.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Admits one request of `client` now, or says how many whole seconds to wait.
    pub fn admit(&self, client: &str, limit: Limit, now: f64) -> Result<(), u64> {
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match take(buckets.get(client).copied(), limit, now) {
            Ok(bucket) => {
                buckets.insert(client.to_owned(), bucket);
                Ok(())
            }
            Err(wait) => Err(wait.ceil().max(1.0) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit { rate: 2.0, burst: 3.0 };

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let mut bucket = None;
        for _ in 0..3 {
            bucket = Some(take(bucket, LIMIT, 0.0).unwrap());
        }
        assert_eq!(take(bucket, LIMIT, 0.0), Err(0.5));
        // Half a second later one more is allowed, then none.
        let refilled = take(bucket, LIMIT, 0.5).unwrap();
        assert!(take(Some(refilled), LIMIT, 0.5).is_err());
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_the_burst() {
        let bucket = take(None, LIMIT, 0.0).unwrap();
        let mut bucket = Some(bucket);
        for _ in 0..3 {
            bucket = Some(take(bucket, LIMIT, 1_000.0).unwrap());
        }
        assert!(take(bucket, LIMIT, 1_000.0).is_err());
    }

    #[test]
    fn clients_have_their_own_buckets_and_retry_after_is_whole_seconds() {
        let limiter = RateLimiter::default();
        let one = Limit { rate: 0.1, burst: 1.0 };
        assert_eq!(limiter.admit("a", one, 0.0), Ok(()));
        assert_eq!(limiter.admit("a", one, 0.0), Err(10));
        assert_eq!(limiter.admit("b", one, 0.0), Ok(()));
    }
}
