//! The keyring through the store: opening it with the configured master key (creating it
//! for a new database), rotating the master key, re-sealing, and the status report.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;

use crate::audit::{Action, NewEvent};
use crate::master_key::{Keyring, RootKey, Roots};
use crate::store::keyring::Resealed;
use crate::store::rows::{KeyringRow, SealedKind};
use crate::store::Store;

/// `reseal_state` of a keyring whose re-seal still has to clear the files.
const COMPACT: &str = "compact";

/// How many sealed values one re-seal transaction rewrites.
pub const RESEAL_BATCH: i64 = 100;

/// Opens the keyring of `store` with `roots`. A database without one gets one now: a
/// random term for a new database, or, for one whose rows were sealed directly under the
/// master key (before the keyring), that key as term 1.
pub async fn open(store: &Store, roots: &Roots, now: i64) -> anyhow::Result<Keyring> {
    for _ in 0..2 {
        match store.keyring().await? {
            Some(row) => {
                let keyring = unwrap(&row, roots).await?;
                let ids: Vec<String> = store.sealed_counts().await?.into_iter().map(|(id, _)| id).collect();
                keyring.check_ids(ids.iter().map(String::as_str))?;
                return Ok(keyring);
            }
            None if roots.current.is_in_memory() => {
                // Nothing is sealed (no master key was needed): the keyring lives as long as
                // the process; storing it would tie the database to a key no one holds.
                return first_keyring(store, roots, now).await;
            }
            None => {
                let keyring = first_keyring(store, roots, now).await?;
                let row = seal_row(&keyring, &roots.current, None, now, now).await?;
                if store.create_keyring(&row).await? {
                    tracing::info!(
                        master_key_id = roots.current.id(),
                        terms = keyring.ids(),
                        "created the keyring of this database"
                    );
                    return Ok(keyring);
                }
                // Another process created it first: open theirs.
            }
        }
    }
    bail!("the keyring record changed while it was being created; try again")
}

/// What [`open`] would open, writing nothing (for `check-config`): a database without a
/// keyring is checked as [`open`] would make it.
pub async fn check(store: &Store, roots: &Roots) -> anyhow::Result<Keyring> {
    match store.keyring().await? {
        Some(_) => open(store, roots, 0).await,
        None => first_keyring(store, roots, 0).await,
    }
}

/// The first keyring of a database that has none.
async fn first_keyring(store: &Store, roots: &Roots, now: i64) -> anyhow::Result<Keyring> {
    let counts = store.sealed_counts().await?;
    if counts.is_empty() {
        return Ok(Keyring::generate(now));
    }
    // Rows sealed before the keyring existed name the master key itself.
    let ids: Vec<&str> = counts.iter().map(|(id, _)| id.as_str()).collect();
    let Some(key) = roots.current.local_key().filter(|key| ids == [key.id()]) else {
        bail!(
            "the database holds keys sealed with master key {}, but the configured master key is {}: \
             start with the key this database was created with (its keyring is then made; moving to another \
             master key is a rotation afterwards) (nothing was changed)",
            ids.join(", "),
            roots.current.id()
        );
    };
    Ok(Keyring::adopt(key, now))
}

/// Opens the record with the root it names, or refuses naming the id it needs.
async fn unwrap(row: &KeyringRow, roots: &Roots) -> anyhow::Result<Keyring> {
    let Some(root) = roots.by_id(&row.root_key_id) else {
        bail!(
            "the keyring of this database is sealed with master key {} (source {}), but the configured master key \
             is {}: configure master key {} as [master_key] (or as [master_key.previous] during a rotation) \
             (nothing was changed)",
            row.root_key_id,
            row.root_source,
            roots.describe(),
            row.root_key_id
        );
    };
    let plaintext = root
        .unwrap(&row.sealed_terms, &row.term_ids)
        .await
        .with_context(|| format!("opening the keyring with master key {} ({})", root.id(), root.origin()))?;
    Keyring::from_plaintext(&plaintext, &row.term_ids)
}

async fn seal_row(
    keyring: &Keyring,
    root: &RootKey,
    reseal_state: Option<&str>,
    created_at: i64,
    rotated_at: i64,
) -> anyhow::Result<KeyringRow> {
    let ids = keyring.ids();
    let plaintext = keyring.to_plaintext()?;
    let sealed_terms = root.wrap(&plaintext, &ids).await.context("sealing the keyring with the master key")?;
    Ok(KeyringRow {
        root_key_id: root.id(),
        root_source: root.source().to_owned(),
        sealed_terms,
        term_ids: ids,
        reseal_state: reseal_state.map(str::to_owned),
        created_at,
        rotated_at,
    })
}

/// The keyring as the store has it now, if its terms differ from `held`'s (a re-seal
/// added or dropped one); `None` if they are the same.
pub async fn changed(store: &Store, roots: &Roots, held: &Keyring) -> anyhow::Result<Option<Keyring>> {
    match store.keyring().await? {
        Some(row) if row.term_ids != held.ids() => Ok(Some(unwrap(&row, roots).await?)),
        _ => Ok(None),
    }
}

