//! Keys held by a PKCS#11 token (SoftHSM2, a fresh token per test in a temporary folder):
//! generated inside it and never extractable, signatures verified independently against the
//! served JWKS, destroyed when retired or revoked, the token's failure and return, and the
//! start-up messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyward::config::{Config, Duration as Span, Pkcs11Config};
use keyward::keys::custody::CustodyKind;
use keyward::keys::{Algorithm, PublicKey};
use keyward::store::Store;
use serde_json::{json, Value};

use crate::helpers::{keyward_bare, serve_with_env, sqlite, test_config, wait_healthy, Serve};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";
const LABEL: &str = "keyward";
const PIN: &str = "1234";
/// Where Debian and Ubuntu's softhsm2 package puts the module.
const MODULES: [&str; 2] = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The SoftHSM2 module. These tests never skip: without SoftHSM2 they fail saying what to
/// install.
fn softhsm_module() -> PathBuf {
    let module = MODULES.iter().map(PathBuf::from).find(|m| m.exists());
    let util = Command::new("softhsm2-util").arg("--version").output().is_ok_and(|o| o.status.success());
    match module {
        Some(module) if util => module,
        _ => panic!(
            "SoftHSM2 is not installed: the PKCS#11 tests need {} and softhsm2-util \
             (Debian/Ubuntu: apt-get install softhsm2, or run scripts/test.sh, which installs it)",
            MODULES[0]
        ),
    }
}

/// A fresh SoftHSM2 token in a temporary folder of its own (never the system's), which
/// also holds keyward's database and files.
struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    module: PathBuf,
}

impl SoftHsm {
    fn new() -> Self {
        let module = softhsm_module();
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        let settings =
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display());
        std::fs::write(&conf, settings).unwrap();
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", "5678"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "softhsm2-util --init-token: {}", text(&out.stderr));
        SoftHsm { dir, conf, module }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn env(&self) -> Vec<(&str, &str)> {
        vec![("SOFTHSM2_CONF", self.conf.to_str().unwrap()), ("KEYWARD_PKCS11_PIN", PIN)]
    }

    /// The test configuration with its key set in this token.
    fn config(&self, algorithm: Algorithm) -> Config {
        let mut config = test_config(self.path());
        config.key_sets[0].algorithm = algorithm;
        config.key_sets[0].custody = CustodyKind::Pkcs11;
        config.pkcs11 = Some(Pkcs11Config {
            module: self.module.clone(),
            token_label: LABEL.into(),
            pin_file: None,
            pin: None,
            max_sessions: 4,
        });
        config
    }

    async fn serve(&self, config: &Config) -> (Serve, reqwest::Client) {
        let mut server = serve_with_env(self.path(), config, "info", &self.env());
        let http = reqwest::Client::new();
        assert!(wait_healthy(&http, &mut server).await, "keyward did not start on the token");
        (server, http)
    }

    /// The CLI against `server`'s configuration, with the token's environment.
    fn keyward(&self, server: &Serve, args: &[&str]) -> Output {
        let mut all = vec!["--config", server.config_file.to_str().unwrap()];
        all.extend_from_slice(args);
        keyward_bare(self.path(), &all).envs(self.env()).output().unwrap()
    }

