//! The admin API (`/admin/v1/…`) and the web UI, on the admin listener.
//!
//! Services and routes: list, get, create, replace, delete, history, rollback; `ETag` is the
//! KV revision and every write needs `If-Match` (412 on a lost update, 428 without it). A write
//! is validated against the whole configuration it would produce before anything is stored;
//! errors name the field. Export and import of the whole configuration, live instances per
//! service (NATS service API), a try-it endpoint, and the OpenAPI document of both listeners.
//! A bearer token guards everything but the UI's static files and the OpenAPI document.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use busgate_shared::config::{ConfigSpec, RouteSpec, ServiceSpec};
use busgate_shared::validate;

use crate::api::{self, AppState};
use crate::error::{ErrorKind, GatewayError};
use crate::gather::Asker;
use crate::snapshot::Snapshot;
use crate::store::{ConfigStore, Kind, StoreError};

/// The OpenAPI document of the public and admin APIs.
pub const OPENAPI: &str = include_str!("../openapi.json");
const UI_HTML: &str = include_str!("../ui/index.html");
const UI_CSS: &str = include_str!("../ui/app.css");
const UI_JS: &str = include_str!("../ui/app.js");

/// State of the admin router.
#[derive(Clone)]
pub struct AdminState {
    app: AppState,
    /// SHA-256 of the token: compared in constant time, never the token itself.
    token_hash: Arc<[u8; 32]>,
}

/// The admin router, guarded by `token`.
pub fn router(app: AppState, token: &str) -> Router {
    let state = AdminState {
        app,
        token_hash: Arc::new(Sha256::digest(token.as_bytes()).into()),
    };
    let guarded = Router::new()
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/config", get(export).put(import))
        .route("/admin/v1/instances", get(all_instances))
        .route("/admin/v1/try", axum::routing::post(try_route))
        .route("/admin/v1/{kind}", get(list).post(create))
        .route(
            "/admin/v1/{kind}/{name}",
            get(read).put(replace).delete(remove),
        )
        .route("/admin/v1/{kind}/{name}/history", get(history))
        .route(
            "/admin/v1/{kind}/{name}/rollback",
            axum::routing::post(rollback),
        )
        .route("/admin/v1/{kind}/{name}/instances", get(instances))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/", get(|| async { Html(UI_HTML) }))
        .route(
            "/ui/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], UI_CSS) }),
        )
        .route(
            "/ui/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    UI_JS,
                )
            }),
        )
        .route(
            "/admin/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(guarded)
        .fallback(|uri: axum::http::Uri| async move {
            GatewayError::from(ErrorKind::NotFound(uri.path().to_owned()))
        })
        .with_state(state)
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| -> [u8; 32] { Sha256::digest(t.trim().as_bytes()).into() });
    let ok = presented.is_some_and(|hash| {
        // Constant time over the (fixed-length) digests.
        hash.iter()
            .zip(state.token_hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    });
    if ok {
        next.run(request).await
    } else {
        GatewayError::from(ErrorKind::Unauthorized).into_response()
    }
}

fn kind_of(kind: &str) -> Result<Kind, GatewayError> {
    match kind {
        "services" => Ok(Kind::Service),
        "routes" => Ok(Kind::Route),
        other => Err(ErrorKind::NotFound(format!("/admin/v1/{other}")).into()),
    }
}

fn store_of(state: &AdminState) -> Result<ConfigStore, GatewayError> {
    state
        .app
        .store
        .get()
        .cloned()
        .ok_or_else(|| ErrorKind::NotReady("the configuration store is not ready yet").into())
}