/// What a rotation did.
#[derive(Debug, Serialize)]
pub struct Rotated {
    /// The master key that sealed the keyring before.
    pub from: String,
    /// The one that seals it now.
    pub to: String,
    /// `false` when it was sealed with `to` already (nothing written).
    pub changed: bool,
}

/// Seals the keyring under `roots.current`: afterwards nothing needs the previous master
/// key. Writes one record; idempotent.
pub async fn rotate(store: &Store, roots: &Roots, now: i64) -> anyhow::Result<Rotated> {
    let keyring = open(store, roots, now).await?;
    let row = store.keyring().await?.context("the keyring vanished")?;
    let to = roots.current.id();
    if row.root_key_id == to {
        return Ok(Rotated { from: row.root_key_id, to, changed: false });
    }
    let next = seal_row(&keyring, &roots.current, row.reseal_state.as_deref(), row.created_at, now).await?;
    let event = rotated_event(roots.by_id(&row.root_key_id), &row, &roots.current, now);
    if !store.replace_keyring(&next, (&row.root_key_id, &row.term_ids), None, &[event]).await? {
        bail!("the keyring changed while it was being rotated (a re-seal or another rotation): run it again");
    }
    tracing::info!(from = row.root_key_id, to, "the keyring is now sealed with the new master key");
    Ok(Rotated { from: row.root_key_id, to, changed: true })
}

/// The event of the keyring sealed under `to` instead of `from` (the root that opened
/// `before`): the sources and where they are, never a key, a wrapped key or a key's id
/// (after a re-seal nothing stored names older key material).
fn rotated_event(from: Option<&RootKey>, before: &KeyringRow, to: &RootKey, now: i64) -> NewEvent {
    NewEvent {
        action: Action::MasterKeyRotated,
        object: "keyring".to_owned(),
        before: Some(json!({
            "source": before.root_source,
            "origin": from.map(RootKey::origin),
            "rotated_at": before.rotated_at,
        })),
        after: Some(json!({ "source": to.source(), "origin": to.origin(), "rotated_at": now })),
    }
}

/// The event of a re-seal done: the term numbers before and after, how many values this
/// run rewrote and how many the remaining term seals (no term's id, see [`rotated_event`]).
fn resealed_event(before: &KeyringRow, after: &KeyringRow, rewritten: u64, sealed: i64) -> NewEvent {
    let numbers = |row: &KeyringRow| parse_ids(&row.term_ids).map(|(number, _, _)| number).collect::<Vec<u32>>();
    NewEvent {
        action: Action::MasterKeyResealed,
        object: "keyring".to_owned(),
        before: Some(json!({ "terms": numbers(before) })),
        after: Some(json!({ "terms": numbers(after), "rewritten": rewritten, "sealed": sealed })),
    }
}

/// What a re-seal did.
#[derive(Debug, Serialize)]
pub struct ResealReport {
    /// The term every sealed value is under now.
    pub term: u32,
    /// Values rewritten by this run.
    pub rewritten: u64,
}

/// Makes a fresh term and re-seals every sealed value under it, `RESEAL_BATCH` per
/// transaction, then drops the older terms and clears the files of their bytes. Resumes
/// where a run that was stopped left off; `settle` is how long running servers get to load
/// the new term before values move to it. `progress` is told the running total.
pub async fn reseal(
    store: &Store,
    roots: &Roots,
    now: i64,
    settle: Duration,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<ResealReport> {
    let mut keyring = open(store, roots, now).await?;
    let mut row = store.keyring().await?.context("the keyring vanished")?;
    if row.root_key_id != roots.current.id() {
        bail!(
            "the keyring is still sealed with master key {}: run `keyward master-key rotate` first, so that the \
             fresh key material is never sealed under it",
            row.root_key_id
        );
    }
    let mut rewritten = 0;
    if row.reseal_state.as_deref() != Some(COMPACT) {
        if keyring.old_ids().is_empty() {
            // A new start (a run that stopped after adding its term resumes with that term).
            let next = keyring.with_new_term(now);
            let next_row = seal_row(&next, &roots.current, None, row.created_at, row.rotated_at).await?;
            if !store.replace_keyring(&next_row, (&row.root_key_id, &row.term_ids), None, &[]).await? {
                bail!("the keyring changed while the re-seal began (another re-seal or a rotation): run it again");
            }
            tracing::info!(term = next.active().number, "added a fresh term to the keyring");
            (keyring, row) = (next, next_row);
            tokio::time::sleep(settle).await;
        }
        let active = keyring.active().key.id().to_owned();
        loop {
            let items = store.sealed_not_under(&active, RESEAL_BATCH).await?;
            if items.is_empty() {
                let done =
                    seal_row(&keyring.retire_old(), &roots.current, Some(COMPACT), row.created_at, row.rotated_at)
                        .await?;
                let sealed = store.sealed_counts().await?.iter().filter(|(id, _)| *id == active).map(|(_, n)| n).sum();
                let event = resealed_event(&row, &done, rewritten, sealed);
                if store.replace_keyring(&done, (&row.root_key_id, &row.term_ids), Some(&active), &[event]).await? {
                    row = done;
                    break;
                }
                // A value was written under an older term meanwhile: another pass.
                continue;
            }
            let mut batch = Vec::with_capacity(items.len());
            for item in items {
                let secret_context;
                let context: Vec<&str> = match item.kind {
                    SealedKind::Key => vec![&item.name, &item.key_set, &item.algorithm],
                    SealedKind::Secret => {
                        secret_context = super::secrets::context(&item.name);
                        secret_context.to_vec()
                    }
                };
                let plaintext = keyring
                    .open(&item.blob, &context, &item.sealed_by)
                    .with_context(|| format!("opening {:?} {}", item.kind, item.name))?;
                let (blob, sealed_by) = keyring.seal(&plaintext, &context)?;
                batch.push(Resealed { item, blob, sealed_by });
            }
            rewritten += store.write_resealed(&batch).await?;
            progress(rewritten);
        }
    }
    store.compact_sealed().await?;
    let cleared = KeyringRow { reseal_state: None, ..row.clone() };
    store.replace_keyring(&cleared, (&row.root_key_id, &row.term_ids), None, &[]).await?;
    store.compact_sealed().await?;
    tracing::info!(term = keyring.active().number, rewritten, "re-sealed every sealed value under a fresh term");
    Ok(ResealReport { term: keyring.active().number, rewritten })
}

/// One term as reported.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TermStatus {
    /// 1, 2, ...
    pub number: u32,
    /// The id sealed rows name.
    pub id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether it seals new values.
    pub active: bool,
    /// The master key of a database made before the keyring, taken over as a term.
    pub legacy: bool,
    /// Keys and secrets sealed under it.
    pub sealed: i64,
}

