//! What partners have been seen doing: shared by `keyward partners`, `GET /v1/partners`,
//! the metrics and the revoke outcome.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use super::gates::Gates;
use crate::config::Config;
use crate::keys::gate::{self, GateState};
use crate::store::rows::{GatedHandover, UnmatchedFetches};
use crate::store::Store;

/// Seconds in the window of "fetches in 24 h".
const DAY: i64 = 86_400;

/// Gated hand-overs a report lists.
const HANDOVERS_SHOWN: i64 = 20;

/// One partner's fetches and holdings.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerReport {
    /// Its name.
    pub name: String,
    /// Its latest fetch (Unix seconds).
    pub last_fetch: Option<i64>,
    /// Seconds since then.
    pub last_fetch_age: Option<i64>,
    /// `expect_fetch_every`, in seconds.
    pub expect_fetch_every: Option<i64>,
    /// Whether it has not fetched for longer than that (or never).
    pub overdue: bool,
    /// Fetches in the last 24 hours.
    pub fetches_24h: i64,
    /// Addresses it fetched from in the last 24 hours.
    pub addresses_24h: Vec<String>,
    /// Whether its holding gates hand-overs.
    pub gate_handover: bool,
    /// Per key set it fetches.
    pub key_sets: Vec<PartnerSet>,
}

/// A partner and one key set it fetches.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerSet {
    /// The set.
    pub key_set: String,
    /// The signing key.
    pub current: Option<String>,
    /// Whether the partner has fetched a JWKS holding it.
    pub holds_current: bool,
    /// The next key.
    pub next: Option<String>,
    /// Whether the partner has fetched a JWKS holding it.
    pub holds_next: bool,
    /// The set's hand-over gate, when partners gate it.
    pub gate: Option<GateState>,
}

/// Every partner, and the fetches that matched none.
#[derive(Debug, Clone, Serialize)]
pub struct PartnersReport {
    /// As configured.
    pub partners: Vec<PartnerReport>,
    /// By user agent, most first.
    pub unmatched: Vec<UnmatchedFetches>,
    /// The latest gated hand-overs, confirmed or not, newest first.
    pub handovers: Vec<GatedHandover>,
}

/// A set's signing key, next key and gate at the report's instant.
type SetSigners = (Option<String>, Option<String>, Option<GateState>);

/// The report at `now`.
pub async fn report(store: &Store, config: &Config, now: i64) -> anyhow::Result<PartnersReport> {
    let gates = Gates::load(store, config).await?;
    let holdings = if config.partners.is_empty() { Vec::new() } else { store.partner_holdings().await? };
    // Counted in the store, per partner and address: a day of fetches is a row per partner
    // and address here, not one per recorded fetch.
    let mut fetched: HashMap<String, (i64, BTreeSet<String>)> = HashMap::new();
    for (name, address, count) in store.partner_fetch_counts_since(now - DAY).await? {
        let (total, addresses) = fetched.entry(name).or_default();
        *total += count;
        addresses.insert(address);
    }
    let last: HashMap<String, i64> = store.partner_last_fetches().await?.into_iter().collect();
    let held: HashSet<(&str, &str, &str)> =
        holdings.iter().map(|h| (h.partner.as_str(), h.key_set.as_str(), h.kid.as_str())).collect();
    let mut partners = Vec::with_capacity(config.partners.len());
    let mut signers: HashMap<String, SetSigners> = HashMap::new();
    for partner in &config.partners {
        let holds = |set: &str, kid: &str| held.contains(&(partner.name.as_str(), set, kid));
        let mut key_sets = Vec::new();
        for set in &partner.key_sets {
            // Each set once, however many partners fetch it.
            let (current, next, gate_state) = match signers.get(set) {
                Some(known) => known.clone(),
                None => {
                    let (keys, gate_state) = gates.apply(set, &store.keys_of_set(set).await?, now);
                    let (current, next) = gate::signer_and_next(&keys, now);
                    let known = (current.map(|k| k.kid.clone()), next.map(|k| k.kid.clone()), gate_state);
                    signers.insert(set.clone(), known.clone());
                    known
                }
            };
            key_sets.push(PartnerSet {
                key_set: set.clone(),
                holds_current: current.as_deref().is_some_and(|kid| holds(set, kid)),
                holds_next: next.as_deref().is_some_and(|kid| holds(set, kid)),
                current,
                next,
                gate: gate_state,
            });
        }
        let (fetches_24h, addresses) = fetched.remove(&partner.name).unwrap_or_default();
        let last_fetch = last.get(&partner.name).copied();
        let expect = partner.expect_fetch_every.map(|d| d.as_secs_i64());
        partners.push(PartnerReport {
            name: partner.name.clone(),
            last_fetch,
            last_fetch_age: last_fetch.map(|at| (now - at).max(0)),
            expect_fetch_every: expect,
            overdue: expect.is_some_and(|every| last_fetch.is_none_or(|at| now - at > every)),
            fetches_24h,
            addresses_24h: addresses.into_iter().collect(),
            gate_handover: partner.gate_handover,
            key_sets,
        });
    }
    Ok(PartnersReport {
        partners,
        unmatched: store.unmatched_fetches().await?,
        handovers: store.gated_handovers(HANDOVERS_SHOWN).await?,
    })
}

/// A partner of a set that has not fetched a JWKS holding a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotYetFetched {
    /// The partner.
    pub partner: String,
    /// Its latest fetch (Unix seconds), if any.
    pub last_fetch: Option<i64>,
}

/// The partners of `set` that have not fetched a JWKS holding `kid`.
pub async fn not_yet_holding(
    store: &Store,
    config: &Config,
    set: &str,
    kid: &str,
) -> anyhow::Result<Vec<NotYetFetched>> {
    let mine: Vec<_> = config.partners.iter().filter(|p| p.key_sets.iter().any(|s| s == set)).collect();
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    let holdings = store.partner_holdings().await?;
    let last = store.partner_last_fetches().await?;
    Ok(mine
        .into_iter()
        .filter(|p| !holdings.iter().any(|h| h.partner == p.name && h.key_set == set && h.kid == kid))
        .map(|p| NotYetFetched {
            partner: p.name.clone(),
            last_fetch: last.iter().find(|(name, _)| *name == p.name).map(|(_, at)| *at),
        })
        .collect())
}
