//! The public HTTP edge: every configured route, and the built-in endpoints.
//!
//! Configured routes change at run time, so they are not axum routes: [`Public`] looks the
//! method and path up in the current snapshot. Bad input is refused before anything is
//! published: unknown path (404), wrong method (405), a body over the limit (413), a body that
//! is not JSON (400/415), a missing or invalid `order_id` (400).
//!
//! # Layout
//!
//! - here: the map and the router: [`Public`] (built-in paths to [`router`], everything else to
//!   [`dispatch`], after [`shed`]), [`router`] (the built-in paths, testable without a socket)
//!   and the middleware of its answers (request ids, the caller of polls and event streams).
//! - [`shed`]: load shedding (`http.max_in_flight`, 503 `overloaded`).
//! - [`dispatch`]: a configured route, from the caller to the answer.
//! - [`gauges`]: what `/metrics` reads at scrape time (NATS state, loads, async backlog).
//! - [`access`]: the server span and the one access line of a request, when either is on.
//! - [`serve`]: the listeners' hyper connections, their timeouts and caps, until the drain;
//!   [`idle`]: a cleartext connection parked without hyper's buffers while it waits;
//!   [`protocols`]: what a connection speaks beyond cleartext HTTP/1.1 (the PROXY header of
//!   [`proxy_protocol`], [`tls`] with its reloaded certificate, HTTP/2 and its limits).
//! - [`host`]: RFC 9112's `Host` rule (400), for both listeners; [`forwarded`]: the real
//!   client address (trusted proxies) that the access line and the server span report.
//! - [`body`] reading and parsing, request [`ids`] and `traceparent`, the [`health`] and metrics
//!   endpoints, and the [`state`] handlers share.
//!
//! Imports point down: here → `shed`, `dispatch`; `dispatch` → `shed`, `access`, `body`,
//! `ids`, `state`; `shed` → `ids`, `state`. None of them uses this file.
//!
//! May use: `jobs` (an asynchronous submit, poll and events), `auth` (the caller, before
//! anything else is done for a request but the health endpoints and `/metrics`), `route`,
//! `gather` (a started gather), `config`, `metrics`, `limit`, `error`.

use std::convert::Infallible;
use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{ErrorKind, GatewayError};

pub mod access;
pub mod body;
pub mod dispatch;
pub mod forwarded;
pub mod gauges;
pub mod health;
pub mod host;
pub mod idle;
pub mod ids;
pub mod protocols;
pub mod proxy_protocol;
pub mod serve;
pub mod shed;
pub mod state;
pub mod tls;

use dispatch::dispatch;
use ids::{RequestId, REQUEST_ID_HEADER};
use shed::{overloaded, InFlight};
use state::AppState;

/// The public edge as a service: the built-in paths go to [`router`]; every other request goes
/// straight to the configured routes. (The router's fallback leads there too, but axum first gives
/// each request URL parameters, three allocations, and a clone of the boxed fallback service.)
///
/// Load shedding is here, before anything else is done for a request: past
/// `http.max_in_flight` a request is answered 503 `overloaded` at once. The health endpoints and
/// `/metrics` are not counted, so a probe gets through a flood.
#[derive(Clone)]
pub struct Public {
    builtins: Router,
    state: AppState,
    /// The connection's client address (the peer, or a PROXY header's source).
    peer: Option<std::net::SocketAddr>,
}

/// The real client address of a poll or an event stream, for [`with_caller`].
#[derive(Debug, Clone, Copy)]
struct ClientAddress(std::net::IpAddr);

/// What [`Public`] answers with.
pub type ResponseFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Public {
    /// The edge over `state`.
    pub fn new(state: AppState) -> Self {
        Public {
            builtins: router(state.clone()),
            state,
            peer: None,
        }
    }

    /// The edge for one connection whose client is at `peer`.
    pub fn for_peer(&self, peer: std::net::SocketAddr) -> Self {
        Public {
            builtins: self.builtins.clone(),
            state: self.state.clone(),
            peer: Some(peer),
        }
    }

    /// The edge over `state` without `/metrics` (served on the admin listener instead): a
    /// path no route may bind, so it is 404 here.
    pub fn without_metrics(state: AppState) -> Self {
        Public {
            builtins: builtins(state.clone(), false),
            state,
            peer: None,
        }
    }

    /// Whether [`router`] has a route for `path` (else only its fallback would answer).
    fn is_builtin(path: &str) -> bool {
        Public::is_exempt(path) || path.starts_with("/api/requests/")
    }

    /// Whether a request to `path` is answered whatever the load: probes and scrapes, which
    /// never touch the bus.
    fn is_exempt(path: &str) -> bool {
        matches!(path, "/health/live" | "/health/ready" | "/metrics")
    }

    fn respond(&self, request: Request) -> ResponseFuture {
        if let Some(why) = host::refusal(&request) {
            return Box::pin(std::future::ready(Ok(host::refused(why))));
        }
        let path = request.uri().path();
        if Public::is_exempt(path) {
            let mut builtins = self.builtins.clone();
            return Box::pin(tower::Service::call(&mut builtins, request));
        }
        let Some(entered) = InFlight::enter(&self.state) else {
            return Box::pin(std::future::ready(Ok(overloaded(&self.state))));
        };
        if Public::is_builtin(path) {
            let mut request = request;
            if let Some(peer) = self.peer {
                let address = self.state.edge.proxies.client(peer.ip(), request.headers());
                request.extensions_mut().insert(ClientAddress(address));
            }
            let mut builtins = self.builtins.clone();
            let answer = tower::Service::call(&mut builtins, request);
            Box::pin(async move {
                let answer = answer.await;
                drop(entered);
                answer
            })
        } else {
            Box::pin(dispatch(entered, request, self.peer))
        }
    }
}

