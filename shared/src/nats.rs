//! The async-nats connect helper: the gateway's client for JetStream, KV and the admin's
//! discovery requests, configured from the `[nats]` settings ([`NatsSettings`], which live
//! with the request path's client in [`crate::wire`] and are re-exported here). Requests and
//! replies travel on [`crate::wire`] instead, with the same settings.
//!
//! This module uses the wire's settings and credential parsing; the wire uses nothing of it.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ReconnectToServer, ServerInfo};
use tracing::{debug, error, info, warn};

use crate::wire::auth::{self, Auth};
use crate::wire::options::parse_servers;
pub use crate::wire::options::{
    redact_url, NatsSettings, DEFAULT_MAX_PINGS_OUT, DEFAULT_PING_INTERVAL,
};
use crate::Error;

/// Messages a client queues for its connection before a publish waits for room. async-nats'
/// default, 2,048, was reached by a burst of requests when they were published through it; a
/// burst of asynchronous submits (JetStream publishes) still can be: every one beyond it waits
/// inside its admission (about 2 KiB) rather than as a queued message (a few hundred bytes).
/// Queued messages are bounded by this count.
pub const CLIENT_CAPACITY: usize = 64 * 1024;

/// Connects with `settings` as `name`. The client reconnects forever and logs every state
/// change; when no server answers yet, this returns at once and the client keeps trying in the
/// background (callers report readiness from [`Client::connection_state`]).
///
/// Credentials in the URL (`user:password@`, `token@`: the first entry that has some) are given
/// to the client as options, and the servers without them: async-nats 0.51 does not send a
/// URL's credentials itself (the server answered "authorization violation"), and a URL without
/// them is one that no log of the client can leak.
pub async fn connect(settings: &NatsSettings, name: &str) -> Result<Client, Error> {
    open(settings, name, true).await
}

/// How long [`connect_now`] tries servers that do not answer.
pub const CONNECT_NOW_WITHIN: Duration = Duration::from_secs(10);

/// Connects with `settings` as `name` for a command that runs once and needs the connection
/// now (`busgate config`): returns once connected; retries a server that does not answer for
/// at most `within`, but never credentials a server refused: an authorization violation (or a
/// nonce it could not sign) is returned at once, as [`Error::Connect`] whose source says so,
/// rather than as a JetStream request timing out behind a client that keeps retrying.
pub async fn connect_now(
    settings: &NatsSettings,
    name: &str,
    within: Duration,
) -> Result<Client, Error> {
    let until = tokio::time::Instant::now() + within;
    let mut backoff = crate::backoff::ExponentialBackoff::new(
        Duration::from_millis(200),
        Duration::from_secs(2),
        0.5,
    )
    .stream();
    loop {
        match open(settings, name, false).await {
            Err(Error::Connect { url, source }) if !refused(&source) => {
                let delay = backoff.next_delay();
                if tokio::time::Instant::now() + delay >= until {
                    return Err(Error::Connect { url, source });
                }
                debug!(%url, error = %source, retry_in = ?delay, "nats not reachable yet");
                tokio::time::sleep(delay).await;
            }
            done => return done,
        }
    }
}

/// Whether a connection failed on its credentials: trying again cannot help.
fn refused(e: &async_nats::ConnectError) -> bool {
    matches!(
        e.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication
    )
}

