//! `keyward onboarding PROFILE`: what a partner asks for, then a check that the published
//! JWKS holds our keys.

use std::time::Duration;

use anyhow::{bail, Context as _};

use super::context::Context;
use super::format::{local_target, now};
use crate::keys::KeyState;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Profile name.
    #[arg(allow_hyphen_values = true)]
    profile: String,
    /// Check the JWKS served by this configuration's own public listener instead of iss.
    #[arg(long)]
    local: bool,
}

/// Prints the onboarding values on standard output, then checks that the set's current and
/// next keys are served at `iss + jwks_uri`, or with `local` at this configuration's own
/// public listener (report on standard error; failure is a non-zero exit).
pub(super) async fn run(ctx: &Context, Args { profile: name, local }: Args) -> anyhow::Result<()> {
    let config = ctx.config();
    let profile =
        config.profiles.iter().find(|p| p.name == name).with_context(|| format!("no profile is named {name:?}"))?;
    let (Some(set_name), Some(issuer)) = (&profile.key_set, &profile.issuer) else {
        bail!("profile {name} is a shared-secret profile: partners verify it with the shared secret, not a JWKS");
    };
    let set = config.key_set(set_name).with_context(|| format!("no key set {set_name}"))?;
    let jwks_uri = match profile.static_claims.get("jwks_uri").and_then(|v| v.as_str()) {
        Some(uri) => uri.to_owned(),
        None => {
            set.jwks_paths.first().cloned().with_context(|| format!("key set {set_name} publishes no JWKS path"))?
        }
    };
    // NPM asks for partner_name, iss and jwks_uri; the audience names the partner too.
    let from_audience = profile
        .audience
        .as_deref()
        .and_then(|aud| aud.split("/partners/").nth(1))
        .and_then(|rest| rest.split('/').next())
        .filter(|name| !name.is_empty());
    match (&profile.partner_name, from_audience) {
        (Some(partner_name), _) => println!("partner_name: {partner_name}"),
        (None, Some(partner_name)) => println!("partner_name: {partner_name}"),
        (None, None) => println!("partner_name: (not set: add partner_name to [[profile]] {name:?})"),
    }
    if profile.partner_name.is_none() {
        eprintln!(
            "note: partner_name {}; set partner_name in [[profile]] {name:?} to state it",
            if from_audience.is_some() { "is taken from the audience" } else { "is not configured" }
        );
    }
    println!("iss: {issuer}");
    println!("jwks_uri: {jwks_uri}");

    let store = ctx.store().await?;
    let keys = store.keys_of_set(set_name).await?;
    let now = now();
    let wanted: Vec<(&str, String)> = [KeyState::Current, KeyState::Next]
        .into_iter()
        .filter_map(|state| {
            keys.iter()
                .find(|k| k.state_at(now) == state)
                .map(|k| (if state == KeyState::Current { "current" } else { "next" }, k.kid.clone()))
        })
        .collect();
    let url = if local {
        let path = if set.jwks_paths.contains(&jwks_uri) { jwks_uri.clone() } else { set.jwks_paths[0].clone() };
        format!("http://{}{path}", local_target(config.server.public_addr))
    } else {
        format!("{}{jwks_uri}", issuer.trim_end_matches('/'))
    };
    eprintln!("checking {url} ...");
    let response =
        reqwest::Client::new().get(&url).timeout(Duration::from_secs(10)).send().await.with_context(|| {
            if local {
                format!("{url} could not be fetched: is `keyward serve` running with this configuration?")
            } else {
                format!("{url} could not be fetched: route it to keyward's public listener")
            }
        })?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url} answered HTTP {status}");
    let jwks: serde_json::Value = response.json().await.with_context(|| format!("{url} did not answer JSON"))?;
    let published: Vec<&str> =
        jwks["keys"].as_array().map(|keys| keys.iter().filter_map(|k| k["kid"].as_str()).collect()).unwrap_or_default();
    eprintln!("{url} answered {status} with {} key(s)", published.len());
    let mut missing = 0;
    for (role, kid) in &wanted {
        let found = published.contains(&kid.as_str());
        eprintln!("  {role} key {kid}: {}", if found { "published" } else { "MISSING" });
        missing += usize::from(!found);
    }
    anyhow::ensure!(wanted.len() == 2, "key set {set_name} lacks a current or next key: start `keyward serve` once");
    anyhow::ensure!(missing == 0, "{missing} key(s) missing from {url}: is it served by this keyward's database?");
    if local {
        eprintln!("ok: this server publishes our keys; check {issuer}{jwks_uri} too once it is routed here");
    } else {
        eprintln!("ok: the partner will find our keys");
    }
    Ok(())
}
