//! Asynchronous requests that are never lost.
//!
//! An accepted request is a [`Job`] on the JetStream work-queue stream `BUSGATE_REQUESTS`
//! (deduplicated by request id) and a `pending` [`StatusDoc`] in the KV bucket
//! `busgate-results`; the client's 202 is sent only after both. Every gateway instance pulls
//! from one durable consumer and runs the same gather as a synchronous request; the final
//! document is written before the message is acked, so a gateway that dies mid-gather leaves
//! the message unacked and another instance (or the same one, restarted) finishes it. A job
//! that keeps failing ends as `failed` after `max_deliver` deliveries, never as a loop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, kv, stream, AckKind};
use async_nats::Client;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use busgate_shared::subject;

use crate::auth::hex;
use crate::clock::rfc3339;
use crate::config::settings::{Discard, JobsSettings};
use crate::config::store::read_from_leader;
use crate::error::{ErrorKind, GatewayError, Store};
use crate::route::{Call, Runner};

/// The store this module owns, as errors name it.
const STORE: Store = Store::Requests;

/// A JetStream or KV failure of this store.
fn js(e: impl Into<async_nats::Error>) -> GatewayError {
    STORE.failed(e)
}

/// An accepted asynchronous request, as published to the work queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The run of the route. Its request id is also the KV key and the JetStream message id.
    #[serde(flatten)]
    pub call: Call,
    /// Where to POST the result, if anywhere (checked at submit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

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
            submitted_at: rfc3339(SystemTime::now()),
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

/// A write the store refused because a stream or bucket is at its limits is `QueueFull`
/// (503 `queue-full`); anything else is a store failure.
fn full_or_failed(e: impl std::error::Error + Send + Sync + 'static) -> GatewayError {
    if is_full(&e) {
        ErrorKind::QueueFull.into()
    } else {
        js(e)
    }
}

