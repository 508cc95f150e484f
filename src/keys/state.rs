//! A stored key and the lifecycle state its timestamps define.

use std::fmt;

use serde::Serialize;

use super::custody::NewKey;
use super::{Algorithm, PublicKey};

/// Where a key is in its life at a given instant; derived from its timestamps and that
/// instant, so a planned hand-over happens without a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// The set's signing key.
    Current,
    /// No longer signing, still published for tokens it signed.
    Previous,
    /// Unpublished; private material deleted.
    Retired,
    /// Withdrawn at once; never signs or verifies again.
    Revoked,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Previous => "previous",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        })
    }
}

/// Where a live key's private half is kept.
#[derive(Clone, PartialEq, Eq)]
pub enum Private {
    /// PKCS#8 DER sealed under the master key `master_key_id`, stored beside the record.
    Sealed {
        /// The AES-256-GCM blob.
        blob: Vec<u8>,
        /// Id of the master key that sealed it.
        master_key_id: String,
    },
    /// A sensitive, non-extractable object in the PKCS#11 token labelled `token`, whose
    /// label and id are the kid.
    Token {
        /// The token's label.
        token: String,
    },
    /// A non-exportable key of the `[vault]` Transit engine, named `key`.
    VaultTransit {
        /// The Transit key's name.
        key: String,
    },
    /// A key of `[aws_kms]`, by its ARN.
    AwsKms {
        /// The key's ARN.
        key_id: String,
    },
}

/// How the `token_label` column marks a key held by a key service rather than a token
/// (a PKCS#11 label holds no colon in practice, and at most 32 bytes).
const VAULT_TRANSIT: &str = "vault-transit:";
const AWS_KMS: &str = "aws-kms:";

impl Private {
    /// What the store's `token_label` column holds for a key not sealed in the database.
    pub fn holder_label(&self) -> Option<String> {
        match self {
            Private::Sealed { .. } => None,
            Private::Token { token } => Some(token.clone()),
            Private::VaultTransit { key } => Some(format!("{VAULT_TRANSIT}{key}")),
            Private::AwsKms { key_id } => Some(format!("{AWS_KMS}{key_id}")),
        }
    }

    /// The holder a stored `token_label` names.
    pub fn from_holder_label(label: String) -> Private {
        if let Some(key) = label.strip_prefix(VAULT_TRANSIT) {
            Private::VaultTransit { key: key.to_owned() }
        } else if let Some(key_id) = label.strip_prefix(AWS_KMS) {
            Private::AwsKms { key_id: key_id.to_owned() }
        } else {
            Private::Token { token: label }
        }
    }

    /// Whether the private half is held outside the database (a token or a key service),
    /// so that retiring the key must destroy it there.
    pub fn is_held_outside(&self) -> bool {
        !matches!(self, Private::Sealed { .. })
    }
}

impl fmt::Debug for Private {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Private::Sealed { blob, master_key_id } => {
                write!(f, "Sealed {{ <{} bytes> by master key {master_key_id} }}", blob.len())
            }
            Private::Token { token } => write!(f, "Token {{ {token:?} }}"),
            Private::VaultTransit { key } => write!(f, "VaultTransit {{ {key:?} }}"),
            Private::AwsKms { key_id } => write!(f, "AwsKms {{ {key_id:?} }}"),
        }
    }
}

/// Where a key is in its life, with what each state may hold: only a live key has a
/// private half, so a retired or revoked key with private material cannot be represented.
#[derive(Clone, PartialEq, Eq)]
pub enum Status {
    /// Published: next, current or previous (its signing period and the clock say which).
    Live {
        /// Its private half.
        private: Private,
    },
    /// Left the JWKS after its tokens expired (Unix seconds).
    Retired {
        /// When.
        at: i64,
    },
    /// Withdrawn in an emergency (Unix seconds), possibly after it was retired.
    Revoked {
        /// When.
        at: i64,
        /// When it had been retired, if it had.
        retired_at: Option<i64>,
    },
}

