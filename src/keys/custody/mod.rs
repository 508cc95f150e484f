//! Key custody: who holds the private halves and performs the private-key operations
//! (generate, sign, destroy). Each key set chooses sealed software keys (the default), a
//! PKCS#11 token, Vault's Transit engine or AWS KMS; the rest of keyward sees only
//! [`Custody`], the public half and a [`SigningKey`].

pub mod aws_kms;
pub mod pkcs11;
mod remote;
pub mod sealed;
pub mod vault_transit;

use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::{Algorithm, GeneratedKey, KeyRecord, Private, PublicKey, SigningKey};
use crate::master_key::Keyring;
use crate::vault::VaultSettings;
use aws_kms::{Kms, KmsSettings};
use pkcs11::{Token, TokenSettings};
pub use remote::{RemoteBounds, RemoteError};
pub(crate) use remote::{RemoteKey, Service};
use vault_transit::Transit;

/// Who holds a key set's private keys (`custody` in `[[key_set]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CustodyKind {
    /// Generated in the process, sealed under the master key, kept in the database.
    #[default]
    Sealed,
    /// Generated and used inside the `[pkcs11]` token; never leaves it.
    Pkcs11,
    /// A non-exportable key of the `[vault]` Transit engine.
    VaultTransit,
    /// A key of `[aws_kms]`.
    AwsKms,
}

impl CustodyKind {
    /// As written in `custody = "..."`.
    pub fn as_str(self) -> &'static str {
        match self {
            CustodyKind::Sealed => "sealed",
            CustodyKind::Pkcs11 => "pkcs11",
            CustodyKind::VaultTransit => "vault-transit",
            CustodyKind::AwsKms => "aws-kms",
        }
    }
}

/// The private-key holders to open, as configured, with their secrets resolved.
#[derive(Default)]
pub struct CustodySettings {
    /// `[pkcs11]`.
    pub token: Option<TokenSettings>,
    /// `[vault]`, its Transit mount and bounds, when a key set keeps its keys there.
    pub transit: Option<(VaultSettings, String, RemoteBounds)>,
    /// `[aws_kms]` and its bounds, when a key set keeps its keys there.
    pub kms: Option<(KmsSettings, RemoteBounds)>,
}

/// A key whose private half is outside the database, to destroy there.
#[derive(Debug, Clone)]
pub struct HeldOutside {
    /// Its kid.
    pub kid: String,
    /// Where it is.
    pub private: Private,
    /// Revoked (or never used): a key service disables it at once.
    pub revoked: bool,
}

/// Opens the token `settings` describe and checks that it holds every live key of
/// `records` kept there; returns how many (for `check-config`).
pub async fn check_token(settings: TokenSettings, records: Vec<KeyRecord>) -> anyhow::Result<usize> {
    let token = tokio::task::spawn_blocking(move || Token::open(settings)).await??;
    let kept: Vec<KeyRecord> =
        records.into_iter().filter(|r| matches!(r.private(), Some(Private::Token { .. }))).collect();
    let count = kept.len();
    let custody = Custody::with(Keyring::generate(0), Some(token), None, None);
    for record in &kept {
        custody.signer(record).await?;
    }
    Ok(count)
}

/// For `check-config`: the Vault token's policy, and that every live key kept in a key
/// service is there (its public half matching) and, in KMS, enabled. Returns how many are
/// kept in Vault and in KMS.
pub async fn check_key_services(custody: &Custody, records: &[KeyRecord]) -> anyhow::Result<(usize, usize)> {
    if let Some(transit) = custody.transit() {
        transit.check_permissions().await?;
    }
    let (mut in_vault, mut in_kms) = (0, 0);
    for record in records {
        match record.private() {
            Some(Private::VaultTransit { .. }) => {
                custody.signer(record).await?;
                in_vault += 1;
            }
            Some(Private::AwsKms { key_id }) => {
                custody.signer(record).await?;
                custody.aws_kms(&record.key_set)?.check_key(key_id).await?;
                in_kms += 1;
            }
            _ => {}
        }
    }
    Ok((in_vault, in_kms))
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
    transit: Option<Arc<Transit>>,
    kms: Option<Arc<Kms>>,
}

impl Custody {
    fn with(keyring: Keyring, token: Option<Arc<Token>>, transit: Option<Arc<Transit>>, kms: Option<Arc<Kms>>) -> Self {
        Custody { keyring: Arc::new(RwLock::new(Arc::new(keyring))), token, transit, kms }
    }

    /// Custody by sealing under `keyring` only.
    pub fn sealed(keyring: Keyring) -> Self {
        Self::with(keyring, None, None, None)
    }

    /// Custody by `keyring`, and by the token and key services `settings` describe (each
    /// reached and logged in to now: a missing module, token, wrong PIN, refused Vault
    /// token or missing AWS credentials stops start-up naming the holder and the cause).
    pub async fn open(keyring: Keyring, settings: CustodySettings) -> anyhow::Result<Self> {
        let token = match settings.token {
            Some(settings) => Some(tokio::task::spawn_blocking(move || Token::open(settings)).await??),
            None => None,
        };
        let transit = match settings.transit {
            Some((vault, mount, bounds)) => Some(Transit::open(vault, mount, bounds).await?),
            None => None,
        };
        let kms = match settings.kms {
            Some((kms, bounds)) => Some(Kms::open(kms, bounds).await?),
            None => None,
        };
        Ok(Self::with(keyring, token, transit, kms))
    }

    /// The Transit engine, for `check-config`.
    pub fn transit(&self) -> Option<&Transit> {
        self.transit.as_deref()
    }

    /// The KMS client, for `check-config`.
    pub fn kms(&self) -> Option<&Kms> {
        self.kms.as_deref()
    }

