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
//! - [`gather`]: scatter-gather over NATS: the collector and its reply inbox, one gather with
//!   its deadlines, the merge.
//! - [`config`]: settings, the compiled snapshot, the KV store of services, routes and clients and the
//!   watcher that keeps every instance's configuration in force.
//! - [`metrics`], [`error`] (the one error type and its one HTTP mapping), [`clock`],
//!   [`limit`] (counted capacity: in flight, connections, streams): leaves.
//! - [`up`]: `busgate up`, the one-command local stack; this file: wiring only ([`run`]).
//!
//! Arrows point down: a module uses only modules below it, never one that uses it
//! (`tests/tools/modgraph.py` checks this on every test run).
//!
//! ```text
//!   main ──▶ up ──▶ lib (run: wiring)
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
//!                         config
//!                           │
//!           metrics · error · clock · limit
//! ```

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod edge;
pub mod error;
pub mod gather;
pub mod jobs;
pub mod limit;
pub mod metrics;
pub mod route;
pub mod up;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::error::{ErrorKind, GatewayError};

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
/// lets in-flight requests finish within `shutdown_grace`, stops the collector and drains NATS.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let order_id = settings.validate()?;
    busgate_shared::runtime::install_crypto_provider();
    // HS256 secrets are read now; key sets are fetched by the first token of each issuer.
    let issuers = auth::jwt::Issuers::new(&settings.auth.issuers)?;
    let snapshot = Snapshot::compile(settings.config_spec())?;
    let instance = if settings.nats.instance.is_empty() {
        new_instance_id()
    } else {
        settings.nats.instance.clone()
    };
    let nats =
        busgate_shared::nats::connect(&settings.nats, &format!("busgate gateway {instance}"))
            .await?;
    // The request path (requests out, replies in) has a lean connection of its own; JetStream,
    // KV and the service API use the async-nats client above.
    let wire = busgate_shared::wire::Connection::connect_with(
        &settings.nats,
        &format!("busgate gateway {instance} requests"),
    )?;
    let metrics = Arc::new(Metrics::new());
    let (collector, inbox) = Collector::start(&wire, &instance, metrics.clone())
        .context("cannot subscribe to the reply inbox")?;
    let signer = if settings.callbacks.secret.is_empty() {
        None
    } else {
        Some(Signer::new(&settings.callbacks.secret)?)
    };
    let guard = Guard::new(Allowlist::parse(&settings.callbacks.allow)?);
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
        auth: auth::Authenticator::new(settings.auth.mode).with_issuers(issuers),
    });
    if settings.auth.mode == config::settings::AuthMode::None {
        warn!(
            "auth.mode is \"none\": requests without credentials are served as an anonymous client"
        );
    }
    let (stop_jobs, stop_jobs_rx) = tokio::sync::watch::channel(false);
    let jobs_task = tokio::spawn(supervise_jetstream(
        state.clone(),
        settings.clone(),
        stop_jobs_rx,
    ));
    let addr = listener.local_addr()?;
    let nats_url = busgate_shared::nats::redact_url(&settings.nats.url);
    info!(%addr, %instance, nats = %nats_url, "listening");
    // One token for every instance, from settings or a secret file (validated above); never
    // generated here, never logged. Without one the admin API stays off rather than open.
    let metrics_on_admin = settings.metrics.listener == MetricsListener::Admin;
    let (admin_drain, admin_watch) = busgate_shared::drain::channel();
    let limits = edge::serve::Limits::from(&settings.http);
    let admin = match settings.admin.resolve_token()? {
        Some(token) => {
            let admin_addr = admin_listener.local_addr()?;
            info!(addr = %admin_addr, "admin listening");
            let limits = limits.clone();
            let connections = Arc::new(limit::Slots::new(settings.http.max_connections));
            let service =
                edge::serve::tower_service(admin::router(state.clone(), &token, metrics_on_admin));
            Some(tokio::spawn(async move {
                edge::serve::serve(admin_listener, service, &limits, connections, admin_watch)
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
            edge::serve::serve(listener, public, &limits, connections, public_watch).await;
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
    tokio::spawn(admin_drain.drain());
    if let Some(admin) = admin {
        if tokio::time::timeout(Duration::from_secs(2), admin)
            .await
            .is_err()
        {
            warn!("admin listener did not close in time");
        }
    }
    let _ = stop_jobs.send(true);
    if tokio::time::timeout(settings.shutdown_grace, jobs_task)
        .await
        .is_err()
    {
        warn!("asynchronous processing did not stop within the grace period");
    }
    inbox.stop();
    wire.close(Duration::from_secs(2)).await;
    nats.drain().await.context("draining nats")?;
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
    edge.body_timeout = settings.http.body_timeout;
    edge.in_flight = limit::Slots::new(settings.http.max_in_flight);
    edge.connections = Arc::new(limit::Slots::new(settings.http.max_connections));
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

/// nats-server's conventional monitoring port (`-m 8222`, `http_port: 8222`).
pub const NATS_MONITORING_PORT: u16 = 8222;

/// Sets JetStream up (retrying until NATS answers): the configuration store (seeded from
/// settings when empty) and its watcher, the processor of asynchronous requests and the
/// callback deliverer; runs them until `stop` turns true.
async fn supervise_jetstream(
    state: AppState,
    settings: Settings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
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
            Ok::<_, GatewayError>((jobs, store))
        };
        match ready.await {
            Ok((jobs, store)) => break (Arc::new(jobs), store),
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "jetstream is not ready");
                if !clock::back_off(&mut delay, &mut stop).await {
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
        stop.clone(),
    );
    // The jobs tasks obey a drain, signalled here when `stop` turns true.
    let (drain_jobs, jobs_drain) = busgate_shared::drain::channel();
    let processor = jobs::process::run_requests(
        jobs.clone(),
        state.runner.clone(),
        jobs_drain.clone(),
        settings.shutdown_grace,
    );
    let deliveries = async {
        let Some(signer) = state.requests.signer().cloned() else {
            return Ok(());
        };
        let retry = settings.callbacks.retry.iter().map(|d| **d).collect();
        let deliverer = Deliverer::new(
            signer,
            state.requests.guard().clone(),
            retry,
            settings.callbacks.timeout,
            settings.callbacks.concurrency,
        )
        .map_err(ErrorKind::CallbackClient)?;
        jobs::callback::run_deliveries(jobs.clone(), deliverer, jobs_drain).await
    };
    let drained = async move {
        let _ = stop.changed().await;
        drain_jobs.drain().await;
    };
    let (processed, delivered, (), ()) = tokio::join!(processor, deliveries, watcher, drained);
    for result in [processed, delivered] {
        if let Err(e) = result {
            warn!(error = %e, "asynchronous processing stopped");
        }
    }
}