/// A row of the `keys` table. `Debug` shows the sealed blob's size only.
#[derive(Clone)]
pub struct KeyRecord {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// Owning key set.
    pub key_set: String,
    /// Algorithm the key signs with.
    pub algorithm: Algorithm,
    /// Public half.
    pub public: PublicKey,
    /// Unix seconds.
    pub created_at: i64,
    /// First served in the JWKS.
    pub published_at: Option<i64>,
    /// Starts signing, past or planned; `None` while no instant is planned.
    pub activates_at: Option<i64>,
    /// Stops signing, past or planned; `None` while no successor is planned.
    pub deactivates_at: Option<i64>,
    /// Live with its private half, retired or revoked.
    pub status: Status,
}

/// A record as `keys list --json` shows it: every timestamp, the master key or token that
/// holds the private half, never the sealed bytes.
#[derive(Serialize)]
struct Shown<'a> {
    kid: &'a str,
    key_set: &'a str,
    algorithm: Algorithm,
    public: &'a PublicKey,
    master_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    /// A key service's key: `vault-transit:NAME` or `aws-kms:ARN`.
    #[serde(skip_serializing_if = "Option::is_none")]
    held_by: Option<String>,
    created_at: i64,
    published_at: Option<i64>,
    activates_at: Option<i64>,
    deactivates_at: Option<i64>,
    retired_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl Serialize for KeyRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (master_key_id, token, held_by) = match self.private() {
            Some(Private::Sealed { master_key_id, .. }) => (Some(master_key_id.as_str()), None, None),
            Some(Private::Token { token }) => (None, Some(token.as_str()), None),
            Some(remote @ (Private::VaultTransit { .. } | Private::AwsKms { .. })) => {
                (None, None, remote.holder_label())
            }
            None => (None, None, None),
        };
        Shown {
            kid: &self.kid,
            key_set: &self.key_set,
            algorithm: self.algorithm,
            public: &self.public,
            master_key_id,
            token,
            held_by,
            created_at: self.created_at,
            published_at: self.published_at,
            activates_at: self.activates_at,
            deactivates_at: self.deactivates_at,
            retired_at: self.retired_at(),
            revoked_at: self.revoked_at(),
        }
        .serialize(serializer)
    }
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let private = match self.private() {
            Some(Private::Sealed { blob, .. }) => format!("sealed <{} bytes>", blob.len()),
            Some(Private::Token { token }) => format!("in token {token:?}"),
            Some(Private::VaultTransit { key }) => format!("in Vault Transit key {key:?}"),
            Some(Private::AwsKms { key_id }) => format!("in AWS KMS key {key_id:?}"),
            None => "none".to_owned(),
        };
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("key_set", &self.key_set)
            .field("algorithm", &self.algorithm)
            .field("activates_at", &self.activates_at)
            .field("deactivates_at", &self.deactivates_at)
            .field("private", &private)
            .finish_non_exhaustive()
    }
}

impl KeyRecord {
    /// A new key with no lifecycle times yet.
    pub fn new(key_set: &str, key: NewKey, now: i64) -> Self {
        KeyRecord {
            kid: key.kid,
            key_set: key_set.to_owned(),
            algorithm: key.algorithm,
            public: key.public,
            created_at: now,
            published_at: None,
            activates_at: None,
            deactivates_at: None,
            status: Status::Live { private: key.private },
        }
    }

    /// The lifecycle state at `now`: it signs from `activates_at` until `deactivates_at`.
    pub fn state_at(&self, now: i64) -> KeyState {
        if matches!(self.status, Status::Revoked { .. }) {
            KeyState::Revoked
        } else if matches!(self.status, Status::Retired { .. }) {
            KeyState::Retired
        } else if self.activates_at.is_none_or(|at| at > now) {
            KeyState::Next
        } else if self.deactivates_at.is_some_and(|at| at <= now) {
            KeyState::Previous
        } else {
            KeyState::Current
        }
    }

