//! Integration tests: the real application on port 0, spoken to over HTTP.

mod certs;
mod cli;
mod deadline;
mod discovery;
mod first_hour;
mod gates;
mod handover;
mod helpers;
mod hsm;
mod jwks;
mod keys_and_secrets;
mod migrate;
mod openapi;
mod operations;
mod overload;
mod partners;
mod postgres;
mod reliability;
mod replicas;
mod rotation;
mod sign;
mod storage;
mod stores;
mod tls;
mod verify;
mod walkthrough;
