//! Prometheus metrics, served as text at `GET /metrics` on the internal listener.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuedLabels {
    profile: String,
    alg: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JwksLabels {
    path: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SetLabels {
    key_set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerLabels {
    partner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerSetLabels {
    partner: String,
    key_set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    issuer: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerStatusLabels {
    listener: &'static str,
    status: u16,
}

struct Inner {
    registry: Registry,
    issued: Family<IssuedLabels, Counter>,
    sign_seconds: Histogram,
    jwks: Family<JwksLabels, Counter>,
    key_age: Family<SetLabels, Gauge>,
    next_rotation: Family<SetLabels, Gauge>,
    rotation_period: Family<SetLabels, Gauge>,
    next_key: Family<SetLabels, Gauge>,
    ready: Gauge,
    requests: Family<ListenerLabels, Counter>,
    server_errors: Family<ListenerStatusLabels, Counter>,
    rotation_failures: Counter,
    ledger_batch_rows: Histogram,
    ledger_commit_seconds: Histogram,
    ledger_failures: Counter,
    rate_limited: Family<ClientLabels, Counter>,
    shed: Counter,
    certificate_expiry: Family<ListenerLabels, Gauge>,
    partner_last_fetch: Family<PartnerLabels, Gauge>,
    partner_fetch_every: Family<PartnerLabels, Gauge>,
    partner_holds_next: Family<PartnerSetLabels, Gauge>,
    gate_held: Family<SetLabels, Gauge>,
    identity_tokens: Family<IdentityLabels, Counter>,
    master_key_age: Gauge,
}

/// The process's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyward");
        let issued = Family::<IssuedLabels, Counter>::default();
        registry.register("tokens_issued", "Tokens requested, by profile, algorithm and outcome", issued.clone());
        let sign_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register("sign_duration_seconds", "Time to sign a token (claims, signature)", sign_seconds.clone());
        let jwks = Family::<JwksLabels, Counter>::default();
        registry.register("jwks_requests", "JWKS requests by path and status (200 or 304)", jwks.clone());
        let key_age = Family::<SetLabels, Gauge>::default();
        registry.register("signing_key_age_seconds", "Seconds since the signing key started signing", key_age.clone());
        let next_rotation = Family::<SetLabels, Gauge>::default();
        registry.register(
            "next_rotation_seconds",
            "Seconds until the next planned rotation (0 once due, and while a gate holds it past its planned instant)",
            next_rotation.clone(),
        );
        let rotation_period = Family::<SetLabels, Gauge>::default();
        registry.register(
            "rotation_period_seconds",
            "The key set's rotate_every: how long a key is planned to sign",
            rotation_period.clone(),
        );
        let next_key = Family::<SetLabels, Gauge>::default();
        registry.register("next_key_published", "1 while the key set publishes a next key", next_key.clone());
        let ready = Gauge::default();
        registry.register("ready", "1 while /readyz answers ready, 0 while it does not", ready.clone());
        let requests = Family::<ListenerLabels, Counter>::default();
        registry.register("http_requests", "Requests answered, by listener", requests.clone());
        let server_errors = Family::<ListenerStatusLabels, Counter>::default();
        registry.register(
            "http_server_errors",
            "Requests answered with a 5xx status, by listener and status",
            server_errors.clone(),
        );
        let rotation_failures = Counter::default();
        registry.register("rotation_failures", "Scheduler passes that failed for a key set", rotation_failures.clone());
        let ledger_batch_rows = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register("ledger_batch_rows", "Rows per ledger transaction", ledger_batch_rows.clone());
        let ledger_commit_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register("ledger_commit_seconds", "Time to commit one ledger batch", ledger_commit_seconds.clone());
        let ledger_failures = Counter::default();
        registry.register("ledger_failures", "Ledger batches that failed to commit", ledger_failures.clone());
        let rate_limited = Family::<ClientLabels, Counter>::default();
        registry.register(
            "rate_limited_requests",
            "Requests refused by the per-client rate limit",
            rate_limited.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "shed_requests",
            "Sign and token requests refused at once because max_signing_requests were being served",
            shed.clone(),
        );
        let certificate_expiry = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate a TLS listener serves expires (Unix seconds)",
            certificate_expiry.clone(),
        );
        let partner_last_fetch = Family::<PartnerLabels, Gauge>::default();
        registry.register(
            "partner_last_fetch_timestamp_seconds",
            "When the partner last fetched a JWKS (Unix seconds; 0: never)",
            partner_last_fetch.clone(),
        );
        let partner_fetch_every = Family::<PartnerLabels, Gauge>::default();
        registry.register(
            "partner_expected_fetch_interval_seconds",
            "The partner's expect_fetch_every (0: not set)",
            partner_fetch_every.clone(),
        );
        let partner_holds_next = Family::<PartnerSetLabels, Gauge>::default();
        registry.register(
            "partner_holds_next_key",
            "1 when the partner has fetched a JWKS holding the set's next key",
            partner_holds_next.clone(),
        );
        let gate_held = Family::<SetLabels, Gauge>::default();
        registry.register(
            "handover_gate_held",
            "1 while a gate keeps the current key signing past the planned hand-over",
            gate_held.clone(),
        );
        let identity_tokens = Family::<IdentityLabels, Counter>::default();
        registry.register(
            "identity_tokens",
            "Workload identity tokens presented, by issuer (\"unknown\" for any other) and outcome: accepted, \
             refused, or provider_unavailable (its JWKS could not be fetched)",
            identity_tokens.clone(),
        );
        let master_key_age = Gauge::default();
        registry.register(
            "master_key_age_seconds",
            "Seconds since the master key that seals the keyring was set (its rotation, or the keyring's creation)",
            master_key_age.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            issued,
            sign_seconds,
            jwks,
            key_age,
            next_rotation,
            rotation_period,
            next_key,
            ready,
            requests,
            server_errors,
            rotation_failures,
            ledger_batch_rows,
            ledger_commit_seconds,
            ledger_failures,
            rate_limited,
            shed,
            certificate_expiry,
            partner_last_fetch,
            partner_fetch_every,
            partner_holds_next,
            gate_held,
            identity_tokens,
            master_key_age,
        }))
    }
}

