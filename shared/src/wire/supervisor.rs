//! Supervision: the connection task is restarted when it panics (a subscriber's callback,
//! say), and the connection is made and remade forever, to each server of the pool in turn: a
//! lost server is left for the next at once, a server in lame-duck mode too, and a round over
//! every server that failed waits a jittered, growing delay
//! ([`crate::backoff::ExponentialBackoff`]) before the next.
//!
//! Both loops stop when the connection is closed ([`Connection::close`](crate::wire::Connection::close)
//! or the last handle dropped): the handles own the task, so it has no drain watch of its
//! own; a process drains its connections by closing them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::backoff::ExponentialBackoff;
use crate::wire::connection::{serve, Inner};
use crate::wire::connector::{handshake, Link, HANDSHAKE_TIMEOUT};
use crate::wire::error::ConnError;

/// Delays between rounds over the pool that all failed, and before the connection task is
/// started again after a panic (a callback that panics on every message must not make that a
/// busy loop): 50 ms doubling to 2 s, plus up to half again at random, so that the clients that
/// lost the same server do not come back together. The async-nats client of `crate::nats`
/// takes its reconnect delays from here too.
pub(crate) fn reconnect_backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(50), Duration::from_secs(2), 0.5)
}

/// Runs the connection task and restarts it when it panics (a subscriber's callback, say):
/// whatever happens in it, the connection is either up or being remade, and
/// [`Connection::is_connected`](crate::wire::Connection::is_connected) says which.
pub(crate) async fn supervise(inner: Arc<Inner>) {
    let policy = reconnect_backoff();
    let mut restarts = policy.stream();
    loop {
        let started = Instant::now();
        let task = tokio::spawn(run(inner.clone()));
        match task.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                inner.panics.fetch_add(1, Ordering::Relaxed);
                inner.set_connected(false);
                error!(name = %inner.name, "the nats connection task panicked; reconnecting");
                if inner.closing.load(Ordering::Acquire) {
                    return;
                }
                // A task that ran for a while before it panicked starts the delays afresh.
                if started.elapsed() > policy.max() {
                    restarts.reset();
                }
                if !wait(&inner, restarts.next_delay()).await {
                    return;
                }
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
    }
}

/// Waits `delay`; false when the connection is closed first.
async fn wait(inner: &Inner, delay: Duration) -> bool {
    let closing = async {
        while !inner.closing.load(Ordering::Acquire) {
            inner.wake_writer.notified().await;
        }
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = closing => false,
    }
}

/// Connects, re-connects and runs the connection until it is closed.
async fn run(inner: Arc<Inner>) {
    let mut backoff = reconnect_backoff().stream();
    // Failures in a row: the first is a warning, the rest debug, except those an operator must
    // fix (credentials, certificates), which are errors every time.
    let mut failures = 0u32;
    while !inner.closing.load(Ordering::Acquire) {
        let (server, round_ends) = {
            let Ok(mut pool) = inner.servers.lock() else {
                return;
            };
            pool.next()
        };
        let addr = format!("{}:{}", server.host, server.port);
        let learn = |info: &_| inner.learn(info, &server);
        let attempt = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake(&inner.sec, &inner.name, &server, &learn),
        )
        .await
        .unwrap_or_else(|_| Err(ConnError::Io(std::io::ErrorKind::TimedOut.into())));
        match attempt {
            Ok(link) => {
                backoff.reset();
                failures = 0;
                inner.set_connected(true);
                let tls = matches!(link, Link::Tls(..));
                info!(name = %inner.name, server = %addr, tls, "nats request path connected");
                let ended = match link {
                    Link::Plain(reader, writer, rest) => {
                        serve(&inner, &server, reader, writer, rest).await
                    }
                    Link::Tls(reader, writer, rest) => {
                        serve(&inner, &server, reader, writer, rest).await
                    }
                };
                inner.set_connected(false);
                let lame_duck = matches!(ended, Err(ConnError::LameDuck));
                match ended {
                    Ok(()) => break,
                    Err(e) if e.needs_operator() => {
                        error!(name = %inner.name, server = %addr, error = %e, "nats refused the connection, reconnecting")
                    }
                    Err(e) => {
                        warn!(name = %inner.name, server = %addr, error = %e, "nats request path disconnected, reconnecting")
                    }
                }
                if lame_duck {
                    // Straight to the next server: this one is going away.
                    continue;
                }
            }
            Err(e) => {
                failures += 1;
                if e.needs_operator() {
                    error!(name = %inner.name, server = %addr, error = %e, "cannot connect to nats");
                } else if failures == 1 {
                    warn!(name = %inner.name, server = %addr, error = %e, "cannot connect to nats, retrying");
                } else {
                    debug!(name = %inner.name, server = %addr, error = %e, "cannot connect to nats");
                }
            }
        }
        if round_ends {
            // A round over every server ended: wait (or stop) before the next.
            if !wait(&inner, backoff.next_delay()).await {
                break;
            }
        }
    }
    // Flush waiters learn the connection is gone.
    inner.set_connected(false);
}
