//! Client certificates on the internal listener: what a mutual-TLS connection presented,
//! recorded once per connection, and the checks every authenticated request passes.

use std::any::Any;
use std::sync::Arc;

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use actix_web::HttpRequest;

use crate::app::snapshot::Snapshot;
use crate::http::problem::ApiError;
use crate::policy::certificate::CertFingerprint;
use crate::policy::client::Client;

/// On a mutual-TLS listener: the fingerprint of the verified certificate the connection
/// presented, or `None`. Absent on a listener that does not ask for client certificates.
#[derive(Debug, Clone, Copy)]
struct Presented(Option<CertFingerprint>);

/// The `on_connect` callback of a listener: records what a mutual-TLS connection presented
/// (rustls has verified it against the client CA already).
pub fn on_connect(mutual: bool) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
    move |connection, extensions| {
        if !mutual {
            return;
        }
        let Some(tls) = connection.downcast_ref::<TlsStream<TcpStream>>() else { return };
        let leaf = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first());
        extensions.insert(Presented(leaf.map(|der| CertFingerprint::of_der(der))));
    }
}

/// The fingerprint of the certificate this connection presented, if any.
pub fn presented(req: &HttpRequest) -> Option<CertFingerprint> {
    match req.conn_data::<Presented>() {
        Some(Presented(Some(presented))) => Some(*presented),
        _ => None,
    }
}

/// Before any token is looked at: a mutual-TLS listener serves only connections that
/// presented a certificate.
pub fn require_if_mutual(req: &HttpRequest) -> Result<(), ApiError> {
    match req.conn_data::<Presented>() {
        Some(Presented(None)) => Err(ApiError::CertificateRequired),
        _ => Ok(()),
    }
}

/// The certificate-only client of the certificate this connection presented, with the
/// snapshot that knows it (a request that sends no bearer token).
pub fn certificate_only_client(req: &HttpRequest, snapshot: Arc<Snapshot>) -> Option<(Arc<Snapshot>, Client)> {
    let Some(Presented(Some(presented))) = req.conn_data::<Presented>() else { return None };
    let client = snapshot.clients.by_certificate(presented)?.clone();
    Some((snapshot, client))
}

/// A client bound to a certificate is served only on connections that presented it.
pub fn check_binding(req: &HttpRequest, client: &Client) -> Result<(), ApiError> {
    let Some(bound) = client.certificate else { return Ok(()) };
    match req.conn_data::<Presented>() {
        Some(Presented(Some(presented))) if *presented == bound => Ok(()),
        Some(Presented(Some(_))) => Err(ApiError::WrongCertificate(format!(
            "client {:?} is bound to another certificate than the one this connection presented",
            client.name
        ))),
        _ => Err(ApiError::WrongCertificate(format!(
            "client {:?} is bound to a client certificate: connect with it over mutual TLS",
            client.name
        ))),
    }
}
