//! What a connection speaks when the listener is more than cleartext HTTP/1.1: a PROXY
//! protocol v2 header first (from a trusted proxy, `http.proxy_protocol`), TLS
//! (`[http.tls]`, HTTP/2 or HTTP/1.1 as ALPN chose), or cleartext HTTP/2 with prior knowledge
//! next to HTTP/1.1 (`http.h2c`, told apart by the client's connection preface).
//!
//! Everything a connection does before its first request (the PROXY header, the TLS handshake,
//! the h2c preface) must be done within `http.header_timeout`, or it is closed.
//!
//! HTTP/2's limits, set explicitly rather than taken from the library's defaults:
//! - `http.h2_max_concurrent_streams` streams open at once (more are refused);
//! - the header list (HPACK-decoded, all CONTINUATION frames together) at most
//!   `http.max_header_bytes`, like HTTP/1.1's head; h2 refuses a header block past it without
//!   buffering it whole, which is what stops a CONTINUATION flood;
//! - flow-control windows of [`STREAM_WINDOW`] per stream and [`CONNECTION_WINDOW`] per
//!   connection (what a client may send unread), frames of at most 16 KiB;
//! - rapid reset (CVE-2023-44487): at most [`MAX_PENDING_RESETS`] streams reset by the client
//!   before the server saw them, and at most [`MAX_LOCAL_ERROR_RESETS`] streams the server had
//!   to reset for the client's errors, per connection; past either the connection is closed
//!   with `ENHANCE_YOUR_CALM`;
//! - at most [`MAX_SEND_BUF`] bytes of answers buffered per stream; keep-alive pings every
//!   `http.header_timeout`, and a peer that does not answer one within it is gone.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use busgate_shared::Error;

use crate::config::settings::HttpSettings;
use crate::edge::forwarded::TrustedProxies;
use crate::edge::proxy_protocol;
use crate::edge::tls::{Certificates, ALPN_H2};

