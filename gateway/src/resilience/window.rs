//! Counts over a sliding window of time: ten buckets of a tenth of the window each, so that a
//! count forgets the oldest tenth at a time and costs no allocation after it is made.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window.
const BUCKETS: usize = 10;

/// `N` counters summed over the last `window`.
#[derive(Debug, Clone)]
pub struct Window<const N: usize> {
    origin: Instant,
    width: Duration,
    buckets: [(u64, [u32; N]); BUCKETS],
}

impl<const N: usize> Window<N> {
    /// Empty counters over `window` (at least 10 ms), starting at `now`.
    pub fn new(window: Duration, now: Instant) -> Self {
        let width = (window / BUCKETS as u32).max(Duration::from_millis(1));
        Window {
            origin: now,
            width,
            buckets: [(u64::MAX, [0; N]); BUCKETS],
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        u64::try_from(since.as_nanos() / self.width.as_nanos().max(1)).unwrap_or(u64::MAX - 1)
    }

    /// Adds `by` to counter `which` at `now`.
    pub fn add(&mut self, now: Instant, which: usize, by: u32) {
        let tick = self.tick(now);
        let bucket = &mut self.buckets[(tick % BUCKETS as u64) as usize];
        if bucket.0 != tick {
            *bucket = (tick, [0; N]);
        }
        if let Some(count) = bucket.1.get_mut(which) {
            *count = count.saturating_add(by);
        }
    }

    /// Every counter's sum over the window that ends at `now`.
    pub fn sums(&self, now: Instant) -> [u64; N] {
        let tick = self.tick(now);
        let mut sums = [0u64; N];
        for (at, counts) in &self.buckets {
            if *at != u64::MAX && *at <= tick && tick - at < BUCKETS as u64 {
                for (sum, count) in sums.iter_mut().zip(counts) {
                    *sum += u64::from(*count);
                }
            }
        }
        sums
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.buckets = [(u64::MAX, [0; N]); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_fall_out_of_the_window_a_tenth_at_a_time() {
        let mut w = Window::<2>::new(Duration::from_secs(10), Instant::now());
        w.add(Instant::now(), 0, 3);
        w.add(Instant::now(), 1, 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        w.add(Instant::now(), 0, 2);
        assert_eq!(w.sums(Instant::now()), [5, 1]);
        tokio::time::advance(Duration::from_millis(5500)).await;
        assert_eq!(
            w.sums(Instant::now()),
            [2, 0],
            "the first second left the window"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(w.sums(Instant::now()), [0, 0]);
        w.add(Instant::now(), 9, 1);
        assert_eq!(
            w.sums(Instant::now()),
            [0, 0],
            "an unknown counter is ignored"
        );
    }
}
