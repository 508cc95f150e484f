//! Rotation helpers shared by the rotation and timeline tests.

use super::*;
use crate::keys::state::KeyBuilder;

pub(crate) fn small_policy() -> Policy {
    Policy {
        algorithm: Algorithm::Es256,
        rsa_bits: 2048,
        rotate_every: 10,
        publish_ahead: 4,
        retain_for: 6,
        cache_window: 4,
    }
}

/// A fresh key of the policy's kind, as the key store would hand it over (never published).
pub(crate) fn fresh(n: usize, policy: &Policy, now: i64) -> Vec<KeyRecord> {
    (0..n)
        .map(|i| KeyRecord {
            published_at: None,
            ..KeyBuilder::new(&format!("k{now}-{i}-{}", rand_suffix())).algorithm(policy.algorithm).created(now).build()
        })
        .collect()
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Applies steps to an in-memory key list, as the store does in one transaction.
pub(crate) fn run(keys: &mut Vec<KeyRecord>, steps: &[Step], policy: &Policy, now: i64) {
    let needed = steps.iter().filter(|s| s.creates_key()).count();
    for changed in apply(keys, steps, fresh(needed, policy, now), now).unwrap() {
        match keys.iter_mut().find(|k| k.kid == changed.kid) {
            Some(k) => *k = changed,
            None => keys.push(changed),
        }
    }
}

/// Runs the scheduler until nothing more is due at `now`.
pub(crate) fn settle(keys: &mut Vec<KeyRecord>, policy: &Policy, now: i64) -> Plan {
    for _ in 0..5 {
        let plan = plan(keys, policy, now);
        if plan.steps.is_empty() {
            return plan;
        }
        run(keys, &plan.steps, policy, now);
    }
    panic!("the plan did not settle at {now}");
}

pub(crate) fn states(keys: &[KeyRecord], state: KeyState, now: i64) -> usize {
    keys.iter().filter(|k| k.state_at(now) == state).count()
}
