//! The request deadline: when a sign or token request must have its answer.

use std::time::{Duration, Instant};

/// A request's arrival plus `[server] request_deadline`: every wait on its way is cut off
/// at [`Deadline::at`], and a token is handed out only while [`Deadline::token_fresh`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: Instant,
    span: Duration,
}

impl Deadline {
    /// The deadline of a request arriving now.
    pub(super) fn starting_now(span: Duration) -> Self {
        Deadline { at: Instant::now() + span, span }
    }

    /// When the request must be answered.
    pub(super) fn at(&self) -> Instant {
        self.at
    }

    /// How long the request may take in all.
    pub(super) fn span(&self) -> Duration {
        self.span
    }

    /// When a token issued at `iat` (Unix seconds, as written in it) must have been
    /// recorded, `now_ms` being the wall clock at `now`: no later than the request's
    /// deadline, nor than `iat` plus the deadline's span, so that its lifetime minus the
    /// span is left when it is handed out (`iat` is rounded down: up to a second of it may
    /// have passed already).
    pub(super) fn for_token(&self, iat: i64, now_ms: i64, now: Instant) -> Instant {
        let left_ms = (iat.saturating_mul(1_000) + millis(self.span)).saturating_sub(now_ms).max(0);
        self.at.min(now + Duration::from_millis(left_ms.unsigned_abs()))
    }

    /// Whether a token issued at `iat` may still be handed out at `now_ms` (wall clock,
    /// Unix milliseconds): at most the deadline's span after its issue time.
    pub(super) fn token_fresh(&self, iat: i64, now_ms: i64) -> bool {
        now_ms <= iat.saturating_mul(1_000) + millis(self.span)
    }
}

fn millis(span: Duration) -> i64 {
    i64::try_from(span.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_must_be_recorded_within_the_span_of_its_issue_time_and_the_request_deadline() {
        let deadline = Deadline::starting_now(Duration::from_secs(2));
        let now = Instant::now();
        // Issued at 1000 s, now 1000.3 s: 1.7 s left for it, inside the request's 2 s.
        let by = deadline.for_token(1_000, 1_000_300, now);
        assert_eq!(by, now + Duration::from_millis(1_700));
        assert!(by <= deadline.at());
        // Issued long ago (a request that waited): nothing left.
        assert_eq!(deadline.for_token(1_000, 1_005_000, now), now);
        // Issued in the same millisecond: the request's own deadline is the earlier one.
        assert_eq!(deadline.for_token(1_000, 1_000_000, now + Duration::from_millis(500)), deadline.at());
    }

    #[test]
    fn a_token_is_fresh_until_the_span_after_its_issue_time() {
        let deadline = Deadline::starting_now(Duration::from_secs(2));
        assert!(deadline.token_fresh(1_000, 1_000_000));
        assert!(deadline.token_fresh(1_000, 1_002_000));
        assert!(!deadline.token_fresh(1_000, 1_002_001));
    }
}
