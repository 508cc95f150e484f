//! Integration tests: the real application on port 0, spoken to over HTTP.

mod certs;
mod cli;
mod discovery;
mod first_hour;
mod gates;
mod handover;
mod helpers;
mod hsm;
mod jwks;
mod keys_and_secrets;
mod openapi;
mod operations;
mod partners;
mod reliability;
mod rotation;
mod sign;
mod storage;
mod tls;
mod verify;
mod walkthrough;
