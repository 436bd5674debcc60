//! Configuration: the settings a process starts with, and the dynamic configuration (services,
//! routes and clients) that every instance keeps in force.
//!
//! Owns: [`settings`] (typed settings, defaults < file < `BUSGATE_…`, validated before any port
//! is bound), [`allowlist`] (the callback allowlist those settings name), [`snapshot`] (the
//! compiled configuration a request runs on, and route lookup), [`graph`] (a composed
//! route's graph compiled: needs, stages, attributes, conditions on answers) and [`store`] (the KV bucket
//! `busgate-config` and the watcher that swaps snapshots in), [`clients`] (clients compiled:
//! the index of API keys, allowed routes, limits and their state), [`file`] (a configuration
//! file read and written: what `busgate config` applies and exports) and [`plan`] (what applying
//! one changes, and its diff), [`apply`] (carrying a plan out, compare-and-set, through a
//! target).
//!
//! May use: `metrics` (label names), `clock`, `error`. Nothing here knows about HTTP handlers,
//! gathers or jobs.

pub mod allowlist;
pub mod apply;
pub mod clients;
pub mod file;
pub mod graph;
pub mod plan;
pub mod settings;
pub mod snapshot;
pub mod store;
