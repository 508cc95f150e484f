//! A `[[profile]]` of the configuration into a [`Profile`], once, at start-up: whatever a
//! request will rely on is checked here and kept in its parsed form.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;

use super::{AccountKey, BearerAssertion, Exchange, Profile, ProfileKind};
use crate::config::{
    check_name, parse_instant, ClaimType, Config, ConfigError, ExchangeConfig, ExchangeStyle, KeySetConfig,
    ProfileConfig, DEFAULT_CLAIM_TYPE, PLACEHOLDERS, REGISTERED_CLAIMS, TTL_HARD_CAP,
};

/// A profile field that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    /// The field, e.g. `max_ttl` or `exchange.token_url`.
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

fn refuse<T>(field: &'static str, message: impl Into<String>) -> Result<T, ProfileError> {
    Err(ProfileError { field, message: message.into() })
}

/// Parses every profile of `config`; the first that cannot be used is reported with the
/// file, the profile and the field.
pub fn parse_profiles(config: &Config, source_name: &str) -> Result<Vec<Profile>, ConfigError> {
    let mut names = BTreeSet::new();
    config
        .profiles
        .iter()
        .map(|profile| {
            let fail = |field: &str, message: String| ConfigError {
                source_name: source_name.to_owned(),
                location: format!("[[profile]] {:?}, field {field}", profile.name),
                message,
            };
            check_name(&profile.name).map_err(|m| fail("name", m))?;
            if !names.insert(profile.name.as_str()) {
                return Err(fail("name", "another [[profile]] has the same name".to_owned()));
            }
            Profile::parse(profile, &config.key_sets).map_err(|err| fail(err.field, err.message))
        })
        .collect()
}

impl Profile {
    /// Parses one profile; a key-set profile must name one of `key_sets`.
    pub fn parse(config: &ProfileConfig, key_sets: &[KeySetConfig]) -> Result<Self, ProfileError> {
        let kind = parse_kind(config, key_sets)?;
        check_ttls(config)?;
        let allowed_claims = parse_allowed_claims(config)?;
        let subject = parse_subject(&config.subject_pattern)?;
        let valid_from = parse_instant_field("valid_from", config.valid_from.as_deref(), "2026-01-01T00:00:00Z")?;
        let valid_until = parse_instant_field("valid_until", config.valid_until.as_deref(), "2027-01-01T00:00:00Z")?;
        if let (Some(from), Some(until)) = (valid_from, valid_until) {
            if from >= until {
                return refuse("valid_until", "must be after valid_from");
            }
        }
        let exchange = config.exchange.as_ref().map(|exchange| parse_exchange(&kind, exchange)).transpose()?;
        Ok(Profile {
            name: config.name.clone(),
            kind,
            allowed_claims,
            subject,
            subject_pattern: config.subject_pattern.clone(),
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
            valid_from,
            valid_until,
            exchange,
        })
    }
}

/// A key-set profile names a set and fixes `iss`/`aud`; a shared-secret profile has an
/// HMAC algorithm and a claims template instead.
fn parse_kind(profile: &ProfileConfig, key_sets: &[KeySetConfig]) -> Result<ProfileKind, ProfileError> {
    match (profile.algorithm, &profile.key_set) {
        (Some(_), Some(_)) => {
            refuse("key_set", "a shared-secret profile (algorithm = HS256/HS512) signs without a key set")
        }
        (None, None) => refuse(
            "key_set",
            "missing: name the [[key_set]] that signs, or set algorithm = \"HS256\"/\"HS512\" for a shared secret",
        ),
        (None, Some(set_name)) => {
            let Some(set) = key_sets.iter().find(|set| &set.name == set_name) else {
                return refuse("key_set", format!("no [[key_set]] is named {set_name:?}"));
            };
            let fixed = |field: &'static str, value: &Option<String>| match value {
                Some(value) if !value.trim().is_empty() => Ok(value.clone()),
                _ => refuse(field, "missing: a key-set profile fixes iss and aud"),
            };
            let issuer = fixed("issuer", &profile.issuer)?;
            let audience = fixed("audience", &profile.audience)?;
            if profile.claims.is_some() {
                return refuse("claims", "only shared-secret profiles use a claims template");
            }
            for name in profile.static_claims.keys() {
                if REGISTERED_CLAIMS.contains(&name.as_str()) {
                    return refuse("static_claims", format!("{name:?} is a registered claim that keyward sets itself"));
                }
            }
            if let Some(uri) = profile.static_claims.get("jwks_uri") {
                if !uri.as_str().is_some_and(|u| set.jwks_paths.iter().any(|p| p == u)) {
                    return refuse(
                        "static_claims.jwks_uri",
                        format!(
                            "{uri} is not one of key set {:?}'s jwks_paths ({})",
                            set.name,
                            set.jwks_paths.join(", ")
                        ),
                    );
                }
            }
            Ok(ProfileKind::KeySet {
                key_set: set.name.clone(),
                issuer,
                audience,
                static_claims: profile.static_claims.clone().into_iter().collect(),
            })
        }
        (Some(algorithm), None) => {
            for (field, set) in [
                ("issuer", profile.issuer.is_some()),
                ("audience", profile.audience.is_some()),
                ("static_claims", !profile.static_claims.is_empty()),
            ] {
                if set {
                    return refuse(field, "a shared-secret profile writes every claim in its claims template");
                }
            }
            let Some(template) = &profile.claims else {
                return refuse("claims", "missing: a shared-secret profile needs a claims template");
            };
            if !template.values().any(|v| v == "{exp}") {
                return refuse("claims", "must contain \"{exp}\": every token expires");
            }
            for (name, value) in template {
                if let Some(text) = value.as_str() {
                    let looks_like = text.starts_with('{') && text.ends_with('}') && !text.contains(' ');
                    if looks_like && !PLACEHOLDERS.contains(&text) {
                        return refuse(
                            "claims",
                            format!("{name} = {text:?}: unknown placeholder (use {})", PLACEHOLDERS.join(", ")),
                        );
                    }
                }
            }
            Ok(ProfileKind::SharedSecret { algorithm, template: template.clone().into_iter().collect() })
        }
    }
}