/// [`connect`] (`retry`: the client keeps trying in the background) or one try of every
/// server ([`connect_now`]).
async fn open(settings: &NatsSettings, name: &str, retry: bool) -> Result<Client, Error> {
    settings.validate()?;
    let url = settings.url.as_str();
    let logged_url = redact_url(url);
    let servers = parse_servers(url)?;
    // One address per server: async-nats reads a string as one server, so a comma-separated
    // list given as a string fails to parse ("invalid port number").
    let plain: Vec<async_nats::ServerAddr> = servers
        .iter()
        .map(|s| {
            let scheme = if s.tls { "tls" } else { "nats" };
            match s.host.contains(':') {
                true => format!("{scheme}://[{}]:{}", s.host, s.port),
                false => format!("{scheme}://{}:{}", s.host, s.port),
            }
        })
        .map(|address| address.parse())
        .collect::<Result<_, std::io::Error>>()
        .map_err(|e| Error::invalid("nats.url", e.to_string()))?;
    let mut options = match servers.iter().map(|s| &s.auth).find(|a| **a != Auth::None) {
        Some(Auth::User { user, pass }) => {
            ConnectOptions::with_user_and_password(user.clone(), pass.clone())
        }
        Some(Auth::Token(token)) => ConnectOptions::with_token(token.clone()),
        Some(Auth::None) | None => ConnectOptions::new(),
    };
    if !settings.creds_file.is_empty() {
        // Read here, so that a missing file is a clear error (async-nats' says only "io").
        let creds = std::fs::read_to_string(&settings.creds_file).map_err(|e| {
            Error::invalid(
                "nats.creds_file",
                format!("cannot read {}: {}", settings.creds_file, e.kind()),
            )
        })?;
        auth::parse_creds(&creds)?;
        options = options
            .credentials(&creds)
            .map_err(|_| Error::invalid("nats.creds_file", "not a valid .creds file"))?;
    }
    if !settings.nkey_file.is_empty() {
        let seed = auth::read_seed(&settings.nkey_file)?;
        options = options.nkey(seed);
    }
    if !settings.ca_file.is_empty() {
        options = options.add_root_certificates(PathBuf::from(&settings.ca_file));
    }
    if !settings.cert_file.is_empty() {
        options = options.add_client_certificate(
            PathBuf::from(&settings.cert_file),
            PathBuf::from(&settings.key_file),
        );
    }
    if settings.handshake_first {
        options = options.tls_first();
    }
    if retry {
        options = options.retry_on_initial_connect();
    }
    options
        .require_tls(settings.requires_tls())
        .ping_interval(settings.ping_interval)
        .name(name)
        .max_reconnects(None)
        .client_capacity(CLIENT_CAPACITY)
        .reconnect_to_server_callback(|pool, info| async move { reconnect_to(&pool, &info) })
        .event_callback(move |event| {
            let url = logged_url.clone();
            async move {
                match event {
                    Event::Connected => info!(%url, "nats connected"),
                    Event::Disconnected => warn!(%url, "nats disconnected, reconnecting"),
                    Event::LameDuckMode => warn!(%url, "nats server entering lame duck mode"),
                    Event::SlowConsumer(sid) => warn!(sid, "nats slow consumer, messages dropped"),
                    Event::Draining | Event::Closed => info!(%url, %event, "nats"),
                    Event::ServerError(e) => error!(%url, error = %e, "nats server error"),
                    Event::ClientError(e) => error!(%url, error = %e, "nats client error"),
                }
            }
        })
        .connect(plain)
        .await
        .map_err(|source| Error::Connect {
            url: redact_url(url),
            source,
        })
}

/// Which server of `pool` the client reconnects to after losing the one `last` describes:
/// the servers that failed least first, in random order, and the lost one last among them.
///
/// async-nats' own choice is "shuffle, then fewest failures first": the server just lost has
/// no failure on record (it was connected), and the pool holds it twice (as configured and as
/// the cluster announced it), so it was tried first one time in three. A hung server (SIGSTOP,
/// a frozen VM) accepts the TCP connection in its kernel and never sends `INFO`: that try cost
/// the whole connection timeout (5 s) on top of the PINGs that found it hung, and while this
/// client is down a gateway refuses its synchronous requests (503): a hung node cost a gateway
/// whose client was on it about 8 s of refusals instead of 3, close to the 10 s bound of
/// `faults::a_hung_node…` (over it on a loaded machine).
fn reconnect_to(pool: &[async_nats::Server], last: &ServerInfo) -> Option<ReconnectToServer> {
    let candidates: Vec<(&str, u16, usize)> = pool
        .iter()
        .map(|s| {
            let host = s.addr.host().trim_start_matches('[').trim_end_matches(']');
            (host, s.addr.port(), s.failed_attempts)
        })
        .collect();
    let pick = pick_server(
        &candidates,
        &last.host,
        last.port,
        rand::random::<u32>() as usize,
    )?;
    let server = pool.get(pick)?;
    let delay = match server.failed_attempts {
        0 => Duration::ZERO,
        n => crate::wire::supervisor::reconnect_backoff()
            .delay_for(u32::try_from(n - 1).unwrap_or(u32::MAX)),
    };
    debug!(server = %server.addr.as_url_str(), ?delay, "nats reconnecting");
    Some(ReconnectToServer {
        addr: server.addr.clone(),
        delay: Some(delay),
    })
}

