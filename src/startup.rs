//! Building the application: database, keys, snapshot, and both listeners bound.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::watch;

use crate::app::identity::IdentityProviders;
use crate::app::ledger::{Ledger, Writer};
use crate::app::metrics::Metrics;
use crate::app::scheduler;
use crate::app::snapshot::Shared;
use crate::config::{self, Config};
use crate::http::client_cert;
use crate::http::console::{self, ConsoleState};
use crate::http::internal::{self, InternalState};
use crate::http::middleware;
use crate::http::public::{self, PublicState};
use crate::http::tls::{self, TlsListener};
use crate::keys::custody::Custody;
use crate::master_key::Roots;
use crate::policy::profile::parse_profiles;
use crate::store::Store;

/// How many seconds in-flight requests get to finish at shutdown.
const SHUTDOWN_GRACE_SECS: u64 = 10;

/// A built application: listeners bound, keys loaded, ready to run.
pub struct Application {
    public_addr: SocketAddr,
    internal_addr: SocketAddr,
    public: Server,
    internal: Server,
    shared: Arc<Shared>,
    ledger_writer: Writer,
    tls: Vec<Arc<TlsListener>>,
}

impl Application {
    /// Opens the database, makes sure every key set has a signing key, loads them and binds
    /// both listeners (port 0 picks a free port). `workers` is per listener.
    pub async fn build(config: Config, roots: impl Into<Roots>, workers: usize) -> anyhow::Result<Self> {
        let public_listener = TcpListener::bind(config.server.public_addr)
            .with_context(|| format!("binding the public listener to {}", config.server.public_addr))?;
        let internal_listener = TcpListener::bind(config.server.internal_addr)
            .with_context(|| format!("binding the internal listener to {}", config.server.internal_addr))?;
        Self::build_on(config, roots, workers, public_listener, internal_listener).await
    }

