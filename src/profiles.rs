//! Signing profiles: what a caller may get signed, decided as a pure function of the
//! request, the profile and `now`.

use std::collections::BTreeMap;

use anyhow::Context;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{
    parse_instant, ClaimType, ExchangeConfig, HmacAlgorithm, ProfileConfig, DEFAULT_CLAIM_TYPE, TTL_HARD_CAP,
};
use crate::duration::Duration;

/// What signs a profile's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedBy {
    /// The current key of this key set.
    KeySet(String),
    /// The profile's own shared secret.
    Secret(HmacAlgorithm),
}

/// How a profile builds its claims.
#[derive(Debug, Clone)]
enum Claims {
    /// `iss`, `sub`, `aud`, `iat`, `exp`, `jti` and the static claims.
    Assertion { issuer: String, audience: String, static_claims: Map<String, Value> },
    /// Exactly the template, placeholders filled in.
    Template(Map<String, Value>),
}

/// A profile ready to judge requests.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Unique name.
    pub name: String,
    /// The key set or secret that signs.
    pub signed_by: SignedBy,
    claims: Claims,
    /// The claims a caller may add, with the values each takes.
    allowed_claims: BTreeMap<String, ClaimType>,
    subject: Regex,
    subject_pattern: String,
    default_ttl: Duration,
    /// Longest lifetime a request may ask for.
    pub max_ttl: Duration,
    valid_from: Option<i64>,
    valid_until: Option<i64>,
    /// How `/token` trades the assertion for a partner token, if it does.
    pub exchange: Option<ExchangeConfig>,
}

/// The body of `POST /v1/profiles/{profile}/sign` (and `/token`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Subject of the token, for profiles whose tokens carry the caller's subject.
    #[serde(default)]
    pub sub: Option<String>,
    /// Lifetime in seconds; the profile's default when absent.
    #[serde(default, deserialize_with = "whole_number")]
    pub ttl_seconds: Option<i64>,
    /// Extra claims, each named in the profile's `allowed_claims`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
    /// `/token` only: `false` asks the partner for a fresh token instead of a cached one.
    #[serde(default)]
    pub cache: Option<bool>,
}

/// A JSON integer, written `60` or `60.0`: JSON Schema's `integer` (what the OpenAPI
/// document says) includes numbers with a zero fraction.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    // Within ±2^53 a float is exact, so the conversion loses nothing.
    let exact = |f: f64| (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64);
    number
        .as_i64()
        .or_else(|| number.as_f64().and_then(exact))
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("not a whole number"))
}

/// How a refusal should be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A required field is missing or does not belong (400).
    Malformed,
    /// A value the profile does not accept (422).
    Unacceptable,
    /// The profile may not sign now, e.g. outside its key's validity dates (409).
    NotNow,
}

/// A request the profile refuses, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// How to answer it.
    pub kind: RefusalKind,
    /// The request field, e.g. `sub` or `claims.role`.
    pub field: String,
    /// What is wrong, for the caller.
    pub detail: String,
}

