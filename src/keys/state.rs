//! A stored key and the lifecycle state its timestamps define.

use std::fmt;

use anyhow::bail;
use serde::Serialize;

use super::custody::NewKey;
use super::{Algorithm, PublicKey};
use crate::seal::MasterKey;

/// Where a key is in its life; derived from its timestamps.
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
}

impl fmt::Debug for Private {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Private::Sealed { blob, master_key_id } => {
                write!(f, "Sealed {{ <{} bytes> by master key {master_key_id} }}", blob.len())
            }
            Private::Token { token } => write!(f, "Token {{ {token:?} }}"),
        }
    }
}

/// Where a key is in its life, with what each state may hold: only a live key has a
/// private half, so a retired or revoked key with private material cannot be represented.
#[derive(Clone, PartialEq, Eq)]
pub enum Status {
    /// Next, current or previous (its timestamps say which).
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
    /// Started signing.
    pub activated_at: Option<i64>,
    /// Stopped signing.
    pub deactivated_at: Option<i64>,
    /// Live with its private half, retired or revoked.
    pub status: Status,
}

/// A record as `keys list --json` and the admin API show it: every timestamp, the master
/// key or token that holds the private half, never the sealed bytes.
#[derive(Serialize)]
struct Shown<'a> {
    kid: &'a str,
    key_set: &'a str,
    algorithm: Algorithm,
    public: &'a PublicKey,
    master_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    created_at: i64,
    published_at: Option<i64>,
    activated_at: Option<i64>,
    deactivated_at: Option<i64>,
    retired_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl Serialize for KeyRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (master_key_id, token) = match self.private() {
            Some(Private::Sealed { master_key_id, .. }) => (Some(master_key_id.as_str()), None),
            Some(Private::Token { token }) => (None, Some(token.as_str())),
            None => (None, None),
        };
        Shown {
            kid: &self.kid,
            key_set: &self.key_set,
            algorithm: self.algorithm,
            public: &self.public,
            master_key_id,
            token,
            created_at: self.created_at,
            published_at: self.published_at,
            activated_at: self.activated_at,
            deactivated_at: self.deactivated_at,
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
            None => "none".to_owned(),
        };
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("key_set", &self.key_set)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state())
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
            activated_at: None,
            deactivated_at: None,
            status: Status::Live { private: key.private },
        }
    }

    /// The lifecycle state its status and timestamps define.
    pub fn state(&self) -> KeyState {
        match self.status {
            Status::Revoked { .. } => KeyState::Revoked,
            Status::Retired { .. } => KeyState::Retired,
            Status::Live { .. } if self.deactivated_at.is_some() => KeyState::Previous,
            Status::Live { .. } if self.activated_at.is_some() => KeyState::Current,
            Status::Live { .. } => KeyState::Next,
        }
    }

    /// Whether verifiers may see it in the JWKS.
    pub fn is_published(&self) -> bool {
        matches!(self.state(), KeyState::Next | KeyState::Current | KeyState::Previous)
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

/// Refuses to go on when stored keys were sealed under another master key.
pub fn check_master_key(records: &[KeyRecord], master: &MasterKey) -> anyhow::Result<()> {
    let foreign: Vec<&str> =
        records.iter().filter_map(|r| r.sealed().map(|(_, id)| id)).filter(|id| *id != master.id()).collect();
    if let Some(id) = foreign.first() {
        bail!(
            "the database holds keys sealed with master key {id}, but the configured master key is {}: \
             set KEYWARD_MASTER_KEY or master_key_file to the key this database was created with \
             (nothing was changed)",
            master.id()
        );
    }
    Ok(())
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
            activated_at: None,
            deactivated_at: None,
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

    pub(crate) fn activated(mut self, at: Option<i64>) -> Self {
        self.0.activated_at = at;
        self
    }

    pub(crate) fn deactivated(mut self, at: Option<i64>) -> Self {
        self.0.deactivated_at = at;
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
        assert_eq!(r.state(), KeyState::Next);
        r.activated_at = Some(20);
        assert_eq!(r.state(), KeyState::Current);
        r.deactivated_at = Some(30);
        assert_eq!(r.state(), KeyState::Previous);
        assert!(r.is_published());
        r.retire(40);
        assert_eq!(r.state(), KeyState::Retired);
        assert!(!r.is_published());
        r.revoke(50);
        assert_eq!(r.state(), KeyState::Revoked);
        assert_eq!((r.retired_at(), r.revoked_at(), r.private()), (Some(40), Some(50), None));
    }

    #[test]
    fn debug_shows_no_sealed_bytes() {
        let shown = format!("{:?}", record());
        assert!(shown.contains("<3 bytes>") && !shown.contains("[1, 2, 3]"), "{shown}");
    }
}
