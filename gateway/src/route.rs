//! Running a route for one request: the one way a route and an order id become the answer a
//! client gets, whoever asks. The public edge, the processor of asynchronous requests and the
//! admin's try-it all call a [`Runner`].
//!
//! Owns: [`Runner`] (the configuration in force, the collector, the metrics a run counts in)
//! and [`Call`], one run as data. May use: `gather`, `cache`, `config`, `metrics`, `error`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cache::CacheState;
use crate::config::snapshot::{Route, Snapshot};
use crate::error::{ErrorKind, GatewayError};
use crate::gather::collector::Collector;
use crate::gather::late::{self, Late};
use crate::gather::merge;
use crate::gather::scatter::{self, Asker, Outcome, Pending, SourceResult};
use crate::metrics::Metrics;

/// Runs routes. Cheap to clone: three reference counts.
#[derive(Clone)]
pub struct Runner {
    config: Arc<ArcSwap<Snapshot>>,
    collector: Collector,
    metrics: Arc<Metrics>,
}

/// One run of a route, owned: what an asynchronous request carries through the work queue and
/// what the try-it sends. The edge's synchronous path borrows the same fields from the request
/// instead (an [`Asker`]), so that it allocates none of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The request id (UUIDv7).
    pub request_id: String,
    /// The route, by name; resolved in the configuration in force when it runs.
    pub route: String,
    /// The validated order id.
    pub order_id: String,
    /// Who asked.
    pub client: String,
    /// The trace context to continue.
    pub traceparent: String,
    /// The request headers the route's conditions read, `(lower-case name, value)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The client's own deadline (`Busgate-Timeout`), if it gave one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<std::time::Duration>,
}

impl Call {
    /// The call as the gather reads it.
    pub fn asker(&self) -> Asker<'_> {
        Asker {
            request_id: &self.request_id,
            order_id: &self.order_id,
            client: &self.client,
            traceparent: &self.traceparent,
            headers: &self.headers,
            timeout: self.timeout,
        }
    }
}

impl Runner {
    /// A runner over the configuration in force, gathering through `collector`.
    pub fn new(
        config: Arc<ArcSwap<Snapshot>>,
        collector: Collector,
        metrics: Arc<Metrics>,
    ) -> Self {
        Runner {
            config,
            collector,
            metrics,
        }
    }

    /// The configuration in force; a request loads it once.
    pub fn config(&self) -> &Arc<ArcSwap<Snapshot>> {
        &self.config
    }

