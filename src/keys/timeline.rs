//! Each key's timeline: when it is published and when it signs, past and planned.

use serde::Serialize;

use super::rotation::{current, next, retire_at, rotation_due_at, Policy};
use super::{Algorithm, KeyRecord, KeyState};

/// A point in a key's life, past or planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Moment {
    /// Unix seconds.
    pub at: i64,
    /// Whether it is a plan rather than a fact.
    pub planned: bool,
}

impl Moment {
    /// `at`, a fact once `now` has reached it.
    fn seen_at(at: Option<i64>, now: i64) -> Option<Moment> {
        at.map(|at| Moment { at, planned: at > now })
    }

    fn plan(at: i64) -> Option<Moment> {
        Some(Moment { at, planned: true })
    }
}

/// When a key is published and when it signs, past and planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// The key.
    pub kid: String,
    /// Its set.
    pub key_set: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Its state now.
    pub state: KeyState,
    /// First in the JWKS.
    pub published_from: Option<Moment>,
    /// Last in the JWKS.
    pub published_until: Option<Moment>,
    /// First signature.
    pub signing_from: Option<Moment>,
    /// Last signature.
    pub signing_until: Option<Moment>,
}

/// Every key's timeline at `now`, if the scheduler carries out the plan, in the order the
/// keys sign (or signed, or were published).
pub fn timeline(keys: &[KeyRecord], policy: &Policy, now: i64) -> Vec<Timeline> {
    let next_key = next(keys, now).filter(|n| policy.fits(n));
    // When the current key hands over: as planned when the next key was published, else
    // to a next key the scheduler is about to publish.
    let handover = match (current(keys, now), next_key) {
        (Some(c), Some(n)) => n.activates_at.unwrap_or_else(|| rotation_due_at(c, n, policy)).max(now),
        (Some(c), None) => {
            let period_over = c.activates_at.unwrap_or(now).saturating_add(policy.rotate_every);
            period_over.max(now.saturating_add(policy.publish_ahead))
        }
        _ => now,
    };
    let mut lines: Vec<Timeline> = keys
        .iter()
        .map(|k| {
            let state = k.state_at(now);
            let mut t = Timeline {
                kid: k.kid.clone(),
                key_set: k.key_set.clone(),
                algorithm: k.algorithm,
                state,
                published_from: Moment::seen_at(k.published_at, now),
                published_until: Moment::seen_at(k.retired_at().or(k.revoked_at()), now),
                signing_from: Moment::seen_at(k.activates_at, now),
                signing_until: Moment::seen_at(k.deactivates_at, now),
            };
            match state {
                KeyState::Current => {
                    t.signing_until = Moment::plan(handover);
                    t.published_until = Moment::plan(handover.saturating_add(policy.retain_for));
                }
                KeyState::Next if Some(k.kid.as_str()) == next_key.map(|n| n.kid.as_str()) => {
                    let until = handover.saturating_add(policy.rotate_every);
                    t.signing_from = Moment::plan(handover);
                    t.signing_until = Moment::plan(until);
                    t.published_until = Moment::plan(until.saturating_add(policy.retain_for));
                }
                KeyState::Next => {
                    (t.signing_from, t.published_until) = (None, Moment::plan(now));
                }
                KeyState::Previous => t.published_until = Moment::plan(retire_at(k, policy)),
                KeyState::Retired | KeyState::Revoked => {}
            }
            t
        })
        .collect();
    lines.sort_by_key(|t| {
        let published = t.published_from.map_or(i64::MIN, |m| m.at);
        (t.signing_from.map_or(published, |m| m.at), published)
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::super::rotation::testing::{settle, small_policy};
    use super::*;

    #[test]
    fn timeline_shows_past_and_planned_moments() {
        let p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        settle(&mut keys, &p, 10);
        let lines = timeline(&keys, &p, 12);
        let order: Vec<KeyState> = lines.iter().map(|t| t.state).collect();
        assert_eq!(order, [KeyState::Previous, KeyState::Current, KeyState::Next]);
        let by_state = |s: KeyState| lines.iter().find(|t| t.state == s).unwrap();
        let cur = by_state(KeyState::Current);
        assert_eq!(cur.signing_from, Some(Moment { at: 10, planned: false }));
        assert_eq!(cur.signing_until, Some(Moment { at: 20, planned: true }));
        assert_eq!(cur.published_until, Some(Moment { at: 26, planned: true }));
        let nxt = by_state(KeyState::Next);
        assert_eq!(nxt.published_from, Some(Moment { at: 10, planned: false }));
        assert_eq!(nxt.signing_from, Some(Moment { at: 20, planned: true }));
        assert_eq!(nxt.signing_until, Some(Moment { at: 30, planned: true }));
        let prev = by_state(KeyState::Previous);
        assert_eq!(prev.signing_until, Some(Moment { at: 10, planned: false }));
        assert_eq!(prev.published_until, Some(Moment { at: 16, planned: true }));
    }
}