/// Bytes a client may send on one stream before the server reads them.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Bytes a client may send on one connection before the server reads them.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams a client may reset before the server accepted them (hyper's default is 20).
pub const MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors (h2's default is 1024).
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Bytes of an answer buffered per stream before the server waits for the client.
pub const MAX_SEND_BUF: usize = 256 * 1024;
/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What serves one connection's requests: a hyper service of the public or the admin edge.
pub trait ConnectionService:
    hyper::service::Service<
        hyper::Request<Incoming>,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S> ConnectionService for S where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// The protocols of the public listener from `http` (with `h1`, the cleartext listener's
/// HTTP/1.1 builder), `None` for cleartext HTTP/1.1 alone; and the certificates to
/// [`Certificates::watch`] when TLS is on.
#[allow(clippy::type_complexity)]
pub fn for_settings(
    http: &HttpSettings,
    h1: hyper::server::conn::http1::Builder,
) -> Result<(Option<Arc<Protocols>>, Option<Arc<Certificates>>), Error> {
    let proxy_protocol = http
        .proxy_protocol
        .then(|| http.trusted_networks().map(TrustedProxies::new))
        .transpose()?;
    if !http.tls.enabled() && !http.h2c && proxy_protocol.is_none() {
        return Ok((None, None));
    }
    let (tls, certificates) = if http.tls.enabled() {
        let certificates = Certificates::load(&http.tls)?;
        tracing::info!(cert_file = %http.tls.cert_file, "the public listener serves TLS (h2, http/1.1)");
        (Some(certificates.acceptor()?), Some(certificates))
    } else {
        (None, None)
    };
    let options = Options {
        tls,
        h2c: http.h2c,
        proxy_protocol,
        max_concurrent_streams: http.h2_max_concurrent_streams,
        max_header_bytes: http.max_header_bytes,
        header_timeout: http.header_timeout,
    };
    Ok((Some(Arc::new(Protocols::new(options, h1))), certificates))
}

/// The protocols of a listener and their builders, shared by its connections.
pub struct Protocols {
    tls: Option<TlsAcceptor>,
    h2c: bool,
    /// Set when `http.proxy_protocol` is on: the peers whose connections start with a header.
    proxy_protocol: Option<TrustedProxies>,
    /// The same HTTP/1.1 builder the cleartext listener uses.
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// Bound on everything before the first request.
    opening: Duration,
}

/// What [`Protocols::new`] takes.
pub struct Options {
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
    /// Cleartext HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// The trusted proxies, when they send a PROXY protocol v2 header.
    pub proxy_protocol: Option<TrustedProxies>,
    /// Streams open at once on an HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Bytes of a header list (HTTP/2) or head (HTTP/1.1).
    pub max_header_bytes: usize,
    /// What bounds a connection's opening and its idle time.
    pub header_timeout: Duration,
}

impl Protocols {
    /// The protocols of `options`, with `h1` for HTTP/1.1.
    pub fn new(options: Options, h1: hyper::server::conn::http1::Builder) -> Self {
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(options.max_concurrent_streams)
            .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .adaptive_window(false)
            .max_frame_size(16 * 1024)
            .max_send_buf_size(MAX_SEND_BUF)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
            .keep_alive_interval(options.header_timeout)
            .keep_alive_timeout(options.header_timeout);
        Protocols {
            tls: options.tls,
            h2c: options.h2c,
            proxy_protocol: options.proxy_protocol,
            h1,
            h2,
            opening: options.header_timeout,
        }
    }

    /// Serves one accepted connection from `peer`: its opening, then HTTP/1.1 or HTTP/2 with
    /// the service `make` gives for the client's address, until it ends or the listener
    /// shuts down (`watcher`).
    pub async fn serve<S>(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        make: impl FnOnce(SocketAddr) -> S,
        watcher: Watcher,
    ) where
        S: ConnectionService,
    {
        let opened = tokio::time::timeout(self.opening, async {
            let client = match &self.proxy_protocol {
                Some(trusted) if trusted.trusts(peer.ip()) => {
                    proxy_protocol::read_header(&mut stream)
                        .await
                        .map_err(|e| e.to_string())?
                        .unwrap_or(peer)
                }
                _ => peer,
            };
            let opened = if let Some(tls) = &self.tls {
                let tls = tls.accept(stream).await.map_err(|e| e.to_string())?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                Opened::Tls(Box::new(tls), h2)
            } else if self.h2c {
                let (prefix, len) = read_preface(&mut stream).await.map_err(|e| e.to_string())?;
                let h2 = prefix[..len] == PREFACE[..];
                Opened::Plain(Prefixed::new(stream, prefix, len), h2)
            } else {
                Opened::Plain(Prefixed::new(stream, [0; 24], 0), false)
            };
            Ok::<_, String>((client, opened))
        })
        .await;
        let (client, opened) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "connection refused before its first request");
                return;
            }
            Err(_) => {
                debug!(%peer, "connection closed: no request within the header timeout");
                return;
            }
        };
        let service = make(client);
        let result = match opened {
            Opened::Tls(io, h2) => self.http(*io, h2, service, watcher).await,
            Opened::Plain(io, h2) => self.http(io, h2, service, watcher).await,
        };
        if let Err(e) = result {
            debug!(%peer, error = %e, "connection ended");
        }
    }

    /// Serves HTTP/2 (`h2`) or HTTP/1.1 on `io` until the connection ends or the listener
    /// shuts down.
    async fn http<I, S>(&self, io: I, h2: bool, service: S, watcher: Watcher) -> hyper::Result<()>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: ConnectionService,
    {
        let io = TokioIo::new(io);
        if h2 {
            watcher.watch(self.h2.serve_connection(io, service)).await
        } else {
            watcher.watch(self.h1.serve_connection(io, service)).await
        }
    }
}

/// A connection past its opening.
enum Opened {
    /// TLS, and whether ALPN chose HTTP/2.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, bool),
    /// Cleartext, and whether it opened with HTTP/2's preface.
    Plain(Prefixed, bool),
}

/// Reads until the bytes read are HTTP/2's preface or cannot become it.
async fn read_preface(stream: &mut TcpStream) -> std::io::Result<([u8; 24], usize)> {
    let mut buf = [0u8; 24];
    let mut len = 0;
    while len < buf.len() && buf[..len] == PREFACE[..len] {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok((buf, len))
}

/// A TCP stream whose first bytes were read already (the h2c preface check): they are read
/// again first.
pub struct Prefixed {
    stream: TcpStream,
    prefix: [u8; 24],
    at: usize,
    len: usize,
}

impl Prefixed {
    fn new(stream: TcpStream, prefix: [u8; 24], len: usize) -> Self {
        Prefixed {
            stream,
            prefix,
            at: 0,
            len,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.len {
            let n = (self.len - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
