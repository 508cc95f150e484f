//! Key rotation: what is due, which key signs, and what each key's timeline is, decided
//! as pure functions of one key set's stored keys, its policy and an explicit `now`.
//!
//! The rules (see the README's rotation section):
//! - a set always has one **current** key (signs) and one **next** key (published only);
//! - the next key becomes current once it has been published for `publish_ahead` and the
//!   current key has signed for `rotate_every`;
//! - a **previous** key stays published until `deactivated + retain_for`, where
//!   `retain_for` is the longest `max_ttl` of the set's profiles plus `retain_after`; then it
//!   is **retired** (unpublished, private half deleted);
//! - a **revoked** key leaves the JWKS at once; if it was current, the next key takes over
//!   at once.

use serde::Serialize;

use super::{Algorithm, KeyRecord, KeyState};

/// One key set's timing rules, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Algorithm new keys get.
    pub algorithm: Algorithm,
    /// Modulus size new RSA keys get.
    pub rsa_bits: u32,
    /// How long a key signs.
    pub rotate_every: i64,
    /// How long a key is published before it signs.
    pub publish_ahead: i64,
    /// How long a key stays published after it stopped signing.
    pub retain_for: i64,
    /// How long a verifier may hold a JWKS: `jwks_max_age + clock_skew`.
    pub cache_window: i64,
}

impl Policy {
    /// Whether a key is of the kind this policy makes (the configuration may have changed).
    pub(super) fn fits(&self, key: &KeyRecord) -> bool {
        key.algorithm == self.algorithm && (!self.algorithm.is_rsa() || key.public.rsa_bits() == Some(self.rsa_bits))
    }
}

/// One change to a key set's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A new key signs at once (only when the set has no key that could).
    CreateCurrent,
    /// A new key is published, to sign later.
    CreateNext,
    /// The next key signs; the current one (if any) becomes previous.
    Promote {
        /// The next key.
        kid: String,
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
        matches!(self, Step::CreateCurrent | Step::CreateNext)
    }
}

/// What is due now, and when to look again if nothing is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Steps to apply now, in order.
    pub steps: Vec<Step>,
    /// When the next step falls due, if the keys stay as they are.
    pub wake_at: Option<i64>,
}

/// Why an operator's request cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The next key has not been published long enough.
    #[error(
        "the next key {kid} has been published for less than publish_ahead; it may sign from {not_before} (Unix time)"
    )]
    TooEarly {
        /// The next key.
        kid: String,
        /// When rotation becomes possible without force.
        not_before: i64,
    },
    /// There is no next key of the configured kind to hand over to.
    #[error("the set has no published next key of its configured algorithm; the scheduler publishes one")]
    NoNextKey,
    /// The key was never in the JWKS, so no verifier has it.
    #[error("key {kid} has never been published: verifiers would reject its tokens")]
    NeverPublished {
        /// The key.
        kid: String,
    },
    /// Adding a next key would retire the set's published next key.
    #[error("the set already has a next key, {kid}; replacing it retires it")]
    NextKeyExists {
        /// The published next key.
        kid: String,
    },
    /// No such key in the set.
    #[error("no key {0}")]
    UnknownKey(String),
    /// The key is already revoked.
    #[error("key {0} is already revoked")]
    AlreadyRevoked(String),
}

/// A step could not be applied to the keys it was planned for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {step:?}: {reason}")]
pub struct StepError {
    step: Step,
    reason: &'static str,
}

fn find(keys: &[KeyRecord], state: KeyState) -> impl Iterator<Item = &KeyRecord> {
    keys.iter().filter(move |k| k.state() == state)
}

pub(super) fn current(keys: &[KeyRecord]) -> Option<&KeyRecord> {
    find(keys, KeyState::Current).next()
}

/// The newest next key.
pub(super) fn next(keys: &[KeyRecord]) -> Option<&KeyRecord> {
    find(keys, KeyState::Next).max_by_key(|k| (k.published_at, k.created_at))
}

