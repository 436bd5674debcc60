//! # busgate-shared — the wire contract v1
//!
//! Everything that two Busgate processes (or a Busgate process and an internal service) must agree
//! on lives here, once. No other crate spells a subject, a header name or an envelope field.
//!
//! # Layout
//!
//! - [`subject`]: request subjects, queue groups and the gateway's reply-inbox layout.
//! - [`header`]: header names carried on every request, and deadline helpers.
//! - [`envelope`]: the request and reply payloads, reply status, error codes.
//! - [`validate`]: service-name and `order_id` validation.
//! - [`compose`]: composition: targets that wait for other targets' answers (`needs`, `with`,
//!   `as`, `when.field`), JSON Pointers into gathered data, and the validation of a route's graph.
//! - [`config`]: the configuration schema (services, routes, targets, merge) and its validation.
//! - [`client`]: a client of the public API as configuration (routes, rate, key hashes).
//! - [`caching`]: a service's `cache` and `coalesce`, a route's `late` grace (issue 25).
//! - [`upstream`]: a service's HTTP upstream as configuration: the URL template, header
//!   secrets from env or file, validation, the own-listener check.
//! - [`resilience`]: a service's breaker, retries and hedging as configuration, and the client's
//!   `Busgate-Timeout` value.
//! - [`watch`]: following the `busgate-config` bucket (current values, then changes), shared
//!   by the gateway and the configuration-following adapters.
//! - [`nats`]: the async-nats connect helper (JetStream, KV; reconnects forever, logs state
//!   changes), configured from the wire's `[nats]` settings (it uses [`wire`], never the reverse).
//! - [`sdk`]: serve a Busgate service directly on NATS: queue group, deadlines, envelopes,
//!   the NATS service API (`$SRV.PING|INFO|STATS`).
//! - [`micro`]: the NATS service API answers of one instance, with its counters.
//! - [`wire`]: the lean NATS connection of the request path (publish with headers, callbacks),
//!   a folder by concern: the public handle, supervision (reconnect, lame duck, backoff), the
//!   connection task, the server pool, the connector, TLS, the `[nats]` settings
//!   ([`NatsSettings`](nats::NatsSettings)), authentication, protocol parsing, errors.
//! - [`runtime`]: what every Busgate process does the same way: logging set-up, shutdown signals.
//! - [`telemetry`]: traces over OTLP (`[telemetry]`, `OTEL_*`), the process's tracer, and the
//!   `traceparent` made from and read into spans.
//! - [`backoff`]: the one exponential backoff with jitter that every retry loop uses.
//! - [`error`]: this crate's error type.
//!
//! Every background task of a process obeys one [`drain::Watch`] (re-exported as [`drain`]):
//! `main` holds the `drain::Signal`, signals it once on shutdown and waits for every task to
//! release its watch.

pub mod backoff;
pub mod caching;
pub mod client;
pub mod compose;
pub mod config;
pub mod envelope;
pub mod error;
pub mod header;
pub mod micro;
pub mod nats;
pub mod resilience;
pub mod runtime;
pub mod sdk;
pub mod subject;
pub mod telemetry;
pub mod upstream;
pub mod validate;
pub mod watch;
pub mod wire;

/// The drain signal every background task obeys (the `drain` crate, re-exported so that every
/// crate uses the same version).
pub use drain;
pub use error::Error;

/// The version of this crate, reported by every binary and NATS service registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
