use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::config::{ClaimType, Config};

fn profile() -> Profile {
    Profile::parse(&Config::default().profiles[0], &Config::default().key_sets).unwrap()
}

fn request(json: Value) -> SignRequest {
    serde_json::from_value(json).unwrap()
}

#[test]
fn builds_the_npm_assertion_claims() {
    let p = profile()
        .prepare(request(serde_json::json!({"sub": "acct-1", "claims": {"obo_user": "u@x.com"}})), 1_000, "j".into())
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
    let p = Profile::parse(&config, &Config::default().key_sets).unwrap();
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
    let p = Profile::parse(&config, &Config::default().key_sets).unwrap();
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

#[test]
fn each_kind_is_parsed_once_into_what_it_signs_with() {
    let config = Config::default();
    let p = profile();
    match &p.kind {
        ProfileKind::KeySet { key_set, issuer, audience, static_claims } => {
            assert_eq!((key_set.as_str(), issuer.as_str()), ("npm", "https://yourdomain.com"));
            assert_eq!(audience, "http://sandbox.npmdev.net/api/partners/acme/oauth2/v1/token");
            assert_eq!(static_claims["jwks_uri"], "/path/to/your/jwks");
        }
        other => panic!("{other:?}"),
    }
    let mut secret = config.profiles[0].clone();
    (secret.key_set, secret.issuer, secret.audience) = (None, None, None);
    secret.static_claims.clear();
    secret.algorithm = Some(crate::keys::HmacAlgorithm::Hs512);
    secret.claims = Some(BTreeMap::from([("exp".to_owned(), Value::from("{exp}"))]));
    secret.valid_from = Some("2026-01-01T00:00:00Z".to_owned());
    let parsed = Profile::parse(&secret, &config.key_sets).unwrap();
    assert!(matches!(&parsed.kind, ProfileKind::SharedSecret { template, .. } if template["exp"] == "{exp}"));
    assert_eq!(parsed.valid_from, Some(1_767_225_600));
    let refused = parsed.prepare(request(serde_json::json!({})), 1_767_225_599, "j".into()).unwrap_err();
    assert_eq!(refused.kind, RefusalKind::NotNow);
}

#[test]
fn an_account_key_exchange_carries_the_key_set_it_sends() {
    let config = Config::default();
    let mut exchanging = config.profiles[0].clone();
    exchanging.exchange = Some(crate::config::ExchangeConfig {
        style: crate::config::ExchangeStyle::AccountKey,
        token_url: "https://partner.example/token".into(),
        token_field: "token".into(),
        account_id: Some("acct".into()),
        refresh_url: None,
        timeout: crate::config::Duration::from_secs(5),
    });
    let parsed = Profile::parse(&exchanging, &config.key_sets).unwrap();
    match parsed.exchange {
        Some(Exchange::AccountKey(account)) => {
            assert_eq!((account.key_set.as_str(), account.account_id.as_str()), ("npm", "acct"))
        }
        other => panic!("{other:?}"),
    }
    if let Some(exchange) = exchanging.exchange.as_mut() {
        exchange.account_id = Some(String::new());
    }
    let err = Profile::parse(&exchanging, &config.key_sets).unwrap_err();
    assert_eq!(err.field, "exchange.account_id");
}

#[test]
fn a_subject_pattern_must_be_valid_on_its_own_not_only_once_anchored() {
    let mut config = Config::default().profiles[0].clone();
    config.subject_pattern = "a)(b".to_owned();
    let err = Profile::parse(&config, &Config::default().key_sets).unwrap_err();
    assert_eq!(err.field, "subject_pattern");
    assert!(err.message.starts_with("not a valid regular expression"), "{}", err.message);
}
