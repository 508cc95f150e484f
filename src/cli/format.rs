//! How commands show times and durations.

use std::net::SocketAddr;

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) use crate::config::human_span as span;

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