    /// The instants it signs between, once planned: `[from, until)`, `until` `None` while
    /// open-ended. Empty when a forced rotation replaced it within the second it started.
    pub fn signing_period(&self) -> Option<(i64, Option<i64>)> {
        let from = self.activates_at?;
        match self.deactivates_at {
            Some(until) if until <= from => None,
            until => Some((from, until)),
        }
    }

    /// Whether verifiers may see it in the JWKS (not retired, not revoked).
    pub fn is_published(&self) -> bool {
        matches!(self.status, Status::Live { .. })
    }

    /// Its private half, while it is live.
    pub fn private(&self) -> Option<&Private> {
        match &self.status {
            Status::Live { private } => Some(private),
            Status::Retired { .. } | Status::Revoked { .. } => None,
        }
    }

    /// The sealed blob and the id of the master key that sealed it, if sealed and live.
    pub fn sealed(&self) -> Option<(&[u8], &str)> {
        match self.private() {
            Some(Private::Sealed { blob, master_key_id }) => Some((blob, master_key_id)),
            _ => None,
        }
    }

    /// When it was retired.
    pub fn retired_at(&self) -> Option<i64> {
        match self.status {
            Status::Retired { at } => Some(at),
            Status::Revoked { retired_at, .. } => retired_at,
            Status::Live { .. } => None,
        }
    }

    /// When it was revoked.
    pub fn revoked_at(&self) -> Option<i64> {
        match self.status {
            Status::Revoked { at, .. } => Some(at),
            _ => None,
        }
    }

    /// Retires it at `at`, dropping its private half.
    pub fn retire(&mut self, at: i64) {
        self.status = Status::Retired { at };
    }

    /// Revokes it at `at`, dropping its private half.
    pub fn revoke(&mut self, at: i64) {
        self.status = Status::Revoked { at, retired_at: self.retired_at() };
    }
}

/// The key of a set that signs at `now`: the one whose signing period holds `now`. The
/// store keeps a set's periods from overlapping, so there is at most one; every process
/// reading the same keys finds the same signer at the same instant.
pub fn signer_at(keys: &[KeyRecord], now: i64) -> Option<&KeyRecord> {
    keys.iter().find(|k| k.state_at(now) == KeyState::Current)
}

/// The first instant after `now` at which some key's state changes by itself (a planned
/// hand-over), if any; `i64::MAX` stands for never (a gate holding).
pub fn next_change_after(keys: &[KeyRecord], now: i64) -> Option<i64> {
    keys.iter()
        .filter(|k| k.is_published())
        .flat_map(|k| [k.activates_at, k.deactivates_at])
        .flatten()
        .filter(|at| *at > now && *at < i64::MAX)
        .min()
}

/// Whether two keys of one set would sign at the same instant.
pub(crate) fn periods_overlap(keys: &[KeyRecord]) -> bool {
    let periods: Vec<(&str, i64, i64)> = keys
        .iter()
        .filter_map(|k| k.signing_period().map(|(from, until)| (k.key_set.as_str(), from, until.unwrap_or(i64::MAX))))
        .collect();
    periods.iter().enumerate().any(|(i, (set, from, until))| {
        periods
            .iter()
            .skip(i + 1)
            .any(|(other_set, other_from, other_until)| set == other_set && from < other_until && other_from < until)
    })
}

/// Test keys: ES256 in set "s", a fake public half (x = "x{kid}"), created and published at
/// 0, 40 sealed bytes under master key "m".
#[cfg(test)]
pub(crate) struct KeyBuilder(KeyRecord);

#[cfg(test)]
impl KeyBuilder {
    pub(crate) fn new(kid: &str) -> Self {
        KeyBuilder(KeyRecord {
            kid: kid.into(),
            key_set: "s".into(),
            algorithm: Algorithm::Es256,
            public: PublicKey::Ec { crv: "P-256".into(), x: format!("x{kid}"), y: "y".into() },
            created_at: 0,
            published_at: Some(0),
            activates_at: None,
            deactivates_at: None,
            status: Status::Live { private: Private::Sealed { blob: vec![0; 40], master_key_id: "m".into() } },
        })
    }

