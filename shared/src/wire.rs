//! A lean NATS connection for the request path.
//!
//! Every request a gateway serves is a few messages each way: a publish per source with the
//! contract's four headers, and a reply per source. async-nats carries each through a channel
//! to its connection task, builds a `HeaderMap` (a hash map with a `String` per header) to send
//! it, parses every received header block into a new map and hands each message through a
//! subscription channel. Measured on the benchmark's merge, that bookkeeping was most of what
//! the contract's headers cost (the bare floor 1.0×, the floor with headers 0.8× nginx + Lua).
//!
//! This connection speaks the NATS client protocol itself, for what the request path needs:
//!
//! - [`Connection::publish`] is synchronous: it writes `PUB`/`HPUB` with the header block
//!   straight into one outgoing buffer; a writer task sends whatever has gathered with one
//!   write, so a burst goes out in a few syscalls.
//! - [`Connection::subscribe`] hands each `MSG`/`HMSG` to a callback on the read task, as a
//!   [`Msg`] whose parts are slices of the read buffer (no copy). The callback must not block:
//!   the gateway's collector pushes the reply to its gather, the SDK queues the request.
//! - Reconnects forever, to each server of the URL list in turn, re-subscribing; a `PING`
//!   every [`PING_INTERVAL`] finds a dead connection. While disconnected a publish fails at
//!   once ([`PublishError::NotConnected`]): the request path answers at once rather than queue
//!   work behind a deadline.
//!
//! JetStream, KV and the service API stay on async-nats (see [`crate::nats`]). Supported URLs:
//! `nats://host:port` (or `host:port`), comma-separated for a cluster, with `user:password@`
//! or `token@`. TLS and websocket URLs are refused by [`parse_servers`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often the connection asks the server whether it is still there.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Pings left unanswered before the connection is taken for dead.
const MAX_PINGS_OUT: usize = 2;
/// Bound on connecting to one server: TCP, `INFO`, `CONNECT` and the first `PONG`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes queued for the server beyond which a publish is refused ([`PublishError::Backlog`]).
pub const MAX_BACKLOG: usize = 64 * 1024 * 1024;
/// The longest control line accepted from a server (an `INFO` can be long in a large cluster).
const MAX_CONTROL_LINE: usize = 1024 * 1024;
/// What a read asks the socket for at least.
const READ_CHUNK: usize = 64 * 1024;

/// One server to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (4222 unless given).
    pub port: u16,
    /// `user:password@` or `token@` of the URL.
    pub auth: Auth,
}

