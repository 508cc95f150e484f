//! Hearing that another process (the CLI, another replica) changed keys, clients or
//! secrets: PostgreSQL notifies, SQLite is asked cheaply and often.

use std::time::Duration;

use anyhow::Context;

use super::postgres::watch::Listener;
use super::{sqlite, Store};

/// How often SQLite is asked (`PRAGMA data_version` on a connection of its own: no table
/// is read unless something was committed).
pub const SQLITE_POLL: Duration = Duration::from_millis(50);

/// A source of "something may have changed" signals.
pub enum Changes {
    /// SQLite's commit counter, polled.
    Sqlite {
        /// Its own connection: the counter is per connection.
        connection: sqlx::SqliteConnection,
        /// The counter last seen; `None` until the first look.
        seen: Option<i64>,
    },
    /// PostgreSQL's notifications.
    Postgres(Listener),
}

impl Store {
    /// Starts watching for changes. The first [`Changes::next`] returns at once.
    pub async fn changes(&self) -> anyhow::Result<Changes> {
        match self {
            Store::Sqlite(s) => {
                Ok(Changes::Sqlite { connection: sqlite::connect_watcher(s.path()).await?, seen: None })
            }
            Store::Postgres(s) => Ok(Changes::Postgres(Listener::connect(s).await?)),
        }
    }
}

impl Changes {
    /// Returns when something may have changed since the last call (a commit by any
    /// connection, this process's included). An error means the database does not answer;
    /// start again with [`Store::changes`].
    pub async fn next(&mut self) -> anyhow::Result<()> {
        match self {
            Changes::Sqlite { connection, seen } => loop {
                let version = sqlite::data_version(connection).await.context("polling for changes")?;
                if seen.replace(version) != Some(version) {
                    return Ok(());
                }
                tokio::time::sleep(SQLITE_POLL).await;
            },
            Changes::Postgres(listener) => listener.next().await,
        }
    }

    /// The change counter of `store`, read where changes are heard: on PostgreSQL on the
    /// listening connection, which is up again as soon as the server is, whatever the
    /// shared pool's connections are doing.
    pub async fn generation(&mut self, store: &Store) -> anyhow::Result<i64> {
        match self {
            Changes::Sqlite { .. } => store.generation().await,
            Changes::Postgres(listener) => listener.generation().await,
        }
    }
}
