//! The async-nats connect helper: the gateway's client for JetStream, KV and the admin's
//! discovery requests, configured from the `[nats]` settings ([`NatsSettings`], which live
//! with the request path's client in [`crate::wire`] and are re-exported here). Requests and
//! replies travel on [`crate::wire`] instead, with the same settings.
//!
//! This module uses the wire's settings and credential parsing; the wire uses nothing of it.

use std::path::PathBuf;

use async_nats::{Client, ConnectOptions, Event};
use tracing::{error, info, warn};

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
    options
        .require_tls(settings.requires_tls())
        .ping_interval(settings.ping_interval)
        .name(name)
        .max_reconnects(None)
        .client_capacity(CLIENT_CAPACITY)
        .retry_on_initial_connect()
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
}
