//! Latencies of one service's recent answers, and when a hedge goes out: after a fixed delay,
//! or after the 95th percentile of those latencies (`"p95"`). The percentiles are recomputed
//! every [`RECOMPUTE`] samples, not on every request.

use std::time::Duration;

use busgate_shared::config::HedgeAfter;

/// Latencies kept.
const SAMPLES: usize = 128;
/// Samples between two computations of the percentiles.
const RECOMPUTE: u32 = 16;
/// The earliest a `"p95"` hedge goes out.
const MIN_HEDGE_AFTER: Duration = Duration::from_millis(1);
/// Samples needed before a percentile is trusted.
const MIN_SAMPLES: usize = 20;

/// The last [`SAMPLES`] latencies of successful answers, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    ring: [u32; SAMPLES],
    len: usize,
    next: usize,
    fresh: u32,
    p50: Option<Duration>,
    p95: Option<Duration>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            ring: [0; SAMPLES],
            len: 0,
            next: 0,
            fresh: 0,
            p50: None,
            p95: None,
        }
    }
}

impl Latencies {
    /// Records one answer's latency.
    pub fn record(&mut self, latency: Duration) {
        self.ring[self.next] = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
        self.fresh += 1;
        if self.fresh >= RECOMPUTE || (self.len == MIN_SAMPLES && self.p95.is_none()) {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        self.fresh = 0;
        if self.len < MIN_SAMPLES {
            return;
        }
        let mut sorted = self.ring;
        let sorted = &mut sorted[..self.len];
        sorted.sort_unstable();
        let at = |q: usize| {
            Duration::from_micros(u64::from(sorted[(self.len * q / 100).min(self.len - 1)]))
        };
        self.p50 = Some(at(50));
        self.p95 = Some(at(95));
    }

    /// The median, once enough answers were seen: what another attempt is expected to take.
    pub fn p50(&self) -> Option<Duration> {
        self.p50
    }

    /// The 95th percentile, once enough answers were seen.
    pub fn p95(&self) -> Option<Duration> {
        self.p95
    }

    /// When a hedge goes out; `None` for `"p95"` before enough answers were seen.
    pub fn hedge_after(&self, after: HedgeAfter) -> Option<Duration> {
        match after {
            HedgeAfter::Fixed(d) => Some(d),
            // Never at once: a hedge is for a request that is late, not for every request.
            HedgeAfter::P95 => self.p95.map(|p95| p95.max(MIN_HEDGE_AFTER)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn percentiles_come_after_enough_samples_and_follow_them() {
        let mut l = Latencies::default();
        assert_eq!(l.hedge_after(HedgeAfter::Fixed(50 * MS)), Some(50 * MS));
        for _ in 0..19 {
            l.record(10 * MS);
        }
        assert_eq!(
            l.hedge_after(HedgeAfter::P95),
            None,
            "19 samples are too few"
        );
        l.record(10 * MS);
        assert_eq!(l.p95(), Some(10 * MS));
        // 90 fast, 10 slow (of 120): p95 lands among the slow.
        for i in 0..100 {
            l.record(if i % 10 == 0 { 400 * MS } else { 10 * MS });
        }
        assert_eq!(l.p50(), Some(10 * MS));
        assert_eq!(l.hedge_after(HedgeAfter::P95), Some(400 * MS));
        // The ring forgets: a run of fast answers brings p95 down.
        for _ in 0..SAMPLES {
            l.record(5 * MS);
        }
        assert_eq!(l.p95(), Some(5 * MS));
        for _ in 0..SAMPLES {
            l.record(Duration::ZERO);
        }
        assert_eq!(l.hedge_after(HedgeAfter::P95), Some(MS), "never at once");
    }
}
