//! HTTP: problem+json errors, request logging, the public and the internal listener (with
//! the operator console).

pub mod client_cert;
pub mod console;
pub mod discovery;
pub mod forwarded;
pub mod internal;
pub mod middleware;
pub mod problem;
pub mod public;
pub mod tls;
