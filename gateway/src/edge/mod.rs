//! The public HTTP edge: every configured route, and the built-in endpoints.
//!
//! Configured routes change at run time, so they are not axum routes: [`Public`] looks the
//! method and path up in the current snapshot. Bad input is refused before anything is
//! published: unknown path (404), wrong method (405), a body over the limit (413), a body that
//! is not JSON (400/415), a missing or invalid `order_id` (400).
//!
//! Owns: dispatch and load shedding (here), [`serve`] (the listeners' hyper connections, their
//! timeouts and caps), [`body`] reading and parsing, request [`ids`] and `traceparent`, the
//! [`health`] and metrics endpoints, and the [`state`] handlers share. May use: `jobs` (an
//! asynchronous submit, poll and events), `auth` (the caller, before anything else is done
//! for a request but the health endpoints and `/metrics`), `route`, `gather` (a started
//! gather), `config`, `metrics`, `limit`, `error`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, request::Parts, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use tokio::time::Instant;

use busgate_shared::header::{REQUEST_ID_LOWER, TRACEPARENT};
use busgate_shared::validate::OrderIdRule;

use crate::auth::Caller;
use crate::config::snapshot::{Lookup, Route};
use crate::error::{ErrorKind, GatewayError};
use crate::gather::scatter::{Asker, Pending};
use crate::jobs::http::{Prefer, Submit};
use crate::metrics::Name;

pub mod body;
pub mod health;
pub mod ids;
pub mod serve;
pub mod state;

use body::{body_fields, read_body, BodyFields};
use ids::{traceparent, RequestId};
use state::AppState;

/// `Busgate-Request-Id` as a ready header name: inserting a `&str` name that is not a standard
/// one allocates a copy of it on every response.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID_LOWER);

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
}

