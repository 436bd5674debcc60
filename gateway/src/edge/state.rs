//! The state every public handler runs on: one `Arc` over the runner, the NATS client, the
//! edge's rules, asynchronous requests and the configuration store.

use std::sync::Arc;

use async_nats::Client;
use axum::extract::FromRef;

use busgate_shared::validate::OrderIdRule;

use crate::auth::Authenticator;
use crate::config::settings::HttpSettings;
use crate::config::store::{ConfigStore, StoreStatus};
use crate::jobs::http::AsyncRequests;
use crate::limit::Slots;
use crate::metrics::Name;
use crate::route::Runner;

/// Everything a request needs, behind one `Arc`: axum clones the state for every request, and
/// one reference count is cheaper than the dozen a NATS client and its siblings would cost.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Shares `shared` with every handler.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// Runs routes: the configuration in force, the collector, the metrics.
    pub runner: Runner,
    /// The NATS client (JetStream, KV, discovery).
    pub nats: Client,
    /// Edge rules from settings.
    pub edge: Arc<Edge>,
    /// Asynchronous requests: the store once JetStream is ready, and the callback policy.
    pub requests: Arc<AsyncRequests>,
    /// The configuration store, once JetStream is ready.
    pub store: Arc<std::sync::OnceLock<ConfigStore>>,
    /// What the configuration watcher reports.
    pub store_status: Arc<StoreStatus>,
    /// This instance's id.
    pub instance: Arc<str>,
    /// Who may call the public API.
    pub auth: Authenticator,
}

impl Shared {
    /// Whether both NATS connections are up: the client (JetStream, KV) and the request path's.
    pub fn nats_connected(&self) -> bool {
        busgate_shared::nats::is_connected(&self.nats) && self.runner.collector().is_connected()
    }
}

impl FromRef<AppState> for Arc<AsyncRequests> {
    fn from_ref(state: &AppState) -> Self {
        state.requests.clone()
    }
}

/// Rules of the edge that come from settings, not from dynamic configuration.
#[derive(Debug)]
pub struct Edge {
    /// Largest request body.
    pub body_limit: usize,
    /// What an `order_id` must match.
    pub order_id: OrderIdRule,
    /// The metrics label of requests that matched no route.
    pub unmatched: Name,
    /// The share of the traces started here that are marked sampled.
    pub trace_sample_ratio: f64,
    /// `[log] access` (or its alias `http.access_log`): one access line per public request.
    pub access_log: bool,
    /// How long a request body may take to arrive whole.
    pub body_timeout: std::time::Duration,
    /// Requests in flight (health and metrics not counted) and their cap.
    pub in_flight: Slots,
    /// Open connections of the public listener and their cap (the listener takes the slots).
    pub connections: Arc<Slots>,
    /// Addresses a service's upstream may not aim at: this gateway's own listeners and the
    /// NATS monitoring port (checked when the admin API writes a service).
    pub upstream_forbidden: Vec<busgate_shared::upstream::Forbidden>,
    /// Peers that may name the client (`http.trusted_proxies`).
    pub proxies: crate::edge::forwarded::TrustedProxies,
}

impl Edge {
    /// Edge rules with the given limit and `order_id` rule, and the default limits of load.
    pub fn new(body_limit: usize, order_id: OrderIdRule) -> Self {
        let http = HttpSettings::default();
        Edge {
            body_limit,
            order_id,
            unmatched: Name(Arc::from("-")),
            trace_sample_ratio: 0.0,
            access_log: false,
            body_timeout: http.body_timeout,
            in_flight: Slots::new(http.max_in_flight),
            connections: Arc::new(Slots::new(http.max_connections)),
            upstream_forbidden: Vec::new(),
            proxies: crate::edge::forwarded::TrustedProxies::default(),
        }
    }
}
