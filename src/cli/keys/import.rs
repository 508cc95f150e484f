//! `keyward keys import SET --pem FILE`: an existing private key as the next (or signing) key.

use std::path::PathBuf;

use anyhow::Context as _;

use super::super::context::Context;
use super::{report, report_lagging, report_signer};
use crate::keys::rotation::{ImportAs, Refused, Step};
use crate::ops::{self, ActionError};

#[derive(Debug, clap::Args)]
pub(in crate::cli) struct Args {
    /// Key set name.
    #[arg(allow_hyphen_values = true)]
    set: String,
    /// The PEM file.
    #[arg(long, value_name = "FILE")]
    pem: PathBuf,
    /// Make it the signing key at once (the current key becomes previous).
    #[arg(long)]
    activate: bool,
    /// With --activate: sign with it although no verifier has it yet.
    #[arg(long, requires = "activate")]
    force: bool,
    /// Without --activate: retire the set's current next key to make room for it.
    #[arg(long, conflicts_with = "activate")]
    replace_next: bool,
}

pub(super) async fn run(ctx: &Context, Args { set, pem, activate, force, replace_next }: Args) -> anyhow::Result<()> {
    let pem = zeroize::Zeroizing::new(std::fs::read(&pem).with_context(|| format!("reading {}", pem.display()))?);
    let (store, custody) = ctx.store_and_custody().await?;
    let how = ImportAs { activate, force, replace_next };
    let (kid, outcome) =
        ops::import(&store, &custody, ctx.config(), &set, &pem, how).await.map_err(|err| match err {
            ActionError::Refused(Refused::NeverPublished { kid }) => anyhow::anyhow!(
                "refusing to make {kid} sign in {set}: it has never been published, so verifiers that \
                 cached the JWKS would reject its tokens until they refetch it. Import it without \
                 --activate (it is published as the next key and signs after publish_ahead), or add \
                 --force to sign with it now anyway"
            ),
            ActionError::Refused(Refused::NextKeyExists { kid }) => anyhow::anyhow!(
                "refusing to import into {set}: its next key {kid} is published and would be retired \
                 (unpublished, private half deleted) to make room. Add --replace-next to retire it, or \
                 --activate to sign with the imported key instead"
            ),
            other => other.into(),
        })?;
    // The imported key is the one a creating step places: said once, below.
    let others: Vec<Step> =
        outcome.steps.iter().filter(|s| !matches!(s, Step::CreateCurrent | Step::CreateNext { .. })).cloned().collect();
    report(&others);
    let role = if activate { "the signing key" } else { "the next key" };
    eprintln!("imported {kid} into {set} as {role}");
    if let Some(signer) = &outcome.new_signer {
        report_signer(signer);
    }
    report_lagging(&outcome.not_yet_fetched);
    Ok(())
}
