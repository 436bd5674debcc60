//! Resilience on the request path, per service: its circuit breaker ([`breaker`]), its retries
//! within a budget ([`retry`]) and its hedged requests ([`hedge`]), held together by one
//! [`Guard`] per configured service. The gather asks the guard before it publishes, tells it
//! what each attempt came to, and asks it whether to retry or hedge.
//!
//! A service with none of them has no guard (`Target::guard` is `None`): its requests take no
//! lock and make no allocation here. A guard's state is per gateway instance and survives a
//! configuration change ([`Guard::inherit`]).

pub mod breaker;
pub mod hedge;
pub mod retry;
pub mod window;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use busgate_shared::config::{BreakerSpec, HedgeSpec, RetrySpec, ServiceSpec};
use serde::Serialize;
use tokio::time::Instant;

use crate::metrics::{Metrics, Name};
use crate::resilience::breaker::{Breaker, Phase};
use crate::resilience::hedge::Latencies;
use crate::resilience::retry::{Budget, Extra};

/// What one attempt came to, as a guard counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Data, after `latency`.
    Ok(Duration),
    /// The service does not know the order: an answer, not a failure.
    NotFound(Duration),
    /// An error, a timeout, or no responders.
    Failed,
}

/// The resilience of one service: its settings and its state on this instance.
#[derive(Debug)]
pub struct Guard {
    service: Name,
    breaker: Option<BreakerSpec>,
    retry: Option<RetrySpec>,
    hedge: Option<HedgeSpec>,
    state: Mutex<State>,
}

#[derive(Debug, Clone)]
struct State {
    breaker: Option<Breaker>,
    budget: Budget,
    latencies: Latencies,
}

impl State {
    /// Whether the breaker is not closed: a service it refuses, or one it only probes (half
    /// open: `probes` requests and no more), is not asked again by a retry or a hedge.
    fn is_open(&self) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|b| b.phase() != Phase::Closed)
    }
}

/// A guard as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `closed`, `open` or `half_open`; absent without a breaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<&'static str>,
    /// The median latency of recent answers, in milliseconds, once enough were seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// The 95th percentile, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
}

