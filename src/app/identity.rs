//! The configured identity providers' keys: each JWKS fetched over HTTPS (trusting the
//! provider's CA file) or read from a local file, cached, and fetched again when a token
//! names a key it does not hold (at most once per [`REFETCH_INTERVAL`]), when it is older
//! than [`MAX_AGE`], or (a file) when the file changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::app::metrics::Metrics;
use crate::config::IdentityProviderConfig;
use crate::policy::identity::{self, ProviderKeys, Refusal, Rules, Verified};

/// A token with a key id the cache does not hold fetches the JWKS again at most this often.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// A cached JWKS is fetched again on first use after this long (a key the provider
/// withdrew stops verifying).
const MAX_AGE: Duration = Duration::from_secs(300);

/// Why a workload identity token did not authenticate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The token itself is refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The provider's keys could not be had (never fetched, or the fetch failed).
    #[error("the identity provider's keys cannot be fetched now")]
    Unavailable,
}

/// Where a provider's JWKS comes from.
enum Source {
    Https { uri: String, http: reqwest::Client },
    File(PathBuf),
}

/// Keys as last loaded.
struct Loaded {
    keys: Arc<ProviderKeys>,
    at: Instant,
    /// The file's modification time when it was read.
    modified: Option<SystemTime>,
}

struct Provider {
    rules: Rules,
    source: Source,
    loaded: RwLock<Option<Loaded>>,
    /// Held while fetching (one fetch at a time); the last attempt's time.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

/// Every configured provider, by issuer.
pub struct IdentityProviders {
    providers: HashMap<String, Provider>,
    metrics: Metrics,
}

impl IdentityProviders {
    /// The providers of the configuration (their CA files read now).
    pub fn new(configs: &[IdentityProviderConfig], metrics: Metrics) -> anyhow::Result<Self> {
        let mut providers = HashMap::new();
        for config in configs {
            let source = match (&config.jwks_uri, &config.jwks_file) {
                (Some(uri), _) => Source::Https { uri: uri.clone(), http: https_client(config)? },
                (None, Some(file)) => Source::File(file.clone()),
                (None, None) => anyhow::bail!("[[identity_provider]] {:?} has no JWKS source", config.issuer),
            };
            let rules = Rules {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                algorithms: config.algorithms.clone(),
                max_age: config.max_token_age.as_secs_i64(),
                skew: config.clock_skew.as_secs_i64(),
            };
            let provider =
                Provider { rules, source, loaded: RwLock::new(None), fetching: tokio::sync::Mutex::new(None) };
            providers.insert(config.issuer.clone(), provider);
        }
        Ok(IdentityProviders { providers, metrics })
    }

    /// Whether any provider is configured.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Verifies a workload identity token at `now`; counts the outcome per issuer.
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Verified, IdentityError> {
        let peeked = match identity::peek(token) {
            Ok(peeked) => peeked,
            Err(refusal) => {
                self.metrics.identity_token("unknown", "refused");
                return Err(refusal.into());
            }
        };
        let Some(provider) = self.providers.get(&peeked.issuer) else {
            self.metrics.identity_token("unknown", "refused");
            return Err(Refusal::UnknownIssuer.into());
        };
        let result = provider.authenticate(token, &peeked, now).await;
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(IdentityError::Refused(_)) => "refused",
            Err(IdentityError::Unavailable) => "provider_unavailable",
        };
        self.metrics.identity_token(&provider.rules.issuer, outcome);
        result
    }
}

impl Provider {
    async fn authenticate(
        &self,
        token: &str,
        peeked: &identity::Unverified,
        now: i64,
    ) -> Result<Verified, IdentityError> {
        // The allow-list first: a refused algorithm never causes a fetch.
        if !self.rules.algorithms.contains(&peeked.alg) {
            return Err(Refusal::Algorithm(peeked.alg.clone()).into());
        }
        let mut keys = self.current_keys().await?;
        let knows_kid = |keys: &ProviderKeys| peeked.kid.as_deref().is_some_and(|kid| keys.has(kid, &peeked.alg));
        if !knows_kid(&keys) && peeked.kid.is_some() {
            // Perhaps the provider rotated: fetch again, at most once per interval.
            if let Some(fresh) = self.fetch().await {
                keys = fresh;
            }
        }
        identity::verify(token, peeked, &self.rules, &keys, now).map_err(IdentityError::from)
    }

