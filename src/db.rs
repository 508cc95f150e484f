//! The SQLite database: connection pool, migrations and the change counter.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Sqlite, SqliteConnection, SqlitePool, Transaction};

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

/// Opens (creating if needed) the database at `path` and applies pending migrations.
pub async fn connect(path: impl AsRef<Path>) -> anyhow::Result<SqlitePool> {
    let path = path.as_ref();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the database folder {}", parent.display()))?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options(path))
        .await
        .with_context(|| format!("opening the database {}", path.display()))?;
    // Processes starting together on a fresh database would otherwise all try to apply the
    // same migrations (sqlx takes no lock on SQLite): they take turns on a lock file.
    let lock_path = format!("{}.migrate-lock", path.display());
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {lock_path}"))?;
    let lock_file = tokio::task::spawn_blocking(move || lock_file.lock().map(|()| lock_file))
        .await
        .context("migration lock task")?
        .with_context(|| format!("locking {lock_path}"))?;
    let migrated = sqlx::migrate!("./migrations").run(&pool).await;
    drop(lock_file);
    migrated.with_context(|| format!("applying migrations to {}", path.display()))?;
    Ok(pool)
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
pub async fn begin_write(pool: &SqlitePool) -> anyhow::Result<Transaction<'static, Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await.context("beginning a write transaction")
}

/// Records that keys or clients changed; call inside the changing transaction.
pub async fn bump_generation(tx: &mut Transaction<'_, Sqlite>) -> anyhow::Result<()> {
    sqlx::query("UPDATE state_version SET generation = generation + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await
        .context("bumping the state generation")?;
    Ok(())
}

/// Moves the write-ahead log into the database file and empties it, so that content
/// deleted with `secure_delete` leaves no copy in the log. A reader holding the log makes
/// SQLite report the checkpoint busy (not fail): try again for up to about two seconds.
pub async fn checkpoint(pool: &SqlitePool) {
    for _ in 0..40 {
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(pool).await {
            Ok((0, _, _)) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(err) => {
                tracing::warn!(error = %err, "WAL checkpoint failed; it is retried after the next change");
                return;
            }
        }
    }
    tracing::warn!("WAL checkpoint stayed busy (readers); it is retried after the next change");
}

/// Writes a consistent copy of the live database to `file` (`VACUUM INTO`: one read
/// transaction, so writers go on meanwhile and the copy is a single point in time).
pub async fn backup(pool: &SqlitePool, file: &Path) -> anyhow::Result<()> {
    let target = file.to_str().context("the backup path is not UTF-8")?;
    sqlx::query("VACUUM INTO ?").bind(target).execute(pool).await.with_context(|| format!("backing up to {target}"))?;
    // The copy holds sealed keys and secrets: readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {target} to its owner"))?;
    }
    Ok(())
}

/// The current change counter.
pub async fn generation(pool: &SqlitePool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT generation FROM state_version WHERE id = 1")
        .fetch_one(pool)
        .await
        .context("reading the state generation")
}
