//! The circuit breaker of one service, as a pure state machine over the time it is given:
//! closed (counting failures over a window), open (refusing until `open_for` has passed), and
//! half-open (letting `probes` requests through; all passing close it, one failing opens it
//! again).

use busgate_shared::config::BreakerSpec;
use tokio::time::Instant;

use crate::resilience::window::Window;

/// Counter of requests in the window.
const REQUESTS: usize = 0;
/// Counter of failures in the window.
const FAILURES: usize = 1;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Requests go out; failures are counted.
    Closed,
    /// Requests are refused (`circuit_open`) without being sent.
    Open,
    /// A few probes go out; the rest are refused.
    HalfOpen,
}

impl Phase {
    /// The word used in the admin API, the UI and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }

    /// The value of the `busgate_breaker_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `admitted` probes out since `since`, `passed` of them passed.
    HalfOpen {
        since: Instant,
        admitted: u32,
        passed: u32,
    },
}

/// One service's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    spec: BreakerSpec,
    state: State,
    window: Window<2>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(spec: BreakerSpec, now: Instant) -> Self {
        Breaker {
            spec,
            state: State::Closed,
            window: Window::new(spec.window, now),
        }
    }

    /// Where it stands (an open breaker whose time has passed is still `Open` until a request
    /// comes: [`Breaker::admit`] makes it half-open).
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Closed => Phase::Closed,
            State::Open { .. } => Phase::Open,
            State::HalfOpen { .. } => Phase::HalfOpen,
        }
    }

    /// Whether a request may go out at `now`; with the phase it moved to, if it moved.
    pub fn admit(&mut self, now: Instant) -> (bool, Option<Phase>) {
        match &mut self.state {
            State::Closed => (true, None),
            State::Open { until } if now < *until => (false, None),
            State::Open { .. } => {
                self.state = State::HalfOpen {
                    since: now,
                    admitted: 1,
                    passed: 0,
                };
                (true, Some(Phase::HalfOpen))
            }
            State::HalfOpen {
                since,
                admitted,
                passed,
            } => {
                // Probes whose outcome never came (their gather was cancelled) are given up
                // after `open_for`, so that a breaker is never stuck half-open.
                if now.saturating_duration_since(*since) >= self.spec.open_for {
                    *since = now;
                    *admitted = *passed;
                }
                if *admitted < self.spec.probes {
                    *admitted += 1;
                    (true, None)
                } else {
                    (false, None)
                }
            }
        }
    }

    /// Records the outcome of a request at `now` (`failed`: an error, a timeout, no
    /// responders); with the phase it moved to, if it moved.
    pub fn record(&mut self, now: Instant, failed: bool) -> Option<Phase> {
        match &mut self.state {
            State::Closed => {
                self.window.add(now, REQUESTS, 1);
                if failed {
                    self.window.add(now, FAILURES, 1);
                    let [requests, failures] = self.window.sums(now);
                    let ratio = failures as f64 / requests.max(1) as f64;
                    if requests >= u64::from(self.spec.min_requests)
                        && ratio >= self.spec.failure_ratio
                    {
                        return Some(self.open(now));
                    }
                }
                None
            }
            // Outcomes of requests sent before it opened say nothing new.
            State::Open { .. } => None,
            State::HalfOpen { passed, .. } => {
                if failed {
                    return Some(self.open(now));
                }
                *passed += 1;
                if *passed >= self.spec.probes {
                    self.state = State::Closed;
                    self.window.clear();
                    return Some(Phase::Closed);
                }
                None
            }
        }
    }

    fn open(&mut self, now: Instant) -> Phase {
        self.state = State::Open {
            until: now + self.spec.open_for,
        };
        self.window.clear();
        Phase::Open
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn spec() -> BreakerSpec {
        BreakerSpec {
            failure_ratio: 0.5,
            min_requests: 4,
            window: 1000 * MS,
            open_for: 500 * MS,
            probes: 2,
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_the_ratio_once_enough_requests_were_seen() {
        let mut b = Breaker::new(spec(), now());
        // Three failures: the ratio is there, the minimum is not.
        for _ in 0..3 {
            assert_eq!(b.record(now(), true), None);
        }
        assert_eq!(b.record(now(), true), Some(Phase::Open));
        assert_eq!(b.admit(now()), (false, None));
        assert_eq!(b.phase(), Phase::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_keep_it_closed_and_old_failures_are_forgotten() {
        let mut b = Breaker::new(spec(), now());
        for _ in 0..3 {
            b.record(now(), true);
        }
        tokio::time::advance(1100 * MS).await;
        for _ in 0..3 {
            assert_eq!(b.record(now(), false), None);
        }
        assert_eq!(b.record(now(), true), None, "1 failure in 4");
        assert_eq!(b.phase(), Phase::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_opens_after_open_for_and_closes_when_the_probes_pass() {
        let mut b = Breaker::new(spec(), now());
        for _ in 0..4 {
            b.record(now(), true);
        }
        tokio::time::advance(499 * MS).await;
        assert_eq!(b.admit(now()), (false, None));
        tokio::time::advance(MS).await;
        assert_eq!(b.admit(now()), (true, Some(Phase::HalfOpen)));
        assert_eq!(b.admit(now()), (true, None), "the second probe");
        assert_eq!(b.admit(now()), (false, None), "no third");
        assert_eq!(b.record(now(), false), None);
        assert_eq!(b.record(now(), false), Some(Phase::Closed));
        assert_eq!(b.admit(now()), (true, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_and_lost_probes_are_given_up() {
        let mut b = Breaker::new(spec(), now());
        for _ in 0..4 {
            b.record(now(), true);
        }
        tokio::time::advance(500 * MS).await;
        assert!(b.admit(now()).0);
        assert_eq!(b.record(now(), true), Some(Phase::Open));
        tokio::time::advance(500 * MS).await;
        assert!(b.admit(now()).0);
        assert!(b.admit(now()).0);
        assert!(!b.admit(now()).0);
        // Neither probe reports (their gathers were cancelled): after open_for, new ones go.
        tokio::time::advance(500 * MS).await;
        assert!(b.admit(now()).0);
        assert_eq!(b.phase(), Phase::HalfOpen);
    }
}
