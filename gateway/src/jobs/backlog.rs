//! The async backlog, for `/metrics`: how many requests wait in the work queue and how many
//! callbacks wait for delivery, asked of JetStream at scrape time (bounded by a timeout).

use std::time::Duration;

use busgate_shared::subject;

use crate::jobs::http::AsyncRequests;
use crate::jobs::room::stream_info;

/// How long a scrape waits for JetStream's answer.
const ASK_WITHIN: Duration = Duration::from_secs(1);

/// Messages in the requests and callbacks streams, or `None` (JetStream not ready, or slow).
pub async fn backlog(requests: &AsyncRequests) -> Option<(u64, u64)> {
    let jobs = requests.ready_jobs()?;
    let count =
        |name: &'static str| async move { Some(stream_info(&jobs.js, name).await?.state.messages) };
    let both = async {
        (
            count(subject::REQUESTS_STREAM).await,
            count(subject::CALLBACKS_STREAM).await,
        )
    };
    match tokio::time::timeout(ASK_WITHIN, both).await {
        Ok((Some(requests), Some(callbacks))) => Some((requests, callbacks)),
        _ => None,
    }
}
