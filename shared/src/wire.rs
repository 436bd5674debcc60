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
//! - Reconnects forever, to each server of the pool in turn (the URL list in random order,
//!   plus the servers a cluster announces in `INFO connect_urls`), re-subscribing. A server in
//!   lame-duck mode is left for another at once. A `PING` every `nats.ping_interval` finds a
//!   dead or hung server (the PINGs of [`Connection::flush`] do not count). While disconnected
//!   a publish fails at once ([`PublishError::NotConnected`]): the request path answers at
//!   once rather than queue work behind a deadline.
//! - Supervised: the connection runs in a task that is restarted if it panics (a subscriber's
//!   callback, say); a protocol error or a server `-ERR` ends the server connection and
//!   another is made. [`Connection::is_connected`] is true only while a server connection is
//!   up. A message is never allowed to announce more than the server's `max_payload`: the
//!   read buffer never grows beyond that bound.
//! - Security, from [`NatsSettings`]: TLS (`tls://` URLs, a server's `tls_required`,
//!   `handshake_first`, a CA file, a client certificate for mutual TLS) with rustls, and
//!   authentication by `user:password@` or `token@` in the URL, an nkey seed or a `.creds`
//!   file (the server's nonce signed with the nkey). Failed authentication is logged at error
//!   level, without the secret, and retried with backoff.
//!
//! JetStream, KV and the service API stay on async-nats (see [`crate::nats`]), configured from
//! the same [`NatsSettings`]. Supported URLs: `nats://host:port`, `tls://host:port` (or
//! `host:port`), comma-separated for a cluster, with `user:password@` or `token@`. Websocket
//! URLs are refused by [`parse_servers`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

pub use crate::nats::NatsSettings;
use crate::Error;

/// Bound on connecting to one server: TCP, TLS, `INFO`, `CONNECT` and the first `PONG`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes queued for the server beyond which a publish is refused ([`PublishError::Backlog`]).
pub const MAX_BACKLOG: usize = 64 * 1024 * 1024;
/// The longest control line accepted from a server (an `INFO` can be long in a large cluster).
const MAX_CONTROL_LINE: usize = 1024 * 1024;
/// What a read asks the socket for at least.
const READ_CHUNK: usize = 64 * 1024;
/// The largest `max_payload` believed from a server's `INFO` (nats-server's own limit): the
/// read buffer's bound whatever a server says.
const MAX_PAYLOAD_CAP: usize = 64 * 1024 * 1024;
/// Servers kept in the pool at most (announced ones included).
const MAX_SERVERS: usize = 256;

/// One server to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (4222 unless given).
    pub port: u16,
    /// `user:password@` or `token@` of the URL.
    pub auth: Auth,
    /// `tls://`: TLS is required on this server.
    pub tls: bool,
    /// The name its certificate is checked against when not `host`: a server announced by
    /// address (`connect_urls`) is checked against the name of the server that announced it,
    /// as other NATS clients do.
    pub tls_name: Option<String>,
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

