//! `keyward serve`: run the public and internal listeners until stopped.

use super::context::Context;
use crate::startup::Application;
use crate::store::Store;

pub(super) async fn run(ctx: &Context) -> anyhow::Result<()> {
    raise_open_file_limit();
    let (_, database) = ctx.describe();
    let roots = ctx.roots(&Store::connect(&database).await?).await?;
    let workers = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
    let app = Application::build(ctx.config().clone(), roots, workers).await?;
    tracing::info!(public = %app.public_addr(), internal = %app.internal_addr(), workers, "listening");
    app.run_until_stopped().await
}

/// Each connection is an open file: the soft limit is raised to the hard one (the usual
/// soft limit, 1,024, would refuse connections long before the server is busy; refused
/// connections are worse than the 503 the server answers when it is).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct passed, nothing else.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        (libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0).then_some((soft, limit.rlim_max))
    };
    if let Some((from, to)) = raised {
        tracing::debug!(from, to, "raised the open file limit");
    }
}
