//! The PostgreSQL database: connection pool, migrations, write transactions, the change
//! counter and its notifications.
//!
//! Several keyward processes share one database. Every decision that SQLite serialises
//! with `BEGIN IMMEDIATE` takes a transaction-scoped advisory lock here instead (released
//! at commit or rollback, so a killed process never leaves one behind, and nothing needs
//! a session that outlives the transaction: a pooler in transaction mode is fine for
//! these). Every change bumps the counter and notifies `keyward_changes` in the same
//! transaction, so other processes hear of it as it commits.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::config::PostgresUrl;

pub mod backup;
pub mod clients;
pub mod events;
pub mod issuance;
pub mod keys;
pub mod partners;
pub mod secrets;
pub mod watch;

/// The channel every change is announced on.
pub(crate) const CHANGES_CHANNEL: &str = "keyward_changes";

/// How long a request waits for a connection before it is refused (503), rather than
/// hanging while the database is unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The PostgreSQL store: a pool of connections to one database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    options: Arc<PgConnectOptions>,
    url: PostgresUrl,
    trail: crate::store::events::Trail,
}

impl PgStore {
    /// Connects and applies pending migrations (one process at a time).
    pub async fn connect(url: &PostgresUrl) -> anyhow::Result<PgStore> {
        let options: PgConnectOptions =
            url.expose().parse().with_context(|| format!("reading the PostgreSQL URL {url}"))?;
        // The server's side of every connection: a keyward gone silent (its host cut off)
        // is dropped within about 20 s instead of holding locks and connections for the
        // kernel's two hours. keyward's own side bounds every wait itself (the request
        // deadline, the watcher's limits): sqlx sets no socket options.
        let options = options.application_name("keyward").options([
            ("tcp_keepalives_idle", "5"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
            ("tcp_user_timeout", "20000"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(url.pool_size())
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|err| connect_error(url, &err))?;
        // sqlx holds an advisory lock while it migrates: processes starting together take turns.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .with_context(|| format!("applying migrations to {url}"))?;
        issuance::prepare(&pool, chrono::Utc::now().timestamp())
            .await
            .with_context(|| format!("creating the ledger's partitions in {url}"))?;
        Ok(PgStore {
            pool,
            options: Arc::new(options),
            url: url.clone(),
            trail: crate::store::events::Trail::new_writer(),
        })
    }

    /// Who its changes are attributed to, and its writer.
    pub fn trail(&self) -> &crate::store::events::Trail {
        &self.trail
    }

    pub(crate) fn trail_mut(&mut self) -> &mut crate::store::events::Trail {
        &mut self.trail
    }

    /// The connection pool (for tests that inspect tables).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &PostgresUrl {
        &self.url
    }

    /// How to open a connection of one's own (the change listener's).
    pub(crate) fn options(&self) -> &PgConnectOptions {
        &self.options
    }
}

/// Why connecting to `url` failed, said once (sqlx's errors repeat their source in their
/// own text), with what to change for the failures an operator meets first.
fn connect_error(url: &PostgresUrl, err: &sqlx::Error) -> anyhow::Error {
    let (why, hint) = match err {
        sqlx::Error::Tls(inner) => {
            let hint = inner.to_string().contains("does not support TLS").then_some(
                "the URL's sslmode asks for TLS: turn TLS on in the server, or for a server without TLS on this \
                 machine or a private network use sslmode=disable",
            );
            (format!("TLS: {inner}"), hint)
        }
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("28P01" | "28000")) => {
            let given = url.split_password().1.is_some() || std::env::var_os("PGPASSWORD").is_some();
            let hint = if given {
                "check the password given in PGPASSWORD or the URL"
            } else {
                "no password was given: set PGPASSWORD (or use ~/.pgpass, or the URL: postgres://USER:PASSWORD@HOST/DB)"
            };
            (db.message().to_owned(), Some(hint))
        }
        sqlx::Error::Database(db) => (db.message().to_owned(), None),
        other => (other.to_string(), None),
    };
    match hint {
        Some(hint) => anyhow::anyhow!("connecting to {url}: {why}; {hint}"),
        None => anyhow::anyhow!("connecting to {url}: {why}"),
    }
}

/// A transaction whose connection is closed, not reused, unless it commits (as on SQLite:
/// nothing is left to guess about a connection whose transaction failed).
pub struct WriteTx {
    connection: PoolConnection<Postgres>,
    committed: bool,
}

impl WriteTx {
    /// Begins on a pooled connection.
    pub async fn begin(pool: &PgPool) -> anyhow::Result<WriteTx> {
        let connection = pool.acquire().await.context("connecting for a write transaction")?;
        let mut tx = WriteTx { connection, committed: false };
        sqlx::query("BEGIN").execute(&mut *tx).await.context("beginning a write transaction")?;
        Ok(tx)
    }

    /// Holds the lock named `name` until this transaction ends: whoever asks for it
    /// meanwhile waits.
    pub async fn lock(&mut self, name: &str) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("keyward:{name}"))
            .execute(&mut **self)
            .await
            .with_context(|| format!("locking {name}"))?;
        Ok(())
    }

    /// Commits; on failure the connection is closed when this is dropped.
    pub async fn commit(mut self) -> anyhow::Result<()> {
        sqlx::query("COMMIT").execute(&mut *self).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.committed {
            self.connection.close_on_drop();
        }
    }
}

impl Deref for WriteTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.connection
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.connection
    }
}

/// Records that keys, clients or secrets changed and tells every listener when the
/// transaction commits; call inside the changing transaction.
pub async fn bump_generation(tx: &mut PgConnection) -> anyhow::Result<()> {
    let generation: i64 =
        sqlx::query_scalar("UPDATE state_version SET generation = generation + 1 WHERE id = 1 RETURNING generation")
            .fetch_one(&mut *tx)
            .await
            .context("bumping the state generation")?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGES_CHANNEL)
        .bind(generation.to_string())
        .execute(&mut *tx)
        .await
        .context("announcing the change")?;
    Ok(())
}

/// The current change counter.
pub async fn generation<'e>(executor: impl sqlx::PgExecutor<'e>) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT generation FROM state_version WHERE id = 1")
        .fetch_one(executor)
        .await
        .context("reading the state generation")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sqlite_migration_has_a_postgres_twin_of_the_same_version() {
        let versions = |migrator: sqlx::migrate::Migrator| {
            migrator.iter().map(|m| (m.version, m.description.to_string())).collect::<Vec<_>>()
        };
        assert_eq!(
            versions(sqlx::migrate!("./migrations/postgres")),
            versions(sqlx::migrate!("./migrations/sqlite")),
            "add the PostgreSQL twin of each SQLite migration (migrations/postgres, same file name)"
        );
    }
}
