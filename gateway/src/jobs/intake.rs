//! Intake: a submit's one durable write, the job on the work queue (on its own subject; the
//! queued message is the pending request), acked by JetStream before the client's 202 (retried
//! patiently through a leader election), and the idempotency keys that make a repeated submit name the
//! request it repeats (the KV bucket `busgate-idempotency`: claim, confirm, release, resume).

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use busgate_shared::backoff::ExponentialBackoff;
use busgate_shared::subject;

use crate::error::{ErrorKind, GatewayError};
use crate::jobs::store::{full_or_failed, js, Job, Jobs, STORE};

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
    let mut backoff = submit_backoff().stream();
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.kind, ErrorKind::QueueFull) => return Err(e),
            Err(e) => {
                let delay = backoff.next_delay();
                if tokio::time::Instant::now() + delay >= until {
                    return Err(e);
                }
                debug!(error = %e, retry_in = ?delay, "a submit's write failed, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The delays between a submit's tries of one write: 100 ms, doubling, at most 1 s, with up
/// to half again as jitter.
fn submit_backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.5)
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
/// before a repeat takes the submit over: longer than a submit's JetStream write may take.
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
    hex::encode(Sha256::digest(format!("{client}\0{key}").as_bytes()))
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

impl Jobs {
    /// Publishes the job, its one durable write (the pending request is the queued message;
    /// its status document is written when it finishes); returns once JetStream acked it.
    /// Submits in flight at once are pipelined on the connection: each awaits only its own
    /// acknowledgement.
    ///
    /// Refused with `QueueFull` when the results bucket could not take the documents of the
    /// requests already queued ([`room`](super::room)).
    pub async fn submit(&self, job: &Job) -> Result<(), GatewayError> {
        if !self.room.admits() {
            return Err(ErrorKind::QueueFull.into());
        }
        let request_id = &job.call.request_id;
        let payload = Bytes::from(serde_json::to_vec(job).map_err(STORE.corrupt(request_id))?);
        patiently(|| self.publish(request_id, payload.clone())).await?;
        self.room.accepted();
        Ok(())
    }

    /// Publishes a job on its own subject, deduplicated by its request id; returns once
    /// JetStream acked it.
    async fn publish(&self, request_id: &str, payload: Bytes) -> Result<(), GatewayError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(request_id);
        let queued = async {
            self.js
                .send_publish(subject::request_job(request_id), publish)
                .await?
                .await
        };
        queued.await.map(drop).map_err(full_or_failed)
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
                Err(e) => return Err(full_or_failed(e)),
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
    /// confirmed it ([`Claim::Resume`]). That submit may have published the job or not: a
    /// final document is left alone; a job still queued is left to run; else it is
    /// submitted anew (a duplicate within the stream's two-minute window is dropped by its
    /// message id; a later one finds the document final and is acked).
    pub async fn resume(&self, job: &Job) -> Result<(), GatewayError> {
        match self.lookup(&job.call.request_id).await? {
            // A stored pending document is an earlier gateway's (written before its job).
            Some((doc, true)) if !doc.is_final() => self.submit(job).await,
            Some(_) => Ok(()),
            None => self.submit(job).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // 100, 200 and 400 ms, each with up to half again as jitter.
        let waited = started.elapsed();
        let policy = submit_backoff();
        let least: Duration = (0..3).map(|a| policy.delay(a, 0.0)).sum();
        let most: Duration = (0..3).map(|a| policy.delay(a, 1.0)).sum();
        assert_eq!(least, Duration::from_millis(100 + 200 + 400));
        assert_eq!(most, Duration::from_millis(150 + 300 + 600));
        assert!((least..=most).contains(&waited), "{waited:?}");
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
}
