//! The running application's parts: the served snapshot and its reloads, the scheduler,
//! the issuance ledger and the metrics.

pub mod checkpoint;
mod handover;
pub mod identity;
pub mod ledger;
pub mod metrics;
pub mod observe;
pub mod scheduler;
pub mod snapshot;
mod watch;
