//! The gating partners of each key set, with their observed holdings: what the signer is
//! once the gates apply, for the snapshot, the scheduler and every operator action alike.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::keys::gate::{self, GateState, GatingPartner, Holding};
use crate::keys::KeyRecord;
use crate::store::Store;

/// The gates of every key set and what partners have been seen holding.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    partners: HashMap<String, Vec<GatingPartner>>,
    holdings: Arc<Vec<Holding>>,
}

impl Gates {
    /// The configuration's gates, with the holdings stored so far.
    pub async fn load(store: &Store, config: &Config) -> anyhow::Result<Gates> {
        let mut gates = Gates::configured(config);
        if !gates.partners.is_empty() {
            gates.holdings = Arc::new(store.partner_holdings().await.context("reading partner holdings")?);
        }
        Ok(gates)
    }

    /// The configuration's gates, with no holdings.
    pub fn configured(config: &Config) -> Gates {
        let mut partners: HashMap<String, Vec<GatingPartner>> = HashMap::new();
        for partner in config.partners.iter().filter(|p| p.gate_handover) {
            for set in &partner.key_sets {
                partners.entry(set.clone()).or_default().push(GatingPartner {
                    name: partner.name.clone(),
                    max_wait: partner.gate_max_wait.as_secs_i64(),
                    on_timeout: partner.on_gate_timeout,
                });
            }
        }
        Gates { partners, holdings: Arc::default() }
    }

    /// The keys of `set` as they are at `now` with its gate applied, and the gate's state.
    pub fn apply(&self, set: &str, keys: &[KeyRecord], now: i64) -> (Vec<KeyRecord>, Option<GateState>) {
        let partners = self.partners.get(set).map_or(&[][..], Vec::as_slice);
        let holdings: Vec<Holding> = self.holdings.iter().filter(|h| h.key_set == set).cloned().collect();
        gate::apply(keys, partners, &holdings, now)
    }

    /// Every holding.
    pub fn holdings(&self) -> &[Holding] {
        &self.holdings
    }
}
