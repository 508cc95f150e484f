//! JWKS fetches as partners make them: recorded in memory on the request path (a match and
//! a map update under a short lock) and written to the store in batches, where every
//! server reads what the others saw.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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

/// While writes fail, at most this many fetch rows wait in memory.
const MAX_KEPT_FETCH_ROWS: usize = 10_000;

struct Partner {
    name: String,
    matches: PartnerMatch,
    key_sets: Vec<String>,
}

/// One document version fetched by one partner from one address since the last flush.
struct Seen {
    key_set: String,
    etag: String,
    kids: Arc<[String]>,
    count: i64,
    first: i64,
    last: i64,
}

/// What was seen since the last flush. Keyed so that a repeated fetch allocates nothing:
/// a partner fetches from few addresses, each time one of one or two document versions.
#[derive(Default)]
struct Pending {
    /// (partner, address) -> the versions fetched.
    fetches: HashMap<(usize, IpAddr), Vec<Seen>>,
    /// user agent -> (count, last).
    unmatched: HashMap<String, (i64, i64)>,
    /// A batch whose write failed, written with the next one.
    failed: Option<Observations>,
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
    pub kids: &'a Arc<[String]>,
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
        let versions = pending.fetches.entry((partner, address)).or_default();
        match versions.iter_mut().find(|v| v.etag == fetched.etag && v.key_set == fetched.key_set) {
            Some(seen) => (seen.count, seen.last) = (seen.count + 1, now),
            None => versions.push(Seen {
                key_set: fetched.key_set.to_owned(),
                etag: fetched.etag.to_owned(),
                kids: Arc::clone(fetched.kids),
                count: 1,
                first: now,
                last: now,
            }),
        }
    }

    /// Takes what was recorded since the last call (with a batch that failed before).
    fn take(&self) -> Observations {
        let (fetched, unmatched, failed) = {
            let mut pending = self.pending();
            let taken = std::mem::take(&mut *pending);
            (taken.fetches, taken.unmatched, taken.failed)
        };
        let mut batch = failed.unwrap_or_default();
        let mut holdings: HashMap<(usize, &str, &str), (i64, i64)> = HashMap::new();
        for ((partner, address), versions) in &fetched {
            let name = self.partners.get(*partner).map(|p| p.name.clone()).unwrap_or_default();
            for seen in versions {
                batch.fetches.push(PartnerFetches {
                    partner: name.clone(),
                    key_set: seen.key_set.clone(),
                    address: address.to_string(),
                    etag: seen.etag.clone(),
                    count: seen.count,
                    first_at: seen.first,
                    last_at: seen.last,
                });
                for kid in seen.kids.iter() {
                    let held = holdings
                        .entry((*partner, seen.key_set.as_str(), kid.as_str()))
                        .or_insert((seen.first, seen.last));
                    (held.0, held.1) = (held.0.min(seen.first), held.1.max(seen.last));
                }
            }
        }
        batch.holdings.extend(holdings.into_iter().map(|((partner, key_set, kid), (first_seen, last_seen))| Holding {
            partner: self.partners.get(partner).map(|p| p.name.clone()).unwrap_or_default(),
            key_set: key_set.to_owned(),
            kid: kid.to_owned(),
            first_seen,
            last_seen,
        }));
        batch.unmatched.extend(unmatched.into_iter().map(|(user_agent, (count, last_at))| UnmatchedFetches {
            user_agent,
            count,
            last_at,
        }));
        batch
    }

    /// Writes what was recorded; on failure it is kept for the next attempt (the fetch
    /// rows of a long outage only up to a bound: the holdings, which gates read, always).
    pub async fn flush(&self, store: &Store) -> anyhow::Result<()> {
        let mut batch = self.take();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(err) = store.record_observations(&batch).await {
            batch.fetches.truncate(MAX_KEPT_FETCH_ROWS);
            self.pending().failed = Some(batch);
            return Err(err);
        }
        Ok(())
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
        let kids: Arc<[String]> = Arc::from(["a".to_owned(), "b".to_owned()]);
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
