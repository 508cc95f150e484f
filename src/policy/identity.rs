//! Workload identities a client may be bound to (`ISSUER|SUBJECT`, the subject exact or a
//! prefix ending in `*`: `system:serviceaccount:payments:*`), and the verification of their
//! JWTs by RFC 8725's rules: the algorithm from the provider's allow-list only (asymmetric:
//! no `none`, no HS*), the key from the provider's JWKS by `kid` and of the algorithm's
//! type (no key in the header), then `iss`, `aud`, `exp`, `nbf` and `iat` against an
//! explicit `now`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use josekit::jwk::{Jwk, JwkSet};
use josekit::jws::{self, JwsVerifier};
use serde_json::{Map, Value};

/// A subject as a binding names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectPattern {
    /// This subject only.
    Exact(String),
    /// Every subject that starts with this.
    Prefix(String),
}

impl SubjectPattern {
    /// Whether `subject` matches.
    pub fn matches(&self, subject: &str) -> bool {
        match self {
            SubjectPattern::Exact(exact) => subject == exact,
            SubjectPattern::Prefix(prefix) => subject.starts_with(prefix.as_str()),
        }
    }

    /// How specific it is: an exact subject beats every prefix, a longer prefix a shorter one.
    fn specificity(&self) -> (bool, usize) {
        match self {
            SubjectPattern::Exact(s) => (true, s.len()),
            SubjectPattern::Prefix(p) => (false, p.len()),
        }
    }
}

/// A client's binding to a workload identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityBinding {
    /// The `iss` of its tokens, as an `[[identity_provider]]` names it.
    pub issuer: String,
    /// Which `sub`.
    pub subject: SubjectPattern,
}

impl IdentityBinding {
    /// Whether a token of `issuer` about `subject` is this identity.
    pub fn matches(&self, issuer: &str, subject: &str) -> bool {
        self.issuer == issuer && self.subject.matches(subject)
    }

    /// Orders bindings that match the same token: the most specific first.
    pub fn specificity(&self) -> (bool, usize) {
        self.subject.specificity()
    }
}

impl FromStr for IdentityBinding {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (issuer, subject) = text
            .split_once('|')
            .ok_or_else(|| format!("{text:?} is not ISSUER|SUBJECT (e.g. 'https://issuer|sub')"))?;
        if issuer.is_empty() || subject.is_empty() {
            return Err(format!("{text:?}: both ISSUER and SUBJECT must be given"));
        }
        let subject = match subject.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => {
                return Err(format!("{text:?}: '*' may only end the subject"));
            }
            Some("") => {
                return Err(format!("{text:?}: a subject of '*' alone would admit every workload of the issuer"))
            }
            Some(prefix) => SubjectPattern::Prefix(prefix.to_owned()),
            None if subject.contains('*') => return Err(format!("{text:?}: '*' may only end the subject")),
            None => SubjectPattern::Exact(subject.to_owned()),
        };
        Ok(IdentityBinding { issuer: issuer.to_owned(), subject })
    }
}

impl fmt::Display for IdentityBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            SubjectPattern::Exact(s) => write!(f, "{}|{s}", self.issuer),
            SubjectPattern::Prefix(p) => write!(f, "{}|{p}*", self.issuer),
        }
    }
}

