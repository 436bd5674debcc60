//! Results: the status document of every request (the KV bucket `busgate-results`), as a
//! poll, an event stream and a callback read it, and as the processor and the deliverer
//! change it (compare-and-set).

use std::time::SystemTime;

use async_nats::jetstream::{kv, stream};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use busgate_shared::subject;

use crate::clock::rfc3339;
use crate::error::{ErrorKind, GatewayError};
use crate::jobs::store::{full_or_failed, js, Job, Jobs, STORE};

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted, not finished.
    Pending,
    /// Finished where the synchronous call would have answered 200.
    Completed,
    /// Finished with any other answer.
    Failed,
}

/// The status document: what a poll, an event and a callback carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The request id.
    pub request_id: String,
    /// Where it is.
    pub status: JobStatus,
    /// The status the synchronous call would have answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The body the synchronous call would have answered (answer or problem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    /// The route that ran.
    pub route: String,
    /// The order id.
    pub order_id: String,
    /// Who submitted it (empty until clients are configured).
    pub client: String,
    /// When it was accepted (RFC 3339).
    pub submitted_at: String,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Callback delivery state, when a callback was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackState>,
}

/// The delivery state of a callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackState {
    /// Where it goes.
    pub url: String,
    /// `waiting` (for the result), `pending`, `delivered`, `gone` (410) or `failed` (gave up).
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's last HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last transport error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// When it was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
}

impl StatusDoc {
    /// The pending document of a new job.
    pub fn pending(job: &Job) -> Self {
        StatusDoc {
            request_id: job.call.request_id.clone(),
            status: JobStatus::Pending,
            http_status: None,
            result: None,
            route: job.call.route.clone(),
            order_id: job.call.order_id.clone(),
            client: job.call.client.clone(),
            submitted_at: job
                .submitted_at
                .clone()
                .unwrap_or_else(|| rfc3339(SystemTime::now())),
            completed_at: None,
            callback: job.callback_url.as_ref().map(|url| CallbackState {
                url: url.clone(),
                state: "waiting".into(),
                attempts: 0,
                last_status: None,
                last_error: None,
                next_attempt_at: None,
                delivered_at: None,
            }),
        }
    }

    /// Whether it has finished.
    pub fn is_final(&self) -> bool {
        self.status != JobStatus::Pending
    }

    /// Records the answer the synchronous call would have given.
    pub fn finish(&mut self, http_status: u16, body: &[u8]) {
        self.status = if http_status == 200 {
            JobStatus::Completed
        } else {
            JobStatus::Failed
        };
        self.http_status = Some(http_status);
        self.result = std::str::from_utf8(body)
            .ok()
            .and_then(|s| RawValue::from_string(s.to_owned()).ok());
        self.completed_at = Some(rfc3339(SystemTime::now()));
        if let Some(cb) = &mut self.callback {
            cb.state = "pending".into();
        }
    }
}

impl Jobs {
    /// The status document of a request and its revision.
    pub async fn status(&self, request_id: &str) -> Result<Option<(u64, StatusDoc)>, GatewayError> {
        let Some(entry) = self.results.entry(request_id).await.map_err(js)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let doc = serde_json::from_slice(&entry.value).map_err(STORE.corrupt(request_id))?;
        Ok(Some((entry.revision, doc)))
    }

    /// What a poll answers: the status document, or, while the request is still in the work
    /// queue and has none, its pending document made from the queued job (`false`: not
    /// stored). Read in the order that misses nothing: the document, the queue, the document
    /// again (a request leaves the queue only after its final document is written).
    pub async fn lookup(
        &self,
        request_id: &str,
    ) -> Result<Option<(StatusDoc, bool)>, GatewayError> {
        if let Some((_, doc)) = self.status(request_id).await? {
            return Ok(Some((doc, true)));
        }
        if let Some(job) = self.queued(request_id).await? {
            return Ok(Some((StatusDoc::pending(&job), false)));
        }
        Ok(self.status(request_id).await?.map(|(_, doc)| (doc, true)))
    }

    /// The job of `request_id` while it is in the work queue (read from the stream's leader).
    pub(super) async fn queued(&self, request_id: &str) -> Result<Option<Job>, GatewayError> {
        let subject = subject::request_job(request_id);
        match self
            .requests
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => serde_json::from_slice(&message.payload)
                .map(Some)
                .map_err(STORE.corrupt(request_id)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(js(e)),
        }
    }

    /// Writes the final document of `job`: over its stored document when it has one (`base`,
    /// from [`Jobs::status`]), else as a new one (the request was queued without one). A
    /// concurrent write (another instance finishing a redelivery) is retried over it.
    pub async fn complete(
        &self,
        job: &Job,
        base: Option<&StatusDoc>,
        http_status: u16,
        body: &[u8],
    ) -> Result<StatusDoc, GatewayError> {
        let request_id = &job.call.request_id;
        if base.is_none() {
            let mut doc = StatusDoc::pending(job);
            doc.finish(http_status, body);
            let bytes = serde_json::to_vec(&doc).map_err(STORE.corrupt(request_id))?;
            match self.results.create(request_id, bytes.into()).await {
                Ok(_) => return Ok(doc),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(full_or_failed(e)),
            }
        }
        self.update(request_id, |doc| doc.finish(http_status, body))
            .await
    }

    /// Changes a status document with compare-and-set, retrying on concurrent writes.
    pub async fn update(
        &self,
        request_id: &str,
        mut change: impl FnMut(&mut StatusDoc),
    ) -> Result<StatusDoc, GatewayError> {
        for _ in 0..8 {
            let Some((revision, mut doc)) = self.status(request_id).await? else {
                return Err(ErrorKind::StatusMissing(request_id.to_owned()).into());
            };
            change(&mut doc);
            let bytes = serde_json::to_vec(&doc).map_err(STORE.corrupt(request_id))?;
            match self
                .results
                .update(request_id, bytes.into(), revision)
                .await
            {
                Ok(_) => return Ok(doc),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(full_or_failed(e)),
            }
        }
        Err(ErrorKind::Contended(request_id.to_owned()).into())
    }

    /// Status documents of a request as they change, the current one first.
    pub async fn watch(
        &self,
        request_id: &str,
    ) -> Result<BoxStream<'static, StatusDoc>, GatewayError> {
        let watch = self
            .results
            .watch_with_history(request_id)
            .await
            .map_err(js)?;
        Ok(watch
            .filter_map(|entry| async move {
                let entry = entry.ok()?;
                if entry.operation != kv::Operation::Put {
                    return None;
                }
                serde_json::from_slice::<StatusDoc>(&entry.value).ok()
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::store::tests::job;

    #[test]
    fn a_finished_document_carries_the_synchronous_answer() {
        let mut doc = StatusDoc::pending(&job());
        assert!(!doc.is_final());
        assert_eq!(
            doc.callback.as_ref().map(|c| c.state.as_str()),
            Some("waiting")
        );
        doc.finish(200, br#"{"complete":true}"#);
        assert_eq!(doc.status, JobStatus::Completed);
        assert_eq!(
            doc.callback.as_ref().map(|c| c.state.as_str()),
            Some("pending")
        );
        let v = serde_json::to_value(&doc).expect("json");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["http_status"], 200);
        assert_eq!(v["result"]["complete"], true);
        let mut failed = StatusDoc::pending(&job());
        failed.finish(504, br#"{"status":504}"#);
        assert_eq!(failed.status, JobStatus::Failed);
    }
}