/// Credentials carried in a server URL.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// None.
    #[default]
    None,
    /// `user:password@`.
    User {
        /// User.
        user: String,
        /// Password.
        pass: String,
    },
    /// `token@`.
    Token(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        match self {
            Auth::None => f.write_str("None"),
            Auth::User { user, .. } => write!(f, "User({user}, ***)"),
            Auth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// A URL list this connection cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nats url {url:?}: {reason}")]
pub struct UrlError {
    /// The offending entry (credentials removed).
    pub url: String,
    /// Why.
    pub reason: &'static str,
}

/// Parses a NATS URL list: `nats://[user:pass@|token@]host[:port]`, comma-separated.
pub fn parse_servers(urls: &str) -> Result<Vec<Server>, UrlError> {
    let mut servers = Vec::new();
    for entry in urls.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let fail = |reason| UrlError {
            url: crate::nats::redact_url(entry),
            reason,
        };
        let rest = match entry.split_once("://") {
            Some(("nats", rest)) => rest,
            Some(("tls" | "ws" | "wss", _)) => return Err(fail(
                "TLS and websocket connections are not supported on the request path; use nats://",
            )),
            Some(_) => return Err(fail("the scheme must be nats://")),
            None => entry,
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let auth = match userinfo {
            None => Auth::None,
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => Auth::User {
                    user: crate::validate::percent_decode(user)
                        .ok_or_else(|| fail("bad percent-encoding"))?,
                    pass: crate::validate::percent_decode(pass)
                        .ok_or_else(|| fail("bad percent-encoding"))?,
                },
                None => Auth::Token(
                    crate::validate::percent_decode(u)
                        .ok_or_else(|| fail("bad percent-encoding"))?,
                ),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, tail) = v6
                .split_once(']')
                .ok_or_else(|| fail("unclosed [ in host"))?;
            match tail.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if tail.is_empty() => (host, None),
                None => return Err(fail("junk after the IPv6 address")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(fail("no valid host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| fail("the port is not a number"))?,
            None => 4222,
        };
        servers.push(Server {
            host: host.to_owned(),
            port,
            auth,
        });
    }
    if servers.is_empty() {
        return Err(UrlError {
            url: crate::nats::redact_url(urls),
            reason: "no server in the list",
        });
    }
    Ok(servers)
}

/// The status the server sends to a request's reply subject when nobody serves its subject.
pub const NO_RESPONDERS: u16 = 503;

/// A message as it came off the wire. Its parts share the read buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    /// The subject it was published to.
    pub subject: Bytes,
    /// Where an answer goes, if anywhere.
    pub reply: Option<Bytes>,
    /// The header block (`NATS/1.0…` up to and including the blank line), if any.
    pub headers: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Msg")
            .field("subject", &String::from_utf8_lossy(&self.subject))
            .field(
                "reply",
                &self.reply.as_ref().map(|r| String::from_utf8_lossy(r)),
            )
            .field(
                "headers",
                &self.headers.as_ref().map(|h| String::from_utf8_lossy(h)),
            )
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Msg {
    /// The subject as text (subjects are ASCII; anything else reads as empty).
    pub fn subject(&self) -> &str {
        std::str::from_utf8(&self.subject).unwrap_or("")
    }

    /// The reply subject as text.
    pub fn reply(&self) -> Option<&str> {
        self.reply
            .as_deref()
            .and_then(|r| std::str::from_utf8(r).ok())
    }

    /// The status code of a status message ([`NO_RESPONDERS`], for example).
    pub fn status(&self) -> Option<u16> {
        status_of(self.headers.as_deref()?)
    }

    /// The first value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(self.headers.as_deref()?, name)
    }
}

/// The status of a header block: `NATS/1.0 503 No Responders` → 503.
fn status_of(block: &[u8]) -> Option<u16> {
    let line = block.split(|b| *b == b'\n').next()?;
    let rest = line.strip_prefix(b"NATS/1.0")?;
    let code = std::str::from_utf8(rest).ok()?.split_whitespace().next()?;
    code.parse().ok()
}

/// The first value of header `name` (case-insensitive, trimmed) in a header block.
pub fn header_value<'b>(block: &'b [u8], name: &str) -> Option<&'b str> {
    let text = std::str::from_utf8(block).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Why a publish was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No connection to a server right now.
    #[error("not connected to nats")]
    NotConnected,
    /// The connection is closed for good.
    #[error("the nats connection is closed")]
    Closed,
    /// More than [`MAX_BACKLOG`] bytes wait to be sent.
    #[error("too much is waiting to be sent to nats")]
    Backlog,
    /// Larger than the server's `max_payload`.
    #[error("message larger than the server's max_payload")]
    TooLarge,
    /// A subject that is empty or has whitespace or control characters.
    #[error("invalid subject")]
    InvalidSubject,
    /// A header name or value with CR, LF or (in a name) a colon.
    #[error("invalid header")]
    InvalidHeader,
}

/// Why a flush did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// Not connected, or the connection was lost before the server answered.
    #[error("not connected to nats")]
    NotConnected,
    /// The server did not answer in time.
    #[error("nats did not answer the flush in time")]
    Timeout,
}

type Deliver = Arc<dyn Fn(Msg) + Send + Sync>;

struct Sub {
    subject: String,
    queue: Option<String>,
    deliver: Deliver,
}

struct Out {
    buf: BytesMut,
    /// PING sent and not yet answered, oldest first; `Some` for a flush waiting on it.
    pings: VecDeque<Option<oneshot::Sender<()>>>,
}

