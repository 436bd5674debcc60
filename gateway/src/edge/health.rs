//! The built-in endpoints: `/health/live`, `/health/ready` and `/metrics`. They need no
//! configuration; only `/metrics` asks the bus something (JetStream's backlog, bounded by a
//! timeout: see [`crate::edge::gauges`]).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::edge::state::AppState;

/// `GET /health/live`: the process answers.
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

/// `GET /health/ready`: both NATS connections, JetStream and the configuration, and how loaded
/// the instance is. Load does not make it unready: taking a busy instance out of a load
/// balancer moves its load onto the others, which then shed more; past its caps the instance
/// sheds what it cannot take (503 `overloaded`) and keeps serving the rest.
pub async fn ready(State(state): State<AppState>) -> Response {
    let connected = state.nats_connected();
    let jobs = state.requests.is_ready();
    let config = state.store_status.loaded.load(Ordering::Acquire);
    let routes = state.runner.config().load().spec.routes.len();
    let ready = connected && jobs && config;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "nats": if connected { "connected" } else { "disconnected" },
        "jetstream": if jobs { "ready" } else { "not_ready" },
        "config": if config { "loaded" } else { "not_loaded" },
        "routes": routes,
        "load": load(&state),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// What the instance holds now against its caps.
fn load(state: &AppState) -> serde_json::Value {
    let pair =
        |slots: &crate::limit::Slots| serde_json::json!({"open": slots.used(), "max": slots.cap()});
    let in_flight = &state.edge.in_flight;
    serde_json::json!({
        "in_flight": pair(in_flight),
        "in_flight_ratio": in_flight.used() as f64 / in_flight.cap() as f64,
        "connections": pair(&state.edge.connections),
        "event_streams": pair(state.requests.streams()),
        "waiters": pair(state.requests.waiters()),
    })
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let metrics = state.runner.metrics();
            // Breakers move on their own (open → half-open once `open_for` passed): the gauge
            // is read from them when it is asked for.
            for guard in state.runner.config().load().guards().values() {
                if let Some(phase) = guard.phase() {
                    metrics.set_breaker(guard.service(), phase.gauge());
                }
            }
            crate::edge::gauges::with_gauges(&state, metrics.encode()).await
        },
    )
        .into_response()
}
