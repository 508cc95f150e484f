//! Signing profiles: what a caller may get signed, decided as a pure function of the
//! request, the profile and `now`.

use std::collections::BTreeSet;

use anyhow::Context;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{ProfileConfig, TTL_HARD_CAP};
use crate::duration::Duration;

/// A profile ready to judge requests.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Unique name.
    pub name: String,
    /// The key set that signs.
    pub key_set: String,
    issuer: String,
    audience: String,
    static_claims: Map<String, Value>,
    allowed_claims: BTreeSet<String>,
    subject: Regex,
    subject_pattern: String,
    default_ttl: Duration,
    /// Longest lifetime a request may ask for.
    pub max_ttl: Duration,
}

/// The body of `POST /v1/profiles/{profile}/sign`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Subject of the token.
    pub sub: String,
    /// Lifetime in seconds; the profile's default when absent.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    /// Extra claims, each named in the profile's `allowed_claims`.
    #[serde(default)]
    pub claims: Map<String, Value>,
}

/// A request the profile refuses, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The request field, e.g. `sub` or `claims.role`.
    pub field: String,
    /// What is wrong, for the caller.
    pub detail: String,
}

/// The claims of a token about to be signed.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// All claims, registered ones first.
    pub claims: Map<String, Value>,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

impl Profile {
    /// Compiles a validated profile configuration.
    pub fn compile(config: &ProfileConfig) -> anyhow::Result<Self> {
        // Anchored so that the pattern judges the whole subject, not a part of it.
        let subject = Regex::new(&format!("^(?:{})$", config.subject_pattern))
            .with_context(|| format!("profile {}: subject_pattern", config.name))?;
        Ok(Profile {
            name: config.name.clone(),
            key_set: config.key_set.clone(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            static_claims: config.static_claims.clone().into_iter().collect(),
            allowed_claims: config.allowed_claims.iter().cloned().collect(),
            subject,
            subject_pattern: config.subject_pattern.clone(),
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
        })
    }

    /// Judges a request at `now` and, if it is acceptable, builds the token's claims.
    pub fn prepare(&self, request: SignRequest, now: i64, jti: String) -> Result<Prepared, Refusal> {
        let refuse = |field: &str, detail: String| Refusal { field: field.to_owned(), detail };
        if !self.subject.is_match(&request.sub) {
            return Err(refuse(
                "sub",
                format!("does not match the profile's subject_pattern {}", self.subject_pattern),
            ));
        }
        let max = self.max_ttl.as_secs_i64();
        let ttl = request.ttl_seconds.unwrap_or(self.default_ttl.as_secs_i64());
        if !(1..=max).contains(&ttl) {
            return Err(refuse("ttl_seconds", format!("must be between 1 and {max}")));
        }
        for name in request.claims.keys() {
            if !self.allowed_claims.contains(name) {
                let allowed = self.allowed_claims.iter().cloned().collect::<Vec<_>>().join(", ");
                let allowed = if allowed.is_empty() { "none".to_owned() } else { allowed };
                return Err(refuse(
                    &format!("claims.{name}"),
                    format!("this profile does not allow the claim (allowed: {allowed})"),
                ));
            }
        }
        // The partner rejects exp an hour or more after iat: never produce one.
        let ttl = ttl.min(TTL_HARD_CAP.as_secs_i64() - 1);
        let expires_at = now + ttl;

        let mut claims = Map::with_capacity(6 + self.static_claims.len() + request.claims.len());
        claims.insert("iss".to_owned(), Value::String(self.issuer.clone()));
        claims.insert("sub".to_owned(), Value::String(request.sub));
        claims.insert("aud".to_owned(), Value::String(self.audience.clone()));
        claims.insert("iat".to_owned(), Value::from(now));
        claims.insert("exp".to_owned(), Value::from(expires_at));
        claims.insert("jti".to_owned(), Value::String(jti));
        for (name, value) in &self.static_claims {
            claims.insert(name.clone(), value.clone());
        }
        claims.extend(request.claims);
        Ok(Prepared { claims, issued_at: now, expires_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn profile() -> Profile {
        Profile::compile(&Config::default().profiles[0]).unwrap()
    }

    fn request(json: Value) -> SignRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn builds_the_npm_assertion_claims() {
        let p = profile()
            .prepare(
                request(serde_json::json!({"sub": "acct-1", "claims": {"obo_user": "u@x.com"}})),
                1_000,
                "j".into(),
            )
            .unwrap();
        let c = &p.claims;
        assert_eq!(c["iss"], "https://yourdomain.com");
        assert_eq!(c["aud"], "http://sandbox.npmdev.net/api/partners/acme/oauth2/v1/token");
        assert_eq!(c["sub"], "acct-1");
        assert_eq!(c["jwks_uri"], "/path/to/your/jwks");
        assert_eq!(c["obo_user"], "u@x.com");
        assert_eq!(c["iat"], 1_000);
        assert_eq!(c["exp"], 1_300, "default_ttl is 5m");
        assert_eq!(c["jti"], "j");
        assert_eq!(c.len(), 8);
    }

    #[test]
    fn ttl_is_bounded_by_max_ttl_inclusive() {
        let p = profile();
        let at = |ttl: i64| p.prepare(request(serde_json::json!({"sub": "a", "ttl_seconds": ttl})), 0, "j".into());
        assert_eq!(at(3_300).unwrap().expires_at, 3_300);
        assert_eq!(at(1).unwrap().expires_at, 1);
        for bad in [0, -5, 3_301, 3_600, i64::MAX] {
            assert_eq!(at(bad).unwrap_err().field, "ttl_seconds", "{bad}");
        }
    }

    #[test]
    fn subject_must_match_the_whole_pattern() {
        let p = profile();
        for bad in ["", "has space", "x".repeat(129).as_str(), "ok\nnewline", "é"] {
            let err = p.prepare(request(serde_json::json!({"sub": bad})), 0, "j".into()).unwrap_err();
            assert_eq!(err.field, "sub", "{bad:?}");
        }
        let mut config = Config::default().profiles[0].clone();
        config.subject_pattern = "acct-[0-9]+".to_owned();
        let p = Profile::compile(&config).unwrap();
        assert!(p.prepare(request(serde_json::json!({"sub": "acct-12"})), 0, "j".into()).is_ok());
        assert!(p.prepare(request(serde_json::json!({"sub": "xacct-12y"})), 0, "j".into()).is_err());
    }

    #[test]
    fn only_allowed_claims_pass() {
        let err = profile()
            .prepare(request(serde_json::json!({"sub": "a", "claims": {"role": "admin"}})), 0, "j".into())
            .unwrap_err();
        assert_eq!(err.field, "claims.role");
        assert!(err.detail.contains("obo_user"));
    }

    #[test]
    fn unknown_body_fields_are_refused_by_the_schema() {
        let err = serde_json::from_value::<SignRequest>(serde_json::json!({"sub": "a", "exp": 5})).unwrap_err();
        assert!(err.to_string().contains("unknown field `exp`"));
    }
}
