//! Making one server connection: TCP, TLS (first, or after `INFO`, never a downgrade),
//! `CONNECT` with the credentials, and the first `PONG`, bounded by [`HANDSHAKE_TIMEOUT`]. What
//! it needs, loaded once from the settings, is a [`Security`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::wire::auth::{self, Signer};
use crate::wire::error::ConnError;
use crate::wire::options::{NatsSettings, Server};
use crate::wire::protocol::{parse_op, read_more, Info, Op, READ_CHUNK};
use crate::wire::tls::{self, TlsStream};
use crate::Error;

/// Bound on connecting to one server: TCP, TLS, `INFO`, `CONNECT` and the first `PONG`.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The security material of a connection, loaded once from its settings.
pub(crate) struct Security {
    /// The TLS client configuration: made at start when TLS is configured, else on the first
    /// server that requires TLS (with the system's roots).
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// TLS on every server, even one that does not ask for it.
    require_tls: bool,
    handshake_first: bool,
    signer: Option<Signer>,
    /// How often the connection PINGs the server (`nats.ping_interval`).
    pub ping_interval: Duration,
    /// Keep-alive PINGs unanswered before the server is taken for dead.
    pub max_pings_out: usize,
}

impl Security {
    /// Reads and checks the settings' key, certificate and credential files.
    pub(crate) fn load(settings: &NatsSettings) -> Result<Security, Error> {
        settings.validate()?;
        let signer = Signer::load(&settings.creds_file, &settings.nkey_file)?;
        let require_tls = settings.requires_tls();
        let tls = OnceLock::new();
        if require_tls {
            let _ = tls.set(tls::tls_config(settings)?);
        }
        Ok(Security {
            tls,
            require_tls,
            handshake_first: settings.handshake_first,
            signer,
            ping_interval: settings.ping_interval,
            max_pings_out: settings.max_pings_out,
        })
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, ConnError> {
        if let Some(config) = self.tls.get() {
            return Ok(config.clone());
        }
        let config =
            tls::tls_config(&NatsSettings::default()).map_err(|e| ConnError::Tls(e.to_string()))?;
        Ok(self.tls.get_or_init(|| config).clone())
    }
}

/// A server connection after its handshake: its two halves and what was read past the `PONG`.
/// Plain TCP keeps tokio's lock-free halves; TLS splits the one stream.
pub(crate) enum Link {
    Plain(
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
        BytesMut,
    ),
    Tls(
        tokio::io::ReadHalf<TlsStream>,
        tokio::io::WriteHalf<TlsStream>,
        BytesMut,
    ),
}

/// TCP, then TLS first (`handshake_first`) or `INFO` then TLS when the server, the URL or the
/// settings require it, then `CONNECT` with the credentials and the first `PONG`.
/// `learn` is given the server's `INFO` before `CONNECT` is sent (its `max_payload`, the
/// servers it announces).
pub(crate) async fn handshake(
    sec: &Security,
    name: &str,
    server: &Server,
    learn: &(dyn Fn(&Info) + Sync),
) -> Result<Link, ConnError> {
    let mut tcp = TcpStream::connect((server.host.as_str(), server.port)).await?;
    tcp.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    if sec.handshake_first {
        let mut tls = tls::upgrade(sec.tls()?, server, tcp).await?;
        let info = read_info(&mut tls, &mut buf)
            .await
            .map_err(tls::tls_refusal)?;
        accept(&info, learn)?;
        hello(sec, name, server, &info, true, &mut tls, &mut buf)
            .await
            .map_err(tls::tls_refusal)?;
        let (reader, writer) = tokio::io::split(tls);
        return Ok(Link::Tls(reader, writer, buf));
    }
    let info = read_info(&mut tcp, &mut buf).await?;
    if !(server.tls || sec.require_tls || info.tls_required) {
        accept(&info, learn)?;
        hello(sec, name, server, &info, false, &mut tcp, &mut buf).await?;
        let (reader, writer) = tcp.into_split();
        return Ok(Link::Plain(reader, writer, buf));
    }
    if !info.tls_required && !info.tls_available {
        // Never fall back to plain TCP when TLS was asked for: that is the downgrade attack.
        return Err(ConnError::Tls(
            "TLS is required by the settings but the server does not offer it".into(),
        ));
    }
    if !buf.is_empty() {
        return Err(ConnError::Protocol(
            "data after INFO before the TLS handshake".into(),
        ));
    }
    let mut tls = tls::upgrade(sec.tls()?, server, tcp).await?;
    accept(&info, learn)?;
    hello(sec, name, server, &info, true, &mut tls, &mut buf)
        .await
        .map_err(tls::tls_refusal)?;
    let (reader, writer) = tokio::io::split(tls);
    Ok(Link::Tls(reader, writer, buf))
}

/// Reads the server's first operation, which must be `INFO`.
async fn read_info<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Info, ConnError> {
    loop {
        match parse_op(buf, 0)? {
            Some(Op::Info(json)) => {
                return serde_json::from_str::<Info>(&json)
                    .map_err(|e| ConnError::Protocol(format!("bad INFO: {e}")))
            }
            Some(other) => {
                return Err(ConnError::Protocol(format!("expected INFO, got {other:?}")))
            }
            None => read_more(stream, buf).await?,
        }
    }
}

/// Refuses a server without headers (nats-server before 2.2); gives its `INFO` to `learn`.
fn accept(info: &Info, learn: &(dyn Fn(&Info) + Sync)) -> Result<(), ConnError> {
    if !info.headers {
        return Err(ConnError::Server(
            "the server does not support headers (nats-server 2.2 or later is needed)".into(),
        ));
    }
    learn(info);
    Ok(())
}

/// `CONNECT` (with the credentials: the URL's, or the nonce signed with the nkey) and `PING`,
/// then waits for the `PONG` (or the `-ERR` of a refusal).
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    sec: &Security,
    name: &str,
    server: &Server,
    info: &Info,
    tls: bool,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), ConnError> {
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust-busgate",
        "version": crate::VERSION,
        "protocol": 1,
        "headers": true,
        "no_responders": true,
        "echo": true,
        "tls_required": tls,
        "name": name,
    });
    auth::add_credentials(&server.auth, sec.signer.as_ref(), &info.nonce, &mut connect)?;
    let hello = format!("CONNECT {connect}\r\nPING\r\n");
    stream.write_all(hello.as_bytes()).await?;
    stream.flush().await?;
    loop {
        match parse_op(buf, 0)? {
            Some(Op::Pong) => break,
            Some(Op::Ok | Op::Info(_)) => {}
            Some(Op::Ping) => {
                stream.write_all(b"PONG\r\n").await?;
                stream.flush().await?;
            }
            Some(Op::Err(e)) => return Err(ConnError::from_server(e)),
            Some(Op::Msg { .. }) => {
                return Err(ConnError::Protocol(
                    "message before the handshake ended".into(),
                ))
            }
            None => read_more(stream, buf).await?,
        }
    }
    debug!(server_id = %info.server_id, tls, "nats handshake done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_with_missing_or_bad_files_are_refused_naming_the_file_only() {
        let dir = std::env::temp_dir().join(format!("busgate-wire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let seed_path = dir.join("bad.nk");
        let secretish = "SUNOTAREALSEEDBUTSECRETLOOKING";
        std::fs::write(&seed_path, secretish).expect("write");
        let mut s = NatsSettings::with_url("nats://127.0.0.1:1");
        s.nkey_file = seed_path.display().to_string();
        let e = Security::load(&s).err().expect("refused").to_string();
        assert!(
            e.contains("nats.nkey_file") && !e.contains(secretish),
            "{e}"
        );
        s.nkey_file = "/nonexistent/x.nk".into();
        assert!(Security::load(&s).is_err());
        let mut s = NatsSettings::with_url("nats://127.0.0.1:1");
        s.ca_file = "/nonexistent/ca.pem".into();
        assert!(Security::load(&s).is_err());
        let mut s = NatsSettings::with_url("nats://127.0.0.1:1");
        s.cert_file = "/nonexistent/c.pem".into();
        assert!(s.validate().is_err(), "cert without key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