fn published_at(key: &KeyRecord) -> i64 {
    key.published_at.unwrap_or(key.created_at)
}

/// When a previous key leaves the JWKS.
pub(super) fn retire_at(key: &KeyRecord, policy: &Policy) -> i64 {
    key.deactivated_at.unwrap_or(key.created_at).saturating_add(policy.retain_for)
}

/// When `next` may take over from `current`: published long enough, and the current key's
/// period over (at once, if the current key no longer fits the policy).
pub(super) fn rotation_due_at(current: &KeyRecord, next: &KeyRecord, policy: &Policy) -> i64 {
    let ready = published_at(next).saturating_add(policy.publish_ahead);
    if !policy.fits(current) {
        return ready;
    }
    let period_over = current.activated_at.unwrap_or(current.created_at).saturating_add(policy.rotate_every);
    ready.max(period_over)
}

/// What the scheduler must do for one key set at `now`.
pub fn plan(keys: &[KeyRecord], policy: &Policy, now: i64) -> Plan {
    let mut steps = Vec::new();
    let mut wake_at: Option<i64> = None;
    let mut wake = |at: i64| wake_at = Some(wake_at.map_or(at, |w| w.min(at)));

    for key in find(keys, KeyState::Previous) {
        let until = retire_at(key, policy);
        if until <= now {
            steps.push(Step::Retire { kid: key.kid.clone() });
        } else {
            wake(until);
        }
    }
    // Next keys never signed: one that is surplus or of the wrong kind can go at once.
    let next = next(keys).filter(|n| policy.fits(n));
    for key in find(keys, KeyState::Next).filter(|k| Some(k.kid.as_str()) != next.map(|n| n.kid.as_str())) {
        steps.push(Step::Retire { kid: key.kid.clone() });
    }
    match (current(keys), next) {
        (None, None) => steps.extend([Step::CreateCurrent, Step::CreateNext]),
        // No signing key at all is worse than a key verifiers may still have to fetch.
        (None, Some(next)) => steps.extend([Step::Promote { kid: next.kid.clone() }, Step::CreateNext]),
        (Some(_), None) => steps.push(Step::CreateNext),
        (Some(current), Some(next)) => {
            let due = rotation_due_at(current, next, policy);
            if due <= now {
                steps.extend([Step::Promote { kid: next.kid.clone() }, Step::CreateNext]);
            } else {
                wake(due);
            }
        }
    }
    Plan { steps, wake_at }
}

/// Whether `key` may start signing at `now`: only once it has been published for
/// `publish_ahead`, so that every verifier's cached JWKS holds it; `force` overrides.
pub fn may_sign(key: &KeyRecord, policy: &Policy, now: i64, force: bool) -> Result<(), Refused> {
    if force {
        return Ok(());
    }
    let Some(published) = key.published_at else {
        return Err(Refused::NeverPublished { kid: key.kid.clone() });
    };
    let not_before = published.saturating_add(policy.publish_ahead);
    if not_before > now {
        return Err(Refused::TooEarly { kid: key.kid.clone(), not_before });
    }
    Ok(())
}

/// An operator's planned rotation at `now`: refused while the next key is too freshly
/// published, unless `force`.
pub fn rotate_now(keys: &[KeyRecord], policy: &Policy, now: i64, force: bool) -> Result<Vec<Step>, Refused> {
    match next(keys).filter(|n| policy.fits(n)) {
        Some(next) => {
            may_sign(next, policy, now, force)?;
            Ok(vec![Step::Promote { kid: next.kid.clone() }, Step::CreateNext])
        }
        None if force => Ok(vec![Step::CreateCurrent, Step::CreateNext]),
        None => Err(Refused::NoNextKey),
    }
}

/// What an operator asks of an imported key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportAs {
    /// Sign with it at once (the current key becomes previous).
    pub activate: bool,
    /// With `activate`: even though no verifier can have it yet.
    pub force: bool,
    /// Without `activate`: retire the set's next key to make room for it.
    pub replace_next: bool,
}