/// Why a workload identity token was refused (a caller may see this; it holds no token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a compact JWS with JSON header and claims.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// No `[[identity_provider]]` has its `iss`.
    #[error("no identity provider is configured for the token's issuer")]
    UnknownIssuer,
    /// Its header carries a key or a key's address (`jwk`, `jku`, `x5c`, `x5u`) or `crit`.
    #[error("the token's header carries a key, a key URL or critical extensions, which are not accepted")]
    KeyInHeader,
    /// Its `alg` is not on the provider's allow-list.
    #[error("the token's algorithm {0:?} is not allowed for its issuer")]
    Algorithm(String),
    /// No `kid`, or one the provider's JWKS does not hold (for that algorithm).
    #[error("the token's key id is not in its issuer's JWKS")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature does not verify with its issuer's key")]
    Signature,
    /// Its `aud` does not name keyward's audience.
    #[error("the token is for another audience")]
    Audience,
    /// Past its `exp` (beyond the allowed skew), or without one.
    #[error("the token has expired (or has no exp)")]
    Expired,
    /// Before its `nbf`, or issued in the future (beyond the allowed skew).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Issued longer ago than the provider's `max_token_age`, or without `iat`.
    #[error("the token was issued too long ago (or has no iat)")]
    TooOld,
    /// No `sub`.
    #[error("the token has no subject")]
    NoSubject,
}

/// The header and claims of a token, read before its signature is checked: only to find
/// its provider and key.
#[derive(Debug)]
pub struct Unverified {
    /// Its `iss`.
    pub issuer: String,
    /// Its `alg`.
    pub alg: String,
    /// Its `kid`.
    pub kid: Option<String>,
}

/// Reads a token's header and issuer, refusing what no provider could accept.
pub fn peek(token: &str) -> Result<Unverified, Refusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::Malformed);
    };
    let decode = |part: &str| -> Result<Map<String, Value>, Refusal> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| Refusal::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| Refusal::Malformed)
    };
    let header = decode(header)?;
    let claims = decode(claims)?;
    if ["jwk", "jku", "x5c", "x5u", "crit"].iter().any(|name| header.contains_key(*name)) {
        return Err(Refusal::KeyInHeader);
    }
    let alg = header.get("alg").and_then(Value::as_str).ok_or(Refusal::Malformed)?.to_owned();
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    let issuer = claims.get("iss").and_then(Value::as_str).ok_or(Refusal::UnknownIssuer)?.to_owned();
    Ok(Unverified { issuer, alg, kid })
}

/// What a provider's tokens must satisfy.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Its `iss`.
    pub issuer: String,
    /// The audience keyward expects.
    pub audience: String,
    /// Allowed algorithms (asymmetric only; checked at start-up).
    pub algorithms: Vec<String>,
    /// The oldest `iat` accepted, in seconds before now.
    pub max_age: i64,
    /// Allowed clock difference, seconds.
    pub skew: i64,
}

/// A provider's keys, as verifiers by (kid, algorithm): built once per JWKS, for the
/// allowed algorithms that fit each key's type.
#[derive(Debug, Default)]
pub struct ProviderKeys {
    verifiers: HashMap<(String, String), Box<dyn JwsVerifier>>,
}

impl ProviderKeys {
    /// The usable keys of a JWKS document for `algorithms`; keys without `kid`, of another
    /// type, or for encryption are left out.
    pub fn from_jwks(document: &[u8], algorithms: &[String]) -> Result<Self, String> {
        let set = JwkSet::from_bytes(document).map_err(|_| "not a JWKS document".to_owned())?;
        let mut verifiers = HashMap::new();
        for jwk in set.keys() {
            let Some(kid) = jwk.key_id() else { continue };
            // A SPIFFE trust bundle marks its JWT-SVID signing keys `"use": "jwt-svid"`.
            let mut jwk = jwk.clone();
            if jwk.key_use() == Some("jwt-svid") {
                jwk.set_key_use("sig");
            }
            for alg in algorithms {
                if let Some(verifier) = verifier(&jwk, alg) {
                    verifiers.insert((kid.to_owned(), alg.clone()), verifier);
                }
            }
        }
        Ok(ProviderKeys { verifiers })
    }

    /// How many (kid, algorithm) verifiers there are.
    pub fn len(&self) -> usize {
        self.verifiers.len()
    }

    /// Whether it holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.verifiers.is_empty()
    }

    fn get(&self, kid: &str, alg: &str) -> Option<&dyn JwsVerifier> {
        self.verifiers.get(&(kid.to_owned(), alg.to_owned())).map(AsRef::as_ref)
    }

    /// Whether it has a key for `kid` and `alg`.
    pub fn has(&self, kid: &str, alg: &str) -> bool {
        self.get(kid, alg).is_some()
    }
}

