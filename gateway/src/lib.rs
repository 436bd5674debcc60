//! # busgate — the gateway
//!
//! An HTTP edge that answers a client's `order_id` request by scattering it over NATS to the
//! services a route names, gathering their replies until a deadline, and merging them;
//! synchronously, or asynchronously through JetStream.
//!
//! # Layout
//!
//! One folder per concern; each opens with what it owns and what it may use.
//!
//! - [`edge`]: the public listener: serving connections with their limits, dispatch of
//!   configured routes, load shedding, body reading and parsing, request ids and
//!   `traceparent`, health and metrics endpoints, the state handlers share.
//! - [`admin`]: the admin listener: configuration objects, try-it, live instances, the UI's
//!   files and the OpenAPI document.
//! - [`jobs`]: asynchronous requests: submit, poll and events over HTTP, the JetStream work
//!   queue and status documents, signed callbacks and their SSRF guard.
//! - [`auth`]: who is calling: a request's client by its API key or by a JWT of a configured
//!   issuer ([`auth::jwt`], with its key sets), the key format and hashing.
//! - [`route`]: running a route for one request, the one way the edge, the processor of
//!   asynchronous requests and the try-it get an answer.
//! - [`cache`]: answers reused: a cache of `ok` replies per service, coalescing of identical
//!   source requests, `Cache-Status`, the stop signal of refreshes and late gathers.
//! - [`gather`]: scatter-gather over NATS: the collector and its reply inbox, one gather with
//!   its deadlines, the merge.
//! - [`resilience`]: per service, on this instance: circuit breakers, retries within a
//!   budget, hedged requests, and the latencies they go by.
//! - [`config`]: settings (one file per section, and their loading and rules), the compiled
//!   snapshot, the KV store of services, routes and clients and the watcher that keeps every
//!   instance's configuration in force; configuration files, what applying one changes (its
//!   plan and diff) and the compare-and-set apply (`busgate config`, `busgate up --config`).
//! - [`error`]: what a request can meet ([`error::GatewayError`], its kind's origin and
//!   whether a retry may help, and its one HTTP mapping), and apart from it
//!   [`error::StartupError`]: why a process could not start, with its exit code.
//! - [`fleet`]: the gateway instances' heartbeats on NATS, which count how many share each
//!   client's rate and pending cap; [`share`] holds that count for the request path.
//! - [`metrics`] (with [`histogram`], the lock-free one of per-source latency), [`clock`]
//!   (timestamps, the one retry backoff of the gateway's loops), [`limit`] (counted capacity: in
//!   flight, connections, streams), [`share`]: leaves.
//! - this file: wiring only ([`run`]): one `drain` signal for every background task (the
//!   JetStream supervisor, the configuration watcher, the processor of asynchronous requests,
//!   the callback deliverer), signalled once at shutdown after the listeners' phases.
//!
//! `busgate up` (the one-command local stack: a supervisor of child processes) and the
//! `busgate config` commands (their admin-API target) are not part of this library: they live
//! under the binary, `src/up/` and `src/config_cmd/` beside `src/main.rs`.
//!
//! Arrows point down: a module uses only modules below it, never one that uses it
//! (`tests/tools/modgraph.py` checks this on every test run).
//!
//! ```text
//!   main ──▶ up (binary only: stack · children · banner) · config_cmd (binary only)
//!     │       │
//!     └───────┴──▶ lib (run: wiring, one drain)
//!                    │
//!          ┌─────────┴──────┐
//!        admin ──────────▶ edge
//!          │                │ ╲
//!          │                │  ╲──▶ jobs
//!          │                │  ╱    │ ╲
//!          │               auth ◀──┘  │
//!          │                │         │
//!          └──────────────▶ route ◀───┘
//!                           │
//!                         gather
//!                           │
//!                         config (settings/ · snapshot · store · clients · allowlist ·
//!                                 file · plan · apply)
//!                           │
//!           metrics (histogram) · error (request · startup) · clock · limit
//! ```

