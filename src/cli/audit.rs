//! `keyward audit`: which tokens were issued, from the issuance ledger.

use std::collections::HashMap;

use anyhow::Context as _;

use super::context::Context;
use super::format::{now, time};
use crate::audit::{Event, EventFilter};
use crate::config;
use crate::ops;
use crate::store::events::Cursor;
use crate::store::rows::Filter;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Only this subject.
    #[arg(long, allow_hyphen_values = true)]
    sub: Option<String>,
    /// Only tokens signed by this key (kids may start with '-').
    #[arg(long, allow_hyphen_values = true)]
    kid: Option<String>,
    /// Only tokens this client asked for.
    #[arg(long, allow_hyphen_values = true)]
    client: Option<String>,
    /// Only this profile.
    #[arg(long, allow_hyphen_values = true)]
    profile: Option<String>,
    /// Issued at or after: RFC 3339 (2026-11-17T00:00:00Z), a date (2026-11-17: its start,
    /// UTC) or an age (24h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Issued before: RFC 3339, a date (its start, UTC: --until 2026-11-18 ends with the
    /// 17th) or an age.
    #[arg(long)]
    until: Option<String>,
    /// At most this many rows, newest first.
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Print only how many tokens match (no limit).
    #[arg(long, conflicts_with_all = ["json", "limit"])]
    count: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Who changed what: key, client, secret and master-key changes, server starts,
    /// checkpoints; oldest first.
    Events(EventsArgs),
    /// Walk every chain of events and ledger rows; name the first record removed,
    /// altered, reordered or inserted; check the heads against a checkpoint. Exits 1 on
    /// any finding.
    Verify(VerifyArgs),
    /// Print every chain's head as JSON: keep it outside the database, and pass it to
    /// `audit verify --checkpoint` later to catch records removed from a chain's end.
    Heads,
}

#[derive(Debug, clap::Args)]
struct EventsArgs {
    /// At or after: RFC 3339, a date (its start, UTC) or an age (24h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Before: RFC 3339, a date (its start, UTC) or an age.
    #[arg(long)]
    until: Option<String>,
    /// Only this actor: an admin client's name, `user@host` for the CLI,
    /// `scheduler@REPLICA`, `server@REPLICA`.
    #[arg(long, allow_hyphen_values = true)]
    actor: Option<String>,
    /// Only this object (`key:KID`, `client:NAME`, `profile:NAME`), or a kind (`client:`).
    #[arg(long, allow_hyphen_values = true)]
    object: Option<String>,
    /// Only this action (`key.revoked`), or a family (`key.`).
    #[arg(long)]
    action: Option<String>,
    /// One JSON object per line (JSON Lines), for log shippers.
    #[arg(long)]
    json: bool,
    /// Keep printing new events as they are recorded, until interrupted.
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// A checkpoint kept outside the database: an `audit.checkpoint` event's JSON (from
    /// the log or `audit events --json`; its signature is verified) or `audit heads`'
    /// output. Every head it holds must still be there, unaltered.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<std::path::PathBuf>,
}

pub(super) async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Events(events)) => return run_events(ctx, events).await,
        Some(Command::Verify(verify)) => return run_verify(ctx, verify).await,
        Some(Command::Heads) => {
            let heads = ops::audit::heads(&ctx.store().await?).await?;
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "heads": heads }))?);
            return Ok(());
        }
        None => {}
    }
    let Args { sub, kid, client, profile, since, until, limit, json, count, .. } = args;
    let instant = |flag: &str, text: Option<String>| -> anyhow::Result<Option<i64>> {
        text.map(|text| {
            audit_instant(&text, now()).with_context(|| {
                format!(
                    "{flag} {text:?} is neither an RFC 3339 time (2026-11-17T09:00:00Z), a date (2026-11-17) \
                     nor an age (24h, 7d)"
                )
            })
        })
        .transpose()
    };
    anyhow::ensure!(limit >= 1, "--limit must be at least 1");
    let filter =
        Filter { sub, kid, client, profile, since: instant("--since", since)?, until: instant("--until", until)? };
    let store = ctx.store().await?;
    if count {
        println!("{}", store.issuance_count(&filter).await?);
        return Ok(());
    }
    let rows = store.issuance(&filter, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<24} {:<16} {:<16} {:<24} {:<6} {:<44} CLAIMS",
        "ISSUED", "JTI", "PROFILE", "CLIENT", "SUB", "ALG", "KID"
    );
    for r in &rows {
        println!(
            "{:<20} {:<24} {:<16} {:<16} {:<24} {:<6} {:<44} {}",
            time(Some(r.iat)),
            r.jti,
            r.profile,
            r.client,
            r.sub.as_deref().unwrap_or("-"),
            r.alg,
            r.kid.as_deref().unwrap_or("-"),
            r.claim_names.join(",")
        );
    }
    eprintln!("{} row(s)", rows.len());
    Ok(())
}
/// Parses an `--since`/`--until` bound.
fn bound(flag: &str, text: Option<String>) -> anyhow::Result<Option<i64>> {
    text.map(|text| {
        audit_instant(&text, now()).with_context(|| {
            format!("{flag} {text:?} is neither an RFC 3339 time (2026-11-17T09:00:00Z), a date (2026-11-17) nor an age (24h, 7d)")
        })
    })
    .transpose()
}

