//! # busgate-worker
//!
//! One binary, four roles:
//!
//! - `adapter`: takes requests for one service off NATS (queue group `busgate.<service>`) and
//!   calls the internal HTTP service ([`adapter`]).
//! - `adapters`: serves every service whose configuration (KV `busgate-config`) has an
//!   upstream, following changes ([`adapters`]).
//! - `demo`: a demo internal HTTP service with deterministic data and failure prefixes ([`demo`]).
//! - `native`: the same demo data answered directly on NATS through the shared SDK ([`native`]).
//!
//! # Layout
//!
//! - [`demo_data`]: the demo orders and the `slow-`/`fail-`/`missing-` prefixes, shared by
//!   `demo` and `native`.
//! - [`adapter`], [`demo`], [`native`]: one module per role.
//! - [`http1`]: the adapters' keep-alive client for plain-HTTP upstreams, Busgate's own
//!   (≥ 15 % ahead of hyper's on one runtime thread).
//! - [`hyper1`]: hyper's client connection driven the same way, the A/B control of `http1`
//!   (benchmarking only: `BUSGATE_ADAPTER_HTTP_CLIENT=hyper`).
//!
//! # Shutdown
//!
//! One [`busgate_shared::drain`] per process: every role and each of its background tasks
//! holds a watch of it; SIGINT/SIGTERM signals it once, and the process waits (within
//! `GRACE`) until each has stopped taking requests, answered those in flight, unregistered,
//! drained its NATS subscriptions and released it.

mod adapter;
mod adapters;
mod demo;
mod demo_data;
mod http1;
mod hyper1;
mod native;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use busgate_shared::runtime::{self, LogFormat};
use clap::{Parser, Subcommand, ValueEnum};

/// How long the process waits, after SIGINT/SIGTERM, for its tasks to finish: longer than a
/// service's own grace for requests in flight (10 s) plus its unregistering.
const GRACE: Duration = Duration::from_secs(20);

// See the gateway's main.rs: glibc's malloc was the top cost under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Busgate workers: adapters to internal HTTP services, and demo services.
#[derive(Debug, Parser)]
#[command(name = "busgate-worker", version)]
struct Cli {
    /// NATS server URL(s). Credentials in it belong in the environment variable: a process's
    /// arguments are visible to every user of the machine (`ps`). The rest of the `[nats]`
    /// settings (TLS, nkey, creds, pings) come from the same `BUSGATE_NATS__…` variables as
    /// the gateway's: `BUSGATE_NATS__CA_FILE`, `BUSGATE_NATS__CREDS_FILE`, ….
    #[arg(
        long,
        global = true,
        env = "BUSGATE_NATS__URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "BUSGATE_LOG__FORMAT",
        default_value = "text"
    )]
    log_format: CliLogFormat,
    /// Log level (RUST_LOG wins when set).
    #[arg(
        long,
        global = true,
        env = "BUSGATE_LOG__LEVEL",
        default_value = "info"
    )]
    log_level: String,
    /// Threads of the async runtime. Unset: one, whatever the services served: one event loop
    /// per process, as an nginx worker; scale out with more processes in the queue group, or
    /// raise this where one process's core is saturated. Measured at a fixed rate on the 2-core
    /// benchmark machine (`tests/perf/tails.sh`, both adapters in one process): one thread cost
    /// 34 µs of CPU per merged request against 48 with two, a third of the run-queue wait and
    /// half the preemptions, and its p99.9 was 9.3–9.8 ms against 10.8–45.7 ms.
    #[arg(
        long,
        global = true,
        env = "BUSGATE_WORKER_THREADS",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Busgate services by calling internal HTTP services.
    Adapter {
        /// The Busgate service name (requests arrive on busgate.svc.<service>); repeat, each
        /// with its --upstream in the same order, to serve several from one process.
        #[arg(long = "service", required = true)]
        services: Vec<String>,
        /// Upstream URL template; `{order_id}` is replaced by the (percent-encoded) order id.
        #[arg(long = "upstream", required = true)]
        upstreams: Vec<String>,
        /// Requests handled at once by this instance.
        #[arg(long, default_value_t = 1024)]
        concurrency: usize,
        /// Upstream timeout for requests that carry no deadline.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Serve every service whose configuration has an upstream, following the configuration
    /// in NATS (KV busgate-config): services are joined and left as they come and go.
    Adapters,
    /// Run a demo internal HTTP service: GET /order/{order_id}.
    Demo {
        /// Which demo service to be (service1: status, amount, items; service2: carrier, tracking, eta).
        #[arg(long)]
        service: String,
        /// Address to listen on (port 0 picks a free one; the log says which).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
    /// Answer the demo data directly on NATS through the Busgate SDK (no HTTP hop).
    Native {
        /// The Busgate service name; repeat to serve several services from one process.
        #[arg(long = "service", required = true)]
        services: Vec<String>,
        /// Requests handled at once by this instance.
        #[arg(long, default_value_t = 1024)]
        concurrency: usize,
    },
}

/// Parses `250ms`, `3s`, `1m` (the units Busgate's settings use).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms or 3s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads(&cli))
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("busgate-worker: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let format = match cli.log_format {
        CliLogFormat::Text => LogFormat::Text,
        CliLogFormat::Json => LogFormat::Json,
    };
    runtime::init_logging(format, &cli.log_level);
    runtime::install_crypto_provider();
    // Traces when OTEL_EXPORTER_OTLP_ENDPOINT (or …_TRACES_ENDPOINT) names a collector.
    let telemetry = match busgate_shared::telemetry::init(
        &busgate_shared::telemetry::TelemetrySettings::default(),
        "busgate-worker",
    ) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("busgate-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let nats = match busgate_shared::nats::NatsSettings::from_env() {
        Ok(settings) => busgate_shared::nats::NatsSettings {
            url: cli.nats.clone(),
            ..settings
        },
        Err(e) => {
            eprintln!("busgate-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = nats.validate() {
        eprintln!("busgate-worker: {e}");
        return ExitCode::from(2);
    }
    if let Command::Adapter {
        services,
        upstreams,
        ..
    } = &cli.command
    {
        if services.len() != upstreams.len() {
            eprintln!(
                "busgate-worker: {} --service but {} --upstream: give one upstream for each service, in the same order",
                services.len(),
                upstreams.len()
            );
            return ExitCode::from(2);
        }
    }
    // One drain for the process: every background task holds a watch of it; SIGINT/SIGTERM
    // signals it once, and the process waits (within a grace) for every task to release it.
    let (signal, drain) = busgate_shared::drain::channel();
    let work = command(cli.command, &nats, drain);
    tokio::pin!(work);
    let result = tokio::select! {
        result = &mut work => result,
        () = runtime::shutdown_signal() => {
            let (_, result) = tokio::join!(
                runtime::drain_within(signal, GRACE),
                tokio::time::timeout(GRACE, &mut work),
            );
            result.unwrap_or(Ok(()))
        }
    };
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "worker failed");
            ExitCode::from(1)
        }
    }
}

