//! A stored key and the lifecycle state its timestamps define.

use std::fmt;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{Algorithm, PublicKey, SigningKey};
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

/// A row of the `keys` table. `Debug` shows the sealed blob's size only.
#[derive(Clone, Serialize)]
pub struct KeyRecord {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// Owning key set.
    pub key_set: String,
    /// Algorithm the key signs with.
    pub algorithm: Algorithm,
    /// Public half.
    pub public: PublicKey,
    /// Sealed PKCS#8 DER; `None` once retired.
    #[serde(skip)]
    pub sealed_private: Option<Vec<u8>>,
    /// Id of the master key that sealed it.
    pub master_key_id: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// First served in the JWKS.
    pub published_at: Option<i64>,
    /// Started signing.
    pub activated_at: Option<i64>,
    /// Stopped signing.
    pub deactivated_at: Option<i64>,
    /// Left the JWKS after its tokens expired.
    pub retired_at: Option<i64>,
    /// Withdrawn in an emergency.
    pub revoked_at: Option<i64>,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("key_set", &self.key_set)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state())
            .field("sealed_private", &self.sealed_private.as_ref().map(|b| format!("<{} bytes>", b.len())))
            .finish_non_exhaustive()
    }
}

impl KeyRecord {
    /// The lifecycle state its timestamps define.
    pub fn state(&self) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.retired_at.is_some() {
            KeyState::Retired
        } else if self.deactivated_at.is_some() {
            KeyState::Previous
        } else if self.activated_at.is_some() {
            KeyState::Current
        } else {
            KeyState::Next
        }
    }

    /// Whether verifiers may see it in the JWKS.
    pub fn is_published(&self) -> bool {
        matches!(self.state(), KeyState::Next | KeyState::Current | KeyState::Previous)
    }

    pub(crate) fn seal_context(&self) -> [&str; 3] {
        [&self.kid, &self.key_set, self.algorithm.as_str()]
    }

    /// Unseals the private half for signing.
    pub fn open_signing_key(&self, master: &MasterKey) -> anyhow::Result<SigningKey> {
        let (Some(blob), Some(sealed_by)) = (&self.sealed_private, &self.master_key_id) else {
            bail!("key {} has no private material (state {})", self.kid, self.state());
        };
        if sealed_by != master.id() {
            bail!(
                "key {} was sealed with master key {sealed_by}, but the configured master key is {}",
                self.kid,
                master.id()
            );
        }
        let der = master
            .open(blob, &self.seal_context())
            .with_context(|| format!("opening the private half of key {}", self.kid))?;
        SigningKey::from_der(&self.kid, self.algorithm, &der).with_context(|| format!("loading key {}", self.kid))
    }
}

/// Refuses to go on when stored keys were sealed under another master key.
pub fn check_master_key(records: &[KeyRecord], master: &MasterKey) -> anyhow::Result<()> {
    let foreign: Vec<&str> =
        records.iter().filter_map(|r| r.master_key_id.as_deref()).filter(|id| *id != master.id()).collect();
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
            sealed_private: Some(vec![0; 40]),
            master_key_id: Some("m".into()),
            created_at: 0,
            published_at: Some(0),
            activated_at: None,
            deactivated_at: None,
            retired_at: None,
            revoked_at: None,
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
        KeyRecord { sealed_private: Some(vec![1, 2, 3]), ..KeyBuilder::new("k").created(10).build() }
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
        r.retired_at = Some(40);
        assert_eq!(r.state(), KeyState::Retired);
        assert!(!r.is_published());
        r.revoked_at = Some(50);
        assert_eq!(r.state(), KeyState::Revoked);
    }

    #[test]
    fn debug_shows_no_sealed_bytes() {
        let shown = format!("{:?}", record());
        assert!(shown.contains("<3 bytes>") && !shown.contains("[1, 2, 3]"), "{shown}");
    }
}
