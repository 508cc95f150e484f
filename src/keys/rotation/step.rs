//! The changes a decision makes to a key set's keys, and applying them.

use serde::Serialize;

use super::{current, KeyRecord, KeyState};
use crate::keys::state::periods_overlap;

/// One change to a key set's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A new key signs at once (only when the set has no key that could, or on request).
    CreateCurrent,
    /// A new key is published, to sign from `activates_at`; the current key signs until then.
    CreateNext {
        /// When it starts signing (Unix seconds).
        activates_at: i64,
    },
    /// The next key signs now; the current one (if any) becomes previous.
    Promote {
        /// The next key.
        kid: String,
    },
    /// The next key's planned start moves (the policy changed, or it had none).
    Schedule {
        /// The next key.
        kid: String,
        /// When it starts signing (Unix seconds).
        activates_at: i64,
    },
    /// The key leaves the JWKS and its private half is deleted.
    Retire {
        /// The key.
        kid: String,
    },
    /// The key leaves the JWKS at once and never signs again.
    Revoke {
        /// The key.
        kid: String,
    },
}

impl Step {
    /// Whether the step needs a freshly generated key.
    pub fn creates_key(&self) -> bool {
        matches!(self, Step::CreateCurrent | Step::CreateNext { .. })
    }
}

/// A step could not be applied to the keys it was planned for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {step:?}: {reason}")]
pub struct StepError {
    step: Step,
    reason: &'static str,
}

/// The keys being changed, and which of them changed.
struct Changing {
    all: Vec<KeyRecord>,
    changed: Vec<String>,
    now: i64,
}

impl Changing {
    fn touch(&mut self, kid: &str) {
        self.changed.push(kid.to_owned());
    }

    /// The key signing at `now` stops at `at`.
    fn end_signing_at(&mut self, at: Option<i64>) {
        let now = self.now;
        if let Some(kid) = current(&self.all, now).map(|k| k.kid.clone()) {
            for key in self.all.iter_mut().filter(|k| k.kid == kid) {
                key.deactivates_at = at;
            }
            self.touch(&kid);
        }
    }

    /// Next keys other than `keep` lose their planned start: a set plans one hand-over.
    fn unplan_next_keys(&mut self, keep: Option<&str>) {
        let now = self.now;
        let kids: Vec<String> = self
            .all
            .iter()
            .filter(|k| k.state_at(now) == KeyState::Next && k.activates_at.is_some() && Some(k.kid.as_str()) != keep)
            .map(|k| k.kid.clone())
            .collect();
        for kid in kids {
            for key in self.all.iter_mut().filter(|k| k.kid == kid) {
                key.activates_at = None;
            }
            self.touch(&kid);
        }
    }

    fn index(&self, kid: &str, allowed: &[KeyState]) -> Option<usize> {
        self.all.iter().position(|k| k.kid == kid && allowed.contains(&k.state_at(self.now)))
    }

    /// Ends the key's signing and any planned start (it will never sign again); retiring or
    /// revoking it then drops its private half.
    fn withdraw(&mut self, index: usize) {
        let now = self.now;
        let key = &mut self.all[index];
        let was_next = key.state_at(now) == KeyState::Next;
        if key.state_at(now) == KeyState::Current {
            key.deactivates_at = Some(now);
        }
        if was_next && key.activates_at.take().is_some() {
            // The current key's planned end was this key's start: open until a new plan.
            self.end_signing_at(None);
        }
    }
}