/// Parses a NATS URL list: `nats|tls://[user:pass@|token@]host[:port]`, comma-separated.
pub fn parse_servers(urls: &str) -> Result<Vec<Server>, UrlError> {
    let mut servers = Vec::new();
    for entry in urls.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let fail = |reason| UrlError {
            url: crate::nats::redact_url(entry),
            reason,
        };
        let (tls, rest) = match entry.split_once("://") {
            Some(("nats", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            Some(("ws" | "wss", _)) => {
                return Err(fail(
                    "websocket connections are not supported; use nats:// or tls://",
                ))
            }
            Some(_) => return Err(fail("the scheme must be nats:// or tls://")),
            None => (false, entry),
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
            tls,
            tls_name: None,
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

/// A `.creds` file's two parts: the user JWT and the nkey seed that signs the server's nonce.
pub struct Creds {
    /// The user JWT (not secret by itself: it is sent in `CONNECT`).
    pub jwt: String,
    /// The user's nkey seed (`SU…`): secret.
    pub seed: String,
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Creds")
            .field("jwt", &self.jwt)
            .field("seed", &"***")
            .finish()
    }
}

/// Parses a `.creds` file as `nsc` writes it: the first value framed by `-----BEGIN …-----` /
/// `------END …------` lines is the JWT, the second the seed. The error never quotes the file.
pub fn parse_creds(text: &str) -> Result<Creds, Error> {
    let bad = |reason: &str| Error::invalid("nats.creds_file", reason.to_owned());
    let mut values = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("---") && line.contains("BEGIN") {
            let value = lines
                .by_ref()
                .find(|l| !l.is_empty())
                .ok_or_else(|| bad("a BEGIN line without a value"))?;
            values.push(value.to_owned());
        }
    }
    let mut values = values.into_iter();
    let (Some(jwt), Some(seed)) = (values.next(), values.next()) else {
        return Err(bad("expected a user JWT and an nkey seed"));
    };
    if !seed.starts_with("SU") || nkeys::KeyPair::from_seed(&seed).is_err() {
        return Err(bad("the second value is not a user nkey seed"));
    }
    if jwt.split('.').count() != 3 {
        return Err(bad("the first value is not a JWT"));
    }
    Ok(Creds { jwt, seed })
}

/// Reads an nkey user seed from `path` (surrounding whitespace ignored), checked.
pub fn read_seed(path: &str) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(
            "nats.nkey_file",
            format!("cannot read {path}: {}", e.kind()),
        )
    })?;
    let seed = text.trim().to_owned();
    if !seed.starts_with("SU") || nkeys::KeyPair::from_seed(&seed).is_err() {
        return Err(Error::invalid(
            "nats.nkey_file",
            format!("{path} does not hold a user nkey seed (SU…)"),
        ));
    }
    Ok(seed)
}

/// What signs the server's nonce in `CONNECT`.
enum Signer {
    Nkey(nkeys::KeyPair),
    Creds { jwt: String, key: nkeys::KeyPair },
}

impl Signer {
    /// Adds `nkey` or `jwt` and `sig` (the nonce signed, base64url without padding, as the
    /// server reads it) to a `CONNECT` document.
    fn sign(&self, nonce: &str, connect: &mut serde_json::Value) -> Result<(), ConnError> {
        let key = match self {
            Signer::Nkey(key) => {
                connect["nkey"] = key.public_key().into();
                key
            }
            Signer::Creds { jwt, key } => {
                connect["jwt"] = jwt.as_str().into();
                key
            }
        };
        let sig = key
            .sign(nonce.as_bytes())
            .map_err(|_| ConnError::Protocol("cannot sign the server's nonce".into()))?;
        connect["sig"] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sig)
            .into();
        Ok(())
    }
}

/// The security material of a connection, loaded once from its settings.
struct Security {
    /// The TLS client configuration: made at start when TLS is configured, else on the first
    /// server that requires TLS (with the system's roots).
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// TLS on every server, even one that does not ask for it.
    require_tls: bool,
    handshake_first: bool,
    signer: Option<Signer>,
    ping_interval: Duration,
    max_pings_out: usize,
}

