//! Judging a request against a parsed profile and building the token's claims.

use serde_json::{Map, Value};

use super::{Prepared, Profile, ProfileKind, Refusal, RefusalKind, SignRequest};
use crate::config::{ClaimType, TTL_HARD_CAP};

impl Profile {
    /// Whether tokens carry the caller's `sub`.
    fn takes_subject(&self) -> bool {
        match &self.kind {
            ProfileKind::KeySet { .. } => true,
            ProfileKind::SharedSecret { template, .. } => template.values().any(|v| v == "{sub}"),
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
        match &self.kind {
            ProfileKind::KeySet { issuer, audience, static_claims, .. } => {
                claims.insert("iss".to_owned(), Value::String(issuer.clone()));
                claims.insert("sub".to_owned(), Value::String(sub));
                claims.insert("aud".to_owned(), Value::String(audience.clone()));
                claims.insert("iat".to_owned(), Value::from(now));
                claims.insert("exp".to_owned(), Value::from(expires_at));
                claims.insert("jti".to_owned(), Value::String(jti));
                claims.extend(static_claims.clone());
            }
            ProfileKind::SharedSecret { template, .. } => {
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
