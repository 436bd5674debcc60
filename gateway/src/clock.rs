//! Timestamps as the APIs write them.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// A time as RFC 3339 with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Waits `delay` before a retry, then doubles it (at most 5 s); false when `stop` changed
/// first, and the caller gives up.
pub async fn back_off(delay: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.changed() => return false,
        () = tokio::time::sleep(*delay) => {}
    }
    *delay = (*delay * 2).min(Duration::from_secs(5));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn back_off_doubles_up_to_five_seconds_and_gives_up_on_stop() {
        let (tx, mut stop) = watch::channel(false);
        let mut delay = Duration::from_secs(2);
        let started = tokio::time::Instant::now();
        assert!(back_off(&mut delay, &mut stop).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(delay, Duration::from_secs(4));
        assert!(back_off(&mut delay, &mut stop).await);
        assert_eq!(delay, Duration::from_secs(5));
        tx.send(true).expect("send");
        assert!(!back_off(&mut delay, &mut stop).await);
    }
}
