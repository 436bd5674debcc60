//! The async-nats connect helper: the gateway's client for JetStream, KV and the admin's
//! discovery requests. Requests and replies travel on [`crate::wire`] instead.

use async_nats::{Client, ConnectOptions, Event};
use tracing::{error, info, warn};

use crate::Error;

/// Messages a client queues for its connection before a publish waits for room. async-nats'
/// default, 2,048, was reached by a burst of requests when they were published through it; a
/// burst of asynchronous submits (JetStream publishes) still can be: every one beyond it waits
/// inside its admission (about 2 KiB) rather than as a queued message (a few hundred bytes).
/// Queued messages are bounded by this count.
pub const CLIENT_CAPACITY: usize = 64 * 1024;

/// Connects to `url` as `name`. The client reconnects forever and logs every state change;
/// when no server answers yet, this returns at once and the client keeps trying in the
/// background (callers report readiness from [`Client::connection_state`]).
pub async fn connect(url: &str, name: &str) -> Result<Client, Error> {
    let logged_url = url.to_owned();
    ConnectOptions::new()
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
        .connect(url)
        .await
        .map_err(|source| Error::Connect {
            url: url.to_owned(),
            source,
        })
}

/// Whether the client is connected right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}
