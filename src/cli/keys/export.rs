//! `keyward keys export KID`: a key's public half.

use anyhow::Context as _;

use super::super::context::Context;
use crate::keys::export::{self, Format};

#[derive(Debug, clap::Args)]
pub(in crate::cli) struct Args {
    /// The key's kid.
    #[arg(allow_hyphen_values = true)]
    kid: String,
    /// Output format.
    #[arg(long, default_value = "jwk", value_parser = export::Format::NAMES)]
    format: String,
}

pub(super) async fn run(ctx: &Context, Args { kid, format }: Args) -> anyhow::Result<()> {
    let store = ctx.store().await?;
    let record = store.keys().await?.into_iter().find(|r| r.kid == kid).with_context(|| format!("no key {kid}"))?;
    let format =
        Format::parse(&format).with_context(|| format!("--format must be one of {}", Format::NAMES.join(", ")))?;
    let text = export::render(&record.kid, record.algorithm, &record.public, format)?;
    println!("{}", text.trim_end());
    Ok(())
}