    /// [`Application::build`] on listeners bound already (their addresses win over the
    /// configuration's), e.g. so that a test knows the public port before configuring.
    pub async fn build_on(
        config: Config,
        roots: impl Into<Roots>,
        workers: usize,
        public_listener: TcpListener,
        internal_listener: TcpListener,
    ) -> anyhow::Result<Self> {
        config::validate(&config, "configuration")?;
        let profiles = parse_profiles(&config, "configuration")?;
        let config = Arc::new(config);
        // Certificates are checked before anything is opened or written.
        let metrics = Metrics::default();
        let start_tls = |name, files: &Option<config::TlsConfig>| {
            files.as_ref().map(|files| TlsListener::start(name, files, &metrics)).transpose()
        };
        let public_tls = start_tls("public", &config.server.public_tls)?;
        let internal_tls = start_tls("internal", &config.server.internal_tls)?;
        let mutual = internal_tls.as_ref().is_some_and(|tls| tls.mutual());
        let store = Store::connect(&config.database()).await?;
        let roots = roots.into();
        let keyring = crate::ops::master_key::open(&store, &roots, crate::ops::wall_clock()).await?;
        let custody = Custody::open(keyring, config.custody_settings(&|name| std::env::var(name).ok())?).await?;
        // New sets get their keys, and anything that fell due while stopped is done, before
        // the first request.
        store.record(&[crate::audit::started(&config, &store.trail().writer)]).await.context("recording the start")?;
        let scheduling = scheduler::scheduler_store(&store);
        scheduler::run_due(&scheduling, &custody, &config, &crate::ops::wall_clock, Some(&metrics)).await;
        let (ledger, ledger_writer) = Ledger::start(
            store.issuance_writer(std::time::Duration::from_secs(config.server.request_deadline.as_secs())),
            metrics.clone(),
            std::time::Duration::from_millis(config.server.ledger_commit_interval_ms),
        );
        let (public_counters, internal_counters) =
            (web::Data::new(metrics.listener("public")), web::Data::new(metrics.listener("internal")));
        let shared =
            Arc::new(Shared::load(store, Arc::clone(&config), custody, roots, metrics, ledger.health()).await?);

        let profiles: HashMap<_, _> = profiles.into_iter().map(|p| (p.name.clone(), p)).collect();
        let routes: HashMap<String, String> = config
            .key_sets
            .iter()
            .flat_map(|set| set.jwks_paths.iter().map(|path| (path.clone(), set.name.clone())))
            .collect();

        let public_addr = public_listener.local_addr()?;
        let internal_addr = internal_listener.local_addr()?;

        let public_state =
            web::Data::new(PublicState::new(Arc::clone(&shared), routes, config::discovery::documents(&config)));
        let public = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(middleware::quiet))
                .app_data(public_state.clone())
                .app_data(public_counters.clone())
                .configure(public::configure)
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS);
        let public = match &public_tls {
            Some(tls) => public.listen_rustls_0_23(public_listener, tls.server_config()?)?,
            None => public.listen(public_listener)?,
        }
        .run();
        let identities = IdentityProviders::new(&config.identity_providers, shared.metrics().clone())?;
        let internal_state = web::Data::new(InternalState::new(Arc::clone(&shared), profiles, ledger, identities));
        // The console is off unless configured: then /console/ answers 404 like any other path.
        let console_state = config
            .server
            .console
            .then(|| web::Data::new(ConsoleState::new(Arc::clone(&shared), internal_tls.is_some())));
        let internal = HttpServer::new(move || {
            // Called on each internal worker's own thread as it starts.
            yield_to_verifiers();
            let app = App::new()
                .wrap(from_fn(middleware::logged))
                .app_data(internal_state.clone())
                .app_data(internal_counters.clone());
            let app = match &console_state {
                Some(console_state) => app.app_data(console_state.clone()).configure(console::configure),
                None => app,
            };
            app.configure(internal::configure)
        })
        .workers(workers)
        // The threads RSA and PKCS#11 signatures run on, per worker: as many as there are
        // cores (the admitted requests queue for them, at most max_signing_requests).
        .worker_max_blocking_threads(signing_threads())
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .on_connect(client_cert::on_connect(mutual));
        let internal = match &internal_tls {
            Some(tls) => internal.listen_rustls_0_23(internal_listener, tls.server_config()?)?,
            None => internal.listen(internal_listener)?,
        }
        .run();
        let tls = public_tls.into_iter().chain(internal_tls).collect();
        Ok(Application { public_addr, internal_addr, public, internal, shared, ledger_writer, tls })
    }

    /// The public listener's port.
    pub fn public_port(&self) -> u16 {
        self.public_addr.port()
    }

    /// The internal listener's port.
    pub fn internal_port(&self) -> u16 {
        self.internal_addr.port()
    }

    /// The public listener's bound address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The internal listener's bound address.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal_addr
    }

    /// The served state, e.g. to reload it at once after an in-process change.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves until SIGINT or SIGTERM, then lets in-flight requests finish and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (public_handle, internal_handle) = (self.public.handle(), self.internal.handle());
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received: finishing in-flight requests");
            tokio::join!(public_handle.stop(true), internal_handle.stop(true));
        });
        let shared = Arc::clone(&self.shared);
        let servers = async move {
            let result = tokio::try_join!(self.public, self.internal);
            let _ = stop_tx.send(true);
            result.context("serving")
        };
        // The ledger writer stops after the servers (which finish in-flight requests
        // first), committing every row still queued.
        let (served, watched, handed_over, observed, scheduled, checkpointed, recorded, ()) = tokio::join!(
            servers,
            shared.watch_until_stopped(stop_rx.clone()),
            shared.hand_over_until_stopped(stop_rx.clone()),
            shared.observer().flush_until_stopped(shared.store(), stop_rx.clone()),
            scheduler::run_until_stopped(&shared, stop_rx.clone()),
            crate::app::checkpoint::run_until_stopped(&shared, stop_rx.clone()),
            self.ledger_writer.run_until_stopped(stop_rx.clone()),
            tls::reload_until_stopped(&self.tls, stop_rx)
        );
        served?;
        watched?;
        handed_over?;
        observed?;
        scheduled?;
        checkpointed?;
        recorded?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Threads that sign off an internal worker's executor, per worker: one per core.
fn signing_threads() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(2)
}

/// How much lower than the public listener's the internal workers' scheduling priority is
/// (a nice value; the blocking threads they start inherit it).
const INTERNAL_NICENESS: libc::c_int = 5;

/// Lowers the calling thread's priority to [`INTERNAL_NICENESS`]: signing is CPU work, and
/// however many sign requests come, the kernel runs the public listener (the JWKS that
/// verifiers fetch, the health checks) first, so that verifiers are never starved by
/// signers. Linux only (elsewhere a priority is the whole process's).
fn yield_to_verifiers() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority have no preconditions; a thread may always lower
        // its own priority.
        let lowered = unsafe {
            let thread = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, INTERNAL_NICENESS)
        };
        if lowered != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not lower the internal workers' priority: signers may slow the JWKS down under load"
            );
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
