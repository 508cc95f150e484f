//! `keyward master-key status | rotate | reseal`: the keyring that seals private keys and
//! secrets, and the master key that seals the keyring.

use std::time::Duration;

use super::context::Context;
use crate::ops::master_key;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Which master key seals the keyring, its source, when it last changed, how many
    /// values each term seals, and whether anything still needs an older key.
    Status {
        /// Print JSON (as the admin API's GET /v1/master-key).
        #[arg(long)]
        json: bool,
    },
    /// Seal the keyring with [master_key], opening it with [master_key.previous]: one record
    /// is rewritten, and from then on nothing needs the previous key. Running servers keep
    /// signing.
    Rotate,
    /// Make a fresh term, re-seal every private key and secret under it in small
    /// transactions, drop the older terms and clear their bytes from the database. Online;
    /// run it again to resume one that was stopped.
    Reseal {
        /// How long running servers get to load the fresh term before values move to it.
        #[arg(long, default_value = "3s", value_parser = humantime)]
        settle: Duration,
    },
}

fn humantime(text: &str) -> Result<Duration, String> {
    crate::config::Duration::parse(text).map(|d| Duration::from_secs(d.as_secs()))
}

pub(super) async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let store = ctx.store().await?;
    let now = crate::ops::wall_clock();
    match command {
        Command::Status { json } => {
            let roots = ctx.roots(&store).await.ok();
            let keyring = match &roots {
                Some(roots) => master_key::open(&store, roots, now).await.ok(),
                None => None,
            };
            let status = master_key::status(&store, keyring.as_ref(), roots.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            println!("master key:  {} (source {})", status.master_key_id, status.source);
            println!("rotated:     {}", time(status.rotated_at));
            println!("{:<6} {:<18} {:<22} {:>8}", "TERM", "ID", "CREATED", "SEALED");
            for term in &status.terms {
                let mark = match (term.active, term.legacy) {
                    (true, _) => " (active)",
                    (false, true) => " (the original master key)",
                    _ => "",
                };
                let created = if term.created_at == 0 { "-".to_owned() } else { time(term.created_at) };
                println!("{:<6} {:<18} {:<22} {:>8}{mark}", term.number, term.id, created, term.sealed);
            }
            if status.needs_old_key.is_empty() {
                println!("nothing needs an older master key");
            }
            for reason in &status.needs_old_key {
                println!("needs an older key: {reason}");
            }
            Ok(())
        }
        Command::Rotate => {
            let roots = ctx.roots(&store).await?;
            let rotated = master_key::rotate(&store, &roots, now).await?;
            if rotated.changed {
                eprintln!(
                    "the keyring is now sealed with master key {} (was {}): nothing needs {} any more; remove \
                     [master_key.previous] once every server runs with the new key",
                    rotated.to, rotated.from, rotated.from
                );
            } else {
                eprintln!("the keyring is sealed with master key {} already: nothing to do", rotated.to);
            }
            Ok(())
        }
        Command::Reseal { settle } => {
            let roots = ctx.roots(&store).await?;
            let started = std::time::Instant::now();
            let report = master_key::reseal(&store, &roots, now, settle, |done| {
                eprintln!("re-sealed {done} values");
            })
            .await?;
            eprintln!(
                "every sealed value is under term {} now ({} rewritten by this run, {:.1} s); older terms are gone \
                 and the database holds none of their bytes",
                report.term,
                report.rewritten,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn time(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map_or_else(|| at.to_string(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}
