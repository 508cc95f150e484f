//! keyward: a JWKS issuer and key-management server.
//!
//! Holds rotating signing keys sealed in SQLite, publishes their public halves as JWKS on a
//! public listener, and signs partner assertions for internal backends from configured
//! profiles on an authenticated internal listener.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod cli;
pub mod clients;
pub mod config;
pub mod db;
pub mod duration;
pub mod exchange;
pub mod export;
pub mod internal_api;
pub mod jwks;
pub mod keys;
pub mod keystore;
pub mod ledger;
pub mod lifecycle;
pub mod metrics;
pub mod private_files;
pub mod problem;
pub mod profiles;
pub mod public_api;
pub mod ratelimit;
pub mod request_log;
pub mod rotation;
pub mod scheduler;
pub mod seal;
pub mod secrets;
pub mod startup;
pub mod state;
pub mod telemetry;
