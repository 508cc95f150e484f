//! Hearing of changes: `LISTEN keyward_changes` on a connection of its own, which also
//! reads the change counter (so that hearing does not wait for the shared pool, whose
//! connections may all be busy or dead after a restart), with a slow poll as the safety
//! net for a notification lost while reconnecting.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::Connection;

use super::{PgStore, CHANGES_CHANNEL};

/// How long the listener waits for a notification before saying "look anyway".
pub const SAFETY_POLL: Duration = Duration::from_secs(1);

/// How long one attempt to connect may take (a slow network or TLS under load), before it
/// counts as failed and the next attempt starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A listening connection.
pub struct Listener {
    listener: PgListener,
    /// The first call after connecting answers at once: changes made before it were not heard.
    fresh: bool,
}

impl Listener {
    /// Connects and listens; fails at once when the server refuses, so that the caller
    /// decides how soon to try again (the pool's own retries back off to seconds).
    pub async fn connect(store: &PgStore) -> anyhow::Result<Listener> {
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(store.options()))
            .await
            .map_err(|_| anyhow::anyhow!("connecting the change listener timed out"))?
            .context("connecting the change listener")?;
        // The server answers: the listening connection below connects at its first attempt.
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(store.options().clone());
        let mut listener = PgListener::connect_with(&pool).await.context("connecting the change listener")?;
        // A lost connection is reported, not quietly replaced: notifications sent meanwhile
        // are lost, so the caller starts afresh and looks.
        listener.eager_reconnect(false);
        listener.listen(CHANGES_CHANNEL).await.context("listening for changes")?;
        Ok(Listener { listener, fresh: true })
    }

    /// Returns when something may have changed: a notification, a reconnection, or the
    /// safety poll's interval passing. An error means the database is unreachable.
    pub async fn next(&mut self) -> anyhow::Result<()> {
        if std::mem::take(&mut self.fresh) {
            return Ok(());
        }
        match tokio::time::timeout(SAFETY_POLL, self.listener.try_recv()).await {
            Ok(Ok(Some(_))) => {
                // A burst of changes needs one look.
                while self.listener.next_buffered().is_some() {}
                Ok(())
            }
            // Notifications sent while it reconnects would be lost: start afresh (and look).
            Ok(Ok(None)) => Err(anyhow::anyhow!("the change listener lost its connection")),
            Ok(Err(err)) => Err(err).context("listening for changes"),
            Err(_) => Ok(()),
        }
    }

    /// The change counter, read on the listening connection.
    pub async fn generation(&mut self) -> anyhow::Result<i64> {
        super::generation(&mut self.listener).await
    }
}
