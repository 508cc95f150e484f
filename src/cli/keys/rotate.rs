//! `keyward keys rotate SET`: planned rotation now.

use super::super::context::Context;
use super::super::format::{now, span, time};
use super::{report, report_lagging, report_signer};
use crate::keys::rotation::Refused;
use crate::ops::{self, ActionError};

#[derive(Debug, clap::Args)]
pub(in crate::cli) struct Args {
    /// Key set name.
    #[arg(allow_hyphen_values = true)]
    set: String,
    /// Rotate even if the next key was published too recently (verifiers may not have it).
    #[arg(long)]
    force: bool,
}

pub(super) async fn run(ctx: &Context, Args { set, force }: Args) -> anyhow::Result<()> {
    let (store, custody) = ctx.store_and_custody().await?;
    let steps = ops::rotate(&store, &custody, ctx.config(), &set, force).await.map_err(|err| match err {
        ActionError::Refused(Refused::TooEarly { kid, not_before }) => anyhow::anyhow!(
            "refusing to rotate {set}: the next key {kid} has not been published for publish_ahead yet; \
             it may sign from {} (in {}). Use --force to rotate now anyway (verifiers that cached \
             the JWKS before it appeared will reject its tokens until they refetch)",
            time(Some(not_before)),
            span(not_before - now())
        ),
        ActionError::Refused(Refused::NoNextKey) => anyhow::anyhow!(
            "refusing to rotate {set}: it has no published next key of its configured algorithm yet \
             (the scheduler publishes one; rotate after publish_ahead). Use --force to switch to a \
             brand-new key now (verifiers will reject its tokens until they refetch the JWKS)"
        ),
        other => other.into(),
    })?;
    report(&steps);
    let outcome = ops::Outcome::of(&store, ctx.config(), &set, steps, now()).await?;
    if let Some(signer) = &outcome.new_signer {
        report_signer(signer);
    }
    report_lagging(&outcome.not_yet_fetched);
    Ok(())
}
