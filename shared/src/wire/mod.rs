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
//!
//! # Layout
//!
//! One file per job, listed so that every file uses only files below it (no import circle;
//! nothing here uses [`crate::nats`], which uses `options` and `auth`):
//!
//! - `client`: the public handle, [`Connection`] and [`Subscription`].
//! - `supervisor`: the task restarted after a panic; reconnecting forever over the pool,
//!   lame duck, the jittered backoff between rounds.
//! - `connection`: the state the handles and the task share, and one server connection at
//!   work (read, write, keep-alive PINGs).
//! - `batch`: when the writer stops gathering a burst and writes it.
//! - `pool`: the servers in the order they are tried, with those announced in `connect_urls`.
//! - `connector`: one server connection made (TCP, TLS, `INFO`, `CONNECT`, the first `PONG`).
//! - `tls`: the rustls configuration and handshake.
//! - `options`: the `[nats]` settings ([`NatsSettings`]), the URL list, redaction.
//! - `auth`: the URL's credentials, `.creds` and nkey files, the signed nonce.
//! - `protocol`: the protocol's operations parsed and written, as bytes.
//! - `error`: [`PublishError`], [`FlushError`], and why a server connection ended.
//!
//! A folder inside `busgate-shared`, not a crate of its own: the repository's top level is
//! fixed by the design (`gateway/`, `workers/`, `shared/`, `deploy/`, `tests/`), and this
//! client is bound to the contract crate both ways. The SDK serves on it, the contract's
//! [`crate::Error`] carries [`UrlError`] and [`PublishError`] (defined beside it), and every process reads its
//! [`NatsSettings`] through `shared`; it in turn answers with that `Error` and writes the
//! contract's headers. As a crate apart it would need `shared` (for `Error`) while `shared`
//! needs it (for the SDK): one of the two would have to be cut in half to avoid a cycle between
//! crates. Inside, the modules are private and the public API is the re-exports below: exactly
//! what `wire.rs` exported, so no caller changes.

pub(crate) mod auth;
mod batch;
mod client;
mod connection;
mod connector;
mod error;
pub(crate) mod options;
mod pool;
mod protocol;
pub(crate) mod supervisor;
mod tls;

pub use crate::error::{PublishError, UrlError};
pub use auth::{parse_creds, read_seed, Auth, Creds};
pub use client::{Connection, Subscription, MAX_BACKLOG};
pub use error::FlushError;
pub use options::{parse_servers, NatsSettings, Server};
pub use protocol::{header_value, Msg, NO_RESPONDERS};
