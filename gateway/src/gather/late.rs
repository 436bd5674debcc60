//! Partial answers that complete later: a route's `late.grace`. When a gather ends with an
//! optional source timed out, its reply inbox stays open for the grace; a late reply then
//! takes the timed-out source's place. The synchronous answer goes out at once; what the late
//! sources come to is written to the request document by `jobs::late`.
//!
//! Bounded: at most [`MAX_OPEN`] late gathers per instance (one more is refused: the answer
//! stays a plain partial one), none longer than its grace, all stopped at shutdown.

use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::cache::LatePlace;
use crate::config::snapshot::Route;
use crate::gather::collector::Gather;
use crate::gather::reuse::{self, OpenFlight};
use crate::gather::scatter::{Open, Outcome, SourceResult};
use crate::metrics::OutcomeLabels;

/// The most late gathers one instance keeps open at once.
pub const MAX_OPEN: usize = 1024;

/// A gather kept open after its answer, for its timed-out sources.
pub struct Late {
    gather: Gather,
    /// Flights this gather leads that others follow: their late replies go to them too.
    flights: Vec<OpenFlight>,
    outcome: Outcome,
    until: Instant,
    started: Instant,
    _place: LatePlace,
}

/// Whether `outcome` of `route` is one a late grace applies to: the route has one, the
/// answer is not a failure, and a source timed out.
pub fn wanted(route: &Route, outcome: &Outcome) -> Option<Duration> {
    let grace = route.late?;
    (outcome.failed.is_none() && outcome.results.iter().any(is_waiting)).then_some(grace)
}

fn is_waiting(result: &SourceResult) -> bool {
    matches!(result, SourceResult::Timeout { .. })
}

impl Late {
    /// Keeps `gather` open for `grace` after now, if a place is free (else counts the refusal
    /// and gives the outcome back). `started` is when the request started (for `elapsed_ms`).
    pub fn open(
        open: Open,
        outcome: Outcome,
        grace: Duration,
        started: Instant,
    ) -> Result<Late, Outcome> {
        let reuse = open.gather.collector().reuse().clone();
        let Some(place) = reuse.open_late(MAX_OPEN) else {
            count(&open.gather, "refused");
            open.release();
            return Err(outcome);
        };
        let Open { gather, flights } = open;
        Ok(Late {
            gather,
            flights,
            outcome,
            until: Instant::now() + grace,
            started,
            _place: place,
        })
    }

    /// The outcome as it stands (before [`Late::listen`]: the partial one).
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the timed-out sources until the grace ends, every one has answered, or the
    /// instance stops; whether a late source answered. The outcome is then
    /// [`Late::outcome`]; the place is held until the `Late` is dropped.
    pub async fn listen(&mut self, route: &Route) -> bool {
        let mut stopping = self.gather.collector().reuse().stopping();
        let mut changed = false;
        while self.outcome.results.iter().any(is_waiting) {
            let next = tokio::time::timeout_at(self.until, self.gather.next());
            let message = tokio::select! {
                m = next => m,
                _ = stopping.wait_for(|stop| *stop) => break,
            };
            let Ok(Some(message)) = message else {
                break;
            };
            let collector = self.gather.collector();
            let source = collector.source_of(&message);
            if let Some(source) = source {
                reuse::land_open(collector, &mut self.flights, source, &message);
            }
            let index =
                source.and_then(|source| route.targets.iter().position(|t| &*t.name.0 == source));
            let Some(index) = index else { continue };
            if !is_waiting(&self.outcome.results[index]) {
                continue;
            }
            let result = SourceResult::from_message(&message, self.started.elapsed());
            debug!(
                gather = self.gather.id(),
                index,
                status = result.status(),
                "late reply"
            );
            self.outcome.results[index] = result;
            changed = true;
        }
        count(
            &self.gather,
            if changed { "completed" } else { "unchanged" },
        );
        changed
    }

