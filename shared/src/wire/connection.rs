//! The connection task's shared state ([`Inner`]: the outgoing buffer, the subscriptions, the
//! pool, the flags) and one server connection at work ([`serve`]): reading and dispatching the
//! server's operations, writing what publishers queued in as few writes as it can, and PINGs
//! that find a hung server.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch, Notify};
use tracing::{debug, warn};

use crate::wire::batch::{self, Gather, Step};
use crate::wire::connector::Security;
use crate::wire::error::ConnError;
use crate::wire::options::Server;
use crate::wire::pool::Pool;
use crate::wire::protocol::{parse_op, put_u64, read_more, write_sub, Info, Msg, Op, READ_CHUNK};

/// The largest `max_payload` believed from a server's `INFO` (nats-server's own limit): the
/// read buffer's bound whatever a server says.
pub(crate) const MAX_PAYLOAD_CAP: usize = 64 * 1024 * 1024;

/// A subscription's callback.
pub(crate) type Deliver = Arc<dyn Fn(Msg) + Send + Sync>;

/// One subscription, as it is sent again after every reconnect.
pub(crate) struct Sub {
    pub subject: String,
    pub queue: Option<String>,
    pub deliver: Deliver,
}

/// What waits to be sent to the server.
pub(crate) struct Out {
    pub buf: BytesMut,
    /// PING sent and not yet answered, oldest first; `Some` for a flush waiting on it.
    pub pings: VecDeque<Option<oneshot::Sender<()>>>,
    /// Keep-alive PINGs sent since the server last answered one (flushes' not counted: a
    /// burst of flushes must not make a live server look dead).
    pub keepalive_out: usize,
}

/// What the handles, the connection task and its supervisor share.
pub(crate) struct Inner {
    /// The connection's name (in `CONNECT` and in logs).
    pub name: String,
    /// The pool: the URL list (shuffled), then servers announced by the cluster.
    pub servers: Mutex<Pool>,
    pub sec: Security,
    pub out: Mutex<Out>,
    /// Wakes the writer: something to send, or closing.
    pub wake_writer: Notify,
    pub subs: RwLock<HashMap<u64, Sub>>,
    pub next_sid: AtomicU64,
    pub connected: AtomicBool,
    pub closing: AtomicBool,
    pub max_payload: AtomicUsize,
    /// A subscriber's callback panicked: the supervisor restarts the connection task.
    pub panics: AtomicU64,
    /// Number of connections made, for `Connection::connected` and tests.
    pub state: watch::Sender<u64>,
    /// The turns of the event loop the writer gathers a burst over (see `batch`).
    pub gather_turns: batch::Turns,
}

impl Inner {
    /// The state of a connection called `name` that has not connected yet.
    pub(crate) fn new(name: &str, servers: Vec<Server>, sec: Security) -> Inner {
        Inner {
            name: name.to_owned(),
            servers: Mutex::new(Pool::new(servers)),
            sec,
            out: Mutex::new(Out {
                buf: BytesMut::with_capacity(READ_CHUNK),
                pings: VecDeque::new(),
                keepalive_out: 0,
            }),
            wake_writer: Notify::new(),
            subs: RwLock::new(HashMap::new()),
            next_sid: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            max_payload: AtomicUsize::new(1024 * 1024),
            panics: AtomicU64::new(0),
            state: watch::channel(0).0,
            gather_turns: batch::turns_from_env(),
        }
    }

    /// Writes into the outgoing buffer `out` holds, then wakes the writer if the buffer was
    /// empty. Whoever makes it non-empty wakes the writer, and the writer takes all of it, so
    /// the others need not.
    pub(crate) fn queue(&self, mut out: MutexGuard<'_, Out>, write: impl FnOnce(&mut Out)) {
        let was_empty = out.buf.is_empty();
        write(&mut out);
        drop(out);
        if was_empty {
            self.wake_writer.notify_one();
        }
    }

    /// Appends protocol bytes regardless of the publish checks (PONG, SUB, UNSUB).
    pub(crate) fn send_raw(&self, write: impl FnOnce(&mut BytesMut)) {
        if let Ok(out) = self.out.lock() {
            self.queue(out, |out| write(&mut out.buf));
        }
    }

    /// What an `INFO` from `from` says that this connection uses: its `max_payload`, and the
    /// cluster's other servers (`connect_urls`), added to the pool with `from`'s credentials
    /// and TLS.
    pub(crate) fn learn(&self, info: &Info, from: &Server) {
        if info.max_payload > 0 {
            self.max_payload
                .store(info.max_payload.min(MAX_PAYLOAD_CAP), Ordering::Relaxed);
        }
        if info.connect_urls.is_empty() {
            return;
        }
        if let Ok(mut pool) = self.servers.lock() {
            pool.learn(&info.connect_urls, from);
        }
    }

