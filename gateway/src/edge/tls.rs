//! TLS of the public listener (`[http.tls]`): rustls over ring (the provider the NATS client
//! already builds) with its safe defaults (TLS 1.2 and 1.3), ALPN `h2` then `http/1.1`, and a
//! certificate that is replaced while the gateway runs.
//!
//! The certificate in force sits behind an [`ArcSwap`] that rustls asks at every handshake
//! ([`Certificates`] is its certificate resolver): a reload swaps it, new handshakes get the
//! new one, and open connections (whose handshake is done) are not touched. [`Certificates::watch`]
//! reads both files every `reload_interval` and at SIGHUP; files that changed are parsed, and a
//! chain and key that do not make a usable pair (unreadable, no certificate, no key, a key of
//! another certificate, a half-written file) keep the certificate in force and say why once.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use busgate_shared::drain;
use busgate_shared::Error;

use crate::config::settings::TlsSettings;

/// ALPN protocols offered, preferred first.
pub const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The certificate in force, and where it comes from.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The files as last read: a poll that finds the same bytes does nothing.
#[derive(Default, PartialEq)]
struct Seen {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Certificates {
    /// Reads the certificate and key of `settings`; a pair that cannot be used is an error
    /// naming the file (never the key's content).
    pub fn load(settings: &TlsSettings) -> Result<Arc<Certificates>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = read(settings)?;
        let key = certified(&seen, settings, &provider)?;
        Ok(Arc::new(Certificates {
            current: ArcSwap::from_pointee(key),
            settings: settings.clone(),
            provider,
        }))
    }

    /// The acceptor of the listener: every handshake asks `self` for the certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid("http.tls", e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        // Resumption by tickets (keys random per process, rotated every 6 hours): a client
        // that comes back skips the full handshake, whichever instance it reaches again
        // (another instance only declines the ticket).
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| Error::invalid("http.tls", e.to_string()))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads the files again every `reload_interval` and at SIGHUP, until `drain` is signalled;
    /// a new pair that works replaces the certificate in force.
    pub async fn watch(self: Arc<Self>, drain: drain::Watch) {
        let mut seen = read(&self.settings).unwrap_or_default();
        let mut tick = tokio::time::interval(self.settings.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                warn!(error = %e, "SIGHUP cannot be handled: certificates reload on change only");
                None
            }
        };
        let signaled = drain.signaled();
        tokio::pin!(signaled);
        loop {
            let forced = tokio::select! {
                _ = &mut signaled => return,
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let settings = self.settings.clone();
            let Ok(read) = tokio::task::spawn_blocking(move || read(&settings)).await else {
                continue;
            };
            self.reload(read, &mut seen, forced);
        }
    }

    /// Takes what was read if it differs from what was seen (or `forced`), and works.
    fn reload(&self, read: Result<Seen, Error>, seen: &mut Seen, forced: bool) {
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                // An unreadable file (moved away for an instant, say) is said once.
                if *seen != Seen::default() || forced {
                    warn!(error = %e, "certificate not reloaded, the one in use is kept");
                }
                *seen = Seen::default();
                return;
            }
        };
        if read == *seen && !forced {
            return;
        }
        match certified(&read, &self.settings, &self.provider) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                info!(cert_file = %self.settings.cert_file, "certificate reloaded");
            }
            Err(e) => warn!(error = %e, "certificate not reloaded, the one in use is kept"),
        }
        *seen = read;
    }
}

/// Both files' bytes.
fn read(settings: &TlsSettings) -> Result<Seen, Error> {
    let file = |field: &str, path: &str| {
        std::fs::read(path).map_err(|e| Error::invalid(field, format!("cannot read {path}: {e}")))
    };
    Ok(Seen {
        cert: file("http.tls.cert_file", &settings.cert_file)?,
        key: file("http.tls.key_file", &settings.key_file)?,
    })
}

/// A chain and its key, checked to belong together.
fn certified(
    seen: &Seen,
    settings: &TlsSettings,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let cert_error = |why: String| Error::invalid("http.tls.cert_file", why);
    let chain = CertificateDer::pem_slice_iter(&seen.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("{}: {e}", settings.cert_file)))?;
    if chain.is_empty() {
        return Err(cert_error(format!(
            "{} holds no PEM certificate",
            settings.cert_file
        )));
    }
    // The key's error names the file, never its content.
    let key = PrivateKeyDer::from_pem_slice(&seen.key).map_err(|_| {
        Error::invalid(
            "http.tls.key_file",
            format!("{} does not hold a PEM private key", settings.key_file),
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        Error::invalid(
            "http.tls",
            format!(
                "{} and {} do not make a usable pair: {e}",
                settings.cert_file, settings.key_file
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn settings(dir: &std::path::Path) -> TlsSettings {
        TlsSettings {
            cert_file: dir.join("cert.pem").display().to_string(),
            key_file: dir.join("key.pem").display().to_string(),
            reload_interval: Duration::from_millis(100),
        }
    }

    fn write(settings: &TlsSettings, (cert, key): &(String, String)) {
        std::fs::write(&settings.cert_file, cert).expect("write cert");
        std::fs::write(&settings.key_file, key).expect("write key");
    }

    fn in_force(certificates: &Certificates) -> Vec<u8> {
        certificates.current.load().cert[0].to_vec()
    }

    /// A pair that works replaces the one in force; a broken file, a key of another
    /// certificate and a missing file keep it.
    #[test]
    fn only_a_working_pair_replaces_the_certificate() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = settings(dir.path());
        let first = pair("one.test");
        write(&settings, &first);
        let certificates = Certificates::load(&settings).expect("load");
        let original = in_force(&certificates);
        let mut seen = read(&settings).expect("read");

        std::fs::write(
            &settings.cert_file,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        )
        .expect("write");
        certificates.reload(read(&settings), &mut seen, false);
        assert_eq!(in_force(&certificates), original, "broken chain");

        let other = pair("other.test");
        std::fs::write(&settings.cert_file, &other.0).expect("write");
        certificates.reload(read(&settings), &mut seen, false);
        assert_eq!(
            in_force(&certificates),
            original,
            "key of another certificate"
        );

        std::fs::remove_file(&settings.key_file).expect("remove");
        certificates.reload(read(&settings), &mut seen, false);
        assert_eq!(in_force(&certificates), original, "missing key");

        write(&settings, &other);
        certificates.reload(read(&settings), &mut seen, false);
        assert_ne!(in_force(&certificates), original, "a working pair");
    }

    /// At start a bad pair is an error naming the file, and nothing of the key.
    #[test]
    fn a_bad_pair_at_start_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = settings(dir.path());
        let secret =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        std::fs::write(&settings.cert_file, pair("a.test").0).expect("write");
        std::fs::write(&settings.key_file, secret).expect("write");
        let e = Certificates::load(&settings).expect_err("bad key");
        let text = e.to_string();
        assert!(!text.contains("c2VjcmV0"), "{text}");
        std::fs::remove_file(&settings.cert_file).expect("remove");
        assert!(Certificates::load(&settings).is_err());
    }
}
