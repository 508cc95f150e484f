//! What the key-service custodies (Vault Transit, AWS KMS) share: the bound on signing
//! calls in flight per key set, the time one call may take, and whether the service
//! answers (for `/readyz`, and a probe that notices when it is back).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::aws_kms::Kms;
use super::vault_transit::Transit;
use crate::keys::Algorithm;

/// How many signing calls a key set may have in flight, and how long each may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteBounds {
    max_in_flight: usize,
    sign_timeout: Duration,
}

impl RemoteBounds {
    /// `max_in_flight` calls per key set, each given `sign_timeout_ms` milliseconds.
    pub fn new(max_in_flight: u32, sign_timeout_ms: u64) -> Self {
        RemoteBounds {
            max_in_flight: usize::try_from(max_in_flight).unwrap_or(64),
            sign_timeout: Duration::from_millis(sign_timeout_ms),
        }
    }
}

/// Why a key service did not sign. Never holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The key set's calls in flight are at their bound: refused at once, not queued.
    #[error("{0} signing calls to the key service are in flight already")]
    Busy(usize),
    /// The service failed, refused or did not answer in time.
    #[error("the key service did not sign: {0}")]
    Failed(String),
}

/// Whether a service answers, and when it was last probed.
#[derive(Default)]
pub(super) struct Health {
    down: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
}

/// How often a service is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl Health {
    pub(super) fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Records the outcome of a call that reached (or failed to reach) the service; logs
    /// the change once.
    pub(super) fn answered(&self, service: &str, up: bool, reason: &dyn std::fmt::Display) {
        let was_down = self.down.swap(!up, Ordering::Relaxed);
        match (was_down, up) {
            (false, false) => tracing::error!(
                service,
                error = %reason,
                "the key service stopped answering; signing with its keys fails until it returns"
            ),
            (true, true) => tracing::info!(service, "the key service answers again"),
            _ => {}
        }
    }

    /// Whether a probe is due (at most one a second); if so, it starts now.
    pub(super) fn probe_due(&self) -> bool {
        let mut last = self.last_probe.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < PROBE_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// One semaphore per key set, made on first use.
#[derive(Default)]
pub(super) struct InFlight {
    sets: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl InFlight {
    pub(super) fn of(&self, key_set: &str, bounds: RemoteBounds) -> Arc<Semaphore> {
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(sets.entry(key_set.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(bounds.max_in_flight))))
    }
}

/// The service holding a key.
#[derive(Clone)]
pub(crate) enum Service {
    Vault(Arc<Transit>),
    Kms(Arc<Kms>),
}

/// A key held by a key service, opened for signing: each signature is a call to it.
pub(crate) struct RemoteKey {
    service: Service,
    /// The Transit key's name, or the KMS key's ARN.
    key: String,
    algorithm: Algorithm,
    in_flight: Arc<Semaphore>,
    bounds: RemoteBounds,
}

impl RemoteKey {
    pub(super) fn new(service: Service, key: String, algorithm: Algorithm, key_set: &str) -> Self {
        let (in_flight, bounds) = match &service {
            Service::Vault(transit) => (transit.in_flight(key_set), transit.bounds()),
            Service::Kms(kms) => (kms.in_flight(key_set), kms.bounds()),
        };
        RemoteKey { service, key, algorithm, in_flight, bounds }
    }

    /// The JWS signature of `input`, by the service: at most `max_in_flight` calls at once
    /// per key set (beyond it [`RemoteError::Busy`] at once), each within `sign_timeout`.
    pub(crate) async fn sign(&self, input: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        let Ok(_permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            return Err(RemoteError::Busy(self.bounds.max_in_flight));
        };
        match &self.service {
            Service::Vault(transit) => {
                let call = transit.sign(&self.key, self.algorithm, &input);
                bounded(call, self.bounds.sign_timeout, || transit.timed_out()).await
            }
            Service::Kms(kms) => {
                let call = kms.sign(&self.key, self.algorithm, &input);
                bounded(call, self.bounds.sign_timeout, || kms.timed_out()).await
            }
        }
    }
}

async fn bounded(
    call: impl Future<Output = Result<Vec<u8>, RemoteError>>,
    limit: Duration,
    timed_out: impl FnOnce(),
) -> Result<Vec<u8>, RemoteError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => {
            timed_out();
            Err(RemoteError::Failed(format!("no answer within {} ms", limit.as_millis())))
        }
    }
}
