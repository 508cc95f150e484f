//! The running application's parts: the issuance ledger and the metrics.

pub mod ledger;
pub mod metrics;
