//! Prometheus metrics, atomic counters only on the hot path.
//!
//! Label values are `Arc<str>` handles cloned from the compiled configuration, so recording a
//! request allocates nothing.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::histogram::AtomicHistogram;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label value shared with the configuration (route or service name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// Labels of an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route name; `-` for requests that matched no route.
    pub route: Name,
    /// The HTTP status code.
    pub status: u16,
}

/// Labels of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route name.
    pub route: Name,
}

/// Labels of a source's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    /// The service name.
    pub service: Name,
    /// `ok`, `not_found`, `error`, `timeout`, `no_responders`, `cancelled`.
    pub outcome: &'static str,
}

/// Labels of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service name.
    pub service: Name,
}

/// Labels of a client's request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClientLabels {
    /// The client's name: configured clients only (bounded); `-` when the request named none
    /// that exists.
    pub client: Name,
    /// `admitted`, or why it was refused: `unauthorized`, `route-not-allowed`,
    /// `rate-limited`, `too-many-pending`, `too-many-streams`, `throttled` (credentials from an
    /// address past `auth.max_failures_per_minute`).
    pub outcome: &'static str,
}

/// Labels of an outcome alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What it came to.
    pub outcome: &'static str,
}

/// Labels of a breaker's transition, or of an extra request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceKindLabels {
    /// The service name.
    pub service: Name,
    /// Transitions: the phase it moved to (`open`, `half_open`, `closed`). Extra requests:
    /// `retry`, `hedge`, or one refused by its budget (`retry_over_budget`,
    /// `hedge_over_budget`).
    pub kind: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Answers by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Time to answer by route.
    pub http_duration: Family<RouteLabels, Histogram>,
    /// Source outcomes by service.
    pub source_outcomes: Family<SourceLabels, Counter>,
    /// Time from publish to reply, by service (sources that answered or timed out).
    pub source_duration: Family<ServiceLabels, AtomicHistogram>,
    /// Gathers waiting for replies right now.
    pub gathers_in_flight: Gauge,
    /// Replies that arrived after their gather had ended, or twice.
    pub late_replies: Counter,
    /// Requests by client and outcome.
    pub client_requests: Family<ClientLabels, Counter>,
    /// Cache lookups by service and outcome (`hit`, `stale`, `miss`, `bypass`).
    pub cache_lookups: Family<SourceLabels, Counter>,
    /// Background refreshes of stale entries by service and outcome (`ok`, `failed`).
    pub cache_refreshes: Family<SourceLabels, Counter>,
    /// Source requests that joined another's publish, by service.
    pub coalesced: Family<ServiceLabels, Counter>,
    /// Late gathers by outcome (`completed`, `unchanged`, `refused`).
    pub late_gathers: Family<OutcomeLabels, Counter>,
    /// Circuit breakers: 0 closed, 1 open, 2 half-open, by service.
    pub breaker_state: Family<ServiceLabels, Gauge>,
    /// Circuit breakers' transitions, by service and the phase moved to.
    pub breaker_transitions: Family<ServiceKindLabels, Counter>,
    /// Retries and hedges, made or refused by their budget, by service.
    pub extra_requests: Family<ServiceKindLabels, Counter>,
    /// Live gateway instances sharing the client limits (`crate::fleet`).
    pub gateway_instances: Gauge,
    /// The label of requests that named no configured client.
    unknown_client: Name,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("busgate");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let source_outcomes = Family::<SourceLabels, Counter>::default();
        let source_duration = Family::<ServiceLabels, AtomicHistogram>::default();
        registry.register(
            "source_duration_seconds",
            "Time from publish to reply (or timeout), by service",
            source_duration.clone(),
        );
        let gathers_in_flight = Gauge::default();
        let late_replies = Counter::default();
        let client_requests = Family::<ClientLabels, Counter>::default();
        let gateway_instances = Gauge::default();
        gateway_instances.set(1);
        registry.register(
            "gateway_instances",
            "Live gateway instances sharing each client's rate and pending cap",
            gateway_instances.clone(),
        );
        let cache_lookups = Family::<SourceLabels, Counter>::default();
        let cache_refreshes = Family::<SourceLabels, Counter>::default();
        let coalesced = Family::<ServiceLabels, Counter>::default();
        let late_gathers = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups of sources by service and outcome (hit, stale, miss, bypass)",
            cache_lookups.clone(),
        );
        registry.register(
            "cache_refreshes",
            "Background refreshes of stale cache entries by service and outcome",
            cache_refreshes.clone(),
        );
        registry.register(
            "coalesced",
            "Source requests that shared another request's publish, by service",
            coalesced.clone(),
        );
        registry.register(
            "late_gathers",
            "Partial answers kept listening for late sources, by outcome",
            late_gathers.clone(),
        );
        registry.register(
            "client_requests",
            "Requests of the public API by client, admitted or refused (and why)",
            client_requests.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP answers by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to answer, by route",
            http_duration.clone(),
        );
        registry.register(
            "source_outcomes",
            "Outcome of each source of each gather",
            source_outcomes.clone(),
        );
        registry.register(
            "gathers_in_flight",
            "Gathers waiting for replies",
            gathers_in_flight.clone(),
        );
        registry.register(
            "late_replies",
            "Replies that arrived after their gather ended (or twice)",
            late_replies.clone(),
        );
        let breaker_state = Family::<ServiceLabels, Gauge>::default();
        let breaker_transitions = Family::<ServiceKindLabels, Counter>::default();
        let extra_requests = Family::<ServiceKindLabels, Counter>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker of a service on this instance: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker transitions by service and the phase moved to (kind)",
            breaker_transitions.clone(),
        );
        registry.register(
            "resilience_extra_requests",
            "Retries and hedges by service: made (retry, hedge) or refused by the budget",
            extra_requests.clone(),
        );
        Metrics {
            registry,
            breaker_state,
            breaker_transitions,
            extra_requests,
            http_requests,
            http_duration,
            source_outcomes,
            source_duration,
            gathers_in_flight,
            late_replies,
            client_requests,
            gateway_instances,
            cache_lookups,
            cache_refreshes,
            coalesced,
            late_gathers,
            unknown_client: Name(Arc::from("-")),
        }
    }

    /// Counts a request of `client` (`None`: no configured client) with its outcome.
    pub fn record_client(&self, client: Option<&Name>, outcome: &'static str) {
        self.client_requests
            .get_or_create(&ClientLabels {
                // The anonymous client (no name) counts with the unknown.
                client: client
                    .filter(|c| !c.0.is_empty())
                    .unwrap_or(&self.unknown_client)
                    .clone(),
                outcome,
            })
            .inc();
    }

    /// Records one HTTP answer.
    pub fn record_http(&self, route: &Name, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.clone(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(seconds);
    }

    /// Records one source outcome.
    pub fn record_source(&self, service: &Name, outcome: &'static str) {
        self.source_outcomes
            .get_or_create(&SourceLabels {
                service: service.clone(),
                outcome,
            })
            .inc();
    }

    /// Records how long a source took to answer (or time out).
    pub fn record_source_time(&self, service: &Name, seconds: f64) {
        self.source_duration
            .get_or_create(&ServiceLabels {
                service: service.clone(),
            })
            .observe(seconds);
    }

    /// Records a breaker's move to `phase` (its gauge `value`).
    pub fn record_breaker(&self, service: &Name, phase: &'static str, value: i64) {
        self.breaker_transitions
            .get_or_create(&ServiceKindLabels {
                service: service.clone(),
                kind: phase,
            })
            .inc();
        self.set_breaker(service, value);
    }

    /// Sets a breaker's state gauge.
    pub fn set_breaker(&self, service: &Name, value: i64) {
        self.breaker_state
            .get_or_create(&ServiceLabels {
                service: service.clone(),
            })
            .set(value);
    }

    /// Counts an extra request (`kind`: `retry`, `hedge`, `…_over_budget`).
    pub fn record_extra(&self, service: &Name, kind: &'static str) {
        self.extra_requests
            .get_or_create(&ServiceKindLabels {
                service: service.clone(),
                kind,
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_exposition() {
        let m = Metrics::new();
        let route = Name("order".into());
        m.record_http(&route, 200, 0.002);
        m.record_source(&Name("service1".into()), "ok");
        m.late_replies.inc();
        let text = m.encode();
        assert!(
            text.contains(r#"busgate_http_requests_total{route="order",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"busgate_source_outcomes_total{service="service1",outcome="ok"} 1"#)
        );
        assert!(text.contains("busgate_late_replies_total 1"));
        assert!(text.contains("busgate_http_request_duration_seconds_count{route=\"order\"} 1"));
    }
}
