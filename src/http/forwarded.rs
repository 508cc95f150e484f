//! The client's address: the peer's, unless the peer is a trusted proxy, then the
//! rightmost untrusted hop of `Forwarded` (or else `X-Forwarded-For`). Headers from any
//! other peer are ignored, so a client cannot pass for another by sending them.

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::HeaderMap;

use crate::config::Cidr;

/// The address a request comes from, as far as it can be trusted.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|c| c.contains(address));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers.get_all("forwarded").filter_map(|v| v.to_str().ok()).collect();
    let hops: Vec<IpAddr> = if forwarded.is_empty() {
        let values = headers.get_all("x-forwarded-for").filter_map(|v| v.to_str().ok());
        values.flat_map(|v| v.split(',')).filter_map(parse_hop).collect()
    } else {
        let elements = forwarded.into_iter().flat_map(|v| v.split(','));
        let pairs = elements.flat_map(|element| element.split(';'));
        pairs
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
            .filter_map(|(_, value)| parse_hop(value))
            .collect()
    };
    // Each proxy appends the address it got the request from: the rightmost hop that is
    // not one of ours is the client; when all are ours, the leftmost.
    hops.iter().rev().find(|hop| !is_trusted(**hop)).or(hops.first()).copied().unwrap_or(peer)
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[').and_then(|rest| rest.split(']').next()).and_then(|inner| inner.parse().ok())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_proxy() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let spoofed = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_address(ip("198.51.100.7"), &spoofed, &trusted), ip("198.51.100.7"));
        assert_eq!(client_address(ip("10.1.2.3"), &spoofed, &trusted), ip("203.0.113.9"));
        assert_eq!(client_address(ip("10.1.2.3"), &spoofed, &[]), ip("10.1.2.3"), "no proxy is trusted");
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        // The client put a fake first hop; our proxies appended the real one and themselves.
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(client_address(ip("10.0.0.1"), &chain, &trusted), ip("203.0.113.9"));
        let forwarded = headers(&[
            ("forwarded", "for=1.2.3.4, for=\"[2001:db8::1]:4711\";proto=https"),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(client_address(ip("10.0.0.1"), &forwarded, &trusted), ip("2001:db8::1"));
        let only_ours = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.5")]);
        assert_eq!(client_address(ip("10.0.0.1"), &only_ours, &trusted), ip("10.0.0.9"));
    }
}