    /// Forgets subscription `sid`, and tells the server when connected.
    pub(crate) fn unsubscribe(&self, sid: u64) {
        let Ok(mut subs) = self.subs.write() else {
            return;
        };
        if subs.remove(&sid).is_some() && self.connected.load(Ordering::Acquire) {
            self.send_raw(|buf| {
                buf.put_slice(b"UNSUB ");
                put_u64(buf, sid);
                buf.put_slice(b"\r\n");
            });
        }
    }

    /// Hands `msg` to the callback of subscription `sid`.
    fn deliver(&self, sid: u64, msg: Msg) {
        let deliver = match self.subs.read() {
            Ok(subs) => subs.get(&sid).map(|s| s.deliver.clone()),
            Err(_) => None,
        };
        match deliver {
            Some(deliver) => deliver(msg),
            None => debug!(sid, "message for a subscription that is gone"),
        }
    }

    /// Marks the connection up (every subscription sent again) or down (what was queued
    /// dropped, flushes told).
    pub(crate) fn set_connected(&self, connected: bool) {
        if connected {
            // Every subscription, then "connected", under the subscriptions' lock (see
            // `subscribe`), so that none is missed or sent twice.
            let Ok(subs) = self.subs.read() else {
                return;
            };
            if let Ok(mut out) = self.out.lock() {
                out.buf.clear();
                out.pings.clear();
                out.keepalive_out = 0;
                for (sid, sub) in subs.iter() {
                    write_sub(&mut out.buf, *sid, &sub.subject, sub.queue.as_deref());
                }
                self.connected.store(true, Ordering::Release);
            }
            drop(subs);
            self.state.send_modify(|n| *n += 1);
            self.wake_writer.notify_one();
        } else {
            // What was queued for the lost connection is dropped: its requests time out or were
            // already answered as failed by whoever waits for them.
            if let Ok(mut out) = self.out.lock() {
                self.connected.store(false, Ordering::Release);
                out.buf.clear();
                out.pings.clear();
                out.keepalive_out = 0;
            }
            self.state.send_modify(|_| {});
        }
    }
}
/// Bytes waiting to be written (0 if the lock is poisoned: the writer then finds out itself).
fn queued_len(inner: &Inner) -> usize {
    inner.out.lock().map(|o| o.buf.len()).unwrap_or(0)
}

