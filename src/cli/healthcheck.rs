//! `keyward healthcheck`: exit 0 if the public listener's /healthz answers 200.

use std::time::Duration;

use anyhow::Context as _;

use super::context::Context;
use super::format::local_target;

pub(super) async fn run(ctx: &Context) -> anyhow::Result<()> {
    let target = local_target(ctx.config().server.public_addr);
    let url = format!("http://{target}/healthz");
    // The listener is on this machine: an HTTP(S)_PROXY of the environment must not be asked.
    let client = reqwest::Client::builder().no_proxy().build()?;
    let response = client
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    anyhow::ensure!(response.status() == reqwest::StatusCode::OK, "{target}/healthz did not answer 200");
    Ok(())
}
