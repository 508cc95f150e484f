//! The built-in defaults are `keys.example` itself, read at first use: the file operators
//! copy is the configuration keyward runs with when there is none, and a field a file
//! leaves out takes the value `keys.example` gives it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;

use serde::de::DeserializeOwned;

use super::{parse_toml, Config, Duration, ServerConfig};
use crate::keys::Algorithm;

/// The complete, commented example shipped beside the binary's sources.
pub(super) const EXAMPLE: &str = include_str!("../../keys.example");

/// `keys.example` as plain TOML, without the schema: the per-field defaults below read it,
/// so parsing the example into a [`Config`] never needs a default it is the source of.
#[allow(clippy::expect_used, reason = "keys.example is compiled in; a test parses it")]
static EXAMPLE_TABLE: LazyLock<toml::Table> =
    LazyLock::new(|| toml::from_str(EXAMPLE).expect("keys.example is valid TOML"));

#[allow(clippy::expect_used, reason = "keys.example is compiled in; a test parses it")]
static BUILT_IN: LazyLock<Config> =
    LazyLock::new(|| parse_toml(EXAMPLE, "keys.example").expect("keys.example is a valid configuration"));

impl Default for Config {
    /// The built-in defaults: `keys.example`, parsed.
    fn default() -> Self {
        BUILT_IN.clone()
    }
}

impl Default for ServerConfig {
    /// `keys.example`'s `[server]`.
    fn default() -> Self {
        example(&["server"])
    }
}

/// The value at `path` in `keys.example`, the first entry of an array of tables standing
/// for every entry (`["key_set", "rsa_bits"]` is the first `[[key_set]]`'s `rsa_bits`).
#[allow(clippy::expect_used, reason = "a test checks that keys.example gives every defaulted field")]
fn example<T: DeserializeOwned>(path: &[&str]) -> T {
    let mut value = toml::Value::Table(EXAMPLE_TABLE.clone());
    for key in path {
        value = match value {
            toml::Value::Array(items) => items.into_iter().next().and_then(|item| item.get(key).cloned()),
            other => other.get(key).cloned(),
        }
        .expect("keys.example gives every defaulted field");
    }
    value.try_into().expect("keys.example's values fit the schema")
}

/// `fn field() -> Type` for each field: its value in `keys.example`'s first `[table]`.
macro_rules! from_example {
    ($table:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        pub(super) mod $table {
            #[allow(unused_imports, reason = "each table uses some of them")]
            use super::*;
            $(pub(in crate::config) fn $field() -> $ty {
                example(&[stringify!($table), stringify!($field)])
            })*
        }
    };
}

from_example!(server {
    public_addr: SocketAddr,
    internal_addr: SocketAddr,
    database_url: String,
    master_key_file: PathBuf,
    ledger_retention: Duration,
    audit_checkpoint_interval: Duration,
    ledger_commit_interval_ms: u64,
    rate_limit: u32,
    rate_burst: u32,
    request_body_timeout: Duration,
    request_deadline: Duration,
    max_signing_requests: u32,
    console: bool,
    console_session: Duration,
});

from_example!(key_set {
    algorithm: Algorithm,
    rsa_bits: u32,
    jwks_paths: Vec<String>,
    jwks_max_age: Duration,
    rotate_every: Duration,
    publish_ahead: Duration,
    retain_after: Duration,
    clock_skew: Duration,
});

from_example!(profile { subject_pattern: String, default_ttl: Duration, max_ttl: Duration });
