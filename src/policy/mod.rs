//! Policy: what a profile lets a caller sign, and how often a client may ask.

pub mod certificate;
pub mod client;
pub mod profile;
pub mod ratelimit;