struct Inner {
    name: String,
    servers: Vec<Server>,
    out: Mutex<Out>,
    /// Wakes the writer: something to send, or closing.
    wake_writer: Notify,
    subs: RwLock<HashMap<u64, Sub>>,
    next_sid: AtomicU64,
    connected: AtomicBool,
    closing: AtomicBool,
    max_payload: AtomicUsize,
    /// Number of connections made, for [`Connection::connected`] and tests.
    state: watch::Sender<u64>,
}

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
    /// Connects to the servers of `urls` as `name`. Returns at once; the connection is made,
    /// and remade after a loss, in the background ([`Connection::is_connected`]).
    pub fn connect(urls: &str, name: &str) -> Result<Connection, UrlError> {
        let servers = parse_servers(urls)?;
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            servers,
            out: Mutex::new(Out {
                buf: BytesMut::with_capacity(READ_CHUNK),
                pings: VecDeque::new(),
            }),
            wake_writer: Notify::new(),
            subs: RwLock::new(HashMap::new()),
            next_sid: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            max_payload: AtomicUsize::new(1024 * 1024),
            state: watch::channel(0).0,
        });
        let task = tokio::spawn(run(inner.clone()));
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
                inner.send_raw(|buf| write_sub(buf, sid, &sub));
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

impl Inner {
    /// Writes into the outgoing buffer `out` holds, then wakes the writer if the buffer was
    /// empty. Whoever makes it non-empty wakes the writer, and the writer takes all of it, so
    /// the others need not.
    fn queue(&self, mut out: MutexGuard<'_, Out>, write: impl FnOnce(&mut Out)) {
        let was_empty = out.buf.is_empty();
        write(&mut out);
        drop(out);
        if was_empty {
            self.wake_writer.notify_one();
        }
    }

    /// Appends protocol bytes regardless of the publish checks (PONG, SUB, UNSUB).
    fn send_raw(&self, write: impl FnOnce(&mut BytesMut)) {
        if let Ok(out) = self.out.lock() {
            self.queue(out, |out| write(&mut out.buf));
        }
    }

    /// What an `INFO` says that this connection uses.
    fn learn(&self, info: &Info) {
        if info.max_payload > 0 {
            self.max_payload.store(info.max_payload, Ordering::Relaxed);
        }
    }

