//! The resilience state of this instance: `GET /admin/v1/resilience` answers, per service that
//! has a breaker, retries or hedging, where its breaker stands and the latencies its hedges
//! and retries go by. Breakers are per instance: each gateway answers for its own.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::admin::state::AdminState;

/// `GET /admin/v1/resilience`.
pub async fn resilience(State(state): State<AdminState>) -> Json<Value> {
    let snapshot = state.app.runner.config().load();
    let services: Map<String, Value> = snapshot
        .guards()
        .iter()
        .map(|(name, guard)| {
            let status = serde_json::to_value(guard.status()).unwrap_or(Value::Null);
            (name.clone(), status)
        })
        .collect();
    Json(json!({"instance": &*state.app.instance, "services": services}))
}
