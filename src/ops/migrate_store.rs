//! A one-way move of everything keyward keeps from one store to another (SQLite to
//! PostgreSQL, typically), verified by counting.

use std::collections::BTreeMap;
use std::convert::Infallible;

use anyhow::{bail, Context};

use crate::keys::KeyRecord;
use crate::store::copy::Counts;
use crate::store::{KeyChange, Store};

/// Ledger rows per copied transaction.
const LEDGER_PAGE: i64 = 5_000;

/// Copies the keyring, keys (still sealed), clients, secrets and the ledger from `from` into `to`,
/// which must be empty, then checks that both hold as many rows of each. Returns the counts.
pub async fn migrate_store(from: &Store, to: &Store) -> anyhow::Result<Counts> {
    let existing = to.counts().await.context("counting the target's rows")?;
    if existing != Counts::default() {
        bail!(
            "the target database is not empty ({}): migrate-store copies into an empty database only",
            describe(existing)
        );
    }
    let source = from.counts().await.context("counting the source's rows")?;
    // The keyring first: the copied keys and secrets are sealed under its terms.
    if let Some(keyring) = from.keyring().await? {
        if !to.create_keyring(&keyring).await? {
            bail!("the target database has a keyring of its own: migrate-store copies into an empty database only");
        }
    }

    let mut sets: BTreeMap<String, Vec<KeyRecord>> = BTreeMap::new();
    for key in from.keys().await? {
        sets.entry(key.key_set.clone()).or_default().push(key);
    }
    for (set, keys) in sets {
        to.change_keys(&set, |_| Ok::<_, Infallible>(KeyChange::Write(keys, None, Vec::new())))
            .await
            .with_context(|| format!("copying the keys of set {set}"))?
            .unwrap_or_else(|never| match never {});
    }
    for client in from.clients().await? {
        let name = client.name.clone();
        to.change_client(&name, |_| Ok::<_, Infallible>((client, ())))
            .await
            .with_context(|| format!("copying client {name}"))?
            .unwrap_or_else(|never| match never {});
    }
    for secret in from.secrets().await? {
        to.put_secret(&secret).await.with_context(|| format!("copying the secret of {}", secret.profile))?;
    }
    let mut after = None;
    loop {
        let page = from.issuance_after(after.take(), LEDGER_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.iat, last.jti.clone()));
        let rows: Vec<_> = page.iter().collect();
        to.copy_issuance(&rows).await?;
    }
    // The audit trail as it is, chains and all (the copy's own events, recorded as it
    // added the clients and secrets, are chains of their own writer).
    to.copy_events_from(from).await.context("copying the audit events")?;

    let (source_now, copied) = (from.counts().await?, to.counts().await?);
    if source_now != source {
        bail!(
            "the source changed while it was copied ({} before, {} after): stop every keyward using it, empty the \
             target and run migrate-store again",
            describe(source),
            describe(source_now)
        );
    }
    if copied != source {
        bail!("the copy does not match: the source holds {}, the target {}", describe(source), describe(copied));
    }
    Ok(copied)
}

/// `3 keys, 2 clients, 0 secrets, 1200 ledger rows`.
pub fn describe(counts: Counts) -> String {
    format!(
        "{} keys, {} clients, {} secrets, {} ledger rows",
        counts.keys, counts.clients, counts.secrets, counts.issuance
    )
}
