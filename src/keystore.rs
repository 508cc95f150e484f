//! Stored keys: records, their lifecycle state, and the SQL of the `keys` table.

use std::fmt;

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::{Row, SqlitePool};

use crate::config::KeySetConfig;
use crate::db;
use crate::keys::{self, Algorithm, PublicKey, SigningKey};
use crate::rotation::{self, Step};
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

    fn seal_context(&self) -> [&str; 3] {
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

const COLUMNS: &str = "kid, key_set, algorithm, public_jwk, sealed_private, master_key_id, created_at, \
     published_at, activated_at, deactivated_at, retired_at, revoked_at";

fn from_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<KeyRecord> {
    let kid: String = row.try_get("kid")?;
    let algorithm: String = row.try_get("algorithm")?;
    let public_jwk: String = row.try_get("public_jwk")?;
    Ok(KeyRecord {
        algorithm: Algorithm::parse(&algorithm)
            .with_context(|| format!("key {kid} has unknown algorithm {algorithm:?}"))?,
        public: serde_json::from_str(&public_jwk).with_context(|| format!("key {kid} has an unreadable public JWK"))?,
        key_set: row.try_get("key_set")?,
        sealed_private: row.try_get("sealed_private")?,
        master_key_id: row.try_get("master_key_id")?,
        created_at: row.try_get("created_at")?,
        published_at: row.try_get("published_at")?,
        activated_at: row.try_get("activated_at")?,
        deactivated_at: row.try_get("deactivated_at")?,
        retired_at: row.try_get("retired_at")?,
        revoked_at: row.try_get("revoked_at")?,
        kid,
    })
}

/// Every stored key, oldest first.
pub async fn list(pool: &SqlitePool) -> anyhow::Result<Vec<KeyRecord>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM keys ORDER BY created_at, rowid"))
        .fetch_all(pool)
        .await
        .context("listing keys")?;
    rows.iter().map(from_row).collect()
}

/// Whether any private key or secret is stored sealed (so a master key exists somewhere).
pub async fn holds_sealed_keys(pool: &SqlitePool) -> anyhow::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM keys WHERE sealed_private IS NOT NULL UNION ALL SELECT 1 FROM secrets LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .context("looking for sealed keys")?;
    Ok(found.is_some())
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

/// Generates a key off the async executor and seals it, with no lifecycle times yet.
async fn make_key(set: &KeySetConfig, master: &MasterKey, now: i64) -> anyhow::Result<KeyRecord> {
    let (algorithm, bits) = (set.algorithm, set.rsa_bits);
    let generated =
        tokio::task::spawn_blocking(move || keys::generate(algorithm, bits)).await.context("key generation task")??;
    seal_record(set, master, generated, now)
}

/// Adds an existing private key (PEM) to `set` with the steps `decide` wants, given the
/// set's keys and the sealed key (which it must place with a creating step). Returns the
/// new kid and the steps taken.
pub async fn import<F>(
    pool: &SqlitePool,
    master: &MasterKey,
    set: &KeySetConfig,
    pem: &[u8],
    now: i64,
    decide: F,
) -> anyhow::Result<(String, Vec<Step>)>
where
    F: Fn(&[KeyRecord], &KeyRecord) -> anyhow::Result<Vec<Step>>,
{
    let imported = keys::import_pem(set.algorithm, pem)?;
    // The scheduler replaces keys that do not fit the set's settings: refuse them here.
    if let Some(bits) = imported.public.rsa_bits().filter(|bits| *bits != set.rsa_bits) {
        bail!(
            "key set {} makes {}-bit RSA keys and this key has {bits} bits: set rsa_bits = {bits} for the set to import it",
            set.name,
            set.rsa_bits
        );
    }
    let record = seal_record(set, master, imported, now)?;
    let kid = record.kid.clone();
    let known: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM keys WHERE kid = ?").bind(&kid).fetch_optional(pool).await?;
    if known.is_some() {
        bail!("key {kid} is already stored");
    }
    let steps = execute_with(pool, master, set, now, Some(record.clone()), |keys| decide(keys, &record)).await?;
    Ok((kid, steps))
}

fn seal_record(
    set: &KeySetConfig,
    master: &MasterKey,
    generated: keys::GeneratedKey,
    now: i64,
) -> anyhow::Result<KeyRecord> {
    let algorithm = generated.algorithm;
    let mut record = KeyRecord {
        kid: generated.kid.clone(),
        key_set: set.name.clone(),
        algorithm,
        public: generated.public.clone(),
        sealed_private: None,
        master_key_id: Some(master.id().to_owned()),
        created_at: now,
        published_at: None,
        activated_at: None,
        deactivated_at: None,
        retired_at: None,
        revoked_at: None,
    };
    record.sealed_private = Some(master.seal(&generated.private_der, &record.seal_context())?);
    Ok(record)
}