/// What `keyward master-key status` and `GET /v1/master-key` report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// The master key that seals the keyring.
    pub master_key_id: String,
    /// Its source: `env`, `file`, `pkcs11`, `transit`.
    pub source: String,
    /// When the keyring was made (Unix seconds).
    pub created_at: i64,
    /// When the master key last changed (Unix seconds; the creation if never).
    pub rotated_at: i64,
    /// The keyring's terms, oldest first.
    pub terms: Vec<TermStatus>,
    /// What still needs an older key, if anything (empty when nothing does).
    pub needs_old_key: Vec<String>,
}

/// The keyring's state, read without opening it (no master key needed), plus what the
/// configured keys change.
pub async fn status(store: &Store, keyring: Option<&Keyring>, roots: Option<&Roots>) -> anyhow::Result<Status> {
    let row = store
        .keyring()
        .await?
        .context("this database has no keyring yet (a server or command that opens it with the master key makes it)")?;
    let counts = store.sealed_counts().await?;
    let count_of = |id: &str| counts.iter().find(|(i, _)| i == id).map_or(0, |(_, n)| *n);
    let terms: Vec<TermStatus> = match keyring {
        Some(keyring) => keyring
            .terms()
            .map(|t| TermStatus {
                number: t.number,
                id: t.key.id().to_owned(),
                created_at: t.created_at,
                active: t.number == keyring.active().number,
                legacy: t.legacy,
                sealed: count_of(t.key.id()),
            })
            .collect(),
        None => parse_ids(&row.term_ids)
            .map(|(number, id, last)| TermStatus {
                number,
                id: id.to_owned(),
                created_at: 0,
                active: last,
                legacy: false,
                sealed: count_of(id),
            })
            .collect(),
    };
    let mut needs_old_key = Vec::new();
    if let Some(roots) = roots.filter(|r| r.current.id() != row.root_key_id) {
        needs_old_key.push(format!(
            "the keyring is sealed with master key {}, not the configured {}: run `keyward master-key rotate`",
            row.root_key_id,
            roots.current.id()
        ));
    }
    let older: Vec<&TermStatus> = terms.iter().filter(|t| !t.active && t.sealed > 0).collect();
    if !older.is_empty() {
        needs_old_key.push(format!(
            "{} values are still sealed under older terms: a re-seal is under way or was stopped (run `keyward \
             master-key reseal`)",
            older.iter().map(|t| t.sealed).sum::<i64>()
        ));
    }
    if terms.iter().any(|t| t.legacy) {
        needs_old_key.push(
            "term 1 is the master key this database was created with: whoever holds that key opens the values \
             under it until `keyward master-key reseal`"
                .to_owned(),
        );
    }
    if row.reseal_state.as_deref() == Some(COMPACT) {
        needs_old_key.push(
            "a re-seal has not yet cleared old bytes from the database files (run `keyward master-key reseal`)"
                .to_owned(),
        );
    }
    Ok(Status {
        master_key_id: row.root_key_id,
        source: row.root_source,
        created_at: row.created_at,
        rotated_at: row.rotated_at,
        terms,
        needs_old_key,
    })
}

/// `(number, id, is_last)` of each entry of a record's `term_ids`.
fn parse_ids(ids: &str) -> impl Iterator<Item = (u32, &str, bool)> {
    let count = ids.split(',').count();
    ids.split(',').enumerate().filter_map(move |(i, entry)| {
        let (number, id) = entry.split_once(':')?;
        Some((number.parse().ok()?, id, i + 1 == count))
    })
}
