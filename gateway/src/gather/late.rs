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
use crate::gather::scatter::{Outcome, SourceResult};
use crate::metrics::OutcomeLabels;

/// The most late gathers one instance keeps open at once.
pub const MAX_OPEN: usize = 1024;

/// A gather kept open after its answer, for its timed-out sources.
pub struct Late {
    gather: Gather,
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
        gather: Gather,
        outcome: Outcome,
        grace: Duration,
        started: Instant,
    ) -> Result<Late, Outcome> {
        let reuse = gather.collector().reuse().clone();
        let Some(place) = reuse.open_late(MAX_OPEN) else {
            count(&gather, "refused");
            return Err(outcome);
        };
        Ok(Late {
            gather,
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
            let index = self
                .gather
                .collector()
                .source_of(&message)
                .and_then(|source| route.targets.iter().position(|t| &*t.service.0 == source));
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
