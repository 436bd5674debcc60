//! Signed callbacks: where a finished asynchronous request is POSTed.
//!
//! - Scheduling: [`Jobs::schedule_callback`] queues the delivery of a finished request on the
//!   JetStream stream `BUSGATE_CALLBACKS` (one message per request), which the processor calls
//!   once the result is stored.
//! - [`Signer`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`).
//! - [`Deliverer`]: the worker that POSTs, records the delivery state in the status document,
//!   and schedules retries with a JetStream NAK delay, so a restart loses none. It reaches
//!   receivers only through the SSRF [`Guard`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use busgate_shared::{drain, subject, Error};

use crate::clock::rfc3339;
use crate::config::settings::callback_key;
use crate::error::GatewayError;
use crate::jobs::guard::{http_client, Guard};
use crate::jobs::pull::{run_within, Puller};
use crate::jobs::results::{CallbackState, StatusDoc};
use crate::jobs::store::{js, retry_delay, Jobs};

impl Jobs {
    /// Queues the callback delivery of a finished request (deduplicated per request). The
    /// submit's `traceparent` travels in the message's headers: each delivery's span links to
    /// the client's trace.
    pub async fn schedule_callback(
        &self,
        request_id: &str,
        traceparent: &str,
    ) -> Result<(), GatewayError> {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(request_id.to_owned()))
            .message_id(format!("callback-{request_id}"));
        if !traceparent.is_empty() {
            publish = publish.header(busgate_shared::header::TRACEPARENT, traceparent);
        }
        self.js
            .send_publish(subject::CALLBACKS_SUBJECT, publish)
            .await
            .map_err(js)?
            .await
            .map_err(js)?;
        Ok(())
    }
}

/// Whether a finished request's callback was never scheduled: it waits for its first
/// attempt. (One that was attempted has its message in the callback queue, or is done.)
pub fn callback_unscheduled(doc: &StatusDoc) -> bool {
    doc.callback
        .as_ref()
        .is_some_and(|cb| cb.state == "pending" && cb.attempts == 0)
}

/// Whether a callback's outcome is recorded (delivered, gone, or given up on): a redelivery
/// of its message is acked without another attempt.
fn callback_settled(cb: &CallbackState) -> bool {
    matches!(cb.state.as_str(), "delivered" | "gone" | "failed")
}

/// Signs callback bodies per Standard Webhooks.
#[derive(Clone)]
pub struct Signer {
    /// The keyed MAC, cloned for every signature.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer for a `whsec_<base64>` secret (at least 16 bytes of key).
    pub fn new(secret: &str) -> Result<Self, Error> {
        let key = callback_key(secret)?;
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .map_err(|_| Error::invalid("callbacks.secret", "not a usable HMAC key"))?;
        Ok(Signer { mac })
    }

    /// A new random secret, for `busgate up`.
    pub fn generate_secret() -> String {
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!("v1,{signature}")
    }
}

/// Unix seconds now.
pub fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the deliverer pulls, as the logs name it.
const WHAT: &str = "callbacks";

