//! The start-up rules of `[server]` and the key sets. Profiles are parsed into their
//! kinds by `policy::profile`, which checks them on the way.

use std::collections::{BTreeSet, HashMap};

use super::{Config, ConfigError, Database};

/// Paths the public listener keeps for itself.
pub(super) const RESERVED_PUBLIC_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Every start-up rule of `[server]` and `[[key_set]]` (and of the discovery documents
/// profiles ask for); the first broken one is reported.
pub fn validate(config: &Config, source_name: &str) -> Result<(), ConfigError> {
    let fail =
        |location: String, message: String| ConfigError { source_name: source_name.to_owned(), location, message };
    super::pkcs11::validate(config, source_name)?;
    super::vault::validate(config, source_name)?;
    super::aws_kms::validate(config, source_name)?;
    super::identity::validate(config, source_name)?;
    super::master_key::validate(config, source_name)?;
    let server = &config.server;
    Database::parse(&server.database_url).map_err(|m| fail("[server], field database_url".to_owned(), m))?;
    if server.ledger_retention.as_secs() < 86_400 {
        return Err(fail(
            "[server], field ledger_retention".to_owned(),
            format!("{} is too short to answer an auditor: keep at least 1d", server.ledger_retention),
        ));
    }
    if server.audit_checkpoint_interval.as_secs() < 1 {
        return Err(fail(
            "[server], field audit_checkpoint_interval".to_owned(),
            format!("{} is too short: use at least 1s (default 1h)", server.audit_checkpoint_interval),
        ));
    }
    if let Some(set) = &server.audit_checkpoint_key_set {
        if config.key_set(set).is_none() {
            return Err(fail(
                "[server], field audit_checkpoint_key_set".to_owned(),
                format!("no [[key_set]] is named {set:?}"),
            ));
        }
        if let Some(profile) = config.profiles.iter().find(|p| p.key_set.as_deref() == Some(set.as_str())) {
            return Err(fail(
                "[server], field audit_checkpoint_key_set".to_owned(),
                format!(
                    "key set {set:?} also signs the tokens of profile {:?}: give checkpoints a key set of their own",
                    profile.name
                ),
            ));
        }
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
    // Tokens carry whole seconds: up to one of the deadline may be spent before a token's
    // issue time is even taken, so 1s would leave some requests no time at all.
    if !(2..=30).contains(&server.request_deadline.as_secs()) {
        return Err(fail(
            "[server], field request_deadline".to_owned(),
            format!("{} is out of range: use 2s to 30s (default 2s)", server.request_deadline),
        ));
    }
    if !(60..=43_200).contains(&server.console_session.as_secs()) {
        return Err(fail(
            "[server], field console_session".to_owned(),
            format!("{} is out of range: use 1m to 12h (default 30m)", server.console_session),
        ));
    }
    for (field, value) in [
        ("rate_limit", server.rate_limit),
        ("rate_burst", server.rate_burst),
        ("max_signing_requests", server.max_signing_requests),
    ] {
        if value == 0 {
            return Err(fail(format!("[server], field {field}"), "must be at least 1".to_owned()));
        }
    }
    super::tls::validate(server.public_tls.as_ref(), server.internal_tls.as_ref())
        .map_err(|(field, m)| fail(format!("[server], field {field}"), m))?;
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
    super::discovery::validate(config)
        .map_err(|(name, field, m)| fail(format!("[[profile]] {name:?}, field {field}"), m))?;
    super::partner::validate(config, source_name)
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
