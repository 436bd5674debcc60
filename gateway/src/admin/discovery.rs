//! Live instances: who serves Busgate services right now, asked through the NATS service API
//! (`$SRV.INFO` and `$SRV.STATS`, whose answers are typed in `busgate_shared::micro`).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use busgate_shared::micro::{Answer, Endpoint, Verb, META_MODE, META_UPSTREAM};

use crate::admin::objects::ObjectPath;
use crate::admin::state::AdminState;
use crate::config::store::Kind;
use crate::error::{ErrorKind, GatewayError};

/// `GET /admin/v1/services/{name}/instances` (404 under `routes`, or for a name outside the
/// name pattern).
pub async fn instances(
    State(state): State<AdminState>,
    ObjectPath { kind, name }: ObjectPath,
    uri: Uri,
) -> Result<Response, GatewayError> {
    if kind != Kind::Service {
        return Err(ErrorKind::NotFound(uri.path().to_owned()).into());
    }
    let items = discover(&state.app.nats, Some(&name)).await;
    Ok(Json(json!({"items": items})).into_response())
}

/// `GET /admin/v1/instances`.
pub async fn all_instances(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(json!({"items": discover(&state.app.nats, None).await}))
}

/// A live instance as the admin API lists it.
#[derive(Debug, Serialize)]
struct Instance {
    service: String,
    id: String,
    version: String,
    /// How it serves: `adapter`, `adapters`, `native`, `demo` (metadata `busgate.mode`), or
    /// absent for an instance that does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    /// The upstream URL template it calls (metadata `busgate.upstream`), for adapters; absent
    /// for the others (the OpenAPI document says absent, not null).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    metadata: HashMap<String, String>,
    subject: String,
    started: Option<String>,
    requests: u64,
    errors: u64,
    average_ms: f64,
}

/// Asks the NATS service API who serves Busgate services: `$SRV.INFO` and `$SRV.STATS`,
/// collecting every answer for a short while.
async fn discover(nats: &async_nats::Client, service: Option<&str>) -> Vec<Instance> {
    let (infos, stats) = tokio::join!(
        collect(nats, Verb::Info.subject(service)),
        collect(nats, Verb::Stats.subject(service))
    );
    let mut items = Vec::new();
    for info in infos {
        let Some(subject) = info.endpoints.first().map(|e| e.subject.clone()) else {
            continue;
        };
        if !subject.starts_with(busgate_shared::subject::SERVICE_PREFIX) {
            continue;
        }
        let stat = stats.iter().find(|s| s.id == info.id);
        let endpoint = stat.and_then(|s| s.endpoints.first());
        let counter = |read: fn(&Endpoint) -> Option<u64>| endpoint.and_then(read).unwrap_or(0);
        items.push(Instance {
            service: info.name,
            id: info.id,
            version: info.version,
            mode: info.metadata.get(META_MODE).cloned(),
            upstream: info.metadata.get(META_UPSTREAM).cloned(),
            metadata: info.metadata,
            subject,
            started: stat.and_then(|s| s.started.clone()),
            requests: counter(|e| e.num_requests),
            errors: counter(|e| e.num_errors),
            average_ms: counter(|e| e.average_processing_time) as f64 / 1e6,
        });
    }
    items.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    items
}

/// Every answer to `subject` within 300 ms.
async fn collect(nats: &async_nats::Client, subject: String) -> Vec<Answer> {
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
        if let Ok(answer) = serde_json::from_slice::<Answer>(&message.payload) {
            out.push(answer);
        }
    }
    out
}