/// The runtime's threads: `--threads` when given, else one.
fn runtime_threads(cli: &Cli) -> usize {
    cli.threads.map_or(1, usize::from)
}

/// Runs one role until `drain` is signalled (or it fails).
async fn command(
    command: Command,
    nats: &busgate_shared::nats::NatsSettings,
    drain: busgate_shared::drain::Watch,
) -> anyhow::Result<()> {
    match command {
        Command::Adapter {
            services,
            upstreams,
            concurrency,
            timeout,
        } => {
            let adapters: Vec<adapter::Options> = services
                .into_iter()
                .zip(upstreams)
                .map(|(service, upstream)| adapter::Options {
                    service,
                    upstream,
                    concurrency,
                    timeout,
                })
                .collect();
            adapter::run(nats, &adapters, drain).await
        }
        Command::Adapters => adapters::run(nats, drain).await,
        Command::Demo { service, listen } => demo::run(&service, listen, drain).await,
        Command::Native {
            services,
            concurrency,
        } => native::run(nats, &services, concurrency, drain).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_runtime_thread_unless_told_otherwise() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied()).expect("parses");
        let threads = |args: &[&str]| runtime_threads(&parse(args));
        assert_eq!(threads(&["busgate-worker", "native", "--service", "a"]), 1);
        let two = [
            "busgate-worker",
            "adapter",
            "--service",
            "a",
            "--upstream",
            "http://x/{order_id}",
            "--service",
            "b",
            "--upstream",
            "http://y/{order_id}",
        ];
        assert_eq!(threads(&two), 1);
        assert_eq!(threads(&["busgate-worker", "adapters"]), 1);
        assert_eq!(
            threads(&[
                "busgate-worker",
                "native",
                "--service",
                "a",
                "--threads",
                "4"
            ]),
            4
        );
        assert_eq!(
            threads(&["busgate-worker", "--threads", "3", "adapters"]),
            3
        );
        assert!(Cli::try_parse_from([
            "busgate-worker",
            "--threads",
            "0",
            "native",
            "--service",
            "a"
        ])
        .is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
