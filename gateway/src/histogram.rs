//! A latency histogram of atomics, for what the request path records per source: an
//! observation is two relaxed `fetch_add`s (its bucket and the sum), never a lock.
//! prometheus-client's `Histogram` takes a write lock per observation, which every
//! concurrent request of a service would contend for.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds: 100 µs, doubling, 17 of them (to ~6.5 s), like the route histogram.
const BOUNDS: usize = 17;

/// Seconds in buckets, lock-free.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Per-bucket counts; the last one is +Inf.
    buckets: [AtomicU64; BOUNDS + 1],
    /// The sum, in microseconds.
    sum_micros: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

fn bound(i: usize) -> f64 {
    0.0001 * f64::from(1u32 << i)
}

impl AtomicHistogram {
    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        let micros = (seconds * 1e6).max(0.0);
        // Bucket i holds values up to 100 µs · 2^i: i = ceil(log2(µs / 100)), at least 0.
        let index = if micros <= 100.0 {
            0
        } else {
            ((micros / 100.0).log2().ceil() as usize).min(BOUNDS)
        };
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(micros.min(u64::MAX as f64) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut count = 0;
        let buckets: Vec<(f64, u64)> = (0..=BOUNDS)
            .map(|i| {
                let n = self.buckets[i].load(Ordering::Relaxed);
                count += n;
                (if i == BOUNDS { f64::MAX } else { bound(i) }, n)
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = AtomicHistogram::default();
        for s in [0.00005, 0.0001, 0.00015, 0.0002, 0.5, 100.0] {
            h.observe(s);
        }
        let counts: Vec<u64> = h
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[0], 2, "up to 100 µs");
        assert_eq!(counts[1], 2, "up to 200 µs");
        // 0.5 s: 100 µs · 2^13 = 0.8192 s is the first bound above it.
        assert_eq!(counts[13], 1);
        assert_eq!(counts[BOUNDS], 1, "+Inf");
        assert_eq!(h.sum_micros.load(Ordering::Relaxed), 100_500_500);
    }
}
