//! `[jobs]`: asynchronous requests (the JetStream work queue, status documents, idempotency
//! keys) and the bounds of their streams.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Asynchronous requests (JetStream work queue and KV results).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSettings {
    /// How long status documents (results) are kept.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
    /// How long an instance may hold a request before another instance gets it.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries after which a request that keeps failing ends as `failed`.
    pub max_deliver: u32,
    /// Asynchronous gathers one instance runs at once.
    pub concurrency: usize,
    /// How long an `Idempotency-Key` maps to its request.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// The longest `Prefer: wait=N` honoured.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How long a server-sent events stream stays open at most (clients reconnect).
    #[serde(with = "humantime_serde")]
    pub events_max: Duration,
    /// Replicas of every stream and bucket (1 to 5; 3 on a 3-node cluster): the work queue,
    /// the callback queue, status documents, idempotency keys and the configuration.
    pub replicas: usize,
    /// Server-sent event streams open at once on one instance; past it: 503 `overloaded`.
    pub max_event_streams: usize,
    /// Submits waiting on `Prefer: wait=N` at once on one instance; past it: 503 `overloaded`.
    pub max_waiters: usize,
    /// Bounds of the work queue of asynchronous requests (`BUSGATE_REQUESTS`).
    pub requests: StreamLimits,
    /// Bounds of the queue of callback deliveries (`BUSGATE_CALLBACKS`).
    pub callbacks: StreamLimits,
    /// Bytes the status documents (`busgate-results`) may take; a full bucket refuses submits.
    pub results_max_bytes: i64,
    /// Bytes the idempotency keys (`busgate-idempotency`) may take.
    pub idempotency_max_bytes: i64,
}

/// Bounds of a JetStream stream. When one is reached, `discard` says what gives way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamLimits {
    /// Messages the stream may hold.
    pub max_msgs: i64,
    /// Bytes the stream may hold.
    pub max_bytes: i64,
    /// `new`: a full stream refuses new messages (a submit gets 503 `queue-full`; nothing
    /// accepted is lost). `old`: the oldest messages are dropped to make room, losing accepted
    /// work; only for those who prefer new work over old.
    pub discard: Discard,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_msgs: 1_000_000,
            max_bytes: 1 << 30,
            discard: Discard::New,
        }
    }
}

/// What gives way in a full stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Refuse new messages.
    New,
    /// Drop the oldest.
    Old,
}

impl Default for JobsSettings {
    fn default() -> Self {
        JobsSettings {
            result_ttl: Duration::from_secs(24 * 3600),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            concurrency: 256,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            max_wait: Duration::from_secs(30),
            events_max: Duration::from_secs(300),
            replicas: 1,
            max_event_streams: 1024,
            max_waiters: 1024,
            requests: StreamLimits::default(),
            callbacks: StreamLimits::default(),
            results_max_bytes: 1 << 30,
            idempotency_max_bytes: 256 << 20,
        }
    }
}
