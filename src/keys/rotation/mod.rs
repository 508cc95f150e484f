//! Key rotation: what is due, which key signs, and what each key's timeline is, decided
//! as pure functions of one key set's stored keys, its policy and an explicit `now`.
//!
//! The rules (see the README's rotation section):
//! - a set always has one **current** key (signs) and one **next** key (published only);
//! - a next key is published with the instant it starts signing (`activates_at`): once it
//!   has been published for `publish_ahead` and the current key has signed for
//!   `rotate_every`. The current key stops signing at that instant (`deactivates_at`); no
//!   write happens then, every process sees the hand-over in the stored instants;
//! - a **previous** key stays published until `deactivates_at + retain_for`, where
//!   `retain_for` is the longest `max_ttl` of the set's profiles plus `retain_after`; then it
//!   is **retired** (unpublished, private half deleted);
//! - a **revoked** key leaves the JWKS at once; if it was current, the next key takes over
//!   at once. Revocation and forced rotation rewrite the planned instants.
//!
//! `plan` is the scheduler's part, `actions` the operator's, `step` how either changes keys.

mod actions;
mod plan;
mod step;
#[cfg(test)]
pub(super) mod testing;

pub use actions::{exposure, import, may_sign, revoke, rotate_now, Exposure, ImportAs, Refused};
pub use plan::{plan, Plan};
pub use step::{apply, Step, StepError};

use super::{signer_at, Algorithm, KeyRecord, KeyState};

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

    /// When a next key published at `now` takes over from a key that starts signing at `now`.
    fn handover_after_fresh_start(&self, now: i64) -> i64 {
        now.saturating_add(self.publish_ahead.max(self.rotate_every))
    }
}

fn find(keys: &[KeyRecord], state: KeyState, now: i64) -> impl Iterator<Item = &KeyRecord> {
    keys.iter().filter(move |k| k.state_at(now) == state)
}

pub(super) fn current(keys: &[KeyRecord], now: i64) -> Option<&KeyRecord> {
    signer_at(keys, now)
}

/// The newest next key.
pub(super) fn next(keys: &[KeyRecord], now: i64) -> Option<&KeyRecord> {
    find(keys, KeyState::Next, now).max_by_key(|k| (k.published_at, k.created_at))
}

fn published_at(key: &KeyRecord) -> i64 {
    key.published_at.unwrap_or(key.created_at)
}

/// When a previous key leaves the JWKS.
pub(super) fn retire_at(key: &KeyRecord, policy: &Policy) -> i64 {
    key.deactivates_at.unwrap_or(key.created_at).saturating_add(policy.retain_for)
}

/// When a next key published at `published` may take over from `current`: published long
/// enough, and the current key's period over (at once, if it no longer fits the policy).
fn handover_at(current: &KeyRecord, published: i64, policy: &Policy) -> i64 {
    let ready = published.saturating_add(policy.publish_ahead);
    if !policy.fits(current) {
        return ready;
    }
    let period_over = current.activates_at.unwrap_or(current.created_at).saturating_add(policy.rotate_every);
    ready.max(period_over)
}

/// When `next` may take over from `current`.
pub(super) fn rotation_due_at(current: &KeyRecord, next: &KeyRecord, policy: &Policy) -> i64 {
    handover_at(current, published_at(next), policy)
}
