//! Asynchronous requests that are never lost: accepted over HTTP, queued on JetStream, run by
//! whichever instance pulls them, their results polled, streamed or POSTed to a callback.
//!
//! Owns: [`http`] (submit with `Prefer: respond-async` or a `callback_url`, poll, server-sent
//! events), [`queue`] (the work-queue stream, status documents, idempotency keys, the
//! processor), [`callback`] (signing and delivery with retries) and [`guard`] (the SSRF guard of
//! callback URLs).
//!
//! May use: `route` (to run a request's route), `config`, `clock`, `limit`, `error`. Not `edge`: the edge
//! hands a submit its parts, and the poll handlers take their own state ([`http::AsyncRequests`]).

pub mod callback;
pub mod guard;
pub mod http;
pub mod queue;