impl Metrics {
    /// A token request's outcome: `issued`, `refused` or `failed`.
    pub fn token(&self, profile: &str, alg: &str, outcome: &'static str) {
        let labels = IssuedLabels { profile: profile.to_owned(), alg: alg.to_owned(), outcome };
        self.0.issued.get_or_create(&labels).inc();
    }

    /// Time spent signing one token.
    pub fn signed_in(&self, elapsed: Duration) {
        self.0.sign_seconds.observe(elapsed.as_secs_f64());
    }

    /// The counter of JWKS answers with `status` at `path` (taken once per path, then
    /// incremented per request).
    pub fn jwks(&self, path: &str, status: u16) -> Counter {
        self.0.jwks.get_or_create(&JwksLabels { path: path.to_owned(), status }).clone()
    }

    /// A key set as served now.
    pub fn key_set(&self, key_set: &str, state: KeySetGauges) {
        let labels = SetLabels { key_set: key_set.to_owned() };
        self.0.key_age.get_or_create(&labels).set(state.age);
        self.0.next_rotation.get_or_create(&labels).set(state.until_rotation);
        self.0.rotation_period.get_or_create(&labels).set(state.rotation_period);
        self.0.next_key.get_or_create(&labels).set(i64::from(state.next_key_published));
    }

    /// Whether the server is ready, as `/readyz` would answer now.
    pub fn ready(&self, ready: bool) {
        self.0.ready.set(i64::from(ready));
    }

    /// The request counters of one listener, taken once at start-up.
    pub fn listener(&self, listener: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            listener,
            requests: self.0.requests.get_or_create(&ListenerLabels { listener }).clone(),
            server_errors: self.0.server_errors.clone(),
        }
    }

    /// A partner's latest fetch, its `expect_fetch_every` and, per key set, whether it
    /// holds the next key.
    pub fn partner(
        &self,
        partner: &str,
        last_fetch: Option<i64>,
        expect_fetch_every: Option<i64>,
        holds_next: &[(&str, bool)],
    ) {
        let labels = PartnerLabels { partner: partner.to_owned() };
        self.0.partner_last_fetch.get_or_create(&labels).set(last_fetch.unwrap_or(0));
        self.0.partner_fetch_every.get_or_create(&labels).set(expect_fetch_every.unwrap_or(0));
        for (key_set, holds) in holds_next {
            let labels = PartnerSetLabels { partner: partner.to_owned(), key_set: (*key_set).to_owned() };
            self.0.partner_holds_next.get_or_create(&labels).set(i64::from(*holds));
        }
    }

    /// Whether a gate holds the hand-over of `key_set`.
    pub fn gate(&self, key_set: &str, held: bool) {
        self.0.gate_held.get_or_create(&SetLabels { key_set: key_set.to_owned() }).set(i64::from(held));
    }

    /// Seconds since the master key last changed.
    pub fn master_key_age(&self, seconds: i64) {
        self.0.master_key_age.set(seconds);
    }

    /// A failed scheduler pass.
    pub fn rotation_failed(&self) {
        self.0.rotation_failures.inc();
    }

    /// One ledger transaction.
    pub fn ledger_batch(&self, rows: usize, elapsed: Duration, committed: bool) {
        self.0.ledger_batch_rows.observe(rows as f64);
        self.0.ledger_commit_seconds.observe(elapsed.as_secs_f64());
        if !committed {
            self.0.ledger_failures.inc();
        }
    }

    /// A sign or token request refused because the server was full.
    pub fn shed(&self) {
        self.0.shed.inc();
    }

    /// A request over its client's rate limit.
    pub fn rate_limited(&self, client: &str) {
        self.0.rate_limited.get_or_create(&ClientLabels { client: client.to_owned() }).inc();
    }

    /// A workload identity token of `issuer` (a configured one, or "unknown"), and what
    /// became of it.
    pub fn identity_token(&self, issuer: &str, outcome: &'static str) {
        self.0.identity_tokens.get_or_create(&IdentityLabels { issuer: issuer.to_owned(), outcome }).inc();
    }

    /// When the certificate `listener` serves now expires (Unix seconds).
    pub fn certificate_expiry(&self, listener: &'static str, not_after: i64) {
        self.0.certificate_expiry.get_or_create(&ListenerLabels { listener }).set(not_after);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }
}

/// What `/metrics` reports of a key set, in seconds where a time.
pub struct KeySetGauges {
    /// Since the signing key started signing.
    pub age: i64,
    /// Until the planned hand-over (0 once due).
    pub until_rotation: i64,
    /// The set's `rotate_every`.
    pub rotation_period: i64,
    /// Whether a next key is published.
    pub next_key_published: bool,
}

/// One listener's request counters: a shared atomic per request, a labelled counter only
/// for server errors, so that the JWKS path pays next to nothing.
#[derive(Clone)]
pub struct ListenerMetrics {
    listener: &'static str,
    requests: Counter,
    server_errors: Family<ListenerStatusLabels, Counter>,
}

impl ListenerMetrics {
    /// A request answered with `status`.
    pub fn answered(&self, status: u16) {
        self.requests.inc();
        if status >= 500 {
            self.server_errors.get_or_create(&ListenerStatusLabels { listener: self.listener, status }).inc();
        }
    }
}