    /// A client of the profile (or an admin client), added through the CLI.
    fn client(&self, server: &Serve, name: &str, admin: bool) -> String {
        let mut args = vec!["clients", "add", name, "--profiles", PROFILE];
        if admin {
            args.push("--admin");
        }
        let out = self.keyward(server, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }

    /// Every key object in the token, read through PKCS#11.
    fn objects(&self) -> Vec<TokenObject> {
        // SoftHSM2 reads SOFTHSM2_CONF when initialised: one look at a time in this process.
        static LOOKING: Mutex<()> = Mutex::new(());
        let _one = LOOKING.lock().unwrap_or_else(PoisonError::into_inner);
        std::env::set_var("SOFTHSM2_CONF", &self.conf);
        let pkcs11 = Pkcs11::new(&self.module).unwrap();
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
        let slot = pkcs11
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|slot| pkcs11.get_token_info(*slot).unwrap().label().trim_end() == LABEL)
            .expect("the test token");
        let session = pkcs11.open_ro_session(slot).unwrap();
        session.login(UserType::User, Some(&AuthPin::from(PIN))).unwrap();
        let mut objects = Vec::new();
        for (class, private) in
            [(ObjectClass::PRIVATE_KEY, true), (ObjectClass::PUBLIC_KEY, false), (ObjectClass::SECRET_KEY, true)]
        {
            for handle in session.find_objects(&[Attribute::Class(class)]).unwrap() {
                let secret = class == ObjectClass::SECRET_KEY;
                let mut object = TokenObject { private, secret, ..TokenObject::default() };
                let mut wanted = vec![AttributeType::Id, AttributeType::Label, AttributeType::Token];
                if private {
                    wanted.extend([
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::AlwaysSensitive,
                        AttributeType::NeverExtractable,
                    ]);
                }
                for attribute in session.get_attributes(handle, &wanted).unwrap() {
                    match attribute {
                        Attribute::Id(id) => object.id = text(&id),
                        Attribute::Label(label) => object.label = text(&label),
                        Attribute::Token(on) => object.on_token = on,
                        Attribute::Sensitive(on) => object.sensitive = Some(on),
                        Attribute::Extractable(on) => object.extractable = Some(on),
                        Attribute::AlwaysSensitive(on) => object.always_sensitive = Some(on),
                        Attribute::NeverExtractable(on) => object.never_extractable = Some(on),
                        _ => {}
                    }
                }
                objects.push(object);
            }
        }
        drop(session);
        pkcs11.finalize().unwrap();
        objects
    }

    /// The ids of the token's private key objects, sorted.
    fn private_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.objects().into_iter().filter(|o| o.private && !o.secret).map(|o| o.id).collect();
        ids.sort();
        ids
    }
}

/// A `keys` row's private-half columns and public JWK.
type KeyRow = (Option<Vec<u8>>, Option<String>, Option<String>, String);

/// What the token says about one key object.
#[derive(Debug, Default)]
struct TokenObject {
    private: bool,
    /// An AES key (keyward's master key), not a key pair's half.
    secret: bool,
    id: String,
    label: String,
    on_token: bool,
    sensitive: Option<bool>,
    extractable: Option<bool>,
    always_sensitive: Option<bool>,
    never_extractable: Option<bool>,
}

async fn sign(http: &reqwest::Client, server: &Serve, token: &str, sub: &str) -> reqwest::Response {
    http.post(format!("{}/v1/profiles/{PROFILE}/sign", server.internal))
        .bearer_auth(token)
        .json(&json!({ "sub": sub }))
        .send()
        .await
        .unwrap()
}