    pub(crate) fn set(mut self, set: &str) -> Self {
        self.0.key_set = set.into();
        self
    }

    pub(crate) fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.0.algorithm = algorithm;
        self
    }

    /// Created and published at `at`.
    pub(crate) fn created(mut self, at: i64) -> Self {
        self.0.created_at = at;
        self.0.published_at = Some(at);
        self
    }

    /// Signs from `from` until `until`.
    pub(crate) fn signing(mut self, from: Option<i64>, until: Option<i64>) -> Self {
        self.0.activates_at = from;
        self.0.deactivates_at = until;
        self
    }

    pub(crate) fn build(self) -> KeyRecord {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord {
            status: Status::Live { private: Private::Sealed { blob: vec![1, 2, 3], master_key_id: "m".into() } },
            ..KeyBuilder::new("k").created(10).build()
        }
    }

    #[test]
    fn state_follows_the_latest_lifecycle_timestamp() {
        let mut r = record();
        assert_eq!(r.state_at(100), KeyState::Next);
        r.activates_at = Some(20);
        assert_eq!(r.state_at(100), KeyState::Current);
        r.deactivates_at = Some(30);
        assert_eq!(r.state_at(100), KeyState::Previous);
        assert!(r.is_published());
        r.retire(40);
        assert_eq!(r.state_at(100), KeyState::Retired);
        assert!(!r.is_published());
        r.revoke(50);
        assert_eq!(r.state_at(100), KeyState::Revoked);
        assert_eq!((r.retired_at(), r.revoked_at(), r.private()), (Some(40), Some(50), None));
    }

    #[test]
    fn planned_instants_change_the_state_as_time_passes_without_a_write() {
        let r = KeyBuilder::new("k").created(10).signing(Some(20), Some(30)).build();
        let states: Vec<KeyState> = [19, 20, 29, 30].into_iter().map(|now| r.state_at(now)).collect();
        assert_eq!(states, [KeyState::Next, KeyState::Current, KeyState::Current, KeyState::Previous]);
    }

    #[test]
    fn the_signer_is_the_key_whose_period_holds_now() {
        let keys = vec![
            KeyBuilder::new("a").signing(Some(0), Some(10)).build(),
            KeyBuilder::new("b").signing(Some(10), Some(20)).build(),
            KeyBuilder::new("c").signing(Some(20), None).build(),
        ];
        let signer = |now| signer_at(&keys, now).map(|k| k.kid.as_str());
        assert_eq!(
            [signer(9), signer(10), signer(19), signer(20), signer(1_000)],
            [Some("a"), Some("b"), Some("b"), Some("c"), Some("c")]
        );
        assert_eq!(signer(-1), None);
        assert_eq!(next_change_after(&keys, 10), Some(20));
        assert_eq!(next_change_after(&keys, 20), None);
        assert!(!periods_overlap(&keys));
    }

    #[test]
    fn overlapping_signing_periods_are_detected_and_empty_ones_ignored() {
        let open = KeyBuilder::new("a").signing(Some(0), None).build();
        let later = KeyBuilder::new("b").signing(Some(5), None).build();
        assert!(periods_overlap(&[open.clone(), later.clone()]));
        let other_set = KeyBuilder::new("c").set("t").signing(Some(5), None).build();
        assert!(!periods_overlap(&[open.clone(), other_set]));
        // Replaced within the second it started: it signed in no whole second.
        let empty = KeyBuilder::new("d").signing(Some(0), Some(0)).build();
        assert!(!periods_overlap(&[empty, open]));
    }

    #[test]
    fn debug_shows_no_sealed_bytes() {
        let shown = format!("{:?}", record());
        assert!(shown.contains("<3 bytes>") && !shown.contains("[1, 2, 3]"), "{shown}");
    }
}
