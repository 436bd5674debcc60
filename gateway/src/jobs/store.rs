//! The JetStream streams and KV buckets of asynchronous requests, and what every stage shares:
//! the [`Job`] message, the [`Jobs`] handle (created by [`Jobs::setup`]; each stage adds its
//! own methods in its own file), the durable consumers, and how long a message waits before
//! it is delivered again ([`retry_delay`]).
//!
//! An accepted request is a [`Job`] on the JetStream work-queue stream `BUSGATE_REQUESTS`
//! (deduplicated by request id), on a subject of its own (`busgate.jobs.request.<id>`): that
//! message is its one durable write, the client's 202 is sent once JetStream acked it, and
//! while it is pending a poll on any instance finds it there. Its status document in the KV
//! bucket `busgate-results` is written when it finishes (before the message is acked), so a
//! request is always in one place or the other. Every gateway instance pulls
//! from one durable consumer and runs the same gather as a synchronous request; the final
//! document is written before the message is acked, so a gateway that dies mid-gather leaves
//! the message unacked and another instance (or the same one, restarted) finishes it. A job
//! that keeps failing ends as `failed` after `max_deliver` deliveries, never as a loop.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::Client;
use serde::{Deserialize, Serialize};

use busgate_shared::backoff::ExponentialBackoff;
use busgate_shared::subject;

use crate::config::settings::{Discard, JobsSettings};
use crate::config::store::read_from_leader;
use crate::error::{ErrorKind, GatewayError, Store};
use crate::jobs::room::{self, Room};
use crate::route::Call;

/// The store this module owns, as errors name it.
pub(super) const STORE: Store = Store::Requests;

/// A JetStream or KV failure of this store.
pub(super) fn js(e: impl Into<async_nats::Error>) -> GatewayError {
    STORE.failed(e)
}

/// A write the store refused because a stream or bucket is at its limits is `QueueFull`
/// (503 `queue-full`); anything else is a store failure.
pub(super) fn full_or_failed(e: impl std::error::Error + Send + Sync + 'static) -> GatewayError {
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

/// An accepted asynchronous request, as published to the work queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The run of the route. Its request id is also the KV key and the JetStream message id.
    #[serde(flatten)]
    pub call: Call,
    /// Where to POST the result, if anywhere (checked at submit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// When it was accepted (RFC 3339): the pending status document is made from the job
    /// (jobs of earlier gateways lack it; their document was written at submit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
}

/// JetStream streams and KV buckets of asynchronous requests: a cheap handle, shared by the
/// HTTP handlers, the processor and the callback deliverer.
pub struct Jobs {
    pub(super) js: jetstream::Context,
    /// The work queue, where a pending request is found by its subject.
    pub(super) requests: Box<stream::Stream<()>>,
    pub(super) results: kv::Store,
    pub(super) keys: kv::Store,
    pub(super) settings: JobsSettings,
    pub(super) callback_ack_wait: Duration,
    /// Whether the results bucket can take more requests' documents.
    pub(super) room: Room,
}

impl Jobs {
    /// Creates (or finds) the streams and buckets.
    pub async fn setup(
        nats: &Client,
        settings: &JobsSettings,
        callback_timeout: Duration,
    ) -> Result<Self, GatewayError> {
        let context = jetstream::new(nats.clone());
        for (name, subjects, limits) in [
            (
                subject::REQUESTS_STREAM,
                // Each request on its own subject; the old single subject still taken.
                vec![
                    subject::REQUESTS_SUBJECT.into(),
                    subject::REQUESTS_ALL.into(),
                ],
                &settings.requests,
            ),
            (
                subject::CALLBACKS_STREAM,
                vec![subject::CALLBACKS_SUBJECT.into()],
                &settings.callbacks,
            ),
        ] {
            // create_or_update: changed limits take effect at the next start (boxed: once, at
            // setup, it need not weigh on the start-up future).
            Box::pin(context.create_or_update_stream(stream::Config {
                name: name.into(),
                subjects,
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
            }))
            .await
            .map_err(js)?;
        }
        let requests = Box::new(
            context
                .get_stream_no_info(subject::REQUESTS_STREAM)
                .await
                .map_err(js)?,
        );
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
            requests,
            results,
            keys,
            settings: settings.clone(),
            callback_ack_wait: callback_timeout + Duration::from_secs(30),
            room: Room::default(),
        })
    }

    pub(super) async fn consumer(
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

    /// Measures the room in the results bucket until `drain` is signalled ([`room::watch`]).
    pub async fn watch_room(&self, drain: busgate_shared::drain::Watch) {
        room::watch(&self.js, &self.room, drain).await;
    }

    /// How long a poll's `Prefer: wait` and an event stream may last.
    pub fn settings(&self) -> &JobsSettings {
        &self.settings
    }
}

/// The policy of redeliveries after a transient failure (the bus could not carry a request,
/// or the store did not answer): 1 s, doubling, at most 30 s, with up to 20 % jitter so that
/// the requests one outage failed do not all come back at the same instant.
pub fn redelivery() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.2)
}

/// How long a message waits before it is delivered again after its `delivered`-th delivery
/// failed transiently ([`redelivery`]: about 1 s after the first, doubling, at most 30 s).
/// Every delivery counts towards `jobs.max_deliver`, so the doubling is what lets the default
/// 5 deliveries span a stream's leader election (a few seconds) and more.
pub fn retry_delay(delivered: i64) -> Duration {
    redelivery().delay_for(redelivery_attempt(delivered))
}

/// The attempt number of the policy for a JetStream delivery count (the first delivery's
/// retry is attempt 0).
fn redelivery_attempt(delivered: i64) -> u32 {
    u32::try_from(delivered.saturating_sub(1).max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn job() -> Job {
        Job {
            call: Call {
                request_id: "r1".into(),
                route: "order".into(),
                order_id: "A1".into(),
                client: String::new(),
                traceparent: "00-x-y-01".into(),
                headers: Vec::new(),
                timeout: None,
            },
            callback_url: Some("https://example.com/hook".into()),
            submitted_at: None,
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
    fn transient_failures_back_off_from_one_second_to_thirty() {
        let policy = redelivery();
        let delay = |delivered: i64, unit: f64| policy.delay(redelivery_attempt(delivered), unit);
        let ms = Duration::from_millis;
        // Without jitter, exactly the schedule: 1 s after the first delivery, doubling, 30 s.
        let least: Vec<Duration> = (0..=8).map(|d| delay(d, 0.0)).collect();
        let secs = [1, 1, 2, 4, 8, 16, 30, 30, 30].map(Duration::from_secs);
        assert_eq!(least, secs);
        assert_eq!(delay(i64::MAX, 0.0), Duration::from_secs(30));
        // With the most jitter, at most a fifth more, and never past thirty.
        let most: Vec<Duration> = (0..=8).map(|d| delay(d, 1.0)).collect();
        let jittered = [1200, 1200, 2400, 4800, 9600, 19200, 30000, 30000, 30000].map(ms);
        assert_eq!(most, jittered);
        // A random draw stays between the two.
        for (delivered, (least, most)) in (0i64..).zip(least.iter().zip(&most)) {
            let drawn = retry_delay(delivered);
            assert!((*least..=*most).contains(&drawn), "{delivered}: {drawn:?}");
        }
        assert_eq!(retry_delay(i64::MAX), Duration::from_secs(30));
    }
}