impl Guard {
    /// The guard of `service` configured by `spec`; `None` when it has no breaker, retry or
    /// hedge.
    pub fn compile(service: &Name, spec: &ServiceSpec) -> Option<Arc<Guard>> {
        if spec.breaker.is_none() && spec.retry.is_none() && spec.hedge.is_none() {
            return None;
        }
        let now = Instant::now();
        Some(Arc::new(Guard {
            service: service.clone(),
            breaker: spec.breaker,
            retry: spec.retry,
            hedge: spec.hedge,
            state: Mutex::new(State {
                breaker: spec.breaker.map(|b| Breaker::new(b, now)),
                budget: Budget::new(now),
                latencies: Latencies::default(),
            }),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is counters: one left half-updated by a panic is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The service it guards.
    pub fn service(&self) -> &Name {
        &self.service
    }

    /// Replies beyond the first that one gather may receive for this service.
    pub fn extra_replies(&self) -> usize {
        let retries = self
            .retry
            .map_or(0, |r| r.attempts.saturating_sub(1) as usize);
        retries + usize::from(self.hedge.is_some())
    }

    /// Whether a request may go out now (`false`: the breaker is open); counts it.
    pub fn admit(&self, metrics: &Metrics) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        if let Some(breaker) = &mut state.breaker {
            let (allowed, moved) = breaker.admit(now);
            if let Some(phase) = moved {
                metrics.record_breaker(&self.service, phase.as_str(), phase.gauge());
            }
            if !allowed {
                return false;
            }
        }
        state.budget.request(now);
        true
    }

    /// Counts what an attempt came to.
    pub fn record(&self, metrics: &Metrics, reply: Reply) {
        let now = Instant::now();
        let mut state = self.state();
        match reply {
            Reply::Ok(latency) | Reply::NotFound(latency) => state.latencies.record(latency),
            Reply::Failed => {}
        }
        if let Some(breaker) = &mut state.breaker {
            if let Some(phase) = breaker.record(now, reply == Reply::Failed) {
                metrics.record_breaker(&self.service, phase.as_str(), phase.gauge());
            }
        }
    }

    /// Whether a source that failed after `made` attempts is asked again, with `left` of its
    /// time remaining: the policy allows another attempt, the time holds one (as long as the
    /// median answer), and the budget has room. Takes from the budget when it says yes.
    pub fn retry(&self, metrics: &Metrics, made: u32, left: Duration) -> bool {
        let Some(policy) = self.retry else {
            return false;
        };
        if made >= policy.attempts || left.is_zero() {
            return false;
        }
        let mut state = self.state();
        if state.is_open()
            || state
                .latencies
                .p50()
                .is_some_and(|expected| expected > left)
        {
            return false;
        }
        let taken = state
            .budget
            .take(Instant::now(), Extra::Retry, policy.budget);
        drop(state);
        if taken {
            metrics.record_extra(&self.service, "retry");
        } else {
            metrics.record_extra(&self.service, "retry_over_budget");
        }
        taken
    }

    /// When a source of this service is hedged, if it is.
    pub fn hedge_after(&self) -> Option<Duration> {
        let policy = self.hedge?;
        self.state().latencies.hedge_after(policy.after)
    }

    /// Whether the hedge that is due goes out (the budget has room); takes from it if so.
    pub fn hedge(&self, metrics: &Metrics) -> bool {
        let Some(policy) = self.hedge else {
            return false;
        };
        let mut state = self.state();
        if state.is_open() {
            return false;
        }
        let taken = state
            .budget
            .take(Instant::now(), Extra::Hedge, policy.max_extra);
        drop(state);
        metrics.record_extra(
            &self.service,
            if taken { "hedge" } else { "hedge_over_budget" },
        );
        taken
    }

    /// The breaker's phase (`None` without a breaker).
    pub fn phase(&self) -> Option<Phase> {
        self.state().breaker.as_ref().map(Breaker::phase)
    }

    /// What the admin API shows.
    pub fn status(&self) -> Status {
        let state = self.state();
        let ms = |d: Duration| (d.as_micros() as f64 / 10.0).round() / 100.0;
        Status {
            breaker: state.breaker.as_ref().map(|b| b.phase().as_str()),
            p50_ms: state.latencies.p50().map(ms),
            p95_ms: state.latencies.p95().map(ms),
        }
    }

    /// Takes over the state of the guard this one replaces: the budget and the latencies
    /// always, the breaker when its settings did not change.
    pub fn inherit(&self, previous: &Guard) {
        if std::ptr::eq(self, previous) {
            return;
        }
        let old = previous.state().clone();
        let mut state = self.state();
        state.budget = old.budget;
        state.latencies = old.latencies;
        if self.breaker == previous.breaker {
            state.breaker = old.breaker;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(breaker: bool, retry: bool, hedge: bool) -> ServiceSpec {
        ServiceSpec {
            breaker: breaker.then(|| BreakerSpec {
                min_requests: 2,
                ..Default::default()
            }),
            retry: retry.then_some(RetrySpec {
                attempts: 3,
                budget: 0.5,
            }),
            hedge: hedge.then(HedgeSpec::default),
            ..Default::default()
        }
    }

    fn name() -> Name {
        Name("s".into())
    }

    #[test]
    fn a_service_without_settings_has_no_guard() {
        assert!(Guard::compile(&name(), &ServiceSpec::default()).is_none());
        let g = Guard::compile(&name(), &service(false, true, true)).expect("guard");
        assert_eq!(g.extra_replies(), 3);
        assert_eq!(g.phase(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_refuses_and_is_counted() {
        let metrics = Metrics::new();
        let g = Guard::compile(&name(), &service(true, false, false)).expect("guard");
        assert!(g.admit(&metrics));
        g.record(&metrics, Reply::Failed);
        g.record(&metrics, Reply::NotFound(Duration::from_millis(1)));
        assert_eq!(g.phase(), Some(Phase::Closed), "not_found is no failure");
        g.record(&metrics, Reply::Failed);
        assert_eq!(g.phase(), Some(Phase::Open));
        assert!(!g.admit(&metrics));
        let text = metrics.encode();
        assert!(
            text.contains(r#"busgate_breaker_state{service="s"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"busgate_breaker_transitions_total{service="s",kind="open"} 1"#),
            "{text}"
        );
        assert_eq!(g.status().breaker, Some("open"));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_need_attempts_time_and_budget() {
        let metrics = Metrics::new();
        let g = Guard::compile(&name(), &service(false, true, false)).expect("guard");
        let s = Duration::from_secs(1);
        assert!(!g.retry(&metrics, 1, s), "no request counted: no budget");
        for _ in 0..4 {
            assert!(g.admit(&metrics));
        }
        assert!(g.retry(&metrics, 1, s));
        assert!(!g.retry(&metrics, 3, s), "three attempts made of three");
        assert!(!g.retry(&metrics, 1, Duration::ZERO), "no time left");
        for _ in 0..20 {
            g.record(&metrics, Reply::Ok(Duration::from_millis(100)));
        }
        assert!(
            !g.retry(&metrics, 1, Duration::from_millis(50)),
            "50 ms cannot hold a 100 ms answer"
        );
        assert!(g.retry(&metrics, 2, s), "2 of 4 is the 50 % budget");
        assert!(!g.retry(&metrics, 1, s), "over budget");
        let text = metrics.encode();
        assert!(
            text.contains(r#"busgate_resilience_extra_requests_total{service="s",kind="retry"} 2"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_stay_within_max_extra_and_stop_when_the_breaker_opens() {
        let metrics = Metrics::new();
        let g = Guard::compile(&name(), &service(true, true, true)).expect("guard");
        assert_eq!(g.hedge_after(), None, "p95 needs 20 answers first");
        for _ in 0..20 {
            assert!(g.admit(&metrics));
            g.record(&metrics, Reply::Ok(Duration::from_millis(8)));
        }
        assert_eq!(g.hedge_after(), Some(Duration::from_millis(8)));
        assert!(g.hedge(&metrics), "1 of 20 is within 10 %");
        assert!(g.hedge(&metrics), "2 of 20 too");
        assert!(!g.hedge(&metrics), "3 of 20 is not");
        for _ in 0..30 {
            g.record(&metrics, Reply::Failed);
        }
        assert_eq!(g.phase(), Some(Phase::Open));
        assert!(
            !g.retry(&metrics, 1, Duration::from_secs(1)),
            "no retry into an open breaker"
        );
        assert!(!g.hedge(&metrics), "no hedge either");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_configuration_keeps_the_state_of_an_unchanged_breaker() {
        let metrics = Metrics::new();
        let old = Guard::compile(&name(), &service(true, true, false)).expect("guard");
        old.record(&metrics, Reply::Failed);
        old.record(&metrics, Reply::Failed);
        let same = Guard::compile(&name(), &service(true, false, true)).expect("guard");
        same.inherit(&old);
        assert_eq!(same.phase(), Some(Phase::Open));
        let mut changed_spec = service(true, false, false);
        changed_spec.breaker = Some(BreakerSpec::default());
        let changed = Guard::compile(&name(), &changed_spec).expect("guard");
        changed.inherit(&old);
        assert_eq!(
            changed.phase(),
            Some(Phase::Closed),
            "new settings, a new breaker"
        );
    }
}
