//! Gated hand-over: a next key signs only once every gating partner of its set has fetched
//! a JWKS holding it. A pure function of the stored keys, the partners' observed holdings
//! (shared through the store) and `now`, so every process computes the same signer; the
//! gate moves the planned instant later and writes nothing.

use serde::{Deserialize, Serialize};

use super::{KeyRecord, KeyState};

/// What a gate does once `gate_max_wait` has passed without the partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGateTimeout {
    /// Keep the current key signing, and alert.
    #[default]
    Hold,
    /// Hand over anyway, recorded as unconfirmed.
    Proceed,
}

/// A partner whose holding gates the hand-over of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatingPartner {
    /// Its name.
    pub name: String,
    /// Seconds past the planned instant the gate waits for it.
    pub max_wait: i64,
    /// Then.
    pub on_timeout: OnGateTimeout,
}

/// A partner first fetched a JWKS holding `kid` at `first_seen` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holding {
    /// The partner.
    pub partner: String,
    /// The key set.
    pub key_set: String,
    /// The key.
    pub kid: String,
    /// First fetch holding it.
    pub first_seen: i64,
    /// Latest fetch holding it.
    pub last_seen: i64,
}

/// Where a set's gate stands at `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "gate", rename_all = "snake_case")]
pub enum GateState {
    /// Every gating partner holds the next key: it signs from `at`.
    Released {
        /// The next key.
        kid: String,
        /// When it signs (the planned instant, or the last partner's first fetch after it).
        at: i64,
    },
    /// Some partners have not fetched it. Before `planned` the plan stands (nothing is held
    /// yet); from `planned` the current key keeps signing, at most until `deadline`.
    Waiting {
        /// The next key.
        kid: String,
        /// The partners that have not fetched it.
        missing: Vec<String>,
        /// The planned instant.
        planned: i64,
        /// When waiting ends.
        deadline: i64,
        /// What happens then.
        then: OnGateTimeout,
    },
    /// The wait is over and a partner said `hold`: the current key keeps signing.
    Held {
        /// The next key.
        kid: String,
        /// The partners that have not fetched it.
        missing: Vec<String>,
        /// Since when it holds past the wait.
        since: i64,
    },
    /// The wait is over and the hand-over proceeded without confirmation.
    ProceededUnconfirmed {
        /// The next key.
        kid: String,
        /// The partners that had not fetched it.
        missing: Vec<String>,
        /// When it started signing.
        at: i64,
    },
}

impl GateState {
    /// Whether the gate keeps the current key signing past the planned instant at `now`
    /// (the state's own `now`): a gate waiting for a fetch before the planned instant
    /// holds nothing yet.
    pub fn holds(&self, now: i64) -> bool {
        match self {
            GateState::Held { .. } => true,
            GateState::Waiting { planned, .. } => now >= *planned,
            GateState::Released { .. } | GateState::ProceededUnconfirmed { .. } => false,
        }
    }
}

/// The stored keys as they are with the gate applied at `now`: the planned next key's
/// start (and its predecessor's end) moved to when the gate releases, or to the end of
/// time while it holds with no deadline. Before the planned instant a waiting gate moves
/// nothing: the plan stands until then, and the gate is applied again at that instant.
/// Returns the gate's state when one applies.
pub fn apply(
    keys: &[KeyRecord],
    partners: &[GatingPartner],
    holdings: &[Holding],
    now: i64,
) -> (Vec<KeyRecord>, Option<GateState>) {
    let mut keys = keys.to_vec();
    if partners.is_empty() {
        return (keys, None);
    }
    // The latest planned hand-over: the published key starting last, with a predecessor
    // whose signing ends at that instant. An earlier one has happened and stays so.
    let Some(next) = keys
        .iter()
        .filter(|k| k.is_published())
        .filter_map(|k| k.activates_at.map(|at| (at, k)))
        .max_by_key(|(at, _)| *at)
    else {
        return (keys, None);
    };
    let (planned, kid) = (next.0, next.1.kid.clone());
    let Some(predecessor) = keys.iter().position(|k| k.is_published() && k.deactivates_at == Some(planned)) else {
        return (keys, None);
    };
    let seen = |partner: &GatingPartner| {
        holdings.iter().filter(|h| h.partner == partner.name && h.kid == kid).map(|h| h.first_seen).min()
    };
    let missing: Vec<&GatingPartner> = partners.iter().filter(|p| seen(p).is_none()).collect();
    let (at, state) = if missing.is_empty() {
        let at = partners.iter().filter_map(seen).max().unwrap_or(planned).max(planned);
        (at, GateState::Released { kid: kid.clone(), at })
    } else {
        let names: Vec<String> = missing.iter().map(|p| p.name.clone()).collect();
        let deadline = missing.iter().map(|p| planned.saturating_add(p.max_wait)).max().unwrap_or(planned);
        let hold = missing.iter().any(|p| p.on_timeout == OnGateTimeout::Hold);
        if now < deadline {
            let then = if hold { OnGateTimeout::Hold } else { OnGateTimeout::Proceed };
            let at = if now < planned {
                planned
            } else if hold {
                i64::MAX
            } else {
                deadline
            };
            (at, GateState::Waiting { kid: kid.clone(), missing: names, planned, deadline, then })
        } else if hold {
            (i64::MAX, GateState::Held { kid: kid.clone(), missing: names, since: deadline })
        } else {
            (deadline, GateState::ProceededUnconfirmed { kid: kid.clone(), missing: names, at: deadline })
        }
    };
    keys[predecessor].deactivates_at = Some(at);
    for key in keys.iter_mut().filter(|k| k.kid == kid) {
        key.activates_at = Some(at);
    }
    (keys, Some(state))
}

