//! Scatter-gather over NATS: publishing a request to every target of a route, collecting the
//! replies until a deadline, and merging them into one answer.
//!
//! Owns: [`collector`] (the table of pending gathers and the one reply inbox per instance),
//! [`scatter`] (one gather: publish, collect, the deadline bookkeeping), [`merge`] (a gather's
//! outcome as the answer or the problem), [`trace`] (a gather's send spans, with traces on).
//!
//! May use: `config` (the compiled route), `metrics`, `error`.

pub mod collector;
pub mod merge;
pub mod scatter;
pub mod trace;
