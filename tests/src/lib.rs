//! # busgate-tests
//!
//! End-to-end tests live in `tests/`: each starts a real `nats-server` on a free port and the
//! real `busgate` and `busgate-worker` binaries, and cleans up in `Drop`.
//!
//! # Layout
//!
//! - `tests/support/mod.rs`: the harness (processes, log waits, the default stack).
//! - `tests/e2e.rs`: the synchronous scatter-gather, failure modes, bad input, load, workers.
//!
//! Run them with `tests/run.sh` (installs nats-server, builds the binaries, runs everything).
