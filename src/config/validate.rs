//! The start-up rules a parsed configuration must follow.

use std::collections::{BTreeSet, HashMap};

use super::{
    parse_instant, ClaimType, Config, ConfigError, Database, ExchangeConfig, ExchangeStyle, ProfileConfig,
    PLACEHOLDERS, REGISTERED_CLAIMS, TTL_HARD_CAP,
};

/// Paths the public listener keeps for itself.
const RESERVED_PUBLIC_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Every start-up rule; the first broken one is reported.
pub fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let fail =
        |location: String, message: String| ConfigError { source_name: source_name.to_owned(), location, message };
    let server = &config.server;
    Database::parse(&server.database_url).map_err(|m| fail("[server], field database_url".to_owned(), m))?;
    if server.ledger_retention.as_secs() < 86_400 {
        return Err(fail(
            "[server], field ledger_retention".to_owned(),
            format!("{} is too short to answer an auditor: keep at least 1d", server.ledger_retention),
        ));
    }
    if server.ledger_commit_interval_ms > 1_000 {
        return Err(fail(
            "[server], field ledger_commit_interval_ms".to_owned(),
            format!(
                "{} ms would hold every signing request that long: use at most 1000 (default 5)",
                server.ledger_commit_interval_ms
            ),
        ));
    }
    if !(1..=60).contains(&server.request_body_timeout.as_secs()) {
        return Err(fail(
            "[server], field request_body_timeout".to_owned(),
            format!("{} is out of range: use 1s to 60s (default 5s)", server.request_body_timeout),
        ));
    }
    for (field, value) in [("rate_limit", server.rate_limit), ("rate_burst", server.rate_burst)] {
        if value == 0 {
            return Err(fail(format!("[server], field {field}"), "must be at least 1".to_owned()));
        }
    }
    if server.public_addr == server.internal_addr && server.public_addr.port() != 0 {
        return Err(fail(
            "[server], field internal_addr".to_owned(),
            "the internal listener must not share the public listener's address".to_owned(),
        ));
    }

    let mut set_names = BTreeSet::new();
    let mut path_owner: HashMap<&str, &str> = HashMap::new();
    for set in &config.key_sets {
        let at = |field: &str| format!("[[key_set]] {:?}, field {field}", set.name);
        check_name(&set.name).map_err(|m| fail(at("name"), m))?;
        if !set_names.insert(set.name.as_str()) {
            return Err(fail(at("name"), "another [[key_set]] has the same name".to_owned()));
        }
        if set.algorithm.is_rsa() && ![2048, 3072, 4096].contains(&set.rsa_bits) {
            return Err(fail(
                at("rsa_bits"),
                format!("RSA keys must be 2048, 3072 or 4096 bits, not {}", set.rsa_bits),
            ));
        }
        for path in &set.jwks_paths {
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.contains("//") {
                return Err(fail(
                    at("jwks_paths"),
                    format!("{path:?} must be an absolute path like /.well-known/jwks.json"),
                ));
            }
            if RESERVED_PUBLIC_PATHS.contains(&path.as_str()) {
                return Err(fail(at("jwks_paths"), format!("{path:?} is reserved for health checks")));
            }
            if let Some(other) = path_owner.insert(path, &set.name) {
                let message = if other == set.name {
                    format!("{path:?} is listed twice")
                } else {
                    format!("{path:?} is already served by key set {other:?}")
                };
                return Err(fail(at("jwks_paths"), message));
            }
        }
        for (field, value) in [
            ("rotate_every", set.rotate_every),
            ("publish_ahead", set.publish_ahead),
            ("retain_after", set.retain_after),
            ("clock_skew", set.clock_skew),
        ] {
            if value.as_secs() == 0 {
                return Err(fail(at(field), "must be at least 1s".to_owned()));
            }
        }
        let cache_window = set.cache_window();
        if set.publish_ahead < cache_window {
            return Err(fail(
                at("publish_ahead"),
                format!(
                    "{} is shorter than jwks_max_age + clock_skew ({}): a verifier holding a JWKS cached \
                     just before a new key appeared would meet tokens it cannot verify",
                    set.publish_ahead, cache_window
                ),
            ));
        }
        if set.retain_after < cache_window {
            return Err(fail(
                at("retain_after"),
                format!(
                    "{} is shorter than jwks_max_age + clock_skew ({}): a key could leave the JWKS \
                     while verifiers with skewed clocks still accept its last tokens",
                    set.retain_after, cache_window
                ),
            ));
        }
        if set.rotate_every < set.publish_ahead {
            return Err(fail(
                at("rotate_every"),
                format!(
                    "{} is shorter than publish_ahead ({}): each next key must be published for \
                     publish_ahead before it signs",
                    set.rotate_every, set.publish_ahead
                ),
            ));
        }
    }

    let mut profile_names = BTreeSet::new();
    for profile in &config.profiles {
        let at = |field: &str| format!("[[profile]] {:?}, field {field}", profile.name);
        check_name(&profile.name).map_err(|m| fail(at("name"), m))?;
        if !profile_names.insert(profile.name.as_str()) {
            return Err(fail(at("name"), "another [[profile]] has the same name".to_owned()));
        }
        validate_signer(config, profile).map_err(|(field, m)| fail(at(field), m))?;
        validate_ttls_and_claims(profile).map_err(|(field, m)| fail(at(field), m))?;
        if let Err(err) = regex::Regex::new(&profile.subject_pattern) {
            let first_line = err.to_string().lines().last().unwrap_or_default().trim().to_owned();
            return Err(fail(at("subject_pattern"), format!("not a valid regular expression: {first_line}")));
        }
        let from = match &profile.valid_from {
            Some(text) => Some(parse_instant(text).ok_or_else(|| {
                fail(at("valid_from"), format!("{text:?} is not an RFC 3339 time like 2026-01-01T00:00:00Z"))
            })?),
            None => None,
        };
        let until = match &profile.valid_until {
            Some(text) => Some(parse_instant(text).ok_or_else(|| {
                fail(at("valid_until"), format!("{text:?} is not an RFC 3339 time like 2027-01-01T00:00:00Z"))
            })?),
            None => None,
        };
        if let (Some(from), Some(until)) = (from, until) {
            if from >= until {
                return Err(fail(at("valid_until"), "must be after valid_from".to_owned()));
            }
        }
        if let Some(exchange) = &profile.exchange {
            validate_exchange(profile, exchange).map_err(|(field, m)| fail(at(field), m))?;
        }
    }
    Ok(())
}