async fn jwks(http: &reqwest::Client, server: &Serve) -> Value {
    let response = http.get(format!("{}/.well-known/jwks.json", server.public)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    let mut kids: Vec<String> =
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
    kids.sort();
    kids
}

/// Signs over HTTP and verifies with the independent verifier against the JWKS fetched
/// over HTTP; returns the signing kid.
async fn sign_verified(http: &reqwest::Client, server: &Serve, token: &str, sub: &str) -> String {
    let response = sign(http, server, token, sub).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let verified = verify(body["token"].as_str().unwrap(), &jwks(http, server).await).unwrap();
    assert_eq!(verified.claims["sub"], sub);
    body["kid"].as_str().unwrap().to_owned()
}

/// Waits up to `limit` for `check`, polling.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn keys_made_in_the_token_sign_rs256_ps256_es256_and_es384_verified_against_the_served_jwks() {
    for algorithm in [Algorithm::Rs256, Algorithm::Ps256, Algorithm::Es256, Algorithm::Es384] {
        let hsm = SoftHsm::new();
        let (server, http) = hsm.serve(&hsm.config(algorithm)).await;
        let token = hsm.client(&server, "backend", false);
        // Several signatures: an ECDSA r or s with leading zeros must keep its width.
        for sub in ["a", "b", "c", "d", "e", "f"] {
            sign_verified(&http, &server, &token, sub).await;
        }
        let served = jwks(&http, &server).await;
        for key in served["keys"].as_array().unwrap() {
            assert_eq!(key["alg"], algorithm.as_str());
            let public: PublicKey = serde_json::from_value(key.clone()).unwrap();
            assert_eq!(key["kid"], public.thumbprint(), "{algorithm}: the kid is the RFC 7638 thumbprint");
        }

        // Current and next keys, each a sensitive, never extractable token object
        // labelled and identified by its kid, beside its public object.
        let objects = hsm.objects();
        assert_eq!(hsm.private_ids(), kids(&served), "{algorithm}");
        assert_eq!(objects.len(), 4, "{algorithm}: {objects:?}");
        for object in &objects {
            assert!(object.on_token && object.label == object.id, "{algorithm}: {object:?}");
            if object.private {
                assert_eq!(object.sensitive, Some(true), "{algorithm}: CKA_SENSITIVE");
                assert_eq!(object.extractable, Some(false), "{algorithm}: CKA_EXTRACTABLE");
                assert_eq!(object.always_sensitive, Some(true), "{algorithm}: CKA_ALWAYS_SENSITIVE");
                assert_eq!(object.never_extractable, Some(true), "{algorithm}: CKA_NEVER_EXTRACTABLE");
            }
        }

        // The database keeps a reference and the public key, no private material.
        let store = Store::open(hsm.path().join("keyward.db")).await.unwrap();
        assert!(!store.holds_sealed_material().await.unwrap());
        let rows: Vec<KeyRow> =
            sqlx::query_as("SELECT sealed_private, master_key_id, token_label, public_jwk FROM keys")
                .fetch_all(sqlite(&store))
                .await
                .unwrap();
        assert_eq!(rows.len(), 2);
        for (sealed, master_key_id, token_label, public_jwk) in rows {
            assert_eq!((sealed, master_key_id, token_label.as_deref()), (None, None, Some(LABEL)));
            let jwk: Value = serde_json::from_str(&public_jwk).unwrap();
            for private_member in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(jwk.get(private_member).is_none(), "{algorithm}: {public_jwk}");
            }
        }
        let bytes = std::fs::read(hsm.path().join("keyward.db")).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
        sqlite(&store).close().await;

        // `keys list` says where each key is; nothing is sealed, so no master key was asked
        // for or generated.
        let out = hsm.keyward(&server, &["keys", "list"]);
        let listed = text(&out.stdout);
        let custody: Vec<&str> = listed.lines().skip(1).map(|l| l.split_whitespace().nth(4).unwrap()).collect();
        assert_eq!(custody, [format!("pkcs11:{LABEL}"), format!("pkcs11:{LABEL}")], "{listed}");
        assert!(!hsm.path().join("master.key").exists(), "{algorithm}: a master key was generated for nothing");
        let log = server.log_text();
        assert!(!log.contains("NO MASTER KEY") && log.contains("no master key needed"), "{log}");
    }
}

#[tokio::test]
async fn concurrent_signatures_share_a_bounded_pool_of_token_sessions() {
    let hsm = SoftHsm::new();
    let mut config = hsm.config(Algorithm::Es256);
    config.pkcs11.as_mut().unwrap().max_sessions = 2;
    let (server, http) = hsm.serve(&config).await;
    let token = hsm.client(&server, "backend", false);
    let served = jwks(&http, &server).await;
    let url = format!("{}/v1/profiles/{PROFILE}/sign", server.internal);
    let signing: Vec<_> = (0..32)
        .map(|i| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            tokio::spawn(async move {
                let response = http.post(url).bearer_auth(token).json(&json!({ "sub": format!("s{i}") })).send().await;
                response.unwrap().json::<Value>().await.unwrap()
            })
        })
        .collect();
    for (i, signed) in signing.into_iter().enumerate() {
        let body = signed.await.unwrap();
        let verified = verify(body["token"].as_str().unwrap_or_default(), &served);
        assert_eq!(verified.map(|v| v.claims["sub"].clone()).ok(), Some(json!(format!("s{i}"))), "{body}");
    }
}

