//! Serving a listener: hyper's HTTP/1 connection with a timer, so that hyper's own limits are
//! on (axum's `serve` runs hyper without a timer, which leaves the header timeout off), a cap
//! on open connections, and hyper-util's graceful shutdown.
//!
//! What hyper enforces, per connection:
//! - `http.header_timeout`: a request head must arrive whole within it, or the connection is
//!   closed without an answer. hyper arms this timer whenever it waits for a head, so it is
//!   also the idle timeout of a kept-alive connection.
//! - `http.max_headers`, `http.max_header_bytes`: past either, hyper answers 431 (with an
//!   empty body: hyper writes it, not our error mapping) and closes the connection.
//!
//! Past `http.max_connections` a new connection is accepted and closed at once: the client
//! learns immediately (and a load balancer tries another instance), instead of waiting in the
//! kernel's backlog for a slot while its own timeouts run.
//!
//! The body timeout is not hyper's (it has none): see [`crate::edge::body`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::config::settings::HttpSettings;
use crate::limit::Slots;

/// hyper's default number of header fields: parsed on the stack. Any other count makes hyper
/// allocate the header array on the heap for every request.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// hyper's smallest read buffer.
const HYPER_MIN_BUF: usize = 8192;

/// The per-connection limits hyper enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request head must arrive within this (also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Header fields in a head.
    pub max_headers: usize,
    /// Bytes in a head.
    pub max_header_bytes: usize,
}

impl From<&HttpSettings> for Limits {
    fn from(http: &HttpSettings) -> Self {
        Limits {
            header_timeout: http.header_timeout,
            max_headers: http.max_headers,
            max_header_bytes: http.max_header_bytes,
        }
    }
}

impl Limits {
    fn builder(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_header_size(self.max_header_bytes)
            // A head still incomplete when the read buffer is full is refused too (431), so a
            // connection holds at most this much of an unfinished head.
            .max_buf_size(self.max_header_bytes.max(HYPER_MIN_BUF));
        if self.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            builder.max_headers(self.max_headers);
        }
        builder
    }
}

/// Serves `service` on `listener` until `shutdown` resolves; then stops accepting and returns
/// once every open connection has finished its requests (hyper-util's graceful shutdown).
/// `connections` counts open connections and caps them.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: &Limits,
    connections: Arc<Slots>,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = limits.builder();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Some(slot) = connections.try_hold() else {
            debug!(
                open = connections.used(),
                "connection refused: max_connections reached"
            );
            drop(stream);
            continue;
        };
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An accept that failed: a connection reset before it was taken is nothing; anything else
/// (out of file descriptors) is logged and waited out a little, instead of a busy loop.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    ) {
        return;
    }
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A tower service made a hyper service that takes hyper's requests.
pub type TowerService<T> = hyper_util::service::TowerToHyperService<
    tower::util::MapRequest<T, fn(hyper::Request<Incoming>) -> Request>,
>;

/// A tower service (the admin router) as the hyper service [`serve`] takes.
pub fn tower_service<T>(service: T) -> TowerService<T>
where
    T: tower::Service<Request>,
{
    let to_axum: fn(hyper::Request<Incoming>) -> Request = |r| r.map(axum::body::Body::new);
    hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(service, to_axum))
}
