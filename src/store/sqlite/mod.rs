//! The SQLite database: connection pool, migrations, write transactions and the change
//! counter.

use std::borrow::BorrowMut;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Sqlite, SqliteConnection, SqlitePool};

use crate::private_files::{private_dir_builder, private_file_options};

pub mod clients;
pub mod events;
pub mod issuance;
pub mod keys;
pub mod partners;
pub mod secrets;

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        // Deleted private material is overwritten, not left in free pages.
        .pragma("secure_delete", "ON")
        .busy_timeout(Duration::from_secs(10))
}

/// The SQLite store: a pool of connections to one database file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: std::path::PathBuf,
    trail: crate::store::events::Trail,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn connect(path: impl AsRef<Path>) -> anyhow::Result<SqliteStore> {
        let path = path.as_ref().to_owned();
        Ok(SqliteStore { pool: connect(&path).await?, path, trail: crate::store::events::Trail::new_writer() })
    }

    /// Who its changes are attributed to, and its writer.
    pub fn trail(&self) -> &crate::store::events::Trail {
        &self.trail
    }

    pub(crate) fn trail_mut(&mut self) -> &mut crate::store::events::Trail {
        &mut self.trail
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection pool, for what only SQLite has (and for tests that inspect tables).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Opens (creating if needed) the database at `path` and applies pending migrations.
///
/// The folder is created 0700 and the database file 0600 before SQLite opens it: SQLite
/// gives the files it adds later (`-wal`, `-shm`, journals) the database file's mode.
pub async fn connect(path: impl AsRef<Path>) -> anyhow::Result<SqlitePool> {
    let path = path.as_ref();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_dir_builder()
            .create(parent)
            .with_context(|| format!("creating the database folder {}", parent.display()))?;
    }
    create_database_file(path).with_context(|| format!("creating the database file {}", path.display()))?;
    // Processes starting together on a fresh database take turns on a lock file, from opening
    // to migrated: sqlx takes no lock for migrations on SQLite, and turning a new database to
    // WAL while another process has it open can fail at once with "database is locked".
    let lock_path = format!("{}.migrate-lock", path.display());
    let lock_file = private_file_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {lock_path}"))?;
    let lock_file = tokio::task::spawn_blocking(move || lock_file.lock().map(|()| lock_file))
        .await
        .context("migration lock task")?
        .with_context(|| format!("locking {lock_path}"))?;
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options(path))
        .await
        .with_context(|| format!("opening the database {}", path.display()))?;
    let migrated = sqlx::migrate!("./migrations/sqlite").run(&pool).await;
    drop(lock_file);
    migrated.with_context(|| format!("applying migrations to {}", path.display()))?;
    Ok(pool)
}

/// Creates an empty database file (a valid new database) with mode 0600, unless one exists.
/// It is made aside and linked into place: closing any descriptor of a file drops every
/// POSIX lock this process holds on it, SQLite's included, so the database path itself is
/// never opened here.
fn create_database_file(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{}-{:08x}.new", std::process::id(), rand::random::<u32>()));
    let aside = std::path::PathBuf::from(aside);
    private_file_options().write(true).create_new(true).open(&aside)?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // A filesystem without hard links: create it in place.
        Err(_) => match private_file_options().write(true).create_new(true).open(path) {
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other.map(drop),
        },
        Ok(()) => Ok(()),
    }
}

/// One connection of its own, for [`data_version`]: SQLite's counter is per connection.
pub async fn connect_watcher(path: &Path) -> anyhow::Result<SqliteConnection> {
    options(path).connect().await.with_context(|| format!("opening the database {}", path.display()))
}

