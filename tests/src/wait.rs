//! Bounded waits and free ports: [`eventually`] polls a condition, [`free_port`] reserves
//! nothing but names a port free a moment ago. No test sleeps to synchronise.

use std::time::{Duration, Instant};

/// Polls `check` until it holds, at most `within`; panics otherwise.
pub async fn eventually<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < until,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: another process may take it before its
/// user binds it, which on a test machine is rare; a node that fails to bind says so).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
