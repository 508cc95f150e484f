//! `keyward backup` on PostgreSQL: `pg_dump`, which knows the server's own formats.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};

use super::PgStore;
use crate::private_files::private_file_options;

/// Runs `pg_dump --format=custom` into `file` (created 0600 first, so the dump of sealed
/// keys and client-token hashes is never readable by others). The password goes through
/// the environment, never the command line.
pub async fn run(store: &PgStore, file: &Path) -> anyhow::Result<()> {
    let target = file.to_str().context("the backup path is not UTF-8")?;
    private_file_options().write(true).create_new(true).open(file).with_context(|| format!("creating {target}"))?;
    let (url, password) = store.url().split_password();
    let mut command = tokio::process::Command::new("pg_dump");
    command
        .args(["--format=custom", "--no-password", "--file", target, "--dbname", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let outcome = match command.output().await {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(anyhow::anyhow!(
            "pg_dump failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(anyhow::anyhow!(
            "keyward backup on PostgreSQL runs pg_dump, which is not installed here: install the PostgreSQL \
             client tools (Debian: apt-get install postgresql-client), or back the database up with your \
             platform's tools (pg_dump --format=custom, or continuous archiving)"
        )),
        Err(err) => Err(err).context("starting pg_dump"),
    };
    if outcome.is_err() {
        // Leave no empty or partial copy that could pass for a backup.
        let _ = std::fs::remove_file(file);
    }
    if let Err(err) = outcome {
        bail!("{err:#}");
    }
    Ok(())
}