/// A verifier of `alg` for `jwk`, if the key's type fits the algorithm (josekit also
/// checks `use`, `key_ops` and the JWK's own `alg`).
pub(crate) fn verifier(jwk: &Jwk, alg: &str) -> Option<Box<dyn JwsVerifier>> {
    let built: Result<Box<dyn JwsVerifier>, _> = match alg {
        "RS256" => jws::RS256.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "RS384" => jws::RS384.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "RS512" => jws::RS512.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "PS256" => jws::PS256.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "PS384" => jws::PS384.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "PS512" => jws::PS512.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "ES256" => jws::ES256.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "ES384" => jws::ES384.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        "EdDSA" => jws::EdDSA.verifier_from_jwk(jwk).map(|v| Box::new(v) as _),
        _ => return None,
    };
    built.ok()
}

/// A verified workload identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its issuer.
    pub issuer: String,
    /// Its `sub`.
    pub subject: String,
}

/// Verifies `token` (already [`peek`]ed as `peeked`) by `rules` with `keys` at `now`.
pub fn verify(
    token: &str,
    peeked: &Unverified,
    rules: &Rules,
    keys: &ProviderKeys,
    now: i64,
) -> Result<Verified, Refusal> {
    if !rules.algorithms.contains(&peeked.alg) {
        return Err(Refusal::Algorithm(peeked.alg.clone()));
    }
    let kid = peeked.kid.as_deref().ok_or(Refusal::UnknownKey)?;
    let verifier = keys.get(kid, &peeked.alg).ok_or(Refusal::UnknownKey)?;
    let (payload, header) = josekit::jwt::decode_with_verifier(token, verifier).map_err(|_| Refusal::Signature)?;
    // The signed header is the one peeked at; the verifier holds the algorithm.
    if header.algorithm() != Some(peeked.alg.as_str()) {
        return Err(Refusal::Signature);
    }
    if payload.issuer() != Some(rules.issuer.as_str()) {
        return Err(Refusal::UnknownIssuer);
    }
    if !payload.audience().is_some_and(|aud| aud.iter().any(|a| *a == rules.audience)) {
        return Err(Refusal::Audience);
    }
    let seconds = |name: &str| payload.claim(name).and_then(Value::as_i64);
    match seconds("exp") {
        Some(exp) if now < exp.saturating_add(rules.skew) => {}
        _ => return Err(Refusal::Expired),
    }
    if seconds("nbf").is_some_and(|nbf| nbf > now.saturating_add(rules.skew)) {
        return Err(Refusal::NotYetValid);
    }
    match seconds("iat") {
        Some(iat) if iat > now.saturating_add(rules.skew) => return Err(Refusal::NotYetValid),
        Some(iat) if now.saturating_sub(iat) <= rules.max_age.saturating_add(rules.skew) => {}
        _ => return Err(Refusal::TooOld),
    }
    let subject = payload.subject().filter(|s| !s.is_empty()).ok_or(Refusal::NoSubject)?;
    Ok(Verified { issuer: rules.issuer.clone(), subject: subject.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use josekit::jws::{JwsHeader, ES256};
    use josekit::jwt::{self, JwtPayload};

    const NOW: i64 = 1_800_000_000;

    fn rules() -> Rules {
        Rules {
            issuer: "https://idp".to_owned(),
            audience: "keyward".to_owned(),
            algorithms: vec!["ES256".to_owned()],
            max_age: 3_600,
            skew: 30,
        }
    }

    /// A signed token with `claims` and its provider's keys.
    fn token(claims: serde_json::Value) -> (String, ProviderKeys) {
        let pair = ES256.generate_key_pair().unwrap();
        let mut header = JwsHeader::new();
        header.set_key_id("k1");
        let payload = JwtPayload::from_map(claims.as_object().unwrap().clone()).unwrap();
        let signed =
            jwt::encode_with_signer(&payload, &header, &ES256.signer_from_der(pair.to_der_private_key()).unwrap())
                .unwrap();
        let mut jwk = pair.to_jwk_public_key();
        jwk.set_key_id("k1");
        let jwks = serde_json::json!({"keys": [serde_json::to_value(jwk.as_ref()).unwrap()]});
        (signed, ProviderKeys::from_jwks(jwks.to_string().as_bytes(), &rules().algorithms).unwrap())
    }

    fn check(claims: serde_json::Value, now: i64) -> Result<Verified, Refusal> {
        let (token, keys) = token(claims);
        verify(&token, &peek(&token)?, &rules(), &keys, now)
    }

    fn claims(change: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let mut c =
            serde_json::json!({"iss": "https://idp", "sub": "s", "aud": "keyward", "iat": NOW, "exp": NOW + 600});
        change(&mut c);
        c
    }

    #[test]
    fn times_are_judged_against_the_given_now_with_the_skew() {
        assert_eq!(check(claims(|_| {}), NOW).unwrap().subject, "s");
        assert!(check(claims(|_| {}), NOW + 600 + 29).is_ok(), "within the skew after exp");
        assert_eq!(check(claims(|_| {}), NOW + 600 + 30), Err(Refusal::Expired));
        assert!(check(claims(|_| {}), NOW - 30).is_ok(), "iat within the skew ahead");
        assert_eq!(check(claims(|_| {}), NOW - 31), Err(Refusal::NotYetValid));
        assert_eq!(check(claims(|c| c["nbf"] = (NOW + 100).into()), NOW), Err(Refusal::NotYetValid));
        let old = claims(|c| c["exp"] = (NOW + 86_400).into());
        assert!(check(old.clone(), NOW + 3_600 + 30).is_ok());
        assert_eq!(check(old, NOW + 3_600 + 31), Err(Refusal::TooOld));
        assert_eq!(check(claims(|c| c["aud"] = serde_json::json!(["a", "b"])), NOW), Err(Refusal::Audience));
        assert!(check(claims(|c| c["aud"] = serde_json::json!(["a", "keyward"])), NOW).is_ok());
        assert_eq!(check(claims(|c| c["sub"] = "".into()), NOW), Err(Refusal::NoSubject));
    }

    #[test]
    fn a_spiffe_bundle_key_marked_jwt_svid_is_a_signature_key() {
        let pair_jwks = ProviderKeys::from_jwks(br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","use":"jwt-svid","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#, &rules().algorithms).unwrap();
        assert!(pair_jwks.has("k", "ES256"));
    }

    #[test]
    fn a_binding_matches_its_exact_subject_or_its_prefix() {
        let exact: IdentityBinding = "https://k8s|system:serviceaccount:pay:api".parse().unwrap();
        assert!(exact.matches("https://k8s", "system:serviceaccount:pay:api"));
        assert!(!exact.matches("https://k8s", "system:serviceaccount:pay:api2"));
        assert!(!exact.matches("https://other", "system:serviceaccount:pay:api"));
        let pattern: IdentityBinding = "https://k8s|system:serviceaccount:pay:*".parse().unwrap();
        assert!(pattern.matches("https://k8s", "system:serviceaccount:pay:worker"));
        assert!(!pattern.matches("https://k8s", "system:serviceaccount:billing:worker"));
        assert!(exact.specificity() > pattern.specificity());
        assert_eq!(pattern.to_string(), "https://k8s|system:serviceaccount:pay:*");
    }

    #[test]
    fn malformed_bindings_are_refused() {
        for bad in ["no-bar", "|sub", "iss|", "iss|*", "iss|a*b", "iss|*a*"] {
            assert!(bad.parse::<IdentityBinding>().is_err(), "{bad}");
        }
    }
}
