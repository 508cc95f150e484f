//! Shared secrets of HS256/HS512 profiles: sealed at rest, loaded for signing, never shown.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::keys::HmacAlgorithm;
use crate::keys::SecretKey;
use crate::master_key::Keyring;
use crate::store::rows::SecretRow;
use crate::store::Store;

/// Why a secret was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The profile does not exist or is not a shared-secret profile.
    #[error("profile {0:?} is not a shared-secret (HS256/HS512) profile in the configuration")]
    NotSecretProfile(String),
    /// Too short for the algorithm.
    #[error("the secret is {got} bytes; {algorithm} needs at least {min} (RFC 7518, section 3.2)")]
    TooShort {
        /// The profile's algorithm.
        algorithm: &'static str,
        /// Its minimum.
        min: usize,
        /// The length given.
        got: usize,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

pub(crate) fn context(profile: &str) -> [&str; 2] {
    ["profile-secret", profile]
}

fn algorithm_of(config: &Config, profile: &str) -> Option<HmacAlgorithm> {
    config.profiles.iter().find(|p| p.name == profile).and_then(|p| p.algorithm)
}

/// Seals and stores `secret` for `profile`, replacing any earlier one.
pub async fn set(
    store: &Store,
    keyring: &Keyring,
    config: &Config,
    profile: &str,
    secret: &[u8],
    now: i64,
) -> Result<(), SecretError> {
    let algorithm = algorithm_of(config, profile).ok_or_else(|| SecretError::NotSecretProfile(profile.to_owned()))?;
    if secret.len() < algorithm.min_secret_len() {
        return Err(SecretError::TooShort {
            algorithm: algorithm.as_str(),
            min: algorithm.min_secret_len(),
            got: secret.len(),
        });
    }
    let (sealed, master_key_id) = keyring.seal(secret, &context(profile)).context("sealing the secret")?;
    let row = SecretRow {
        profile: profile.to_owned(),
        sealed_secret: sealed,
        master_key_id,
        created_at: now,
        updated_at: now,
    };
    store.put_secret(&row).await?;
    Ok(())
}

/// A stored secret as listed: never its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    /// The profile.
    pub profile: String,
    /// When its secret was first set and last replaced (Unix seconds); `None` while no
    /// secret is set (the profile cannot sign until one is).
    pub set: Option<(i64, i64)>,
}

/// Every configured shared-secret profile, with its secret's dates or none yet, and the
/// stored secrets of profiles no longer configured, by profile name.
pub async fn list(store: &Store, config: &Config) -> anyhow::Result<Vec<SecretInfo>> {
    let rows = store.secrets().await?;
    let dates = |profile: &str| rows.iter().find(|r| r.profile == profile).map(|r| (r.created_at, r.updated_at));
    let configured = config.profiles.iter().filter(|p| p.algorithm.is_some());
    let mut listed: Vec<SecretInfo> =
        configured.map(|p| SecretInfo { profile: p.name.clone(), set: dates(&p.name) }).collect();
    for row in &rows {
        if !listed.iter().any(|s| s.profile == row.profile) {
            listed.push(SecretInfo { profile: row.profile.clone(), set: Some((row.created_at, row.updated_at)) });
        }
    }
    listed.sort_by(|a, b| a.profile.cmp(&b.profile));
    Ok(listed)
}

/// Opens the secret of every configured shared-secret profile that has one.
pub async fn load(
    store: &Store,
    keyring: &Keyring,
    config: &Config,
) -> anyhow::Result<HashMap<String, Arc<SecretKey>>> {
    let rows = store.secrets().await?;
    let mut loaded = HashMap::new();
    for SecretRow { profile, sealed_secret: sealed, master_key_id: sealed_by, .. } in rows {
        let Some(algorithm) = algorithm_of(config, &profile) else { continue };
        let secret = keyring
            .open(&sealed, &context(&profile), &sealed_by)
            .with_context(|| format!("opening the secret of {profile}"))?;
        let key = SecretKey::new(algorithm, &secret).with_context(|| format!("loading the secret of {profile}"))?;
        loaded.insert(profile, Arc::new(key));
    }
    Ok(loaded)
}