/// Whether JetStream refused a write because a stream (a bucket is one too) is full: its
/// error code 10077 ("maximum messages exceeded", "maximum bytes exceeded"), somewhere in the
/// chain of sources.
fn is_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(js) = e.downcast_ref::<async_nats::jetstream::Error>() {
            if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_STORE_FAILED {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// How long a submit keeps trying a write that failed for a moment: a 3-node cluster elects
/// a new leader for a stream within a few seconds of losing one (measured: 4 to 7 s after a
/// kill -9, nats-server's election timeouts being 4 to 9 s), and the writes in between find
/// nobody to answer them. A submit waits that out rather than refuse the request.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(10);

/// Runs `write` until it succeeds, fails for good (a full stream), or [`SUBMIT_PATIENCE`]
/// has passed. Only idempotent writes: a put of the same document, a publish deduplicated by
/// its message id.
async fn patiently<F, Fut>(mut write: F) -> Result<(), GatewayError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), GatewayError>>,
{
    let until = tokio::time::Instant::now() + SUBMIT_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.kind, ErrorKind::QueueFull) => return Err(e),
            Err(e) if tokio::time::Instant::now() + delay >= until => return Err(e),
            Err(e) => {
                debug!(error = %e, retry_in = ?delay, "a submit's write failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// What an idempotency key claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is new and now maps to the given request id.
    New,
    /// The key was used with the same request, which is queued: its request id.
    Repeat(String),
    /// The key names a request of the same fingerprint that its submit never confirmed queued
    /// and that is [`CLAIM_GRACE`] old (its gateway, or its connection, died in between):
    /// this submit queues it again under that request id (see [`Jobs::resume`]).
    Resume(String),
    /// A submit of the same request holds the key and may still be queueing it.
    InProgress,
    /// The key was used with a different request.
    Conflict,
}

/// How long a claimed idempotency key may wait for its submit to confirm the request queued
/// before a repeat takes the submit over: longer than a submit's two JetStream writes may take.
pub const CLAIM_GRACE: Duration = Duration::from_secs(30);

/// What an idempotency key maps to. A key is claimed (`queued: false`) before anything is
/// written and confirmed (`queued: true`) once the request is queued, so that a key is never
/// taken to name a request that is not queued.
#[derive(Serialize, Deserialize)]
struct KeyRecord {
    request_id: String,
    fingerprint: String,
    /// The request is queued. Records of earlier gateways lack it: they are checked like a
    /// claim that was never confirmed.
    #[serde(default)]
    queued: bool,
    /// When it was claimed (unix ms).
    #[serde(default)]
    claimed_ms: u64,
}

/// The KV key of an idempotency key: client text never becomes a KV key, a hash of it does.
fn key_of(client: &str, key: &str) -> String {
    hex(&Sha256::digest(format!("{client}\0{key}").as_bytes()))
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a claim found under a key that exists: pure, so that it is unit-tested.
fn judge(existing: &KeyRecord, fingerprint: &str, now_ms: u64) -> Claim {
    if existing.fingerprint != fingerprint {
        Claim::Conflict
    } else if existing.queued {
        Claim::Repeat(existing.request_id.clone())
    } else if now_ms.saturating_sub(existing.claimed_ms)
        < u64::try_from(CLAIM_GRACE.as_millis()).unwrap_or(u64::MAX)
    {
        Claim::InProgress
    } else {
        Claim::Resume(existing.request_id.clone())
    }
}

/// JetStream streams and KV buckets of asynchronous requests.
pub struct Jobs {
    js: jetstream::Context,
    results: kv::Store,
    keys: kv::Store,
    settings: JobsSettings,
    callback_ack_wait: Duration,
}

impl Jobs {
    /// Creates (or finds) the streams and buckets.
    pub async fn setup(
        nats: &Client,
        settings: &JobsSettings,
        callback_timeout: Duration,
    ) -> Result<Self, GatewayError> {
        let context = jetstream::new(nats.clone());
        for (name, subj, limits) in [
            (
                subject::REQUESTS_STREAM,
                subject::REQUESTS_SUBJECT,
                &settings.requests,
            ),
            (
                subject::CALLBACKS_STREAM,
                subject::CALLBACKS_SUBJECT,
                &settings.callbacks,
            ),
        ] {
            // create_or_update: changed limits take effect at the next start.
            context
                .create_or_update_stream(stream::Config {
                    name: name.into(),
                    subjects: vec![subj.into()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    num_replicas: settings.replicas,
                    duplicate_window: Duration::from_secs(120),
                    max_messages: limits.max_msgs,
                    max_bytes: limits.max_bytes,
                    discard: match limits.discard {
                        Discard::New => stream::DiscardPolicy::New,
                        Discard::Old => stream::DiscardPolicy::Old,
                    },
                    ..Default::default()
                })
                .await
                .map_err(js)?;
        }
        let bucket = |name: &str, ttl: Duration, max_bytes: i64, description: &str| kv::Config {
            bucket: name.into(),
            description: description.into(),
            history: 1,
            max_age: ttl,
            max_bytes,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let results = context
            .create_or_update_key_value(bucket(
                subject::RESULTS_BUCKET,
                settings.result_ttl,
                settings.results_max_bytes,
                "status documents of asynchronous requests",
            ))
            .await
            .map_err(js)?;
        let keys = context
            .create_or_update_key_value(bucket(
                subject::IDEMPOTENCY_BUCKET,
                settings.idempotency_ttl,
                settings.idempotency_max_bytes,
                "idempotency keys of asynchronous requests",
            ))
            .await
            .map_err(js)?;
        let results = read_from_leader(&context, results, settings.replicas)
            .await
            .map_err(js)?;
        let keys = read_from_leader(&context, keys, settings.replicas)
            .await
            .map_err(js)?;
        Ok(Jobs {
            js: context,
            results,
            keys,
            settings: settings.clone(),
            callback_ack_wait: callback_timeout + Duration::from_secs(30),
        })
    }

    /// Stores the pending document and publishes the job; returns once JetStream acked both.
    pub async fn submit(&self, job: &Job) -> Result<(), GatewayError> {
        let request_id = &job.call.request_id;
        let doc =
            serde_json::to_vec(&StatusDoc::pending(job)).map_err(STORE.corrupt(request_id))?;
        let doc = Bytes::from(doc);
        patiently(|| async {
            self.results
                .put(request_id, doc.clone())
                .await
                .map(drop)
                .map_err(full_or_failed)
        })
        .await?;
        if let Err(e) = patiently(|| self.publish(job)).await {
            // The pending document of a request that was not queued would never finish.
            if let Err(purge) = self.results.purge(request_id).await {
                warn!(request_id, error = %purge, "cannot remove the document of a refused request");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Publishes a job, deduplicated by its request id; returns once JetStream acked it.
    async fn publish(&self, job: &Job) -> Result<(), GatewayError> {
        let request_id = &job.call.request_id;
        let payload = serde_json::to_vec(job).map_err(STORE.corrupt(request_id))?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(request_id);
        let queued = async {
            self.js
                .send_publish(subject::REQUESTS_SUBJECT, publish)
                .await?
                .await
        };
        queued.await.map(drop).map_err(full_or_failed)
    }

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
                Err(e) => return Err(js(e)),
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

    /// Claims an idempotency key for `request_id` (atomic across instances). A new claim is
    /// not confirmed: [`Jobs::confirm`] does that once the request is queued, and
    /// [`Jobs::release`] gives the key up when it could not be.
    pub async fn claim(
        &self,
        client: &str,
        key: &str,
        fingerprint: &str,
        request_id: &str,
    ) -> Result<Claim, GatewayError> {
        let hashed = key_of(client, key);
        let record = |request_id: &str| {
            serde_json::to_vec(&KeyRecord {
                request_id: request_id.to_owned(),
                fingerprint: fingerprint.to_owned(),
                queued: false,
                claimed_ms: now_ms(),
            })
            .map_err(STORE.corrupt(&hashed))
        };
        // A few rounds: the key may be released or taken over between our reads.
        for _ in 0..4 {
            match self.keys.create(&hashed, record(request_id)?.into()).await {
                Ok(_) => return Ok(Claim::New),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(js(e)),
            }
            let Some(entry) = self.keys.entry(&hashed).await.map_err(js)? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let existing: KeyRecord =
                serde_json::from_slice(&entry.value).map_err(STORE.corrupt(&hashed))?;
            match judge(&existing, fingerprint, now_ms()) {
                Claim::Resume(id) => {
                    // Taken over with compare-and-set, so that one repeat resumes it.
                    match self
                        .keys
                        .update(&hashed, record(&id)?.into(), entry.revision)
                        .await
                    {
                        Ok(_) => return Ok(Claim::Resume(id)),
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => return Err(js(e)),
                    }
                }
                other => return Ok(other),
            }
        }
        Err(ErrorKind::Contended(hashed).into())
    }

    /// Confirms a claimed key: its request is queued. A failure leaves the claim unconfirmed,
    /// which a repeat after [`CLAIM_GRACE`] resumes (harmlessly: the request is queued).
    pub async fn confirm(&self, client: &str, key: &str, fingerprint: &str, request_id: &str) {
        let hashed = key_of(client, key);
        let record = KeyRecord {
            request_id: request_id.to_owned(),
            fingerprint: fingerprint.to_owned(),
            queued: true,
            claimed_ms: now_ms(),
        };
        let written = match serde_json::to_vec(&record) {
            Ok(bytes) => self.keys.put(&hashed, bytes.into()).await.map_err(js),
            Err(e) => Err(STORE.corrupt(&hashed)(e)),
        };
        if let Err(e) = written {
            warn!(request_id, error = %e, "cannot confirm an idempotency key");
        }
    }

    /// Releases a key whose request could not be accepted. A failure leaves the claim
    /// unconfirmed, which a repeat after [`CLAIM_GRACE`] resumes.
    pub async fn release(&self, client: &str, key: &str) {
        if let Err(e) = self.keys.purge(key_of(client, key)).await {
            warn!(error = %e, "cannot release an idempotency key");
        }
    }

    /// Queues again a request whose idempotency key was claimed by a submit that never
    /// confirmed it ([`Claim::Resume`]). That submit may have written the pending document,
    /// published the job, both or neither: a final document is left alone; a pending one gets
    /// the job published again (a duplicate within the stream's two-minute window is dropped
    /// by its message id; a later one finds the document final and is acked); a missing one
    /// is submitted anew.
    pub async fn resume(&self, job: &Job) -> Result<(), GatewayError> {
        let request_id = &job.call.request_id;
        match self.status(request_id).await? {
            Some((_, doc)) if doc.is_final() => Ok(()),
            Some(_) => self.publish(job).await,
            None => self.submit(job).await,
        }
    }

    /// Queues the callback delivery of a finished request (deduplicated per request).
    pub async fn schedule_callback(&self, request_id: &str) -> Result<(), GatewayError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(request_id.to_owned()))
            .message_id(format!("callback-{request_id}"));
        self.js
            .send_publish(subject::CALLBACKS_SUBJECT, publish)
            .await
            .map_err(js)?
            .await
            .map_err(js)?;
        Ok(())
    }

    async fn consumer(
        &self,
        stream: &str,
        name: &str,
        ack_wait: Duration,
        max_ack_pending: i64,
    ) -> Result<consumer::PullConsumer, GatewayError> {
        let stream = self.js.get_stream(stream).await.map_err(js)?;
        stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait,
                    // Bounded by us: the final failure is recorded before the message goes.
                    max_deliver: -1,
                    max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(js)
    }
}

impl Jobs {
    /// The durable consumer of callback deliveries.
    pub async fn callbacks_consumer(&self) -> Result<consumer::PullConsumer, GatewayError> {
        self.consumer(
            subject::CALLBACKS_STREAM,
            subject::CALLBACKS_CONSUMER,
            self.callback_ack_wait,
            20_000,
        )
        .await
    }

    /// How long a poll's `Prefer: wait` and an event stream may last.
    pub fn settings(&self) -> &JobsSettings {
        &self.settings
    }
}

/// How long one pull for asynchronous requests waits for messages before it is made again.
/// It bounds how long a stopping instance waits for the pull it has out.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Pulls asynchronous requests and runs them until `stop` turns true.
///
/// An instance asks JetStream for as many requests as it can start at once (its free
/// permits of `jobs.concurrency`), never more: a request it holds is a request it runs, so
/// none waits behind a busy instance while another is idle, and a stopping instance hands
/// back at once (NAK without delay) whatever reaches it after the stop.
pub async fn run_requests(
    jobs: Arc<Jobs>,
    runner: Runner,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), GatewayError> {
    let consumer = jobs
        .consumer(
            subject::REQUESTS_STREAM,
            subject::REQUESTS_CONSUMER,
            jobs.settings.ack_wait,
            20_000,
        )
        .await?;
    let permits = Arc::new(Semaphore::new(jobs.settings.concurrency));
    let mut tasks = JoinSet::new();
    info!(
        concurrency = jobs.settings.concurrency,
        "processing asynchronous requests"
    );
    let mut retry = crate::clock::retry_backoff().stream();
    'pulling: loop {
        let first = tokio::select! {
            _ = stop.changed() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let free = permits.available_permits() + 1;
        let batch = consumer
            .batch()
            .max_messages(free)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                let delay = retry.next_delay();
                warn!(error = %e, retry_in = ?delay, "pulling asynchronous requests");
                drop(first);
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        retry.reset();
        let mut held = Some(first);
        loop {
            let next = tokio::select! {
                _ = stop.changed() => {
                    hand_back(&mut batch).await;
                    break 'pulling;
                }
                next = batch.next() => next,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    debug!(error = %e, "pull for asynchronous requests ended");
                    break;
                }
                None => break,
            };
            // One permit per message asked for: the first is held, the others were free
            // when the pull was made and only this loop takes permits.
            let permit = match held.take() {
                Some(p) => Some(p),
                None => permits.clone().try_acquire_owned().ok(),
            };
            let Some(permit) = permit else {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                continue;
            };
            let (jobs, runner) = (jobs.clone(), runner.clone());
            tasks.spawn(async move {
                process(&jobs, &runner, message).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
    }
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        warn!(
            abandoned = tasks.len(),
            "asynchronous requests left unacked for another instance"
        );
        tasks.abort_all();
    }
    Ok(())
}

/// Hands back what the pull still brings after a stop, at once (NAK without delay) so that
/// another instance takes it now rather than after `ack_wait`. Bounded by the pull's expiry.
async fn hand_back(batch: &mut consumer::pull::Batch) {
    let mut handed = 0u32;
    let drained = tokio::time::timeout(PULL_EXPIRES + Duration::from_millis(500), async {
        while let Some(next) = batch.next().await {
            if let Ok(message) = next {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                handed += 1;
            }
        }
    })
    .await;
    if handed > 0 || drained.is_err() {
        info!(handed, "asynchronous requests not started handed back");
    }
}

/// How long a request waits before it is tried again after its `delivered`-th delivery failed
/// transiently (the bus could not carry it, or the store did not answer): 1 s, doubling, at
/// most 30 s. Every delivery counts towards `jobs.max_deliver`, so the doubling is what lets
/// the default 5 deliveries span a stream's leader election (a few seconds) and more.
pub fn retry_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 5)).unwrap_or(5);
    Duration::from_secs(1u64 << doublings).min(Duration::from_secs(30))
}

/// Reads the status document of a request about to run. A missing one is read again a few
/// times (a replica of the bucket may lag the write of a submit by a moment) before it is
/// taken for gone.
async fn current_doc(jobs: &Jobs, request_id: &str) -> Result<Option<StatusDoc>, GatewayError> {
    for wait in [100, 300, 600] {
        if let Some((_, doc)) = jobs.status(request_id).await? {
            return Ok(Some(doc));
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    Ok(jobs.status(request_id).await?.map(|(_, doc)| doc))
}

/// Whether a finished request's callback was never scheduled: it waits for its first
/// attempt. (One that was attempted has its message in the callback queue, or is done.)
fn callback_unscheduled(doc: &StatusDoc) -> bool {
    doc.callback
        .as_ref()
        .is_some_and(|cb| cb.state == "pending" && cb.attempts == 0)
}

/// Schedules the callback of a finished request; when that fails, hands the message back to
/// be delivered again after [`retry_delay`] and says `false` (the caller stops there).
async fn schedule_callback_or_nak(
    jobs: &Jobs,
    message: &jetstream::Message,
    request_id: &str,
    delivered: i64,
) -> bool {
    let Err(e) = jobs.schedule_callback(request_id).await else {
        return true;
    };
    warn!(request_id, error = %e, "cannot schedule a callback, retrying later");
    let _ = message
        .ack_with(AckKind::Nak(Some(retry_delay(delivered))))
        .await;
    false
}

async fn process(jobs: &Jobs, runner: &Runner, message: jetstream::Message) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let job: Job = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(e) => {
            warn!(error = %e, "dropping an undecodable asynchronous request");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let request_id = job.call.request_id.as_str();
    match current_doc(jobs, request_id).await {
        Ok(Some(doc)) if doc.is_final() => {
            // The result is stored; the callback may not have been scheduled before the
            // instance that stored it died.
            if job.callback_url.is_some() && callback_unscheduled(&doc) {
                if !schedule_callback_or_nak(jobs, &message, request_id, delivered).await {
                    return;
                }
                info!(request_id, "callback of a finished request scheduled");
            }
            debug!(request_id, "already finished, acking a redelivery");
            let _ = message.ack().await;
            return;
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            // Its document expired, or its submit failed after publishing (the client got an
            // error): nothing can record a result, so the request ends here.
            error!(
                request_id,
                "no status document for an asynchronous request: dropping it"
            );
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
        Err(e) => {
            warn!(request_id, error = %e, "cannot read a status document, retrying later");
            let _ = message
                .ack_with(AckKind::Nak(Some(retry_delay(delivered))))
                .await;
            return;
        }
    }
    let (http_status, body) = if delivered > i64::from(jobs.settings.max_deliver) {
        warn!(
            request_id,
            delivered, "giving up on an asynchronous request"
        );
        gave_up(request_id, delivered)
    } else {
        let work = runner.attempt(&job.call);
        tokio::pin!(work);
        // Tell JetStream we are alive while a long gather runs.
        let mut ticks = tokio::time::interval(jobs.settings.ack_wait / 2);
        ticks.tick().await;
        let attempt = loop {
            tokio::select! {
                attempt = &mut work => break attempt,
                _ = ticks.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
            }
        };
        if attempt.transient && delivered < i64::from(jobs.settings.max_deliver) {
            // The bus could not carry it (a node or worker going away, a connection being
            // remade): accepted work is tried again, not finished as a failure.
            let delay = retry_delay(delivered);
            info!(
                request_id,
                delivered,
                status = attempt.status,
                retry_in = ?delay,
                "asynchronous request failed transiently, retrying later"
            );
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            return;
        }
        (attempt.status, attempt.body)
    };
    let finished = jobs
        .update(request_id, |doc| doc.finish(http_status, &body))
        .await;
    if let Err(e) = finished {
        warn!(request_id, error = %e, "cannot store a result, retrying later");
        let _ = message
            .ack_with(AckKind::Nak(Some(retry_delay(delivered))))
            .await;
        return;
    }
    if job.callback_url.is_some()
        && !schedule_callback_or_nak(jobs, &message, request_id, delivered).await
    {
        return;
    }
    if let Err(e) = message.double_ack().await {
        // The result is stored; a redelivery only finds it final and acks.
        debug!(request_id, error = %e, "ack not confirmed");
    }
}

/// The answer of a request that kept failing: a 500 problem.
fn gave_up(request_id: &str, delivered: i64) -> (u16, Vec<u8>) {
    let (status, body) = GatewayError::from(ErrorKind::ProcessingFailed {
        attempts: delivered,
    })
    .with_request(request_id)
    .problem();
    (status.as_u16(), body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            call: Call {
                request_id: "r1".into(),
                route: "order".into(),
                order_id: "A1".into(),
                client: String::new(),
                traceparent: "00-x-y-01".into(),
                headers: Vec::new(),
            },
            callback_url: Some("https://example.com/hook".into()),
        }
    }

    /// Jobs queued by an earlier gateway are flat JSON objects; a job stays one.
    #[test]
    fn a_job_is_a_flat_json_object() {
        let v = serde_json::to_value(job()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"request_id": "r1", "route": "order", "order_id": "A1",
                "client": "", "callback_url": "https://example.com/hook", "traceparent": "00-x-y-01"})
        );
        let back: Job = serde_json::from_value(v).expect("job");
        assert_eq!(back, job());
    }

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

    #[test]
    fn transient_failures_back_off_from_one_second_to_thirty() {
        let delays: Vec<u64> = (0..=8).map(|d| retry_delay(d).as_secs()).collect();
        assert_eq!(delays, [1, 1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(i64::MAX), Duration::from_secs(30));
    }

    #[test]
    fn an_idempotency_key_names_a_request_only_once_it_is_queued() {
        let record = |queued, claimed_ms| KeyRecord {
            request_id: "r1".into(),
            fingerprint: "f".into(),
            queued,
            claimed_ms,
        };
        let grace = u64::try_from(CLAIM_GRACE.as_millis()).expect("ms");
        let now = 10 * grace;
        assert_eq!(judge(&record(true, 0), "other", now), Claim::Conflict);
        assert_eq!(judge(&record(false, now), "other", now), Claim::Conflict);
        assert_eq!(
            judge(&record(true, now), "f", now),
            Claim::Repeat("r1".into())
        );
        // Claimed, not yet confirmed: its submit may still be queueing it.
        assert_eq!(judge(&record(false, now - 5), "f", now), Claim::InProgress);
        assert_eq!(
            judge(&record(false, now - grace + 1), "f", now),
            Claim::InProgress
        );
        // Never confirmed within the grace: the submit died; a repeat resumes it.
        assert_eq!(
            judge(&record(false, now - grace), "f", now),
            Claim::Resume("r1".into())
        );
        // A record of an earlier gateway (no `queued`, no time) is checked like a stale claim.
        let old: KeyRecord =
            serde_json::from_str(r#"{"request_id":"r1","fingerprint":"f"}"#).expect("record");
        assert_eq!(judge(&old, "f", now), Claim::Resume("r1".into()));
        // A clock that went backwards is not a stale claim.
        assert_eq!(
            judge(&record(false, now + 1000), "f", now),
            Claim::InProgress
        );
    }

    #[test]
    fn only_a_callback_never_attempted_is_scheduled_again() {
        let mut doc = StatusDoc::pending(&job());
        assert!(!callback_unscheduled(&doc), "waiting for the result");
        doc.finish(200, b"{}");
        assert!(callback_unscheduled(&doc));
        if let Some(cb) = doc.callback.as_mut() {
            cb.attempts = 1;
        }
        assert!(!callback_unscheduled(&doc), "attempted: its message exists");
        if let Some(cb) = doc.callback.as_mut() {
            cb.state = "delivered".into();
        }
        assert!(!callback_unscheduled(&doc));
        let mut without = StatusDoc::pending(&Job {
            callback_url: None,
            ..job()
        });
        without.finish(200, b"{}");
        assert!(!callback_unscheduled(&without));
    }

    #[tokio::test(start_paused = true)]
    async fn a_submit_waits_out_a_moment_without_a_leader_but_not_a_full_queue() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let written = patiently(|| async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n < 3 {
                Err(js("no responders"))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(written.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(100 + 200 + 400));
        // Bounded: a store that never answers is refused after SUBMIT_PATIENCE at most.
        let started = tokio::time::Instant::now();
        let refused = patiently(|| async { Err(js("no responders")) }).await;
        assert!(refused.is_err());
        assert!(started.elapsed() <= SUBMIT_PATIENCE);
        assert!(started.elapsed() >= SUBMIT_PATIENCE - Duration::from_secs(1));
        // A full queue is final at once.
        let started = tokio::time::Instant::now();
        let full = patiently(|| async { Err(ErrorKind::QueueFull.into()) }).await;
        assert!(matches!(
            full.map_err(|e| e.kind),
            Err(ErrorKind::QueueFull)
        ));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[test]
    fn giving_up_is_a_problem_document() {
        let (status, body) = gave_up("r1", 6);
        assert_eq!(status, 500);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["type"], "urn:busgate:problem:processing-failed");
    }
}
