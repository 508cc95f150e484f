//! keyward: a JWKS issuer and key-management server.
//!
//! Holds rotating signing keys sealed in SQLite, publishes their public halves as JWKS on a
//! public listener, and signs partner assertions for internal backends from configured
//! profiles on an authenticated internal listener.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod http;
pub mod keys;
pub mod master_key;
pub mod ops;
pub mod partner;
pub mod policy;
pub mod private_files;
pub mod seal;
pub mod startup;
pub mod store;
pub mod vault;