/// Runs one server connection: `Ok` when closed on purpose, `Err` when lost. Generic over the
/// stream: plain TCP runs exactly the code it ran before TLS existed.
pub(crate) async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    inner: &Inner,
    server: &Server,
    mut reader: R,
    mut writer: W,
    mut buf: BytesMut,
) -> Result<(), ConnError> {
    let reading = async {
        loop {
            while let Some(op) = parse_op(&mut buf, inner.max_payload.load(Ordering::Relaxed))? {
                match op {
                    Op::Msg { sid, msg } => inner.deliver(sid, msg),
                    Op::Ping => inner.send_raw(|b| b.put_slice(b"PONG\r\n")),
                    Op::Pong => {
                        let waiter = inner.out.lock().ok().and_then(|mut o| {
                            // Any answer shows the server alive.
                            o.keepalive_out = 0;
                            o.pings.pop_front()
                        });
                        if let Some(Some(waiter)) = waiter {
                            let _ = waiter.send(());
                        }
                    }
                    Op::Ok => {}
                    Op::Err(e) => {
                        warn!(name = %inner.name, error = %e, "nats server error");
                        let lower = e.to_ascii_lowercase();
                        // The connection stays up after these two; after any other the server
                        // closes it.
                        if !lower.starts_with("permissions violation")
                            && !lower.starts_with("invalid subject")
                        {
                            return Err::<(), _>(ConnError::from_server(e));
                        }
                    }
                    Op::Info(json) => {
                        if let Ok(info) = serde_json::from_str::<Info>(&json) {
                            inner.learn(&info, server);
                            if info.ldm {
                                return Err(ConnError::LameDuck);
                            }
                        }
                    }
                }
            }
            read_more(&mut reader, &mut buf).await?;
        }
    };
    let writing = async {
        let mut spare = BytesMut::with_capacity(READ_CHUNK);
        loop {
            let closing = inner.closing.load(Ordering::Acquire);
            {
                let mut out = inner
                    .out
                    .lock()
                    .map_err(|_| ConnError::Protocol("poisoned".into()))?;
                std::mem::swap(&mut out.buf, &mut spare);
            }
            if !spare.is_empty() {
                writer.write_all(&spare).await?;
                // A no-op on TCP; TLS sends the records it holds.
                writer.flush().await?;
                spare.clear();
                // What came in during the write goes out next without waiting for a wake.
                continue;
            }
            if closing {
                let _ = writer.shutdown().await;
                return Ok::<(), ConnError>(());
            }
            inner.wake_writer.notified().await;
            // Let what else is ready on this thread run first (the rest of a read's requests,
            // replies woken by the same poll, HTTP responses read in the next turns): what they
            // publish goes out in this one write. On loopback every write also runs the
            // receiver's TCP stack, so fewer, larger writes are most of what batching saves.
            // Gathering ends when a turn adds nothing, bounded (see `batch`).
            let mut gather = Gather::start_with(queued_len(inner), inner.gather_turns);
            while gather.next(queued_len(inner)) == Step::Yield {
                tokio::task::yield_now().await;
            }
        }
    };
    let pinging = async {
        let mut tick = tokio::time::interval(inner.sec.ping_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Ok(mut out) = inner.out.lock() else {
                return Err::<(), _>(ConnError::Stale);
            };
            if out.keepalive_out >= inner.sec.max_pings_out {
                return Err(ConnError::Stale);
            }
            out.keepalive_out += 1;
            inner.queue(out, |out| {
                out.buf.put_slice(b"PING\r\n");
                out.pings.push_back(None);
            });
        }
    };
    tokio::select! {
        r = reading => r,
        r = writing => r,
        r = pinging => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::options::{parse_servers, NatsSettings};

    #[test]
    fn a_servers_max_payload_is_believed_up_to_the_cap_and_its_servers_join_the_pool() {
        let settings = NatsSettings::with_url("nats://a:1");
        let sec = Security::load(&settings).expect("settings");
        let from = parse_servers(&settings.url).expect("url").remove(0);
        let inner = Inner::new("pool", vec![from.clone()], sec);
        let info = Info {
            connect_urls: vec!["b:2".into()],
            max_payload: usize::MAX,
            ..Info::default()
        };
        inner.learn(&info, &from);
        // A server's max_payload is believed up to nats-server's own limit only.
        assert_eq!(inner.max_payload.load(Ordering::Relaxed), MAX_PAYLOAD_CAP);
        let pool = inner.servers.lock().expect("pool").addresses();
        assert_eq!(pool, ["a:1", "b:2"]);
    }

    /// Counts the writes made to it.
    struct Counting(Arc<Mutex<Vec<usize>>>);

    impl AsyncWrite for Counting {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().expect("writes").push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Replies that come in over several turns of the event loop (as HTTP responses do) go
    /// out in one write, not one per turn; a lone publish is not held back.
    #[tokio::test(flavor = "current_thread")]
    async fn replies_ready_over_a_few_turns_go_out_in_one_write() {
        let settings = NatsSettings::with_url("nats://a:1");
        let sec = Security::load(&settings).expect("settings");
        let server = parse_servers(&settings.url).expect("url").remove(0);
        let inner = Arc::new(Inner::new("batch", vec![server.clone()], sec));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (_keep, reader) = tokio::io::duplex(64);
        let task = {
            let inner = inner.clone();
            let writer = Counting(writes.clone());
            tokio::spawn(async move {
                let _ = serve(&inner, &server, reader, writer, BytesMut::new()).await;
            })
        };
        // Let the writer reach its wait.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        // Four "replies", each ready one turn of the event loop after the one before (each
        // publishes, then starts the next, which waits for the next turn as an HTTP response
        // read on the next poll of the driver would).
        fn reply(inner: Arc<Inner>, left: u32) -> tokio::task::JoinHandle<()> {
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                inner.send_raw(|b| b.put_slice(b"PUB r 1\r\nx\r\n"));
                if left > 1 {
                    let _ = reply(inner, left - 1).await;
                }
            })
        }
        reply(inner.clone(), 4).await.expect("replies");
        for _ in 0..(batch::MAX_TURNS * 2) {
            tokio::task::yield_now().await;
        }
        assert_eq!(*writes.lock().expect("writes"), vec![4 * 12]);
        // A lone publish later is written after one quiet turn.
        inner.send_raw(|b| b.put_slice(b"PING\r\n"));
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*writes.lock().expect("writes"), vec![4 * 12, 6]);
        task.abort();
    }
}
