//! HTTP: problem+json errors, request logging, the public and the internal listener.

pub mod forwarded;
pub mod internal;
pub mod middleware;
pub mod problem;
pub mod public;
