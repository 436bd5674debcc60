//! # busgate-tests
//!
//! End-to-end tests live in `tests/`: each starts a real `nats-server` on a free port and the
//! real `busgate` and `busgate-worker` binaries, and cleans up in `Drop`.
//!
//! # Layout
//!
//! - [`support`]: the harness (processes, log waits, the default stack), shared by the tests
//!   and the benchmark.
//! - [`fixture`]: the gateway settings (services, routes, jobs, callbacks) the tests, the
//!   benchmark and the perf scripts (through `busgate-bench --print-settings`) start with.
//! - `tests/e2e.rs`: the synchronous scatter-gather, failure modes, bad input, load, workers.
//! - `tests/async_requests.rs`: asynchronous requests, callbacks, idempotency, kill -9.
//! - `tests/never_lost.rs`: the never-lost promises, each from the state a failure leaves.
//! - `tests/faults.rs`: a 3-node cluster ([`support::NatsCluster`]), two gateways, faults under load.
//! - `tests/config.rs`: dynamic configuration and the admin API on two instances.
//! - `tests/browser.rs`: the admin UI in headless Chromium.
//! - `src/bin/busgate-bench.rs`: the benchmark against the nginx peers.
//!
//! Run the tests with `tests/run.sh` (installs what they need, builds the binaries, runs
//! everything).

pub mod fixture;
pub mod support;
