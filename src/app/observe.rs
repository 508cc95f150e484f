//! JWKS fetches as partners make them: recorded in memory on the request path (a match and
//! a map update under a short lock) and written to the store in batches, where every
//! server reads what the others saw.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, PartnerMatch};
use crate::keys::gate::Holding;
use crate::store::rows::{Observations, PartnerFetches, UnmatchedFetches};
use crate::store::Store;

/// How often observations are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many distinct unmatched user agents per batch; further ones count as one.
const MAX_UNMATCHED_AGENTS: usize = 1_000;

/// User agents are kept to this many characters.
const MAX_AGENT_CHARS: usize = 200;

struct Partner {
    name: String,
    matches: PartnerMatch,
    key_sets: Vec<String>,
}

/// A partner (by index), key set, address and ETag.
type FetchKey = (usize, String, IpAddr, String);

/// What was seen since the last flush.
#[derive(Default)]
struct Pending {
    /// -> (count, first, last).
    fetches: HashMap<FetchKey, (i64, i64, i64)>,
    /// (partner, key set, kid) -> (first, last).
    holdings: HashMap<(usize, String, String), (i64, i64)>,
    /// user agent -> (count, last).
    unmatched: HashMap<String, (i64, i64)>,
}

/// The recorder of JWKS fetches.
pub struct Observer {
    partners: Vec<Partner>,
    pending: Mutex<Pending>,
}

/// A JWKS as served to one fetch: its set, its ETag and the kids it holds.
pub struct Fetched<'a> {
    /// The key set.
    pub key_set: &'a str,
    /// The ETag served or confirmed (a 304 counts: the client holds that version).
    pub etag: &'a str,
    /// The kids of that version.
    pub kids: &'a [String],
}

impl Observer {
    /// A recorder for the configuration's partners.
    pub fn new(config: &Config) -> Observer {
        let partners = config
            .partners
            .iter()
            .map(|p| Partner { name: p.name.clone(), matches: p.matches.clone(), key_sets: p.key_sets.clone() })
            .collect();
        Observer { partners, pending: Mutex::default() }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        match self.pending.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records one fetch from `address` with `user_agent` at `now`.
    pub fn observe(&self, address: IpAddr, user_agent: Option<&str>, fetched: &Fetched<'_>, now: i64) {
        let partner = self
            .partners
            .iter()
            .position(|p| p.key_sets.iter().any(|s| s == fetched.key_set) && p.matches.matches(address, user_agent));
        let mut pending = self.pending();
        let Some(partner) = partner else {
            let agent = user_agent.unwrap_or("-");
            let agent = match agent.char_indices().nth(MAX_AGENT_CHARS) {
                Some((cut, _)) => &agent[..cut],
                None => agent,
            };
            let full = pending.unmatched.len() >= MAX_UNMATCHED_AGENTS && !pending.unmatched.contains_key(agent);
            let agent = if full { "(other user agents)" } else { agent };
            match pending.unmatched.get_mut(agent) {
                Some((count, last)) => (*count, *last) = (*count + 1, now),
                None => {
                    pending.unmatched.insert(agent.to_owned(), (1, now));
                }
            }
            return;
        };
        let key = (partner, fetched.key_set.to_owned(), address, fetched.etag.to_owned());
        let entry = pending.fetches.entry(key).or_insert((0, now, now));
        (entry.0, entry.2) = (entry.0 + 1, now);
        for kid in fetched.kids {
            let entry =
                pending.holdings.entry((partner, fetched.key_set.to_owned(), kid.clone())).or_insert((now, now));
            entry.1 = now;
        }
    }

    /// Takes what was recorded since the last call.
    fn take(&self) -> Observations {
        let pending = std::mem::take(&mut *self.pending());
        let name = |i: usize| self.partners.get(i).map(|p| p.name.clone()).unwrap_or_default();
        let fetches = pending
            .fetches
            .into_iter()
            .map(|((partner, key_set, address, etag), (count, first_at, last_at))| PartnerFetches {
                partner: name(partner),
                key_set,
                address: address.to_string(),
                etag,
                count,
                first_at,
                last_at,
            })
            .collect();
        let holdings = pending
            .holdings
            .into_iter()
            .map(|((partner, key_set, kid), (first_seen, last_seen))| Holding {
                partner: name(partner),
                key_set,
                kid,
                first_seen,
                last_seen,
            })
            .collect();
        let unmatched = pending
            .unmatched
            .into_iter()
            .map(|(user_agent, (count, last_at))| UnmatchedFetches { user_agent, count, last_at })
            .collect();
        Observations { fetches, holdings, unmatched }
    }

    /// Writes what was recorded; on failure it is kept for the next attempt.
    pub async fn flush(&self, store: &Store) -> anyhow::Result<()> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(err) = store.record_observations(&batch).await {
            self.put_back(batch);
            return Err(err);
        }
        Ok(())
    }