/// The keys of one set, oldest first.
pub async fn list_set(executor: impl sqlx::SqliteExecutor<'_>, set: &str) -> anyhow::Result<Vec<KeyRecord>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM keys WHERE key_set = ? ORDER BY created_at, rowid"))
        .bind(set)
        .fetch_all(executor)
        .await
        .with_context(|| format!("listing the keys of set {set}"))?;
    rows.iter().map(from_row).collect()
}

/// Writes new and changed records; the one current key last, so that the old current key
/// has stopped signing before the new one starts (one current key per set, always).
async fn persist(tx: &mut sqlx::SqliteConnection, mut records: Vec<KeyRecord>) -> anyhow::Result<()> {
    records.sort_by_key(|r| r.state() == KeyState::Current);
    for record in &records {
        sqlx::query(&format!(
            "INSERT INTO keys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (kid) DO UPDATE SET sealed_private = excluded.sealed_private, \
             master_key_id = excluded.master_key_id, published_at = excluded.published_at, \
             activated_at = excluded.activated_at, deactivated_at = excluded.deactivated_at, \
             retired_at = excluded.retired_at, revoked_at = excluded.revoked_at"
        ))
        .bind(&record.kid)
        .bind(&record.key_set)
        .bind(record.algorithm.as_str())
        .bind(serde_json::to_string(&record.public)?)
        .bind(&record.sealed_private)
        .bind(&record.master_key_id)
        .bind(record.created_at)
        .bind(record.published_at)
        .bind(record.activated_at)
        .bind(record.deactivated_at)
        .bind(record.retired_at)
        .bind(record.revoked_at)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("storing key {}", record.kid))?;
    }
    Ok(())
}

/// Carries out what `decide` wants for one key set at `now`, atomically.
///
/// New keys are generated before the write transaction (key generation never holds the
/// lock); inside it, `decide` runs again on the keys as they are then, and only if it still
/// wants the same steps are they applied. Another process that got there first therefore
/// makes this one retry (and usually find nothing left to do): two processes never both
/// rotate. Returns the steps applied (empty when nothing was due).
pub async fn execute<F>(
    pool: &SqlitePool,
    master: &MasterKey,
    set: &KeySetConfig,
    now: i64,
    decide: F,
) -> anyhow::Result<Vec<Step>>
where
    F: Fn(&[KeyRecord]) -> anyhow::Result<Vec<Step>>,
{
    execute_with(pool, master, set, now, None, decide).await
}

/// [`execute`], with `supplied` (an imported key) used for the first key a step creates.
async fn execute_with<F>(
    pool: &SqlitePool,
    master: &MasterKey,
    set: &KeySetConfig,
    now: i64,
    supplied: Option<KeyRecord>,
    decide: F,
) -> anyhow::Result<Vec<Step>>
where
    F: Fn(&[KeyRecord]) -> anyhow::Result<Vec<Step>>,
{
    for _ in 0..3 {
        let steps = decide(&list_set(pool, &set.name).await?)?;
        if steps.is_empty() {
            return Ok(steps);
        }
        let mut fresh = Vec::new();
        for (i, _) in steps.iter().filter(|s| s.creates_key()).enumerate() {
            match (&supplied, i) {
                (Some(key), 0) => fresh.push(key.clone()),
                _ => fresh.push(make_key(set, master, now).await?),
            }
        }
        let mut tx = db::begin_write(pool).await?;
        let keys = list_set(&mut *tx, &set.name).await?;
        if decide(&keys)? != steps {
            continue;
        }
        let changed = rotation::apply(&keys, &steps, fresh, now)?;
        let deletes_secrets = steps.iter().any(|s| matches!(s, Step::Retire { .. } | Step::Revoke { .. }));
        persist(&mut tx, changed).await?;
        db::bump_generation(&mut tx).await?;
        tx.commit().await.context("committing key changes")?;
        if deletes_secrets {
            db::checkpoint(pool).await;
        }
        return Ok(steps);
    }
    bail!("key set {}: the keys kept changing under a concurrent writer; try again", set.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord {
            kid: "k".into(),
            key_set: "s".into(),
            algorithm: Algorithm::Es256,
            public: PublicKey::Ec { crv: "P-256".into(), x: "x".into(), y: "y".into() },
            sealed_private: Some(vec![1, 2, 3]),
            master_key_id: Some("m".into()),
            created_at: 10,
            published_at: Some(10),
            activated_at: None,
            deactivated_at: None,
            retired_at: None,
            revoked_at: None,
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
