//! Key custody: who holds the private halves and performs the private-key operations
//! (generate, sign, destroy). Sealed software keys are the default; the rest of keyward
//! sees only [`Custody`], the public half and a [`SigningKey`].

pub mod sealed;

use anyhow::Context;

use super::{Algorithm, GeneratedKey, KeyRecord, Private, PublicKey, SigningKey};
use crate::seal::MasterKey;

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

/// The custodians a process works with: the master key for sealed keys.
#[derive(Clone)]
pub struct Custody {
    master: MasterKey,
}

impl Custody {
    /// Custody by sealing under `master` only.
    pub fn sealed(master: MasterKey) -> Self {
        Custody { master }
    }

    /// The master key (it also seals shared secrets).
    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// Makes a key for `key_set`, off the async executor.
    pub async fn generate(&self, key_set: &str, algorithm: Algorithm, bits: u32) -> anyhow::Result<NewKey> {
        let (master, key_set) = (self.master.clone(), key_set.to_owned());
        tokio::task::spawn_blocking(move || sealed::generate(&master, &key_set, algorithm, bits))
            .await
            .context("key generation task")?
    }

    /// Takes an imported key pair into custody for `key_set`.
    pub async fn take(&self, key_set: &str, key: GeneratedKey) -> anyhow::Result<NewKey> {
        sealed::seal(&self.master, key_set, key)
    }

    /// Loads a live key for signing.
    pub async fn signer(&self, record: &KeyRecord) -> anyhow::Result<SigningKey> {
        sealed::open(record, &self.master)
    }
}
