//! `keyward keys revoke KID`: emergency revocation.

use super::super::context::Context;
use super::super::format::now;
use super::{report, report_signer};
use crate::ops;

#[derive(Debug, clap::Args)]
pub(in crate::cli) struct Args {
    /// The key's kid.
    #[arg(allow_hyphen_values = true)]
    kid: String,
}

pub(super) async fn run(ctx: &Context, Args { kid }: Args) -> anyhow::Result<()> {
    let (store, master) = ctx.store_and_master_key().await?;
    let outcome = ops::revoke(&store, &master, ctx.config(), &kid, now()).await?;
    report(&outcome.steps);
    if let Some(signer) = &outcome.new_signer {
        report_signer(signer);
    }
    eprintln!("running servers drop {kid} from the JWKS within seconds");
    Ok(())
}
