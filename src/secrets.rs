//! Shared secrets of HS256/HS512 profiles: sealed at rest, loaded for signing, never shown.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use sqlx::{Row, SqlitePool};

use crate::config::Config;
use crate::keys::HmacAlgorithm;
use crate::keys::SecretKey;
use crate::seal::MasterKey;
use crate::store::sqlite;

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

fn context(profile: &str) -> [&str; 2] {
    ["profile-secret", profile]
}

fn algorithm_of(config: &Config, profile: &str) -> Option<HmacAlgorithm> {
    config.profiles.iter().find(|p| p.name == profile).and_then(|p| p.algorithm)
}

/// Seals and stores `secret` for `profile`, replacing any earlier one.
pub async fn set(
    pool: &SqlitePool,
    master: &MasterKey,
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
    let sealed = master.seal(secret, &context(profile)).context("sealing the secret")?;
    let mut tx = sqlite::begin_write(pool).await?;
    sqlx::query(
        "INSERT INTO secrets (profile, sealed_secret, master_key_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (profile) DO UPDATE SET sealed_secret = excluded.sealed_secret, \
         master_key_id = excluded.master_key_id, updated_at = excluded.updated_at",
    )
    .bind(profile)
    .bind(&sealed)
    .bind(master.id())
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await
    .context("storing the secret")?;
    sqlite::bump_generation(&mut tx).await?;
    tx.commit().await.context("committing the secret")?;
    // The replaced secret's sealed bytes must not linger in the log.
    sqlite::checkpoint(pool).await;
    Ok(())
}

/// A stored secret as listed: never its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    /// The profile.
    pub profile: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// Every stored secret's profile and dates.
pub async fn list(pool: &SqlitePool) -> anyhow::Result<Vec<SecretInfo>> {
    let rows = sqlx::query("SELECT profile, created_at, updated_at FROM secrets ORDER BY profile")
        .fetch_all(pool)
        .await
        .context("listing secrets")?;
    rows.iter()
        .map(|row| {
            Ok(SecretInfo {
                profile: row.try_get("profile")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}

/// Opens the secret of every configured shared-secret profile that has one.
pub async fn load(
    pool: &SqlitePool,
    master: &MasterKey,
    config: &Config,
) -> anyhow::Result<HashMap<String, Arc<SecretKey>>> {
    let rows = sqlx::query("SELECT profile, sealed_secret, master_key_id FROM secrets")
        .fetch_all(pool)
        .await
        .context("loading secrets")?;
    let mut loaded = HashMap::new();
    for row in &rows {
        let profile: String = row.try_get("profile")?;
        let Some(algorithm) = algorithm_of(config, &profile) else { continue };
        let sealed_by: String = row.try_get("master_key_id")?;
        anyhow::ensure!(
            sealed_by == master.id(),
            "the secret of profile {profile} was sealed with master key {sealed_by}, but the configured master key is {}",
            master.id()
        );
        let sealed: Vec<u8> = row.try_get("sealed_secret")?;
        let secret =
            master.open(&sealed, &context(&profile)).with_context(|| format!("opening the secret of {profile}"))?;
        let key = SecretKey::new(algorithm, &secret).with_context(|| format!("loading the secret of {profile}"))?;
        loaded.insert(profile, Arc::new(key));
    }
    Ok(loaded)
}
