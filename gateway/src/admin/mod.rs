//! The admin API (`/admin/v1/…`) and the web UI, on the admin listener.
//!
//! Owns: the admin router and its bearer-token guard (here), the configuration objects
//! ([`objects`]), the try-it ([`try_it`]), live instances ([`discovery`]) and the UI's files
//! and OpenAPI document ([`assets`]). A bearer token guards everything but the UI's static
//! files and the OpenAPI document.
//!
//! May use: `edge` (the state it shares with the public listener, request ids), `route`,
//! `config`, `error`. Nothing imports `admin` but the wiring in `lib`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::edge::state::AppState;
use crate::error::{ErrorKind, GatewayError};

pub mod assets;
pub mod discovery;
pub mod objects;
pub mod state;
pub mod try_it;

use assets::{OPENAPI, UI_CSS, UI_HTML, UI_JS};
use discovery::{all_instances, instances};
use objects::{create, export, history, import, list, read, remove, replace, rollback};
use state::AdminState;
use try_it::try_route;

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
        },
        "gathers_in_flight": app.runner.collector().open_gathers(),
    }))
}
