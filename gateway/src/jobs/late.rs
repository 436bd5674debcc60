//! The request document of a partial synchronous answer on a route with a `late.grace`
//! (`gather::late`): the answer carries `Location: /api/requests/{request_id}` and
//! `status_url`; the document, in `busgate-results` like an asynchronous request's (so any
//! instance answers its poll and its event stream), is written `pending` with the partial
//! answer at once, then `completed` with the answer the late sources made complete, or with
//! the partial one when none answered within the grace.
//!
//! A callback is not offered here: a request that names a `callback_url` is asynchronous.

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::HeaderValue;
use bytes::Bytes;
use serde_json::value::RawValue;
use tracing::warn;

use crate::auth::Caller;
use crate::clock::rfc3339;
use crate::config::snapshot::Route;
use crate::gather::merge;
use crate::jobs::http::AsyncRequests;
use crate::jobs::results::{JobStatus, StatusDoc};
use crate::jobs::store::Jobs;
use crate::route::Answer;

/// The path of a request's document.
pub fn status_path(request_id: &str) -> String {
    format!("/api/requests/{request_id}")
}

/// Follows `answer`'s late sources, if it has any and asynchronous requests are ready: adds
/// `status_url` to its body and gives the `Location` value. Without them the answer stays a
/// plain partial one (`None`).
pub fn follow(
    requests: &AsyncRequests,
    answer: &mut Answer,
    route: &Arc<Route>,
    request_id: &str,
    order_id: &str,
    caller: Option<&Caller>,
) -> Option<HeaderValue> {
    let late = answer.late.take()?;
    let jobs = requests.jobs().ok()?.clone();
    let path = status_path(request_id);
    let location = HeaderValue::from_str(&path).ok()?;
    // `…}` → `…,"status_url":"/api/requests/<id>"}`: the id is our own UUID, no escaping.
    if answer.body.last() == Some(&b'}') {
        answer.body.pop();
        answer.body.extend_from_slice(b",\"status_url\":\"");
        answer.body.extend_from_slice(path.as_bytes());
        answer.body.extend_from_slice(b"\"}");
    }
    let doc = StatusDoc {
        request_id: request_id.to_owned(),
        status: JobStatus::Pending,
        http_status: Some(200),
        result: raw(&answer.body),
        route: route.name.0.to_string(),
        order_id: order_id.to_owned(),
        client: caller.map(|c| c.name().to_owned()).unwrap_or_default(),
        submitted_at: rfc3339(SystemTime::now()),
        completed_at: None,
        callback: None,
    };
    let route = route.clone();
    let partial = answer.body.clone();
    let mut late = late;
    tokio::spawn(async move {
        let request_id = doc.request_id.clone();
        put(&jobs, &doc).await;
        let changed = late.listen(&route).await;
        let body = if changed {
            merge::answer(
                &route,
                late.outcome(),
                &doc.request_id,
                &doc.order_id,
                late.started().elapsed(),
            )
            .unwrap_or(partial)
        } else {
            partial
        };
        let mut doc = doc;
        doc.finish(200, &body);
        put(&jobs, &doc).await;
        drop(late);
        tracing::debug!(%request_id, changed, "late gather written");
    });
    Some(location)
}

fn raw(body: &[u8]) -> Option<Box<RawValue>> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_owned()).ok())
}

async fn put(jobs: &Jobs, doc: &StatusDoc) {
    let Ok(bytes) = serde_json::to_vec(doc) else {
        return;
    };
    if let Err(e) = jobs.results.put(&doc.request_id, Bytes::from(bytes)).await {
        warn!(request_id = %doc.request_id, error = %e, "cannot write a late request's document");
    }
}