    fn put_back(&self, batch: Observations) {
        let index = |name: &str| self.partners.iter().position(|p| p.name == name);
        let mut pending = self.pending();
        for f in batch.fetches {
            let (Some(partner), Ok(address)) = (index(&f.partner), f.address.parse()) else { continue };
            let entry =
                pending.fetches.entry((partner, f.key_set, address, f.etag)).or_insert((0, f.first_at, f.last_at));
            (entry.0, entry.1, entry.2) = (entry.0 + f.count, entry.1.min(f.first_at), entry.2.max(f.last_at));
        }
        for h in batch.holdings {
            let Some(partner) = index(&h.partner) else { continue };
            let entry = pending.holdings.entry((partner, h.key_set, h.kid)).or_insert((h.first_seen, h.last_seen));
            (entry.0, entry.1) = (entry.0.min(h.first_seen), entry.1.max(h.last_seen));
        }
        for u in batch.unmatched {
            let entry = pending.unmatched.entry(u.user_agent).or_insert((0, u.last_at));
            (entry.0, entry.1) = (entry.0 + u.count, entry.1.max(u.last_at));
        }
    }

    /// Writes observations every [`FLUSH_INTERVAL`] until `stop`, then once more.
    pub async fn flush_until_stopped(&self, store: &Store, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => false,
                changed = stop.changed() => changed.is_err() || *stop.borrow(),
            };
            if let Err(err) = self.flush(store).await {
                tracing::warn!(error = format!("{err:#}"), "recording partner fetches failed; kept for the next try");
            }
            if stopping {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer() -> Observer {
        let mut config = Config::default();
        let partner = "name = \"npm\"\nkey_sets = [\"npm\"]\nmatch = { cidrs = [\"127.0.0.2\"] }";
        config.partners.push(toml::from_str(partner).unwrap());
        Observer::new(&config)
    }

    #[test]
    fn matched_fetches_aggregate_and_unmatched_ones_count_per_user_agent() {
        let observer = observer();
        let kids = ["a".to_owned(), "b".to_owned()];
        let fetched = Fetched { key_set: "npm", etag: "\"e1\"", kids: &kids };
        for now in [10, 11, 12] {
            observer.observe("127.0.0.2".parse().unwrap(), Some("x"), &fetched, now);
        }
        observer.observe("127.0.0.3".parse().unwrap(), Some("curl/8"), &fetched, 13);
        observer.observe("127.0.0.3".parse().unwrap(), None, &fetched, 14);
        let batch = observer.take();
        assert_eq!(batch.fetches.len(), 1);
        assert_eq!((batch.fetches[0].count, batch.fetches[0].first_at, batch.fetches[0].last_at), (3, 10, 12));
        let mut held: Vec<(String, i64)> = batch.holdings.iter().map(|h| (h.kid.clone(), h.first_seen)).collect();
        held.sort();
        assert_eq!(held, [("a".to_owned(), 10), ("b".to_owned(), 10)]);
        let mut agents: Vec<(String, i64)> = batch.unmatched.iter().map(|u| (u.user_agent.clone(), u.count)).collect();
        agents.sort();
        assert_eq!(agents, [("-".to_owned(), 1), ("curl/8".to_owned(), 1)]);
        assert!(observer.take().is_empty(), "taken once");
    }
}
