//! `keyward migrate-store --from URL --to URL`: a one-way move between stores.

use anyhow::Context;

use crate::config::Database;
use crate::ops::migrate_store::{describe, migrate_store};
use crate::store::Store;

/// Copy keys (still sealed), clients, secrets and the ledger into a new, empty database
/// (e.g. from SQLite to PostgreSQL), then verify the counts. Stop every keyward first.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The database to copy from: sqlite://PATH or postgres://...
    #[arg(long, value_name = "URL")]
    from: String,
    /// The empty database to copy into (its tables are created).
    #[arg(long, value_name = "URL")]
    to: String,
}

impl Args {
    /// "from X to Y", for the first line the command prints (never a password); `None`
    /// when a URL does not parse (the move then says why).
    pub(super) fn describe(&self) -> Option<String> {
        let (from, to) = (Database::parse(&self.from).ok()?, Database::parse(&self.to).ok()?);
        Some(format!("from {from} to {to}"))
    }
}

/// Runs the move.
pub async fn exec(args: Args) -> anyhow::Result<()> {
    let from = Database::parse(&args.from).map_err(|m| anyhow::anyhow!("--from: {m}"))?;
    let to = Database::parse(&args.to).map_err(|m| anyhow::anyhow!("--to: {m}"))?;
    if let Database::Sqlite(path) = &from {
        anyhow::ensure!(path.exists(), "--from: there is no database at {}", path.display());
    }
    let source = Store::connect(&from).await.with_context(|| format!("opening {from}"))?;
    let target = Store::connect(&to).await.with_context(|| format!("opening {to}"))?;
    let counts = migrate_store(&source, &target).await?;
    eprintln!(
        "copied {} from {from} to {to}; the counts match. Point database_url at the new database (with the same \
         master key) and start keyward",
        describe(counts)
    );
    Ok(())
}