/// How often `--follow` looks for new events.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// How far before the newest event seen each look of `--follow` reaches back (seconds).
const FOLLOW_OVERLAP: i64 = 10;

/// Events a read takes at most.
const PAGE: i64 = 1000;

async fn run_events(ctx: &Context, args: EventsArgs) -> anyhow::Result<()> {
    let EventsArgs { since, until, actor, object, action, json, follow } = args;
    let filter =
        EventFilter { since: bound("--since", since)?, until: bound("--until", until)?, actor, object, action };
    let store = ctx.store().await?;
    if !json {
        println!("{:<20} {:<24} {:<22} {:<40} REASON", "AT", "ACTOR", "ACTION", "OBJECT");
    }
    let mut cursor: Option<Cursor> = None;
    let mut shown = 0usize;
    // While following: events already printed, by (writer, seq), with their times. Each
    // look reaches back FOLLOW_OVERLAP seconds before the newest event seen, so that an
    // event committed late with an earlier time (a slow transaction, another replica's
    // clock) is not missed, and none is printed twice.
    let mut printed: HashMap<(String, i64), i64> = HashMap::new();
    let mut newest: Option<i64> = None;
    loop {
        let events = store.events(&filter, cursor.as_ref(), PAGE).await?;
        for event in &events {
            if printed.contains_key(&(event.writer.clone(), event.seq)) {
                continue;
            }
            print_event(event, json)?;
            shown += 1;
            newest = newest.max(Some(event.at));
            if follow {
                printed.insert((event.writer.clone(), event.seq), event.at);
            }
        }
        if let Some(last) = events.last() {
            cursor = Some(Cursor::after(last));
        }
        if events.len() as i64 == PAGE {
            continue;
        }
        if !follow {
            break;
        }
        if let Some(newest) = newest {
            let from = newest - FOLLOW_OVERLAP;
            cursor = Some(Cursor { at: from, writer: String::new(), seq: 0 });
            printed.retain(|_, at| *at >= from);
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if !json {
        eprintln!("{shown} event(s)");
    }
    Ok(())
}

fn print_event(event: &Event, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(event)?);
    } else {
        println!(
            "{:<20} {:<24} {:<22} {:<40} {}",
            time(Some(event.at)),
            event.actor.name(),
            event.action,
            event.object,
            event.reason.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

async fn run_verify(ctx: &Context, args: VerifyArgs) -> anyhow::Result<()> {
    let store = ctx.store().await?;
    let checkpoint = match &args.checkpoint {
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            let checkpoint = ops::audit::read_checkpoint(&store, &value)
                .await
                .with_context(|| format!("checkpoint {}", file.display()))?;
            match &checkpoint.signed_by {
                Some((kid, set, iat)) => {
                    eprintln!("checkpoint of {}: signature valid (key {kid} of key set {set})", time(Some(*iat)))
                }
                None => eprintln!("checkpoint: unsigned heads"),
            }
            Some(checkpoint)
        }
        None => None,
    };
    let found = ops::audit::verify(&store, checkpoint.as_ref().map(|c| &c.heads)).await?;
    for problem in &found.problems {
        println!("{problem}");
    }
    let checked = if checkpoint.is_some() { " and the checkpoint's heads" } else { "" };
    eprintln!(
        "checked {} event(s) of {} writer(s) and {} ledger row(s) of {} writer(s){checked}",
        found.events, found.event_writers, found.ledger_rows, found.ledger_writers
    );
    if found.problems.is_empty() {
        println!("ok: every chain is intact");
        Ok(())
    } else {
        anyhow::bail!("{} problem(s) found; the first: {}", found.problems.len(), found.problems[0])
    }
}

/// An audit bound: RFC 3339, a date (its midnight, UTC) or an age before `now`.
fn audit_instant(text: &str, now: i64) -> Option<i64> {
    if let Some(at) = config::parse_instant(text) {
        return Some(at);
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
    }
    crate::config::Duration::parse(text).ok().map(|age| now - age.as_secs_i64())
}
