//! TLS on both listeners: HTTPS with a client that trusts only the test CA, TLS 1.2 and 1.3,
//! HTTP/2 by ALPN, certificates renewed without a restart, mutual TLS with clients bound
//! to a certificate, and the start-up refusals.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyward::config::{Config, TlsConfig};
use keyward::keys::Algorithm;
use keyward::seal::MasterKey;
use keyward::startup::Application;
use serde_json::json;

use crate::certs::{https_builder, https_client, port_of, served_certificate, Ca, Leaf, HOST};
use crate::helpers::{assert_problem, keyward_command, spawn_app, spawn_in, test_config, TestApp};
use crate::verify::verify;

const PROFILE: &str = "npm-sandbox";

pub(crate) fn tls_files(dir: &std::path::Path, leaf: &Leaf, name: &str, client_ca: Option<&Ca>) -> TlsConfig {
    let (cert_file, key_file) = leaf.write(dir, name);
    let client_ca_file = client_ca.map(|ca| {
        let path = dir.join(format!("{name}-clients-ca.pem"));
        std::fs::write(&path, &ca.pem).unwrap();
        path
    });
    TlsConfig { cert_file, key_file, client_ca_file }
}

/// An app whose listeners serve `public` and `internal` certificates (with mutual TLS on
/// the internal one when `client_ca` is given).
pub(crate) async fn spawn_tls(
    public: Option<&Leaf>,
    internal: Option<&Leaf>,
    client_ca: Option<&Ca>,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.public_tls = public.map(|leaf| tls_files(dir.path(), leaf, "public", None));
    config.server.internal_tls = internal.map(|leaf| tls_files(dir.path(), leaf, "internal", client_ca));
    adjust(&mut config);
    spawn_in(dir, config, MasterKey::generate()).await
}

pub(crate) fn https(address: &str, path: &str) -> String {
    format!("https://{HOST}:{}{path}", port_of(address))
}