/// The steps that add `imported` (not stored yet, never published) to a set at `now`.
pub fn import(
    keys: &[KeyRecord],
    imported: &KeyRecord,
    policy: &Policy,
    now: i64,
    how: ImportAs,
) -> Result<Vec<Step>, Refused> {
    if how.activate {
        may_sign(imported, policy, now, how.force)?;
        return Ok(vec![Step::CreateCurrent]);
    }
    let nexts: Vec<&KeyRecord> = find(keys, KeyState::Next).collect();
    if let (Some(existing), false) = (nexts.first(), how.replace_next) {
        return Err(Refused::NextKeyExists { kid: existing.kid.clone() });
    }
    let mut steps: Vec<Step> = nexts.iter().map(|k| Step::Retire { kid: k.kid.clone() }).collect();
    steps.push(Step::CreateNext);
    Ok(steps)
}

/// How long a key had been published when it started signing, against how long verifiers
/// may cache the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exposure {
    /// The signing key.
    pub kid: String,
    /// Seconds it had been in the JWKS when it started signing.
    pub published_for: i64,
    /// `jwks_max_age + clock_skew` of its set, in seconds.
    pub cache_window: i64,
    /// Whether `published_for` is under `cache_window`.
    pub within_cache_window: bool,
    /// If so, until when (Unix seconds) a verifier holding a JWKS cached before the key
    /// appeared may reject its tokens.
    pub may_be_rejected_until: Option<i64>,
}

/// The exposure of `signer`, which signs since `now` at the latest.
pub fn exposure(signer: &KeyRecord, policy: &Policy, now: i64) -> Exposure {
    let published = published_at(signer);
    let signing_from = signer.activated_at.unwrap_or(now);
    let published_for = signing_from.saturating_sub(published).max(0);
    let within = published_for < policy.cache_window;
    Exposure {
        kid: signer.kid.clone(),
        published_for,
        cache_window: policy.cache_window,
        within_cache_window: within,
        may_be_rejected_until: within.then(|| published.saturating_add(policy.cache_window)),
    }
}

/// An emergency revocation: the key leaves the JWKS now; if it was signing, the next key
/// signs at once and a new next key is made, so there is no instant without a signer.
pub fn revoke(keys: &[KeyRecord], kid: &str) -> Result<Vec<Step>, Refused> {
    let key = keys.iter().find(|k| k.kid == kid).ok_or_else(|| Refused::UnknownKey(kid.to_owned()))?;
    let mut steps = vec![Step::Revoke { kid: kid.to_owned() }];
    match key.state() {
        KeyState::Revoked => return Err(Refused::AlreadyRevoked(kid.to_owned())),
        KeyState::Current => match next(keys) {
            Some(next) => steps.extend([Step::Promote { kid: next.kid.clone() }, Step::CreateNext]),
            None => steps.extend([Step::CreateCurrent, Step::CreateNext]),
        },
        KeyState::Next => steps.push(Step::CreateNext),
        KeyState::Previous | KeyState::Retired => {}
    }
    Ok(steps)
}

