//! # busgate-tests
//!
//! End-to-end tests live in `tests/`: each starts a real `nats-server` on a free port and the
//! real `busgate` and `busgate-worker` binaries; every process a test starts, and whatever that
//! starts, is killed when the test ends, passed or failed.
//!
//! # Layout
//!
//! The harness, by role (as linkerd2-proxy's `app/integration` and apollo router's
//! `IntegrationTest`):
//!
//! - [`process`]: a child process: spawned in a process group of its own and marked, its
//!   output kept for bounded waits, it and its descendants killed on drop; [`process::bin`].
//! - [`nats`]: a nats-server ([`nats::NatsServer`]), a silent service on it, and the test CA
//!   ([`nats::TestCa`]).
//! - [`cluster`]: a nats-server cluster with faults (kill, pause, restart).
//! - [`gateway`]: a `busgate gateway` child, its listeners, the admin token, admin requests
//!   ([`gateway::Answer`]), clients, metrics; the `busgate up` command.
//! - [`workers`]: `busgate-worker` children: demo services, adapters, native services.
//! - [`stack`]: the stacks tests start from (adapters in front of demos, or native services).
//! - [`http`]: the one HTTP client helper, bodies and headers as text, a test HTTP server.
//! - [`jobs`]: asynchronous requests: submit, poll until final.
//! - [`otlp`]: an OTLP/HTTP receiver that decodes what the processes export.
//! - [`upstream`]: a test upstream that fails or stalls on command and counts its calls.
//! - [`wait`]: bounded waits ([`wait::eventually`]) and free ports.
//! - [`fixture`]: the gateway settings (services, routes, jobs, callbacks) the tests, the
//!   benchmark and the perf scripts (through `busgate-bench --print-settings`) start with;
//!   settings files.
//! - [`support`]: all of the above under the harness's first name (for the benchmark and
//!   older tests).
//!
//! The tests:
//!
//! - `tests/e2e.rs`: the synchronous scatter-gather, failure modes, bad input, load, workers.
//! - `tests/async_requests.rs`: asynchronous requests, callbacks, idempotency, kill -9.
//! - `tests/never_lost.rs`: the never-lost promises, each from the state a failure leaves.
//! - `tests/faults.rs`: a 3-node cluster ([`cluster::NatsCluster`]), two gateways, faults
//!   under load.
//! - `tests/config.rs`: dynamic configuration and the admin API on two instances.
//! - `tests/config_as_code.rs`: `busgate config diff / apply / export` and `up --config`
//!   (an apply changed in its midst, driven in process through `busgate_gateway`).
//! - `tests/clients.rs`: API keys, scope and limits per client.
//! - `tests/up_stack.rs`: `busgate up` and its children.
//! - `tests/browser.rs`: the admin UI in headless Chromium.
//! - `src/bin/busgate-bench/`: the benchmark against the nginx and HAProxy peers
//!   (`tests/perf/peers/peers.sh`).
//!
//! Run the tests with `tests/run.sh` (installs what they need, builds the binaries, runs
//! everything, then checks that no process of this checkout is left).

pub mod cluster;
pub mod fixture;
pub mod gateway;
pub mod http;
pub mod jobs;
pub mod nats;
pub mod otlp;
pub mod process;
pub mod stack;
pub mod support;
pub mod upstream;
pub mod wait;
pub mod workers;
