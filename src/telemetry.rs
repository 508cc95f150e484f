//! Logging: human-readable by default, JSON with `KEYWARD_LOG_FORMAT=json`, level from `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to standard error: at `default_level` unless
/// `RUST_LOG` says otherwise, coloured only when standard error is a terminal. A `RUST_LOG`
/// that is not a filter is refused, naming it, rather than silently ignored.
pub fn init(json: bool, default_level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(&value).map_err(|err| {
            format!("environment: RUST_LOG: {value:?} is not a log filter ({err}): use e.g. debug or keyward=debug,sqlx=warn")
        })?,
        _ => EnvFilter::new(default_level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
    Ok(())
}