pub mod admin;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub mod edge;
pub mod error;
pub mod fleet;
pub mod gather;
pub mod histogram;
pub mod jobs;
pub mod limit;
pub mod metrics;
pub mod resilience;
pub mod route;
pub mod share;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use busgate_shared::drain;

use crate::error::{GatewayError, StartupError};

use crate::config::allowlist::Allowlist;
use crate::config::settings::{MetricsListener, Settings};
use crate::config::snapshot::Snapshot;
use crate::config::store::{ConfigStore, StoreStatus};
use crate::edge::state::{AppState, Edge, Shared};
use crate::gather::collector::Collector;
use crate::jobs::callback::{Deliverer, Signer};
use crate::jobs::guard::Guard;
use crate::jobs::http::AsyncRequests;
use crate::jobs::store::Jobs;
use crate::metrics::Metrics;
use crate::route::Runner;

/// A random id for this process, used in reply subjects: hex, so a valid subject token.
pub fn new_instance_id() -> String {
    let simple = uuid::Uuid::now_v7().simple().to_string();
    // The tail of a UUIDv7 is random; the head is the timestamp.
    simple[simple.len() - 12..].to_owned()
}

/// Runs a gateway on `listener` until `shutdown` resolves, then stops taking connections,
/// lets in-flight requests finish within `shutdown_grace`, drains every background task (one
/// [`drain`](busgate_shared::drain) signal, within the same grace) and NATS.
///
/// A failure to start is a [`StartupError`] inside the returned error (`main` picks the exit
/// code from it); a failure once serving is not.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let order_id = settings.validate()?;
    let risks = order_id.risks();
    if !risks.is_empty() {
        // Once, at start: the pattern is a setting, not a request.
        warn!(
            pattern = order_id.as_str(),
            admits = %risks.join(", "),
            "http.order_id_pattern lets unsafe order ids through to the services (see docs/settings.md)"
        );
    }
    busgate_shared::runtime::install_crypto_provider();
    // Traces when `[telemetry] otlp_endpoint` or OTEL_EXPORTER_OTLP_ENDPOINT names a collector.
    let telemetry = busgate_shared::telemetry::init(&settings.telemetry, "busgate-gateway")
        .map_err(StartupError::InvalidSettings)?;
    // HS256 secrets are read now; key sets are fetched by the first token of each issuer.
    let issuers =
        auth::jwt::Issuers::new(&settings.auth.issuers).map_err(StartupError::InvalidSettings)?;
    // The certificate is read now: a bad one stops the start, before NATS is dialled.
    let (protocols, certificates) = edge::protocols::for_settings(
        &settings.http,
        edge::serve::Limits::from(&settings.http).builder(),
    )
    .map_err(StartupError::InvalidSettings)?;
    let snapshot =
        Snapshot::compile(settings.config_spec()).map_err(StartupError::InvalidSettings)?;
    let instance = if settings.nats.instance.is_empty() {
        new_instance_id()
    } else {
        settings.nats.instance.clone()
    };
    let nats =
        busgate_shared::nats::connect(&settings.nats, &format!("busgate gateway {instance}"))
            .await
            .map_err(StartupError::Nats)?;
    // The request path (requests out, replies in) has a lean connection of its own; JetStream,
    // KV and the service API use the async-nats client above.
    let wire = busgate_shared::wire::Connection::connect_with(
        &settings.nats,
        &format!("busgate gateway {instance} requests"),
    )
    .map_err(StartupError::Nats)?;
    let metrics = Arc::new(Metrics::new());
    let (collector, inbox) =
        Collector::start(&wire, &instance, metrics.clone()).map_err(StartupError::Inbox)?;
    let signer = if settings.callbacks.secret.is_empty() {
        None
    } else {
        Some(Signer::new(&settings.callbacks.secret).map_err(StartupError::InvalidSettings)?)
    };
    let guard = Guard::new(
        Allowlist::parse(&settings.callbacks.allow).map_err(StartupError::InvalidSettings)?,
    );
    // Built now, so that a client that cannot be built stops the start, not the deliveries.
    let deliverer = match &signer {
        Some(signer) => Some(
            Deliverer::new(
                signer.clone(),
                guard.clone(),
                settings.callbacks.retry.iter().map(|d| **d).collect(),
                settings.callbacks.timeout,
                settings.callbacks.concurrency,
            )
            .map_err(StartupError::CallbackClient)?,
        ),
        None => None,
    };
    let admin_token = settings
        .admin
        .resolve_token()
        .map_err(StartupError::InvalidSettings)?;
    let state = AppState::new(Shared {
        runner: Runner::new(
            Arc::new(ArcSwap::from_pointee(snapshot)),
            collector,
            metrics,
        ),
        nats: nats.clone(),
        edge: Arc::new(edge(
            &settings,
            order_id,
            listener.local_addr()?,
            admin_listener.local_addr()?,
        )),
        requests: Arc::new(
            AsyncRequests::new(signer, guard)
                .with_caps(settings.jobs.max_event_streams, settings.jobs.max_waiters),
        ),
        store: Arc::new(OnceLock::new()),
        store_status: Arc::new(StoreStatus::default()),
        instance: Arc::from(instance.as_str()),
        auth: auth::Authenticator::new(settings.auth.mode)
            .with_issuers(issuers)
            .with_throttle(settings.auth.max_failures_per_minute)
            .with_anonymous(
                (settings.auth.mode == config::settings::AuthMode::None)
                    .then(|| auth::anonymous::Anonymous::from_settings(&settings.auth.anonymous))
                    .flatten(),
            ),
    });
    if settings.auth.mode == config::settings::AuthMode::None {
        warn!(
            "auth.mode is \"none\": requests without credentials are served as an anonymous client"
        );
    }
    // One drain for every background task of the process: each holds a `Watch`; shutdown
    // signals once and waits until all have let go.
    let (drain, watch) = busgate_shared::drain::channel();
    if let Some(certificates) = certificates {
        tokio::spawn(certificates.watch(watch.clone()));
    }
    // The instances' heartbeats: how many share each client's limits (`fleet`, `share`).
    let fleet = tokio::spawn(fleet::run(
        nats.clone(),
        instance.clone(),
        state.runner.metrics().clone(),
        watch.clone(),
    ));
    let background = tokio::spawn(supervise_jetstream(
        state.clone(),
        settings.clone(),
        deliverer,
        watch,
    ));
    let addr = listener.local_addr()?;
    let nats_url = busgate_shared::nats::redact_url(&settings.nats.url);
    info!(%addr, %instance, nats = %nats_url, "listening");
    // One token for every instance, from settings or a secret file (validated above); never
    // generated here, never logged. Without one the admin API stays off rather than open.
    let metrics_on_admin = settings.metrics.listener == MetricsListener::Admin;
    // The listeners stop in phases (public first, its requests finishing within the grace;
    // then admin), each on a drain of its own; the background tasks share the one above.
    let (admin_drain, admin_watch) = busgate_shared::drain::channel();
    let limits = edge::serve::Limits::from(&settings.http);
    let admin = match admin_token {
        Some(token) => {
            let admin_addr = admin_listener.local_addr()?;
            info!(addr = %admin_addr, "admin listening");
            let limits = limits.clone();
            let connections = Arc::new(limit::Slots::new(settings.http.max_connections));
            let service =
                edge::serve::tower_service(admin::router(state.clone(), &token, metrics_on_admin));
            Some(tokio::spawn(async move {
                let make = move |_| service.clone();
                edge::serve::serve(
                    admin_listener,
                    make,
                    &limits,
                    None,
                    connections,
                    admin_watch,
                )
                .await;
            }))
        }
        None => {
            warn!("admin.token and admin.token_file are not set: the admin listener is not served");
            drop(admin_listener);
            None
        }
    };

    let (public_drain, public_watch) = busgate_shared::drain::channel();
    let server = {
        let public = if metrics_on_admin {
            edge::Public::without_metrics(state.clone())
        } else {
            edge::Public::new(state.clone())
        };
        let connections = state.edge.connections.clone();
        async move {
            let make = move |peer| public.for_peer(peer);
            edge::serve::serve(
                listener,
                make,
                &limits,
                protocols,
                connections,
                public_watch,
            )
            .await;
            Ok::<(), std::io::Error>(())
        }
    };
    let mut server = tokio::spawn(server);
    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            result.context("server task failed")?.context("server failed")?;
            return Ok(());
        }
    }
    // Signalled here, awaited below through the server task (which releases it).
    tokio::spawn(public_drain.drain());
    info!(in_flight = state.runner.collector().open_gathers(), grace = ?settings.shutdown_grace, "draining");
    match tokio::time::timeout(settings.shutdown_grace, &mut server).await {
        Ok(result) => result
            .context("server task failed")?
            .context("server failed")?,
        Err(_) => {
            warn!(
                in_flight = state.runner.collector().open_gathers(),
                "grace period over, closing connections"
            );
            server.abort();
        }
    }
    // Cache refreshes and late gathers stop; a late gather writes its document before it
    // gives its place back, which is waited for (bounded).
    let reuse = state.runner.collector().reuse().clone();
    reuse.stop();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while reuse.late_open() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::spawn(admin_drain.drain());
    if let Some(admin) = admin {
        if tokio::time::timeout(Duration::from_secs(2), admin)
            .await
            .is_err()
        {
            warn!("admin listener did not close in time");
        }
    }
    if tokio::time::timeout(settings.shutdown_grace, drain.drain())
        .await
        .is_err()
    {
        warn!("background tasks did not stop within the grace period");
        background.abort();
        fleet.abort();
    }
    inbox.stop();
    wire.close(Duration::from_secs(2)).await;
    nats.drain().await.context("draining nats")?;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    info!("stopped");
    Ok(())
}

