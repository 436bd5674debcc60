//! The NATS service API (`$SRV.PING|INFO|STATS`, protocol `io.nats.micro.v1`) for one service
//! instance with one endpoint: what `nats micro ls`, the admin API's instance list and
//! `busgate up`'s readiness check ask.
//!
//! The SDK answers these itself instead of serving through async-nats' service layer, whose
//! per-request bookkeeping (a lock, a map lookup by name, a `String` and a client cloned for
//! every request) cost more than the handlers of the benchmark do. Here the counters are
//! atomics, and the served path touches nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::wire;
use crate::Error;

/// The first token of every service-API subject.
pub const SRV_PREFIX: &str = "$SRV";

/// Metadata key: how an instance serves its service (`adapter`, `adapters`, `native`, `demo`),
/// shown in the admin API's live instances.
pub const META_MODE: &str = "busgate.mode";
/// Metadata key: the upstream URL template an adapter instance calls (credentials removed).
pub const META_UPSTREAM: &str = "busgate.upstream";

/// What an instance says about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The service name (validated).
    pub name: String,
    /// This instance's id, unique among the instances of the service.
    pub id: String,
    /// The Busgate version.
    pub version: String,
    /// Shown by `INFO`.
    pub description: String,
    /// Shown by every answer.
    pub metadata: HashMap<String, String>,
    /// The endpoint's subject.
    pub subject: String,
    /// The endpoint's queue group.
    pub queue_group: String,
}

/// The endpoint's counters, updated once per reply.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_ns: AtomicU64,
    last_error: Mutex<String>,
}

impl Stats {
    /// Counts a reply that took `elapsed`; `error` is `Some("code: message")` for an error reply.
    pub fn record(&self, elapsed: Duration, error: Option<String>) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.processing_ns.fetch_add(ns, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(error) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
        }
    }
}

/// The verbs of the service API, as they stand in `$SRV.<verb>…` subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `PING`: who is there.
    Ping,
    /// `INFO`: what each instance serves.
    Info,
    /// `STATS`: each instance's counters.
    Stats,
}

impl Verb {
    /// The verb as written in a subject.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }

    /// The verb of a subject token.
    pub fn parse(token: &str) -> Option<Self> {
        match token {
            "PING" => Some(Verb::Ping),
            "INFO" => Some(Verb::Info),
            "STATS" => Some(Verb::Stats),
            _ => None,
        }
    }

    /// The subject that asks every instance (`$SRV.INFO`) or those of one service
    /// (`$SRV.INFO.billing`).
    pub fn subject(self, service: Option<&str>) -> String {
        match service {
            Some(service) => format!("$SRV.{}.{service}", self.as_str()),
            None => format!("$SRV.{}", self.as_str()),
        }
    }
}

/// An answer of the service API: what every verb says, and what `INFO` and `STATS` add.
/// The one definition of its JSON, written by [`Discovery`] and read by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// `io.nats.micro.v1.<verb>_response`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The service name.
    pub name: String,
    /// The instance id.
    pub id: String,
    /// The instance's version.
    pub version: String,
    /// The instance's metadata.
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    /// `INFO`: the description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `STATS`: when the instance started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// `INFO` and `STATS`: the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
}

/// An endpoint in an `INFO` or `STATS` answer; the counters are `STATS` only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its name.
    pub name: String,
    /// The subject it serves.
    pub subject: String,
    /// Its queue group.
    pub queue_group: String,
    /// `INFO`: the endpoint's metadata (none here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<HashMap<String, String>>,
    /// Requests answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_requests: Option<u64>,
    /// Error replies among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_errors: Option<u64>,
    /// Nanoseconds spent on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<u64>,
    /// Nanoseconds per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_processing_time: Option<u64>,
    /// The last error reply, `code: message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The answers, as pure functions of identity and counters.
fn answer(verb: Verb, who: &Identity, stats: &Stats, started: SystemTime) -> Answer {
    let endpoint = Endpoint {
        name: who.name.clone(),
        subject: who.subject.clone(),
        queue_group: who.queue_group.clone(),
        metadata: None,
        num_requests: None,
        num_errors: None,
        processing_time: None,
        average_processing_time: None,
        last_error: None,
    };
    let mut out = Answer {
        kind: format!(
            "io.nats.micro.v1.{}_response",
            verb.as_str().to_ascii_lowercase()
        ),
        name: who.name.clone(),
        id: who.id.clone(),
        version: who.version.clone(),
        metadata: who.metadata.clone(),
        description: None,
        started: None,
        endpoints: Vec::new(),
    };
    match verb {
        Verb::Ping => {}
        Verb::Info => {
            out.description = Some(who.description.clone());
            out.endpoints = vec![endpoint];
        }
        Verb::Stats => {
            let requests = stats.requests.load(Ordering::Relaxed);
            let processing_ns = stats.processing_ns.load(Ordering::Relaxed);
            let last_error = stats
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            out.started = Some(humantime::format_rfc3339_millis(started).to_string());
            out.endpoints = vec![Endpoint {
                num_requests: Some(requests),
                num_errors: Some(stats.errors.load(Ordering::Relaxed)),
                processing_time: Some(processing_ns),
                average_processing_time: Some(processing_ns.checked_div(requests).unwrap_or(0)),
                last_error: Some(last_error),
                ..endpoint
            }];
        }
    }
    out
}