/// The claims of a token about to be signed.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// All claims.
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
        let (signed_by, claims) = match (&config.algorithm, &config.key_set) {
            (Some(algorithm), _) => (
                SignedBy::Secret(*algorithm),
                Claims::Template(config.claims.clone().unwrap_or_default().into_iter().collect()),
            ),
            (None, Some(set)) => (
                SignedBy::KeySet(set.clone()),
                Claims::Assertion {
                    issuer: config.issuer.clone().unwrap_or_default(),
                    audience: config.audience.clone().unwrap_or_default(),
                    static_claims: config.static_claims.clone().into_iter().collect(),
                },
            ),
            (None, None) => anyhow::bail!("profile {}: neither key_set nor algorithm", config.name),
        };
        let instant = |field: &str, text: &Option<String>| match text {
            Some(text) => parse_instant(text).map(Some).with_context(|| format!("profile {}: {field}", config.name)),
            None => Ok(None),
        };
        Ok(Profile {
            name: config.name.clone(),
            signed_by,
            claims,
            allowed_claims: config
                .allowed_claims
                .iter()
                .map(|name| (name.clone(), config.allowed_claim_types.get(name).copied().unwrap_or(DEFAULT_CLAIM_TYPE)))
                .collect(),
            subject,
            subject_pattern: config.subject_pattern.clone(),
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
            valid_from: instant("valid_from", &config.valid_from)?,
            valid_until: instant("valid_until", &config.valid_until)?,
            exchange: config.exchange.clone(),
        })
    }

    /// The key set that signs, for key-set profiles.
    pub fn key_set(&self) -> Option<&str> {
        match &self.signed_by {
            SignedBy::KeySet(set) => Some(set),
            SignedBy::Secret(_) => None,
        }
    }

    /// Whether tokens carry the caller's `sub`.
    fn takes_subject(&self) -> bool {
        match &self.claims {
            Claims::Assertion { .. } => true,
            Claims::Template(template) => template.values().any(|v| v == "{sub}"),
        }
    }

    /// Judges a request at `now` and, if it is acceptable, builds the token's claims.
    pub fn prepare(&self, request: SignRequest, now: i64, jti: String) -> Result<Prepared, Refusal> {
        let refuse = |kind, field: &str, detail: String| Refusal { kind, field: field.to_owned(), detail };
        if let Some(from) = self.valid_from.filter(|from| now < *from) {
            return Err(refuse(
                RefusalKind::NotNow,
                "profile",
                format!("the profile's key is valid from {from} (Unix time)"),
            ));
        }
        if let Some(until) = self.valid_until.filter(|until| now >= *until) {
            return Err(refuse(
                RefusalKind::NotNow,
                "profile",
                format!("the profile's key expired at {until} (Unix time)"),
            ));
        }
        let sub = match (self.takes_subject(), request.sub) {
            (true, None) => {
                return Err(refuse(RefusalKind::Malformed, "sub", "the required field \"sub\" is missing".to_owned()))
            }
            (false, Some(_)) => {
                return Err(refuse(
                    RefusalKind::Malformed,
                    "sub",
                    "this profile's tokens carry no caller subject".to_owned(),
                ))
            }
            (true, Some(sub)) if !self.subject.is_match(&sub) => {
                return Err(refuse(
                    RefusalKind::Unacceptable,
                    "sub",
                    format!("does not match the profile's subject_pattern {}", self.subject_pattern),
                ))
            }
            (_, sub) => sub,
        };
        let max = self.max_ttl.as_secs_i64();
        let ttl = request.ttl_seconds.unwrap_or(self.default_ttl.as_secs_i64());
        if !(1..=max).contains(&ttl) {
            return Err(refuse(RefusalKind::Unacceptable, "ttl_seconds", format!("must be between 1 and {max}")));
        }
        for (name, value) in &request.claims {
            let Some(claim_type) = self.allowed_claims.get(name) else {
                let allowed = self.allowed_claims.keys().cloned().collect::<Vec<_>>().join(", ");
                let allowed = if allowed.is_empty() { "none".to_owned() } else { allowed };
                return Err(refuse(
                    RefusalKind::Unacceptable,
                    &format!("claims.{name}"),
                    format!("this profile does not allow the claim (allowed: {allowed})"),
                ));
            };
            if !admits(claim_type, value) {
                return Err(refuse(
                    RefusalKind::Unacceptable,
                    &format!("claims.{name}"),
                    format!("must be {}", describe(claim_type)),
                ));
            }
        }
        // The partner rejects exp an hour or more after iat: never produce one.
        let ttl = ttl.min(TTL_HARD_CAP.as_secs_i64() - 1);
        let expires_at = now + ttl;
        let sub = sub.unwrap_or_default();

        let mut claims = Map::new();
        match &self.claims {
            Claims::Assertion { issuer, audience, static_claims } => {
                claims.insert("iss".to_owned(), Value::String(issuer.clone()));
                claims.insert("sub".to_owned(), Value::String(sub));
                claims.insert("aud".to_owned(), Value::String(audience.clone()));
                claims.insert("iat".to_owned(), Value::from(now));
                claims.insert("exp".to_owned(), Value::from(expires_at));
                claims.insert("jti".to_owned(), Value::String(jti));
                claims.extend(static_claims.clone());
            }
            Claims::Template(template) => {
                for (name, value) in template {
                    let filled = match value.as_str() {
                        Some("{iat}") => Value::from(now),
                        Some("{exp}") => Value::from(expires_at),
                        Some("{jti}") => Value::String(jti.clone()),
                        Some("{sub}") => Value::String(sub.clone()),
                        _ => value.clone(),
                    };
                    claims.insert(name.clone(), filled);
                }
            }
        }
        claims.extend(request.claims);
        Ok(Prepared { claims, issued_at: now, expires_at })
    }
}

/// Whether `value` is of `claim_type`, within its size.
fn admits(claim_type: &ClaimType, value: &Value) -> bool {
    let short = |text: &str, max: usize| text.chars().count() <= max;
    match (*claim_type, value) {
        (ClaimType::String { max_length }, Value::String(text)) => short(text, max_length),
        (ClaimType::Integer { min, max }, Value::Number(number)) => {
            number.as_i64().is_some_and(|n| min.is_none_or(|min| n >= min) && max.is_none_or(|max| n <= max))
        }
        (ClaimType::Boolean {}, Value::Bool(_)) => true,
        (ClaimType::StringArray { max_items, max_length }, Value::Array(items)) => {
            items.len() <= max_items && items.iter().all(|item| item.as_str().is_some_and(|t| short(t, max_length)))
        }
        _ => false,
    }
}