/// How long a write waits for this instance to run what it wrote.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Waits until this instance's configuration includes the store's latest change, so that a
/// list, a read or a try-it right after a write sees it (the other instances follow through
/// their own watchers). The write is durable either way: past [`APPLY_WAIT`] it answers anyway.
async fn settle(store: &ConfigStore, state: &AdminState) {
    match store.last_sequence().await {
        Ok(latest) => {
            if !state.app.store_status.wait_for(latest, APPLY_WAIT).await {
                tracing::warn!(
                    revision = latest,
                    "the configuration watcher has not caught up with a write yet"
                );
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot read the latest configuration revision"),
    }
}

fn store_error(e: StoreError) -> GatewayError {
    match e {
        StoreError::Exists(key) => ErrorKind::Conflict(format!("{key} exists already")).into(),
        StoreError::Stale { .. } => {
            ErrorKind::Conflict("changed concurrently, read it again".into()).into()
        }
        other => {
            tracing::warn!(error = %other, "configuration store failed");
            ErrorKind::Unavailable("the configuration store is not reachable".into()).into()
        }
    }
}

fn invalid(e: busgate_shared::Error) -> GatewayError {
    match e {
        busgate_shared::Error::Invalid { field, reason } => {
            ErrorKind::InvalidConfig { field, reason }.into()
        }
        other => ErrorKind::InvalidConfig {
            field: String::new(),
            reason: other.to_string(),
        }
        .into(),
    }
}

/// Parses a document of `kind` strictly, naming the field on error.
fn parse_spec(kind: Kind, name: &str, value: &Value) -> Result<Value, GatewayError> {
    let result = match kind {
        Kind::Service => {
            serde_json::from_value::<ServiceSpec>(value.clone()).and_then(serde_json::to_value)
        }
        Kind::Route => {
            serde_json::from_value::<RouteSpec>(value.clone()).and_then(serde_json::to_value)
        }
    };
    result.map_err(|e| {
        ErrorKind::InvalidConfig {
            field: format!("{}.{name}", kind.plural()),
            reason: e.to_string(),
        }
        .into()
    })
}

/// The configuration in force with one object changed (`None`: deleted), validated whole.
fn candidate(
    state: &AdminState,
    kind: Kind,
    name: &str,
    value: Option<&Value>,
) -> Result<(), GatewayError> {
    let mut spec = state.app.config.load().spec.clone();
    let at = |e: serde_json::Error| ErrorKind::InvalidConfig {
        field: format!("{}.{name}", kind.plural()),
        reason: e.to_string(),
    };
    match (kind, value) {
        (Kind::Service, Some(v)) => {
            spec.services.insert(
                name.to_owned(),
                serde_json::from_value(v.clone()).map_err(at)?,
            );
        }
        (Kind::Route, Some(v)) => {
            spec.routes.insert(
                name.to_owned(),
                serde_json::from_value(v.clone()).map_err(at)?,
            );
        }
        (Kind::Service, None) => {
            let users: Vec<&String> = spec
                .routes
                .iter()
                .filter(|(_, r)| r.targets.iter().any(|t| t.service == name))
                .map(|(n, _)| n)
                .collect();
            if !users.is_empty() {
                return Err(ErrorKind::Conflict(format!(
                    "service {name} is a target of routes {users:?}"
                ))
                .into());
            }
            spec.services.remove(name);
        }
        (Kind::Route, None) => {
            spec.routes.remove(name);
        }
    }
    Snapshot::compile(spec).map(drop).map_err(invalid)
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn if_match(headers: &HeaderMap) -> Result<u64, GatewayError> {
    let value = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .ok_or(ErrorKind::PreconditionRequired)?;
    value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map_err(|_| ErrorKind::PreconditionRequired.into())
}

fn object(name: &str, revision: u64, spec: Value) -> Response {
    let mut response =
        Json(json!({"name": name, "revision": revision, "spec": spec})).into_response();
    response.headers_mut().insert(header::ETAG, etag(revision));
    response
}

async fn list(
    State(state): State<AdminState>,
    Path(kind): Path<String>,
) -> Result<Response, GatewayError> {
    let kind = kind_of(&kind)?;
    let store = store_of(&state)?;
    let spec = state.app.config.load().spec.clone();
    let names: Vec<String> = match kind {
        Kind::Service => spec.services.keys().cloned().collect(),
        Kind::Route => spec.routes.keys().cloned().collect(),
    };
    let mut items = Vec::new();
    for name in names {
        if let Some((revision, value)) = store.get(kind, &name).await.map_err(store_error)? {
            items.push(json!({"name": name, "revision": revision, "spec": value}));
        }
    }
    Ok(Json(json!({"items": items})).into_response())
}

async fn read(
    State(state): State<AdminState>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Response, GatewayError> {
    let kind = kind_of(&kind)?;
    let (revision, value) = store_of(&state)?
        .get(kind, &name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ErrorKind::ObjectNotFound(kind.key(&name)))?;
    Ok(object(&name, revision, value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    spec: Value,
}

async fn create(
    State(state): State<AdminState>,
    Path(kind): Path<String>,
    body: Result<Json<Create>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, GatewayError> {
    let kind = kind_of(&kind)?;
    let Json(body) = body.map_err(|e| ErrorKind::InvalidBody(e.body_text()))?;
    validate::name("name", &body.name).map_err(invalid)?;
    let spec = parse_spec(kind, &body.name, &body.spec)?;
    candidate(&state, kind, &body.name, Some(&spec))?;
    let store = store_of(&state)?;
    let revision = store
        .create(kind, &body.name, &spec)
        .await
        .map_err(store_error)?;
    settle(&store, &state).await;
    let mut response = object(&body.name, revision, spec);
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) =
        HeaderValue::from_str(&format!("/admin/v1/{}/{}", kind.plural(), body.name))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn replace(
    State(state): State<AdminState>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, GatewayError> {
    let kind = kind_of(&kind)?;
    let expected = if_match(&headers)?;
    let Json(body) = body.map_err(|e| ErrorKind::InvalidBody(e.body_text()))?;
    let spec = parse_spec(kind, &name, &body)?;
    write(&state, kind, &name, spec, expected).await
}

/// Replaces an object at `expected`, after validating the configuration it makes.
async fn write(
    state: &AdminState,
    kind: Kind,
    name: &str,
    spec: Value,
    expected: u64,
) -> Result<Response, GatewayError> {
    let store = store_of(state)?;
    let current = store
        .get(kind, name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ErrorKind::ObjectNotFound(kind.key(name)))?;
    if current.0 != expected {
        return Err(ErrorKind::PreconditionFailed {
            expected,
            current: current.0,
        }
        .into());
    }
    candidate(state, kind, name, Some(&spec))?;
    match store.update(kind, name, &spec, expected).await {
        Ok(revision) => {
            settle(&store, state).await;
            Ok(object(name, revision, spec))
        }
        Err(StoreError::Stale { expected, .. }) => {
            let current = store
                .get(kind, name)
                .await
                .ok()
                .flatten()
                .map_or(0, |(r, _)| r);
            Err(ErrorKind::PreconditionFailed { expected, current }.into())
        }
        Err(e) => Err(store_error(e)),
    }
}

async fn remove(
    State(state): State<AdminState>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let kind = kind_of(&kind)?;
    let expected = if_match(&headers)?;
    let store = store_of(&state)?;
    let (current, _) = store
        .get(kind, &name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ErrorKind::ObjectNotFound(kind.key(&name)))?;
    if current != expected {
        return Err(ErrorKind::PreconditionFailed { expected, current }.into());
    }
    candidate(&state, kind, &name, None)?;
    match store.delete(kind, &name, Some(expected)).await {
        Ok(()) => {
            settle(&store, &state).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(StoreError::Stale { expected, .. }) => Err(ErrorKind::PreconditionFailed {
            expected,
            current: 0,
        }
        .into()),
        Err(e) => Err(store_error(e)),
    }
}

async fn history(
    State(state): State<AdminState>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Response, GatewayError> {
    let kind = kind_of(&kind)?;
    let items = store_of(&state)?
        .history(kind, &name)
        .await
        .map_err(store_error)?;
    if items.is_empty() {
        return Err(ErrorKind::ObjectNotFound(kind.key(&name)).into());
    }
    Ok(Json(json!({"items": items})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    revision: u64,
}

async fn rollback(
    State(state): State<AdminState>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<Rollback>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, GatewayError> {
    let kind = kind_of(&kind)?;
    let expected = if_match(&headers)?;
    let Json(body) = body.map_err(|e| ErrorKind::InvalidBody(e.body_text()))?;
    let spec = store_of(&state)?
        .at_revision(kind, &name, body.revision)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            ErrorKind::ObjectNotFound(format!("{} at revision {}", kind.key(&name), body.revision))
        })?;
    write(&state, kind, &name, spec, expected).await
}

async fn export(State(state): State<AdminState>) -> Json<ConfigSpec> {
    Json(state.app.config.load().spec.clone())
}

/// Replaces the whole configuration (validated whole first); objects not in it are deleted.
async fn import(
    State(state): State<AdminState>,
    body: Result<Json<ConfigSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, GatewayError> {
    let Json(spec) = body.map_err(|e| ErrorKind::InvalidBody(e.body_text()))?;
    Snapshot::compile(spec.clone()).map_err(invalid)?;
    let store = store_of(&state)?;
    let old = state.app.config.load().spec.clone();
    // Services first, routes after: intermediate states stay valid where possible; a
    // watcher refuses any that is not and keeps the last good configuration.
    for (name, service) in &spec.services {
        store
            .put(Kind::Service, name, &json!(service))
            .await
            .map_err(store_error)?;
    }
    for (name, route) in &spec.routes {
        store
            .put(Kind::Route, name, &json!(route))
            .await
            .map_err(store_error)?;
    }
    for name in old.routes.keys().filter(|n| !spec.routes.contains_key(*n)) {
        store
            .delete(Kind::Route, name, None)
            .await
            .map_err(store_error)?;
    }
    for name in old
        .services
        .keys()
        .filter(|n| !spec.services.contains_key(*n))
    {
        store
            .delete(Kind::Service, name, None)
            .await
            .map_err(store_error)?;
    }
    settle(&store, &state).await;
    Ok(Json(spec).into_response())
}

async fn status(State(state): State<AdminState>) -> Json<Value> {
    let app = &state.app;
    let snapshot = app.config.load();
    Json(json!({
        "instance": &*app.instance,
        "version": busgate_shared::VERSION,
        "nats": if app.nats_connected() { "connected" } else { "disconnected" },
        "config": {
            "loaded": app.store_status.loaded.load(Ordering::Acquire),
            "revision": app.store_status.revision.load(Ordering::Relaxed),
            "last_error": app.store_status.last_error.lock().ok().and_then(|e| e.clone()),
            "services": snapshot.spec.services.len(),
            "routes": snapshot.spec.routes.len(),
        },
        "gathers_in_flight": app.collector.open_gathers(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Try {
    route: String,
    order_id: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Runs a route for an order id exactly as a request would, and shows the answer.
async fn try_route(
    State(state): State<AdminState>,
    body: Result<Json<Try>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, GatewayError> {
    let Json(body) = body.map_err(|e| ErrorKind::InvalidBody(e.body_text()))?;
    let app = &state.app;
    if !app.edge.order_id.accepts(&body.order_id) {
        return Err(ErrorKind::InvalidOrderId {
            pattern: app.edge.order_id.as_str().to_owned(),
        }
        .into());
    }
    let snapshot = app.config.load_full();
    let route = snapshot
        .route(&body.route)
        .ok_or_else(|| ErrorKind::ObjectNotFound(Kind::Route.key(&body.route)))?;
    let request_id = api::new_request_id().to_string();
    let headers: Vec<(String, String)> = body
        .headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let traceparent = api::traceparent(None, &request_id, app.edge.trace_sample_ratio);
    let asker = Asker {
        request_id: &request_id,
        order_id: &body.order_id,
        client: "",
        traceparent: &traceparent,
        headers: &headers,
    };
    let started = tokio::time::Instant::now();
    let (status, answer) = match api::gather_answer(app, route, &asker, started).await {
        Ok(body) => (200, body),
        Err(e) => {
            let (status, body) = e.problem();
            (status.as_u16(), body.to_vec())
        }
    };
    // The answer exactly as a client gets it (sources in route order), not re-parsed.
    let body = String::from_utf8(answer)
        .ok()
        .and_then(|s| serde_json::value::RawValue::from_string(s).ok())
        .ok_or(ErrorKind::Internal)?;
    #[derive(serde::Serialize)]
    struct Tried {
        status: u16,
        body: Box<serde_json::value::RawValue>,
    }
    Ok(Json(Tried { status, body }).into_response())
}

async fn instances(
    State(state): State<AdminState>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Response, GatewayError> {
    if kind_of(&kind)? != Kind::Service {
        return Err(ErrorKind::NotFound(format!("/admin/v1/{kind}/{name}/instances")).into());
    }
    validate::name("name", &name).map_err(invalid)?;
    let items = discover(&state.app.nats, Some(&name)).await;
    Ok(Json(json!({"items": items})).into_response())
}

async fn all_instances(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({"items": discover(&state.app.nats, None).await}))
}

/// Asks the NATS service API who serves Busgate services: `$SRV.INFO` and `$SRV.STATS`,
/// collecting every answer for a short while.
async fn discover(nats: &async_nats::Client, service: Option<&str>) -> Vec<Value> {
    let suffix = service.map(|s| format!(".{s}")).unwrap_or_default();
    let (infos, stats) = tokio::join!(
        collect(nats, format!("$SRV.INFO{suffix}")),
        collect(nats, format!("$SRV.STATS{suffix}"))
    );
    let mut items = Vec::new();
    for info in infos {
        let Some(id) = info["id"].as_str() else {
            continue;
        };
        let subject = info["endpoints"][0]["subject"].as_str().unwrap_or_default();
        if !subject.starts_with(busgate_shared::subject::SERVICE_PREFIX) {
            continue;
        }
        let stat = stats
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap_or(Value::Null);
        let endpoint = &stat["endpoints"][0];
        let requests = endpoint["num_requests"].as_u64().unwrap_or(0);
        let average_ns = endpoint["average_processing_time"].as_u64().unwrap_or(0);
        items.push(json!({
            "service": info["name"],
            "id": id,
            "version": info["version"],
            "metadata": info["metadata"],
            "subject": subject,
            "started": stat["started"],
            "requests": requests,
            "errors": endpoint["num_errors"].as_u64().unwrap_or(0),
            "average_ms": average_ns as f64 / 1e6,
        }));
    }
    items.sort_by(|a, b| {
        (a["service"].as_str(), a["id"].as_str()).cmp(&(b["service"].as_str(), b["id"].as_str()))
    });
    items
}

async fn collect(nats: &async_nats::Client, subject: String) -> Vec<Value> {
    let inbox = nats.new_inbox();
    let Ok(mut replies) = nats.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    if nats
        .publish_with_reply(subject, inbox, "".into())
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, replies.next()).await {
        if let Ok(value) = serde_json::from_slice::<Value>(&message.payload) {
            out.push(value);
        }
    }
    out
}