    fn unsubscribe(&self, sid: u64) {
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

    fn set_connected(&self, connected: bool) {
        if connected {
            // Every subscription, then "connected", under the subscriptions' lock (see
            // `subscribe`), so that none is missed or sent twice.
            let Ok(subs) = self.subs.read() else {
                return;
            };
            if let Ok(mut out) = self.out.lock() {
                out.buf.clear();
                out.pings.clear();
                for (sid, sub) in subs.iter() {
                    write_sub(&mut out.buf, *sid, sub);
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
            }
            self.state.send_modify(|_| {});
        }
    }
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// The size of the header block for `headers`, checking that each is writable.
fn header_block_len(headers: &[(&str, &str)]) -> Result<usize, PublishError> {
    if headers.is_empty() {
        return Ok(0);
    }
    let mut len = b"NATS/1.0\r\n".len() + 2;
    for (name, value) in headers {
        let bad_name = name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b':');
        if bad_name || value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(PublishError::InvalidHeader);
        }
        len += name.len() + 2 + value.len() + 2;
    }
    Ok(len)
}

fn put_u64(buf: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    buf.put_slice(crate::header::decimal(n, &mut digits).as_bytes());
}

fn write_pub(
    buf: &mut BytesMut,
    subject: &str,
    reply: Option<&str>,
    headers: &[(&str, &str)],
    header_len: usize,
    payload: &[u8],
) {
    buf.reserve(subject.len() + reply.map_or(0, str::len) + header_len + payload.len() + 40);
    buf.put_slice(if header_len > 0 { b"HPUB " } else { b"PUB " });
    buf.put_slice(subject.as_bytes());
    buf.put_u8(b' ');
    if let Some(reply) = reply {
        buf.put_slice(reply.as_bytes());
        buf.put_u8(b' ');
    }
    if header_len > 0 {
        put_u64(buf, header_len as u64);
        buf.put_u8(b' ');
    }
    put_u64(buf, (header_len + payload.len()) as u64);
    buf.put_slice(b"\r\n");
    if header_len > 0 {
        buf.put_slice(b"NATS/1.0\r\n");
        for (name, value) in headers {
            buf.put_slice(name.as_bytes());
            buf.put_slice(b": ");
            buf.put_slice(value.as_bytes());
            buf.put_slice(b"\r\n");
        }
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

fn write_sub(buf: &mut BytesMut, sid: u64, sub: &Sub) {
    buf.put_slice(b"SUB ");
    buf.put_slice(sub.subject.as_bytes());
    buf.put_u8(b' ');
    if let Some(queue) = &sub.queue {
        buf.put_slice(queue.as_bytes());
        buf.put_u8(b' ');
    }
    put_u64(buf, sid);
    buf.put_slice(b"\r\n");
}

/// What the server says in `INFO`, as far as this connection cares.
#[derive(Debug, Default, Deserialize)]
struct Info {
    #[serde(default)]
    server_id: String,
    #[serde(default)]
    max_payload: usize,
    #[serde(default)]
    headers: bool,
    #[serde(default)]
    tls_required: bool,
    #[serde(default)]
    ldm: bool,
}

/// A server operation, parsed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    Msg { sid: u64, msg: Msg },
    Ping,
    Pong,
    Ok,
    Err(String),
    Info(String),
}

/// Why a connection to a server ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("server error: {0}")]
    Server(String),
    #[error("the server stopped answering pings")]
    Stale,
}

/// Parses one operation off the front of `buf`; `None` when more bytes are needed.
fn parse_op(buf: &mut BytesMut) -> Result<Option<Op>, ConnError> {
    let Some(eol) = find_crlf(buf) else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ConnError::Protocol("control line too long".into()));
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let (verb, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = match verb {
        b"MSG" | b"msg" | b"HMSG" | b"hmsg" => {
            let with_headers = verb.len() == 4;
            let args = std::str::from_utf8(args)
                .map_err(|_| ConnError::Protocol("non-UTF-8 message line".into()))?;
            let bad = || ConnError::Protocol(format!("bad message line {args:?}"));
            // At most five fields; no allocation per message.
            let mut parts = [""; 5];
            let mut count = 0;
            for part in args.split_ascii_whitespace() {
                *parts.get_mut(count).ok_or_else(bad)? = part;
                count += 1;
            }
            let num = |s: &str| s.parse::<usize>().map_err(|_| bad());
            // MSG subject sid [reply] total | HMSG subject sid [reply] header_len total
            let fixed = if with_headers { 4 } else { 3 };
            let (subject, sid, reply, header_len, total) = match (count, with_headers) {
                (n, false) if n == fixed => (parts[0], parts[1], None, 0, num(parts[2])?),
                (n, false) if n == fixed + 1 => {
                    (parts[0], parts[1], Some(parts[2]), 0, num(parts[3])?)
                }
                (n, true) if n == fixed => {
                    (parts[0], parts[1], None, num(parts[2])?, num(parts[3])?)
                }
                (n, true) if n == fixed + 1 => (
                    parts[0],
                    parts[1],
                    Some(parts[2]),
                    num(parts[3])?,
                    num(parts[4])?,
                ),
                _ => return Err(bad()),
            };
            if header_len > total {
                return Err(bad());
            }
            let sid: u64 = sid.parse().map_err(|_| bad())?;
            if buf.len() < eol + 2 + total + 2 {
                buf.reserve(eol + 2 + total + 2 - buf.len());
                return Ok(None);
            }
            // Offsets of the subject and reply within the line, to slice the frozen buffer.
            let line_start = buf.as_ptr() as usize;
            let offset = |s: &str| s.as_ptr() as usize - line_start;
            let (s_at, s_len) = (offset(subject), subject.len());
            let reply_at = reply.map(|r| (offset(r), r.len()));
            let head = buf.split_to(eol + 2).freeze();
            let mut body = buf.split_to(total + 2);
            if &body[total..] != b"\r\n" {
                return Err(ConnError::Protocol("message not followed by CRLF".into()));
            }
            body.truncate(total);
            let mut body = body.freeze();
            let headers = (header_len > 0).then(|| body.split_to(header_len));
            return Ok(Some(Op::Msg {
                sid,
                msg: Msg {
                    subject: head.slice(s_at..s_at + s_len),
                    reply: reply_at.map(|(at, len)| head.slice(at..at + len)),
                    headers,
                    payload: body,
                },
            }));
        }
        b"PING" | b"ping" => Op::Ping,
        b"PONG" | b"pong" => Op::Pong,
        b"+OK" | b"+ok" => Op::Ok,
        b"-ERR" | b"-err" => Op::Err(
            String::from_utf8_lossy(args)
                .trim()
                .trim_matches('\'')
                .to_owned(),
        ),
        b"INFO" | b"info" => Op::Info(String::from_utf8_lossy(args).into_owned()),
        other => {
            return Err(ConnError::Protocol(format!(
                "unknown operation {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    buf.advance(eol + 2);
    Ok(Some(op))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|b| *b == b'\r') {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at),
            Some(_) => from = at + 1,
            None => return None,
        }
    }
    None
}

/// Connects, re-connects and runs the connection until it is closed.
async fn run(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(50);
    let mut next = 0;
    while !inner.closing.load(Ordering::Acquire) {
        let server = inner.servers[next % inner.servers.len()].clone();
        next += 1;
        let addr = format!("{}:{}", server.host, server.port);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&inner, &server)).await {
            Ok(Ok((reader, writer, rest))) => {
                backoff = Duration::from_millis(50);
                inner.set_connected(true);
                info!(name = %inner.name, server = %addr, "nats request path connected");
                let ended = serve(&inner, reader, writer, rest).await;
                inner.set_connected(false);
                match ended {
                    Ok(()) => break,
                    Err(e) => {
                        warn!(name = %inner.name, server = %addr, error = %e, "nats request path disconnected, reconnecting")
                    }
                }
            }
            Ok(Err(e)) => {
                debug!(name = %inner.name, server = %addr, error = %e, "cannot connect to nats")
            }
            Err(_) => debug!(name = %inner.name, server = %addr, "connecting to nats timed out"),
        }
        if next % inner.servers.len() == 0 {
            // A round over every server failed: wait (or stop) before the next.
            let closing = async {
                while !inner.closing.load(Ordering::Acquire) {
                    inner.wake_writer.notified().await;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = closing => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
    // Flush waiters learn the connection is gone.
    inner.set_connected(false);
}

async fn handshake(
    inner: &Inner,
    server: &Server,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, BytesMut), ConnError> {
    let stream = TcpStream::connect((server.host.as_str(), server.port)).await?;
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let info = loop {
        match parse_op(&mut buf)? {
            Some(Op::Info(json)) => {
                break serde_json::from_str::<Info>(&json)
                    .map_err(|e| ConnError::Protocol(format!("bad INFO: {e}")))?
            }
            Some(other) => {
                return Err(ConnError::Protocol(format!("expected INFO, got {other:?}")))
            }
            None => read_more(&mut reader, &mut buf).await?,
        }
    };
    if info.tls_required {
        return Err(ConnError::Server(
            "the server requires TLS, which the request path does not support".into(),
        ));
    }
    if !info.headers {
        return Err(ConnError::Server(
            "the server does not support headers (nats-server 2.2 or later is needed)".into(),
        ));
    }
    inner.learn(&info);
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust-busgate",
        "version": crate::VERSION,
        "protocol": 1,
        "headers": true,
        "no_responders": true,
        "echo": true,
        "name": inner.name,
    });
    match &server.auth {
        Auth::None => {}
        Auth::User { user, pass } => {
            connect["user"] = user.as_str().into();
            connect["pass"] = pass.as_str().into();
        }
        Auth::Token(token) => connect["auth_token"] = token.as_str().into(),
    }
    let hello = format!("CONNECT {connect}\r\nPING\r\n");
    writer.write_all(hello.as_bytes()).await?;
    loop {
        match parse_op(&mut buf)? {
            Some(Op::Pong) => break,
            Some(Op::Ok | Op::Info(_)) => {}
            Some(Op::Ping) => writer.write_all(b"PONG\r\n").await?,
            Some(Op::Err(e)) => return Err(ConnError::Server(e)),
            Some(Op::Msg { .. }) => {
                return Err(ConnError::Protocol(
                    "message before the handshake ended".into(),
                ))
            }
            None => read_more(&mut reader, &mut buf).await?,
        }
    }
    debug!(server_id = %info.server_id, "nats handshake done");
    Ok((reader, writer, buf))
}

async fn read_more(reader: &mut OwnedReadHalf, buf: &mut BytesMut) -> Result<(), ConnError> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    if reader.read_buf(buf).await? == 0 {
        return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

/// Runs one server connection: `Ok` when closed on purpose, `Err` when lost.
async fn serve(
    inner: &Inner,
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    mut buf: BytesMut,
) -> Result<(), ConnError> {
    let reading = async {
        loop {
            while let Some(op) = parse_op(&mut buf)? {
                match op {
                    Op::Msg { sid, msg } => inner.deliver(sid, msg),
                    Op::Ping => inner.send_raw(|b| b.put_slice(b"PONG\r\n")),
                    Op::Pong => {
                        let waiter = inner.out.lock().ok().and_then(|mut o| o.pings.pop_front());
                        if let Some(Some(waiter)) = waiter {
                            let _ = waiter.send(());
                        }
                    }
                    Op::Ok => {}
                    Op::Err(e) => {
                        warn!(name = %inner.name, error = %e, "nats server error");
                        let lower = e.to_ascii_lowercase();
                        if !lower.starts_with("permissions violation")
                            && !lower.starts_with("invalid subject")
                        {
                            return Err::<(), _>(ConnError::Server(e));
                        }
                    }
                    Op::Info(json) => {
                        if let Ok(info) = serde_json::from_str::<Info>(&json) {
                            inner.learn(&info);
                            if info.ldm {
                                warn!(name = %inner.name, "nats server entering lame duck mode");
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
            // replies woken by the same poll): what they publish goes out in this one write.
            // On loopback every write also runs the receiver's TCP stack, so fewer, larger
            // writes are most of what batching saves.
            tokio::task::yield_now().await;
        }
    };
    let pinging = async {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            match inner.out.lock() {
                Ok(out) if out.pings.len() < MAX_PINGS_OUT => inner.queue(out, |out| {
                    out.buf.put_slice(b"PING\r\n");
                    out.pings.push_back(None);
                }),
                _ => return Err::<(), _>(ConnError::Stale),
            }
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

    #[test]
    fn urls_parse_with_credentials_ports_and_lists() {
        let s =
            parse_servers("nats://a:4222, nats://u:p%40ss@b:5222/,tok@c,[::1]:7,d").expect("valid");
        assert_eq!(s.len(), 5);
        assert_eq!(
            (s[0].host.as_str(), s[0].port, &s[0].auth),
            ("a", 4222, &Auth::None)
        );
        assert_eq!(
            s[1].auth,
            Auth::User {
                user: "u".into(),
                pass: "p@ss".into()
            }
        );
        assert_eq!((s[1].host.as_str(), s[1].port), ("b", 5222));
        assert_eq!(s[2].auth, Auth::Token("tok".into()));
        assert_eq!((s[3].host.as_str(), s[3].port), ("::1", 7));
        assert_eq!((s[4].host.as_str(), s[4].port), ("d", 4222));
    }

    #[test]
    fn unsupported_urls_are_refused_without_their_secrets() {
        let e = parse_servers("tls://u:secret@h:4222").expect_err("refused");
        assert!(e.reason.contains("TLS"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(parse_servers("http://h").is_err());
        assert!(parse_servers(" , ").is_err());
        assert!(parse_servers("nats://h:port").is_err());
        assert!(parse_servers("nats://:4222").is_err());
        assert_eq!(
            format!(
                "{:?}",
                Auth::User {
                    user: "u".into(),
                    pass: "s".into()
                }
            ),
            "User(u, ***)"
        );
    }

    #[test]
    fn a_publish_is_written_as_the_protocol_says() {
        let mut buf = BytesMut::new();
        let headers = [("Busgate-Deadline", "17"), ("traceparent", "00-ab")];
        let len = header_block_len(&headers).expect("valid");
        write_pub(
            &mut buf,
            "busgate.svc.a",
            Some("_INBOX.x.1.a"),
            &headers,
            len,
            b"{}",
        );
        let block = "NATS/1.0\r\nBusgate-Deadline: 17\r\ntraceparent: 00-ab\r\n\r\n";
        assert_eq!(len, block.len());
        let expected = format!(
            "HPUB busgate.svc.a _INBOX.x.1.a {} {}\r\n{block}{{}}\r\n",
            block.len(),
            block.len() + 2
        );
        assert_eq!(std::str::from_utf8(&buf).expect("valid"), expected);
        buf.clear();
        write_pub(&mut buf, "r", None, &[], 0, b"hi");
        assert_eq!(&buf[..], b"PUB r 2\r\nhi\r\n");
        assert_eq!(
            header_block_len(&[("a", "x\r\nb: y")]),
            Err(PublishError::InvalidHeader)
        );
        assert_eq!(
            header_block_len(&[("a:b", "x")]),
            Err(PublishError::InvalidHeader)
        );
        assert!(!valid_subject("a b") && !valid_subject("") && valid_subject("a.>"));
    }

    #[test]
    fn messages_parse_in_pieces_and_share_the_buffer() {
        let wire = b"MSG a.b 7 _INBOX.r 5\r\nhello\r\nHMSG x 9 12 14\r\nNATS/1.0\r\n\r\nok\r\nHMSG _INBOX.1.s 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\nPING\r\n-ERR 'Permissions Violation'\r\n";
        // Fed a byte at a time, the parser waits for whole operations and yields each once.
        let mut buf = BytesMut::new();
        let mut ops = Vec::new();
        for byte in wire {
            buf.put_u8(*byte);
            while let Some(op) = parse_op(&mut buf).expect("parses") {
                ops.push(op);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(ops.len(), 5, "{ops:?}");
        let Op::Msg { sid, msg } = &ops[0] else {
            panic!("{:?}", ops[0])
        };
        assert_eq!(
            (*sid, msg.subject(), msg.reply()),
            (7, "a.b", Some("_INBOX.r"))
        );
        assert_eq!(&msg.payload[..], b"hello");
        assert_eq!(msg.status(), None);
        let Op::Msg { msg, .. } = &ops[1] else {
            panic!()
        };
        assert_eq!((msg.reply(), &msg.payload[..]), (None, &b"ok"[..]));
        assert_eq!(msg.status(), None);
        let Op::Msg { msg, .. } = &ops[2] else {
            panic!()
        };
        assert_eq!(msg.status(), Some(503));
        assert!(msg.payload.is_empty());
        assert_eq!(ops[3], Op::Ping);
        assert_eq!(ops[4], Op::Err("Permissions Violation".into()));
    }

    #[test]
    fn headers_are_read_by_name_and_bad_lines_are_errors() {
        let block = b"NATS/1.0\r\nBusgate-Deadline: 123\r\ntraceparent:00-x\r\n\r\n";
        assert_eq!(header_value(block, "busgate-deadline"), Some("123"));
        assert_eq!(header_value(block, "traceparent"), Some("00-x"));
        assert_eq!(header_value(block, "missing"), None);
        assert_eq!(
            status_of(b"NATS/1.0 408 Request Timeout\r\n\r\n"),
            Some(408)
        );
        for bad in [
            &b"MSG a b 5\r\n"[..],
            b"MSG a 1 x\r\n",
            b"HMSG a 1 9 5\r\n",
            b"NOPE\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                parse_op(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut buf = BytesMut::from(&b"MSG a 1 2\r\nhiXX"[..]);
        assert!(parse_op(&mut buf).is_err(), "payload must end in CRLF");
    }
}
