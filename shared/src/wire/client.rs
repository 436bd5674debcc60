//! The public handle: [`Connection`] (publish, subscribe, flush, close, state) and
//! [`Subscription`]. A publish is written straight into the outgoing buffer under its lock; the
//! connection task (started here, under its supervisor) does the rest.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BufMut;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::error::PublishError;
use crate::wire::connection::{Inner, Sub};
use crate::wire::connector::Security;
use crate::wire::error::FlushError;
use crate::wire::options::{parse_servers, NatsSettings};
use crate::wire::protocol::{header_block_len, valid_subject, write_pub, write_sub, Msg};
use crate::wire::supervisor::supervise;
use crate::Error;

/// Bytes queued for the server beyond which a publish is refused ([`PublishError::Backlog`]).
pub const MAX_BACKLOG: usize = 64 * 1024 * 1024;

/// A NATS connection for the request path. Cloning is cheap; all clones share the connection,
/// which ends at [`Connection::close`] or when the last clone is dropped.
#[derive(Clone)]
pub struct Connection {
    handle: Arc<Handle>,
}

struct Handle {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        self.inner.wake_writer.notify_one();
    }
}

/// A subscription: messages go to its callback until it is dropped or unsubscribed.
pub struct Subscription {
    sid: u64,
    inner: Arc<Inner>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inner.unsubscribe(self.sid);
    }
}

impl Subscription {
    /// Stops the delivery of this subscription's messages.
    pub fn unsubscribe(self) {}
}

impl Connection {
    /// Connects to the servers of `urls` as `name`, with every other setting at its default.
    pub fn connect(urls: &str, name: &str) -> Result<Connection, Error> {
        Connection::connect_with(&NatsSettings::with_url(urls), name)
    }

    /// Connects with `settings` as `name`. Returns at once (after reading the key and
    /// certificate files); the connection is made, and remade after a loss, in the background
    /// ([`Connection::is_connected`]).
    pub fn connect_with(settings: &NatsSettings, name: &str) -> Result<Connection, Error> {
        let servers = parse_servers(&settings.url)?;
        let sec = Security::load(settings)?;
        let inner = Arc::new(Inner::new(name, servers, sec));
        let task = tokio::spawn(supervise(inner.clone()));
        Ok(Connection {
            handle: Arc::new(Handle {
                inner,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// The largest message the server takes (its `max_payload`; 1 MiB until it said).
    pub fn max_payload(&self) -> usize {
        self.inner().max_payload.load(Ordering::Relaxed)
    }

    /// Whether a server connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner().connected.load(Ordering::Acquire)
    }

    /// Waits until connected (at most `within`); true when connected.
    pub async fn connected(&self, within: Duration) -> bool {
        let mut state = self.inner().state.subscribe();
        tokio::time::timeout(within, async {
            while !self.is_connected() {
                if state.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && self.is_connected()
    }

    /// The server pool (`host:port`): the URL list, then the servers the cluster announced.
    pub fn servers(&self) -> Vec<String> {
        match self.inner().servers.lock() {
            Ok(pool) => pool.addresses(),
            Err(_) => Vec::new(),
        }
    }

    /// How many times a connection to a server has been made.
    pub fn connects(&self) -> u64 {
        *self.inner().state.borrow()
    }

    /// Queues a message for the server. `headers` are written as a NATS/1.0 header block (none
    /// at all when empty). Never waits: see [`PublishError`] for when it refuses.
    pub fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let inner = self.inner();
        if !valid_subject(subject) || reply.is_some_and(|r| !valid_subject(r)) {
            return Err(PublishError::InvalidSubject);
        }
        let header_len = header_block_len(headers)?;
        if header_len + payload.len() > inner.max_payload.load(Ordering::Relaxed) {
            return Err(PublishError::TooLarge);
        }
        let out = inner.out.lock().map_err(|_| PublishError::Closed)?;
        if inner.closing.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        if !inner.connected.load(Ordering::Acquire) {
            return Err(PublishError::NotConnected);
        }
        if out.buf.len() > MAX_BACKLOG {
            return Err(PublishError::Backlog);
        }
        inner.queue(out, |out| {
            write_pub(&mut out.buf, subject, reply, headers, header_len, payload);
        });
        Ok(())
    }

    /// Subscribes to `subject` (in queue group `queue`, if any). `deliver` runs on the read task
    /// for every message: it must be quick and must not block.
    pub fn subscribe(
        &self,
        subject: &str,
        queue: Option<&str>,
        deliver: impl Fn(Msg) + Send + Sync + 'static,
    ) -> Result<Subscription, PublishError> {
        if !valid_subject(subject) || queue.is_some_and(|q| !valid_subject(q)) {
            return Err(PublishError::InvalidSubject);
        }
        let inner = self.handle.inner.clone();
        let sid = inner.next_sid.fetch_add(1, Ordering::Relaxed);
        let sub = Sub {
            subject: subject.to_owned(),
            queue: queue.map(str::to_owned),
            deliver: Arc::new(deliver),
        };
        {
            let mut subs = inner.subs.write().map_err(|_| PublishError::Closed)?;
            // Under the subscriptions' lock, as a reconnect writes them all: the server gets
            // this SUB exactly once per connection.
            if inner.connected.load(Ordering::Acquire) {
                inner.send_raw(|buf| write_sub(buf, sid, &sub.subject, sub.queue.as_deref()));
            }
            subs.insert(sid, sub);
        }
        Ok(Subscription { sid, inner })
    }

    /// Waits until the server has processed everything sent before this call (a PING answered
    /// by its PONG), at most `within`.
    pub async fn flush(&self, within: Duration) -> Result<(), FlushError> {
        let inner = self.inner();
        let (tx, rx) = oneshot::channel();
        {
            let Ok(out) = inner.out.lock() else {
                return Err(FlushError::NotConnected);
            };
            if !inner.connected.load(Ordering::Acquire) {
                return Err(FlushError::NotConnected);
            }
            inner.queue(out, |out| {
                out.buf.put_slice(b"PING\r\n");
                out.pings.push_back(Some(tx));
            });
        }
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(FlushError::NotConnected),
            Err(_) => Err(FlushError::Timeout),
        }
    }

    /// Sends what is queued (bounded by `within`) and closes the connection for good.
    pub async fn close(&self, within: Duration) {
        let inner = self.inner();
        inner.closing.store(true, Ordering::Release);
        inner.wake_writer.notify_one();
        let task = self.handle.task.lock().ok().and_then(|mut t| t.take());
        if let Some(mut task) = task {
            if tokio::time::timeout(within, &mut task).await.is_err() {
                warn!(name = %inner.name, "nats connection did not close in time");
                task.abort();
            }
        }
    }
}
