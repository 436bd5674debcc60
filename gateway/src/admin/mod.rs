//! The admin API (`/admin/v1/…`) and the web UI, on the admin listener.
//!
//! Owns: the admin router, its bearer-token guard and the security headers of every answer
//! (here), the configuration objects ([`objects`]) and their preconditions ([`precondition`]),
//! clients' API keys ([`clients`]),
//! the audit trail of writes ([`audit`]), configuration written straight to the store by
//! `busgate config apply` and `up --config` ([`direct`], audited like the API's writes), the try-it ([`try_it`]), live instances
//! ([`discovery`]), this instance's breakers ([`resilience`]) and the UI's files and OpenAPI document ([`assets`]). A bearer token guards
//! everything but the UI's static files, the OpenAPI document and, when it is served here,
//! `/metrics`.
//!
//! May use: `edge` (the state it shares with the public listener, request ids, `/metrics`),
//! `auth` (making keys), `route`, `config`, `error`. Nothing imports `admin` but the wiring in `lib`
//! (and the binary's `busgate config`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::edge::state::AppState;
use crate::error::{ErrorKind, GatewayError};

pub mod assets;
pub mod audit;
pub mod clients;
pub mod direct;
pub mod discovery;
pub mod objects;
pub mod precondition;
pub mod resilience;
pub mod state;
pub mod try_it;

use assets::{
    FAVICON_CACHE, FAVICON_CONTENT_TYPE, FAVICON_SVG, OPENAPI, UI_CLIENTS_JS, UI_CSS, UI_GRAPH_JS,
    UI_HTML, UI_JS,
};
use audit::{Actor, Change};
use discovery::{all_instances, instances};
use objects::{create, export, history, import, list, read, remove, replace, rollback};
use state::AdminState;
use try_it::try_route;

/// The content security policy of every admin answer: scripts, styles, images and API calls
/// from this listener only (the UI has no inline script, style or handler), no framing, no
/// plugins, no `<base>` elsewhere, forms post here only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'self'; \
     form-action 'self'; object-src 'none'; frame-ancestors 'none'";

/// The admin router, guarded by `token`; with `/metrics` (unguarded) when `metrics` is true.
pub fn router(app: AppState, token: &str, metrics: bool) -> Router {
    let state = AdminState {
        app,
        token_hash: Arc::new(Sha256::digest(token.as_bytes()).into()),
    };
    let guarded = Router::new()
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/config", get(export).put(import))
        .route("/admin/v1/instances", get(all_instances))
        .route("/admin/v1/resilience", get(resilience::resilience))
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
        .route(
            "/admin/v1/{kind}/{name}/keys",
            axum::routing::post(clients::create_key),
        )
        .route(
            "/admin/v1/{kind}/{name}/keys/{id}",
            axum::routing::delete(clients::revoke_key),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    let mut open = Router::new()
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
        .route("/favicon.ico", get(favicon))
        .route("/ui/favicon.svg", get(favicon))
        .route(
            "/ui/clients.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    UI_CLIENTS_JS,
                )
            }),
        )
        .route(
            "/ui/resilience.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    assets::UI_RESILIENCE_JS,
                )
            }),
        )
        .route(
            "/ui/graph.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    UI_GRAPH_JS,
                )
            }),
        )
        .route(
            "/admin/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        );
    if metrics {
        open = open.route(
            "/metrics",
            get(|State(state): State<AdminState>| crate::edge::health::metrics(State(state.app))),
        );
    }
    open.merge(guarded)
        .fallback(|uri: axum::http::Uri| async move {
            GatewayError::from(ErrorKind::NotFound(uri.path().to_owned()))
        })
        // RFC 9112's Host rule before anything else is done for a request.
        .layer(middleware::from_fn(crate::edge::host::require_host))
        // Outermost: every answer, the fallback's and the guard's refusals included.
        .layer(middleware::map_response(secure))
        .layer(middleware::from_fn(crate::edge::with_request_id))
        .with_state(state)
}

/// The icon, cacheable (the security layer leaves a set `Cache-Control` alone).
async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, FAVICON_CONTENT_TYPE),
            (header::CACHE_CONTROL, FAVICON_CACHE),
        ],
        FAVICON_SVG,
    )
}

/// Sets the security headers on an admin answer, and makes axum's bare 405 a problem document.
async fn secure(method: Method, response: Response) -> Response {
    let mut response = if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        let allow = response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        GatewayError::from(ErrorKind::MethodNotAllowed {
            method: method.to_string(),
            allow,
        })
        .into_response()
    } else {
        response
    };
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    for (name, value) in set {
        headers.insert(name, value);
    }
    // Admin answers carry configuration (and one day secrets shown once): never cached.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The bearer-token guard of the API, and the audit event of every request that is not a read.
async fn guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    // Two `Authorization` headers are refused, as on the public listener: which one a proxy
    // in front would have checked is not knowable.
    let mut authorization = request.headers().get_all(header::AUTHORIZATION).iter();
    let (first, second) = (authorization.next(), authorization.next());
    let presented = first
        .filter(|_| second.is_none())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| -> [u8; 32] { Sha256::digest(t.trim().as_bytes()).into() });
    let actor = match presented {
        None if second.is_some() => Actor::Invalid,
        None => Actor::Anonymous,
        // Constant time over the (fixed-length) digests.
        Some(hash)
            if hash
                .iter()
                .zip(state.token_hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0 =>
        {
            Actor::of(&state.token_hash)
        }
        Some(_) => Actor::Invalid,
    };
    let method = request.method().clone();
    let audited = audit::audited(&method);
    let path = audited.then(|| request.uri().path().to_owned());
    let response = if matches!(actor, Actor::Token(_)) {
        next.run(request).await
    } else {
        GatewayError::from(ErrorKind::Unauthorized).into_response()
    };
    if let Some(path) = path {
        let change = response.extensions().get::<Change>();
        audit::record(&actor, &method, &path, change, response.status());
    }
    response
}

async fn status(State(state): State<AdminState>) -> Json<Value> {
    let app = &state.app;
    let snapshot = app.runner.config().load();
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
            "clients": snapshot.spec.clients.len(),
        },
        "gathers_in_flight": app.runner.collector().open_gathers(),
        // How many live gateways share each client's limits (`crate::fleet`).
        "gateway_instances": crate::share::instances(),
    }))
}
