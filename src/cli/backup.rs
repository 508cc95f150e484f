//! `keyward backup FILE`: a consistent copy of the database while keyward runs.

use std::path::{Path, PathBuf};

use super::context::Context;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The copy; must not exist.
    file: PathBuf,
}

pub(super) async fn run(ctx: &Context, Args { file }: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!file.exists(), "{} exists already; choose a new file", file.display());
    let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    anyhow::ensure!(
        folder.is_dir(),
        "cannot write {}: the folder {} does not exist (keyward backup does not create folders)",
        file.display(),
        folder.display()
    );
    let store = ctx.store().await?;
    store.backup(&file).await?;
    eprintln!(
        "wrote {}: a consistent copy of the database. It holds sealed keys: keep it with the same care as \
         the master key, and never in the same place",
        file.display()
    );
    Ok(())
}
