//! Services, routes and clients as objects: list, get, create, replace, delete, history, rollback,
//! export and import. `ETag` is the KV revision and every write needs `If-Match` (see
//! [`precondition`](crate::admin::precondition): 412 when it does not match, 428 without it).
//! A write is validated against the whole configuration it would produce before anything is
//! stored; errors name the field. A name outside the name pattern in a path is 404: it never
//! reaches the store. Every write attaches its [`Change`] to its answer for the audit trail.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use busgate_shared::config::{
    ClientSpec, ConfigSpec, KeySpec, RouteSpec, SecretSource, ServiceSpec, MAX_KEYS,
};
use busgate_shared::validate;

use crate::admin::audit::Change;
use crate::admin::precondition::{etag, IfMatch};
use crate::admin::state::AdminState;
use crate::config::snapshot::Snapshot;
use crate::config::store::{ConfigStore, Kind};
use crate::error::{ErrorKind, GatewayError};

fn kind_of(kind: &str) -> Option<Kind> {
    match kind {
        "services" => Some(Kind::Service),
        "routes" => Some(Kind::Route),
        "clients" => Some(Kind::Client),
        _ => None,
    }
}

/// `/admin/v1/{kind}`: 404 for anything but `services`, `routes` and `clients`.
pub struct KindPath(pub Kind);

impl<S: Send + Sync> FromRequestParts<S> for KindPath {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, GatewayError> {
        let path = parts.uri.path().to_owned();
        let Path(kind) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found(path.clone()))?;
        kind_of(&kind).map(KindPath).ok_or_else(|| not_found(path))
    }
}

/// `/admin/v1/{kind}/{name}…`: 404 unless the kind exists and the name matches the name
/// pattern, so that no other name reaches the store (or a KV key).
pub struct ObjectPath {
    /// Services or routes.
    pub kind: Kind,
    /// A valid name.
    pub name: String,
}

impl<S: Send + Sync> FromRequestParts<S> for ObjectPath {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, GatewayError> {
        let path = parts.uri.path().to_owned();
        let Path((kind, name)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found(path.clone()))?;
        match (kind_of(&kind), validate::name("name", &name)) {
            (Some(kind), Ok(())) => Ok(ObjectPath { kind, name }),
            _ => Err(not_found(path)),
        }
    }
}

/// Nothing at `path` (the URI's path: percent-encoded, safe to show).
pub(crate) fn not_found(path: String) -> GatewayError {
    ErrorKind::NotFound(path).into()
}

pub(crate) fn store_of(state: &AdminState) -> Result<ConfigStore, GatewayError> {
    state
        .app
        .store
        .get()
        .cloned()
        .ok_or_else(|| ErrorKind::NotReady("the configuration store is not ready yet").into())
}

/// Adds a new key to a client document; returns `(id, secret)`.
pub fn add_key(spec: &mut Value) -> Result<(String, String), GatewayError> {
    let (id, secret) = crate::auth::new_key();
    let key = KeySpec {
        id: id.clone(),
        hash: hex::encode(crate::auth::hash_key(&secret)),
        created: crate::clock::rfc3339(std::time::SystemTime::now()),
    };
    let Some(object) = spec.as_object_mut() else {
        return Err(ErrorKind::Internal.into());
    };
    let keys = object
        .entry("keys")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(keys) = keys.as_array_mut() else {
        return Err(ErrorKind::Internal.into());
    };
    if keys.len() >= MAX_KEYS {
        return Err(ErrorKind::Conflict(format!(
            "a client has at most {MAX_KEYS} keys: revoke one first"
        ))
        .into());
    }
    keys.push(serde_json::to_value(key).map_err(|_| ErrorKind::Internal)?);
    Ok((id, secret))
}

/// The 201 of a new client: the object, and its first key with the secret, shown this once.
pub fn created(name: &str, revision: u64, spec: Value, id: &str, secret: &str) -> Response {
    let mut response = Json(json!({
        "name": name,
        "revision": revision,
        "spec": spec,
        "key": {"id": id, "secret": secret},
    }))
    .into_response();
    response.headers_mut().insert(header::ETAG, etag(revision));
    response
}

