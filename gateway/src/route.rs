//! Running a route for one request: the one way a route and an order id become the answer a
//! client gets, whoever asks. The public edge, the processor of asynchronous requests and the
//! admin's try-it all call a [`Runner`].
//!
//! Owns: [`Runner`] (the configuration in force, the collector, the metrics a run counts in)
//! and [`Call`], one run as data. May use: `gather`, `config`, `metrics`, `error`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::snapshot::{Route, Snapshot};
use crate::error::{ErrorKind, GatewayError};
use crate::gather::collector::Collector;
use crate::gather::merge;
use crate::gather::scatter::{self, Asker, Pending};
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

    /// Waits for a started gather's replies, counts them and renders the answer.
    pub async fn finish(
        &self,
        route: &Route,
        mut pending: Pending,
        request_id: &str,
        order_id: &str,
        started: Instant,
    ) -> Result<Vec<u8>, GatewayError> {
        pending.collect(route).await;
        let outcome = pending.finish();
        for (target, result) in route.targets.iter().zip(&outcome.results) {
            self.metrics.record_source(&target.service, result.status());
        }
        merge::answer(route, &outcome, request_id, order_id, started.elapsed())
    }

    /// Runs `call` in the configuration in force and answers with the status and body the
    /// synchronous request would have answered: what an asynchronous request stores and the
    /// try-it shows.
    pub async fn answer(&self, call: &Call) -> (u16, Vec<u8>) {
        match self.run(call).await {
            Ok(body) => (200, body),
            Err(e) => {
                let (status, body) = e.problem();
                (status.as_u16(), body.to_vec())
            }
        }
    }

    async fn run(&self, call: &Call) -> Result<Vec<u8>, GatewayError> {
        let snapshot = self.config.load_full();
        let Some(route) = snapshot.route(&call.route) else {
            return Err(GatewayError::from(ErrorKind::RouteGone(call.route.clone()))
                .with_request(&call.request_id)
                .with_order(&call.order_id));
        };
        let started = Instant::now();
        let pending = self.start(route, &call.asker());
        self.finish(route, pending, &call.request_id, &call.order_id, started)
            .await
    }
}