impl tower::Service<Request> for Public {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.respond(request)
    }
}

/// What the listener calls: hyper's service takes `&self`, so a connection calls the edge
/// without the clone of it (a router and a state) that tower's `&mut self` needs per request.
impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Public {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.respond(request.map(Body::new))
    }
}

/// The public router: the built-in paths, and the configured routes as its fallback.
pub fn router(state: AppState) -> Router {
    builtins(state, true)
}

/// [`router`], with or without `/metrics`.
fn builtins(state: AppState, metrics: bool) -> Router {
    let router = Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready));
    let router = if metrics {
        router.route("/metrics", get(health::metrics))
    } else {
        router
    };
    // Polls and event streams name their client like every other public request; the health
    // endpoints and `/metrics` need none.
    let requests = Router::new()
        .route("/api/requests/{request_id}", get(crate::jobs::http::poll))
        .route(
            "/api/requests/{request_id}/events",
            get(crate::jobs::http::events),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            with_caller,
        ));
    router
        .merge(requests)
        .fallback_service(tower::service_fn({
            let state = state.clone();
            move |request| dispatch(InFlight::uncounted(state.clone()), request, None)
        }))
        .method_not_allowed_fallback(builtin_method_not_allowed)
        .layer(axum::middleware::from_fn(with_request_id))
        .with_state(state)
}

/// Authenticates a request to a built-in path that needs a client (polls and event streams)
/// and hands the [`Caller`] to its handler; 401 without running it.
async fn with_caller(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    // Owned, not a guard: the check may wait (a JWT issuer's keys).
    let snapshot = state.runner.config().load_full();
    let address = request
        .extensions()
        .get::<ClientAddress>()
        .and_then(|a| state.edge.proxies.limited(a.0));
    match state
        .auth
        .authenticate(&snapshot, request.headers(), address)
        .await
    {
        Ok(caller) => {
            drop(snapshot);
            let client = caller.get().map(|c| c.name.clone());
            request.extensions_mut().insert(caller);
            let response = next.run(request).await;
            // The one 429 of a poll or a stream: the client's cap of open streams.
            if response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
                state
                    .runner
                    .metrics()
                    .record_client(client.as_ref(), "too-many-streams");
            }
            response
        }
        Err(e) => {
            state
                .runner
                .metrics()
                .record_client(None, dispatch::refusal(&e));
            e.into_response()
        }
    }
}

/// Gives every answer of a router a request id: the `request_id` of a problem document made
/// while answering ([`crate::error::ANSWER_ID`]), and the answer's `Busgate-Request-Id` (unless
/// it has one already: the configured routes of the public fallback set their own). Both
/// listeners use it: the public one for its built-in paths, the admin one for everything.
pub async fn with_request_id(request: Request, next: axum::middleware::Next) -> Response {
    let id = RequestId::fresh();
    let mut response = crate::error::ANSWER_ID
        .scope(id.as_str().to_owned(), next.run(request))
        .await;
    if !response.headers().contains_key(&REQUEST_ID_HEADER) {
        if let Ok(value) = HeaderValue::from_str(id.as_str()) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
    }
    response
}