/// Applies `steps` at `now`, taking new keys from `fresh` (generated, sealed, with no
/// lifecycle times), and returns every record that changed or was added.
pub fn apply(keys: &[KeyRecord], steps: &[Step], fresh: Vec<KeyRecord>, now: i64) -> Result<Vec<KeyRecord>, StepError> {
    let mut keys = Changing { all: keys.to_vec(), changed: Vec::new(), now };
    let mut fresh = fresh.into_iter();
    let fail = |step: &Step, reason| StepError { step: step.clone(), reason };
    for step in steps {
        match step {
            Step::CreateCurrent | Step::CreateNext { .. } => {
                let mut key = fresh.next().ok_or_else(|| fail(step, "no generated key left"))?;
                key.published_at = Some(now);
                if let Step::CreateNext { activates_at } = step {
                    if *activates_at < now {
                        return Err(fail(step, "starts in the past"));
                    }
                    keys.unplan_next_keys(None);
                    keys.end_signing_at(Some(*activates_at));
                    key.activates_at = Some(*activates_at);
                } else {
                    // The old plan handed over from the replaced key: the scheduler plans anew.
                    keys.unplan_next_keys(None);
                    keys.end_signing_at(Some(now));
                    key.activates_at = Some(now);
                }
                keys.touch(&key.kid);
                keys.all.push(key);
            }
            Step::Promote { kid } => {
                let index = keys.index(kid, &[KeyState::Next]).ok_or_else(|| fail(step, "not a next key"))?;
                keys.unplan_next_keys(Some(kid));
                keys.end_signing_at(Some(now));
                let key = &mut keys.all[index];
                key.activates_at = Some(now);
                key.deactivates_at = None;
                keys.touch(kid);
            }
            Step::Schedule { kid, activates_at } => {
                let index = keys.index(kid, &[KeyState::Next]).ok_or_else(|| fail(step, "not a next key"))?;
                if *activates_at < now {
                    return Err(fail(step, "starts in the past"));
                }
                keys.unplan_next_keys(Some(kid));
                keys.end_signing_at(Some(*activates_at));
                let key = &mut keys.all[index];
                key.activates_at = Some(*activates_at);
                key.deactivates_at = None;
                keys.touch(kid);
            }
            Step::Retire { kid } => {
                let index = keys
                    .index(kid, &[KeyState::Previous, KeyState::Next])
                    .ok_or_else(|| fail(step, "not a previous or next key"))?;
                keys.withdraw(index);
                keys.all[index].retire(now);
                keys.touch(kid);
            }
            Step::Revoke { kid } => {
                let index = keys
                    .index(kid, &[KeyState::Next, KeyState::Current, KeyState::Previous, KeyState::Retired])
                    .ok_or_else(|| fail(step, "unknown or already revoked"))?;
                keys.withdraw(index);
                keys.all[index].revoke(now);
                keys.touch(kid);
            }
        }
    }
    if periods_overlap(&keys.all) {
        return Err(StepError {
            step: steps.last().cloned().unwrap_or(Step::CreateCurrent),
            reason: "two keys would sign at the same instant",
        });
    }
    let Changing { all, mut changed, .. } = keys;
    changed.sort();
    changed.dedup();
    Ok(all.into_iter().filter(|k| changed.contains(&k.kid)).collect())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{next, rotate_now};
    use super::*;

    #[test]
    fn apply_refuses_steps_that_do_not_fit_the_keys() {
        let p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let cur = current(&keys, 0).unwrap().kid.clone();
        assert!(apply(&keys, &[Step::Promote { kid: cur.clone() }], vec![], 1).is_err());
        assert!(apply(&keys, &[Step::Retire { kid: cur }], vec![], 1).is_err());
        assert!(apply(&keys, &[Step::CreateNext { activates_at: 20 }], vec![], 1).is_err());
    }

    #[test]
    fn publishing_a_next_key_plans_the_hand_over_on_both_keys() {
        let p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let (cur, nxt) = (current(&keys, 0).unwrap(), next(&keys, 0).unwrap());
        assert_eq!((cur.activates_at, cur.deactivates_at), (Some(0), Some(10)));
        assert_eq!((nxt.activates_at, nxt.deactivates_at, nxt.published_at), (Some(10), None, Some(0)));
    }

    #[test]
    fn a_forced_rotation_in_the_second_a_key_started_leaves_one_signer() {
        let p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let first = current(&keys, 0).unwrap().kid.clone();
        let steps = rotate_now(&keys, &p, 0, true).unwrap();
        run(&mut keys, &steps, &p, 0);
        assert_eq!(states(&keys, KeyState::Current, 0), 1);
        assert_ne!(current(&keys, 0).unwrap().kid, first);
        assert!(!periods_overlap(&keys));
    }
}
