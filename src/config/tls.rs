//! `[server] public_tls` and `[server] internal_tls`: the certificate files a listener
//! serves, and (internal listener only) the CA its clients' certificates must chain to.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A listener's TLS files. A relative path in a configuration file is relative to the
/// file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the listener's own certificate first.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate, readable by its owner only.
    pub key_file: PathBuf,
    /// PEM CA certificates that clients' certificates must chain to (mutual TLS; the
    /// internal listener only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Makes relative paths relative to `folder` (the configuration file's).
    pub(crate) fn resolve_relative_to(&mut self, folder: &Path) {
        for path in [&mut self.cert_file, &mut self.key_file].into_iter().chain(self.client_ca_file.as_mut()) {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        }
    }
}

/// The `[server]` rules about TLS: a field name and why, when one is broken.
pub(crate) fn validate(public: Option<&TlsConfig>, internal: Option<&TlsConfig>) -> Result<(), (&'static str, String)> {
    if public.is_some_and(|tls| tls.client_ca_file.is_some()) {
        return Err((
            "public_tls",
            "client_ca_file is for the internal listener only: JWKS and discovery documents are public".to_owned(),
        ));
    }
    for (field, tls) in [("public_tls", public), ("internal_tls", internal)] {
        let Some(tls) = tls else { continue };
        let files = [&tls.cert_file, &tls.key_file].into_iter().chain(tls.client_ca_file.as_ref());
        if files.into_iter().any(|path| path.as_os_str().is_empty()) {
            return Err((field, "cert_file, key_file and client_ca_file must not be empty".to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: Option<&str>) -> TlsConfig {
        TlsConfig { cert_file: "c.pem".into(), key_file: "k.pem".into(), client_ca_file: ca.map(PathBuf::from) }
    }

    #[test]
    fn client_certificates_are_asked_for_on_the_internal_listener_only() {
        assert!(validate(None, Some(&tls(Some("ca.pem")))).is_ok());
        let (field, why) = validate(Some(&tls(Some("ca.pem"))), None).unwrap_err();
        assert_eq!(field, "public_tls");
        assert!(why.contains("internal listener only"), "{why}");
    }

    #[test]
    fn relative_tls_paths_are_relative_to_the_configuration_folder() {
        let mut config = tls(Some("ca.pem"));
        config.key_file = "/abs/k.pem".into();
        config.resolve_relative_to(Path::new("/etc/keyward"));
        assert_eq!(config.cert_file, Path::new("/etc/keyward/c.pem"));
        assert_eq!(config.key_file, Path::new("/abs/k.pem"));
        assert_eq!(config.client_ca_file.as_deref(), Some(Path::new("/etc/keyward/ca.pem")));
    }
}
