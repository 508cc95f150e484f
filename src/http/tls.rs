//! TLS on the listeners through rustls (TLS 1.2 and 1.3; actix offers HTTP/2 by ALPN).
//!
//! Certificate and key are checked at start-up (key file private, key matching the
//! certificate, certificate not expired) and served through a resolver whose certificate
//! is swapped when the files change or on SIGHUP: new handshakes get the new certificate,
//! open connections carry on, nothing restarts. Certificates from cert-manager or ACME
//! clients rotate often.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use openssl::asn1::Asn1Time;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::watch;

use crate::app::metrics::Metrics;
use crate::config::TlsConfig;
use crate::private_files;

/// How often the certificate files are looked at (one `stat` each).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A certificate that expires sooner than this is warned about at every load.
const EXPIRY_WARNING_SECS: i64 = 14 * 86_400;

/// One TLS listener's certificate, swapped in place when its files change.
pub struct TlsListener {
    name: &'static str,
    files: TlsConfig,
    resolver: Arc<Resolver>,
    metrics: Metrics,
    /// The files' modification times and sizes at the last load attempt.
    seen: Mutex<Option<Stamp>>,
}

type Stamp = [(Option<SystemTime>, u64); 2];

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

/// A certificate chain and key that passed the checks.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Unix seconds.
    not_after: i64,
}

impl TlsListener {
    /// Loads and checks the listener's files: any failure stops the start-up.
    pub fn start(name: &'static str, files: &TlsConfig, metrics: &Metrics) -> anyhow::Result<Arc<Self>> {
        let seen = stamp(files);
        let loaded = load(files, chrono::Utc::now().timestamp())
            .with_context(|| format!("[server] {name}_tls: the {name} listener's certificate"))?;
        metrics.certificate_expiry(name, loaded.not_after);
        Ok(Arc::new(TlsListener {
            name,
            files: files.clone(),
            resolver: Arc::new(Resolver(RwLock::new(loaded.key))),
            metrics: metrics.clone(),
            seen: Mutex::new(Some(seen)),
        }))
    }

    /// The rustls configuration: TLS 1.3 and 1.2, client certificates verified against
    /// `client_ca_file` when it is set. A client without one still completes the handshake,
    /// so that its refusal is a problem+json answer rather than a bare TLS alert.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("setting up TLS")?;
        let builder = match &self.files.client_ca_file {
            Some(path) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots(path)?), provider)
                    .allow_unauthenticated()
                    .build()
                    .with_context(|| format!("{}: no usable CA certificate", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        Ok(builder.with_cert_resolver(Arc::clone(&self.resolver) as Arc<dyn ResolvesServerCert>))
    }

    /// Whether the listener asks for client certificates.
    pub fn mutual(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    /// Loads the files again if they changed since the last attempt (or always, `force`).
    /// A failed load keeps the certificate served now, and is logged.
    fn reload(&self, force: bool) {
        let now_seen = stamp(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !force && seen.as_ref() == Some(&now_seen) {
                return;
            }
            *seen = Some(now_seen);
        }
        match load(&self.files, chrono::Utc::now().timestamp()) {
            Ok(loaded) => {
                *self.resolver.0.write().unwrap_or_else(PoisonError::into_inner) = loaded.key;
                self.metrics.certificate_expiry(self.name, loaded.not_after);
                tracing::info!(listener = self.name, not_after = loaded.not_after, "TLS certificate reloaded");
            }
            // A renewal writes two files: between them, the pair may not match yet.
            Err(err) => tracing::warn!(
                listener = self.name,
                error = format!("{err:#}"),
                "TLS certificate not reloaded: still serving the previous one"
            ),
        }
    }
}

/// The start-up checks of a listener's files, serving nothing (`keyward check-config`).
pub fn check(name: &'static str, files: &TlsConfig) -> anyhow::Result<()> {
    TlsListener::start(name, files, &Metrics::default())?.server_config().map(drop)
}

/// Reloads the listeners' certificates when their files change or on SIGHUP, until `stop`.
pub async fn reload_until_stopped(listeners: &[Arc<TlsListener>], mut stop: watch::Receiver<bool>) {
    if listeners.is_empty() {
        return;
    }
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<Option<()>>();
        let force = tokio::select! {
            _ = ticker.tick() => false,
            _ = hangup_received => true,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                false
            }
        };
        for listener in listeners {
            let listener = Arc::clone(listener);
            // Reading and parsing files is blocking work.
            let _ = tokio::task::spawn_blocking(move || listener.reload(force)).await;
        }
    }
}

fn stamp(files: &TlsConfig) -> Stamp {
    [&files.cert_file, &files.key_file].map(|path| match fs::metadata(path) {
        Ok(meta) => (meta.modified().ok(), meta.len()),
        Err(_) => (None, 0),
    })
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads and checks a certificate chain and its key.
fn load(files: &TlsConfig, now: i64) -> anyhow::Result<Loaded> {
    let key_path = &files.key_file;
    if let Some(mode) = private_files::shared_mode(key_path) {
        bail!(
            "{} is readable by other users (mode {mode:o}): make it readable by its owner only (chmod 600)",
            key_path.display()
        );
    }
    let chain = X509::stack_from_pem(&read(&files.cert_file)?)
        .ok()
        .filter(|chain| !chain.is_empty())
        .with_context(|| format!("{} holds no PEM certificate", files.cert_file.display()))?;
    let key: PKey<Private> = PKey::private_key_from_pem_passphrase(&read(key_path)?, b"")
        .with_context(|| format!("{} holds no unencrypted PEM private key", key_path.display()))?;
    let leaf = &chain[0];
    let matches = leaf.public_key().map(|public| public.public_eq(&key)).unwrap_or(false);
    if !matches {
        bail!("{} is not the key of the certificate in {}", key_path.display(), files.cert_file.display());
    }
    let not_after = unix_time(leaf.not_after())?;
    if not_after <= now {
        bail!("the certificate in {} expired at {}", files.cert_file.display(), leaf.not_after());
    }
    if not_after - now < EXPIRY_WARNING_SECS {
        tracing::warn!(
            file = %files.cert_file.display(),
            not_after = %leaf.not_after(),
            "the TLS certificate expires within 14 days: renew it"
        );
    }
    let certificates = chain
        .iter()
        .map(|cert| cert.to_der().map(CertificateDer::from))
        .collect::<Result<Vec<_>, _>>()
        .context("encoding the certificate chain")?;
    let pkcs8 = key.private_key_to_pkcs8().context("encoding the private key")?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(certificates, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)), &provider)
        .with_context(|| format!("{}: a key type TLS cannot use", key_path.display()))?;
    Ok(Loaded { key: Arc::new(key), not_after })
}

/// Unix seconds of an ASN.1 time.
fn unix_time(time: &openssl::asn1::Asn1TimeRef) -> anyhow::Result<i64> {
    let diff = Asn1Time::from_unix(0)?.diff(time).context("reading the certificate's expiry")?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

fn client_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let cas =
        X509::stack_from_pem(&read(path)?).with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in cas {
        let der = ca.to_der().context("encoding a CA certificate")?;
        roots
            .add(CertificateDer::from(der))
            .with_context(|| format!("{}: an unusable CA certificate", path.display()))?;
    }
    Ok(roots)
}