/// Answers the service API for one instance until [`Discovery::stop`].
pub struct Discovery {
    wire: wire::Connection,
    subscriptions: Vec<wire::Subscription>,
}

impl Discovery {
    /// Subscribes to `$SRV.<verb>`, `$SRV.<verb>.<name>` and `$SRV.<verb>.<name>.<id>` (as three
    /// wildcards over the verb) on `wire` and answers on its read task (a few hundred bytes of
    /// JSON, on the rare discovery path).
    pub fn start(wire: &wire::Connection, who: Identity, stats: Arc<Stats>) -> Result<Self, Error> {
        let who = Arc::new(who);
        let started = SystemTime::now();
        let subjects = [
            format!("{SRV_PREFIX}.*"),
            format!("{SRV_PREFIX}.*.{}", who.name),
            format!("{SRV_PREFIX}.*.{}.{}", who.name, who.id),
        ];
        let mut subscriptions = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let (who, stats, answering) = (who.clone(), stats.clone(), wire.clone());
            let subscription = wire.subscribe(&subject, None, move |ask| {
                let (Some(reply), Some(verb)) = (
                    ask.reply(),
                    ask.subject().split('.').nth(1).and_then(Verb::parse),
                ) else {
                    return;
                };
                let body = answer(verb, &who, &stats, started);
                let Ok(body) = serde_json::to_vec(&body) else {
                    return;
                };
                if let Err(e) = answering.publish(reply, None, &[], &body) {
                    warn!(service = %who.name, error = %e, "cannot answer the service API");
                }
            })?;
            subscriptions.push(subscription);
        }
        Ok(Discovery {
            wire: wire.clone(),
            subscriptions,
        })
    }

    /// Stops answering: unsubscribes, and returns once the server has taken the unsubscriptions
    /// in (bounded by 2 s), so that nothing answers for this instance afterwards.
    pub async fn stop(self) {
        drop(self.subscriptions);
        if let Err(e) = self.wire.flush(Duration::from_secs(2)).await {
            warn!(error = %e, "the service API's unsubscriptions were not confirmed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Identity {
        Identity {
            name: "billing".into(),
            id: "abc".into(),
            version: "1.2.3".into(),
            description: "pays".into(),
            metadata: HashMap::from([(META_MODE.to_owned(), "native".to_owned())]),
            subject: "busgate.svc.billing".into(),
            queue_group: "busgate.billing".into(),
        }
    }

    /// An answer as the JSON on the wire.
    fn json(verb: Verb, stats: &Stats, started: SystemTime) -> serde_json::Value {
        serde_json::to_value(answer(verb, &who(), stats, started)).expect("json")
    }

    #[test]
    fn stats_count_replies_errors_and_time() {
        let stats = Stats::default();
        stats.record(Duration::from_micros(10), None);
        stats.record(Duration::from_micros(30), Some("internal: boom".into()));
        let out = json(Verb::Stats, &stats, SystemTime::UNIX_EPOCH);
        assert_eq!(out["type"], "io.nats.micro.v1.stats_response");
        assert_eq!(out["started"], "1970-01-01T00:00:00.000Z");
        let endpoint = &out["endpoints"][0];
        assert_eq!(endpoint["num_requests"], 2);
        assert_eq!(endpoint["num_errors"], 1);
        assert_eq!(endpoint["processing_time"], 40_000);
        assert_eq!(endpoint["average_processing_time"], 20_000);
        assert_eq!(endpoint["last_error"], "internal: boom");
        assert_eq!(endpoint["subject"], "busgate.svc.billing");
    }

    #[test]
    fn ping_and_info_say_who_and_where() {
        let stats = Stats::default();
        let ping = json(Verb::Ping, &stats, SystemTime::now());
        assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
        assert_eq!(ping["id"], "abc");
        assert_eq!(ping["metadata"]["busgate.mode"], "native");
        let info = json(Verb::Info, &stats, SystemTime::now());
        assert_eq!(info["description"], "pays");
        assert_eq!(info["endpoints"][0]["queue_group"], "busgate.billing");
        let empty = json(Verb::Stats, &stats, SystemTime::now());
        assert_eq!(empty["endpoints"][0]["average_processing_time"], 0);
        assert_eq!(Verb::parse("SCHEMA"), None);
        assert_eq!(Verb::Info.subject(Some("billing")), "$SRV.INFO.billing");
        assert_eq!(Verb::Ping.subject(None), "$SRV.PING");
        let typed: Answer = serde_json::from_value(info).expect("an answer reads back");
        assert_eq!(typed.endpoints[0].subject, "busgate.svc.billing");
    }
}
