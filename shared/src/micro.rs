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

use serde_json::{json, Value};
use tracing::warn;

use crate::wire;
use crate::Error;

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

/// The answers, as pure functions of identity and counters.
fn answer(verb: &str, who: &Identity, stats: &Stats, started: SystemTime) -> Option<Value> {
    let mut out = json!({
        "name": who.name,
        "id": who.id,
        "version": who.version,
        "metadata": who.metadata,
    });
    match verb {
        "PING" => out["type"] = "io.nats.micro.v1.ping_response".into(),
        "INFO" => {
            out["type"] = "io.nats.micro.v1.info_response".into();
            out["description"] = who.description.clone().into();
            out["endpoints"] = json!([{
                "name": who.name,
                "subject": who.subject,
                "queue_group": who.queue_group,
                "metadata": null,
            }]);
        }
        "STATS" => {
            let requests = stats.requests.load(Ordering::Relaxed);
            let processing_ns = stats.processing_ns.load(Ordering::Relaxed);
            let last_error = stats
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            out["type"] = "io.nats.micro.v1.stats_response".into();
            out["started"] = humantime::format_rfc3339_millis(started).to_string().into();
            out["endpoints"] = json!([{
                "name": who.name,
                "subject": who.subject,
                "queue_group": who.queue_group,
                "num_requests": requests,
                "num_errors": stats.errors.load(Ordering::Relaxed),
                "processing_time": processing_ns,
                "average_processing_time": processing_ns.checked_div(requests).unwrap_or(0),
                "last_error": last_error,
            }]);
        }
        _ => return None,
    }
    Some(out)
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
            "$SRV.*".to_owned(),
            format!("$SRV.*.{}", who.name),
            format!("$SRV.*.{}.{}", who.name, who.id),
        ];
        let mut subscriptions = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let (who, stats, answering) = (who.clone(), stats.clone(), wire.clone());
            let subscription = wire
                .subscribe(&subject, None, move |ask| {
                    let (Some(reply), Some(verb)) = (ask.reply(), ask.subject().split('.').nth(1))
                    else {
                        return;
                    };
                    let Some(body) = answer(verb, &who, &stats, started) else {
                        return;
                    };
                    if let Err(e) = answering.publish(reply, None, &[], body.to_string().as_bytes())
                    {
                        warn!(service = %who.name, error = %e, "cannot answer the service API");
                    }
                })
                .map_err(|e| Error::Service(e.to_string()))?;
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
            metadata: HashMap::from([("kind".to_owned(), "native".to_owned())]),
            subject: "busgate.svc.billing".into(),
            queue_group: "busgate.billing".into(),
        }
    }

    #[test]
    fn stats_count_replies_errors_and_time() {
        let stats = Stats::default();
        stats.record(Duration::from_micros(10), None);
        stats.record(Duration::from_micros(30), Some("internal: boom".into()));
        let out = answer("STATS", &who(), &stats, SystemTime::UNIX_EPOCH).expect("stats");
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
        let ping = answer("PING", &who(), &stats, SystemTime::now()).expect("ping");
        assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
        assert_eq!(ping["id"], "abc");
        assert_eq!(ping["metadata"]["kind"], "native");
        let info = answer("INFO", &who(), &stats, SystemTime::now()).expect("info");
        assert_eq!(info["description"], "pays");
        assert_eq!(info["endpoints"][0]["queue_group"], "busgate.billing");
        let empty = answer("STATS", &who(), &stats, SystemTime::now()).expect("stats");
        assert_eq!(empty["endpoints"][0]["average_processing_time"], 0);
        assert_eq!(answer("SCHEMA", &who(), &stats, SystemTime::now()), None);
    }
}