    /// The collector of replies.
    pub fn collector(&self) -> &Collector {
        &self.collector
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Publishes the requests of `route` for `asker`. Never waits.
    pub fn start(&self, route: &Route, asker: &Asker<'_>) -> Pending {
        scatter::start(&self.collector, route, asker)
    }

    /// Waits for a started gather's replies, counts them and renders the answer, with its
    /// `Cache-Status` when a source has a cache.
    pub async fn finish(
        &self,
        route: &Route,
        mut pending: Pending,
        request_id: &str,
        order_id: &str,
        started: Instant,
    ) -> Result<Answer, GatewayError> {
        pending.collect(route).await;
        let (outcome, open) = pending.finish_open();
        self.count(route, &outcome);
        let body = match merge::answer(route, &outcome, request_id, order_id, started.elapsed()) {
            Ok(body) => body,
            Err(e) => {
                if let Some(open) = open {
                    open.release();
                }
                return Err(e);
            }
        };
        let cache_status = (!outcome.marks.is_empty())
            .then(|| {
                crate::cache::cache_status(
                    route
                        .targets
                        .iter()
                        .map(|t| &*t.service.0)
                        .zip(outcome.marks.iter().copied()),
                )
            })
            .flatten();
        let late = match (late::wanted(route, &outcome), open) {
            (Some(grace), Some(open)) => Late::open(open, outcome, grace, started).ok(),
            (_, open) => {
                if let Some(open) = open {
                    open.release();
                }
                None
            }
        };
        Ok(Answer {
            body,
            cache_status,
            late,
        })
    }

    /// Counts each source's outcome and, when it answered or timed out, its time (not when
    /// the cache answered at once: nothing was published).
    fn count(&self, route: &Route, outcome: &Outcome) {
        for (index, (target, result)) in route.targets.iter().zip(&outcome.results).enumerate() {
            self.metrics.record_source(&target.service, result.status());
            let cached = outcome.marks.get(index).and_then(|m| m.cache);
            if matches!(
                cached,
                Some(CacheState::Hit { .. } | CacheState::Revalidating { .. })
            ) {
                continue;
            }
            let took = match result {
                SourceResult::Ok { elapsed, .. }
                | SourceResult::NotFound { elapsed }
                | SourceResult::Error { elapsed, .. }
                | SourceResult::NoResponders { elapsed } => elapsed,
                SourceResult::Timeout { after } => after,
                SourceResult::Cancelled | SourceResult::Skipped(_) | SourceResult::CircuitOpen => {
                    continue
                }
            };
            self.metrics
                .record_source_time(&target.service, took.as_secs_f64());
        }
    }

    /// Runs `call` in the configuration in force and answers with the status and body the
    /// synchronous request would have answered: what the try-it shows.
    pub async fn answer(&self, call: &Call) -> (u16, Vec<u8>) {
        let attempt = self.attempt(call).await;
        (attempt.status, attempt.body)
    }

    /// [`Runner::answer`], saying too whether the failure, if any, is one that trying again
    /// later may cure ([`Attempt::transient`]): what the processor of asynchronous requests
    /// decides on.
    pub async fn attempt(&self, call: &Call) -> Attempt {
        let snapshot = self.config.load_full();
        let Some(route) = snapshot.route(&call.route) else {
            let (status, body) = GatewayError::from(ErrorKind::RouteGone(call.route.clone()))
                .with_request(&call.request_id)
                .with_order(&call.order_id)
                .problem();
            return Attempt {
                status: status.as_u16(),
                body: body.to_vec(),
                transient: false,
            };
        };
        let started = Instant::now();
        let mut pending = self.start(route, &call.asker());
        pending.collect(route).await;
        let (mut outcome, open) = pending.finish_open();
        // Nobody waits for an asynchronous answer: its late sources are waited for in place.
        match (late::wanted(route, &outcome), open) {
            (Some(grace), Some(open)) => {
                outcome = match Late::open(open, outcome, grace, started) {
                    Ok(mut late) => {
                        late.listen(route).await;
                        late.into_outcome()
                    }
                    Err(refused) => refused,
                };
            }
            (_, Some(open)) => open.release(),
            (_, None) => {}
        }
        self.count(route, &outcome);
        let transient = is_transient(&outcome);
        match merge::answer(
            route,
            &outcome,
            &call.request_id,
            &call.order_id,
            started.elapsed(),
        ) {
            Ok(body) => Attempt {
                status: 200,
                body,
                transient: false,
            },
            Err(e) => {
                let (status, body) = e.problem();
                Attempt {
                    status: status.as_u16(),
                    body: body.to_vec(),
                    transient,
                }
            }
        }
    }
}

/// A synchronous answer: its body, and the headers it adds.
pub struct Answer {
    /// The merged body.
    pub body: Vec<u8>,
    /// The RFC 9211 `Cache-Status` value, when a source has a cache.
    pub cache_status: Option<String>,
    /// A partial answer's late sources, still listened to (the route's `late.grace`).
    pub late: Option<Late>,
}

/// What one run of a route came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The status the synchronous request would have answered.
    pub status: u16,
    /// Its body (the answer, or a problem document).
    pub body: Vec<u8>,
    /// The request failed because the bus could not carry it, not because of what a service
    /// answered: see [`is_transient`].
    pub transient: bool,
}

/// Whether a failed gather may succeed when tried again: its required source that failed
/// had no responders (nobody subscribed, which a worker reconnecting to another node also
/// looks like, or the publish was refused because the gateway's connection was down) or did
/// not answer in time (the request or its reply was lost with a node or a worker that died
/// holding it). An answer a service gave (an error, an unknown order) is final.
pub fn is_transient(outcome: &Outcome) -> bool {
    outcome
        .failed
        .and_then(|index| outcome.results.get(index))
        .is_some_and(|result| {
            matches!(
                result,
                SourceResult::NoResponders { .. }
                    | SourceResult::Timeout { .. }
                    | SourceResult::CircuitOpen
            )
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_failures_of_the_bus_are_transient() {
        let ms = Duration::from_millis(1);
        let failed = |result: SourceResult| Outcome {
            results: vec![result],
            failed: Some(0),
            marks: Vec::new(),
            tries: Vec::new(),
            starts: Vec::new(),
        };
        assert!(is_transient(&failed(SourceResult::NoResponders {
            elapsed: ms
        })));
        assert!(is_transient(&failed(SourceResult::Timeout { after: ms })));
        assert!(!is_transient(&failed(SourceResult::NotFound {
            elapsed: ms
        })));
        assert!(!is_transient(&failed(SourceResult::Error {
            code: "c".into(),
            message: "m".into(),
            elapsed: ms
        })));
        // An optional source that timed out does not fail the request: nothing to retry.
        assert!(!is_transient(&Outcome {
            results: vec![SourceResult::Timeout { after: ms }],
            failed: None,
            marks: Vec::new(),
            tries: Vec::new(),
            starts: Vec::new(),
        }));
    }
}
