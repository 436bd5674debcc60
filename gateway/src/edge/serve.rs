//! Serving a listener: hyper's HTTP/1 connection with a timer, so that hyper's own limits are
//! on (axum's `serve` runs hyper without a timer, which leaves the header timeout off), a cap
//! on open connections, and hyper-util's graceful shutdown when the process drains.
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
//!
//! A listener with TLS, h2c or the PROXY protocol hands each connection to
//! [`crate::edge::protocols`]; without them a connection goes to hyper's HTTP/1.1 through
//! [`crate::edge::idle`], which parks it without hyper's buffers whenever it is idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use busgate_shared::backoff::{Backoff, ExponentialBackoff};
use busgate_shared::drain;

use crate::config::settings::HttpSettings;
use crate::edge::idle;
use crate::edge::protocols::{ConnectionService, Protocols};
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
    /// The HTTP/1.1 connection builder with these limits.
    pub fn builder(&self) -> hyper::server::conn::http1::Builder {
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

/// Serves the service `make` gives for each connection's client address on `listener`
/// until `drain` is signalled; then stops accepting and returns (releasing the drain) once
/// every open connection has finished its requests (hyper's graceful shutdown; hyper-util's
/// watcher of each connection is what is waited for).
/// `connections` counts open connections and caps them; `protocols` is what connections
/// speak beyond cleartext HTTP/1.1, if anything.
pub async fn serve<S, M>(
    listener: TcpListener,
    make: M,
    limits: &Limits,
    protocols: Option<Arc<Protocols>>,
    connections: Arc<Slots>,
    drain: drain::Watch,
) where
    M: Fn(SocketAddr) -> S + Send + Sync + 'static,
    // Unpin: an idle connection's service and futures move to its next hyper connection.
    S: ConnectionService + Unpin,
    S::Future: Unpin,
{
    let make = Arc::new(make);
    let builder = Arc::new(limits.builder());
    let graceful = GracefulShutdown::new();
    let connection_drain = drain.clone();
    let signaled = drain.signaled();
    tokio::pin!(signaled);
    let mut accept_retry = accept_backoff().stream();
    // Held until the open connections are done: the drain waits for it.
    let release = loop {
        let (stream, peer) = tokio::select! {
            release = &mut signaled => break release,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_retry.reset();
                    accepted
                }
                Err(e) => {
                    if let Some(delay) = accept_failed(e, &mut accept_retry) {
                        tokio::select! {
                            release = &mut signaled => break release,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
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
        if let Some(protocols) = &protocols {
            let (protocols, make, watcher) = (protocols.clone(), make.clone(), graceful.watcher());
            tokio::spawn(async move {
                protocols
                    .serve(stream, peer, |client| make(client), watcher)
                    .await;
                drop(slot);
            });
            continue;
        }
        let (service, builder, drain) = (make(peer), builder.clone(), connection_drain.clone());
        let (header_timeout, watcher) = (limits.header_timeout, graceful.watcher());
        tokio::spawn(async move {
            idle::serve(stream, service, &builder, header_timeout, drain).await;
            // Held until here: the graceful shutdown below waits for every watcher.
            drop(watcher);
            drop(slot);
        });
    };
    drop(listener);
    graceful.shutdown().await;
    drop(release);
}

/// The waits after failed accepts (out of file descriptors): 100 ms, doubling, at most 1 s,
/// with up to half again as jitter; back to 100 ms after an accept succeeds.
fn accept_backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.5)
}

/// An accept that failed: a connection reset before it was taken is nothing; anything else
/// (out of file descriptors) is logged and waited out (the delay returned), instead of a busy
/// loop.
fn accept_failed(e: std::io::Error, retry: &mut Backoff) -> Option<Duration> {
    use std::io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    ) {
        return None;
    }
    let delay = retry.next_delay();
    warn!(error = %e, retry_in = ?delay, "accept failed");
    Some(delay)
}

/// A tower service (the admin router) as the hyper service [`serve`] takes. Its answers are
/// boxed futures ([`serve`] parks idle connections, which needs futures that are `Unpin`): one
/// allocation per admin request, which the public listener's [`crate::edge::Public`] does not
/// need (its futures are boxed already).
#[derive(Clone)]
pub struct TowerService<T>(T);

/// A tower service (the admin router) as the hyper service [`serve`] takes.
pub fn tower_service<T>(service: T) -> TowerService<T> {
    TowerService(service)
}

impl<T> hyper::service::Service<hyper::Request<Incoming>> for TowerService<T>
where
    T: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    T::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(tower::ServiceExt::oneshot(
            service,
            request.map(axum::body::Body::new),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener stops accepting when the drain is signalled and releases it once its
    /// connections are done; the drain completes without the task being aborted.
    #[tokio::test]
    async fn a_listener_stops_on_the_drain_and_releases_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            max_headers: HYPER_DEFAULT_MAX_HEADERS,
            max_header_bytes: 16 * 1024,
        };
        let (signal, watch) = drain::channel();
        let served = tokio::spawn(async move {
            let service = tower_service(axum::Router::new());
            let make = move |_| service.clone();
            serve(
                listener,
                make,
                &limits,
                None,
                Arc::new(Slots::new(4)),
                watch,
            )
            .await;
        });
        // Accepting before the drain.
        let before = tokio::net::TcpStream::connect(addr).await;
        assert!(before.is_ok());
        drop(before);
        tokio::time::timeout(Duration::from_secs(5), signal.drain())
            .await
            .expect("the drain completes once the listener has stopped");
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the task ends")
            .expect("join");
    }
}