#[tokio::test]
async fn retired_and_revoked_keys_are_destroyed_in_the_token() {
    let hsm = SoftHsm::new();
    let mut config = hsm.config(Algorithm::Es256);
    // Hand-overs every 3 s; a key is retired about 9 s after it started signing.
    let set = &mut config.key_sets[0];
    set.jwks_max_age = Span::from_secs(2);
    set.clock_skew = Span::from_secs(1);
    set.publish_ahead = Span::from_secs(3);
    set.rotate_every = Span::from_secs(3);
    set.retain_after = Span::from_secs(3);
    config.profiles[0].default_ttl = Span::from_secs(3);
    config.profiles[0].max_ttl = Span::from_secs(3);
    let (server, http) = hsm.serve(&config).await;
    let token = hsm.client(&server, "backend", false);
    let first = sign_verified(&http, &server, &token, "a").await;
    assert!(hsm.private_ids().contains(&first));

    let state_of = |kid: &str| {
        let out = hsm.keyward(&server, &["keys", "list", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        list.as_array().unwrap().iter().find(|k| k["kid"] == kid).map(|k| k["state"].as_str().unwrap().to_owned())
    };
    let retired =
        eventually(Duration::from_secs(40), || async { state_of(&first).as_deref() == Some("retired") }).await;
    assert!(retired, "the first key was not retired in time");
    assert!(!hsm.objects().iter().any(|o| o.id == first), "a retired key's objects are destroyed");

    let admin = hsm.client(&server, "ops", true);
    let current = sign_verified(&http, &server, &token, "b").await;
    let revoked =
        http.post(format!("{}/v1/keys/{current}/revoke", server.internal)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(revoked.status(), 200, "{}", revoked.text().await.unwrap());
    assert!(!hsm.objects().iter().any(|o| o.id == current), "a revoked key's objects are destroyed");
    let moved_on = eventually(Duration::from_secs(10), || async {
        sign(&http, &server, &token, "c").await.json::<Value>().await.unwrap()["kid"].as_str() != Some(&current)
    })
    .await;
    assert!(moved_on, "the revoked key still signs");
    let next = sign_verified(&http, &server, &token, "c").await;
    assert_ne!(next, current);

    // No key object is left behind: the token holds exactly the published keys.
    let stable =
        eventually(Duration::from_secs(10), || async { hsm.private_ids() == kids(&jwks(&http, &server).await) }).await;
    assert!(stable, "token {:?} but JWKS {:?}", hsm.private_ids(), kids(&jwks(&http, &server).await));
}

#[tokio::test]
async fn a_failing_token_refuses_signing_with_503_and_readyz_while_the_jwks_is_served_and_recovers() {
    let hsm = SoftHsm::new();
    let (server, http) = hsm.serve(&hsm.config(Algorithm::Es256)).await;
    let token = hsm.client(&server, "backend", false);
    sign_verified(&http, &server, &token, "before").await;
    let published = kids(&jwks(&http, &server).await);

    // The token goes away: its folder is moved aside.
    let tokens = hsm.path().join("tokens");
    let away = hsm.path().join("tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    let refused = eventually(Duration::from_secs(20), || async {
        let response = sign(&http, &server, &token, "during").await;
        if response.status() != 503 {
            return false;
        }
        let problem: Value = response.json().await.unwrap();
        problem["type"] == "urn:keyward:problem:no-signing-key"
            && problem["detail"].as_str().unwrap().contains("token does not answer")
    })
    .await;
    assert!(refused, "signing went on without the token");
    let ready = http.get(format!("{}/readyz", server.public)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("PKCS#11 token does not answer"));
    assert_eq!(kids(&jwks(&http, &server).await), published, "the JWKS is served as before");

    // It comes back: keyward logs in again and signs.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    let back = eventually(Duration::from_secs(30), || async {
        http.get(format!("{}/readyz", server.public)).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(back, "keyward did not reconnect to the token: {}", server.log_text());
    sign_verified(&http, &server, &token, "after").await;
    assert!(server.log_text().contains("answers again"));
}

/// Runs `keyward serve` on `config_text` expecting it to refuse to start; returns stderr.
fn refused_start(hsm: &SoftHsm, config_text: &str, env: &[(&str, &str)]) -> String {
    let file = hsm.path().join("refused.toml");
    std::fs::write(&file, config_text).unwrap();
    let mut child = keyward_bare(hsm.path(), &["--config", file.to_str().unwrap(), "serve"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("keyward started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    text(&out.stderr)
}

#[tokio::test]
async fn a_wrong_or_locked_pin_a_missing_token_or_module_stop_start_up_naming_what_to_check() {
    let hsm = SoftHsm::new();
    let config = hsm.config(Algorithm::Es256);
    let written = |adjust: &dyn Fn(&mut Config)| {
        let mut config = config.clone();
        adjust(&mut config);
        toml::to_string(&config).unwrap()
    };
    let conf = ("SOFTHSM2_CONF", hsm.conf.to_str().unwrap());

    let wrong = refused_start(&hsm, &written(&|_| {}), &[conf, ("KEYWARD_PKCS11_PIN", "987654")]);
    assert!(wrong.contains("KEYWARD_PKCS11_PIN") && wrong.contains("refused the user PIN"), "{wrong}");
    assert!(!wrong.contains("987654"), "the PIN is never shown: {wrong}");
    let file = hsm.path().join("checked.toml");
    std::fs::write(&file, written(&|_| {})).unwrap();
    let check = |pin: &str| {
        keyward_bare(hsm.path(), &["--config", file.to_str().unwrap(), "check-config"])
            .envs([conf, ("KEYWARD_PKCS11_PIN", pin)])
            .output()
            .unwrap()
    };
    let checked = check("987654");
    assert!(!checked.status.success() && text(&checked.stderr).contains("refused the user PIN"));
    let checked = check(PIN);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(text(&checked.stderr).contains("PKCS#11 token \"keyward\": logged in"), "{}", text(&checked.stderr));

    let missing = refused_start(
        &hsm,
        &written(&|c| c.pkcs11.as_mut().unwrap().token_label = "elsewhere".into()),
        &[conf, ("KEYWARD_PKCS11_PIN", PIN)],
    );
    assert!(missing.contains("[pkcs11] token_label: no token labelled \"elsewhere\""), "{missing}");
    assert!(missing.contains("tokens present: \"keyward\""), "{missing}");

    let no_module = refused_start(
        &hsm,
        &written(&|c| c.pkcs11.as_mut().unwrap().module = "/nonexistent/libpkcs11.so".into()),
        &[conf, ("KEYWARD_PKCS11_PIN", PIN)],
    );
    assert!(no_module.contains("[pkcs11] module: cannot load /nonexistent/libpkcs11.so"), "{no_module}");

    // A PIN file others may read is refused, as the master key file is; a 0600 one works.
    let pin_file = hsm.path().join("pkcs11.pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let from_file = written(&|c| c.pkcs11.as_mut().unwrap().pin_file = Some(pin_file.clone()));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shared = refused_start(&hsm, &from_file, &[conf]);
    assert!(shared.contains("pkcs11.pin has mode 0644"), "{shared}");
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&file, &from_file).unwrap();
    let checked =
        keyward_bare(hsm.path(), &["--config", file.to_str().unwrap(), "check-config"]).envs([conf]).output().unwrap();
    assert!(text(&checked.stderr).contains("PKCS#11 token \"keyward\": logged in"), "{}", text(&checked.stderr));

    let no_pin = refused_start(&hsm, &written(&|_| {}), &[conf]);
    assert!(no_pin.contains("KEYWARD_PKCS11_PIN or pin_file"), "{no_pin}");

    let in_file = format!("{}pin = \"{PIN}\"\n", written(&|_| {}));
    let pin_in_file = refused_start(&hsm, &in_file, &[conf]);
    assert!(pin_in_file.contains("[pkcs11], field pin") && pin_in_file.contains("never goes in"), "{pin_in_file}");

    let no_table = refused_start(&hsm, &written(&|c| c.pkcs11 = None), &[conf]);
    assert!(no_table.contains("field custody") && no_table.contains("needs a [pkcs11] table"), "{no_table}");

    // SoftHSM2 never locks a PIN itself: set the token's "user PIN locked" flag in its file,
    // as a token that counted too many wrong PINs reports it.
    let token_file = std::fs::read_dir(hsm.path().join("tokens"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("token.object"))
        .find(|path| path.exists())
        .unwrap();
    let bytes = std::fs::read(&token_file).unwrap();
    // Login required, RNG, initialised, user PIN set, restore key not needed.
    let flags = 0x42d_u64.to_be_bytes();
    let at = bytes.windows(8).position(|w| w == flags).expect("the token's flags in its file");
    let mut locked = bytes.clone();
    locked[at..at + 8].copy_from_slice(&(0x42d_u64 | 0x0004_0000).to_be_bytes());
    std::fs::write(&token_file, locked).unwrap();
    let pin_locked = refused_start(&hsm, &written(&|_| {}), &[conf, ("KEYWARD_PKCS11_PIN", PIN)]);
    assert!(pin_locked.contains("user PIN of token \"keyward\" is locked"), "{pin_locked}");
    assert!(pin_locked.contains("did not try to log in"), "{pin_locked}");
}

#[tokio::test]
async fn keys_import_into_a_token_key_set_is_refused_with_the_reason() {
    let hsm = SoftHsm::new();
    let (server, _http) = hsm.serve(&hsm.config(Algorithm::Es256)).await;
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key = openssl::ec::EcKey::generate(&group).unwrap();
    let pem = hsm.path().join("outside.pem");
    std::fs::write(&pem, key.private_key_to_pem().unwrap()).unwrap();
    let before = hsm.private_ids();
    let out = hsm.keyward(&server, &["keys", "import", "npm", "--pem", pem.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not import") && stderr.contains("existed outside"), "{stderr}");
    assert_eq!(hsm.private_ids(), before, "nothing was added to the token");
}

#[tokio::test]
async fn a_sealed_key_set_moved_to_pkcs11_custody_keeps_its_keys_and_makes_new_ones_in_the_token() {
    let hsm = SoftHsm::new();
    let mut config = hsm.config(Algorithm::Es256);
    config.key_sets[0].custody = CustodyKind::Sealed;
    let (mut server, http) = hsm.serve(&config).await;
    let token = hsm.client(&server, "backend", false);
    let admin = hsm.client(&server, "ops", true);
    let sealed = sign_verified(&http, &server, &token, "a").await;
    assert!(hsm.private_ids().is_empty());
    assert!(server.terminate(Duration::from_secs(30)).await.is_some_and(|s| s.success()));

    config.key_sets[0].custody = CustodyKind::Pkcs11;
    let (server, http) = hsm.serve(&config).await;
    assert_eq!(sign_verified(&http, &server, &token, "b").await, sealed, "the sealed key keeps signing");
    for _ in 0..2 {
        let rotated = http
            .post(format!("{}/v1/key-sets/npm/rotate", server.internal))
            .bearer_auth(&admin)
            .json(&json!({"force": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(rotated.status(), 200, "{}", rotated.text().await.unwrap());
    }
    let in_token = sign_verified(&http, &server, &token, "c").await;
    let held = hsm.private_ids();
    assert!(held.contains(&in_token) && held.len() == 2, "current and next in the token: {held:?}");
    let published = kids(&jwks(&http, &server).await);
    assert!(published.contains(&sealed), "the sealed key stays published until it retires");
    let store = Store::open(hsm.path().join("keyward.db")).await.unwrap();
    let rows: Vec<(String, Option<String>, bool)> =
        sqlx::query_as("SELECT kid, token_label, sealed_private IS NOT NULL FROM keys ORDER BY created_at, rowid")
            .fetch_all(sqlite(&store))
            .await
            .unwrap();
    sqlite(&store).close().await;
    let token_kids: Vec<&str> = rows.iter().filter(|r| r.1.as_deref() == Some(LABEL)).map(|r| r.0.as_str()).collect();
    assert_eq!(token_kids.len(), 2, "{rows:?}");
    assert!(rows.iter().filter(|r| r.1.is_none()).all(|r| r.2), "the other keys are sealed: {rows:?}");
}

/// `[master_key]` as the AES key labelled `keyward-master` in the test token, with the
/// previous key in `previous` (a file) during a rotation.
fn master_key_in_token(config: &Config, previous: Option<&Path>) -> Config {
    let mut config = config.clone();
    let mut table = keyward::config::MasterKeyConfig {
        key_label: Some("keyward-master".to_owned()),
        ..keyward::config::MasterKeyConfig::of(keyward::config::MasterKeySource::Pkcs11)
    };
    if let Some(previous) = previous {
        table.previous = crate::master_key::with_keys(&config, previous, None).master_key;
    }
    config.master_key = Some(Box::new(table));
    config
}

/// The CLI with `config`, in the token's environment.
fn keyward_with(hsm: &SoftHsm, config: &Config, args: &[&str]) -> Output {
    let file = hsm.path().join(format!("cli-{}.toml", rand::random::<u32>()));
    std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
    let mut all = vec!["--config", file.to_str().unwrap()];
    all.extend_from_slice(args);
    keyward_bare(hsm.path(), &all).envs(hsm.env()).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_moves_from_a_file_into_the_token_and_back_by_rotations() {
    let hsm = SoftHsm::new();
    let mut config = hsm.config(Algorithm::Es256);
    // Sealed keys: their keyring's master key is what lives in the token.
    config.key_sets[0].custody = CustodyKind::Sealed;
    let (first, first_key) = crate::master_key::key_file(hsm.path(), "first.key");
    let in_file = crate::master_key::with_keys(&config, &first, None);
    let (mut server, http) = hsm.serve(&in_file).await;
    let client = hsm.client(&server, "backend", false);
    sign_verified(&http, &server, &client, "in-file").await;

    // Into the token: a rotation, the key made there on first use.
    let out = keyward_with(&hsm, &master_key_in_token(&config, Some(&first)), &["master-key", "rotate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let moved = text(&out.stderr);
    assert!(moved.contains("pkcs11:") && moved.contains(first_key.id()), "{moved}");
    let token_id = moved.split_whitespace().find(|w| w.starts_with("pkcs11:")).unwrap().to_owned();
    let secret: Vec<TokenObject> = hsm.objects().into_iter().filter(|o| o.secret).collect();
    assert_eq!(secret.len(), 1, "{secret:?}");
    assert_eq!(secret[0].label, "keyward-master");
    assert_eq!((secret[0].sensitive, secret[0].extractable), (Some(true), Some(false)), "{secret:?}");
    assert_eq!(secret[0].never_extractable, Some(true), "{secret:?}");
    assert!(secret[0].on_token);
    sign_verified(&http, &server, &client, "running-through").await;

    // The token alone opens the database; the file alone is refused, naming the token key.
    let in_token = master_key_in_token(&config, None);
    let out = keyward_with(&hsm, &in_token, &["check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = keyward_with(&hsm, &in_file, &["check-config"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(token_id.trim_end_matches([')', ',', ':'])), "{}", text(&out.stderr));
    server.terminate(Duration::from_secs(15)).await.expect("stops on SIGTERM");
    let (mut server, http) = hsm.serve(&in_token).await;
    sign_verified(&http, &server, &client, "in-token").await;
    let status = keyward_with(&hsm, &in_token, &["master-key", "status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["source"], "pkcs11", "{status}");

    // And back out to a new file, by another rotation.
    let (second, _) = crate::master_key::key_file(hsm.path(), "second.key");
    let mut back = crate::master_key::with_keys(&config, &second, None);
    back.master_key.as_mut().unwrap().previous = in_token.master_key.clone();
    let out = keyward_with(&hsm, &back, &["master-key", "rotate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    server.terminate(Duration::from_secs(15)).await.expect("stops on SIGTERM");
    let (server, http) = hsm.serve(&crate::master_key::with_keys(&config, &second, None)).await;
    sign_verified(&http, &server, &client, "back-in-a-file").await;
}