/// How long a write waits for this instance to run what it wrote.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Waits until this instance's configuration includes the store's latest change, so that a
/// list, a read or a try-it right after a write sees it (the other instances follow through
/// their own watchers). The write is durable either way: past [`APPLY_WAIT`] it answers anyway.
pub(crate) async fn settle(store: &ConfigStore, state: &AdminState) {
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

/// Parses a document of `kind` strictly, naming the field on error.
fn parse_spec(kind: Kind, name: &str, value: &Value) -> Result<Value, GatewayError> {
    let result = match kind {
        Kind::Service => {
            serde_json::from_value::<ServiceSpec>(value.clone()).and_then(serde_json::to_value)
        }
        Kind::Route => {
            serde_json::from_value::<RouteSpec>(value.clone()).and_then(serde_json::to_value)
        }
        Kind::Client => {
            // Keys are made and revoked through `…/keys`; a document never brings its own.
            if value.get("keys").is_some() {
                return Err(ErrorKind::InvalidConfig {
                    field: format!("clients.{name}.keys"),
                    reason: "keys are managed through /admin/v1/clients/{name}/keys".into(),
                }
                .into());
            }
            serde_json::from_value::<ClientSpec>(value.clone()).and_then(serde_json::to_value)
        }
    };
    result.map_err(|e| {
        ErrorKind::InvalidConfig {
            field: failed_field(kind, name, value),
            reason: e.to_string(),
        }
        .into()
    })
}

/// The field a document that does not parse is about, where serde cannot say it: a header
/// value that is not `{"env": …}` or `{"file": …}` (`services.<name>.upstream.headers.<Header>`;
/// the value itself is never repeated); else the object.
fn failed_field(kind: Kind, name: &str, value: &Value) -> String {
    let headers = value
        .pointer("/upstream/headers")
        .and_then(Value::as_object);
    if kind == Kind::Service {
        for (header, source) in headers.into_iter().flatten() {
            if serde_json::from_value::<SecretSource>(source.clone()).is_err() {
                return format!("services.{name}.upstream.headers.{header}");
            }
        }
    }
    format!("{}.{name}", kind.plural())
}

/// The configuration in force with one object changed (`None`: deleted), validated whole.
pub(crate) fn candidate(
    state: &AdminState,
    kind: Kind,
    name: &str,
    value: Option<&Value>,
) -> Result<(), GatewayError> {
    let mut spec = state.app.runner.config().load().spec.clone();
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
        (Kind::Client, Some(v)) => {
            spec.clients.insert(
                name.to_owned(),
                serde_json::from_value(v.clone()).map_err(at)?,
            );
        }
        (Kind::Client, None) => {
            spec.clients.remove(name);
        }
    }
    let compiled = Snapshot::compile(spec).map_err(GatewayError::invalid_config)?;
    if let (Kind::Service, Some(_)) = (kind, value) {
        own_listeners(state, &compiled.spec.services, Some(name))?;
    }
    Ok(())
}

/// Refuses an upstream aimed at this gateway's own listeners or at NATS monitoring (see
/// [`crate::upstream_forbidden`]); checks `only` when given, else every service.
fn own_listeners(
    state: &AdminState,
    services: &std::collections::BTreeMap<String, ServiceSpec>,
    only: Option<&str>,
) -> Result<(), GatewayError> {
    for (name, service) in services {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Some(upstream) = &service.upstream else {
            continue;
        };
        if let Some(hit) = upstream.aims_at(&state.app.edge.upstream_forbidden) {
            return Err(ErrorKind::InvalidConfig {
                field: format!("services.{name}.upstream.url"),
                reason: format!(
                    "aims at {} (port {}): an upstream may not call the gateway itself or NATS monitoring",
                    hit.what, hit.port
                ),
            }
            .into());
        }
    }
    Ok(())
}

pub(crate) fn object(name: &str, revision: u64, spec: Value) -> Response {
    let mut response =
        Json(json!({"name": name, "revision": revision, "spec": spec})).into_response();
    response.headers_mut().insert(header::ETAG, etag(revision));
    response
}

pub async fn list(
    State(state): State<AdminState>,
    KindPath(kind): KindPath,
) -> Result<Response, GatewayError> {
    let store = store_of(&state)?;
    let spec = state.app.runner.config().load().spec.clone();
    let names: Vec<String> = match kind {
        Kind::Service => spec.services.keys().cloned().collect(),
        Kind::Route => spec.routes.keys().cloned().collect(),
        Kind::Client => spec.clients.keys().cloned().collect(),
    };
    let mut items = Vec::new();
    for name in names {
        if let Some((revision, value)) = store.get(kind, &name).await? {
            items.push(json!({"name": name, "revision": revision, "spec": value}));
        }
    }
    Ok(Json(json!({"items": items})).into_response())
}

