//! A demo internal HTTP service: `GET /order/{order_id}`, deterministic data, failure prefixes;
//! and `GET /carriers/{carrier}`, a carrier by its code (what the `carriers` demo serves).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use busgate_shared::drain;
use serde_json::json;
use tracing::info;

use crate::demo_data::{self, Answer, SLOW_DELAY};

/// Serves demo `service` on `listen` until `drain` is signalled; the drain is released once
/// the connections in flight are done.
pub async fn run(service: &str, listen: SocketAddr, drain: drain::Watch) -> anyhow::Result<()> {
    let listener = busgate_shared::runtime::listen(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    info!(service, %addr, "listening");
    let signaled = drain.clone().signaled();
    axum::serve(listener, router(service))
        .with_graceful_shutdown(async move { drop(signaled.await) })
        .await?;
    drop(drain);
    Ok(())
}

fn router(service: &str) -> Router {
    Router::new()
        .route("/order/{order_id}", get(order))
        .route("/carriers/{carrier}", get(carrier))
        .route("/health", get(|| async { "ok" }))
        .with_state(Arc::<str>::from(service))
}

async fn order(State(service): State<Arc<str>>, Path(order_id): Path<String>) -> Response {
    match demo_data::answer(&service, &order_id) {
        Answer::Data(v) => json_body(v),
        Answer::Slow(v) => {
            tokio::time::sleep(SLOW_DELAY).await;
            json_body(v)
        }
        Answer::Fail => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "demo failure"})),
        )
            .into_response(),
        Answer::Missing => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such order"})),
        )
            .into_response(),
    }
}

async fn carrier(Path(code): Path<String>) -> Response {
    match demo_data::carrier(&code) {
        Some(data) => json_body(data),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such carrier"})),
        )
            .into_response(),
    }
}

fn json_body(data: bytes::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], data).into_response()
}
