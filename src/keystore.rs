//! Carrying out key changes: generating and sealing keys, deciding again under the
//! store's write lock.

use anyhow::{bail, Context};

use crate::config::KeySetConfig;
use crate::keys::rotation::{self, Step};
use crate::keys::{self, KeyRecord};
use crate::seal::MasterKey;
use crate::store::{KeyChange, Store};

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
    store: &Store,
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
    if store.key(&kid).await?.is_some() {
        bail!("key {kid} is already stored");
    }
    let steps = execute_with(store, master, set, now, Some(record.clone()), |keys| decide(keys, &record)).await?;
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

/// Carries out what `decide` wants for one key set at `now`, atomically.
///
/// New keys are generated before the write transaction (key generation never holds the
/// lock); inside it, `decide` runs again on the keys as they are then, and only if it still
/// wants the same steps are they applied. Another process that got there first therefore
/// makes this one retry (and usually find nothing left to do): two processes never both
/// rotate. Returns the steps applied (empty when nothing was due).
pub async fn execute<F>(
    store: &Store,
    master: &MasterKey,
    set: &KeySetConfig,
    now: i64,
    decide: F,
) -> anyhow::Result<Vec<Step>>
where
    F: Fn(&[KeyRecord]) -> anyhow::Result<Vec<Step>>,
{
    execute_with(store, master, set, now, None, decide).await
}

/// [`execute`], with `supplied` (an imported key) used for the first key a step creates.
async fn execute_with<F>(
    store: &Store,
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
                Ok(KeyChange::Write(rotation::apply(keys, &steps, fresh, now)?))
            })
            .await?;
        if written {
            return Ok(steps);
        }
    }
    bail!("key set {}: the keys kept changing under a concurrent writer; try again", set.name)
}
