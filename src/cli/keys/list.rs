//! `keyward keys list`: every key with its state and timestamps.

use super::super::context::Context;
use super::super::format::{now, time};
use crate::keys::{KeyRecord, KeyState, Private};
use crate::ops::gates::Gates;

#[derive(Debug, clap::Args)]
pub(in crate::cli) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A row of `keys list --json`: the stored record and the state derived from it.
#[derive(serde::Serialize)]
struct ListedKey<'a> {
    state: KeyState,
    #[serde(flatten)]
    record: &'a KeyRecord,
}

pub(super) async fn run(ctx: &Context, Args { json }: Args) -> anyhow::Result<()> {
    let store = ctx.store().await?;
    let now = now();
    // As every server sees them: with the partner gates applied.
    let gates = Gates::load(&store, ctx.config()).await?;
    let stored = store.keys().await?;
    let mut sets: Vec<&str> = stored.iter().map(|k| k.key_set.as_str()).collect();
    sets.sort_unstable();
    sets.dedup();
    let mut records = Vec::with_capacity(stored.len());
    for set in sets {
        let keys: Vec<KeyRecord> = stored.iter().filter(|k| k.key_set == set).cloned().collect();
        records.extend(gates.apply(set, &keys, now).0);
    }
    if json {
        let listed: Vec<ListedKey> =
            records.iter().map(|record| ListedKey { state: record.state_at(now), record }).collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<44} {:<6} {:<9} {:<14} {:<20} {:<20} {:<20}",
        "SET", "KID", "ALG", "STATE", "CUSTODY", "CREATED", "ACTIVATED", "DEACTIVATED"
    );
    for r in records {
        println!(
            "{:<12} {:<44} {:<6} {:<9} {:<14} {:<20} {:<20} {:<20}",
            r.key_set,
            r.kid,
            r.algorithm.as_str(),
            r.state_at(now).to_string(),
            custody(&r),
            time(Some(r.created_at)),
            time(r.activates_at.filter(|at| *at <= now)),
            time(r.deactivates_at.filter(|at| *at <= now).or(r.revoked_at())),
        );
    }
    Ok(())
}

/// Where the key's private half is: sealed in the database, in the PKCS#11 token (by its
/// label), or nowhere any more (retired or revoked: deleted).
fn custody(record: &KeyRecord) -> String {
    match record.private() {
        Some(Private::Sealed { .. }) => "sealed".to_owned(),
        Some(Private::Token { token }) => format!("pkcs11:{token}"),
        Some(remote @ (Private::VaultTransit { .. } | Private::AwsKms { .. })) => {
            remote.holder_label().unwrap_or_default()
        }
        None => "deleted".to_owned(),
    }
}
