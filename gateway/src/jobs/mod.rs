//! Asynchronous requests that are never lost: accepted over HTTP, queued on JetStream, run by
//! whichever instance pulls them, their results polled, streamed or POSTed to a callback.
//!
//! # Layout, by stage
//!
//! - [`http`]: the HTTP face: submit (`Prefer: respond-async` or a `callback_url`), poll and
//!   server-sent events. It calls the stages below; none calls it.
//! - [`intake`]: a submit's durable writes (the pending document and the job, retried
//!   through a leader election) and idempotency keys (claim, confirm, release, resume).
//! - [`process`]: the work-queue consumer: pulls, runs, stores the result, acks, schedules
//!   the callback, hands transient failures back to be delivered later; obeys the drain.
//! - [`pull`]: how the processor and the deliverer pull from their durable consumers, for the
//!   gateway's life (a failed pull or a lost consumer costs a retry, never the loop).
//! - [`results`]: status documents (`busgate-results`): read for polls and event streams,
//!   changed with compare-and-set.
//! - [`room`]: room in the results bucket: submits refused while the queued requests'
//!   documents would not fit, results held by the processor until they do.
//! - [`callback`]: the callback queue: scheduling a finished request's delivery, signing,
//!   and the deliverer (retries by JetStream NAK delay); obeys the drain.
//! - [`late`]: the request document of a synchronous answer left partial on a route with a
//!   `late.grace`: written pending with the partial answer, then final when the grace ends.
//! - [`guard`]: the SSRF guard of callback URLs.
//! - [`backlog`]: the streams' depths, for `/metrics`.
//! - [`trace`]: the spans of processing (linked to the submit's) and of callback deliveries.
//! - [`store`]: what the stages share: the streams, buckets and consumers ([`store::Jobs`]),
//!   the [`store::Job`] message, the redelivery backoff.
//!
//! Imports point one way: `http` → `intake`, `results` → `store`; `process` → `callback`,
//! `pull`, `results`, `room`, `store`; `store` → `room`; `callback` → `pull`, `results`,
//! `store`, `guard`; `pull` → `store`.
//!
//! May use: `route` (to run a request's route), `config`, `clock`, `limit`, `error`. Not `edge`: the edge
//! hands a submit its parts, and the poll handlers take their own state ([`http::AsyncRequests`]).

pub mod backlog;
pub mod callback;
pub mod guard;
pub mod http;
pub mod intake;
pub mod late;
pub mod process;
pub mod pull;
pub mod results;
pub mod room;
pub mod store;
pub mod trace;