fn edge(
    settings: &Settings,
    order_id: busgate_shared::validate::OrderIdRule,
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> Edge {
    let mut edge = Edge::new(settings.http.body_limit, order_id);
    edge.upstream_forbidden = upstream_forbidden(settings, public, admin);
    edge.trace_sample_ratio = settings.http.trace_sample_ratio;
    // `http.access_log` is the edge's first name for the same line.
    edge.access_log = settings.log.access || settings.http.access_log;
    edge.body_timeout = settings.http.body_timeout;
    edge.in_flight = limit::Slots::new(settings.http.max_in_flight);
    edge.connections = Arc::new(limit::Slots::new(settings.http.max_connections));
    edge.proxies =
        edge::forwarded::TrustedProxies::new(settings.http.trusted_networks().unwrap_or_default())
            .reading(settings.http.client_header);
    edge
}

/// What a service's upstream may not aim at: this gateway's listeners as bound (a loopback or
/// "any address" listener also under every local name of the machine: `localhost`,
/// `127.0.0.1`, `0.0.0.0`, `::1`), and the NATS monitoring port (8222) of every configured
/// NATS host. An upstream there would make the adapters call the gateway (a loop) or expose
/// the server's monitoring through the public API.
pub fn upstream_forbidden(
    settings: &Settings,
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> Vec<busgate_shared::upstream::Forbidden> {
    use busgate_shared::upstream::Forbidden;
    let mut out = vec![
        Forbidden {
            host: public.ip().to_string(),
            port: public.port(),
            what: "the gateway's public listener".into(),
        },
        Forbidden {
            host: admin.ip().to_string(),
            port: admin.port(),
            what: "the gateway's admin listener".into(),
        },
    ];
    for listen in [settings.http.listen, settings.admin.listen] {
        if listen.port() != 0 {
            out.push(Forbidden {
                host: listen.ip().to_string(),
                port: listen.port(),
                what: "a listener of the gateway".into(),
            });
        }
    }
    if let Ok(servers) = busgate_shared::wire::parse_servers(&settings.nats.url) {
        for server in servers {
            out.push(Forbidden {
                host: server.host.clone(),
                port: NATS_MONITORING_PORT,
                what: "the NATS monitoring port".into(),
            });
        }
    }
    out
}

/// Says, in one line, when the configuration in the settings file differs from the store's
/// (which is in force: a file only seeds an empty store; `busgate config apply` applies it).
async fn compare_with_file(store: &ConfigStore, file: &std::path::Path) {
    let Ok(spec) = config::file::load(file) else {
        return;
    };
    if spec.services.is_empty() && spec.routes.is_empty() && spec.clients.is_empty() {
        return;
    }
    let stored = match store.objects().await {
        Ok(stored) => stored,
        Err(e) => {
            debug!(error = %e, "cannot read the configuration store to compare it with the file");
            return;
        }
    };
    let file = file.display();
    match config::plan::plan(&stored, &spec, false) {
        Ok(plan) if plan.is_empty() => {}
        Ok(plan) => warn!(
            %file,
            changes = plan.steps.len(),
            "the settings file's services, routes or clients differ from the configuration store, which is in force: `busgate config diff {file}` shows how, `busgate config apply {file}` applies them"
        ),
        Err(e) => warn!(
            %file,
            error = %e,
            "the settings file's services, routes or clients differ from the configuration store, which is in force, and cannot be applied as they are: see `busgate config diff {file}`"
        ),
    }
}

/// nats-server's conventional monitoring port (`-m 8222`, `http_port: 8222`).
pub const NATS_MONITORING_PORT: u16 = 8222;

/// Sets JetStream up (retrying with the one backoff until NATS answers): the configuration
/// store (seeded from settings when empty) and its watcher, the processor of asynchronous
/// requests and the callback deliverer (when callbacks are configured); runs them until `drain`
/// is signalled, and lets go of it once they have stopped.
async fn supervise_jetstream(
    state: AppState,
    settings: Settings,
    deliverer: Option<Deliverer>,
    drain: drain::Watch,
) {
    let mut backoff = clock::retry_backoff().stream();
    let (jobs, store) = loop {
        let ready = async {
            let jobs = Jobs::setup(&state.nats, &settings.jobs, settings.callbacks.timeout).await?;
            let store = ConfigStore::open(&state.nats, settings.jobs.replicas).await?;
            let seeded = store.seed(&settings.config_spec()).await?;
            if seeded > 0 {
                info!(
                    objects = seeded,
                    "configuration store was empty: seeded from settings"
                );
            }
            if seeded == 0 {
                if let Some(file) = &settings.config_file {
                    compare_with_file(&store, file).await;
                }
            }
            Ok::<_, GatewayError>((jobs, store))
        };
        match ready.await {
            Ok((jobs, store)) => break (Arc::new(jobs), store),
            Err(e) => {
                warn!(error = %e, attempt = backoff.attempts() + 1, "jetstream is not ready");
                if !backoff.wait(&drain).await {
                    return;
                }
            }
        }
    };
    state.requests.ready(jobs.clone());
    let _ = state.store.set(store.clone());
    info!("asynchronous requests ready");
    let watcher = config::store::run_watcher(
        store,
        state.runner.config().clone(),
        state.store_status.clone(),
        drain.clone(),
    );
    // The processor, the deliverer, the watcher and the room probe obey the same drain as
    // this task, and nothing else stops them (a failed pull is retried); this task's own
    // watch is let go when all four have stopped.
    let processor = jobs::process::run_requests(
        jobs.clone(),
        state.runner.clone(),
        drain.clone(),
        settings.shutdown_grace,
    );
    let deliveries = async {
        if let Some(deliverer) = deliverer {
            jobs::callback::run_deliveries(jobs.clone(), deliverer, drain.clone()).await;
        }
    };
    let room = jobs.watch_room(drain.clone());
    tokio::join!(processor, deliveries, watcher, room);
    drop(drain);
}
