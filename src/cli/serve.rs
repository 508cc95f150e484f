//! `keyward serve`: run the public and internal listeners until stopped.

use super::context::Context;
use crate::startup::Application;
use crate::store::Store;

pub(super) async fn run(ctx: &Context) -> anyhow::Result<()> {
    let (_, database) = ctx.describe();
    let roots = ctx.roots(&Store::connect(&database).await?).await?;
    let workers = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
    let app = Application::build(ctx.config().clone(), roots, workers).await?;
    tracing::info!(public = %app.public_addr(), internal = %app.internal_addr(), workers, "listening");
    app.run_until_stopped().await
}
