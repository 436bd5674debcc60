//! The public HTTP edge: health, metrics, and every configured route.
//!
//! Configured routes change at run time, so they are not axum routes: a fallback handler looks
//! the method and path up in the current [`Snapshot`]. Bad input is refused before anything is
//! published: unknown path (404), wrong method (405), a body over the limit (413), a body that
//! is not JSON (400/415), a missing or invalid `order_id` (400).

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_nats::Client;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, request::Parts, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use uuid::Uuid;

use busgate_shared::header::TRACEPARENT;
use busgate_shared::validate::OrderIdRule;

use crate::callback::{Allowlist, Guard, Signer};
use crate::collector::Collector;
use crate::error::{ErrorKind, GatewayError};
use crate::gather::{self, Asker};
use crate::merge;
use crate::metrics::{Metrics, Name};
use crate::requests::{self, JobsCell, Prefer, Submit};
use crate::snapshot::{Lookup, Route, Snapshot};

/// `Busgate-Request-Id` as a ready header name: inserting a `&str` name that is not a standard
/// one allocates a copy of it on every response.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("busgate-request-id");

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
    /// The configuration in force; a request loads it once.
    pub config: Arc<ArcSwap<Snapshot>>,
    /// The NATS client.
    pub nats: Client,
    /// The reply collector.
    pub collector: Collector,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Edge rules from settings.
    pub edge: Arc<Edge>,
    /// Asynchronous requests, once JetStream is ready.
    pub jobs: JobsCell,
    /// The configuration store, once JetStream is ready.
    pub store: Arc<std::sync::OnceLock<crate::store::ConfigStore>>,
    /// What the configuration watcher reports.
    pub store_status: Arc<crate::store::StoreStatus>,
    /// This instance's id.
    pub instance: Arc<str>,
}

impl Shared {
    /// Whether both NATS connections are up: the client (JetStream, KV) and the request path's.
    pub fn nats_connected(&self) -> bool {
        busgate_shared::nats::is_connected(&self.nats) && self.collector.is_connected()
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
    /// Signs callbacks; `None` refuses them.
    pub signer: Option<Signer>,
    /// Checks callback URLs.
    pub guard: Guard,
    /// The share of the traces started here that are marked sampled.
    pub trace_sample_ratio: f64,
}

impl Edge {
    /// Edge rules with the given limit and `order_id` rule, and no callbacks.
    pub fn new(body_limit: usize, order_id: OrderIdRule) -> Self {
        Edge {
            body_limit,
            order_id,
            unmatched: Name(Arc::from("-")),
            signer: None,
            guard: Guard::new(Allowlist::default()),
            trace_sample_ratio: 0.0,
        }
    }
}

/// The public edge as a service: the built-in paths go to [`router`]; every other request goes
/// straight to the configured routes. (The router's fallback leads there too, but axum first gives
/// each request URL parameters, three allocations, and a clone of the boxed fallback service.)
#[derive(Clone)]
pub struct Public {
    builtins: Router,
    state: AppState,
}

impl Public {
    /// The edge over `state`.
    pub fn new(state: AppState) -> Self {
        Public {
            builtins: router(state.clone()),
            state,
        }
    }

    /// Whether [`router`] has a route for `path` (else only its fallback would answer).
    fn is_builtin(path: &str) -> bool {
        matches!(path, "/health/live" | "/health/ready" | "/metrics")
            || path.starts_with("/api/requests/")
    }
}

impl tower::Service<Request> for Public {
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if Public::is_builtin(request.uri().path()) {
            Box::pin(tower::Service::call(&mut self.builtins, request))
        } else {
            Box::pin(dispatch(self.state.clone(), request))
        }
    }
}

