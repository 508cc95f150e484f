use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::env::*;
use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn example_with(replace: &str, with: &str) -> Result<Config, ConfigError> {
    let text = include_str!("../../keys.example");
    assert!(text.contains(replace), "keys.example lacks {replace:?}");
    let config = parse_toml(&text.replacen(replace, with, 1), "keys.toml")?;
    validate(&config, "keys.toml")?;
    crate::policy::profile::parse_profiles(&config, "keys.toml")?;
    Ok(config)
}

fn error_of(replace: &str, with: &str) -> String {
    match example_with(replace, with) {
        Ok(_) => panic!("{with:?} should be refused"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn keys_example_is_exactly_the_built_in_defaults() {
    let parsed = parse_toml(include_str!("../../keys.example"), "keys.example").unwrap();
    assert_eq!(parsed, Config::default());
    validate(&parsed, "keys.example").unwrap();
    crate::policy::profile::parse_profiles(&parsed, "keys.example").unwrap();
}

#[test]
fn a_table_that_leaves_a_field_out_gets_the_value_keys_example_gives() {
    let text = "[server]\n[[key_set]]\nname = \"other\"\n[[profile]]\nname = \"p\"\nkey_set = \"other\"\n";
    let config = parse_toml(text, "keys.toml").unwrap();
    let example = Config::default();
    assert_eq!(config.server, example.server);
    assert_eq!(KeySetConfig { name: "npm".into(), ..config.key_sets[0].clone() }, example.key_sets[0]);
    let (p, e) = (&config.profiles[0], &example.profiles[0]);
    assert_eq!((&p.subject_pattern, p.default_ttl, p.max_ttl), (&e.subject_pattern, e.default_ttl, e.max_ttl));
    // With no [server] at all, too.
    assert_eq!(parse_toml("", "keys.toml").unwrap().server, example.server);
}

#[test]
fn a_minimal_file_gets_every_documented_default() {
    let text = r#"
        [[key_set]]
        name = "npm"
        [[profile]]
        name = "npm-sandbox"
        key_set = "npm"
        issuer = "https://yourdomain.com"
        audience = "http://sandbox.npmdev.net/api/partners/acme/oauth2/v1/token"
        static_claims = { jwks_uri = "/path/to/your/jwks" }
        allowed_claims = ["obo_user"]
    "#;
    assert_eq!(parse_toml(text, "keys.toml").unwrap(), Config::default());
}

#[test]
fn unknown_field_names_file_table_and_field() {
    let msg = error_of("rsa_bits = 2048", "rsa_bitz = 2048");
    assert!(msg.starts_with("keys.toml: [[key_set]] #1, field rsa_bitz"), "{msg}");
    assert!(msg.contains("unknown field"), "{msg}");
    let msg = error_of("[server]", "[server]\nlisten = 1");
    assert!(msg.contains("[server], field listen"), "{msg}");
}

#[test]
fn parse_errors_give_the_right_line_and_name_missing_fields() {
    let text = include_str!("../../keys.example");
    let line = text.lines().position(|l| l.starts_with("rsa_bits")).unwrap() + 1;
    let msg = error_of("rsa_bits = 2048", "rsa_bitz = 2048");
    assert!(msg.contains(&format!("(line {line})")), "expected line {line}: {msg}");
    let msg = error_of(r#"name = "npm-sandbox""#, "");
    assert!(msg.contains("[[profile]] #1, field name") && msg.contains("missing field"), "{msg}");
    let msg = error_of(r#"issuer = "https://yourdomain.com""#, "");
    assert!(msg.contains(r#"[[profile]] "npm-sandbox", field issuer: missing"#), "{msg}");
}

#[test]
fn a_path_listed_twice_in_one_set_says_so() {
    let msg =
        error_of(r#"jwks_paths = ["/path/to/your/jwks", "/.well-known/jwks.json"]"#, r#"jwks_paths = ["/a", "/a"]"#);
    assert!(msg.contains("\"/a\" is listed twice"), "{msg}");
}

#[test]
fn each_start_up_rule_is_enforced_with_its_field_named() {
    let cases = [
        (r#"algorithm = "RS256""#, r#"algorithm = "HS999""#, "field algorithm"),
        ("rsa_bits = 2048", "rsa_bits = 1024", "field rsa_bits"),
        (r#"key_set = "npm""#, r#"key_set = "nope""#, "field key_set"),
        (r#"max_ttl = "55m""#, r#"max_ttl = "1h""#, "field max_ttl"),
        (r#"max_ttl = "55m""#, r#"max_ttl = "3600s""#, "field max_ttl"),
        (r#"default_ttl = "5m""#, r#"default_ttl = "56m""#, "field default_ttl"),
        (
            r#"static_claims = { jwks_uri = "/path/to/your/jwks" }"#,
            r#"static_claims = { jwks_uri = "/elsewhere" }"#,
            "field static_claims.jwks_uri",
        ),
        (r#"allowed_claims = ["obo_user"]"#, r#"allowed_claims = ["exp"]"#, "field allowed_claims"),
        (r#"allowed_claims = ["obo_user"]"#, r#"allowed_claims = ["jwks_uri"]"#, "field allowed_claims"),
        (r#"subject_pattern = "^[A-Za-z0-9._@:-]{1,128}$""#, r#"subject_pattern = "^[a-z""#, "field subject_pattern"),
        (r#"jwks_max_age = "5m""#, r#"jwks_max_age = "5 minutes""#, "field jwks_max_age"),
    ];
    for (replace, with, expect) in cases {
        let msg = error_of(replace, with);
        assert!(msg.starts_with("keys.toml: "), "{msg}");
        assert!(msg.contains(expect), "{with}: expected {expect:?} in {msg:?}");
    }
}

#[test]
fn rotation_timing_rules_name_the_rule_that_failed() {
    let cases = [
        (
            r#"publish_ahead = "24h""#,
            r#"publish_ahead = "5m""#,
            "field publish_ahead",
            "jwks_max_age + clock_skew (6m)",
        ),
        (r#"retain_after = "24h""#, r#"retain_after = "359s""#, "field retain_after", "jwks_max_age + clock_skew (6m)"),
        (r#"rotate_every = "30d""#, r#"rotate_every = "23h""#, "field rotate_every", "shorter than publish_ahead (1d)"),
        (r#"clock_skew = "60s""#, r#"clock_skew = "0s""#, "field clock_skew", "at least 1s"),
    ];
    for (replace, with, field, rule) in cases {
        let msg = error_of(replace, with);
        assert!(msg.contains(field) && msg.contains(rule), "{with}: {msg}");
    }
    // Exactly at each bound is accepted.
    example_with(r#"publish_ahead = "24h""#, r#"publish_ahead = "6m""#).unwrap();
    example_with(r#"retain_after = "24h""#, r#"retain_after = "360s""#).unwrap();
    example_with(r#"rotate_every = "30d""#, r#"rotate_every = "24h""#).unwrap();
}

#[test]
fn every_duration_may_be_as_short_as_one_second() {
    let text = include_str!("../../keys.example")
        .replace(r#"jwks_max_age = "5m""#, r#"jwks_max_age = "1s""#)
        .replace(r#"clock_skew = "60s""#, r#"clock_skew = "1s""#)
        .replace(r#"publish_ahead = "24h""#, r#"publish_ahead = "2s""#)
        .replace(r#"retain_after = "24h""#, r#"retain_after = "2s""#)
        .replace(r#"rotate_every = "30d""#, r#"rotate_every = "2s""#)
        .replace(r#"default_ttl = "5m""#, r#"default_ttl = "1s""#)
        .replace(r#"max_ttl = "55m""#, r#"max_ttl = "1s""#);
    let config = parse_toml(&text, "keys.toml").unwrap();
    validate(&config, "keys.toml").unwrap();
    crate::policy::profile::parse_profiles(&config, "keys.toml").unwrap();
    assert_eq!(config.key_sets[0].rotate_every.as_secs(), 2);
}

#[test]
fn two_key_sets_may_not_claim_one_path() {
    let second = r#"
[[key_set]]
name = "other"
algorithm = "ES256"
jwks_paths = ["/.well-known/jwks.json"]
"#;
    let text = format!("{}\n{second}", include_str!("../../keys.example"));
    let config = parse_toml(&text, "keys.toml").unwrap();
    let msg = validate(&config, "keys.toml").unwrap_err().to_string();
    assert!(msg.contains(r#"[[key_set]] "other", field jwks_paths"#), "{msg}");
    assert!(msg.contains("already served by key set \"npm\""), "{msg}");
}

#[test]
fn allowed_claim_types_are_parsed_at_load_and_bad_declarations_name_the_field_and_line() {
    let names = r#"allowed_claims = ["obo_user"]"#;
    let declared = |types: &str| format!("allowed_claims = [\"obo_user\", \"roles\"]\nallowed_claim_types = {types}");
    let config = example_with(
        names,
        &declared(
            r#"{ obo_user = { type = "string", max_length = 320 }, roles = { type = "string_array", max_items = 8 } }"#,
        ),
    )
    .unwrap();
    let types = &config.profiles[0].allowed_claim_types;
    assert_eq!(types["obo_user"], ClaimType::String { max_length: 320 });
    // keys.example's commented declaration works as it is.
    let uncommented = example_with("# allowed_claim_types = ", "allowed_claim_types = ").unwrap();
    assert_eq!(uncommented.profiles[0].allowed_claim_types["obo_user"], ClaimType::String { max_length: 320 });
    assert_eq!(types["roles"], ClaimType::StringArray { max_items: 8, max_length: 256 });
    let line = include_str!("../../keys.example").lines().position(|l| l.starts_with(names)).unwrap() + 2;
    let cases = [
        (r#"{ roles = { type = "float" } }"#, "field allowed_claim_types"),
        (r#"{ roles = { type = "string", max_len = 5 } }"#, "field allowed_claim_types"),
        (r#"{ roles = { type = "boolean", max_length = 5 } }"#, "field allowed_claim_types"),
        (r#"{ roles = { type = "string", max_length = -1 } }"#, "field allowed_claim_types"),
        (r#"{ roles = { max_length = 5 } }"#, "field allowed_claim_types"),
    ];
    for (types, field) in cases {
        let msg = error_of(names, &declared(types));
        assert!(msg.contains(field) && msg.contains(&format!("(line {line})")), "{types}: {msg}");
    }
    let cases = [
        (r#"{ role = { type = "string" } }"#, "\"role\" is not in allowed_claims"),
        (r#"{ roles = { type = "string", max_length = 0 } }"#, "\"roles\" has max_length 0"),
        (r#"{ roles = { type = "string_array", max_items = 0 } }"#, "\"roles\" has max_items 0"),
        (r#"{ roles = { type = "integer", min = 5, max = 4 } }"#, "\"roles\" has min above max"),
    ];
    for (types, says) in cases {
        let msg = error_of(names, &declared(types));
        assert!(msg.contains(r#"[[profile]] "npm-sandbox", field allowed_claim_types"#) && msg.contains(says), "{msg}");
    }
}

#[test]
fn max_ttl_just_under_an_hour_is_accepted() {
    example_with(r#"max_ttl = "55m""#, r#"max_ttl = "3599s""#).unwrap();
}

#[test]
fn ledger_commit_interval_is_at_most_a_second() {
    let config = example_with("ledger_commit_interval_ms = 0", "ledger_commit_interval_ms = 5").unwrap();
    assert_eq!(config.server.ledger_commit_interval_ms, 5);
    let err = error_of("ledger_commit_interval_ms = 0", "ledger_commit_interval_ms = 1001");
    assert!(err.contains("ledger_commit_interval_ms") && err.contains("at most 1000"), "{err}");
    let loaded = load(ConfigSource::Defaults, &env(&[("KEYWARD_LEDGER_COMMIT_INTERVAL_MS", "20")])).unwrap();
    assert_eq!(loaded.config.server.ledger_commit_interval_ms, 20);
    let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_LEDGER_COMMIT_INTERVAL_MS", "5ms")])).unwrap_err();
    assert!(err.to_string().contains("KEYWARD_LEDGER_COMMIT_INTERVAL_MS"), "{err}");
}

#[test]
fn console_is_off_by_default_and_its_session_is_one_minute_to_twelve_hours() {
    let config = example_with("console = false", "console = true").unwrap();
    assert!(config.server.console && !Config::default().server.console);
    assert_eq!(Config::default().server.console_session, Duration::from_secs(1800));
    for bad in ["30s", "13h"] {
        let err = error_of(r#"console_session = "30m""#, &format!("console_session = {bad:?}"));
        assert!(err.contains("[server], field console_session") && err.contains("1m to 12h"), "{err}");
    }
}

#[test]
fn request_body_timeout_is_one_to_sixty_seconds_from_the_file_or_the_environment() {
    let config = example_with(r#"request_body_timeout = "5s""#, r#"request_body_timeout = "60s""#).unwrap();
    assert_eq!(config.server.request_body_timeout, Duration::from_secs(60));
    for bad in ["0s", "61s"] {
        let err = error_of(r#"request_body_timeout = "5s""#, &format!("request_body_timeout = {bad:?}"));
        assert!(err.contains("[server], field request_body_timeout") && err.contains("1s to 60s"), "{err}");
    }
    let err = error_of(r#"request_body_timeout = "5s""#, "request_body_timeout = 5");
    assert!(err.contains("[server], field request_body_timeout (line"), "{err}");
    let loaded = load(ConfigSource::Defaults, &env(&[("KEYWARD_REQUEST_BODY_TIMEOUT", "2s")])).unwrap();
    assert_eq!(loaded.config.server.request_body_timeout, Duration::from_secs(2));
    let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_REQUEST_BODY_TIMEOUT", "2")])).unwrap_err();
    assert!(err.to_string().contains("KEYWARD_REQUEST_BODY_TIMEOUT"), "{err}");
    let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_REQUEST_BODY_TIMEOUT", "0s")])).unwrap_err();
    assert!(err.to_string().starts_with("environment: KEYWARD_REQUEST_BODY_TIMEOUT: "), "{err}");
    assert!(err.to_string().contains("1s to 60s"), "{err}");
}

#[test]
fn request_deadline_is_two_to_thirty_seconds_and_the_signing_limit_at_least_one() {
    let config = example_with(r#"request_deadline = "2s""#, r#"request_deadline = "30s""#).unwrap();
    assert_eq!(config.server.request_deadline, Duration::from_secs(30));
    for bad in ["0s", "1s", "31s", "1m"] {
        let err = error_of(r#"request_deadline = "2s""#, &format!("request_deadline = {bad:?}"));
        assert!(err.contains("[server], field request_deadline") && err.contains("2s to 30s"), "{err}");
    }
    let loaded = load(ConfigSource::Defaults, &env(&[("KEYWARD_REQUEST_DEADLINE", "5s")])).unwrap();
    assert_eq!(loaded.config.server.request_deadline, Duration::from_secs(5));
    let err = error_of("max_signing_requests = 256", "max_signing_requests = 0");
    assert!(err.contains("[server], field max_signing_requests") && err.contains("at least 1"), "{err}");
}

#[test]
fn env_overrides_server_fields_and_warns_about_unknown_names() {
    let loaded = load(
        ConfigSource::Defaults,
        &env(&[("KEYWARD_PUBLIC_ADDR", "0.0.0.0:9000"), ("KEYWARD_DATABASE_URL", "sqlite:///tmp/x.db")]),
    )
    .unwrap();
    assert_eq!(loaded.config.server.public_addr.port(), 9000);
    assert_eq!(loaded.config.database_path(), Path::new("/tmp/x.db"));

    let loaded =
        load(ConfigSource::Defaults, &env(&[("KEYWARD_PUBLC_ADDR", "x"), ("KEYWARD_PORT", "tcp://x")])).unwrap();
    assert_eq!(loaded.warnings.len(), 2);
    assert!(loaded.warnings[1].contains("KEYWARD_PUBLC_ADDR"), "{:?}", loaded.warnings);
    let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_PUBLIC_ADDR", "nowhere")])).unwrap_err();
    assert!(err.to_string().contains("KEYWARD_PUBLIC_ADDR"));
}

#[test]
fn every_server_field_and_no_other_is_read_from_its_environment_variable() {
    let values = [
        ("KEYWARD_PUBLIC_ADDR", "127.0.0.1:9"),
        ("KEYWARD_INTERNAL_ADDR", "127.0.0.1:10"),
        ("KEYWARD_DATABASE_URL", "/tmp/e.db"),
        ("KEYWARD_MASTER_KEY_FILE", "/tmp/m.key"),
        ("KEYWARD_LEDGER_RETENTION", "2d"),
        ("KEYWARD_AUDIT_CHECKPOINT_INTERVAL", "10m"),
        ("KEYWARD_LEDGER_COMMIT_INTERVAL_MS", "7"),
        ("KEYWARD_RATE_LIMIT", "3"),
        ("KEYWARD_RATE_BURST", "4"),
        ("KEYWARD_REQUEST_BODY_TIMEOUT", "9s"),
        ("KEYWARD_REQUEST_DEADLINE", "3s"),
        ("KEYWARD_MAX_SIGNING_REQUESTS", "64"),
        ("KEYWARD_CONSOLE", "true"),
        ("KEYWARD_CONSOLE_SESSION", "1h"),
        ("KEYWARD_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
    ];
    let loaded = load(ConfigSource::Defaults, &env(&values)).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let expected = ServerConfig {
        public_addr: "127.0.0.1:9".parse().unwrap(),
        internal_addr: "127.0.0.1:10".parse().unwrap(),
        database_url: "/tmp/e.db".into(),
        master_key_file: "/tmp/m.key".into(),
        ledger_retention: Duration::from_secs(2 * 86_400),
        audit_checkpoint_interval: Duration::from_secs(600),
        audit_checkpoint_key_set: None,
        ledger_commit_interval_ms: 7,
        rate_limit: 3,
        rate_burst: 4,
        request_body_timeout: Duration::from_secs(9),
        request_deadline: Duration::from_secs(3),
        max_signing_requests: 64,
        console: true,
        console_session: Duration::from_secs(3600),
        public_tls: None,
        internal_tls: None,
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.1/32".parse().unwrap()],
    };
    assert_eq!(loaded.config.server, expected);
    // The variables come from the schema: one per [server] field, plus the five that
    // only the environment gives.
    let known: BTreeSet<String> = known_env().into_iter().map(|(name, _)| name).collect();
    let mut expected: BTreeSet<String> = values.iter().map(|(name, _)| (*name).to_owned()).collect();
    expected.extend(
        ["KEYWARD_CONFIG", "KEYWARD_MASTER_KEY", "KEYWARD_DEV", "KEYWARD_LOG_FORMAT", "KEYWARD_PKCS11_PIN"]
            .map(String::from),
    );
    assert_eq!(known, expected);
    let quiet = [
        ("KEYWARD_CONFIG", "k.toml"),
        ("KEYWARD_MASTER_KEY", "x"),
        ("KEYWARD_DEV", "1"),
        ("KEYWARD_LOG_FORMAT", "json"),
        ("KEYWARD_PKCS11_PIN", "1234"),
    ];
    assert!(load(ConfigSource::Defaults, &env(&quiet)).unwrap().warnings.is_empty());
}

#[test]
fn a_bad_value_from_the_environment_names_the_variable_and_the_field() {
    for (var, value, says) in [
        ("KEYWARD_PUBLIC_ADDR", "nowhere", "\"nowhere\" is not a valid public_addr"),
        ("KEYWARD_RATE_LIMIT", "-1", "\"-1\" is not a whole number"),
        ("KEYWARD_RATE_LIMIT", "4294967296", "is not a valid rate_limit"),
        ("KEYWARD_LEDGER_RETENTION", "90", "add a unit"),
    ] {
        let err = load(ConfigSource::Defaults, &env(&[(var, value)])).unwrap_err();
        assert_eq!((err.source_name.as_str(), err.location.as_str()), ("environment", var));
        assert!(err.message.contains(says), "{var}={value}: {err}");
    }
}

#[test]
fn source_is_explicit_file_then_keys_toml_then_defaults() {
    assert_eq!(choose_source(Some(Path::new("/etc/k.toml")), true), ConfigSource::File(PathBuf::from("/etc/k.toml")));
    assert_eq!(choose_source(None, true), ConfigSource::File(PathBuf::from("keys.toml")));
    assert_eq!(choose_source(None, false), ConfigSource::Defaults);
}

#[test]
fn database_url_takes_the_forms_sqlx_takes_and_plain_paths() {
    for (url, path) in [
        ("sqlite://data/keyward.db", "data/keyward.db"),
        ("sqlite:x.db", "x.db"),
        ("sqlite:///abs/x.db", "/abs/x.db"),
        ("/abs/y.db", "/abs/y.db"),
        ("rel/z.db", "rel/z.db"),
    ] {
        assert_eq!(database_file(url).unwrap(), Path::new(path), "{url}");
    }
    for url in ["sqlite::memory:", "sqlite://", "sqlite://x.db?mode=ro", ""] {
        assert!(database_file(url).is_err(), "{url}");
    }
}

#[test]
fn an_error_in_a_value_from_the_environment_names_the_variable() {
    let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_DATABASE_URL", "sqlite::memory:")])).unwrap_err();
    assert_eq!((err.source_name.as_str(), err.location.as_str()), ("environment", "KEYWARD_DATABASE_URL"));
    let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_RATE_BURST", "0")])).unwrap_err();
    assert_eq!(err.location, "KEYWARD_RATE_BURST", "{err}");
    let err = load(ConfigSource::Defaults, &env(&[("KEYWARD_LEDGER_RETENTION", "1h")])).unwrap_err();
    assert_eq!(err.location, "KEYWARD_LEDGER_RETENTION", "{err}");
    // A value from the built-in defaults or a file keeps its table and field.
    let loaded = load(ConfigSource::Defaults, &env(&[("KEYWARD_DATABASE_URL", "/tmp/x.db")])).unwrap();
    assert_eq!(loaded.config.database_path(), Path::new("/tmp/x.db"));
}

#[test]
fn log_format_and_dev_take_only_known_values() {
    assert_eq!(EnvSettings::from_env(&env(&[])).unwrap().log_format, LogFormat::Text);
    assert!(EnvSettings::from_env(&env(&[])).unwrap().may_generate_master_key);
    assert_eq!(EnvSettings::from_env(&env(&[("KEYWARD_LOG_FORMAT", "JSON")])).unwrap().log_format, LogFormat::Json);
    assert!(!EnvSettings::from_env(&env(&[("KEYWARD_DEV", "0")])).unwrap().may_generate_master_key);
    let err = EnvSettings::from_env(&env(&[("KEYWARD_LOG_FORMAT", "josn")])).unwrap_err().to_string();
    assert!(err.contains("KEYWARD_LOG_FORMAT") && err.contains("text or json"), "{err}");
    let err = EnvSettings::from_env(&env(&[("KEYWARD_DEV", "yes")])).unwrap_err().to_string();
    assert!(err.contains("KEYWARD_DEV"), "{err}");
}

#[test]
fn relative_paths_in_a_file_are_relative_to_its_folder_and_absolute_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let text = include_str!("../../keys.example")
        .replace(r#"master_key_file = "data/master.key""#, r#"master_key_file = "/secure/master.key""#);
    std::fs::write(&file, text).unwrap();
    let loaded = load(ConfigSource::File(file), &HashMap::new()).unwrap();
    assert_eq!(loaded.config.database_path(), dir.path().join("data/keyward.db"));
    assert_eq!(loaded.config.server.master_key_file, Path::new("/secure/master.key"));
    // From the environment, relative stays relative (to the working directory).
    let file = dir.path().join("keys.toml");
    let loaded = load(ConfigSource::File(file), &env(&[("KEYWARD_DATABASE_URL", "here.db")])).unwrap();
    assert_eq!(loaded.config.database_path(), Path::new("here.db"));
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let err = load(ConfigSource::File(PathBuf::from("/nonexistent/keys.toml")), &HashMap::new()).unwrap_err();
    assert!(err.to_string().starts_with("/nonexistent/keys.toml: file: cannot read"), "{err}");
}

#[test]
fn retention_covers_the_longest_max_ttl_of_the_sets_profiles() {
    let mut config = Config::default();
    let mut second = config.profiles[0].clone();
    second.name = "longer".into();
    second.max_ttl = Duration::from_secs(3_599);
    config.profiles.push(second);
    let p = config.policy(&config.key_sets[0]);
    const DAY: i64 = 86_400;
    assert_eq!(p.retain_for, 3_599 + DAY);
    config.profiles.clear();
    assert_eq!(config.policy(&config.key_sets[0]).retain_for, 3_600 + DAY);
}

fn with_identity_provider(table: &str) -> Result<Config, ConfigError> {
    example_with("# An identity provider:", &format!("[[identity_provider]]\n{table}\n\n# An identity provider:"))
}

#[test]
fn an_identity_provider_gets_its_defaults_and_bad_ones_are_refused_naming_the_table_and_field() {
    let config =
        with_identity_provider("issuer = \"https://k8s\"\njwks_file = \"jwks.json\"\naudience = \"keyward\"").unwrap();
    let provider = &config.identity_providers[0];
    assert_eq!(provider.algorithms, ["RS256", "ES256"]);
    assert_eq!((provider.max_token_age.as_secs(), provider.clock_skew.as_secs()), (3_600, 30));

    let refused = |table: &str, field: &str, words: &str| {
        let err = with_identity_provider(table).unwrap_err().to_string();
        assert!(err.contains("keys.toml") && err.contains(field) && err.contains(words), "{table}: {err}");
    };
    let base = "issuer = \"https://k8s\"\naudience = \"keyward\"\n";
    refused(
        &format!("{base}jwks_file = \"a\"\njwks_uri = \"https://x/jwks\""),
        "[[identity_provider]] \"https://k8s\", field jwks_uri",
        "exactly one",
    );
    refused(base, "field jwks_uri", "exactly one");
    refused(&format!("{base}jwks_uri = \"http://x/jwks\""), "field jwks_uri", "https://");
    refused(&format!("{base}jwks_file = \"a\"\nca_file = \"ca.pem\""), "field ca_file", "over TLS");
    for alg in ["HS256", "none"] {
        refused(&format!("{base}jwks_file = \"a\"\nalgorithms = [\"{alg}\"]"), "field algorithms", "only asymmetric");
    }
    refused(&format!("{base}jwks_file = \"a\"\nalgorithms = []"), "field algorithms", "at least one");
    refused(&format!("{base}jwks_file = \"a\"\nmax_token_age = \"2d\""), "field max_token_age", "out of range");
    refused("issuer = \"https://k8s\"\njwks_file = \"a\"\naudience = \" \"", "field audience", "audience");
    let twice = format!("{base}jwks_file = \"a\"\n\n[[identity_provider]]\n{base}jwks_file = \"b\"");
    refused(&twice, "field issuer", "same issuer");
}
