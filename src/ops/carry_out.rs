//! Carrying out key changes: generating and sealing keys, deciding again under the
//! store's write lock.

use anyhow::{anyhow, Context};

use super::ActionError;
use crate::config::KeySetConfig;
use crate::keys::rotation::{self, Refused, Step};
use crate::keys::{self, KeyRecord};
use crate::seal::MasterKey;
use crate::store::{KeyChange, Store};

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
pub(crate) async fn carry_out_import<F>(
    store: &Store,
    master: &MasterKey,
    set: &KeySetConfig,
    pem: &[u8],
    now: i64,
    decide: F,
) -> Result<(String, Vec<Step>), ActionError>
where
    F: Fn(&[KeyRecord], &KeyRecord) -> Result<Vec<Step>, Refused>,
{
    let imported = keys::import_pem(set.algorithm, pem).map_err(anyhow::Error::from)?;
    // The scheduler replaces keys that do not fit the set's settings: refuse them here.
    if let Some(bits) = imported.public.rsa_bits().filter(|bits| *bits != set.rsa_bits) {
        return Err(ActionError::Failed(anyhow!(
            "key set {} makes {}-bit RSA keys and this key has {bits} bits: set rsa_bits = {bits} for the set to import it",
            set.name,
            set.rsa_bits
        )));
    }
    let record = seal_record(set, master, imported, now)?;
    let kid = record.kid.clone();
    if store.key(&kid).await?.is_some() {
        return Err(ActionError::Failed(anyhow!("key {kid} is already stored")));
    }
    let steps = carry_out_with(store, master, set, now, Some(record.clone()), |keys| decide(keys, &record)).await?;
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
        activates_at: None,
        deactivates_at: None,
        retired_at: None,
        revoked_at: None,
    };
    record.sealed_private = Some(master.seal(&generated.private_der, &record.seal_context())?);
    Ok(record)
}

/// Carries out what `decide` wants for one key set at `now`, atomically.
///
/// New keys are generated before the write transaction (key generation never holds the
/// lock); inside it, `decide` runs again on the keys as they are then, and only if it still
/// wants the same steps are they applied. Another process that got there first therefore
/// makes this one retry (and usually find nothing left to do): two processes never both
/// rotate. Returns the steps applied (empty when nothing was due).
pub(crate) async fn carry_out<F>(
    store: &Store,
    master: &MasterKey,
    set: &KeySetConfig,
    now: i64,
    decide: F,
) -> Result<Vec<Step>, ActionError>
where
    F: Fn(&[KeyRecord]) -> Result<Vec<Step>, Refused>,
{
    carry_out_with(store, master, set, now, None, decide).await
}

/// [`carry_out`], with `supplied` (an imported key) used for the first key a step creates.
async fn carry_out_with<F>(
    store: &Store,
    master: &MasterKey,
    set: &KeySetConfig,
    now: i64,
    supplied: Option<KeyRecord>,
    decide: F,
) -> Result<Vec<Step>, ActionError>
where
    F: Fn(&[KeyRecord]) -> Result<Vec<Step>, Refused>,
{
    for _ in 0..3 {
        let steps = decide(&store.keys_of_set(&set.name).await?)?;
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
        let written = store
            .change_keys(&set.name, |keys| {
                if decide(keys)? != steps {
                    return Ok(KeyChange::Stale);
                }
                let changed = rotation::apply(keys, &steps, fresh, now).map_err(anyhow::Error::from)?;
                Ok::<_, ActionError>(KeyChange::Write(changed))
            })
            .await??;
        if written {
            return Ok(steps);
        }
    }
    Err(ActionError::Failed(anyhow!(
        "key set {}: the keys kept changing under a concurrent writer; try again",
        set.name
    )))
}