/// Applies `steps` at `now`, taking new keys from `fresh` (generated, sealed, with no
/// lifecycle times), and returns every record that changed or was added.
pub fn apply(keys: &[KeyRecord], steps: &[Step], fresh: Vec<KeyRecord>, now: i64) -> Result<Vec<KeyRecord>, StepError> {
    let mut all: Vec<KeyRecord> = keys.to_vec();
    let mut changed: Vec<String> = Vec::new();
    let mut fresh = fresh.into_iter();
    let fail = |step: &Step, reason| StepError { step: step.clone(), reason };
    for step in steps {
        match step {
            Step::CreateCurrent | Step::CreateNext => {
                let mut key = fresh.next().ok_or_else(|| fail(step, "no generated key left"))?;
                key.published_at = Some(now);
                if *step == Step::CreateCurrent {
                    for old in all.iter_mut().filter(|k| k.state() == KeyState::Current) {
                        old.deactivated_at = Some(now);
                        changed.push(old.kid.clone());
                    }
                    key.activated_at = Some(now);
                }
                changed.push(key.kid.clone());
                all.push(key);
            }
            Step::Promote { kid } => {
                let index = all
                    .iter()
                    .position(|k| &k.kid == kid && k.state() == KeyState::Next)
                    .ok_or_else(|| fail(step, "not a next key"))?;
                for old in all.iter_mut().filter(|k| k.state() == KeyState::Current) {
                    old.deactivated_at = Some(now);
                    changed.push(old.kid.clone());
                }
                all[index].activated_at = Some(now);
                changed.push(kid.clone());
            }
            Step::Retire { kid } => {
                let key = all
                    .iter_mut()
                    .find(|k| &k.kid == kid && matches!(k.state(), KeyState::Previous | KeyState::Next))
                    .ok_or_else(|| fail(step, "not a previous or next key"))?;
                key.retire(now);
                changed.push(kid.clone());
            }
            Step::Revoke { kid } => {
                let key = all
                    .iter_mut()
                    .find(|k| &k.kid == kid && k.state() != KeyState::Revoked)
                    .ok_or_else(|| fail(step, "unknown or already revoked"))?;
                if key.state() == KeyState::Current {
                    key.deactivated_at = Some(now);
                }
                key.revoke(now);
                changed.push(kid.clone());
            }
        }
    }
    if all.iter().filter(|k| k.state() == KeyState::Current).count() > 1 {
        return Err(StepError { step: steps.last().cloned().unwrap_or(Step::CreateNext), reason: "two current keys" });
    }
    changed.sort();
    changed.dedup();
    Ok(all.into_iter().filter(|k| changed.contains(&k.kid)).collect())
}

#[cfg(test)]
pub(super) mod testing {
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
                ..KeyBuilder::new(&format!("k{now}-{i}-{}", rand_suffix()))
                    .algorithm(policy.algorithm)
                    .created(now)
                    .build()
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
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::config::Config;

    const DAY: i64 = 86_400;

    fn policy() -> Policy {
        // The default timings: 30d rotation, 24h publication ahead, 55m max_ttl + 24h
        // retention; EC so that the fake keys below fit it.
        Policy { algorithm: Algorithm::Es256, ..Config::default().policy(&Config::default().key_sets[0]) }
    }

    fn states(keys: &[KeyRecord], state: KeyState) -> usize {
        keys.iter().filter(|k| k.state() == state).count()
    }

    #[test]
    fn a_new_set_gets_a_current_and_a_next_key() {
        let p = policy();
        let mut keys = Vec::new();
        assert_eq!(plan(&keys, &p, 0).steps, [Step::CreateCurrent, Step::CreateNext]);
        let settled = settle(&mut keys, &p, 0);
        assert_eq!((states(&keys, KeyState::Current), states(&keys, KeyState::Next)), (1, 1));
        assert_eq!(settled.wake_at, Some(30 * DAY), "next rotation after rotate_every");
    }