/// Delivers callbacks until `drain` is signalled, then finishes the attempts in flight and
/// releases it. One JetStream message per request; a failed attempt is NAKed with the next
/// retry delay, so the schedule survives restarts. Nothing else stops it: a failed pull or a
/// consumer it cannot find is retried ([`Puller`]).
///
/// At most `concurrency` attempts at once, and only as many messages pulled as may start:
/// the rest wait in the stream, where another instance may take them (a gateway that dies
/// strands only the attempts it was making, until `ack_wait`).
pub async fn run_deliveries(jobs: Arc<Jobs>, deliverer: Deliverer, drain: drain::Watch) {
    let mut puller = Puller::new(
        jobs.clone(),
        (subject::CALLBACKS_STREAM, subject::CALLBACKS_CONSUMER),
        jobs.callback_ack_wait,
        WHAT,
        drain.clone(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(deliverer.concurrency));
    // Held until the attempts in flight are done: the drain waits for it.
    let release = run_within(&mut puller, &slots, &mut tasks, &drain, |message| {
        let (jobs, deliverer) = (jobs.clone(), deliverer.clone());
        async move { deliverer.deliver(&jobs, message).await }
    })
    .await;
    // Attempts in flight are bounded by the delivery timeout.
    while tasks.join_next().await.is_some() {}
    drop(release);
}

/// Makes one delivery attempt per message and records it.
#[derive(Clone)]
pub struct Deliverer {
    http: reqwest::Client,
    guard: Guard,
    signer: Signer,
    retry: Arc<[Duration]>,
    /// Attempts at once (`callbacks.concurrency`).
    concurrency: usize,
}

enum Attempt {
    Delivered(u16),
    Gone,
    Failed {
        status: Option<u16>,
        error: Option<String>,
    },
}

impl Deliverer {
    /// A deliverer with this signer, guard, retry schedule and cap on attempts at once.
    pub fn new(
        signer: Signer,
        guard: Guard,
        retry: Vec<Duration>,
        timeout: Duration,
        concurrency: usize,
    ) -> reqwest::Result<Self> {
        Ok(Deliverer {
            http: http_client(&guard, timeout)?,
            guard,
            signer,
            retry: retry.into(),
            concurrency: concurrency.max(1),
        })
    }

    async fn deliver(&self, jobs: &Jobs, message: async_nats::jetstream::Message) {
        use jetstream::AckKind;
        let attempt =
            u32::try_from(message.info().map(|i| i.delivered).unwrap_or(1)).unwrap_or(u32::MAX);
        let request_id = String::from_utf8_lossy(&message.payload).into_owned();
        let doc = match jobs.status(&request_id).await {
            Ok(Some((_, doc))) => doc,
            Ok(None) => {
                tracing::warn!(%request_id, "no status document for a callback, dropping it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => {
                // Backing off: every delivery counts as an attempt, and a store that is
                // electing a leader for a few seconds should not use up the schedule.
                let delay = retry_delay(i64::from(attempt));
                tracing::warn!(%request_id, error = %e, retry_in = ?delay, "cannot read a status document for a callback");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                return;
            }
        };
        let Some(url) = doc.callback.as_ref().map(|c| c.url.clone()) else {
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        if doc.callback.as_ref().is_some_and(callback_settled) {
            // An instance recorded the outcome and died before its ack: not sent again.
            tracing::debug!(%request_id, "callback already settled, acking a redelivery");
            let _ = message.ack().await;
            return;
        }
        let submit = message
            .headers
            .as_ref()
            .and_then(|h| h.get(busgate_shared::header::TRACEPARENT))
            .map(|v| v.as_str());
        let span = super::trace::delivery(&url, &request_id, attempt, submit);
        let outcome = self.attempt(&url, &request_id, &doc).await;
        if let Some(span) = span {
            let (status, error) = match &outcome {
                Attempt::Delivered(status) => (Some(*status), None),
                Attempt::Gone => (Some(410), None),
                Attempt::Failed { status, error } => (*status, error.as_deref().or(Some("failed"))),
            };
            super::trace::delivered(span, status, error);
        }
        let now = SystemTime::now();
        // The next delay, if any attempt is left: retry[attempt - 1], ±10 % jitter.
        let next_delay = self
            .retry
            .get(attempt as usize - 1)
            .map(|d| jitter(*d, &request_id, attempt));
        let recorded = jobs
            .update(&request_id, |doc| {
                let Some(cb) = doc.callback.as_mut() else {
                    return;
                };
                cb.attempts = attempt;
                cb.next_attempt_at = None;
                match &outcome {
                    Attempt::Delivered(status) => {
                        cb.state = "delivered".into();
                        cb.last_status = Some(*status);
                        cb.last_error = None;
                        cb.delivered_at = Some(rfc3339(now));
                    }
                    Attempt::Gone => {
                        cb.state = "gone".into();
                        cb.last_status = Some(410);
                    }
                    Attempt::Failed { status, error } => {
                        cb.last_status = *status;
                        cb.last_error.clone_from(error);
                        match next_delay {
                            Some(delay) => {
                                cb.state = "pending".into();
                                cb.next_attempt_at = Some(rfc3339(now + delay));
                            }
                            None => cb.state = "failed".into(),
                        }
                    }
                }
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(%request_id, error = %e, "cannot record a callback attempt");
        }
        let ack = match (&outcome, next_delay) {
            (Attempt::Failed { .. }, Some(delay)) => {
                tracing::info!(%request_id, attempt, ?delay, "callback failed, retrying later");
                message.ack_with(AckKind::Nak(Some(delay))).await
            }
            (Attempt::Failed { .. }, None) => {
                tracing::warn!(%request_id, attempt, "callback failed, giving up");
                message.ack().await
            }
            _ => message.ack().await,
        };
        if let Err(e) = ack {
            tracing::debug!(%request_id, error = %e, "callback ack not sent");
        }
    }

    async fn attempt(&self, url: &str, request_id: &str, doc: &StatusDoc) -> Attempt {
        // The whole check again (the allowlist or DNS may have changed since the submit): the
        // port, and IP literals, which do not pass through the resolver. `last_error` is
        // public (a poll shows it): it gets the class, the log the detail.
        if let Err(refusal) = self.guard.check(url).await {
            tracing::info!(%request_id, class = ?refusal.class, detail = %refusal.detail, "callback refused");
            return Attempt::Failed {
                status: None,
                error: Some(refusal.to_string()),
            };
        }
        let body = match serde_json::to_vec(doc) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%request_id, error = %e, "cannot encode a callback body");
                return Attempt::Failed {
                    status: None,
                    error: Some("internal".into()),
                };
            }
        };
        let timestamp = unix_seconds(SystemTime::now());
        let webhook_id = format!("msg_{request_id}");
        let signature = self.signer.sign(&webhook_id, timestamp, &body);
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered(r.status().as_u16()),
            Ok(r) if r.status() == reqwest::StatusCode::GONE => Attempt::Gone,
            Ok(r) => Attempt::Failed {
                status: Some(r.status().as_u16()),
                error: None,
            },
            Err(e) => {
                tracing::info!(%request_id, error = %e, "callback attempt failed");
                Attempt::Failed {
                    status: None,
                    error: Some(attempt_error(&e).to_owned()),
                }
            }
        }
    }
}

/// What `last_error` says about a failed attempt: a class, never reqwest's words (they carry
/// the URL, and what the guard said about its addresses).
fn attempt_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

/// `delay` ±10 %, derived from the request and attempt so that retries of many callbacks spread.
fn jitter(delay: Duration, request_id: &str, attempt: u32) -> Duration {
    let seed = request_id.bytes().fold(u64::from(attempt), |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let permille = 900 + (seed % 201); // 900..=1100
    delay * u32::try_from(permille).unwrap_or(1000) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::store::tests::job;
    use crate::jobs::store::Job;

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
        let settled = |state: &str| {
            let mut cb = doc.callback.clone().expect("callback");
            cb.state = state.into();
            callback_settled(&cb)
        };
        assert!(settled("delivered") && settled("gone") && settled("failed"));
        assert!(!settled("pending") && !settled("waiting"));
        let mut without = StatusDoc::pending(&Job {
            callback_url: None,
            ..job()
        });
        without.finish(200, b"{}");
        assert!(!callback_unscheduled(&without));
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(Signer::new("whsec_short").is_err());
        assert!(Signer::new("whsec_!!!").is_err());
        assert!(Signer::new(&Signer::generate_secret()).is_ok());
    }
}
