//! The NATS connect helper every Busgate binary uses.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use tracing::{error, info, warn};

use crate::{wire, Error};

/// The two connections of a process that serves requests: async-nats for JetStream, KV and the
/// NATS service API, and the lean [`wire::Connection`] that requests and replies travel on.
#[derive(Clone)]
pub struct Bus {
    /// For everything but the request path.
    pub client: Client,
    /// The request path.
    pub wire: wire::Connection,
}

impl Bus {
    /// Connects both to `url` as `name` (see [`connect`] and [`wire::Connection::connect`]).
    pub async fn connect(url: &str, name: &str) -> Result<Bus, Error> {
        let wire = wire::Connection::connect(url, &format!("{name} requests"))?;
        let client = connect(url, name).await?;
        Ok(Bus { client, wire })
    }

    /// Whether both are connected right now.
    pub fn is_connected(&self) -> bool {
        is_connected(&self.client) && self.wire.is_connected()
    }

    /// Sends what is queued on both (the request path bounded by 2 s) and closes them.
    pub async fn close(&self) -> Result<(), Error> {
        self.wire.close(Duration::from_secs(2)).await;
        self.client
            .drain()
            .await
            .map_err(|e| Error::Service(format!("draining nats: {e}")))
    }
}

/// Messages a client queues for its connection before a publish waits for room. async-nats'
/// default, 2,048, is reached by a burst of requests to a gateway: every request beyond it then
/// waits inside its admission (about 2 KiB: head, payload, headers, the publish future) rather
/// than as a queued message (a few hundred bytes). Queued messages are bounded by this count.
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
