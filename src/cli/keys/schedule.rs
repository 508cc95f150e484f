//! `keyward keys schedule`: every key's publication and signing window.

use super::super::context::Context;
use super::super::format::{now, span, time};
use crate::keys::timeline::Moment;
use crate::ops;

#[derive(Debug, clap::Args)]
pub(in crate::cli) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(ctx: &Context, Args { json }: Args) -> anyhow::Result<()> {
    let store = ctx.store().await?;
    let sets = ops::schedule(&store, ctx.config(), now()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sets)?);
        return Ok(());
    }
    let moment = |m: Option<Moment>| match m {
        // A gate holding past the planned instant: no time until the partner fetches.
        Some(Moment { at: i64::MAX, .. }) => "held by gate".to_owned(),
        Some(Moment { at, planned: true }) => format!("~{}", time(Some(at))),
        Some(Moment { at, planned: false }) => time(Some(at)),
        None => "-".to_owned(),
    };
    for set in sets {
        println!(
            "key set {}: each key signs for {}, is published {} before it signs and {} after (~ = planned)",
            set.name,
            span(set.rotate_every),
            span(set.publish_ahead),
            span(set.published_after_signing)
        );
        println!(
            "  {:<44} {:<9} {:<21} {:<21} {:<21} {:<21}",
            "KID", "STATE", "PUBLISHED FROM", "PUBLISHED UNTIL", "SIGNING FROM", "SIGNING UNTIL"
        );
        if let Some(gate) = &set.gate {
            println!("  gate: {}", super::super::partners::describe(gate));
        }
        for k in set.keys {
            println!(
                "  {:<44} {:<9} {:<21} {:<21} {:<21} {:<21}",
                k.kid,
                k.state.to_string(),
                moment(k.published_from),
                moment(k.published_until),
                moment(k.signing_from),
                moment(k.signing_until)
            );
        }
    }
    Ok(())
}
