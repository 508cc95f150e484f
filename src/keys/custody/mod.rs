//! Key custody: who holds the private halves and performs the private-key operations
//! (generate, sign, destroy). Each key set chooses sealed software keys (the default) or a
//! PKCS#11 token; the rest of keyward sees only [`Custody`], the public half and a
//! [`SigningKey`].

pub mod pkcs11;
pub mod sealed;

use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::{Algorithm, GeneratedKey, KeyRecord, Private, PublicKey, SigningKey};
use crate::master_key::Keyring;
use pkcs11::{Token, TokenSettings};

/// Who holds a key set's private keys (`custody` in `[[key_set]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CustodyKind {
    /// Generated in the process, sealed under the master key, kept in the database.
    #[default]
    Sealed,
    /// Generated and used inside the `[pkcs11]` token; never leaves it.
    Pkcs11,
}

/// Opens the token `settings` describe and checks that it holds every live key of
/// `records` kept there; returns how many (for `check-config`).
pub async fn check_token(settings: TokenSettings, records: Vec<KeyRecord>) -> anyhow::Result<usize> {
    let token = tokio::task::spawn_blocking(move || Token::open(settings)).await??;
    let kept: Vec<KeyRecord> =
        records.into_iter().filter(|r| matches!(r.private(), Some(Private::Token { .. }))).collect();
    let count = kept.len();
    let custody = Custody::with(Keyring::generate(0), Some(token));
    for record in &kept {
        custody.signer(record).await?;
    }
    Ok(count)
}

/// A key just made or imported, its private half already in custody.
pub struct NewKey {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// Algorithm the key is for.
    pub algorithm: Algorithm,
    /// Public half.
    pub public: PublicKey,
    /// Where its private half is.
    pub private: Private,
}

/// The custodians a process works with: the keyring for sealed keys, and the PKCS#11
/// token when one is configured.
#[derive(Clone)]
pub struct Custody {
    /// Replaced whole when a re-seal changes the terms.
    keyring: Arc<RwLock<Arc<Keyring>>>,
    token: Option<Arc<Token>>,
}

impl Custody {
    fn with(keyring: Keyring, token: Option<Arc<Token>>) -> Self {
        Custody { keyring: Arc::new(RwLock::new(Arc::new(keyring))), token }
    }

    /// Custody by sealing under `keyring` only.
    pub fn sealed(keyring: Keyring) -> Self {
        Self::with(keyring, None)
    }

    /// Custody by `keyring`, and by the token `settings` describe (loaded, found and logged
    /// in now: a missing module, token or wrong PIN stops start-up with what to check).
    pub async fn open(keyring: Keyring, settings: Option<TokenSettings>) -> anyhow::Result<Self> {
        let token = match settings {
            Some(settings) => Some(tokio::task::spawn_blocking(move || Token::open(settings)).await??),
            None => None,
        };
        Ok(Self::with(keyring, token))
    }

    /// The keyring (it also seals shared secrets).
    pub fn keyring(&self) -> Arc<Keyring> {
        match self.keyring.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Takes the keyring as a re-seal changed it.
    pub fn replace_keyring(&self, keyring: Keyring) {
        let mut guard = match self.keyring.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(keyring);
    }

    fn token(&self, key_set: &str) -> anyhow::Result<Arc<Token>> {
        self.token.clone().ok_or_else(|| {
            anyhow!("key set {key_set} keeps its keys in a PKCS#11 token, but no [pkcs11] table is configured")
        })
    }

    /// Makes a key for `key_set` in its custody, off the async executor.
    pub async fn generate(
        &self,
        kind: CustodyKind,
        key_set: &str,
        algorithm: Algorithm,
        bits: u32,
    ) -> anyhow::Result<NewKey> {
        match kind {
            CustodyKind::Sealed => {
                let (keyring, key_set) = (self.keyring(), key_set.to_owned());
                tokio::task::spawn_blocking(move || sealed::generate(&keyring, &key_set, algorithm, bits))
                    .await
                    .context("key generation task")?
            }
            CustodyKind::Pkcs11 => {
                let token = self.token(key_set)?;
                let label = token.label().to_owned();
                let (kid, public) = tokio::task::spawn_blocking(move || token.generate(algorithm, bits))
                    .await
                    .context("key generation task")??;
                Ok(NewKey { kid, algorithm, public, private: Private::Token { token: label } })
            }
        }
    }

    /// Takes an imported key pair into custody for `key_set`.
    pub fn take(&self, kind: CustodyKind, key_set: &str, key: GeneratedKey) -> anyhow::Result<NewKey> {
        match kind {
            CustodyKind::Sealed => sealed::seal(&self.keyring(), key_set, key),
            CustodyKind::Pkcs11 => bail!(
                "key set {key_set} keeps its keys in a PKCS#11 token, and an imported key has existed outside \
                 it, so the token could not vouch that no copy remains: keyward does not import into it. \
                 Let the token generate the key (keyward keys rotate {key_set}), or import into a sealed key set"
            ),
        }
    }

    /// Loads a live key for signing (a token key: checks the token holds it).
    pub async fn signer(&self, record: &KeyRecord) -> anyhow::Result<SigningKey> {
        match record.private() {
            Some(Private::Token { token: label }) => {
                let token = self.token(&record.key_set)?;
                if token.label() != label {
                    bail!(
                        "key {} is held by PKCS#11 token {label:?}, but [pkcs11] token_label is {:?}",
                        record.kid,
                        token.label()
                    );
                }
                let (kid, algorithm) = (record.kid.clone(), record.algorithm);
                let key = tokio::task::spawn_blocking(move || token.key(&kid, algorithm))
                    .await
                    .context("key loading task")??;
                Ok(SigningKey::in_token(&record.kid, record.algorithm, key))
            }
            _ => sealed::open(record, &self.keyring()),
        }
    }

    /// Destroys the token objects of keys that were retired or revoked; sealed keys need
    /// nothing (their row lost the sealed blob in the same write). A failure is logged:
    /// the key no longer signs or verifies either way.
    pub async fn destroy(&self, kids: Vec<String>) {
        let Some(token) = self.token.clone() else { return };
        if kids.is_empty() {
            return;
        }
        let done = tokio::task::spawn_blocking(move || {
            for kid in &kids {
                match token.destroy(kid) {
                    Ok(objects) => tracing::info!(kid, objects, "destroyed the key's objects in the PKCS#11 token"),
                    Err(err) => tracing::error!(
                        kid,
                        error = %err,
                        "could not destroy the key in the PKCS#11 token: it no longer signs or verifies; \
                         delete the objects with this id by hand"
                    ),
                }
            }
        })
        .await;
        if done.is_err() {
            tracing::error!("the task destroying retired keys in the PKCS#11 token did not finish");
        }
    }

    /// Whether every private-key holder answers (a token that failed does not until it
    /// comes back).
    pub fn is_available(&self) -> bool {
        self.token.as_ref().is_none_or(|token| token.is_available())
    }

    /// Checks the token, or reconnects to one that failed (at most once a second).
    pub async fn probe(&self) {
        if let Some(token) = self.token.clone().filter(|token| token.probe_due()) {
            let _ = tokio::task::spawn_blocking(move || token.probe()).await;
        }
    }
}