/// SQLite's `data_version`: changes whenever another connection commits. A cheap question
/// (no table read) to ask often.
pub async fn data_version(conn: &mut SqliteConnection) -> anyhow::Result<i64> {
    // Stepped to the end (not `fetch_one`), so that no read transaction stays open between
    // polls: one would keep WAL checkpoints from truncating the log.
    let versions: Vec<i64> =
        sqlx::query_scalar("PRAGMA data_version").fetch_all(conn).await.context("reading data_version")?;
    versions.first().copied().context("PRAGMA data_version returned no row")
}

/// Begins a transaction that holds SQLite's write lock from its first statement, so that
/// a decision read inside it cannot be invalidated by another writer before it commits.
pub async fn begin_write(pool: &SqlitePool) -> anyhow::Result<WriteTx> {
    let connection = pool.acquire().await.context("connecting for a write transaction")?;
    WriteTx::begin(connection).await
}

/// A write transaction (`BEGIN IMMEDIATE`) whose connection is closed, not reused, unless
/// the transaction commits.
///
/// When COMMIT fails (a full disk, an I/O error), SQLite may already have rolled back on
/// its own, and its state and sqlx's idea of it can part: a connection reused after that
/// turned later transactions into savepoints of one that never ended (nothing committed,
/// the write lock held for good). Closing the connection rolls back whatever is open and
/// leaves nothing to guess; the pool opens a fresh one when needed.
///
/// `C` is an owned pooled connection (returned to the pool after a commit), or a borrowed
/// one that its owner keeps between transactions and must drop after a failure (it is
/// marked to close then).
pub struct WriteTx<C: BorrowMut<PoolConnection<Sqlite>> = PoolConnection<Sqlite>> {
    connection: C,
    committed: bool,
}

impl<C: BorrowMut<PoolConnection<Sqlite>>> WriteTx<C> {
    /// Begins on `connection`. A BEGIN that fails (or is cancelled) closes it too.
    pub async fn begin(connection: C) -> anyhow::Result<Self> {
        let mut tx = WriteTx { connection, committed: false };
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *tx).await.context("beginning a write transaction")?;
        Ok(tx)
    }

    /// Commits; on failure the connection is closed when this is dropped.
    pub async fn commit(mut self) -> anyhow::Result<()> {
        sqlx::query("COMMIT").execute(&mut *self).await?;
        self.committed = true;
        Ok(())
    }
}

impl<C: BorrowMut<PoolConnection<Sqlite>>> Drop for WriteTx<C> {
    fn drop(&mut self) {
        if !self.committed {
            self.connection.borrow_mut().close_on_drop();
        }
    }
}

impl<C: BorrowMut<PoolConnection<Sqlite>>> Deref for WriteTx<C> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.connection.borrow()
    }
}

impl<C: BorrowMut<PoolConnection<Sqlite>>> DerefMut for WriteTx<C> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.connection.borrow_mut()
    }
}

/// Records that keys or clients changed; call inside the changing transaction.
pub async fn bump_generation(tx: &mut SqliteConnection) -> anyhow::Result<()> {
    sqlx::query("UPDATE state_version SET generation = generation + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await
        .context("bumping the state generation")?;
    Ok(())
}

/// Moves the write-ahead log into the database file and empties it, so that content
/// deleted with `secure_delete` leaves no copy in the log. A reader holding the log makes
/// SQLite report the checkpoint busy (not fail): try again for up to about two seconds.
pub async fn checkpoint(pool: &SqlitePool) {
    match try_checkpoint(pool, Duration::from_secs(2)).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("WAL checkpoint stayed busy (readers); it is retried after the next change"),
        Err(err) => tracing::warn!(error = %err, "WAL checkpoint failed; it is retried after the next change"),
    }
}

