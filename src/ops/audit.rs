//! Walking the audit trail's chains: `keyward audit verify`.

use std::collections::BTreeMap;

use crate::audit::chain::{self, Anchors, Link, Table};
use crate::store::Store;

/// What a walk of every chain found.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Events walked.
    pub events: usize,
    /// Their writers.
    pub event_writers: usize,
    /// Every problem, each chain's earliest first; empty when all is well.
    pub problems: Vec<String>,
}

/// The links of `rows` (in writer, seq order), by writer.
fn by_writer(rows: impl IntoIterator<Item = (String, Link)>) -> BTreeMap<String, Vec<Link>> {
    let mut chains: BTreeMap<String, Vec<Link>> = BTreeMap::new();
    for (writer, link) in rows {
        chains.entry(writer).or_default().push(link);
    }
    chains
}

/// Walks every chain in `store`, and checks the heads `checkpoint` holds (by table).
pub async fn verify(store: &Store, checkpoint: Option<&Heads>) -> anyhow::Result<Verification> {
    let events = store.event_chains().await?;
    let count = events.len();
    let chains = by_writer(events.into_iter().map(|(link, event)| (event.writer, link)));
    let mut problems = chain::walk(Table::Events, &chains, &Anchors::new());
    if let Some(heads) = checkpoint {
        problems.extend(chain::check_heads(Table::Events, &chains, &Anchors::new(), &heads.events));
    }
    Ok(Verification {
        events: count,
        event_writers: chains.len(),
        problems: problems.iter().map(ToString::to_string).collect(),
    })
}

/// Every writer's newest record (seq, hash) now: what a checkpoint holds.
pub async fn heads(store: &Store) -> anyhow::Result<Heads> {
    let mut heads = Heads::default();
    for (link, event) in store.event_chains().await? {
        heads.events.insert(event.writer, (link.seq, link.hash));
    }
    Ok(heads)
}

/// Each writer's head (seq, hash), per table, as a checkpoint holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heads {
    /// Of the events table.
    pub events: BTreeMap<String, (i64, String)>,
}
