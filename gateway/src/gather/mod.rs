//! Scatter-gather over NATS: publishing a request to every target of a route, collecting the
//! replies until a deadline, and merging them into one answer.
//!
//! Owns: [`collector`] (the table of pending gathers and the one reply inbox per instance),
//! [`scatter`] (one gather: publish, collect, the deadline bookkeeping), [`graph`] (a composed
//! route's run: which targets can be asked now, with which attributes, or why they are
//! skipped), [`stages`] (a composed route's stages carried out on the bus), [`resend`] (a request sent again to one source: a retry or a hedge), [`merge`] (a
//! gather's outcome as the answer or the problem).
//!
//! May use: `config` (the compiled route), `metrics`, `error`.

pub mod collector;
pub mod graph;
pub mod merge;
pub mod resend;
pub mod scatter;
pub mod stages;
