//! A demo internal HTTP service: `GET /order/{order_id}`, deterministic data, failure prefixes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tracing::info;

use crate::demo_data::{self, Answer, SLOW_DELAY};

/// Serves demo `service` on `listen` until `shutdown` resolves.
pub async fn run(
    service: &str,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = busgate_shared::runtime::listen(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    info!(service, %addr, "listening");
    axum::serve(listener, router(service))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

fn router(service: &str) -> Router {
    Router::new()
        .route("/order/{order_id}", get(order))
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

fn json_body(data: bytes::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], data).into_response()
}
