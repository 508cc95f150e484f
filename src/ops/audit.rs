//! Walking the audit trail's chains: `keyward audit verify`.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::{json, Value};

use crate::audit::chain::{self, Anchors, Link, Problem, Table, Withheld};
use crate::audit::{Action, Event, NewEvent};
use crate::keys::SigningKey;
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
    let (events, ledger) = store.chain_heads().await?;
    let by_writer =
        |rows: Vec<(String, i64, String)>| rows.into_iter().map(|(w, seq, hash)| (w, (seq, hash))).collect();
    Ok(Heads { events: by_writer(events), ledger: by_writer(ledger) })
}

/// The issuer of checkpoint signatures.
const CHECKPOINT_ISSUER: &str = "keyward-audit";

/// A checkpoint of `store` at `now`: every chain's head and, with `signer`, a JWS over
/// them (claims `iss`, `iat`, `heads`) whose key is published in its key set's JWKS.
pub async fn checkpoint(store: &Store, signer: Option<&SigningKey>, now: i64) -> anyhow::Result<NewEvent> {
    let heads = heads(store).await?;
    let mut after = json!({ "heads": heads });
    if let Some(signer) = signer {
        let mut claims = serde_json::Map::new();
        claims.insert("iss".to_owned(), json!(CHECKPOINT_ISSUER));
        claims.insert("iat".to_owned(), json!(now));
        claims.insert("heads".to_owned(), serde_json::to_value(&heads)?);
        after["jws"] = json!(signer.sign(claims).context("signing the checkpoint")?);
        after["kid"] = json!(signer.kid());
    }
    Ok(NewEvent { action: Action::Checkpoint, object: "audit".to_owned(), before: None, after: Some(after) })
}

/// A checkpoint file's heads, as `audit verify --checkpoint` takes them.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The heads to check.
    pub heads: Heads,
    /// Who signed them: `(kid, key set, iat)`; `None` for unsigned heads.
    pub signed_by: Option<(String, String, i64)>,
}

/// The heads of a checkpoint file: an `audit.checkpoint` event (as `audit events --json`
/// or the log prints it, or just its `after`), or `audit heads`' output. A signed one's
/// heads are taken from its verified signature, by a key of `store` (any key set, any
/// state: a checkpoint outlives its key's time in the JWKS).
pub async fn read_checkpoint(store: &Store, value: &Value) -> anyhow::Result<Checkpoint> {
    let after = value.get("after").unwrap_or(value);
    let Some(jws) = after.get("jws").and_then(Value::as_str) else {
        let heads = after.get("heads").cloned().unwrap_or_else(|| after.clone());
        let heads = serde_json::from_value(heads).context("the file holds no chain heads")?;
        return Ok(Checkpoint { heads, signed_by: None });
    };
    let header: Value = jws
        .split('.')
        .next()
        .and_then(|h| base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, h).ok())
        .and_then(|h| serde_json::from_slice(&h).ok())
        .context("the checkpoint's signature has no readable header")?;
    let kid = header["kid"].as_str().context("the checkpoint's signature names no kid")?;
    let key = store
        .key(kid)
        .await?
        .with_context(|| format!("the checkpoint is signed by key {kid}, which this store does not hold"))?;
    let jwk = crate::keys::export::render(&key.kid, key.algorithm, &key.public, crate::keys::export::Format::Jwk)?;
    let jwk = josekit::jwk::Jwk::from_bytes(jwk.as_bytes()).context("reading the checkpoint key")?;
    let verifier = crate::policy::identity::verifier(&jwk, key.algorithm.as_str())
        .with_context(|| format!("key {kid} cannot verify {}", key.algorithm.as_str()))?;
    let (payload, _) = josekit::jws::deserialize_compact(jws, &*verifier)
        .map_err(|_| anyhow::anyhow!("the checkpoint's signature does not verify with key {kid}: it was altered"))?;
    let claims: Value = serde_json::from_slice(&payload).context("reading the checkpoint's claims")?;
    anyhow::ensure!(claims["iss"] == CHECKPOINT_ISSUER, "the signed payload is not a keyward checkpoint");
    let heads = serde_json::from_value(claims["heads"].clone()).context("the signed checkpoint holds no heads")?;
    let iat = claims["iat"].as_i64().unwrap_or_default();
    Ok(Checkpoint { heads, signed_by: Some((kid.to_owned(), key.key_set, iat)) })
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
