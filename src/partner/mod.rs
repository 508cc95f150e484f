//! Partners: trading our assertion or key for a partner's token, and caching it.

pub mod cache;
pub mod exchange;