#[tokio::test]
async fn tokens_signed_over_https_verify_against_the_jwks_fetched_over_https_from_a_client_trusting_only_the_ca() {
    let ca = Ca::new("test CA");
    let app = spawn_tls(Some(&ca.server(None)), Some(&ca.server(None)), None, |c| {
        c.key_sets[0].algorithm = Algorithm::EdDsa;
    })
    .await;
    let token = app.client("backend", &[PROFILE]).await;
    let client = https_client(&ca, None);

    let signed: serde_json::Value = client
        .post(https(&app.internal, &format!("/v1/profiles/{PROFILE}/sign")))
        .bearer_auth(&token)
        .json(&json!({"sub": "acct-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = client.get(https(&app.public, "/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2, "HTTP/2 by ALPN");
    let jwks: serde_json::Value = response.json().await.unwrap();
    let verified = verify(signed["token"].as_str().unwrap(), &jwks).unwrap();
    assert_eq!(verified.header["alg"], "EdDSA");

    // A client with only the usual public roots refuses the test CA's certificate.
    let untrusting = reqwest::Client::builder().resolve(HOST, "127.0.0.1:0".parse().unwrap()).build().unwrap();
    assert!(untrusting.get(https(&app.public, "/.well-known/jwks.json")).send().await.is_err());
    // Plain HTTP on a TLS listener gets no JWKS.
    let plain = app.http.get(format!("{}/.well-known/jwks.json", app.public)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

/// Handshakes with rustls offering only `version`; returns the negotiated version and ALPN.
fn handshake(
    ca: &Ca,
    port: u16,
    version: &'static rustls::SupportedProtocolVersion,
) -> (Option<rustls::ProtocolVersion>, Option<Vec<u8>>) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).unwrap();
    }
    (connection.protocol_version(), connection.alpn_protocol().map(<[u8]>::to_vec))
}

#[tokio::test]
async fn the_public_listener_speaks_tls_1_3_and_1_2_and_offers_http2_by_alpn() {
    let ca = Ca::new("test CA");
    let app = spawn_tls(Some(&ca.server(None)), None, None, |_| {}).await;
    let port = port_of(&app.public);
    let ca = Arc::new(ca);
    for (offered, expected) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let ca = Arc::clone(&ca);
        let (version, alpn) = tokio::task::spawn_blocking(move || handshake(&ca, port, offered)).await.unwrap();
        assert_eq!(version, Some(expected));
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    }
    let tls12 = https_builder(&ca, None).max_tls_version(reqwest::tls::Version::TLS_1_2).build().unwrap();
    assert_eq!(tls12.get(https(&app.public, "/.well-known/jwks.json")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections_while_open_ones_carry_on() {
    let ca = Ca::new("test CA");
    let first = ca.server(None);
    let app = spawn_tls(Some(&first), None, None, |_| {}).await;
    let url = https(&app.public, "/.well-known/jwks.json");
    let kept = https_client(&ca, None);
    let response = kept.get(&url).send().await.unwrap();
    assert_eq!(served_certificate(&response), first.der);

    let renewed = ca.server(None);
    renewed.write(app.dir.path(), "public");
    let (kept, url, ca, first, renewed) = (&kept, &url, &ca, &first, &renewed);
    let fresh_sees_renewed = app
        .eventually(Duration::from_secs(60), move || async move {
            // The kept client goes on over its open connection meanwhile.
            let kept_response = kept.get(url).send().await.unwrap();
            assert_eq!(kept_response.status(), 200);
            assert_eq!(served_certificate(&kept_response), first.der, "the open connection carried on");
            let fresh = https_client(ca, None).get(url).send().await.unwrap();
            served_certificate(&fresh) == renewed.der
        })
        .await;
    assert!(fresh_sees_renewed, "new connections never got the renewed certificate");
    let metrics = app.http.get(format!("{}/metrics", app.internal)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"keyward_tls_certificate_expiry_timestamp_seconds{listener="public"}"#), "{metrics}");
}

#[tokio::test]
async fn a_renewal_whose_key_does_not_match_keeps_the_certificate_served() {
    let ca = Ca::new("test CA");
    let first = ca.server(None);
    let app = spawn_tls(Some(&first), None, None, |_| {}).await;
    let url = https(&app.public, "/.well-known/jwks.json");
    // Only the certificate changes: its key never arrives.
    let unmatched = ca.server(None);
    crate::certs::write_atomically(&app.dir.path().join("public.crt"), &unmatched.cert_pem, 0o644);
    let renewed = ca.server(None);
    let served_after = |expected: Vec<u8>| {
        let (ca, url) = (&ca, &url);
        async move {
            let response = https_client(ca, None).get(url).send().await.unwrap();
            served_certificate(&response) == expected
        }
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(served_after(first.der.clone()).await, "a mismatched pair is never served");
    renewed.write(app.dir.path(), "public");
    assert!(app.eventually(Duration::from_secs(60), || served_after(renewed.der.clone())).await);
}

#[tokio::test]
async fn mutual_tls_serves_bound_clients_with_their_certificate_only_and_refuses_others_with_the_reason() {
    let ca = Ca::new("test CA");
    let clients_ca = Ca::new("clients CA");
    let (mine, other) = (clients_ca.client("backend"), clients_ca.client("other"));
    let app = spawn_tls(None, Some(&ca.server(None)), Some(&clients_ca), |_| {}).await;
    // The binding is made with the command line, as an operator would.
    let output = keyward_command(
        app.dir.path(),
        &["clients", "add", "bound", "--profiles", PROFILE, "--cert-sha256", &mine.fingerprint()],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let bound = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let unbound = app.client("unbound", &[PROFILE]).await;
    app.reload().await;
    let sign = |client: reqwest::Client, token: String| {
        let url = https(&app.internal, &format!("/v1/profiles/{PROFILE}/sign"));
        async move { client.post(url).bearer_auth(token).json(&json!({"sub": "a"})).send().await }
    };

    let accepted = sign(https_client(&ca, Some(&mine)), bound.clone()).await.unwrap();
    assert_eq!(accepted.status(), 200, "{}", accepted.text().await.unwrap());
    let accepted = sign(https_client(&ca, Some(&other)), unbound.clone()).await.unwrap();
    assert_eq!(accepted.status(), 200, "an unbound client may use any certificate of the CA");

    let wrong = assert_problem(sign(https_client(&ca, Some(&other)), bound.clone()).await.unwrap(), 403).await;
    assert_eq!(wrong["type"], "urn:keyward:problem:wrong-certificate");
    assert!(wrong["detail"].as_str().unwrap().contains("bound to another certificate"), "{wrong}");
    let none = assert_problem(sign(https_client(&ca, None), unbound.clone()).await.unwrap(), 401).await;
    assert_eq!(none["type"], "urn:keyward:problem:certificate-required");

    // A certificate from another CA fails the handshake itself.
    let stranger = Ca::new("stranger").client("backend");
    assert!(sign(https_client(&ca, Some(&stranger)), bound).await.is_err());

    let listed = keyward_command(app.dir.path(), &["clients", "list", "--json"]).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let bound_entry = listed.as_array().unwrap().iter().find(|c| c["name"] == "bound").unwrap();
    assert_eq!(bound_entry["cert_sha256"], mine.fingerprint().replace(':', "").to_lowercase());
}

#[tokio::test]
async fn a_certificate_only_client_signs_without_a_bearer_token_and_other_certificates_still_need_one() {
    let ca = Ca::new("test CA");
    let clients_ca = Ca::new("clients CA");
    let mine = clients_ca.client("backend");
    let app = spawn_tls(None, Some(&ca.server(None)), Some(&clients_ca), |_| {}).await;
    let machine = clients_ca.client("machine");
    let output = keyward_command(
        app.dir.path(),
        &["clients", "add", "machine", "--profiles", PROFILE, "--cert-sha256", &machine.fingerprint(), "--cert-only"],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    app.reload().await;
    let url = https(&app.internal, &format!("/v1/profiles/{PROFILE}/sign"));
    let tokenless = |leaf: Option<&Leaf>| https_client(&ca, leaf).post(&url).json(&json!({"sub": "a"})).send();
    let signed = tokenless(Some(&machine)).await.unwrap();
    assert_eq!(signed.status(), 200, "{}", signed.text().await.unwrap());
    assert_problem(tokenless(Some(&mine)).await.unwrap(), 401).await;
    assert_problem(tokenless(None).await.unwrap(), 401).await;

    let listed = keyward_command(app.dir.path(), &["clients", "list", "--json"]).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let machine_entry = listed.as_array().unwrap().iter().find(|c| c["name"] == "machine").unwrap();
    assert_eq!(machine_entry["cert_only"], true);
    let refused = keyward_command(app.dir.path(), &["clients", "add", "x", "--profiles", PROFILE, "--cert-only"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "--cert-only without --cert-sha256");
}

#[tokio::test]
async fn a_client_bound_to_a_certificate_is_refused_where_no_certificate_can_be_presented() {
    let app = spawn_app().await;
    let fingerprint = Ca::new("clients CA").client("backend").fingerprint();
    let certificate = Some(fingerprint.parse().unwrap());
    let options = keyward::ops::clients::ClientOptions { certificate, ..Default::default() };
    let (token, _) =
        keyward::ops::clients::create(&app.store, &app.config, "bound", &[PROFILE.into()], false, options, 0)
            .await
            .unwrap();
    app.reload().await;
    let refused = assert_problem(app.sign(PROFILE, &token, &json!({"sub": "a"})).await, 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("connect with it over mutual TLS"), "{refused}");
}

/// Builds an application over `tls` on the public listener; the start-up error's text.
async fn start_up_error(dir: &std::path::Path, tls: TlsConfig) -> String {
    let mut config = test_config(dir);
    config.server.public_tls = Some(tls);
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    match Application::build_on(config, MasterKey::generate(), 1, bind(), bind()).await {
        Ok(_) => panic!("the start-up should be refused"),
        Err(err) => format!("{err:#}"),
    }
}

#[tokio::test]
async fn start_up_refuses_a_shared_key_file_a_key_of_another_certificate_and_an_expired_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let good = tls_files(dir.path(), &ca.server(None), "good", None);

    std::fs::set_permissions(&good.key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = start_up_error(dir.path(), good.clone()).await;
    assert!(err.contains("public_tls") && err.contains("readable by other users (mode 640)"), "{err}");
    std::fs::set_permissions(&good.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let other = tls_files(dir.path(), &ca.server(None), "other", None);
    let mismatched = TlsConfig { key_file: other.key_file, ..good.clone() };
    let err = start_up_error(dir.path(), mismatched).await;
    assert!(err.contains("is not the key of the certificate"), "{err}");

    let yesterday = SystemTime::now() - Duration::from_secs(86_400);
    let expired = tls_files(dir.path(), &ca.server(Some(yesterday)), "expired", None);
    let err = start_up_error(dir.path(), expired).await;
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn a_certificate_expiring_soon_is_served_with_its_expiry_exported_and_warned_about() {
    let ca = Ca::new("test CA");
    let in_a_week = SystemTime::now() + Duration::from_secs(7 * 86_400);
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.internal_tls = Some(tls_files(dir.path(), &ca.server(Some(in_a_week)), "internal", None));
    let mut serve = crate::helpers::serve(dir.path(), &config, "info");
    let http = reqwest::Client::new();
    assert!(crate::helpers::wait_healthy(&http, &mut serve).await);
    let log = serve.log_text();
    assert!(log.contains("expires within 14 days"), "{log}");

    let metrics = https_client(&ca, None).get(https(&serve.internal, "/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"keyward_tls_certificate_expiry_timestamp_seconds{listener="internal"}"#))
        .unwrap_or_else(|| panic!("{metrics}"));
    let not_after: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let expected = in_a_week.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((not_after - expected).abs() <= 1, "{not_after} vs {expected}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_even_when_the_files_look_unchanged() {
    let ca = Ca::new("test CA");
    let first = ca.server(None);
    // A renewal of the very same sizes, whose modification times are put back: only the
    // signal can tell the server to read it.
    let renewed = loop {
        let candidate = ca.server(None);
        if candidate.cert_pem.len() == first.cert_pem.len() && candidate.key_pem.len() == first.key_pem.len() {
            break candidate;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.internal_tls = Some(tls_files(dir.path(), &first, "internal", None));
    let mut serve = crate::helpers::serve(dir.path(), &config, "info");
    assert!(crate::helpers::wait_healthy(&reqwest::Client::new(), &mut serve).await);
    let url = https(&serve.internal, "/healthz");
    let served = || async { served_certificate(&https_client(&ca, None).get(&url).send().await.unwrap()) };
    assert_eq!(served().await, first.der);

    let times: Vec<_> = ["internal.crt", "internal.key"]
        .iter()
        .map(|name| std::fs::metadata(dir.path().join(name)).unwrap().modified().unwrap())
        .collect();
    renewed.write(dir.path(), "internal");
    for (name, time) in ["internal.crt", "internal.key"].iter().zip(times) {
        std::fs::File::options().write(true).open(dir.path().join(name)).unwrap().set_modified(time).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served().await, first.der, "files that look unchanged are not read again");

    let sent = std::process::Command::new("kill").args(["-HUP", &serve.child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let mut reloaded = false;
    for _ in 0..600 {
        if served().await == renewed.der {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "SIGHUP did not reload the certificate; log:\n{}", serve.log_text());
    assert!(serve.child.try_wait().unwrap().is_none(), "the server kept running");
}

#[tokio::test]
async fn check_config_refuses_the_certificate_files_start_up_would_refuse() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let tls = tls_files(dir.path(), &ca.server(None), "public", None);
    config.server.public_tls =
        Some(TlsConfig { key_file: tls_files(dir.path(), &ca.server(None), "other", None).key_file, ..tls.clone() });
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let output = crate::helpers::keyward_bare(dir.path(), &["--config", file.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("is not the key of the certificate"), "{stderr}");

    config.server.public_tls = Some(tls);
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let output = crate::helpers::keyward_bare(dir.path(), &["--config", file.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.contains("public_tls: the certificate and its key are usable"),
        "{stderr}"
    );
}
