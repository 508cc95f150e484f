//! Carrying out key changes: generating and sealing keys, deciding again under the
//! store's write lock.

use anyhow::anyhow;

use super::gates::Gates;
use super::ActionError;
use crate::config::{Config, KeySetConfig};
use crate::keys::custody::{Custody, HeldOutside};
use crate::keys::gate;
use crate::keys::rotation::{self, Refused, Step};
use crate::keys::KeyRecord;
use crate::store::rows::GatedHandover;
use crate::store::{events, KeyChange, Store};

/// Makes a key in the set's custody, with no lifecycle times yet.
async fn make_key(set: &KeySetConfig, custody: &Custody, now: i64) -> anyhow::Result<KeyRecord> {
    let key = custody.generate(set.custody, &set.name, set.algorithm, set.rsa_bits).await?;
    Ok(KeyRecord::new(&set.name, key, now))
}

/// Adds an existing private key (PEM) to `set` with the steps `decide` wants, given the
/// set's keys and the imported key (which it must place with a creating step). Returns the
/// new kid and the steps taken.
pub(crate) async fn carry_out_import<F>(
    store: &Store,
    custody: &Custody,
    config: &Config,
    set: &KeySetConfig,
    pem: &[u8],
    clock: &(dyn Fn() -> i64 + Sync),
    decide: F,
) -> Result<(String, Vec<Step>), ActionError>
where
    F: Fn(&[KeyRecord], &KeyRecord, i64) -> Result<Vec<Step>, Refused>,
{
    let imported = crate::keys::import_pem(set.algorithm, pem).map_err(anyhow::Error::from)?;
    // The scheduler replaces keys that do not fit the set's settings: refuse them here.
    if let Some(bits) = imported.public.rsa_bits().filter(|bits| *bits != set.rsa_bits) {
        return Err(ActionError::Failed(anyhow!(
            "key set {} makes {}-bit RSA keys and this key has {bits} bits: set rsa_bits = {bits} for the set to import it",
            set.name,
            set.rsa_bits
        )));
    }
    if store.key(&imported.kid).await?.is_some() {
        return Err(ActionError::Failed(anyhow!("key {} is already stored", imported.kid)));
    }
    let record = KeyRecord::new(&set.name, custody.take(set.custody, &set.name, imported)?, clock());
    let kid = record.kid.clone();
    let steps = carry_out_with(store, custody, config, set, clock, Some(record.clone()), |keys, now| {
        decide(keys, &record, now)
    })
    .await?;
    Ok((kid, steps))
}

/// Carries out what `decide` wants for one key set, atomically.
///
/// New keys are generated before the write transaction (key generation never holds the
/// lock); inside it, `decide` runs again on the keys as they are then and at the time
/// `clock` tells then (a pass held up by a lock or a slow database must not publish a key
/// with less notice than `publish_ahead`), and its steps are applied if they need the keys
/// made for the first decision. Another process that got there first therefore makes this
/// one retry (and usually find nothing left to do): two processes never both rotate.
/// Returns the steps applied (empty when nothing was due).
pub(crate) async fn carry_out<F>(
    store: &Store,
    custody: &Custody,
    config: &Config,
    set: &KeySetConfig,
    clock: &(dyn Fn() -> i64 + Sync),
    decide: F,
) -> Result<Vec<Step>, ActionError>
where
    F: Fn(&[KeyRecord], i64) -> Result<Vec<Step>, Refused>,
{
    carry_out_with(store, custody, config, set, clock, None, decide).await
}

/// The time decisions are made at, outside tests that simulate another moment.
pub(crate) fn wall_clock() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How many new keys `steps` need.
fn keys_needed(steps: &[Step]) -> usize {
    steps.iter().filter(|s| s.creates_key()).count()
}

/// The keys of `keys` whose private halves are held outside the database (token objects,
/// key services' keys), `revoked` saying whether each is to stop signing at once.
fn held_outside(keys: &[KeyRecord], revoked: impl Fn(&str) -> bool) -> Vec<HeldOutside> {
    keys.iter()
        .filter_map(|k| {
            let private = k.private().filter(|p| p.is_held_outside())?.clone();
            Some(HeldOutside { kid: k.kid.clone(), private, revoked: revoked(&k.kid) })
        })
        .collect()
}