/// `claim_type` in words, for a caller whose value it refused.
fn describe(claim_type: &ClaimType) -> String {
    match *claim_type {
        ClaimType::String { max_length } => format!("a string of at most {max_length} characters"),
        ClaimType::Integer { min, max } => match (min, max) {
            (Some(min), Some(max)) => format!("an integer from {min} to {max}"),
            (Some(min), None) => format!("an integer of at least {min}"),
            (None, Some(max)) => format!("an integer of at most {max}"),
            (None, None) => "an integer".to_owned(),
        },
        ClaimType::Boolean {} => "true or false".to_owned(),
        ClaimType::StringArray { max_items, max_length } => {
            format!("an array of at most {max_items} strings of at most {max_length} characters each")
        }
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
    fn ttl_seconds_is_any_json_integer_including_a_zero_fraction() {
        let ttl = |body: &str| serde_json::from_str::<SignRequest>(body).map(|r| r.ttl_seconds);
        assert_eq!(ttl(r#"{"ttl_seconds": 60}"#).unwrap(), Some(60));
        assert_eq!(ttl(r#"{"ttl_seconds": 60.0}"#).unwrap(), Some(60));
        assert_eq!(ttl(r#"{"ttl_seconds": -1}"#).unwrap(), Some(-1));
        assert_eq!(ttl(r#"{"ttl_seconds": null}"#).unwrap(), None);
        assert_eq!(ttl("{}").unwrap(), None);
        for bad in [r#"{"ttl_seconds": 60.5}"#, r#"{"ttl_seconds": "60"}"#, r#"{"ttl_seconds": 1e300}"#] {
            assert!(ttl(bad).is_err(), "{bad}");
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
    fn allowed_claims_are_strings_of_at_most_256_characters_unless_declared_otherwise() {
        let p = profile();
        let at = |value: Value| {
            p.prepare(request(serde_json::json!({"sub": "a", "claims": {"obo_user": value}})), 0, "j".into())
        };
        assert!(at(Value::String("u".repeat(256))).is_ok());
        for bad in [
            Value::String("u".repeat(257)),
            serde_json::json!(5),
            serde_json::json!(["u"]),
            serde_json::json!({"a": 1}),
            Value::Null,
        ] {
            let err = at(bad.clone()).unwrap_err();
            assert_eq!((err.kind, err.field.as_str()), (RefusalKind::Unacceptable, "claims.obo_user"), "{bad}");
            assert_eq!(err.detail, "must be a string of at most 256 characters");
        }

        let mut config = Config::default().profiles[0].clone();
        config.allowed_claims = ["obo_user", "roles", "tier", "beta"].map(str::to_owned).to_vec();
        config.allowed_claim_types = BTreeMap::from([
            ("obo_user".to_owned(), ClaimType::String { max_length: 3 }),
            ("roles".to_owned(), ClaimType::StringArray { max_items: 2, max_length: 4 }),
            ("tier".to_owned(), ClaimType::Integer { min: Some(0), max: Some(10) }),
            ("beta".to_owned(), ClaimType::Boolean {}),
        ]);
        let p = Profile::compile(&config).unwrap();
        let judge = |name: &str, value: Value| {
            p.prepare(request(serde_json::json!({"sub": "a", "claims": {name: value}})), 0, "j".into())
                .map(|_| ())
                .map_err(|e| e.field)
        };
        let cases = [
            ("obo_user", serde_json::json!("abc"), true),
            ("obo_user", serde_json::json!("abcd"), false),
            ("roles", serde_json::json!(["a", "abcd"]), true),
            ("roles", serde_json::json!([]), true),
            ("roles", serde_json::json!(["a", "b", "c"]), false),
            ("roles", serde_json::json!(["abcde"]), false),
            ("roles", serde_json::json!([1]), false),
            ("roles", serde_json::json!([["a"]]), false),
            ("roles", serde_json::json!("a"), false),
            ("tier", serde_json::json!(0), true),
            ("tier", serde_json::json!(10), true),
            ("tier", serde_json::json!(11), false),
            ("tier", serde_json::json!(-1), false),
            ("tier", serde_json::json!(1.5), false),
            ("tier", serde_json::json!("1"), false),
            ("beta", serde_json::json!(true), true),
            ("beta", serde_json::json!("true"), false),
        ];
        for (name, value, accepted) in cases {
            let judged = judge(name, value.clone());
            assert_eq!(judged.is_ok(), accepted, "{name} = {value}: {judged:?}");
            if !accepted {
                assert_eq!(judged.unwrap_err(), format!("claims.{name}"));
            }
        }
    }

    #[test]
    fn unknown_body_fields_are_refused_by_the_schema() {
        let err = serde_json::from_value::<SignRequest>(serde_json::json!({"sub": "a", "exp": 5})).unwrap_err();
        assert!(err.to_string().contains("unknown field `exp`"));
    }
}
