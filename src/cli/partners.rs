//! `keyward partners`: what each partner has fetched, and the hand-over gates.

use super::context::Context;
use super::format::{now, time};
use crate::keys::gate::GateState;
use crate::ops;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the report as text (or JSON).
pub(super) async fn run(ctx: &Context, Args { json }: Args) -> anyhow::Result<()> {
    let store = ctx.store().await?;
    let report = ops::partners::report(&store, ctx.config(), now()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.partners.is_empty() {
        println!("no [[partner]] is configured");
    }
    for p in &report.partners {
        let age = p.last_fetch_age.map_or("never".to_owned(), |age| format!("{age}s ago"));
        let overdue = if p.overdue { " OVERDUE (expect_fetch_every passed)" } else { "" };
        println!("partner {}: last fetch {} ({age}){overdue}", p.name, time(p.last_fetch));
        println!("  fetches in 24 h: {}; addresses: {}", p.fetches_24h, p.addresses_24h.join(", "));
        for set in &p.key_sets {
            let holds = |kid: &Option<String>, holds: bool| match kid {
                Some(kid) => format!("{kid} ({})", if holds { "held" } else { "NOT held" }),
                None => "-".to_owned(),
            };
            println!(
                "  key set {}: current {}, next {}",
                set.key_set,
                holds(&set.current, set.holds_current),
                holds(&set.next, set.holds_next)
            );
            if let Some(gate) = &set.gate {
                println!("    gate: {}", describe(gate));
            }
        }
    }
    for h in &report.handovers {
        let how = if h.confirmed {
            "confirmed".to_owned()
        } else {
            format!("UNCONFIRMED ({} had not fetched it)", h.missing.join(", "))
        };
        println!("hand-over in {}: {} signs from {}, {how}", h.key_set, h.kid, time(Some(h.at)));
    }
    if !report.unmatched.is_empty() {
        println!("fetches matching no partner, by user agent:");
        for u in &report.unmatched {
            println!("  {:>8}  last {}  {}", u.count, time(Some(u.last_at)), u.user_agent);
        }
    }
    Ok(())
}

/// One line on a gate.
pub(super) fn describe(gate: &GateState) -> String {
    match gate {
        GateState::Released { kid, at } => format!("released: {kid} signs from {}", time(Some(*at))),
        GateState::Waiting { kid, missing, planned, deadline, then } => format!(
            "the hand-over planned for {} waits for {} to fetch {kid}; if not fetched, the current key keeps \
             signing from then, and at {} the gate will {}",
            time(Some(*planned)),
            missing.join(", "),
            time(Some(*deadline)),
            match then {
                crate::keys::gate::OnGateTimeout::Hold => "hold (keep the current key)",
                crate::keys::gate::OnGateTimeout::Proceed => "proceed unconfirmed",
            }
        ),
        GateState::Held { kid, missing, since } => format!(
            "HELD since {}: {} never fetched {kid}; the current key keeps signing",
            time(Some(*since)),
            missing.join(", ")
        ),
        GateState::ProceededUnconfirmed { kid, missing, at } => format!(
            "proceeded UNCONFIRMED at {}: {kid} signs although {} never fetched it",
            time(Some(*at)),
            missing.join(", ")
        ),
    }
}
