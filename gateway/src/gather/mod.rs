//! Scatter-gather over NATS: publishing a request to every target of a route, collecting the
//! replies until a deadline, and merging them into one answer.
//!
//! Owns: [`collector`] (the table of pending gathers and the one reply inbox per instance),
//! [`ask`] (who asks, and one target's publish), [`scatter`] (one gather: publish, collect, the
//! deadline bookkeeping), [`book`] (a gather's
//! per-source results and their bookkeeping), [`graph`] (a composed route's run: which targets
//! can be asked now, with which attributes, or why they are skipped), [`stages`] (a composed
//! route's stages carried out on the bus), [`resend`] (a request sent again to one source: a
//! retry or a hedge), [`reuse`] (the hooks of the cache and coalescing), [`late`] (a partial
//! answer's sources listened to after it, for the route's `late.grace`), [`merge`] (a gather's
//! outcome as the answer or the problem), [`trace`] (a gather's send spans, with traces on).
//!
//! May use: `config` (the compiled route), `cache`, `metrics`, `error`.

pub mod ask;
pub mod book;
pub mod collector;
pub mod graph;
pub mod late;
pub mod merge;
pub mod resend;
pub mod reuse;
pub mod scatter;
pub mod stages;
pub mod trace;