async fn builtin_method_not_allowed(method: Method) -> GatewayError {
    GatewayError::from(ErrorKind::MethodNotAllowed {
        method: method.to_string(),
        allow: "GET".into(),
    })
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::allowlist::Allowlist;
    use crate::config::snapshot::Snapshot;
    use crate::edge::state::{Edge, Shared};
    use crate::gather::collector::Collector;
    use crate::jobs::guard::Guard;
    use crate::jobs::http::AsyncRequests;
    use crate::metrics::Metrics;
    use crate::route::Runner;
    use arc_swap::ArcSwap;
    use axum::http::header;
    use busgate_shared::validate::OrderIdRule;
    use std::sync::Arc;

    /// A state whose NATS client is not connected (nothing listens on port 1), with one route,
    /// `order` on `GET /api/orders/{order_id}`.
    pub(crate) async fn unconnected_state() -> AppState {
        unconnected_state_with(crate::limit::Slots::new(4096)).await
    }

    /// [`unconnected_state`] with `in_flight` as its cap of requests in flight.
    async fn unconnected_state_with(in_flight: crate::limit::Slots) -> AppState {
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("a client that connects later");
        let metrics = Arc::new(Metrics::new());
        let wire = busgate_shared::wire::Connection::connect("nats://127.0.0.1:1", "size")
            .expect("a connection that connects later");
        let (collector, _task) =
            Collector::start(&wire, "size", metrics.clone()).expect("subscribe");
        let spec: busgate_shared::config::ConfigSpec = serde_json::from_value(serde_json::json!({
            "services": {"service1": {}},
            "routes": {"order": {"bindings": [{"method": "GET", "path": "/api/orders/{order_id}"}], "targets": [{"service": "service1"}]}}
        }))
        .expect("spec");
        AppState::new(Shared {
            runner: Runner::new(
                Arc::new(ArcSwap::from_pointee(
                    Snapshot::compile(spec).expect("compile"),
                )),
                collector,
                metrics,
            ),
            nats,
            edge: Arc::new(Edge {
                in_flight,
                ..Edge::new(
                    1024,
                    OrderIdRule::new("^[A-Za-z0-9_-]{1,64}$").expect("rule"),
                )
            }),
            requests: Arc::new(AsyncRequests::new(None, Guard::new(Allowlist::default()))),
            store: Arc::new(std::sync::OnceLock::new()),
            store_status: Arc::new(crate::config::store::StoreStatus::default()),
            instance: Arc::from("size"),
            auth: crate::auth::Authenticator::new(crate::config::settings::AuthMode::None),
        })
    }

    /// The edge sends built-in paths to the router and everything else to the configured
    /// routes, as the router alone (with the configured routes as its fallback) would.
    #[tokio::test]
    async fn the_edge_routes_like_the_router() {
        use tower::ServiceExt;
        let public = Public::new(unconnected_state().await);
        let problem = "application/problem+json";
        for (method, path, status, content_type) in [
            ("GET", "/health/live", 200, "application/json"),
            ("GET", "/metrics", 200, "text/plain"),
            ("POST", "/metrics", 405, problem),
            ("GET", "/health/ready", 503, "application/json"),
            ("GET", "/api/requests/nope/events/more", 404, problem),
            ("GET", "/api/requests/nope", 404, problem),
            ("GET", "/api/requests/nope/events", 404, problem),
            ("DELETE", "/api/requests/nope", 405, problem),
            ("PUT", "/health/live", 405, problem),
            ("GET", "/api/orders/1", 503, problem),
            ("DELETE", "/api/orders/1", 405, problem),
            ("GET", "/nope", 404, problem),
        ] {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, "t")
                .body(Body::empty())
                .expect("request");
            let response = public.clone().oneshot(request).await.expect("infallible");
            // Every answer has its id; every problem document carries the same one.
            let id = response
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("{method} {path}: no request id header"));
            let seen = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(response.status().as_u16(), status, "{method} {path}");
            assert!(seen.starts_with(content_type), "{method} {path}: {seen}");
            if content_type == problem {
                let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
                    .await
                    .expect("body");
                let doc: serde_json::Value = serde_json::from_slice(&body).expect("json");
                assert_eq!(doc["request_id"], id.as_str(), "{method} {path}");
            }
        }
    }

    /// Past the cap a request is shed with 503 `overloaded` and `Retry-After`, the health
    /// endpoints still answer, and a request's slot comes back when its future is dropped
    /// (answered or abandoned).
    #[tokio::test]
    async fn past_the_cap_requests_are_shed_and_health_is_exempt() {
        let public = Public::new(unconnected_state_with(crate::limit::Slots::new(1)).await);
        let get = |path: &str| {
            axum::http::Request::get(path)
                .header(header::HOST, "t")
                .body(Body::empty())
                .expect("request")
        };
        let held = public.respond(get("/api/orders/1"));
        assert_eq!(public.state.edge.in_flight.used(), 1);
        let shed = public
            .respond(get("/api/orders/2"))
            .await
            .expect("infallible");
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        assert!(shed.headers().contains_key(REQUEST_ID_HEADER));
        let body = axum::body::to_bytes(shed.into_body(), 4096)
            .await
            .expect("body");
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(problem["type"], "urn:busgate:problem:overloaded");
        assert!(problem["request_id"].is_string());
        let live = public
            .respond(get("/health/live"))
            .await
            .expect("infallible");
        assert_eq!(live.status(), 200);
        drop(held);
        assert_eq!(public.state.edge.in_flight.used(), 0);
        // Not shed now: refused for what it is (NATS is not connected).
        let next = public
            .respond(get("/api/orders/3"))
            .await
            .expect("infallible");
        let body = axum::body::to_bytes(next.into_body(), 4096)
            .await
            .expect("body");
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(problem["type"], "urn:busgate:problem:not-ready");
        assert_eq!(public.state.edge.in_flight.used(), 0);
    }
}