    /// The cached keys; loaded first if there are none, stale, or the file changed.
    async fn current_keys(&self) -> Result<Arc<ProviderKeys>, IdentityError> {
        let cached = self.cached();
        let stale = match &cached {
            None => true,
            Some((_, at, modified)) => {
                at.elapsed() >= MAX_AGE || matches!(&self.source, Source::File(path) if modified_at(path) != *modified)
            }
        };
        if let (false, Some((keys, ..))) = (stale, &cached) {
            return Ok(Arc::clone(keys));
        }
        // Stale but held: used while a new load fails.
        match self.fetch().await {
            Some(keys) => Ok(keys),
            None => cached.map(|(keys, ..)| keys).ok_or(IdentityError::Unavailable),
        }
    }

    fn cached(&self) -> Option<(Arc<ProviderKeys>, Instant, Option<SystemTime>)> {
        let guard = match self.loaded.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.as_ref().map(|l| (Arc::clone(&l.keys), l.at, l.modified))
    }

    /// Loads the JWKS again (one load at a time), unless it was loaded or tried within
    /// [`REFETCH_INTERVAL`]: a provider that does not answer is not asked once per request.
    /// `None` when nothing new was loaded.
    async fn fetch(&self) -> Option<Arc<ProviderKeys>> {
        let mut last_attempt = self.fetching.lock().await;
        if let Some((keys, at, modified)) = self.cached() {
            // Another request loaded it while this one waited.
            let changed = matches!(&self.source, Source::File(path) if modified_at(path) != modified);
            if at.elapsed() < REFETCH_INTERVAL && !changed {
                return Some(keys);
            }
        }
        if last_attempt.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return None;
        }
        *last_attempt = Some(Instant::now());
        match self.load().await {
            Ok((keys, modified)) => {
                let keys = Arc::new(keys);
                let mut guard = match self.loaded.write() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = Some(Loaded { keys: Arc::clone(&keys), at: Instant::now(), modified });
                Some(keys)
            }
            Err(err) => {
                tracing::warn!(
                    issuer = %self.rules.issuer,
                    error = format!("{err:#}"),
                    "could not load the identity provider's JWKS: its tokens are refused until it loads"
                );
                None
            }
        }
    }

    async fn load(&self) -> anyhow::Result<(ProviderKeys, Option<SystemTime>)> {
        let (bytes, modified) = match &self.source {
            Source::Https { uri, http } => {
                let response = http.get(uri).send().await.with_context(|| format!("fetching {uri}"))?;
                let response = response.error_for_status().with_context(|| format!("fetching {uri}"))?;
                (response.bytes().await.with_context(|| format!("reading {uri}"))?.to_vec(), None)
            }
            Source::File(path) => {
                let modified = modified_at(path);
                let bytes = tokio::fs::read(path).await.with_context(|| format!("reading {}", path.display()))?;
                (bytes, modified)
            }
        };
        let keys = ProviderKeys::from_jwks(&bytes, &self.rules.algorithms).map_err(anyhow::Error::msg)?;
        if keys.is_empty() {
            anyhow::bail!("the JWKS holds no key with a kid for the allowed algorithms");
        }
        tracing::info!(issuer = %self.rules.issuer, keys = keys.len(), "identity provider JWKS loaded");
        Ok((keys, modified))
    }
}

fn modified_at(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// An HTTPS-only client that trusts the provider's CA file (or the system's roots).
fn https_client(config: &IdentityProviderConfig) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .https_only(true)
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(file) = &config.ca_file {
        let pem = std::fs::read(file).with_context(|| {
            format!("[[identity_provider]] {:?}, field ca_file: cannot read {}", config.issuer, file.display())
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!(
                "[[identity_provider]] {:?}, field ca_file: {} holds no PEM certificate",
                config.issuer,
                file.display()
            )
        })?;
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().context("building the identity provider's HTTPS client")
}
