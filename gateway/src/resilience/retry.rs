//! Retry and hedge budgets: the extra requests made for a service (retries, hedges) counted
//! against its requests over [`BUDGET_WINDOW`], so that extra load stays a share of the real
//! one (like Envoy's retry budget) and a dead service is never asked twice as hard.
//!
//! [`BUDGET_WINDOW`]: busgate_shared::resilience::BUDGET_WINDOW

use busgate_shared::resilience::BUDGET_WINDOW;
use tokio::time::Instant;

use crate::resilience::window::Window;

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// A request asked again after it failed.
    Retry = 1,
    /// A request sent again while the first was still out.
    Hedge = 2,
}

/// First attempts, retries and hedges of one service over the budget window.
#[derive(Debug, Clone)]
pub struct Budget {
    window: Window<3>,
}

impl Budget {
    /// An empty budget.
    pub fn new(now: Instant) -> Self {
        Budget {
            window: Window::new(BUDGET_WINDOW, now),
        }
    }

    /// Counts a first attempt.
    pub fn request(&mut self, now: Instant) {
        self.window.add(now, 0, 1);
    }

    /// Takes one `extra` from the budget if `ratio` × the window's requests leaves room for it.
    pub fn take(&mut self, now: Instant, extra: Extra, ratio: f64) -> bool {
        let sums = self.window.sums(now);
        let (requests, spent) = (sums[0], sums[extra as usize]);
        if (spent + 1) as f64 <= ratio * requests as f64 {
            self.window.add(now, extra as usize, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn extras_stay_within_their_share_of_the_requests() {
        let mut b = Budget::new(Instant::now());
        assert!(
            !b.take(Instant::now(), Extra::Retry, 1.0),
            "nothing asked yet"
        );
        for _ in 0..10 {
            b.request(Instant::now());
        }
        assert!(b.take(Instant::now(), Extra::Retry, 0.2));
        assert!(b.take(Instant::now(), Extra::Retry, 0.2));
        assert!(
            !b.take(Instant::now(), Extra::Retry, 0.2),
            "2 of 10 is 20 %"
        );
        assert!(
            b.take(Instant::now(), Extra::Hedge, 0.1),
            "hedges count apart"
        );
        assert!(!b.take(Instant::now(), Extra::Hedge, 0.1));
        assert!(
            !b.take(Instant::now(), Extra::Hedge, 0.0),
            "a zero budget is none"
        );
        tokio::time::advance(BUDGET_WINDOW + Duration::from_secs(1)).await;
        for _ in 0..5 {
            b.request(Instant::now());
        }
        assert!(
            b.take(Instant::now(), Extra::Retry, 0.2),
            "the old retries are forgotten"
        );
        assert!(!b.take(Instant::now(), Extra::Retry, 0.2));
    }
}
