//! The scheduler's part: what is due for a key set at `now`. It creates next keys (with
//! the instant they start signing) and retires old ones; hand-overs need no step.

use super::{current, find, handover_at, next, retire_at, rotation_due_at, KeyRecord, KeyState, Policy, Step};

/// What is due now, and when to look again if nothing is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Steps to apply now, in order.
    pub steps: Vec<Step>,
    /// When the next step falls due, if the keys stay as they are.
    pub wake_at: Option<i64>,
}

/// What the scheduler must do for one key set at `now`.
pub fn plan(keys: &[KeyRecord], policy: &Policy, now: i64) -> Plan {
    let mut steps = Vec::new();
    let mut wake_at: Option<i64> = None;
    let mut wake = |at: i64| wake_at = Some(wake_at.map_or(at, |w| w.min(at)));

    for key in find(keys, KeyState::Previous, now) {
        let until = retire_at(key, policy);
        if until <= now {
            steps.push(Step::Retire { kid: key.kid.clone() });
        } else {
            wake(until);
        }
    }
    // Next keys never signed: one that is surplus or of the wrong kind can go at once.
    let next = next(keys, now).filter(|n| policy.fits(n));
    for key in find(keys, KeyState::Next, now).filter(|k| Some(k.kid.as_str()) != next.map(|n| n.kid.as_str())) {
        steps.push(Step::Retire { kid: key.kid.clone() });
    }
    let fresh_start = policy.handover_after_fresh_start(now);
    match (current(keys, now), next) {
        (None, None) => steps.extend([Step::CreateCurrent, Step::CreateNext { activates_at: fresh_start }]),
        // No signing key at all is worse than a key verifiers may still have to fetch.
        (None, Some(next)) => {
            steps.extend([Step::Promote { kid: next.kid.clone() }, Step::CreateNext { activates_at: fresh_start }])
        }
        (Some(current), None) => {
            steps.push(Step::CreateNext { activates_at: handover_at(current, now, policy).max(now) })
        }
        (Some(current), Some(next)) => match next.activates_at.filter(|at| current.deactivates_at == Some(*at)) {
            // Planned when it was published (a gate may have moved it later): then it
            // signs, and the set needs a new next key.
            Some(planned) => wake(planned),
            // Never planned (stored before instants were, or its predecessor replaced).
            None => {
                let due = rotation_due_at(current, next, policy).max(now);
                steps.push(Step::Schedule { kid: next.kid.clone(), activates_at: due });
                wake(due);
            }
        },
    }
    Plan { steps, wake_at }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{rotate_now, Algorithm, Refused};
    use super::*;
    use crate::config::Config;

    const DAY: i64 = 86_400;

    pub(super) fn policy() -> Policy {
        // The default timings: 30d rotation, 24h publication ahead, 55m max_ttl + 24h
        // retention; EC so that the fake keys below fit it.
        Policy { algorithm: Algorithm::Es256, ..Config::default().policy(&Config::default().key_sets[0]) }
    }

    #[test]
    fn a_new_set_gets_a_current_and_a_next_key() {
        let p = policy();
        let mut keys = Vec::new();
        assert_eq!(plan(&keys, &p, 0).steps, [Step::CreateCurrent, Step::CreateNext { activates_at: 30 * DAY }]);
        let settled = settle(&mut keys, &p, 0);
        assert_eq!((states(&keys, KeyState::Current, 0), states(&keys, KeyState::Next, 0)), (1, 1));
        assert_eq!(settled.wake_at, Some(30 * DAY), "next rotation after rotate_every");
    }

    #[test]
    fn rotation_is_due_exactly_at_the_end_of_the_period() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        assert!(plan(&keys, &p, 30 * DAY - 1).steps.is_empty());
        let (first, next_kid) = (current(&keys, 0).unwrap().kid.clone(), next(&keys, 0).unwrap().kid.clone());
        assert_eq!(current(&keys, 30 * DAY - 1).unwrap().kid, first);
        // The hand-over needs no step: the next key signs from the planned instant.
        assert_eq!(current(&keys, 30 * DAY).unwrap().kid, next_kid);
        assert_eq!(plan(&keys, &p, 30 * DAY).steps, [Step::CreateNext { activates_at: 60 * DAY }]);
    }

    #[test]
    fn a_next_key_published_one_second_too_recently_does_not_sign() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        // Replace the next key with one published only now - publish_ahead + 1.
        let now = 30 * DAY;
        let old_next = next(&keys, 0).unwrap().kid.clone();
        let published = now - p.publish_ahead + 1;
        run(&mut keys, &[Step::Retire { kid: old_next }], &p, published);
        run(&mut keys, &[Step::CreateNext { activates_at: now + 1 }], &p, published);
        let planned = plan(&keys, &p, now);
        assert!(planned.steps.is_empty(), "{planned:?}");
        assert_eq!(planned.wake_at, Some(now + 1));
        assert!(
            matches!(rotate_now(&keys, &p, now, false), Err(Refused::TooEarly { not_before, .. }) if not_before == now + 1)
        );
        assert!(rotate_now(&keys, &p, now, true).is_ok());
        let new_next = next(&keys, now).unwrap().kid.clone();
        assert_ne!(current(&keys, now).unwrap().kid, new_next);
        assert_eq!(current(&keys, now + 1).unwrap().kid, new_next);
    }

    #[test]
    fn the_scheduler_plans_the_next_key_so_that_it_never_signs_too_early() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let old_next = next(&keys, 0).unwrap().kid.clone();
        // Retiring the next key late in the period: its successor waits out publish_ahead.
        let late = 30 * DAY - 10;
        run(&mut keys, &[Step::Retire { kid: old_next }], &p, late);
        assert_eq!(plan(&keys, &p, late).steps, [Step::CreateNext { activates_at: late + p.publish_ahead }]);
    }

    #[test]
    fn retirement_happens_exactly_at_its_deadline() {
        let p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        settle(&mut keys, &p, 10);
        let previous = find(&keys, KeyState::Previous, 10).next().unwrap().clone();
        assert_eq!(previous.deactivates_at, Some(10));
        let deadline = 10 + p.retain_for;
        assert!(!plan(&keys, &p, deadline - 1).steps.contains(&Step::Retire { kid: previous.kid.clone() }));
        assert_eq!(plan(&keys, &p, deadline - 1).wake_at, Some(deadline));
        assert_eq!(plan(&keys, &p, deadline).steps, [Step::Retire { kid: previous.kid.clone() }]);
        settle(&mut keys, &p, deadline);
        let retired = keys.iter().find(|k| k.kid == previous.kid).unwrap();
        assert_eq!(retired.state_at(deadline), KeyState::Retired);
        assert!(retired.private().is_none() && retired.sealed().is_none());
    }

    /// Many periods with a fake clock, second by second, checking every invariant and a
    /// caching verifier's view at every instant.
    #[test]
    fn many_periods_never_leave_a_verifier_without_the_key() {
        let p = small_policy();
        let max_ttl = 2; // retain_for 6 = max_ttl 2 + retain_after 4
        let max_age = 3; // publish_ahead 4 and retain_after 4 >= max_age + skew 1
        let mut keys = Vec::new();
        // A verifier that fetched the JWKS at `fetched` holds these kids until fetched + max_age.
        let mut cache: Vec<(i64, Vec<String>)> = Vec::new();
        let mut rotations = 0;
        let mut tokens: Vec<(String, i64)> = Vec::new();
        for now in 0..200i64 {
            let before = current(&keys, now - 1).map(|k| k.kid.clone());
            settle(&mut keys, &p, now);
            if before.is_some() && current(&keys, now).map(|k| k.kid.clone()) != before {
                rotations += 1;
            }
            assert_eq!(states(&keys, KeyState::Current, now), 1, "t={now}");
            assert_eq!(states(&keys, KeyState::Next, now), 1, "t={now}");
            let published: Vec<String> = keys.iter().filter(|k| k.is_published()).map(|k| k.kid.clone()).collect();
            // Every cache a verifier could hold now: any fetch in the last max_age seconds.
            cache.push((now, published.clone()));
            cache.retain(|(at, _)| now - at < max_age);
            // Every cache holds the signing key (no verifier meets an unknown kid), and every
            // unexpired token's key is still published (a refetch finds it).
            let signer = current(&keys, now).unwrap().kid.clone();
            tokens.push((signer.clone(), now + max_ttl));
            tokens.retain(|(_, exp)| *exp >= now);
            for (kid, _) in &tokens {
                assert!(published.contains(kid), "t={now}: unexpired token's key {kid} unpublished");
            }
            for (fetched, kids) in &cache {
                assert!(kids.contains(&signer), "t={now}: a cache from t={fetched} lacks the signing key");
            }
        }
        assert!(rotations >= 15, "only {rotations} rotations");
        assert!(states(&keys, KeyState::Retired, 200) >= 10);
    }

    #[test]
    fn a_changed_algorithm_replaces_the_next_key_then_rotates_once_it_is_published() {
        let mut p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        p.algorithm = Algorithm::Es384;
        let old_next = next(&keys, 1).unwrap().kid.clone();
        assert_eq!(
            plan(&keys, &p, 1).steps,
            [Step::Retire { kid: old_next }, Step::CreateNext { activates_at: 1 + p.publish_ahead }]
        );
        let settled = settle(&mut keys, &p, 1);
        assert_eq!(settled.wake_at, Some(1 + p.publish_ahead), "no need to wait for the period");
        settle(&mut keys, &p, 1 + p.publish_ahead);
        assert_eq!(current(&keys, 1 + p.publish_ahead).unwrap().algorithm, Algorithm::Es384);
    }

    #[test]
    fn a_next_key_without_a_planned_start_is_planned_by_the_rules() {
        let p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        // As stored before instants were planned: the next key has none, the current no end.
        for key in &mut keys {
            key.deactivates_at = None;
            if key.state_at(0) == KeyState::Next {
                key.activates_at = None;
            }
        }
        let nxt = next(&keys, 3).unwrap().kid.clone();
        assert_eq!(plan(&keys, &p, 3).steps, [Step::Schedule { kid: nxt.clone(), activates_at: 10 }]);
        settle(&mut keys, &p, 3);
        assert_eq!(current(&keys, 10).unwrap().kid, nxt);
    }
}
