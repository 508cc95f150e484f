//! JWKS documents: which keys a set publishes, their serialized body and validators.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use super::{KeyRecord, KeyState, PublicKey};

/// A serialized JWKS with its validators, made only when keys change.
#[derive(Debug, Clone)]
pub struct JwksDocument {
    /// `{"keys":[...]}`.
    pub body: Vec<u8>,
    /// Strong entity tag, quoted.
    pub etag: String,
    /// `public, max-age=N`.
    pub cache_control: String,
}

#[derive(Serialize)]
struct Jwk<'a> {
    #[serde(flatten)]
    public: &'a PublicKey,
    kid: &'a str,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'static str,
}

#[derive(Serialize)]
struct Jwks<'a> {
    keys: Vec<Jwk<'a>>,
}

/// The published keys of `set` at `now`: the signing key first, then the next key, then
/// previous keys newest first.
pub fn published<'a>(records: &'a [KeyRecord], set: &str, now: i64) -> Vec<&'a KeyRecord> {
    let mut keys: Vec<&KeyRecord> = records.iter().filter(|r| r.key_set == set && r.is_published()).collect();
    let rank = |r: &KeyRecord| match r.state_at(now) {
        KeyState::Current => 0,
        KeyState::Next => 1,
        _ => 2,
    };
    keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(b.created_at.cmp(&a.created_at)));
    keys
}

/// Serializes the keys (public members only) with their validators; verifiers may cache it
/// for `max_age_secs`.
pub fn document(keys: &[&KeyRecord], max_age_secs: u64) -> JwksDocument {
    let jwks = Jwks {
        keys: keys
            .iter()
            .map(|r| Jwk { public: &r.public, kid: &r.kid, use_: "sig", alg: r.algorithm.as_str() })
            .collect(),
    };
    // Serializing plain strings into a Vec cannot fail.
    let body = serde_json::to_vec(&jwks).unwrap_or_default();
    let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(openssl::sha::sha256(&body)));
    let cache_control = format!("public, max-age={max_age_secs}");
    JwksDocument { body, etag, cache_control }
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, RFC 9110 13.1.2).
pub fn if_none_match(header: &str, etag: &str) -> bool {
    // `strip_prefix`, not `trim_start_matches`: that one sets up a substring searcher per call.
    fn opaque(tag: &str) -> &str {
        tag.strip_prefix("W/").unwrap_or(tag)
    }
    let ours = opaque(etag);
    header.split(',').map(str::trim).any(|tag| tag == "*" || opaque(tag) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::state::KeyBuilder;

    fn key(kid: &str, set: &str, created: i64, activated: Option<i64>, deactivated: Option<i64>) -> KeyRecord {
        KeyBuilder::new(kid).set(set).created(created).signing(activated, deactivated).build()
    }

    #[test]
    fn signing_key_first_then_next_then_previous_newest_first() {
        let mut revoked = key("revoked", "s", 5, Some(5), Some(6));
        revoked.revoke(6);
        let records = vec![
            key("old", "s", 1, Some(1), Some(2)),
            key("older", "s", 0, Some(0), Some(1)),
            key("next", "s", 3, Some(9), None),
            key("cur", "s", 2, Some(2), Some(9)),
            key("other-set", "t", 2, Some(2), None),
            revoked,
        ];
        let kids: Vec<&str> = published(&records, "s", 8).iter().map(|r| r.kid.as_str()).collect();
        assert_eq!(kids, ["cur", "next", "old", "older"]);
    }

    #[test]
    fn document_holds_public_members_only() {
        let records = vec![key("cur", "s", 2, Some(2), None)];
        let doc = document(&published(&records, "s", 2), 300);
        let json: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "xcur", "y": "y", "kid": "cur", "use": "sig", "alg": "ES256"}]})
        );
        assert_eq!(doc.cache_control, "public, max-age=300");
        assert!(doc.etag.starts_with('"') && doc.etag.ends_with('"') && doc.etag.len() > 20);
    }

    #[test]
    fn etag_changes_with_the_keys() {
        let a = vec![key("a", "s", 1, Some(1), None)];
        let b = vec![key("b", "s", 1, Some(1), None)];
        let max = 60;
        assert_ne!(document(&published(&a, "s", 1), max).etag, document(&published(&b, "s", 1), max).etag);
        assert_eq!(document(&published(&a, "s", 1), max).etag, document(&published(&a, "s", 1), max).etag);
    }

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        let etag = "\"abc\"";
        assert!(if_none_match("\"abc\"", etag));
        assert!(if_none_match("W/\"abc\"", etag));
        assert!(if_none_match("\"x\", \"abc\"", etag));
        assert!(if_none_match("*", etag));
        assert!(!if_none_match("\"abd\"", etag));
        assert!(!if_none_match("abc", etag));
        assert!(!if_none_match("", etag));
    }
}