impl Security {
    fn load(settings: &NatsSettings) -> Result<Security, Error> {
        settings.validate()?;
        let signer = if !settings.creds_file.is_empty() {
            let text = std::fs::read_to_string(&settings.creds_file).map_err(|e| {
                Error::invalid(
                    "nats.creds_file",
                    format!("cannot read {}: {}", settings.creds_file, e.kind()),
                )
            })?;
            let creds = parse_creds(&text)?;
            let key = nkeys::KeyPair::from_seed(&creds.seed)
                .map_err(|_| Error::invalid("nats.creds_file", "not a valid nkey seed"))?;
            Some(Signer::Creds {
                jwt: creds.jwt,
                key,
            })
        } else if !settings.nkey_file.is_empty() {
            let seed = read_seed(&settings.nkey_file)?;
            let key = nkeys::KeyPair::from_seed(&seed)
                .map_err(|_| Error::invalid("nats.nkey_file", "not a valid nkey seed"))?;
            Some(Signer::Nkey(key))
        } else {
            None
        };
        let require_tls = settings.requires_tls();
        let tls = OnceLock::new();
        if require_tls {
            let _ = tls.set(tls_config(settings)?);
        }
        Ok(Security {
            tls,
            require_tls,
            handshake_first: settings.handshake_first,
            signer,
            ping_interval: settings.ping_interval,
            max_pings_out: settings.max_pings_out,
        })
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, ConnError> {
        if let Some(config) = self.tls.get() {
            return Ok(config.clone());
        }
        let config =
            tls_config(&NatsSettings::default()).map_err(|e| ConnError::Tls(e.to_string()))?;
        Ok(self.tls.get_or_init(|| config).clone())
    }
}

/// A rustls client configuration from the settings: the CA file's roots (else the system's),
/// and the client certificate when one is set.
fn tls_config(settings: &NatsSettings) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    if settings.ca_file.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        if native.certs.is_empty() {
            warn!("no system root certificates found: set nats.ca_file for TLS");
        }
        roots.add_parsable_certificates(native.certs);
    } else {
        let bad = |what: String| Error::invalid("nats.ca_file", what);
        let certs = CertificateDer::pem_file_iter(&settings.ca_file)
            .map_err(|e| bad(format!("cannot read {}: {e}", settings.ca_file)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("{}: {e}", settings.ca_file)))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad(format!("{} holds no CA certificate", settings.ca_file)));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("nats", e.to_string()))?
        .with_root_certificates(roots);
    let config = if settings.cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = CertificateDer::pem_file_iter(&settings.cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                Error::invalid("nats.cert_file", format!("{}: {e}", settings.cert_file))
            })?;
        // The key's error names the file, never its content.
        let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|_| {
            Error::invalid(
                "nats.key_file",
                format!("{} does not hold a PEM private key", settings.key_file),
            )
        })?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| Error::invalid("nats.cert_file", e.to_string()))?
    };
    Ok(Arc::new(config))
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
    /// Keep-alive PINGs sent since the server last answered one (flushes' not counted: a
    /// burst of flushes must not make a live server look dead).
    keepalive_out: usize,
}

struct Inner {
    name: String,
    /// The pool: the URL list (shuffled), then servers announced by the cluster.
    servers: Mutex<Vec<Server>>,
    sec: Security,
    out: Mutex<Out>,
    /// Wakes the writer: something to send, or closing.
    wake_writer: Notify,
    subs: RwLock<HashMap<u64, Sub>>,
    next_sid: AtomicU64,
    connected: AtomicBool,
    closing: AtomicBool,
    max_payload: AtomicUsize,
    /// A subscriber's callback panicked: the supervisor restarts the connection task.
    panics: AtomicU64,
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
    /// Connects to the servers of `urls` as `name`, with every other setting at its default.
    pub fn connect(urls: &str, name: &str) -> Result<Connection, Error> {
        Connection::connect_with(&NatsSettings::with_url(urls), name)
    }

