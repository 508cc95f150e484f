//! `keyward keys`: inspect, rotate, revoke, export and import signing keys.

mod export;
mod import;
mod list;
mod revoke;
mod rotate;
mod schedule;

use super::context::Context;
use super::format::{now, span, time};
use crate::keys::rotation::{Exposure, Step};
use crate::ops;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// List every key: set, kid, algorithm, state and timestamps.
    List(list::Args),
    /// Planned rotation now: the next key signs, if it has been published for publish_ahead.
    Rotate(rotate::Args),
    /// Emergency: the key leaves the JWKS of running servers within about 0.1 s; if it was
    /// signing, the next key takes over.
    Revoke(revoke::Args),
    /// Print a key's public half: jwk (default, as the JWKS publishes it), pem or pem-base64
    /// (what PaymentsGate calls public_key); the same as GET /v1/keys/{kid}/public.
    Export(export::Args),
    /// Add an existing private key (PKCS#1, PKCS#8 or SEC1 PEM) to SET as its next key.
    Import(import::Args),
    /// Every key's publication and signing window, past and planned.
    Schedule(schedule::Args),
}

pub(super) async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List(args) => list::run(ctx, args).await,
        Command::Rotate(args) => rotate::run(ctx, args).await,
        Command::Revoke(args) => revoke::run(ctx, args).await,
        Command::Export(args) => export::run(ctx, args).await,
        Command::Import(args) => import::run(ctx, args).await,
        Command::Schedule(args) => schedule::run(ctx, args).await,
    }
}

/// Says on standard error what a key action did.
fn report(steps: &[Step]) {
    for step in steps {
        match step {
            Step::Promote { kid } => eprintln!("{kid} is now the signing key"),
            Step::Revoke { kid } => eprintln!("{kid} is revoked: unpublished, private half deleted"),
            Step::Retire { kid } => eprintln!("{kid} is retired"),
            Step::CreateCurrent => eprintln!("created a new signing key"),
            Step::CreateNext { activates_at } => {
                eprintln!("published a new next key; it signs from {}", time(Some(*activates_at)))
            }
            Step::Schedule { kid, activates_at } => eprintln!("{kid} signs from {}", time(Some(*activates_at))),
        }
    }
}

/// Names each partner that has not fetched a new signing key (no gate holds an operator).
fn report_lagging(lagging: &[ops::partners::NotYetFetched]) {
    for partner in lagging {
        eprintln!(
            "warning: partner {} has not yet fetched the new signing key (last fetch {}): it may reject its \
             tokens until it refetches the JWKS",
            partner.partner,
            time(partner.last_fetch)
        );
    }
}

/// Says how long a new signing key has been published, and what that means for verifiers
/// holding a cached JWKS.
fn report_signer(signer: &Exposure) {
    let kid = &signer.kid;
    match signer.may_be_rejected_until {
        Some(until) => eprintln!(
            "WARNING: the new signing key {kid} has been published for only {}, less than jwks_max_age + \
             clock_skew ({}): verifiers that cached the JWKS before it appeared may reject its tokens until {} \
             (in {}). Ask partners to refetch our JWKS (purge their cache) if they can, or expect rejections \
             until then",
            span(signer.published_for),
            span(signer.cache_window),
            time(Some(until)),
            span((until - now()).max(0))
        ),
        None => eprintln!(
            "the new signing key {kid} has been published for {}, at least jwks_max_age + clock_skew ({}): \
             verifiers with a cached JWKS have it",
            span(signer.published_for),
            span(signer.cache_window)
        ),
    }
}