/// The public router: the built-in paths, and the configured routes as its fallback.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/requests/{request_id}", get(requests::poll))
        .route("/api/requests/{request_id}/events", get(requests::events))
        .fallback_service(tower::service_fn({
            let state = state.clone();
            move |request| dispatch(state.clone(), request)
        }))
        .method_not_allowed_fallback(builtin_method_not_allowed)
        .with_state(state)
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    let connected = state.nats_connected();
    let jobs = state.jobs.get().is_some();
    let config = state
        .store_status
        .loaded
        .load(std::sync::atomic::Ordering::Acquire);
    let routes = state.config.load().spec.routes.len();
    let ready = connected && jobs && config;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "nats": if connected { "connected" } else { "disconnected" },
        "jetstream": if jobs { "ready" } else { "not_ready" },
        "config": if config { "loaded" } else { "not_loaded" },
        "routes": routes,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
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
    state: AppState,
    request: Request,
) -> impl Future<Output = Result<Response, Infallible>> + Send {
    let started = Instant::now();
    let request_id = RequestId::fresh();
    let admitting = Box::pin(admit(state.clone(), request, request_id));
    async move {
        let (label, result) = match admitting.await {
            Admitted::Done { label, result } => (label, result),
            Admitted::Waiting {
                route,
                pending,
                order_id,
            } => {
                let answer = answer(
                    &state,
                    &route,
                    pending,
                    request_id.as_str(),
                    &order_id,
                    started,
                )
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
        state.metrics.record_http(
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
        pending: gather::Pending,
        order_id: String,
    },
}

/// Everything up to the wait: the route lookup, the body, validation, an asynchronous submit,
/// and publishing the requests of a synchronous one.
async fn admit(state: AppState, request: Request, request_id: RequestId) -> Admitted {
    let snapshot = state.config.load_full();
    let (parts, body) = request.into_parts();
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
    let request = Incoming {
        parts: &parts,
        body,
        request_id: request_id.as_str(),
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
        Err(e) => Admitted::Done {
            label: route.name.clone(),
            result: Err(e),
        },
    }
}

/// A request that matched a route.
struct Incoming<'a> {
    parts: &'a Parts,
    body: Body,
    request_id: &'a str,
}

/// What [`serve`] made of a request.
enum Served {
    /// The answer (an asynchronous submit).
    Answered(Response),
    /// The requests of a synchronous gather are out.
    Waiting {
        pending: gather::Pending,
        order_id: String,
    },
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
    } = request;
    let (fields, raw) = if parts.method == Method::POST {
        let bytes = read_body(parts, body, state.edge.body_limit).await?;
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
    if !state.nats_connected() {
        return Err(
            GatewayError::from(ErrorKind::NotReady("not connected to nats")).with_order(&order_id),
        );
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
        };
        // Boxed: its JetStream writes would otherwise make every synchronous request's
        // admission several KiB larger.
        return Box::pin(requests::submit(state, submit))
            .await
            .map(Served::Answered);
    }
    let asker = Asker {
        request_id,
        order_id: &order_id,
        client: "",
        traceparent: &traceparent,
        headers: &parts.headers,
    };
    let pending = gather::start(&state.collector, route, &asker);
    Ok(Served::Waiting { pending, order_id })
}

/// Runs a route's gather and renders the answer: the one code path of synchronous and
/// asynchronous requests.
pub async fn gather_answer(
    state: &AppState,
    route: &Route,
    asker: &Asker<'_>,
    started: Instant,
) -> Result<Vec<u8>, GatewayError> {
    let pending = gather::start(&state.collector, route, asker);
    answer(
        state,
        route,
        pending,
        asker.request_id,
        asker.order_id,
        started,
    )
    .await
}

/// Waits for a started gather's replies, counts them and renders the answer.
async fn answer(
    state: &AppState,
    route: &Route,
    mut pending: gather::Pending,
    request_id: &str,
    order_id: &str,
    started: Instant,
) -> Result<Vec<u8>, GatewayError> {
    pending.collect(route).await;
    let outcome = pending.finish();
    for (target, result) in route.targets.iter().zip(&outcome.results) {
        state
            .metrics
            .record_source(&target.service, result.status());
    }
    merge::answer(route, &outcome, request_id, order_id, started.elapsed())
}

/// A request id in its text form, kept inline: no allocation per request.
#[derive(Clone, Copy)]
pub struct RequestId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl RequestId {
    /// A fresh id (see [`new_request_id`]).
    pub fn fresh() -> Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        new_request_id().hyphenated().encode_lower(&mut text);
        RequestId(text)
    }

    /// The id, e.g. `019a…-7…`.
    pub fn as_str(&self) -> &str {
        // Always ASCII: written by `encode_lower`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A UUIDv7 request id: the unix millisecond clock, then 74 bits from the thread-local CSPRNG
/// (an id is a capability: whoever holds it can read the result). `Uuid::now_v7` asks the
/// kernel for its random bits, a system call on every request.
pub fn new_request_id() -> Uuid {
    let mut random = [0u8; 10];
    rand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(busgate_shared::header::now_unix_ms(), &random)
        .into_uuid()
}

fn invalid_order_id(rule: &OrderIdRule) -> GatewayError {
    ErrorKind::InvalidOrderId {
        pattern: rule.as_str().to_owned(),
    }
    .into()
}

/// How much of an oversized body is read and thrown away so that the client, still sending,
/// receives the 413 instead of a broken pipe. Past this the connection is simply closed.
const DRAIN_AT_MOST: usize = 1024 * 1024;
/// How long that draining may take.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads a request body up to `limit` bytes, refusing declared non-JSON content.
async fn read_body(parts: &Parts, mut body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        let essence = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ErrorKind::UnsupportedMediaType(text.to_owned()).into());
        }
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        drain(body).await;
        return Err(ErrorKind::PayloadTooLarge { limit }.into());
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(256, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ErrorKind::BodyRead(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(ErrorKind::PayloadTooLarge { limit }.into());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards what is left of a body, bounded by [`DRAIN_AT_MOST`] and [`DRAIN_WITHIN`].
async fn drain(body: Body) {
    let discard = async {
        let mut body = body;
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_AT_MOST {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_WITHIN, discard).await;
}

#[derive(Deserialize)]
struct OrderBody<'a> {
    #[serde(borrow, default)]
    order_id: Option<&'a RawValue>,
    #[serde(default)]
    callback_url: Option<String>,
}

/// What a POST body may say.
#[derive(Debug, Default, PartialEq, Eq)]
struct BodyFields {
    order_id: Option<String>,
    callback_url: Option<String>,
}

/// Reads a JSON body's fields: the `order_id` (a string, or a non-negative integer taken as
/// its digits) and the `callback_url`. `required` says whether the body must carry an
/// `order_id` (it need not when the path does).
fn body_fields(bytes: &[u8], required: bool) -> Result<BodyFields, GatewayError> {
    let missing = |callback_url| {
        if required {
            Err(GatewayError::from(ErrorKind::MissingOrderId))
        } else {
            Ok(BodyFields {
                order_id: None,
                callback_url,
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return missing(None);
    }
    let classify = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => ErrorKind::InvalidBody(e.to_string()),
        _ => ErrorKind::MalformedJson(e.to_string()),
    };
    // serde would read a struct from an array too; the body must be an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(classify)?;
        return Err(ErrorKind::InvalidBody("the body must be a JSON object".into()).into());
    }
    let parsed: OrderBody<'_> = serde_json::from_slice(bytes).map_err(classify)?;
    let callback_url = parsed.callback_url;
    let Some(raw) = parsed.order_id.filter(|raw| raw.get() != "null") else {
        return missing(callback_url);
    };
    let order_id = if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw.get()) {
        text.into_owned()
    } else if let Ok(number) = serde_json::from_str::<u64>(raw.get()) {
        number.to_string()
    } else {
        return Err(ErrorKind::InvalidBody("order_id must be a string".into()).into());
    };
    Ok(BodyFields {
        order_id: Some(order_id),
        callback_url,
    })
}

/// The W3C traceparent to send: the caller's trace (`incoming`, when valid) with our own span
/// and the caller's flags, or a new trace whose id is the request id (a UUIDv7 is 128 bits,
/// time-ordered and random enough for that), marked sampled with probability `sample_ratio`.
///
/// Unsampled is also the cheap case on the bus: nats-server lifts every header of a message
/// into a map of its own when a `traceparent` says sampled (for its message tracing), which
/// cost it about 7 µs per merged request here (`tests/perf/floor.sh`, nats-server 2.15).
pub fn traceparent(incoming: Option<&str>, request_id: &str, sample_ratio: f64) -> String {
    let mut simple = String::with_capacity(32);
    simple.extend(request_id.chars().filter(|c| *c != '-'));
    let span = simple.get(16..32).unwrap_or("");
    let (trace, flags) = incoming.and_then(parse_traceparent).unwrap_or_else(|| {
        let sampled = sample_ratio > 0.0 && rand::random::<f64>() < sample_ratio;
        (simple.as_str(), if sampled { "01" } else { "00" })
    });
    let mut out = String::with_capacity(55);
    for piece in ["00-", trace, "-", span, "-", flags] {
        out.push_str(piece);
    }
    out
}

/// `(trace_id, flags)` of a valid version-00 traceparent.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_come_from_strings_and_integers() {
        let id = |body: &[u8], required| body_fields(body, required).expect("ok").order_id;
        assert_eq!(id(br#"{"order_id":"A1"}"#, true), Some("A1".into()));
        assert_eq!(
            id(br#"{"order_id":12345,"x":[1]}"#, true),
            Some("12345".into())
        );
        assert_eq!(id(br#"{"order_id":"a\u0041"}"#, true), Some("aA".into()));
        assert_eq!(id(b"  ", false), None);
        assert_eq!(id(b"{}", false), None);
        let fields = body_fields(
            br#"{"order_id":"A1","callback_url":"https://x.test/h"}"#,
            true,
        )
        .expect("ok");
        assert_eq!(fields.callback_url.as_deref(), Some("https://x.test/h"));
        assert!(body_fields(br#"{"order_id":"A1","callback_url":5}"#, true).is_err());
    }

    #[test]
    fn bad_bodies_are_classified() {
        let kind = |body: &[u8]| body_fields(body, true).expect_err("refused").kind;
        assert!(matches!(
            kind(b"{\"order_id\":"),
            ErrorKind::MalformedJson(_)
        ));
        assert!(matches!(kind(b"not json"), ErrorKind::MalformedJson(_)));
        assert!(matches!(kind(b"[1,2]"), ErrorKind::InvalidBody(_)));
        assert!(matches!(kind(b"\"A1\""), ErrorKind::InvalidBody(_)));
        assert!(matches!(kind(b"[1,"), ErrorKind::MalformedJson(_)));
        assert!(matches!(
            kind(br#"{"order_id":{"a":1}}"#),
            ErrorKind::InvalidBody(_)
        ));
        assert!(matches!(
            kind(br#"{"order_id":-1}"#),
            ErrorKind::InvalidBody(_)
        ));
        assert!(matches!(
            kind(br#"{"order_id":null}"#),
            ErrorKind::MissingOrderId
        ));
        assert!(matches!(kind(b"{}"), ErrorKind::MissingOrderId));
        assert!(matches!(kind(b""), ErrorKind::MissingOrderId));
    }

    /// A state whose NATS client is not connected (nothing listens on port 1), with one route,
    /// `order` on `GET /api/orders/{order_id}`.
    async fn unconnected_state() -> AppState {
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
            config: Arc::new(ArcSwap::from_pointee(
                Snapshot::compile(spec).expect("compile"),
            )),
            nats,
            collector,
            metrics,
            edge: Arc::new(Edge::new(
                1024,
                OrderIdRule::new("^[A-Za-z0-9_-]{1,64}$").expect("rule"),
            )),
            jobs: Arc::new(std::sync::OnceLock::new()),
            store: Arc::new(std::sync::OnceLock::new()),
            store_status: Arc::new(crate::store::StoreStatus::default()),
            instance: Arc::from("size"),
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
        let future = dispatch(state, request);
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
            let seen = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(response.status().as_u16(), status, "{method} {path}");
            assert!(seen.starts_with(content_type), "{method} {path}: {seen}");
        }
    }

    #[test]
    fn request_ids_are_fresh_version_7_uuids_of_now() {
        let before = busgate_shared::header::now_unix_ms();
        let (a, b) = (new_request_id(), new_request_id());
        let after = busgate_shared::header::now_unix_ms();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().expect("v7 has a time").to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                (before..=after).contains(&ms),
                "{ms} not in {before}..={after}"
            );
        }
    }

    #[test]
    fn traceparents_are_propagated_or_made() {
        let id = "0190f5a2-7b3c-7def-8123-456789abcdef";
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        let incoming = |parts: &Parts| {
            parts
                .headers
                .get(TRACEPARENT)?
                .to_str()
                .ok()
                .map(str::to_owned)
        };
        assert_eq!(
            traceparent(incoming(&parts).as_deref(), id, 0.0),
            "00-0190f5a27b3c7def8123456789abcdef-8123456789abcdef-00"
        );
        assert!(traceparent(None, id, 1.0).ends_with("-01"));
        let sampled = (0..1000)
            .filter(|_| traceparent(None, id, 0.25).ends_with("-01"))
            .count();
        assert!((150..350).contains(&sampled), "{sampled} of 1000 at 0.25");
        parts.headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert_eq!(
            traceparent(incoming(&parts).as_deref(), id, 1.0),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-8123456789abcdef-00",
            "the caller's flags are kept"
        );
        parts.headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-0000-00f067aa0ba902b7-01"),
        );
        assert!(traceparent(incoming(&parts).as_deref(), id, 0.0).starts_with("00-0190f5a2"));
    }
}