/// Whether the gate's moved instant is a fact at `now` (it has happened), so that writing
/// it changes nothing about who signs.
pub fn settled(state: &GateState, now: i64) -> bool {
    match state {
        GateState::Released { at, .. } | GateState::ProceededUnconfirmed { at, .. } => *at <= now,
        GateState::Waiting { .. } | GateState::Held { .. } => false,
    }
}

/// The signer and next key of a set at `now` with the gate applied, for reports.
pub fn signer_and_next(keys: &[KeyRecord], now: i64) -> (Option<&KeyRecord>, Option<&KeyRecord>) {
    let signer = super::signer_at(keys, now);
    let next = keys.iter().filter(|k| k.state_at(now) == KeyState::Next).max_by_key(|k| (k.published_at, k.created_at));
    (signer, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::state::KeyBuilder;

    fn keys() -> Vec<KeyRecord> {
        vec![
            KeyBuilder::new("cur").signing(Some(0), Some(100)).build(),
            KeyBuilder::new("nxt").created(50).signing(Some(100), None).build(),
        ]
    }

    fn partner(name: &str, max_wait: i64, on_timeout: OnGateTimeout) -> GatingPartner {
        GatingPartner { name: name.into(), max_wait, on_timeout }
    }

    fn holding(partner: &str, kid: &str, at: i64) -> Holding {
        Holding { partner: partner.into(), key_set: "s".into(), kid: kid.into(), first_seen: at, last_seen: at }
    }

    fn signer(keys: &[KeyRecord], now: i64) -> String {
        crate::keys::signer_at(keys, now).unwrap().kid.clone()
    }

    #[test]
    fn a_partner_that_never_fetches_holds_the_hand_over_and_its_first_fetch_releases_it() {
        let gate = [partner("npm", 1_000, OnGateTimeout::Hold), partner("other", 1_000, OnGateTimeout::Hold)];
        let only_one = [holding("other", "nxt", 60)];
        let (held, state) = apply(&keys(), &gate, &only_one, 150);
        assert_eq!(signer(&held, 150), "cur");
        assert!(state.unwrap().holds(150));
        // The first fetch at 170 releases it from then: the same answer at every later now.
        let both = [holding("other", "nxt", 60), holding("npm", "nxt", 170)];
        for now in [170, 171, 5_000] {
            let (released, state) = apply(&keys(), &gate, &both, now);
            assert_eq!(state, Some(GateState::Released { kid: "nxt".into(), at: 170 }));
            assert_eq!((signer(&released, 169), signer(&released, 170)), ("cur".into(), "nxt".into()));
        }
        // Fetched before the planned instant: the plan stands.
        let early = [holding("other", "nxt", 60), holding("npm", "nxt", 70)];
        assert_eq!(apply(&keys(), &gate, &early, 100).1, Some(GateState::Released { kid: "nxt".into(), at: 100 }));
    }

    #[test]
    fn hold_keeps_the_current_key_past_the_wait_and_proceed_hands_over_then() {
        let hold = [partner("npm", 50, OnGateTimeout::Hold)];
        let (held, state) = apply(&keys(), &hold, &[], 10_000);
        assert_eq!(signer(&held, 10_000), "cur");
        assert_eq!(state, Some(GateState::Held { kid: "nxt".into(), missing: vec!["npm".into()], since: 150 }));
        let proceed = [partner("npm", 50, OnGateTimeout::Proceed)];
        let (waiting, state) = apply(&keys(), &proceed, &[], 120);
        assert_eq!(signer(&waiting, 149), "cur");
        assert_eq!(signer(&waiting, 150), "nxt", "planned to proceed at the deadline");
        assert!(matches!(state, Some(GateState::Waiting { deadline: 150, then: OnGateTimeout::Proceed, .. })));
        let (proceeded, state) = apply(&keys(), &proceed, &[], 150);
        assert_eq!(signer(&proceeded, 150), "nxt");
        assert_eq!(
            state,
            Some(GateState::ProceededUnconfirmed { kid: "nxt".into(), missing: vec!["npm".into()], at: 150 })
        );
    }

    #[test]
    fn before_the_planned_instant_a_waiting_gate_moves_nothing_and_holds_from_that_instant() {
        for on_timeout in [OnGateTimeout::Hold, OnGateTimeout::Proceed] {
            let gate = [partner("npm", 50, on_timeout)];
            let (waiting, state) = apply(&keys(), &gate, &[], 99);
            let instants = |ks: &[KeyRecord]| ks.iter().map(|k| (k.activates_at, k.deactivates_at)).collect::<Vec<_>>();
            assert_eq!(instants(&waiting), instants(&keys()), "the plan stands before its instant");
            let state = state.unwrap();
            assert!(matches!(state, GateState::Waiting { planned: 100, deadline: 150, .. }));
            assert!(!state.holds(99), "nothing is held before the planned instant");
            let (held, state) = apply(&keys(), &gate, &[], 100);
            assert_eq!(signer(&held, 100), "cur", "from the planned instant the current key keeps signing");
            assert!(state.unwrap().holds(100));
        }
    }

    #[test]
    fn without_gating_partners_the_keys_are_as_stored() {
        let (same, state) = apply(&keys(), &[], &[], 150);
        assert_eq!(state, None);
        assert_eq!(signer(&same, 150), "nxt");
    }
}