    /// The outcome, giving the place back.
    pub fn into_outcome(self) -> Outcome {
        self.outcome
    }
}

fn count(gather: &Gather, outcome: &'static str) {
    gather
        .collector()
        .reuse()
        .metrics()
        .late_gathers
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use busgate_shared::config::MergeStrategy;

    use super::*;
    use crate::config::snapshot::Target;
    use crate::gather::collector::Collector;
    use crate::metrics::{Metrics, Name};

    fn collector() -> Collector {
        let wire = busgate_shared::wire::Connection::connect("nats://127.0.0.1:1", "late")
            .expect("a connection that connects later");
        let (collector, subscription) =
            Collector::start(&wire, "late", Arc::new(Metrics::new())).expect("subscribe");
        std::mem::forget(subscription);
        collector
    }

    fn open(collector: &Collector) -> Open {
        Open {
            gather: collector.register(1),
            flights: Vec::new(),
        }
    }

    fn route() -> Route {
        Route {
            name: Name(Arc::from("r")),
            operation: "r".into(),
            deadline: Duration::from_millis(200),
            targets: vec![Target {
                name: Name(Arc::from("slow")),
                service: Name(Arc::from("slow")),
                subject: "busgate.svc.slow".into(),
                required: false,
                timeout: Duration::from_millis(200),
                when: None,
                transform: None,
                cache: None,
                coalesce: false,
                guard: None,
            }],
            merge: MergeStrategy::Namespace,
            priority: vec![0],
            late: Some(Duration::from_secs(60)),
            extra_replies: 0,
            graph: None,
        }
    }

    fn partial() -> Outcome {
        Outcome {
            results: vec![SourceResult::Timeout {
                after: Duration::from_millis(200),
            }],
            failed: None,
            marks: Vec::new(),
            starts: Vec::new(),
            tries: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_late_gather_stops_at_shutdown_and_gives_its_place_back() {
        let collector = collector();
        let route = route();
        assert_eq!(wanted(&route, &partial()), Some(Duration::from_secs(60)));
        let Ok(mut late) = Late::open(
            open(&collector),
            partial(),
            Duration::from_secs(60),
            Instant::now(),
        ) else {
            panic!("a place is free");
        };
        assert_eq!(collector.reuse().late_open(), 1);
        let listening = tokio::spawn(async move {
            let changed = late.listen(&route).await;
            (changed, late.into_outcome())
        });
        collector.reuse().stop();
        let (changed, outcome) = tokio::time::timeout(Duration::from_secs(2), listening)
            .await
            .expect("stopped well within its 60 s grace")
            .expect("joined");
        assert!(!changed);
        assert_eq!(outcome.results[0].status(), "timeout");
        assert_eq!(collector.reuse().late_open(), 0, "the place is given back");
    }

    #[tokio::test]
    async fn late_gathers_are_capped_and_only_for_partial_answers() {
        let collector = collector();
        let places: Vec<_> = (0..MAX_OPEN)
            .map(|_| collector.reuse().open_late(MAX_OPEN).expect("a place"))
            .collect();
        let refused = Late::open(
            open(&collector),
            partial(),
            Duration::from_secs(1),
            Instant::now(),
        );
        assert!(refused.is_err(), "over the cap");
        drop(places);
        assert!(Late::open(
            open(&collector),
            partial(),
            Duration::from_secs(1),
            Instant::now()
        )
        .is_ok());
        // Complete, failed, or without a grace: no late gather.
        let mut complete = partial();
        complete.results[0] = SourceResult::Skipped(crate::gather::graph::Skip::Condition);
        assert_eq!(wanted(&route(), &complete), None);
        let mut failed = partial();
        failed.failed = Some(0);
        assert_eq!(wanted(&route(), &failed), None);
        let mut no_grace = route();
        no_grace.late = None;
        assert_eq!(wanted(&no_grace, &partial()), None);
    }
}
