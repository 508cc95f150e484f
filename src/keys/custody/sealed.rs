//! Sealed software keys: made by OpenSSL in the process, the private half sealed under the
//! master key (AES-256-GCM, bound to kid, key set and algorithm) and kept in the database.

use anyhow::{bail, Context};

use super::NewKey;
use crate::keys::{self, Algorithm, GeneratedKey, KeyRecord, Private, SigningKey};
use crate::master_key::Keyring;

/// What a sealed blob is bound to: opening it under another kid, set or algorithm fails.
fn context<'a>(kid: &'a str, key_set: &'a str, algorithm: Algorithm) -> [&'a str; 3] {
    [kid, key_set, algorithm.as_str()]
}

/// Generates a key pair for `key_set`. CPU-heavy for RSA: call it off the async executor.
pub(super) fn generate(keyring: &Keyring, key_set: &str, algorithm: Algorithm, bits: u32) -> anyhow::Result<NewKey> {
    seal(keyring, key_set, keys::generate(algorithm, bits)?)
}

/// Seals a generated or imported key pair for `key_set`.
pub(super) fn seal(keyring: &Keyring, key_set: &str, key: GeneratedKey) -> anyhow::Result<NewKey> {
    let (blob, master_key_id) = keyring.seal(&key.private_der, &context(&key.kid, key_set, key.algorithm))?;
    let private = Private::Sealed { blob, master_key_id };
    Ok(NewKey { kid: key.kid, algorithm: key.algorithm, public: key.public, private })
}

/// Unseals the private half of a live sealed key for signing.
pub fn open(record: &KeyRecord, keyring: &Keyring) -> anyhow::Result<SigningKey> {
    let Some((blob, sealed_by)) = record.sealed() else {
        bail!("key {} has no sealed private half (retired, revoked or held by a token)", record.kid);
    };
    let der = keyring
        .open(blob, &context(&record.kid, &record.key_set, record.algorithm), sealed_by)
        .with_context(|| format!("opening the private half of key {}", record.kid))?;
    SigningKey::from_der(&record.kid, record.algorithm, &der).with_context(|| format!("loading key {}", record.kid))
}
