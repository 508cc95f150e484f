//! The operator's part: planned and forced rotations, imports and emergency revocation,
//! each a list of steps or a refusal.

use serde::Serialize;

use super::{current, find, handover_at, next, published_at, KeyRecord, KeyState, Policy, Step};

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

/// An operator's rotation at `now`: the next key signs at once, ahead of its planned
/// instant; refused while it is too freshly published, unless `force`.
pub fn rotate_now(keys: &[KeyRecord], policy: &Policy, now: i64, force: bool) -> Result<Vec<Step>, Refused> {
    let then = Step::CreateNext { activates_at: policy.handover_after_fresh_start(now) };
    match next(keys, now).filter(|n| policy.fits(n)) {
        Some(next) => {
            may_sign(next, policy, now, force)?;
            Ok(vec![Step::Promote { kid: next.kid.clone() }, then])
        }
        None if force => Ok(vec![Step::CreateCurrent, then]),
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
/// Activated, it signs at once and the scheduler plans the next key's start again.
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
    let nexts: Vec<&KeyRecord> = find(keys, KeyState::Next, now).collect();
    if let (Some(existing), false) = (nexts.first(), how.replace_next) {
        return Err(Refused::NextKeyExists { kid: existing.kid.clone() });
    }
    let mut steps: Vec<Step> = nexts.iter().map(|k| Step::Retire { kid: k.kid.clone() }).collect();
    let activates_at = match current(keys, now) {
        Some(current) => handover_at(current, now, policy).max(now),
        None => policy.handover_after_fresh_start(now),
    };
    steps.push(Step::CreateNext { activates_at });
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
    let signing_from = signer.activates_at.unwrap_or(now);
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

/// An emergency revocation at `now`: the key leaves the JWKS; if it was signing, the next
/// key signs at once and a new next key is made, so there is no instant without a signer.
pub fn revoke(keys: &[KeyRecord], kid: &str, policy: &Policy, now: i64) -> Result<Vec<Step>, Refused> {
    let key = keys.iter().find(|k| k.kid == kid).ok_or_else(|| Refused::UnknownKey(kid.to_owned()))?;
    let mut steps = vec![Step::Revoke { kid: kid.to_owned() }];
    let fresh_start = Step::CreateNext { activates_at: policy.handover_after_fresh_start(now) };
    match key.state_at(now) {
        KeyState::Revoked => return Err(Refused::AlreadyRevoked(kid.to_owned())),
        KeyState::Current => match next(keys, now) {
            Some(next) => steps.extend([Step::Promote { kid: next.kid.clone() }, fresh_start]),
            None => steps.extend([Step::CreateCurrent, fresh_start]),
        },
        KeyState::Next => {
            let activates_at = match current(keys, now) {
                Some(current) => handover_at(current, now, policy).max(now),
                None => policy.handover_after_fresh_start(now),
            };
            steps.push(Step::CreateNext { activates_at });
        }
        KeyState::Previous | KeyState::Retired => {}
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Algorithm;
    use super::*;
    use crate::config::Config;

    const DAY: i64 = 86_400;

    fn policy() -> Policy {
        Policy { algorithm: Algorithm::Es256, ..Config::default().policy(&Config::default().key_sets[0]) }
    }

    #[test]
    fn a_manual_rotation_without_a_fitting_next_key_needs_force() {
        let mut p = small_policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        p.algorithm = Algorithm::Es384;
        assert_eq!(rotate_now(&keys, &p, 100, false), Err(Refused::NoNextKey));
        assert_eq!(
            rotate_now(&keys, &p, 100, true),
            Ok(vec![Step::CreateCurrent, Step::CreateNext { activates_at: 110 }])
        );
    }

    #[test]
    fn revoking_the_current_key_promotes_the_next_at_once() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let (cur, nxt) = (current(&keys, 0).unwrap().kid.clone(), next(&keys, 0).unwrap().kid.clone());
        let steps = revoke(&keys, &cur, &p, 100).unwrap();
        assert_eq!(
            steps,
            [
                Step::Revoke { kid: cur.clone() },
                Step::Promote { kid: nxt.clone() },
                Step::CreateNext { activates_at: 100 + 30 * DAY }
            ]
        );
        run(&mut keys, &steps, &p, 100);
        assert_eq!(current(&keys, 100).unwrap().kid, nxt);
        let revoked = keys.iter().find(|k| k.kid == cur).unwrap();
        assert_eq!(revoked.state_at(100), KeyState::Revoked);
        assert!(!revoked.is_published() && revoked.private().is_none());
        assert_eq!(states(&keys, KeyState::Next, 100), 1);
        assert_eq!(revoke(&keys, &cur, &p, 100), Err(Refused::AlreadyRevoked(cur)));
        assert_eq!(revoke(&keys, "nope", &p, 100), Err(Refused::UnknownKey("nope".into())));
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
        let (cur, nxt) = (current(&keys, 1_000).unwrap().kid.clone(), next(&keys, 1_000).unwrap().kid.clone());
        let steps = revoke(&keys, &cur, &p, 1_010).unwrap();
        run(&mut keys, &steps, &p, 1_010);
        let signer = current(&keys, 1_010).unwrap();
        assert_eq!(signer.kid, nxt);
        let seen = exposure(signer, &p, 1_010);
        assert_eq!((seen.published_for, seen.cache_window), (10, 360));
        assert!(seen.within_cache_window);
        assert_eq!(seen.may_be_rejected_until, Some(1_000 + 360));
        // A next key published for the whole window is safe, to the second.
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let cur = current(&keys, 0).unwrap().kid.clone();
        let steps = revoke(&keys, &cur, &p, 360).unwrap();
        run(&mut keys, &steps, &p, 360);
        let seen = exposure(current(&keys, 360).unwrap(), &p, 360);
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
        let nxt = next(&keys, 50).unwrap().kid.clone();
        let imported = fresh(1, &p, 50).remove(0);
        assert_eq!(
            import(&keys, &imported, &p, 50, ImportAs::default()),
            Err(Refused::NextKeyExists { kid: nxt.clone() })
        );
        let replace = ImportAs { replace_next: true, ..ImportAs::default() };
        let planned = Step::CreateNext { activates_at: 30 * DAY };
        assert_eq!(import(&keys, &imported, &p, 50, replace), Ok(vec![Step::Retire { kid: nxt }, planned.clone()]));
        // A set without a next key takes it as its next key with no flag.
        let without_next: Vec<KeyRecord> = keys.iter().filter(|k| k.state_at(50) != KeyState::Next).cloned().collect();
        assert_eq!(import(&without_next, &imported, &p, 50, ImportAs::default()), Ok(vec![planned]));
    }

    #[test]
    fn revoking_the_next_key_makes_a_new_one() {
        let p = policy();
        let mut keys = Vec::new();
        settle(&mut keys, &p, 0);
        let nxt = next(&keys, 0).unwrap().kid.clone();
        assert_eq!(
            revoke(&keys, &nxt, &p, 0).unwrap(),
            [Step::Revoke { kid: nxt }, Step::CreateNext { activates_at: 30 * DAY }]
        );
    }
}