/// [`carry_out`], with `supplied` (an imported key) used for the first key a step creates.
/// Decisions see the keys with the set's gate applied; a gated hand-over that has happened
/// is written with the change (lazily: writing it changes nothing about who signs).
async fn carry_out_with<F>(
    store: &Store,
    custody: &Custody,
    config: &Config,
    set: &KeySetConfig,
    clock: &(dyn Fn() -> i64 + Sync),
    supplied: Option<KeyRecord>,
    decide: F,
) -> Result<Vec<Step>, ActionError>
where
    F: Fn(&[KeyRecord], i64) -> Result<Vec<Step>, Refused>,
{
    let gates = Gates::load(store, config).await?;
    let imported = supplied.as_ref().map(|k| k.kid.clone());
    let publish_ahead = set.publish_ahead.as_secs_i64();
    for _ in 0..3 {
        let now = clock();
        let (keys, _) = gates.apply(&set.name, &store.keys_of_set(&set.name).await?, now);
        let steps = decide(&keys, now)?;
        if steps.is_empty() {
            return Ok(steps);
        }
        let mut fresh = Vec::new();
        for (i, _) in steps.iter().filter(|s| s.creates_key()).enumerate() {
            match (&supplied, i) {
                (Some(key), 0) => fresh.push(key.clone()),
                _ => match make_key(set, custody, now).await {
                    Ok(key) => fresh.push(key),
                    Err(err) => {
                        custody.destroy(held_outside(&fresh, |_| true)).await;
                        return Err(err.into());
                    }
                },
            }
        }
        let made = held_outside(&fresh, |_| true);
        let mut applied = Vec::new();
        let written = store
            .change_keys(&set.name, |stored| {
                // The time once the lock is held: the wait for it may have been long.
                let now = clock();
                let (keys, gate) = gates.apply(&set.name, stored, now);
                let steps = decide(&keys, now)?;
                if steps.is_empty() || keys_needed(&steps) != fresh.len() {
                    return Ok(KeyChange::Stale);
                }
                let mut changed = rotation::apply(&keys, &steps, fresh, now).map_err(anyhow::Error::from)?;
                let settled = gate.filter(|g| gate::settled(g, now));
                let handover = settled.as_ref().and_then(|g| GatedHandover::of(&set.name, g));
                if let Some(GatedHandover { kid, missing, confirmed: false, .. }) = &handover {
                    tracing::warn!(key_set = %set.name, kid = %kid, ?missing, "hand-over proceeded UNCONFIRMED: gate_max_wait passed before these partners fetched the key");
                }
                if settled.is_some() {
                    let moved = keys.iter().filter(|k| {
                        let before = stored.iter().find(|s| s.kid == k.kid);
                        before.is_some_and(|s| (s.activates_at, s.deactivates_at) != (k.activates_at, k.deactivates_at))
                    });
                    let unwritten: Vec<KeyRecord> =
                        moved.filter(|k| !changed.iter().any(|c| c.kid == k.kid)).cloned().collect();
                    changed.extend(unwritten);
                }
                let events = events::key_events(&keys, &changed, &steps, imported.as_deref(), publish_ahead);
                applied = steps;
                Ok::<_, ActionError>(KeyChange::Write(changed, handover, events))
            })
            .await
            .map_err(ActionError::from)
            .and_then(|refused| refused);
        match written {
            Ok(true) => {
                // After the commit: a token object destroyed first would leave a key that
                // signs with nothing if the write failed.
                let ended: Vec<KeyRecord> = keys
                    .into_iter()
                    .filter(|k| {
                        applied
                            .iter()
                            .any(|s| matches!(s, Step::Retire { kid } | Step::Revoke { kid } if *kid == k.kid))
                    })
                    .collect();
                let revoked = |kid: &str| applied.iter().any(|s| matches!(s, Step::Revoke { kid: k } if k == kid));
                custody.destroy(held_outside(&ended, revoked)).await;
                return Ok(applied);
            }
            // Keys made for a decision that was not written would stay in the token unused.
            Ok(false) => custody.destroy(made.clone()).await,
            Err(err) => {
                custody.destroy(made).await;
                return Err(err);
            }
        }
    }
    Err(ActionError::Failed(anyhow!(
        "key set {}: the keys kept changing under a concurrent writer; try again",
        set.name
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::keys::Algorithm;
    use crate::master_key::Keyring;

    #[tokio::test]
    async fn the_decision_made_again_under_the_lock_takes_the_time_read_once_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("keyward.db")).await.unwrap();
        let custody = Custody::sealed(Keyring::generate(0));
        let mut config = Config::default();
        config.key_sets[0].algorithm = Algorithm::Es256;
        let (set, policy) = (config.key_sets[0].clone(), config.policy(&config.key_sets[0]));
        // The first decision is made at 100; the lock is only had at 160 (a held-up pass).
        let reads = AtomicUsize::new(0);
        let clock = || if reads.fetch_add(1, Ordering::SeqCst) == 0 { 100 } else { 160 };
        let steps =
            carry_out(
                &store,
                &custody,
                &config,
                &set,
                &clock,
                |keys, now| Ok(rotation::plan(keys, &policy, now).steps),
            )
            .await
            .unwrap();
        let fresh_start = 160 + policy.publish_ahead.max(policy.rotate_every);
        assert_eq!(steps, [Step::CreateCurrent, Step::CreateNext { activates_at: fresh_start }]);
        let keys = store.keys_of_set(&set.name).await.unwrap();
        let next = keys.iter().find(|k| k.activates_at == Some(fresh_start));
        assert!(next.is_some_and(|k| k.published_at == Some(160)), "{keys:?}");
    }
}