fn check_ttls(profile: &ProfileConfig) -> Result<(), ProfileError> {
    if profile.max_ttl >= TTL_HARD_CAP {
        return refuse(
            "max_ttl",
            format!(
                "{} is too long: tokens must expire less than 1 hour after issue (at most 59m or 3599s)",
                profile.max_ttl
            ),
        );
    }
    if profile.max_ttl.as_secs() == 0 {
        return refuse("max_ttl", "must be at least 1s");
    }
    if profile.default_ttl.as_secs() == 0 {
        return refuse("default_ttl", "must be at least 1s");
    }
    if profile.default_ttl > profile.max_ttl {
        return refuse("default_ttl", format!("{} is longer than max_ttl ({})", profile.default_ttl, profile.max_ttl));
    }
    Ok(())
}

/// The claims a caller may add, each with the values it takes.
fn parse_allowed_claims(profile: &ProfileConfig) -> Result<BTreeMap<String, ClaimType>, ProfileError> {
    let fixed = |name: &String| {
        profile.static_claims.contains_key(name) || profile.claims.as_ref().is_some_and(|t| t.contains_key(name))
    };
    let mut allowed = BTreeMap::new();
    for name in &profile.allowed_claims {
        if REGISTERED_CLAIMS.contains(&name.as_str()) {
            return refuse("allowed_claims", format!("{name:?} is a registered claim; callers may not set it"));
        }
        if fixed(name) {
            return refuse(
                "allowed_claims",
                format!("{name:?} is a static claim of this profile; callers may not override it"),
            );
        }
        let claim_type = profile.allowed_claim_types.get(name).copied().unwrap_or(DEFAULT_CLAIM_TYPE);
        if name.is_empty() || allowed.insert(name.clone(), claim_type).is_some() {
            return refuse("allowed_claims", format!("{name:?} is empty or listed twice"));
        }
    }
    for (name, claim_type) in &profile.allowed_claim_types {
        let problem = match *claim_type {
            _ if !allowed.contains_key(name) => Some("is not in allowed_claims"),
            ClaimType::String { max_length: 0 } | ClaimType::StringArray { max_length: 0, .. } => {
                Some("has max_length 0: use at least 1")
            }
            ClaimType::StringArray { max_items: 0, .. } => Some("has max_items 0: use at least 1"),
            ClaimType::Integer { min: Some(min), max: Some(max) } if min > max => Some("has min above max"),
            _ => None,
        };
        if let Some(problem) = problem {
            return refuse("allowed_claim_types", format!("{name:?} {problem}"));
        }
    }
    Ok(allowed)
}

/// The subject pattern, anchored so that it judges the whole subject, not a part of it.
fn parse_subject(pattern: &str) -> Result<Regex, ProfileError> {
    // The pattern must stand on its own: wrapped, `a)(b` would pass.
    Regex::new(pattern).and_then(|_| Regex::new(&format!("^(?:{pattern})$"))).or_else(|err| {
        let first_line = err.to_string().lines().last().map(|line| line.trim().to_owned());
        refuse("subject_pattern", format!("not a valid regular expression: {}", first_line.unwrap_or_default()))
    })
}

fn parse_instant_field(field: &'static str, text: Option<&str>, like: &str) -> Result<Option<i64>, ProfileError> {
    match text {
        Some(text) => match parse_instant(text) {
            Some(at) => Ok(Some(at)),
            None => refuse(field, format!("{text:?} is not an RFC 3339 time like {like}")),
        },
        None => Ok(None),
    }
}

fn parse_exchange(kind: &ProfileKind, exchange: &ExchangeConfig) -> Result<Exchange, ProfileError> {
    let url_ok = |url: &str| url.starts_with("https://") || url.starts_with("http://");
    if !url_ok(&exchange.token_url) {
        return refuse("exchange.token_url", format!("{:?} is not an http(s) URL", exchange.token_url));
    }
    if let Some(url) = exchange.refresh_url.as_deref().filter(|u| !url_ok(u)) {
        return refuse("exchange.refresh_url", format!("{url:?} is not an http(s) URL"));
    }
    if exchange.timeout.as_secs() == 0 {
        return refuse("exchange.timeout", "must be at least 1s");
    }
    match exchange.style {
        ExchangeStyle::BearerAssertion => Ok(Exchange::BearerAssertion(BearerAssertion {
            token_url: exchange.token_url.clone(),
            token_field: exchange.token_field.clone(),
            timeout: exchange.timeout,
        })),
        ExchangeStyle::AccountKey => {
            let ProfileKind::KeySet { key_set, .. } = kind else {
                return refuse(
                    "exchange.style",
                    "account_key sends a key set's public key: the profile needs a key_set",
                );
            };
            let account_id = match exchange.account_id.as_deref() {
                Some(id) if !id.is_empty() => id.to_owned(),
                _ => return refuse("exchange.account_id", "missing: account_key needs the service account id"),
            };
            Ok(Exchange::AccountKey(AccountKey {
                key_set: key_set.clone(),
                token_url: exchange.token_url.clone(),
                refresh_url: exchange.refresh_url.clone(),
                account_id,
                timeout: exchange.timeout,
            }))
        }
    }
}
