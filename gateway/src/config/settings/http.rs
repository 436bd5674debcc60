//! `[http]`: the public listener and its limits on slow and greedy clients.

use std::net::SocketAddr;
use std::time::Duration;

use busgate_shared::validate::DEFAULT_ORDER_ID_PATTERN;
use serde::{Deserialize, Serialize};

/// The public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on (port 0 picks a free port; the log says which).
    pub listen: SocketAddr,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// What an `order_id` must match (anchored regex).
    pub order_id_pattern: String,
    /// The share of the traces Busgate starts (requests without a `traceparent`) that are
    /// marked sampled, 0.0 to 1.0. Busgate records no spans itself, so by default it starts
    /// them unsampled; tracers downstream that follow their parent's decision record the
    /// marked ones. A caller's `traceparent` keeps its own flags.
    pub trace_sample_ratio: f64,
    /// A connection that has not sent a whole request head within this is closed; hyper arms
    /// the same timer while a kept-alive connection waits for its next request, so it is the
    /// idle keep-alive timeout too. Both listeners.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request body must have arrived whole within this, counted from when the gateway
    /// starts reading it; past it: 408 and the connection closes.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Open connections per listener; past it a new connection is accepted and closed at once.
    pub max_connections: usize,
    /// Requests in flight on the public listener (health and metrics not counted); past it:
    /// 503 `overloaded` with `Retry-After`.
    pub max_in_flight: usize,
    /// Header fields in a request head; past it: 431 and the connection closes.
    pub max_headers: usize,
    /// Bytes of a request head (request line and header fields); past it: 431 and the
    /// connection closes.
    pub max_header_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            body_limit: 64 * 1024,
            order_id_pattern: DEFAULT_ORDER_ID_PATTERN.into(),
            trace_sample_ratio: 0.0,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_in_flight: 4096,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
        }
    }
}
