//! Time as the gateway uses it: timestamps as the APIs write them, and the delays of its retry
//! loops (one policy, from `busgate_shared::backoff`).

use std::time::{Duration, SystemTime};

use busgate_shared::backoff::ExponentialBackoff;

/// A time as RFC 3339 with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The delays of the gateway's retry loops (setting JetStream up, the configuration watch,
/// pulling asynchronous requests): from 200 ms, doubling up to 5 s, each up to half again at
/// random so that instances started together do not retry in step.
pub fn retry_backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(5), 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_grow_to_five_seconds_and_give_up_on_drain() {
        let policy = retry_backoff();
        assert_eq!(policy.min(), Duration::from_millis(200));
        assert_eq!(policy.max(), Duration::from_secs(5));
        let (signal, watch) = busgate_shared::drain::channel();
        let mut backoff = policy.stream();
        let started = tokio::time::Instant::now();
        assert!(backoff.wait(&watch).await);
        let first = started.elapsed();
        assert!(first >= Duration::from_millis(200) && first <= Duration::from_millis(300));
        let draining = tokio::spawn(signal.drain());
        assert!(!backoff.wait(&watch).await);
        drop(watch);
        draining.await.expect("drained");
    }
}
