//! TLS with rustls: the client configuration made from the settings (the CA file's roots or
//! the system's, a client certificate for mutual TLS) and the handshake on a TCP stream, the
//! server's certificate checked against its name.

use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::warn;

use crate::wire::error::ConnError;
use crate::wire::options::{NatsSettings, Server};
use crate::Error;

/// A rustls client configuration from the settings: the CA file's roots (else the system's),
/// and the client certificate when one is set.
pub(crate) fn tls_config(settings: &NatsSettings) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    if settings.ca_file.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        if native.certs.is_empty() {
            warn!("no system root certificates found: set nats.ca_file for TLS");
        }
        roots.add_parsable_certificates(native.certs);
    } else {
        let bad = |what: String| Error::invalid("nats.ca_file", what);
        let certs = CertificateDer::pem_file_iter(&settings.ca_file)
            .map_err(|e| bad(format!("cannot read {}: {e}", settings.ca_file)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("{}: {e}", settings.ca_file)))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad(format!("{} holds no CA certificate", settings.ca_file)));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("nats", e.to_string()))?
        .with_root_certificates(roots);
    let config = if settings.cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = CertificateDer::pem_file_iter(&settings.cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                Error::invalid("nats.cert_file", format!("{}: {e}", settings.cert_file))
            })?;
        // The key's error names the file, never its content.
        let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|_| {
            Error::invalid(
                "nats.key_file",
                format!("{} does not hold a PEM private key", settings.key_file),
            )
        })?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| Error::invalid("nats.cert_file", e.to_string()))?
    };
    Ok(Arc::new(config))
}

/// A client TLS stream over TCP.
pub(crate) type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS alert that arrives after the handshake (with TLS 1.3 a server refuses a client
/// certificate, or the lack of one, only then) is a TLS error, for the operator.
pub(crate) fn tls_refusal(e: ConnError) -> ConnError {
    match e {
        ConnError::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            ConnError::Tls(io.to_string())
        }
        other => other,
    }
}

/// The TLS handshake on `tcp`, the server's certificate checked against the roots and the
/// server's host name (or IP address).
pub(crate) async fn upgrade(
    config: Arc<rustls::ClientConfig>,
    server: &Server,
    tcp: TcpStream,
) -> Result<TlsStream, ConnError> {
    let host = server.tls_name.as_ref().unwrap_or(&server.host);
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|_| ConnError::Tls(format!("{host:?} is not a TLS server name")))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ConnError::Tls(e.to_string()))
}
