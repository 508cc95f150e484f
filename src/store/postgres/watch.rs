//! Hearing of changes: `LISTEN keyward_changes` on a connection of its own, with a slow
//! poll as the safety net for a notification lost while reconnecting.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgListener;

use super::{PgStore, CHANGES_CHANNEL};

/// How long the listener waits for a notification before saying "look anyway".
pub const SAFETY_POLL: Duration = Duration::from_secs(1);

/// A listening connection.
pub struct Listener {
    listener: PgListener,
    /// The first call after connecting answers at once: changes made before it were not heard.
    fresh: bool,
}

impl Listener {
    /// Connects and listens.
    pub async fn connect(store: &PgStore) -> anyhow::Result<Listener> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(store.options().clone());
        let mut listener = PgListener::connect_with(&pool).await.context("connecting the change listener")?;
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
}
