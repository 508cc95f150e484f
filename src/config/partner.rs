//! `[[partner]]`: the verifiers that fetch our JWKS, recognised by source address and user
//! agent, and whether a hand-over waits until they hold the next key. Parsed once: the
//! address ranges and the user-agent pattern are types here, not strings checked later.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{check_name, Config, ConfigError, Duration};
use crate::keys::gate::OnGateTimeout;

/// One partner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// Unique name, in reports and metrics.
    pub name: String,
    /// The key sets whose JWKS this partner fetches.
    pub key_sets: Vec<String>,
    /// How its fetches are recognised.
    #[serde(rename = "match")]
    pub matches: PartnerMatch,
    /// Alert when the partner has not fetched for this long.
    #[serde(default)]
    pub expect_fetch_every: Option<Duration>,
    /// Whether a next key signs only once this partner has fetched a JWKS holding it.
    #[serde(default)]
    pub gate_handover: bool,
    /// How long past the planned instant a gate waits for this partner.
    #[serde(default = "default_gate_max_wait")]
    pub gate_max_wait: Duration,
    /// What happens when `gate_max_wait` has passed.
    #[serde(default)]
    pub on_gate_timeout: OnGateTimeout,
}

fn default_gate_max_wait() -> Duration {
    Duration::from_secs(72 * 3_600)
}

/// A fetch is the partner's when it comes from one of `cidrs` (if any are given) and its
/// user agent matches `user_agent` (if given); at least one of the two is required.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerMatch {
    /// Source address ranges.
    #[serde(default)]
    pub cidrs: Vec<Cidr>,
    /// A regular expression the `User-Agent` header must match.
    #[serde(default)]
    pub user_agent: Option<UserAgentPattern>,
}

impl PartnerMatch {
    /// Whether a fetch from `address` with `user_agent` is this partner's.
    pub fn matches(&self, address: IpAddr, user_agent: Option<&str>) -> bool {
        let by_address = self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(address));
        let by_agent = match &self.user_agent {
            Some(pattern) => user_agent.is_some_and(|ua| pattern.0.is_match(ua)),
            None => true,
        };
        by_address && by_agent
    }
}

/// An address range such as `203.0.113.0/24` (a bare address is a range of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether `address` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&address)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = IpNet::from_str(text)
            .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
            .map_err(|_| format!("{text:?} is not an address range like 203.0.113.0/24 or 2001:db8::/32"))?;
        Ok(Cidr(parsed.trunc()))
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        cidr.0.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A compiled user-agent pattern.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserAgentPattern(regex::Regex);

impl PartialEq for UserAgentPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl TryFrom<String> for UserAgentPattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        regex::Regex::new(&text)
            .map(UserAgentPattern)
            .map_err(|err| format!("{text:?} is not a regular expression: {err}"))
    }
}

impl From<UserAgentPattern> for String {
    fn from(pattern: UserAgentPattern) -> String {
        pattern.0.as_str().to_owned()
    }
}

/// The `[[partner]]` rules: unique names, known key sets, some way to recognise fetches.
pub(super) fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    for partner in &config.partners {
        let fail = |field: &str, message: String| ConfigError {
            source_name: source_name.to_owned(),
            location: format!("[[partner]] {:?}, field {field}", partner.name),
            message,
        };
        check_name(&partner.name).map_err(|m| fail("name", m))?;
        if !names.insert(partner.name.as_str()) {
            return Err(fail("name", "another [[partner]] has the same name".to_owned()));
        }
        if partner.key_sets.is_empty() {
            return Err(fail("key_sets", "name at least one [[key_set]] this partner fetches".to_owned()));
        }
        if let Some(unknown) = partner.key_sets.iter().find(|s| config.key_set(s).is_none()) {
            return Err(fail("key_sets", format!("there is no [[key_set]] named {unknown:?}")));
        }
        if partner.matches.cidrs.is_empty() && partner.matches.user_agent.is_none() {
            return Err(fail(
                "match",
                "give cidrs, user_agent or both, so that its fetches can be recognised".to_owned(),
            ));
        }
        if partner.gate_handover && partner.gate_max_wait.as_secs() == 0 {
            return Err(fail("gate_max_wait", "must be longer than 0s".to_owned()));
        }
        if partner.expect_fetch_every.is_some_and(|every| every.as_secs() == 0) {
            return Err(fail("expect_fetch_every", "must be longer than 0s".to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(toml_match: &str) -> PartnerMatch {
        toml::from_str(toml_match).unwrap()
    }

    #[test]
    fn a_fetch_matches_by_range_and_user_agent_when_both_are_given() {
        let both = partner("cidrs = [\"203.0.113.0/24\"]\nuser_agent = \"^npm-partner-auth/\"");
        let inside: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(both.matches(inside, Some("npm-partner-auth/1.2")));
        assert!(!both.matches(inside, Some("curl/8")));
        assert!(!both.matches("198.51.100.1".parse().unwrap(), Some("npm-partner-auth/1.2")));
        assert!(!both.matches(inside, None));
        // IPv4 seen through an IPv6 socket.
        assert!(both.matches("::ffff:203.0.113.9".parse().unwrap(), Some("npm-partner-auth/1")));
        let by_address = partner("cidrs = [\"127.0.0.2\"]");
        assert!(by_address.matches("127.0.0.2".parse().unwrap(), None));
        assert!(!by_address.matches("127.0.0.3".parse().unwrap(), None));
    }

    #[test]
    fn bad_ranges_and_patterns_are_refused_when_parsed() {
        assert!(toml::from_str::<PartnerMatch>("cidrs = [\"203.0.113.0/33\"]").is_err());
        assert!(toml::from_str::<PartnerMatch>("user_agent = \"(\"").is_err());
    }
}