/// What [`Public`] answers with.
pub type ResponseFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Public {
    /// The edge over `state`.
    pub fn new(state: AppState) -> Self {
        Public {
            builtins: router(state.clone()),
            state,
        }
    }

    /// The edge over `state` without `/metrics` (served on the admin listener instead): a
    /// path no route may bind, so it is 404 here.
    pub fn without_metrics(state: AppState) -> Self {
        Public {
            builtins: builtins(state.clone(), false),
            state,
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
        let path = request.uri().path();
        if Public::is_exempt(path) {
            let mut builtins = self.builtins.clone();
            return Box::pin(tower::Service::call(&mut builtins, request));
        }
        let Some(entered) = InFlight::enter(&self.state) else {
            return Box::pin(std::future::ready(Ok(overloaded(&self.state))));
        };
        if Public::is_builtin(path) {
            let mut builtins = self.builtins.clone();
            let answer = tower::Service::call(&mut builtins, request);
            Box::pin(async move {
                let answer = answer.await;
                drop(entered);
                answer
            })
        } else {
            Box::pin(dispatch(entered, request))
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

/// A request counted in flight: its slot of `http.max_in_flight` is given back when it drops
/// (answered, or abandoned by a client that went away). It is also the state the request runs
/// on, so counting costs no reference count of its own.
struct InFlight {
    state: AppState,
    counted: bool,
}

impl InFlight {
    /// Counts a request in, unless the cap is reached.
    fn enter(state: &AppState) -> Option<InFlight> {
        state.edge.in_flight.try_take().then(|| InFlight {
            state: state.clone(),
            counted: true,
        })
    }

    /// A request counted elsewhere (or by no one: [`router`] alone).
    fn uncounted(state: AppState) -> InFlight {
        InFlight {
            state,
            counted: false,
        }
    }
}

impl std::ops::Deref for InFlight {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.state
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.counted {
            self.state.edge.in_flight.give_back();
        }
    }
}

/// The answer past `http.max_in_flight`: no route lookup, no body, no bus.
fn overloaded(state: &AppState) -> Response {
    let request_id = RequestId::fresh();
    let mut response = GatewayError::from(ErrorKind::Overloaded("requests in flight"))
        .with_request(request_id.as_str())
        .into_response();
    if let Ok(id) = HeaderValue::from_str(request_id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    state
        .runner
        .metrics()
        .record_http(&state.edge.unmatched, response.status().as_u16(), 0.0);
    response
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
            move |request| dispatch(InFlight::uncounted(state.clone()), request)
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
    match state.auth.authenticate(&snapshot, request.headers()).await {
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
            state.runner.metrics().record_client(None, "unauthorized");
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

/// Every configured route. Not an `async fn`: a future keeps the arguments of an async fn for
/// its whole life, and a request mostly waits for its replies, which needs none of the request's
/// head or body. So the request goes into [`admit`], boxed and freed once the requests are out,
/// and what waits is only this future, its gather and its route.
fn dispatch(
    state: InFlight,
    request: Request,
) -> impl Future<Output = Result<Response, Infallible>> + Send {
    let started = Instant::now();
    let request_id = RequestId::fresh();
    let admitting = Box::pin(admit(state.state.clone(), request, request_id));
    async move {
        let (label, result) = match admitting.await {
            Admitted::Done { label, result } => (label, result),
            Admitted::Waiting {
                route,
                pending,
                order_id,
            } => {
                let answer = state
                    .runner
                    .finish(&route, pending, request_id.as_str(), &order_id, started)
                    .await;
                let result = answer.map(|body| {
                    let json = HeaderValue::from_static("application/json");
                    ([(header::CONTENT_TYPE, json)], body).into_response()
                });
                (route.name.clone(), result)
            }
        };
        let mut response = match result {
            Ok(response) => response,
            Err(e) => e.with_request(request_id.as_str()).into_response(),
        };
        if let Ok(id) = HeaderValue::from_str(request_id.as_str()) {
            response.headers_mut().insert(REQUEST_ID_HEADER, id);
        }
        state.runner.metrics().record_http(
            &label,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        Ok(response)
    }
}

/// Where a request stands once [`admit`] is done with it.
enum Admitted {
    /// Answered or refused without waiting for replies, with its metrics label.
    Done {
        label: Name,
        result: Result<Response, GatewayError>,
    },
    /// Published; the answer waits for the replies.
    Waiting {
        route: Arc<Route>,
        pending: Pending,
        order_id: String,
    },
}

/// Everything up to the wait: the route lookup, the body, validation, an asynchronous submit,
/// and publishing the requests of a synchronous one.
async fn admit(state: AppState, request: Request, request_id: RequestId) -> Admitted {
    let snapshot = state.runner.config().load_full();
    let (parts, body) = request.into_parts();
    // Who asks comes first: a request without valid credentials learns nothing, not even
    // which paths exist, and its body is never read.
    let caller = match state.auth.authenticate(&snapshot, &parts.headers).await {
        Ok(caller) => caller,
        Err(e) => {
            state.runner.metrics().record_client(None, "unauthorized");
            return Admitted::Done {
                label: state.edge.unmatched.clone(),
                result: Err(e),
            };
        }
    };
    let (route, path_order_id) = match snapshot.lookup(&parts.method, parts.uri.path()) {
        Lookup::Found {
            route,
            path_order_id,
        } => (route, path_order_id),
        Lookup::MethodNotAllowed(allow) => {
            let refused = ErrorKind::MethodNotAllowed {
                method: parts.method.to_string(),
                allow: allow.join(", "),
            };
            return Admitted::Done {
                label: state.edge.unmatched.clone(),
                result: Err(refused.into()),
            };
        }
        Lookup::NotFound => {
            return Admitted::Done {
                label: state.edge.unmatched.clone(),
                result: Err(ErrorKind::NotFound(parts.uri.path().to_owned()).into()),
            };
        }
    };
    if let Err(e) = admit_client(&state, &caller, route) {
        return Admitted::Done {
            label: route.name.clone(),
            result: Err(e),
        };
    }
    let request = Incoming {
        parts: &parts,
        body,
        request_id: request_id.as_str(),
        caller: &caller,
    };
    match serve(&state, route, path_order_id, request).await {
        Ok(Served::Answered(response)) => Admitted::Done {
            label: route.name.clone(),
            result: Ok(response),
        },
        Ok(Served::Waiting { pending, order_id }) => Admitted::Waiting {
            route: route.clone(),
            pending,
            order_id,
        },
        Err(e) => {
            if matches!(e.kind, ErrorKind::TooManyPending) {
                let client = caller.get().map(|c| &c.name);
                state
                    .runner
                    .metrics()
                    .record_client(client, "too-many-pending");
            }
            Admitted::Done {
                label: route.name.clone(),
                result: Err(e),
            }
        }
    }
}

/// Holds a client to its routes and its rate, and counts its request: 403
/// `route-not-allowed`, 429 `rate-limited`. The anonymous caller (`auth.mode = "none"`) has
/// neither.
fn admit_client(state: &AppState, caller: &Caller, route: &Route) -> Result<(), GatewayError> {
    let Some(client) = caller.get() else {
        return Ok(());
    };
    let metrics = state.runner.metrics();
    if !client.may_use(&route.name.0) {
        metrics.record_client(Some(&client.name), "route-not-allowed");
        return Err(ErrorKind::RouteNotAllowed(route.name.0.to_string()).into());
    }
    if let Some(limiter) = &client.limiter {
        if let Err(retry_after) = limiter.check() {
            metrics.record_client(Some(&client.name), "rate-limited");
            return Err(ErrorKind::RateLimited {
                per_second: limiter.rate.per_second,
                burst: limiter.rate.burst(),
                retry_after,
            }
            .into());
        }
    }
    metrics.record_client(Some(&client.name), "admitted");
    Ok(())
}

/// A request that matched a route.
struct Incoming<'a> {
    parts: &'a Parts,
    body: Body,
    request_id: &'a str,
    caller: &'a Caller,
}

/// What [`serve`] made of a request.
enum Served {
    /// The answer (an asynchronous submit).
    Answered(Response),
    /// The requests of a synchronous gather are out.
    Waiting { pending: Pending, order_id: String },
}

async fn serve(
    state: &AppState,
    route: &Arc<Route>,
    path_order_id: Option<&str>,
    request: Incoming<'_>,
) -> Result<Served, GatewayError> {
    let Incoming {
        parts,
        body,
        request_id,
        caller,
    } = request;
    let (fields, raw) = if parts.method == Method::POST {
        let bytes = read_body(parts, body, state.edge.body_limit, state.edge.body_timeout).await?;
        (body_fields(&bytes, path_order_id.is_none())?, bytes)
    } else {
        (BodyFields::default(), Bytes::new())
    };
    let order_id = match path_order_id {
        Some(raw) => busgate_shared::validate::percent_decode(raw)
            .ok_or_else(|| invalid_order_id(&state.edge.order_id))?,
        None => fields.order_id.ok_or(ErrorKind::MissingOrderId)?,
    };
    if !state.edge.order_id.accepts(&order_id) {
        return Err(invalid_order_id(&state.edge.order_id));
    }
    let incoming = parts.headers.get(TRACEPARENT).and_then(|v| v.to_str().ok());
    let traceparent = traceparent(incoming, request_id, state.edge.trace_sample_ratio);
    let prefer = Prefer::parse(&parts.headers);
    if prefer.respond_async || fields.callback_url.is_some() {
        let submit = Submit {
            route,
            parts,
            body: &raw,
            order_id,
            callback_url: fields.callback_url,
            prefer,
            request_id,
            traceparent,
            caller,
        };
        // Boxed: its JetStream writes would otherwise make every synchronous request's
        // admission several KiB larger.
        return Box::pin(crate::jobs::http::submit(&state.requests, submit))
            .await
            .map(Served::Answered);
    }
    // A synchronous request is refused at once while a connection is down. An asynchronous
    // submit is not: its JetStream writes wait out a reconnect (within the submit's patience),
    // so that a moment without a server costs a slower 202, not a refusal.
    if !state.nats_connected() {
        return Err(
            GatewayError::from(ErrorKind::NotReady("not connected to nats")).with_order(&order_id),
        );
    }
    let asker = Asker {
        request_id,
        order_id: &order_id,
        client: caller.name(),
        traceparent: &traceparent,
        headers: &parts.headers,
    };
    let pending = state.runner.start(route, &asker);
    Ok(Served::Waiting { pending, order_id })
}

fn invalid_order_id(rule: &OrderIdRule) -> GatewayError {
    ErrorKind::InvalidOrderId {
        pattern: rule.as_str().to_owned(),
    }
    .into()
}

#[cfg(test)]
mod tests {
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

    /// A state whose NATS client is not connected (nothing listens on port 1), with one route,
    /// `order` on `GET /api/orders/{order_id}`.
    async fn unconnected_state() -> AppState {
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

    /// What a request in flight holds besides its connection is mostly this future, boxed whole
    /// by [`Public`] for every request. Everything before the wait (the request's head and
    /// body, validation, the asynchronous branch's JetStream futures) is in the
    /// boxed admission, freed once the requests are out. Before that split, a waiting request
    /// held a 1,448-byte future and axum's handler wrapper kept the request's head beside it.
    #[tokio::test]
    async fn a_request_in_flight_is_a_small_future() {
        let state = unconnected_state().await;
        let request = axum::http::Request::get("/api/orders/1")
            .body(Body::empty())
            .expect("request");
        let admitting = std::mem::size_of_val(&admit(
            state.clone(),
            Request::default(),
            RequestId::fresh(),
        ));
        let future = dispatch(InFlight::uncounted(state), request);
        let size = std::mem::size_of_val(&future);
        println!("dispatch future: {size} bytes; admission, boxed until the requests are out: {admitting} bytes");
        assert!(size <= 1024, "dispatch future is {size} bytes");
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
