//! The try-it: runs a route for an order id exactly as a request would, and shows the answer.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::admin::state::AdminState;
use crate::config::store::Kind;
use crate::edge::ids::{new_request_id, traceparent};
use crate::error::{ErrorKind, GatewayError};
use crate::route::Call;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Try {
    route: String,
    order_id: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Runs as this configured client (its routes, `when.clients`, `Busgate-Client`); empty:
    /// the anonymous client.
    #[serde(default)]
    client: String,
}

/// Runs a route for an order id exactly as a request would, and shows the answer.
pub async fn try_route(
    State(state): State<AdminState>,
    body: Result<Json<Try>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, GatewayError> {
    let Json(body) = body.map_err(crate::admin::objects::rejected)?;
    let app = &state.app;
    if !app.edge.order_id.accepts(&body.order_id) {
        return Err(ErrorKind::InvalidOrderId {
            pattern: app.edge.order_id.as_str().to_owned(),
        }
        .into());
    }
    let snapshot = app.runner.config().load_full();
    let route = snapshot
        .route(&body.route)
        .ok_or_else(|| ErrorKind::ObjectNotFound(Kind::Route.key(&body.route)))?;
    if !body.client.is_empty() {
        let client = snapshot
            .clients
            .by_name(&body.client)
            .ok_or_else(|| ErrorKind::ObjectNotFound(Kind::Client.key(&body.client)))?;
        if !client.may_use(&body.route) {
            return Err(ErrorKind::RouteNotAllowed(body.route).into());
        }
    }
    let request_id = new_request_id().to_string();
    let call = Call {
        traceparent: traceparent(None, &request_id, app.edge.trace_sample_ratio),
        request_id,
        route: route.name.0.to_string(),
        order_id: body.order_id,
        client: body.client,
        headers: body
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
        timeout: None,
    };
    let (status, answer) = app.runner.answer(&call).await;
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
