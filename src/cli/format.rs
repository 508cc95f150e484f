//! How commands show times and durations.

use std::net::SocketAddr;

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Seconds as "1d 55m": only the units that are not zero.
pub(super) fn span(secs: i64) -> String {
    let parts = [(secs / 86_400, "d"), (secs % 86_400 / 3_600, "h"), (secs % 3_600 / 60, "m"), (secs % 60, "s")];
    let shown: Vec<String> = parts.iter().filter(|(n, _)| *n != 0).map(|(n, unit)| format!("{n}{unit}")).collect();
    if shown.is_empty() {
        "0s".to_owned()
    } else {
        shown.join(" ")
    }
}

pub(super) fn time(ts: Option<i64>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// Where to reach a listener bound to `addr` from this machine (loopback for 0.0.0.0).
pub(super) fn local_target(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() },
            addr.port(),
        )
    } else {
        addr
    }
}
