//! Walking the audit trail's chains: `keyward audit verify`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::audit::chain::{self, Anchors, Link, Problem, Table, Withheld};
use crate::audit::Event;
use crate::store::Store;

/// What a walk of every chain found.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Events walked.
    pub events: usize,
    /// Their writers.
    pub event_writers: usize,
    /// Ledger rows walked.
    pub ledger_rows: usize,
    /// Their writers.
    pub ledger_writers: usize,
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
    let (mut anchors, mut withheld) = (Anchors::new(), Withheld::new());
    for (_, event) in &events {
        collect_ledger_marks(event, &mut anchors, &mut withheld);
    }
    let chains = by_writer(events.into_iter().map(|(link, event)| (event.writer, link)));
    let mut problems = chain::walk(Table::Events, &chains, &Anchors::new(), &Withheld::new());
    let ledger = store.ledger_chains().await?;
    problems.extend(ledger.unchained.iter().map(|(jti, iat)| Problem::Inserted {
        table: Table::Ledger,
        writer: "-".to_owned(),
        seq: None,
        label: format!("jti {jti} (iat {iat})"),
    }));
    problems.extend(chain::walk(Table::Ledger, &ledger.chains, &anchors, &withheld));
    if let Some(heads) = checkpoint {
        problems.extend(chain::check_heads(Table::Events, &chains, &Anchors::new(), &heads.events));
        problems.extend(chain::check_heads(Table::Ledger, &ledger.chains, &anchors, &heads.ledger));
    }
    Ok(Verification {
        events: count,
        event_writers: chains.len(),
        ledger_rows: ledger.rows,
        ledger_writers: ledger.chains.len(),
        problems: problems.iter().map(ToString::to_string).collect(),
    })
}

/// What the ledger's prunes and refused commits recorded: where each pruned chain starts
/// (the latest prune's place), and the rows chained but not written.
fn collect_ledger_marks(event: &Event, anchors: &mut Anchors, withheld: &mut Withheld) {
    let Some(after) = &event.after else { return };
    match event.action.as_str() {
        "ledger.pruned" => {
            let Some(first_kept) = after.get("first_kept").and_then(Value::as_object) else { return };
            for (writer, place) in first_kept {
                let (Some(seq), Some(prev)) =
                    (place.get(0).and_then(Value::as_i64), place.get(1).and_then(Value::as_str))
                else {
                    continue;
                };
                if anchors.get(writer).is_none_or(|(known, _)| *known < seq) {
                    anchors.insert(writer.clone(), (seq, prev.to_owned()));
                }
            }
        }
        "ledger.withheld" => {
            let Some(writer) = event.object.strip_prefix("ledger:") else { return };
            for row in after.get("withheld").and_then(Value::as_array).into_iter().flatten() {
                let seq = row.get("seq").and_then(Value::as_i64);
                let hash = row.get("hash").and_then(Value::as_str);
                let prev = row.get("prev_hash").and_then(Value::as_str);
                if let (Some(seq), Some(hash), Some(prev)) = (seq, hash, prev) {
                    withheld.entry(writer.to_owned()).or_default().insert(seq, (hash.to_owned(), prev.to_owned()));
                }
            }
        }
        _ => {}
    }
}

/// Every writer's newest record (seq, hash) now: what a checkpoint holds.
pub async fn heads(store: &Store) -> anyhow::Result<Heads> {
    let mut heads = Heads::default();
    for (link, event) in store.event_chains().await? {
        heads.events.insert(event.writer, (link.seq, link.hash));
    }
    for (writer, links) in store.ledger_chains().await?.chains {
        if let Some(last) = links.last() {
            heads.ledger.insert(writer, (last.seq, last.hash.clone()));
        }
    }
    Ok(heads)
}

/// Each writer's head (seq, hash), per table, as a checkpoint holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heads {
    /// Of the events table.
    pub events: BTreeMap<String, (i64, String)>,
    /// Of the issuance ledger.
    #[serde(default)]
    pub ledger: BTreeMap<String, (i64, String)>,
}