/// The index in `servers` (`host`, `port`, failures in a row) to try next: fewest failures
/// first, the lost server (`lost_host`:`lost_port`, from its `INFO`) after the others with as
/// few, ties broken by `seed`. Every entry of the lost server is put last (the pool can hold it
/// twice: as configured, `tls://h:p`, and as the cluster announced it, `nats://h:p`). A server
/// that listens on `0.0.0.0` reports that as its host: then its port alone tells it, unless
/// entries of several hosts have that port, and then none is put last.
fn pick_server(
    servers: &[(&str, u16, usize)],
    lost_host: &str,
    lost_port: u16,
    seed: usize,
) -> Option<usize> {
    let unspecified = lost_host.is_empty()
        || lost_host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
    let matches = |(host, port, _): &(&str, u16, usize)| {
        *port == lost_port && (unspecified || host.eq_ignore_ascii_case(lost_host))
    };
    let mut hosts = servers
        .iter()
        .filter(|s| matches(s))
        .map(|(host, _, _)| host.to_ascii_lowercase());
    let one_host = hosts.next().is_some_and(|first| hosts.all(|h| h == first));
    let lost = |i: usize| one_host && matches(&servers[i]);
    let n = servers.len();
    (0..n)
        .map(|i| (i + seed % n) % n)
        .min_by_key(|&i| (servers[i].2, lost(i)))
}

/// Whether the client is connected right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_survive_redaction() {
        let cases = [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://u:s3cret@h:4222", "nats://***@h:4222"),
            ("nats://t0ken@h", "nats://***@h"),
            ("u:p%40ss@h:1, tls://a:b@c:2/", "***@h:1, tls://***@c:2/"),
            ("nats://u:p@ss@h", "nats://***@h"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
        let e = Error::Connect {
            url: redact_url("nats://u:s3cret@h"),
            source: async_nats::ConnectError::from(async_nats::ConnectErrorKind::Io),
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn a_lost_server_is_tried_after_the_others() {
        let pool = [
            ("127.0.0.1", 4001, 0),
            ("127.0.0.1", 4002, 0),
            ("127.0.0.1", 4003, 0),
        ];
        for seed in 0..6 {
            let pick = pick_server(&pool, "127.0.0.1", 4002, seed).expect("a server");
            assert_ne!(pick, 1, "seed {seed}");
        }
        // Once the others failed, the lost one is next; fewest failures always first.
        let failed = [
            ("127.0.0.1", 4001, 1),
            ("127.0.0.1", 4002, 0),
            ("127.0.0.1", 4003, 1),
        ];
        assert_eq!(pick_server(&failed, "127.0.0.1", 4002, 0), Some(1));
        let lost_failed = [("a", 4222, 1), ("b", 4222, 2), ("c", 4222, 1)];
        assert_ne!(pick_server(&lost_failed, "a", 4222, 0), Some(1));
        // Every server on 4222 behind 0.0.0.0: the lost one cannot be told apart.
        let same = [("a", 4222, 0), ("b", 4222, 0)];
        let picks: std::collections::HashSet<_> = (0..4)
            .filter_map(|seed| pick_server(&same, "0.0.0.0", 4222, seed))
            .collect();
        assert_eq!(picks.len(), 2);
        assert_eq!(pick_server(&[], "h", 1, 0), None);
    }
}