    #[test]
    fn rotation_is_due_exactly_at_the_end_of_the_period() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        assert!(plan(&keys, &p, 30 * DAY - 1).steps.is_empty());
        let next_kid = next(&keys).unwrap().kid.clone();
        assert_eq!(plan(&keys, &p, 30 * DAY).steps, [Step::Promote { kid: next_kid }, Step::CreateNext]);
    }

    #[test]
    fn a_next_key_published_one_second_too_recently_does_not_sign() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        // Replace the next key with one published only now - publish_ahead + 1.
        let now = 30 * DAY;
        let old_next = next(&keys).unwrap().kid.clone();
        run(&mut keys, &[Step::Retire { kid: old_next }], &p, now - p.publish_ahead + 1);
        run(&mut keys, &[Step::CreateNext], &p, now - p.publish_ahead + 1);
        let planned = plan(&keys, &p, now);
        assert!(planned.steps.is_empty(), "{planned:?}");
        assert_eq!(planned.wake_at, Some(now + 1));
        assert!(
            matches!(rotate_now(&keys, &p, now, false), Err(Refused::TooEarly { not_before, .. }) if not_before == now + 1)
        );
        assert!(rotate_now(&keys, &p, now, true).is_ok());
        assert_eq!(plan(&keys, &p, now + 1).steps.len(), 2);
    }

    #[test]
    fn a_manual_rotation_without_a_fitting_next_key_needs_force() {
        let mut p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        p.algorithm = Algorithm::Es384;
        assert_eq!(rotate_now(&keys, &p, 100, false), Err(Refused::NoNextKey));
        assert_eq!(rotate_now(&keys, &p, 100, true), Ok(vec![Step::CreateCurrent, Step::CreateNext]));
    }

    #[test]
    fn retirement_happens_exactly_at_its_deadline() {
        let p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        settle(&mut keys, &p, 10);
        let previous = find(&keys, KeyState::Previous).next().unwrap().clone();
        assert_eq!(previous.deactivated_at, Some(10));
        let deadline = 10 + p.retain_for;
        assert!(!plan(&keys, &p, deadline - 1).steps.contains(&Step::Retire { kid: previous.kid.clone() }));
        assert_eq!(plan(&keys, &p, deadline - 1).wake_at, Some(deadline));
        assert_eq!(plan(&keys, &p, deadline).steps, [Step::Retire { kid: previous.kid.clone() }]);
        settle(&mut keys, &p, deadline);
        let retired = keys.iter().find(|k| k.kid == previous.kid).unwrap();
        assert_eq!(retired.state(), KeyState::Retired);
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
        for now in 0..200 {
            let before = current(&keys).map(|k| k.kid.clone());
            settle(&mut keys, &p, now);
            if before.is_some() && current(&keys).map(|k| k.kid.clone()) != before {
                rotations += 1;
            }
            assert_eq!(states(&keys, KeyState::Current), 1, "t={now}");
            assert_eq!(states(&keys, KeyState::Next), 1, "t={now}");
            let published: Vec<String> = keys.iter().filter(|k| k.is_published()).map(|k| k.kid.clone()).collect();
            // Every cache a verifier could hold now: any fetch in the last max_age seconds.
            cache.push((now, published.clone()));
            cache.retain(|(at, _)| now - at < max_age);
            // Every cache holds the signing key (no verifier meets an unknown kid), and every
            // unexpired token's key is still published (a refetch finds it).
            let signer = current(&keys).unwrap().kid.clone();
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
        assert!(states(&keys, KeyState::Retired) >= 10);
    }

    #[test]
    fn revoking_the_current_key_promotes_the_next_at_once() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let (cur, nxt) = (current(&keys).unwrap().kid.clone(), next(&keys).unwrap().kid.clone());
        let steps = revoke(&keys, &cur).unwrap();
        assert_eq!(steps, [Step::Revoke { kid: cur.clone() }, Step::Promote { kid: nxt.clone() }, Step::CreateNext]);
        run(&mut keys, &steps, &p, 100);
        assert_eq!(current(&keys).unwrap().kid, nxt);
        let revoked = keys.iter().find(|k| k.kid == cur).unwrap();
        assert_eq!(revoked.state(), KeyState::Revoked);
        assert!(!revoked.is_published() && revoked.private().is_none());
        assert_eq!(states(&keys, KeyState::Next), 1);
        assert_eq!(revoke(&keys, &cur), Err(Refused::AlreadyRevoked(cur)));
        assert_eq!(revoke(&keys, "nope"), Err(Refused::UnknownKey("nope".into())));
    }

    #[test]
    fn revoking_right_after_a_rotation_promotes_a_key_inside_the_cache_window_and_says_until_when() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        // A forced rotation at t=1000 publishes a new next key; revoking the signer at 1010
        // makes that ten-second-old key sign.
        let steps = rotate_now(&keys, &p, 1_000, true).unwrap();
        run(&mut keys, &steps, &p, 1_000);
        let (cur, nxt) = (current(&keys).unwrap().kid.clone(), next(&keys).unwrap().kid.clone());
        let steps = revoke(&keys, &cur).unwrap();
        run(&mut keys, &steps, &p, 1_010);
        let signer = current(&keys).unwrap();
        assert_eq!(signer.kid, nxt);
        let seen = exposure(signer, &p, 1_010);
        assert_eq!((seen.published_for, seen.cache_window), (10, 360));
        assert!(seen.within_cache_window);
        assert_eq!(seen.may_be_rejected_until, Some(1_000 + 360));
        // A next key published for the whole window is safe, to the second.
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let cur = current(&keys).unwrap().kid.clone();
        let steps = revoke(&keys, &cur).unwrap();
        run(&mut keys, &steps, &p, 360);
        let seen = exposure(current(&keys).unwrap(), &p, 360);
        assert_eq!((seen.published_for, seen.within_cache_window, seen.may_be_rejected_until), (360, false, None));
    }

    #[test]
    fn an_imported_key_signs_at_once_only_with_force_by_the_rotation_rule() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let imported = fresh(1, &p, 50).remove(0);
        let activate = ImportAs { activate: true, ..ImportAs::default() };
        assert_eq!(
            import(&keys, &imported, &p, 50, activate),
            Err(Refused::NeverPublished { kid: imported.kid.clone() })
        );
        // The same rule as a planned rotation: may_sign refuses it for both.
        assert_eq!(may_sign(&imported, &p, 50, false), Err(Refused::NeverPublished { kid: imported.kid.clone() }));
        let forced = ImportAs { activate: true, force: true, ..ImportAs::default() };
        assert_eq!(import(&keys, &imported, &p, 50, forced), Ok(vec![Step::CreateCurrent]));
    }

    #[test]
    fn importing_a_next_key_retires_the_published_one_only_when_told() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let nxt = next(&keys).unwrap().kid.clone();
        let imported = fresh(1, &p, 50).remove(0);
        assert_eq!(
            import(&keys, &imported, &p, 50, ImportAs::default()),
            Err(Refused::NextKeyExists { kid: nxt.clone() })
        );
        let replace = ImportAs { replace_next: true, ..ImportAs::default() };
        assert_eq!(import(&keys, &imported, &p, 50, replace), Ok(vec![Step::Retire { kid: nxt }, Step::CreateNext]));
        // A set without a next key takes it as its next key with no flag.
        let without_next: Vec<KeyRecord> = keys.iter().filter(|k| k.state() != KeyState::Next).cloned().collect();
        assert_eq!(import(&without_next, &imported, &p, 50, ImportAs::default()), Ok(vec![Step::CreateNext]));
    }

    #[test]
    fn revoking_the_next_key_makes_a_new_one() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let nxt = next(&keys).unwrap().kid.clone();
        assert_eq!(revoke(&keys, &nxt).unwrap(), [Step::Revoke { kid: nxt }, Step::CreateNext]);
    }

    #[test]
    fn a_changed_algorithm_replaces_the_next_key_then_rotates_once_it_is_published() {
        let mut p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        p.algorithm = Algorithm::Es384;
        let old_next = next(&keys).unwrap().kid.clone();
        assert_eq!(plan(&keys, &p, 1).steps, [Step::Retire { kid: old_next }, Step::CreateNext]);
        let settled = settle(&mut keys, &p, 1);
        assert_eq!(settled.wake_at, Some(1 + p.publish_ahead), "no need to wait for the period");
        settle(&mut keys, &p, 1 + p.publish_ahead);
        assert_eq!(current(&keys).unwrap().algorithm, Algorithm::Es384);
    }

    #[test]
    fn apply_refuses_steps_that_do_not_fit_the_keys() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let cur = current(&keys).unwrap().kid.clone();
        assert!(apply(&keys, &[Step::Promote { kid: cur.clone() }], vec![], 1).is_err());
        assert!(apply(&keys, &[Step::Retire { kid: cur }], vec![], 1).is_err());
        assert!(apply(&keys, &[Step::CreateNext], vec![], 1).is_err());
    }
}