    /// Connects with `settings` as `name`. Returns at once (after reading the key and
    /// certificate files); the connection is made, and remade after a loss, in the background
    /// ([`Connection::is_connected`]).
    pub fn connect_with(settings: &NatsSettings, name: &str) -> Result<Connection, Error> {
        let mut servers = parse_servers(&settings.url)?;
        let sec = Security::load(settings)?;
        // Random order, so that the clients of a cluster spread over its servers.
        rand::seq::SliceRandom::shuffle(&mut servers[..], &mut rand::rng());
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            servers: Mutex::new(servers),
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
        });
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
            Ok(servers) => servers
                .iter()
                .map(|s| format!("{}:{}", s.host, s.port))
                .collect(),
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

    /// What an `INFO` from `from` says that this connection uses: its `max_payload`, and the
    /// cluster's other servers (`connect_urls`), added to the pool with `from`'s credentials
    /// and TLS.
    fn learn(&self, info: &Info, from: &Server) {
        if info.max_payload > 0 {
            self.max_payload
                .store(info.max_payload.min(MAX_PAYLOAD_CAP), Ordering::Relaxed);
        }
        if info.connect_urls.is_empty() {
            return;
        }
        let Ok(mut servers) = self.servers.lock() else {
            return;
        };
        for url in &info.connect_urls {
            let Ok(found) = parse_servers(url) else {
                debug!(url, "ignoring an announced server that does not parse");
                continue;
            };
            for mut server in found {
                if servers.len() >= MAX_SERVERS {
                    return;
                }
                let known = servers
                    .iter()
                    .any(|s| s.host == server.host && s.port == server.port);
                if !known {
                    server.auth = from.auth.clone();
                    server.tls = from.tls;
                    if server.host.parse::<std::net::IpAddr>().is_ok() {
                        server.tls_name = from.tls_name.clone().or_else(|| {
                            from.host
                                .parse::<std::net::IpAddr>()
                                .is_err()
                                .then(|| from.host.clone())
                        });
                    }
                    debug!(host = %server.host, port = server.port, "nats server announced");
                    servers.push(server);
                }
            }
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
                out.keepalive_out = 0;
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
                out.keepalive_out = 0;
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
    tls_available: bool,
    #[serde(default)]
    ldm: bool,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    connect_urls: Vec<String>,
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
    #[error("the server refused the credentials: {0}")]
    Auth(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("the server stopped answering pings")]
    Stale,
    #[error("the server is entering lame duck mode")]
    LameDuck,
}

impl ConnError {
    /// A server's `-ERR`, classified: authentication failures apart, as they are logged at
    /// error level (an operator must act) and never end by themselves.
    fn from_server(e: String) -> ConnError {
        let lower = e.to_ascii_lowercase();
        let auth = ["authorization", "authentication", "account"];
        if auth.iter().any(|a| lower.contains(a)) {
            ConnError::Auth(e)
        } else {
            ConnError::Server(e)
        }
    }

    /// Whether an operator must act (bad credentials, a certificate not trusted).
    fn needs_operator(&self) -> bool {
        matches!(self, ConnError::Auth(_) | ConnError::Tls(_))
    }
}

/// Parses one operation off the front of `buf`; `None` when more bytes are needed. A message
/// announcing more than `max_payload` bytes is a protocol error: the buffer never grows beyond
/// a control line plus `max_payload`.
fn parse_op(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Op>, ConnError> {
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
            if total > max_payload {
                return Err(ConnError::Protocol(format!(
                    "a message of {total} bytes announced, over max_payload {max_payload}"
                )));
            }
            let sid: u64 = sid.parse().map_err(|_| bad())?;
            let whole = (eol + 4).checked_add(total).ok_or_else(bad)?;
            if buf.len() < whole {
                buf.reserve(whole - buf.len());
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

/// Runs the connection task and restarts it when it panics (a subscriber's callback, say):
/// whatever happens in it, the connection is either up or being remade, and
/// [`Connection::is_connected`] says which.
async fn supervise(inner: Arc<Inner>) {
    loop {
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
                // A callback that panics on every message must not make this a busy loop.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
    }
}

/// Connects, re-connects and runs the connection until it is closed.
async fn run(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(50);
    let mut next = 0;
    // Failures in a row: the first is a warning, the rest debug, except those an operator must
    // fix (credentials, certificates), which are errors every time.
    let mut failures = 0u32;
    while !inner.closing.load(Ordering::Acquire) {
        let (server, pool) = {
            let Ok(servers) = inner.servers.lock() else {
                return;
            };
            (servers[next % servers.len()].clone(), servers.len())
        };
        next += 1;
        let addr = format!("{}:{}", server.host, server.port);
        let attempt = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&inner, &server))
            .await
            .unwrap_or_else(|_| Err(ConnError::Io(std::io::ErrorKind::TimedOut.into())));
        match attempt {
            Ok(link) => {
                backoff = Duration::from_millis(50);
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
        if next % pool == 0 {
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

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A server connection after its handshake: its two halves and what was read past the `PONG`.
/// Plain TCP keeps tokio's lock-free halves; TLS splits the one stream.
enum Link {
    Plain(
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
        BytesMut,
    ),
    Tls(
        tokio::io::ReadHalf<TlsStream>,
        tokio::io::WriteHalf<TlsStream>,
        BytesMut,
    ),
}

/// TCP, then TLS first (`handshake_first`) or `INFO` then TLS when the server, the URL or the
/// settings require it, then `CONNECT` with the credentials and the first `PONG`.
async fn handshake(inner: &Inner, server: &Server) -> Result<Link, ConnError> {
    let mut tcp = TcpStream::connect((server.host.as_str(), server.port)).await?;
    tcp.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    if inner.sec.handshake_first {
        let mut tls = upgrade(inner, server, tcp).await?;
        let info = read_info(&mut tls, &mut buf).await.map_err(tls_refusal)?;
        hello(inner, server, &info, true, &mut tls, &mut buf)
            .await
            .map_err(tls_refusal)?;
        let (reader, writer) = tokio::io::split(tls);
        return Ok(Link::Tls(reader, writer, buf));
    }
    let info = read_info(&mut tcp, &mut buf).await?;
    if !(server.tls || inner.sec.require_tls || info.tls_required) {
        hello(inner, server, &info, false, &mut tcp, &mut buf).await?;
        let (reader, writer) = tcp.into_split();
        return Ok(Link::Plain(reader, writer, buf));
    }
    if !info.tls_required && !info.tls_available {
        // Never fall back to plain TCP when TLS was asked for: that is the downgrade attack.
        return Err(ConnError::Tls(
            "TLS is required by the settings but the server does not offer it".into(),
        ));
    }
    if !buf.is_empty() {
        return Err(ConnError::Protocol(
            "data after INFO before the TLS handshake".into(),
        ));
    }
    let mut tls = upgrade(inner, server, tcp).await?;
    hello(inner, server, &info, true, &mut tls, &mut buf)
        .await
        .map_err(tls_refusal)?;
    let (reader, writer) = tokio::io::split(tls);
    Ok(Link::Tls(reader, writer, buf))
}

/// A TLS alert that arrives after the handshake (with TLS 1.3 a server refuses a client
/// certificate, or the lack of one, only then) is a TLS error, for the operator.
fn tls_refusal(e: ConnError) -> ConnError {
    match e {
        ConnError::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            ConnError::Tls(io.to_string())
        }
        other => other,
    }
}

/// The TLS handshake on `tcp`, the server's certificate checked against the roots and the
/// server's host name (or IP address).
async fn upgrade(inner: &Inner, server: &Server, tcp: TcpStream) -> Result<TlsStream, ConnError> {
    let config = inner.sec.tls()?;
    let host = server.tls_name.as_ref().unwrap_or(&server.host);
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|_| ConnError::Tls(format!("{host:?} is not a TLS server name")))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ConnError::Tls(e.to_string()))
}

async fn read_info<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Info, ConnError> {
    loop {
        match parse_op(buf, 0)? {
            Some(Op::Info(json)) => {
                return serde_json::from_str::<Info>(&json)
                    .map_err(|e| ConnError::Protocol(format!("bad INFO: {e}")))
            }
            Some(other) => {
                return Err(ConnError::Protocol(format!("expected INFO, got {other:?}")))
            }
            None => read_more(stream, buf).await?,
        }
    }
}

/// `CONNECT` (with the credentials: the URL's, or the nonce signed with the nkey) and `PING`,
/// then waits for the `PONG` (or the `-ERR` of a refusal).
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    server: &Server,
    info: &Info,
    tls: bool,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), ConnError> {
    if !info.headers {
        return Err(ConnError::Server(
            "the server does not support headers (nats-server 2.2 or later is needed)".into(),
        ));
    }
    inner.learn(info, server);
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust-busgate",
        "version": crate::VERSION,
        "protocol": 1,
        "headers": true,
        "no_responders": true,
        "echo": true,
        "tls_required": tls,
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
    if let Some(signer) = &inner.sec.signer {
        if info.nonce.is_empty() {
            return Err(ConnError::Auth(
                "the server sent no nonce to sign: it is not configured for nkey or JWT users"
                    .into(),
            ));
        }
        signer.sign(&info.nonce, &mut connect)?;
    }
    let hello = format!("CONNECT {connect}\r\nPING\r\n");
    stream.write_all(hello.as_bytes()).await?;
    stream.flush().await?;
    loop {
        match parse_op(buf, 0)? {
            Some(Op::Pong) => break,
            Some(Op::Ok | Op::Info(_)) => {}
            Some(Op::Ping) => {
                stream.write_all(b"PONG\r\n").await?;
                stream.flush().await?;
            }
            Some(Op::Err(e)) => return Err(ConnError::from_server(e)),
            Some(Op::Msg { .. }) => {
                return Err(ConnError::Protocol(
                    "message before the handshake ended".into(),
                ))
            }
            None => read_more(stream, buf).await?,
        }
    }
    debug!(server_id = %info.server_id, tls, "nats handshake done");
    Ok(())
}

async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<(), ConnError> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    if reader.read_buf(buf).await? == 0 {
        return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

/// Runs one server connection: `Ok` when closed on purpose, `Err` when lost. Generic over the
/// stream: plain TCP runs exactly the code it ran before TLS existed.
async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
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
            // replies woken by the same poll): what they publish goes out in this one write.
            // On loopback every write also runs the receiver's TCP stack, so fewer, larger
            // writes are most of what batching saves.
            tokio::task::yield_now().await;
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
        let e = parse_servers("wss://u:secret@h:4222").expect_err("refused");
        assert!(e.reason.contains("websocket"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let tls = parse_servers("tls://u:secret@h:4222,nats://h2").expect("tls is fine");
        assert!(tls[0].tls && !tls[1].tls);
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
            while let Some(op) = parse_op(&mut buf, 1 << 20).expect("parses") {
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
                parse_op(&mut buf, 1 << 20).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut buf = BytesMut::from(&b"MSG a 1 2\r\nhiXX"[..]);
        assert!(
            parse_op(&mut buf, 1 << 20).is_err(),
            "payload must end in CRLF"
        );
    }

    /// A `.creds` file as `nsc` writes it (the JWT's content does not matter to the client).
    fn creds_file(seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJVQSJ9.c2ln\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }

    #[test]
    fn creds_files_parse_and_their_errors_never_quote_the_seed() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().expect("seed");
        let creds = parse_creds(&creds_file(&seed)).expect("valid");
        assert_eq!(creds.jwt, "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJVQSJ9.c2ln");
        assert_eq!(creds.seed, seed);
        assert!(!format!("{creds:?}").contains(&seed));
        // An account seed, a truncated file, garbage: refused, the seed never in the message.
        let account = nkeys::KeyPair::new_account().seed().expect("seed");
        for bad in [
            creds_file(&account),
            creds_file(&seed[..20]),
            "-----BEGIN NATS USER JWT-----\n".to_owned(),
            "junk".to_owned(),
        ] {
            let e = parse_creds(&bad).expect_err("refused").to_string();
            assert!(!e.contains(&seed) && !e.contains(&account), "{e}");
        }
    }

    #[test]
    fn the_nonce_is_signed_as_the_server_verifies_it() {
        let user = nkeys::KeyPair::new_user();
        let public = user.public_key();
        let signer = Signer::Creds {
            jwt: "a.b.c".into(),
            key: nkeys::KeyPair::from_seed(&user.seed().expect("seed")).expect("seed"),
        };
        let mut connect = serde_json::json!({});
        signer.sign("nonce-123", &mut connect).expect("signed");
        assert_eq!(connect["jwt"], "a.b.c");
        // The server decodes base64url without padding and checks the ed25519 signature with
        // the user's public key (nats-server's client.go does exactly this).
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(connect["sig"].as_str().expect("sig"))
            .expect("base64url");
        let verifier = nkeys::KeyPair::from_public_key(&public).expect("public");
        verifier
            .verify(b"nonce-123", &sig)
            .expect("valid signature");
        assert!(verifier.verify(b"nonce-124", &sig).is_err());
        let mut connect = serde_json::json!({});
        Signer::Nkey(user).sign("n", &mut connect).expect("signed");
        assert_eq!(connect["nkey"], public.as_str());
    }

    #[test]
    fn a_message_larger_than_max_payload_is_refused_before_any_allocation() {
        // A 4 GiB announcement: refused at once, the buffer not grown.
        let mut buf = BytesMut::from(&b"MSG a 1 4294967296\r\n"[..]);
        let before = buf.capacity();
        assert!(matches!(
            parse_op(&mut buf, 1 << 20),
            Err(ConnError::Protocol(_))
        ));
        assert_eq!(buf.capacity(), before);
        let mut buf =
            BytesMut::from(&b"HMSG a 1 18446744073709551615 18446744073709551615\r\n"[..]);
        assert!(parse_op(&mut buf, 1 << 20).is_err(), "usize::MAX announced");
        let mut buf = BytesMut::from(&b"MSG a 1 99999999999999999999999\r\n"[..]);
        assert!(parse_op(&mut buf, 1 << 20).is_err(), "past usize");
        // Exactly the bound is fine.
        let mut buf = BytesMut::from(&b"MSG a 1 4\r\nabcd\r\n"[..]);
        assert!(matches!(parse_op(&mut buf, 4), Ok(Some(Op::Msg { .. }))));
    }

    #[test]
    fn server_errors_about_credentials_are_for_the_operator() {
        assert!(ConnError::from_server("Authorization Violation".into()).needs_operator());
        assert!(ConnError::from_server("User Authentication Expired".into()).needs_operator());
        assert!(!ConnError::from_server("Stale Connection".into()).needs_operator());
    }

    #[test]
    fn settings_with_missing_or_bad_files_are_refused_naming_the_file_only() {
        let dir = std::env::temp_dir().join(format!("busgate-wire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let seed_path = dir.join("bad.nk");
        let secretish = "SUNOTAREALSEEDBUTSECRETLOOKING";
        std::fs::write(&seed_path, secretish).expect("write");
        let mut s = NatsSettings::with_url("nats://127.0.0.1:1");
        s.nkey_file = seed_path.display().to_string();
        let e = Security::load(&s).err().expect("refused").to_string();
        assert!(
            e.contains("nats.nkey_file") && !e.contains(secretish),
            "{e}"
        );
        s.nkey_file = "/nonexistent/x.nk".into();
        assert!(Security::load(&s).is_err());
        let mut s = NatsSettings::with_url("nats://127.0.0.1:1");
        s.ca_file = "/nonexistent/ca.pem".into();
        assert!(Security::load(&s).is_err());
        let mut s = NatsSettings::with_url("nats://127.0.0.1:1");
        s.cert_file = "/nonexistent/c.pem".into();
        assert!(s.validate().is_err(), "cert without key");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn settings_come_from_the_same_variables_everywhere() {
        let vars = [
            ("URL", "tls://u:p@h:4443"),
            ("CA_FILE", "/ca.pem"),
            ("NKEY_FILE", "/u.nk"),
            ("HANDSHAKE_FIRST", "true"),
            ("PING_INTERVAL", "250ms"),
            ("MAX_PINGS_OUT", "3"),
        ];
        let s = NatsSettings::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("valid");
        assert_eq!(s.ping_interval, Duration::from_millis(250));
        assert!(s.handshake_first && s.requires_tls());
        assert_eq!((s.max_pings_out, s.ca_file.as_str()), (3, "/ca.pem"));
        // And back: what `busgate up` gives its workers reads as the same settings.
        let env = s.to_env();
        let again = NatsSettings::from_vars(|name| {
            let key = format!("BUSGATE_NATS__{name}");
            env.iter().find(|(n, _)| *n == key).map(|(_, v)| v.clone())
        })
        .expect("valid");
        assert_eq!(
            again,
            NatsSettings {
                instance: String::new(),
                ..s.clone()
            }
        );
        assert!(!format!("{s:?}").contains(":p@"), "{s:?}");
        assert!(
            NatsSettings::from_vars(|n| (n == "PING_INTERVAL").then(|| "soon".into())).is_err()
        );
        assert!(!NatsSettings::with_url("nats://h").requires_tls());
    }

    #[tokio::test]
    async fn announced_servers_join_the_pool_with_the_announcers_credentials_and_name() {
        let wire = Connection::connect("tls://u:p@nats-a.example:1", "pool").expect("url");
        let from = parse_servers("tls://u:p@nats-a.example:1")
            .expect("url")
            .remove(0);
        let info = Info {
            connect_urls: vec![
                "10.0.0.2:4222".into(),
                "nats-b.example:4222".into(),
                "nats-a.example:1".into(),
                "not a url".into(),
            ],
            max_payload: usize::MAX,
            ..Info::default()
        };
        wire.inner().learn(&info, &from);
        assert_eq!(
            wire.servers(),
            ["nats-a.example:1", "10.0.0.2:4222", "nats-b.example:4222"]
        );
        let servers = wire.inner().servers.lock().expect("pool").clone();
        assert!(servers.iter().all(|s| s.tls && s.auth == from.auth));
        assert_eq!(servers[1].tls_name.as_deref(), Some("nats-a.example"));
        assert_eq!(servers[2].tls_name, None);
        // A server's max_payload is believed up to nats-server's own limit only.
        assert_eq!(wire.max_payload(), MAX_PAYLOAD_CAP);
        wire.close(Duration::from_secs(1)).await;
    }

    mod parser_properties {
        use super::super::*;
        use proptest::prelude::*;

        /// One message: subject, reply, header block, payload.
        type Sent = (String, Option<String>, Vec<u8>, Vec<u8>);

        /// A stream of valid server operations and the messages in it.
        fn stream() -> impl Strategy<Value = Vec<Sent>> {
            let subject = "[a-z]{1,8}(\\.[a-z0-9]{1,8}){0,3}";
            let msg = (
                subject,
                proptest::option::of("_INBOX\\.[a-z0-9]{1,10}"),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,10}", 0..3),
            )
                .prop_map(|(s, r, payload, headers)| {
                    let block = if headers.is_empty() {
                        Vec::new()
                    } else {
                        let mut b = b"NATS/1.0\r\n".to_vec();
                        for h in headers {
                            b.extend_from_slice(h.as_bytes());
                            b.extend_from_slice(b"\r\n");
                        }
                        b.extend_from_slice(b"\r\n");
                        b
                    };
                    (s, r, block, payload)
                });
            proptest::collection::vec(msg, 1..12)
        }

        fn encode(msgs: &[Sent]) -> Vec<u8> {
            let mut wire = Vec::new();
            for (i, (s, r, block, payload)) in msgs.iter().enumerate() {
                let reply = r.as_ref().map(|r| format!(" {r}")).unwrap_or_default();
                let line = if block.is_empty() {
                    format!("MSG {s} {i}{reply} {}\r\n", payload.len())
                } else {
                    format!(
                        "HMSG {s} {i}{reply} {} {}\r\n",
                        block.len(),
                        block.len() + payload.len()
                    )
                };
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(block);
                wire.extend_from_slice(payload);
                wire.extend_from_slice(b"\r\nPING\r\n");
            }
            wire
        }

        proptest! {
            #[test]
            fn random_splits_give_the_same_messages(
                msgs in stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
            ) {
                let wire = encode(&msgs);
                let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
                points.push(wire.len());
                points.sort_unstable();
                let mut buf = BytesMut::new();
                let mut from = 0;
                let mut got = Vec::new();
                for to in points {
                    buf.extend_from_slice(&wire[from..to]);
                    from = to;
                    while let Some(op) = parse_op(&mut buf, 1 << 20).expect("valid stream") {
                        if let Op::Msg { sid, msg } = op {
                            got.push((sid, msg));
                        }
                    }
                }
                prop_assert!(buf.is_empty());
                prop_assert_eq!(got.len(), msgs.len());
                for ((sid, msg), (i, (s, r, block, payload))) in got.iter().zip(msgs.iter().enumerate()) {
                    prop_assert_eq!(*sid, i as u64);
                    prop_assert_eq!(msg.subject(), s.as_str());
                    prop_assert_eq!(msg.reply(), r.as_deref());
                    prop_assert_eq!(msg.headers.as_deref().unwrap_or(&[]), &block[..]);
                    prop_assert_eq!(&msg.payload[..], &payload[..]);
                }
            }

            #[test]
            fn garbage_never_panics_nor_grows_past_the_bound(
                chunks in proptest::collection::vec(
                    prop_oneof![
                        proptest::collection::vec(any::<u8>(), 0..64),
                        "(MSG|HMSG|PING|PONG|INFO|-ERR|\\+OK) [ -~]{0,30}\r\n".prop_map(String::into_bytes),
                        "(MSG|HMSG) a [0-9]{1,3}( [0-9]{1,25}){1,3}\r\n".prop_map(String::into_bytes),
                    ],
                    0..20,
                ),
            ) {
                let max = 4096;
                let mut buf = BytesMut::new();
                'feed: for chunk in chunks {
                    buf.extend_from_slice(&chunk);
                    loop {
                        match parse_op(&mut buf, max) {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            // A real connection ends here and starts afresh.
                            Err(_) => { buf.clear(); continue 'feed; }
                        }
                    }
                    // Waiting for a message never reserves more than its bound (plus its
                    // line, CRLFs and the garbage fed so far).
                    prop_assert!(buf.capacity() <= max + 64 * 20 + 1024 + 4 * 64, "{}", buf.capacity());
                }
            }
        }
    }
}
