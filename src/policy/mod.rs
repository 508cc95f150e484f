//! Policy: what a profile lets a caller sign, what a client may administer, and how often
//! a client may ask.

pub mod certificate;
pub mod client;
pub mod identity;
pub mod permission;
pub mod profile;
pub mod ratelimit;
