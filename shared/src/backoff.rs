//! One exponential backoff with jitter, for every retry loop of every Busgate process.
//!
//! A loop asks a [`Backoff`] (made from an [`ExponentialBackoff`] policy) for its next delay,
//! or waits it out with [`Backoff::wait`], which gives up when the process drains. No loop
//! computes its own delays: the same policy shape everywhere, and jitter everywhere, so that
//! many instances that lost the same server do not come back at the same instant.
//! (The shape of linkerd2-proxy's `exp-backoff`.)

use std::time::Duration;

/// A backoff policy: delays start at `min`, double on every attempt up to `max`, and each
/// gets up to `jitter` × itself added at random (still never above `max`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    jitter: f64,
}

impl ExponentialBackoff {
    /// A policy from `min` to `max` (`max` is raised to `min` when smaller) with `jitter`
    /// clamped to `0.0..=1.0`.
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Self {
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            min,
            max: max.max(min),
            jitter,
        }
    }

    /// The smallest delay.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before retry number `attempt` (0 = the first retry) for a random draw
    /// `unit` in `0.0..1.0`: pure, for callers that count attempts themselves (a JetStream
    /// delivery count) and for tests.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.max);
        let extra = base.mul_f64(self.jitter * unit.clamp(0.0, 1.0));
        base.saturating_add(extra).min(self.max)
    }

    /// The delay before retry number `attempt`, with a fresh random draw.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }

    /// A stream of delays following this policy, starting at the first retry.
    pub fn stream(&self) -> Backoff {
        Backoff {
            policy: *self,
            attempt: 0,
        }
    }
}

/// The delays of one retry loop: the next one grows until [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ExponentialBackoff,
    attempt: u32,
}

impl Backoff {
    /// The next delay; the one after it is (about) twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay_for(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to the smallest delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Waits the next delay; false when `drain` was signalled first (or already), and the
    /// caller gives up.
    pub async fn wait(&mut self, drain: &drain::Watch) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            biased;
            _release = drain.clone().signaled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_from_min_to_max_without_jitter() {
        let policy = ExponentialBackoff::new(100 * MS, 1000 * MS, 0.0);
        let delays: Vec<_> = (0..6).map(|a| policy.delay(a, 0.99)).collect();
        assert_eq!(
            delays,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        assert_eq!(policy.delay(u32::MAX, 0.5), 1000 * MS);
    }

    #[test]
    fn jitter_adds_at_most_its_share_and_never_passes_max() {
        let policy = ExponentialBackoff::new(100 * MS, 1000 * MS, 0.5);
        assert_eq!(policy.delay(0, 0.0), 100 * MS);
        assert_eq!(policy.delay(0, 1.0), 150 * MS);
        assert_eq!(policy.delay(3, 1.0), 1000 * MS);
        for attempt in 0..8 {
            let d = policy.delay_for(attempt);
            let base = policy.delay(attempt, 0.0);
            assert!(
                d >= base && d <= (base + base / 2).min(1000 * MS),
                "{attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn bad_settings_are_clamped() {
        let policy = ExponentialBackoff::new(200 * MS, 100 * MS, f64::NAN);
        assert_eq!(policy.max(), 200 * MS);
        assert_eq!(policy.delay(5, 1.0), 200 * MS);
        let policy = ExponentialBackoff::new(MS, 10 * MS, 7.0);
        assert_eq!(policy.delay(0, 1.0), 2 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_grows_resets_and_gives_up_on_drain() {
        let (signal, watch) = drain::channel();
        let mut backoff = ExponentialBackoff::new(2 * MS * 1000, 5 * MS * 1000, 0.0).stream();
        let started = tokio::time::Instant::now();
        assert!(backoff.wait(&watch).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(backoff.wait(&watch).await);
        assert_eq!(started.elapsed(), Duration::from_secs(6));
        assert_eq!(backoff.attempts(), 2);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_secs(2));
        let draining = tokio::spawn(signal.drain());
        assert!(!backoff.wait(&watch).await);
        drop(watch);
        tokio::time::timeout(Duration::from_secs(1), draining)
            .await
            .expect("drain completes once every watch is released")
            .expect("join");
    }
}
