//! Operations shared by the CLI and the admin API: key actions (rotate, revoke, import,
//! schedule), carried out through the store.

pub mod audit;
mod carry_out;
pub mod clients;
pub mod gates;
pub mod master_key;
pub mod migrate_store;
pub mod partners;
pub mod secrets;

use anyhow::Context;
use serde::Serialize;

use crate::config::{Config, KeySetConfig};
use crate::keys;
use crate::keys::custody::Custody;
use crate::keys::gate::GateState;
use crate::keys::rotation::{self, Exposure, ImportAs, Refused, Step};
use crate::keys::timeline::{self, Timeline};
use crate::store::Store;
pub(crate) use carry_out::carry_out;
use carry_out::carry_out_import;
pub(crate) use carry_out::wall_clock;
use gates::Gates;

/// Why an operator action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The configuration has no such key set.
    #[error("no key set is named {0:?}")]
    UnknownSet(String),
    /// The rules refuse it (too early, unknown or already revoked key).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Storage or key generation failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

fn key_set<'a>(config: &'a Config, name: &str) -> Result<&'a KeySetConfig, ActionError> {
    config.key_set(name).ok_or_else(|| ActionError::UnknownSet(name.to_owned()))
}

/// A planned rotation of `set` now; refused while the next key is too fresh unless `force`.
pub async fn rotate(
    store: &Store,
    custody: &Custody,
    config: &Config,
    set: &str,
    force: bool,
) -> Result<Vec<Step>, ActionError> {
    let set = key_set(config, set)?;
    let policy = config.policy(set);
    carry_out(store, custody, config, set, &wall_clock, |keys, now| rotation::rotate_now(keys, &policy, now, force))
        .await
}

/// What a key action did to one set.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The set.
    pub key_set: String,
    /// The steps taken.
    pub steps: Vec<Step>,
    /// When the action gave the set a new signing key: how long verifiers have had it.
    pub new_signer: Option<Exposure>,
    /// Then: the set's partners not yet seen fetching it (a gate does not hold an
    /// operator's action, so they may reject its tokens until they refetch).
    pub not_yet_fetched: Vec<partners::NotYetFetched>,
}

impl Outcome {
    /// The outcome of `steps`, just taken on set `set` at `now`.
    pub async fn of(
        store: &Store,
        config: &Config,
        set: &str,
        steps: Vec<Step>,
        now: i64,
    ) -> Result<Self, ActionError> {
        Ok(Self::after(store, config, key_set(config, set)?, steps, now).await?)
    }

    async fn after(
        store: &Store,
        config: &Config,
        set: &KeySetConfig,
        steps: Vec<Step>,
        now: i64,
    ) -> anyhow::Result<Self> {
        let changes_signer = steps.iter().any(|s| matches!(s, Step::Promote { .. } | Step::CreateCurrent));
        let new_signer = if changes_signer {
            let keys = store.keys_of_set(&set.name).await.context("reading keys")?;
            let (keys, _) = Gates::load(store, config).await?.apply(&set.name, &keys, now);
            let policy = config.policy(set);
            keys::signer_at(&keys, now).map(|k| rotation::exposure(k, &policy, now))
        } else {
            None
        };
        let not_yet_fetched = match &new_signer {
            Some(signer) => partners::not_yet_holding(store, config, &set.name, &signer.kid).await?,
            None => Vec::new(),
        };
        Ok(Outcome { key_set: set.name.clone(), steps, new_signer, not_yet_fetched })
    }
}

/// Emergency revocation of `kid`, in whichever configured set holds it. If it was signing,
/// the next key signs at once however recently it was published: the outcome says how long.
pub async fn revoke(store: &Store, custody: &Custody, config: &Config, kid: &str) -> Result<Outcome, ActionError> {
    let record = store.key(kid).await?.ok_or_else(|| Refused::UnknownKey(kid.to_owned()))?;
    let set = key_set(config, &record.key_set)?;
    let policy = config.policy(set);
    let steps =
        carry_out(store, custody, config, set, &wall_clock, |keys, now| rotation::revoke(keys, kid, &policy, now))
            .await?;
    // Seen at a time no earlier than the one the steps were decided at.
    Ok(Outcome::after(store, config, set, steps, wall_clock()).await?)
}

/// Adds an existing private key (PEM) to `set` as `how` says; returns its kid.
pub async fn import(
    store: &Store,
    custody: &Custody,
    config: &Config,
    set: &str,
    pem: &[u8],
    how: ImportAs,
) -> Result<(String, Outcome), ActionError> {
    let set = key_set(config, set)?;
    let policy = config.policy(set);
    let (kid, steps) = carry_out_import(store, custody, config, set, pem, &wall_clock, |keys, imported, now| {
        rotation::import(keys, imported, &policy, now, how)
    })
    .await?;
    Ok((kid, Outcome::after(store, config, set, steps, wall_clock()).await?))
}

/// One key set's rules and every key's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct SetSchedule {
    /// Set name.
    pub name: String,
    /// Seconds a key signs.
    pub rotate_every: i64,
    /// Seconds a key is published before signing.
    pub publish_ahead: i64,
    /// The set's `retain_after` (seconds): publication after the last token a key signed
    /// has expired.
    pub retain_after: i64,
    /// Seconds a key stays published after it stopped signing: the longest token lifetime
    /// of its profiles plus `retain_after`.
    pub published_after_signing: i64,
    /// Every key, oldest first.
    pub keys: Vec<Timeline>,
    /// Where the hand-over gate stands, when partners gate this set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateState>,
}

/// The timeline of every configured key set at `now`.
pub async fn schedule(store: &Store, config: &Config, now: i64) -> anyhow::Result<Vec<SetSchedule>> {
    let mut sets = Vec::with_capacity(config.key_sets.len());
    let gates = Gates::load(store, config).await?;
    for set in &config.key_sets {
        let policy = config.policy(set);
        let (keys, gate) = gates.apply(&set.name, &store.keys_of_set(&set.name).await.context("reading keys")?, now);
        sets.push(SetSchedule {
            name: set.name.clone(),
            rotate_every: policy.rotate_every,
            publish_ahead: policy.publish_ahead,
            retain_after: set.retain_after.as_secs_i64(),
            published_after_signing: policy.retain_for,
            keys: timeline::timeline(&keys, &policy, now),
            gate,
        });
    }
    Ok(sets)
}
