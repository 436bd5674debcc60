//! Scatter-gather over NATS: publishing a request to every target of a route, collecting the
//! replies until a deadline, and merging them into one answer.
//!
//! Owns: [`collector`] (the table of pending gathers and the one reply inbox per instance),
//! [`scatter`] (one gather: publish, collect, the deadline bookkeeping), [`merge`] (a gather's
//! outcome as the answer or the problem), [`reuse`] (the hooks of the cache and coalescing), [`late`] (a partial answer's
//! sources listened to after it, for the route's `late.grace`).
//!
//! May use: `config` (the compiled route), `cache`, `metrics`, `error`.

pub mod collector;
pub mod late;
pub mod merge;
pub mod reuse;
pub mod scatter;