pub async fn read(
    State(state): State<AdminState>,
    ObjectPath { kind, name }: ObjectPath,
) -> Result<Response, GatewayError> {
    let (revision, value) = store_of(&state)?
        .get(kind, &name)
        .await?
        .ok_or_else(|| ErrorKind::ObjectNotFound(kind.key(&name)))?;
    Ok(object(&name, revision, value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    name: String,
    spec: Value,
}

pub async fn create(
    State(state): State<AdminState>,
    KindPath(kind): KindPath,
    body: Result<Json<Create>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut change = Change {
        object: kind.plural().to_owned(),
        ..Change::default()
    };
    let result = async {
        let Json(body) = body.map_err(rejected)?;
        validate::name("name", &body.name).map_err(GatewayError::invalid_config)?;
        change.object = kind.key(&body.name);
        let mut spec = parse_spec(kind, &body.name, &body.spec)?;
        // A new client comes with its first key, whose secret this answer shows once.
        let key = (kind == Kind::Client)
            .then(|| add_key(&mut spec))
            .transpose()?;
        candidate(&state, kind, &body.name, Some(&spec))?;
        let store = store_of(&state)?;
        let revision = store.write_if(kind, &body.name, &spec, None).await?;
        change.new = Some(revision);
        settle(&store, &state).await;
        let mut response = match key {
            Some((id, secret)) => created(&body.name, revision, spec, &id, &secret),
            None => object(&body.name, revision, spec),
        };
        *response.status_mut() = StatusCode::CREATED;
        if let Ok(location) =
            HeaderValue::from_str(&format!("/admin/v1/{}/{}", kind.plural(), body.name))
        {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(response)
    }
    .await;
    change.attach(result)
}

pub async fn replace(
    State(state): State<AdminState>,
    ObjectPath { kind, name }: ObjectPath,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut change = Change::of(kind, &name);
    let result = async {
        let condition = IfMatch::from_headers(&headers)?;
        let Json(body) = body.map_err(rejected)?;
        let spec = parse_spec(kind, &name, &body)?;
        write(&state, kind, &name, spec, &condition, &mut change).await
    }
    .await;
    change.attach(result)
}

/// Replaces an object if `condition` matches its current revision, after validating the
/// configuration it makes.
async fn write(
    state: &AdminState,
    kind: Kind,
    name: &str,
    spec: Value,
    condition: &IfMatch,
    change: &mut Change,
) -> Result<Response, GatewayError> {
    let store = store_of(state)?;
    let current = store.get(kind, name).await?;
    change.old = current.as_ref().map(|(revision, _)| *revision);
    let expected = condition.check(change.old)?;
    let mut spec = spec;
    if kind == Kind::Client {
        // A client's keys are those stored at the revision this write replaces: a PUT or a
        // rollback changes the rest, never resurrects a revoked key nor drops a live one.
        let keys = current
            .as_ref()
            .and_then(|(_, doc)| doc.get("keys").cloned());
        if let Some(object) = spec.as_object_mut() {
            object.remove("keys");
            if let Some(keys) = keys {
                object.insert("keys".into(), keys);
            }
        }
    }
    candidate(state, kind, name, Some(&spec))?;
    match store.write_if(kind, name, &spec, Some(expected)).await {
        Ok(revision) => {
            change.new = Some(revision);
            settle(&store, state).await;
            Ok(object(name, revision, spec))
        }
        Err(GatewayError {
            kind: ErrorKind::Stale { .. },
            ..
        }) => {
            let current = store.get(kind, name).await.ok().flatten().map(|(r, _)| r);
            Err(ErrorKind::PreconditionFailed { current }.into())
        }
        Err(e) => Err(e),
    }
}

pub async fn remove(
    State(state): State<AdminState>,
    ObjectPath { kind, name }: ObjectPath,
    headers: HeaderMap,
) -> Response {
    let mut change = Change::of(kind, &name);
    let result = async {
        let condition = IfMatch::from_headers(&headers)?;
        let store = store_of(&state)?;
        change.old = store.get(kind, &name).await?.map(|(revision, _)| revision);
        let expected = condition.check(change.old)?;
        candidate(&state, kind, &name, None)?;
        match store.delete(kind, &name, Some(expected)).await {
            Ok(()) => {
                settle(&store, &state).await;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Err(GatewayError {
                kind: ErrorKind::Stale { .. },
                ..
            }) => {
                let current = store.get(kind, &name).await.ok().flatten().map(|(r, _)| r);
                Err(ErrorKind::PreconditionFailed { current }.into())
            }
            Err(e) => Err(e),
        }
    }
    .await;
    change.attach(result)
}

pub async fn history(
    State(state): State<AdminState>,
    ObjectPath { kind, name }: ObjectPath,
) -> Result<Response, GatewayError> {
    let items = store_of(&state)?.history(kind, &name).await?;
    if items.is_empty() {
        return Err(ErrorKind::ObjectNotFound(kind.key(&name)).into());
    }
    Ok(Json(json!({"items": items})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    revision: u64,
}

pub async fn rollback(
    State(state): State<AdminState>,
    ObjectPath { kind, name }: ObjectPath,
    headers: HeaderMap,
    body: Result<Json<Rollback>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut change = Change::of(kind, &name);
    let result = async {
        let condition = IfMatch::from_headers(&headers)?;
        let Json(body) = body.map_err(rejected)?;
        let spec = store_of(&state)?
            .at_revision(kind, &name, body.revision)
            .await?
            .ok_or_else(|| {
                ErrorKind::ObjectNotFound(format!(
                    "{} at revision {}",
                    kind.key(&name),
                    body.revision
                ))
            })?;
        write(&state, kind, &name, spec, &condition, &mut change).await
    }
    .await;
    change.attach(result)
}

/// `GET /admin/v1/config`: the configuration in force, with the store's revision as `ETag`
/// (an import names it in `If-Match`).
pub async fn export(State(state): State<AdminState>) -> Result<Response, GatewayError> {
    let store = store_of(&state)?;
    let revision = store.last_sequence().await?;
    // The configuration exported includes at least every change up to the tag.
    state.app.store_status.wait_for(revision, APPLY_WAIT).await;
    let mut response = Json(state.app.runner.config().load().spec.clone()).into_response();
    response.headers_mut().insert(header::ETAG, etag(revision));
    Ok(response)
}

/// Replaces the whole configuration (validated whole first); objects not in it are deleted.
/// Like every write it needs `If-Match`: the `ETag` of an export (any change to the store since
/// makes it 412), or `*`.
pub async fn import(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Json<ConfigSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut change = Change {
        object: "config".to_owned(),
        ..Change::default()
    };
    let result = async {
        let condition = IfMatch::from_headers(&headers)?;
        let Json(spec) = body.map_err(rejected)?;
        Snapshot::compile(spec.clone()).map_err(GatewayError::invalid_config)?;
        own_listeners(&state, &spec.services, None)?;
        let store = store_of(&state)?;
        change.old = Some(store.last_sequence().await?);
        condition.check(change.old)?;
        let old = state.app.runner.config().load().spec.clone();
        // Services first, routes after: intermediate states stay valid where possible; a
        // watcher refuses any that is not and keeps the last good configuration.
        for (name, service) in &spec.services {
            store.put(Kind::Service, name, &json!(service)).await?;
        }
        for (name, route) in &spec.routes {
            store.put(Kind::Route, name, &json!(route)).await?;
        }
        // Clients last (they name routes); their keys come as the export has them: hashes.
        for (name, client) in &spec.clients {
            store.put(Kind::Client, name, &json!(client)).await?;
        }
        for name in old
            .clients
            .keys()
            .filter(|n| !spec.clients.contains_key(*n))
        {
            store.delete(Kind::Client, name, None).await?;
        }
        for name in old.routes.keys().filter(|n| !spec.routes.contains_key(*n)) {
            store.delete(Kind::Route, name, None).await?;
        }
        for name in old
            .services
            .keys()
            .filter(|n| !spec.services.contains_key(*n))
        {
            store.delete(Kind::Service, name, None).await?;
        }
        let revision = store.last_sequence().await?;
        change.new = Some(revision);
        settle(&store, &state).await;
        let mut response = Json(spec).into_response();
        response.headers_mut().insert(header::ETAG, etag(revision));
        Ok(response)
    }
    .await;
    change.attach(result)
}

/// What a body the JSON extractor refused is: 413 when it was over axum's limit (the admin
/// listener's `DefaultBodyLimit`, 2 MiB), else 400 with the extractor's words.
pub(crate) fn rejected(e: axum::extract::rejection::JsonRejection) -> ErrorKind {
    /// axum's default body limit, which the admin router keeps.
    const AXUM_BODY_LIMIT: usize = 2 * 1024 * 1024;
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorKind::PayloadTooLarge {
            limit: AXUM_BODY_LIMIT,
        }
    } else {
        ErrorKind::InvalidBody(e.body_text())
    }
}