    fn vault_transit(&self, key_set: &str) -> anyhow::Result<Arc<Transit>> {
        self.transit.clone().ok_or_else(|| {
            anyhow!("key set {key_set} keeps its keys in Vault Transit, but no [vault] table is configured")
        })
    }

    fn aws_kms(&self, key_set: &str) -> anyhow::Result<Arc<Kms>> {
        self.kms
            .clone()
            .ok_or_else(|| anyhow!("key set {key_set} keeps its keys in AWS KMS, but no [aws_kms] table is configured"))
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
            CustodyKind::VaultTransit => {
                let (kid, public, key) = self.vault_transit(key_set)?.generate(key_set, algorithm, bits).await?;
                Ok(NewKey { kid, algorithm, public, private: Private::VaultTransit { key } })
            }
            CustodyKind::AwsKms => {
                let (kid, public, key_id) = self.aws_kms(key_set)?.generate(key_set, algorithm, bits).await?;
                Ok(NewKey { kid, algorithm, public, private: Private::AwsKms { key_id } })
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
            CustodyKind::VaultTransit | CustodyKind::AwsKms => bail!(
                "key set {key_set} keeps its keys in {}, and an imported key has existed outside it: keyward does \
                 not import into a key service. Let the service make the key (keyward keys rotate {key_set}), or \
                 import into a sealed key set",
                kind.as_str()
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
            Some(Private::VaultTransit { key }) => {
                let transit = self.vault_transit(&record.key_set)?;
                let public = transit.public(key, record.algorithm).await?;
                self.remote_signer(record, &public, Service::Vault(transit), key)
            }
            Some(Private::AwsKms { key_id }) => {
                let kms = self.aws_kms(&record.key_set)?;
                let public = kms.public(key_id, record.algorithm).await?;
                self.remote_signer(record, &public, Service::Kms(kms), key_id)
            }
            _ => sealed::open(record, &self.keyring()),
        }
    }

    /// A key service's key, once its public half was checked against the record's kid.
    fn remote_signer(
        &self,
        record: &KeyRecord,
        public: &PublicKey,
        service: Service,
        key: &str,
    ) -> anyhow::Result<SigningKey> {
        if public.thumbprint() != record.kid || *public != record.public {
            bail!(
                "key {} is held as {key:?}, but that key's public half has another thumbprint: it was replaced \
                 outside keyward; revoke the key (keyward keys revoke {})",
                record.kid,
                record.kid
            );
        }
        let remote = RemoteKey::new(service, key.to_owned(), record.algorithm, &record.key_set);
        Ok(SigningKey::remote(&record.kid, record.algorithm, remote))
    }

    /// Destroys the private halves of keys that were retired or revoked (or made and not
    /// used) where they are held: token objects, Transit keys (deleted), KMS keys
    /// (scheduled for deletion, and disabled at once when revoked). Sealed keys need
    /// nothing (their row lost the sealed blob in the same write). A failure is logged:
    /// the key no longer signs or verifies either way.
    pub async fn destroy(&self, held: Vec<HeldOutside>) {
        let mut kids = Vec::new();
        for key in held {
            match &key.private {
                Private::Token { .. } => kids.push(key.kid),
                Private::VaultTransit { key: name } => match self.vault_transit("") {
                    Ok(transit) => match transit.destroy(name).await {
                        Ok(()) => tracing::info!(kid = key.kid, name, "deleted the key in Vault Transit"),
                        Err(err) => tracing::error!(
                            kid = key.kid,
                            name,
                            error = %err,
                            "could not delete the key in Vault Transit: it no longer signs or verifies; delete it by hand"
                        ),
                    },
                    Err(err) => tracing::error!(kid = key.kid, error = %err, "cannot delete the key in Vault Transit"),
                },
                Private::AwsKms { key_id } => match self.aws_kms("") {
                    Ok(kms) => match kms.destroy(key_id, key.revoked).await {
                        Ok(()) => tracing::info!(
                            kid = key.kid,
                            key_id,
                            disabled = key.revoked,
                            days = aws_kms::DELETION_WINDOW_DAYS,
                            "scheduled the key's deletion in AWS KMS"
                        ),
                        Err(err) => tracing::error!(
                            kid = key.kid,
                            key_id,
                            error = %format!("{err:#}"),
                            "could not schedule the key's deletion in AWS KMS: it no longer signs or verifies; \
                             disable and delete it by hand"
                        ),
                    },
                    Err(err) => tracing::error!(kid = key.kid, error = %err, "cannot delete the key in AWS KMS"),
                },
                Private::Sealed { .. } => {}
            }
        }
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

    /// Whether every private-key holder answers (a token or key service that failed does
    /// not until it comes back).
    pub fn is_available(&self) -> bool {
        self.unavailable().is_none()
    }

    /// The first private-key holder that does not answer, if any.
    pub fn unavailable(&self) -> Option<&'static str> {
        if self.token.as_ref().is_some_and(|token| !token.is_available()) {
            Some("the PKCS#11 token does not answer")
        } else if self.transit.as_ref().is_some_and(|transit| !transit.is_available()) {
            Some("Vault Transit, which holds signing keys, does not answer")
        } else if self.kms.as_ref().is_some_and(|kms| !kms.is_available()) {
            Some("AWS KMS, which holds signing keys, does not answer")
        } else {
            None
        }
    }

    /// Checks the token and key services, or reconnects to a token that failed (each at
    /// most once a second); renews the Vault token when due.
    pub async fn probe(&self) {
        if let Some(token) = self.token.clone().filter(|token| token.probe_due()) {
            let _ = tokio::task::spawn_blocking(move || token.probe()).await;
        }
        if let Some(transit) = &self.transit {
            transit.probe().await;
        }
        if let Some(kms) = &self.kms {
            kms.probe().await;
        }
    }
}