/// [`checkpoint`], trying for up to `wait` while readers hold the log: `false` if they
/// still did then (the database file may still hold pages the log replaces).
pub async fn try_checkpoint(pool: &SqlitePool, wait: Duration) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    loop {
        let (busy, _, _) = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await
            .context("checkpointing the write-ahead log")?;
        if busy == 0 {
            return Ok(true);
        }
        if started.elapsed() >= wait {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a consistent copy of the live database to `file` (`VACUUM INTO`: one read
/// transaction, so writers go on meanwhile and the copy is a single point in time).
/// The copy holds sealed keys and secrets: it is created 0600 and empty first (which
/// `VACUUM INTO` accepts), so it is never readable by others.
pub async fn backup(pool: &SqlitePool, file: &Path) -> anyhow::Result<()> {
    let target = file.to_str().context("the backup path is not UTF-8")?;
    private_file_options().write(true).create_new(true).open(file).with_context(|| format!("creating {target}"))?;
    let copied = sqlx::query("VACUUM INTO ?").bind(target).execute(pool).await;
    if copied.is_err() {
        // Leave no empty or partial copy that could pass for a backup.
        let _ = std::fs::remove_file(file);
    }
    copied.with_context(|| format!("backing up to {target}"))?;
    Ok(())
}

/// The database file and the files SQLite keeps beside it.
pub fn database_files(path: &Path) -> Vec<std::path::PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            name.into()
        })
        .collect()
}

/// The current change counter.
pub async fn generation(pool: &SqlitePool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT generation FROM state_version WHERE id = 1")
        .fetch_one(pool)
        .await
        .context("reading the state generation")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    async fn pool_with_deferred_foreign_key(dir: &Path) -> SqlitePool {
        let pool = connect(dir.join("t.db").to_str().unwrap()).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool
    }

    #[tokio::test]
    async fn a_write_transaction_whose_commit_fails_closes_its_connection_instead_of_pooling_it() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_with_deferred_foreign_key(dir.path()).await;
        let before = pool.size();
        let mut tx = begin_write(&pool).await.unwrap();
        // A deferred foreign key violation makes COMMIT itself fail.
        sqlx::query("INSERT INTO child (parent) VALUES (42)").execute(&mut *tx).await.unwrap();
        assert!(tx.commit().await.is_err());
        let start = Instant::now();
        while pool.size() != before - 1 {
            assert!(start.elapsed() < Duration::from_secs(10), "the connection went back to the pool");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Nothing of it remains, and the next writer gets a clean connection.
        let mut tx = begin_write(&pool).await.unwrap();
        sqlx::query("INSERT INTO parent (id) VALUES (1)").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        let children: i64 = sqlx::query_scalar("SELECT count(*) FROM child").fetch_one(&pool).await.unwrap();
        let parents: i64 = sqlx::query_scalar("SELECT count(*) FROM parent").fetch_one(&pool).await.unwrap();
        assert_eq!((children, parents), (0, 1));
    }

    #[tokio::test]
    async fn a_committed_or_abandoned_write_transaction_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_with_deferred_foreign_key(dir.path()).await;
        let size = pool.size();
        let tx = begin_write(&pool).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(pool.size(), size, "a committed transaction's connection is pooled again");
        {
            let mut tx = begin_write(&pool).await.unwrap();
            sqlx::query("INSERT INTO parent (id) VALUES (7)").execute(&mut *tx).await.unwrap();
            // Dropped without commit, as on an early return.
        }
        // Other connections can take the write lock at once (busy_timeout would hide a wait,
        // so try without it), and the abandoned row is gone.
        let start = Instant::now();
        loop {
            let mut connection = pool.acquire().await.unwrap();
            sqlx::query("PRAGMA busy_timeout = 0").execute(&mut *connection).await.unwrap();
            let begun = sqlx::query("BEGIN IMMEDIATE").execute(&mut *connection).await;
            if begun.is_ok() {
                sqlx::query("ROLLBACK").execute(&mut *connection).await.unwrap();
                sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *connection).await.unwrap();
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the abandoned transaction still holds the lock");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let parents: i64 = sqlx::query_scalar("SELECT count(*) FROM parent").fetch_one(&pool).await.unwrap();
        assert_eq!(parents, 0);
    }
}