type FieldError = (&'static str, String);

/// A key-set profile names a set and fixes `iss`/`aud`; a shared-secret profile has an
/// HMAC algorithm and a claims template instead.
fn validate_signer(config: &Config, profile: &ProfileConfig) -> Result<(), FieldError> {
    match (&profile.algorithm, &profile.key_set) {
        (Some(_), Some(_)) => {
            Err(("key_set", "a shared-secret profile (algorithm = HS256/HS512) signs without a key set".to_owned()))
        }
        (None, None) => Err((
            "key_set",
            "missing: name the [[key_set]] that signs, or set algorithm = \"HS256\"/\"HS512\" for a shared secret"
                .to_owned(),
        )),
        (None, Some(set_name)) => {
            let Some(set) = config.key_set(set_name) else {
                return Err(("key_set", format!("no [[key_set]] is named {set_name:?}")));
            };
            for (field, value) in [("issuer", &profile.issuer), ("audience", &profile.audience)] {
                if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                    return Err((field, "missing: a key-set profile fixes iss and aud".to_owned()));
                }
            }
            if profile.claims.is_some() {
                return Err(("claims", "only shared-secret profiles use a claims template".to_owned()));
            }
            for name in profile.static_claims.keys() {
                if REGISTERED_CLAIMS.contains(&name.as_str()) {
                    return Err(("static_claims", format!("{name:?} is a registered claim that keyward sets itself")));
                }
            }
            if let Some(uri) = profile.static_claims.get("jwks_uri") {
                if !uri.as_str().is_some_and(|u| set.jwks_paths.iter().any(|p| p == u)) {
                    return Err((
                        "static_claims.jwks_uri",
                        format!(
                            "{uri} is not one of key set {:?}'s jwks_paths ({})",
                            set.name,
                            set.jwks_paths.join(", ")
                        ),
                    ));
                }
            }
            Ok(())
        }
        (Some(_), None) => {
            for (field, set) in [
                ("issuer", profile.issuer.is_some()),
                ("audience", profile.audience.is_some()),
                ("static_claims", !profile.static_claims.is_empty()),
            ] {
                if set {
                    return Err((
                        field,
                        "a shared-secret profile writes every claim in its claims template".to_owned(),
                    ));
                }
            }
            let Some(template) = &profile.claims else {
                return Err(("claims", "missing: a shared-secret profile needs a claims template".to_owned()));
            };
            if !template.values().any(|v| v == "{exp}") {
                return Err(("claims", "must contain \"{exp}\": every token expires".to_owned()));
            }
            for (name, value) in template {
                if let Some(text) = value.as_str() {
                    let looks_like = text.starts_with('{') && text.ends_with('}') && !text.contains(' ');
                    if looks_like && !PLACEHOLDERS.contains(&text) {
                        return Err((
                            "claims",
                            format!("{name} = {text:?}: unknown placeholder (use {})", PLACEHOLDERS.join(", ")),
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

fn validate_ttls_and_claims(profile: &ProfileConfig) -> Result<(), FieldError> {
    if profile.max_ttl >= TTL_HARD_CAP {
        return Err((
            "max_ttl",
            format!(
                "{} is too long: tokens must expire less than 1 hour after issue (at most 59m or 3599s)",
                profile.max_ttl
            ),
        ));
    }
    if profile.max_ttl.as_secs() == 0 {
        return Err(("max_ttl", "must be at least 1s".to_owned()));
    }
    if profile.default_ttl.as_secs() == 0 {
        return Err(("default_ttl", "must be at least 1s".to_owned()));
    }
    if profile.default_ttl > profile.max_ttl {
        return Err(("default_ttl", format!("{} is longer than max_ttl ({})", profile.default_ttl, profile.max_ttl)));
    }
    let template_names = profile.claims.as_ref().map(|t| t.keys().collect::<Vec<_>>()).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for name in &profile.allowed_claims {
        if REGISTERED_CLAIMS.contains(&name.as_str()) {
            return Err(("allowed_claims", format!("{name:?} is a registered claim; callers may not set it")));
        }
        if profile.static_claims.contains_key(name) || template_names.contains(&name) {
            return Err((
                "allowed_claims",
                format!("{name:?} is a static claim of this profile; callers may not override it"),
            ));
        }
        if name.is_empty() || !seen.insert(name) {
            return Err(("allowed_claims", format!("{name:?} is empty or listed twice")));
        }
    }
    for (name, claim_type) in &profile.allowed_claim_types {
        let problem = match *claim_type {
            _ if !seen.contains(name) => Some("is not in allowed_claims"),
            ClaimType::String { max_length: 0 } | ClaimType::StringArray { max_length: 0, .. } => {
                Some("has max_length 0: use at least 1")
            }
            ClaimType::StringArray { max_items: 0, .. } => Some("has max_items 0: use at least 1"),
            ClaimType::Integer { min: Some(min), max: Some(max) } if min > max => Some("has min above max"),
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(("allowed_claim_types", format!("{name:?} {problem}")));
        }
    }
    Ok(())
}

fn validate_exchange(profile: &ProfileConfig, exchange: &ExchangeConfig) -> Result<(), FieldError> {
    let url_ok = |url: &str| url.starts_with("https://") || url.starts_with("http://");
    if !url_ok(&exchange.token_url) {
        return Err(("exchange.token_url", format!("{:?} is not an http(s) URL", exchange.token_url)));
    }
    if let Some(url) = exchange.refresh_url.as_deref().filter(|u| !url_ok(u)) {
        return Err(("exchange.refresh_url", format!("{url:?} is not an http(s) URL")));
    }
    if exchange.timeout.as_secs() == 0 {
        return Err(("exchange.timeout", "must be at least 1s".to_owned()));
    }
    if exchange.style == ExchangeStyle::AccountKey {
        if profile.key_set.is_none() {
            return Err((
                "exchange.style",
                "account_key sends a key set's public key: the profile needs a key_set".to_owned(),
            ));
        }
        if exchange.account_id.as_deref().is_none_or(str::is_empty) {
            return Err(("exchange.account_id", "missing: account_key needs the service account id".to_owned()));
        }
    }
    Ok(())
}

/// Names appear in URLs and commands: keep them plain.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"))
    }
}
