//! Certificates made at run time (rcgen) for the TLS tests, and HTTPS clients that trust
//! only the test CA.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// The name the test certificates are issued for; clients resolve it to 127.0.0.1.
pub const HOST: &str = "keyward.test";

/// A certificate authority.
pub struct Ca {
    pub pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, issued by a [`Ca`].
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), cert, key }
    }

    /// A server certificate for [`HOST`], valid until `not_after` (far off when `None`).
    pub fn server(&self, not_after: Option<SystemTime>) -> Leaf {
        let mut params = CertificateParams::new(vec![HOST.to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(not_after) = not_after {
            params.not_before = (not_after - Duration::from_secs(30 * 86_400)).into();
            params.not_after = not_after.into();
        }
        self.issue(params)
    }

    /// A server certificate for `host` and 127.0.0.1.
    pub fn server_for(&self, host: &str) -> Leaf {
        let mut params = CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

impl Leaf {
    /// The SHA-256 of the certificate, as `keyward clients add --cert-sha256` takes it.
    pub fn fingerprint(&self) -> String {
        <sha2::Sha256 as sha2::Digest>::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Writes `NAME.crt` and `NAME.key` (mode 0600) in `dir` (replacing them in one rename
    /// each, as cert-manager and ACME clients do); returns the paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        write_atomically(&key, &self.key_pem, 0o600);
        write_atomically(&cert, &self.cert_pem, 0o644);
        (cert, key)
    }

    /// Client certificate and key, for a client to present.
    pub fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes()).unwrap()
    }
}

pub fn write_atomically(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// An HTTPS client that trusts only `ca`, resolves [`HOST`] to 127.0.0.1, reports the
/// server's certificate, and presents `identity` when given.
pub fn https_client(ca: &Ca, identity: Option<&Leaf>) -> reqwest::Client {
    https_builder(ca, identity).build().unwrap()
}

pub fn https_builder(ca: &Ca, identity: Option<&Leaf>) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve(HOST, "127.0.0.1:0".parse().unwrap())
        .tls_info(true);
    if let Some(leaf) = identity {
        builder = builder.identity(leaf.identity());
    }
    builder
}

/// The DER certificate the server presented on the response's connection.
pub fn served_certificate(response: &reqwest::Response) -> Vec<u8> {
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("a TLS connection");
    info.peer_certificate().expect("a server certificate").to_vec()
}

/// The port of a `http://127.0.0.1:PORT` address.
pub fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}
