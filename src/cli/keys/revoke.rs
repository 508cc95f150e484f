//! `keyward keys revoke KID`: emergency revocation.

use super::super::context::Context;
use super::{report, report_lagging, report_signer};
use crate::ops;

#[derive(Debug, clap::Args)]
pub(in crate::cli) struct Args {
    /// The key's kid.
    #[arg(allow_hyphen_values = true)]
    kid: String,
}

pub(super) async fn run(ctx: &Context, Args { kid }: Args) -> anyhow::Result<()> {
    let (store, custody) = ctx.store_and_custody().await?;
    // Only a key that verifiers could still fetch leaves the JWKS; a retired one already has.
    let was_published = store.key(&kid).await?.is_some_and(|record| record.is_published());
    let outcome = ops::revoke(&store, &custody, ctx.config(), &kid).await?;
    report(&outcome.steps);
    if let Some(signer) = &outcome.new_signer {
        report_signer(signer);
    }
    report_lagging(&outcome.not_yet_fetched);
    if was_published {
        eprintln!("running servers drop {kid} from the JWKS within about 0.1 s, as soon as each sees the change");
    } else {
        eprintln!("{kid} was no longer in the JWKS");
    }
    Ok(())
}
