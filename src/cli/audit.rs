//! `keyward audit`: which tokens were issued, from the issuance ledger.

use anyhow::Context as _;

use super::context::Context;
use super::format::{now, time};
use crate::config;
use crate::store::rows::Filter;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
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

pub(super) async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let Args { sub, kid, client, profile, since, until, limit, json, count } = args;
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
