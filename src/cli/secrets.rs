//! `keyward secrets`: the shared secrets of HS256/HS512 profiles.

use std::io::{IsTerminal, Read};

use anyhow::Context as _;

use super::context::Context;
use super::format::{now, time};
use crate::ops::secrets;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Store PROFILE's secret, read from standard input (never from the command line).
    Set {
        /// Profile name.
        #[arg(allow_hyphen_values = true)]
        profile: String,
    },
    /// List the shared-secret profiles, whether their secret is set, with dates (never the
    /// secrets).
    List,
}

pub(super) async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Set { profile } => {
            if std::io::stdin().is_terminal() {
                eprintln!("type the secret, then press Ctrl-D (it is not echoed back anywhere else)");
            }
            let mut secret = zeroize::Zeroizing::new(Vec::new());
            std::io::stdin().read_to_end(&mut secret).context("reading the secret from standard input")?;
            // One trailing newline is the shell's, not the secret's.
            if secret.ends_with(b"\n") {
                secret.pop();
                if secret.ends_with(b"\r") {
                    secret.pop();
                }
            }
            anyhow::ensure!(!secret.is_empty(), "no secret on standard input");
            let (store, keyring) = ctx.store_and_keyring().await?;
            secrets::set(&store, &keyring, ctx.config(), &profile, &secret, now()).await?;
            eprintln!("stored the secret of profile {profile}; running servers use it within seconds");
            Ok(())
        }
        Command::List => {
            let store = ctx.store().await?;
            println!("{:<24} {:<8} {:<20} UPDATED", "PROFILE", "SECRET", "CREATED");
            let listed = secrets::list(&store, ctx.config()).await?;
            for info in &listed {
                match info.set {
                    Some((created, updated)) => {
                        println!(
                            "{:<24} {:<8} {:<20} {}",
                            info.profile,
                            "set",
                            time(Some(created)),
                            time(Some(updated))
                        )
                    }
                    None => println!("{:<24} {:<8} {:<20} -", info.profile, "NOT SET", "-"),
                }
            }
            for info in listed.iter().filter(|i| i.set.is_none()) {
                eprintln!(
                    "profile {} cannot sign until its secret is set: keyward secrets set {}",
                    info.profile, info.profile
                );
            }
            Ok(())
        }
    }
}
