//! Serve a Busgate service directly on NATS.
//!
//! [`serve`] registers the service with the NATS service API (so `$SRV.PING|INFO|STATS` list
//! it), subscribes in the queue group `busgate.<service>` on `busgate.svc.<service>`, decodes
//! each [`ServiceRequest`], drops work whose `Busgate-Deadline` has passed, runs the handler
//! with at most `concurrency` requests at once, cancels it at the deadline, and answers with
//! the reply envelope. An internal service that adopts NATS needs nothing else:
//!
//! ```no_run
//! # async fn demo() -> Result<(), busgate_shared::Error> {
//! use busgate_shared::{envelope::Reply, sdk};
//! let client = busgate_shared::nats::connect("nats://127.0.0.1:4222", "billing").await?;
//! let options = sdk::ServeOptions::new("billing");
//! sdk::serve(&client, options, |req, _ctx| async move {
//!     Reply::ok(&serde_json::json!({"order_id": req.order_id, "paid": true}))
//!         .unwrap_or_else(|e| Reply::error("internal", e.to_string()))
//! }, std::future::pending::<()>()).await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use async_nats::Client;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::envelope::{code, Reply, ServiceRequest};
use crate::{header, subject, validate, Error};

/// How a service is served.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The service name (`^[a-z][a-z0-9_-]{0,31}$`).
    pub service: String,
    /// Requests handled at once by this instance.
    pub concurrency: usize,
    /// Shown by `$SRV.INFO`.
    pub description: String,
    /// Shown by `$SRV.INFO` and the admin API (e.g. `kind`, `upstream`).
    pub metadata: HashMap<String, String>,
    /// On shutdown, how long in-flight requests may take to finish.
    pub grace: Duration,
}

impl ServeOptions {
    /// Defaults: 1024 requests at once, 10 s of grace.
    pub fn new(service: impl Into<String>) -> Self {
        ServeOptions {
            service: service.into(),
            concurrency: 1024,
            description: String::new(),
            metadata: HashMap::new(),
            grace: Duration::from_secs(10),
        }
    }
}

/// What a handler knows about the request beyond its payload.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// When the gateway stops waiting; the handler is cancelled then.
    pub deadline: Option<Instant>,
    /// The client the request came from (empty when unknown).
    pub client: String,
    /// The W3C `traceparent` the gateway sent (empty when none), to pass on downstream.
    pub traceparent: String,
}

/// Serves `service` until `shutdown` resolves, then stops taking requests, lets in-flight
/// ones finish (bounded by `grace`) and unregisters. The caller owns (and drains) the client.
pub async fn serve<H, Fut>(
    client: &Client,
    options: ServeOptions,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    H: Fn(ServiceRequest, RequestContext) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let name = options.service.clone();
    validate::name("service", &name)?;
    let service_err = |e: async_nats::Error| Error::Service(e.to_string());
    let service = client
        .service_builder()
        .description(options.description.clone())
        .metadata(options.metadata.clone())
        .queue_group(subject::queue_group(&name))
        .start(name.clone(), crate::VERSION)
        .await
        .map_err(service_err)?;
    let mut endpoint = service
        .endpoint_builder()
        .name(name.clone())
        .queue_group(subject::queue_group(&name))
        .add(subject::service(&name))
        .await
        .map_err(service_err)?;
    // The server knows our interest once the flush returns: only then are we "serving".
    client
        .flush()
        .await
        .map_err(|e| Error::Service(e.to_string()))?;
    info!(service = %name, subject = %subject::service(&name), concurrency = options.concurrency, "serving");

    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let shared_name: Arc<str> = Arc::from(name.as_str());
    tokio::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            },
        };
        let request = tokio::select! {
            () = &mut shutdown => break,
            next = endpoint.next() => match next {
                Some(r) => r,
                None => break,
            },
        };
        // Most requests are answered without waiting for anything: run the handler here once
        // and give it a task of its own only if it has to wait. A task per request cost more
        // than the handlers of the benchmark do.
        // A panicking handler loses its request (the gateway sees a timeout), never the
        // service: caught here as a task would have caught it.
        let mut work = Box::pin(handle(request, shared_name.clone(), handler.clone()));
        let mut first_poll = Context::from_waker(Waker::noop());
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(&mut first_poll))) {
            Ok(Poll::Ready(())) => {}
            Ok(Poll::Pending) => {
                // Polled again by its task at once, which registers the task's real waker.
                tasks.spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            Err(_) => error!(service = %name, "handler panicked; its request is dropped"),
        }
        while let Some(done) = tasks.try_join_next() {
            if done.is_err_and(|e| e.is_panic()) {
                error!(service = %name, "handler panicked; its request is dropped");
            }
        }
    }
    info!(service = %name, in_flight = tasks.len(), "stopping");
    if let Err(e) = endpoint.stop().await {
        warn!(service = %name, error = %e, "unsubscribing endpoint");
    }
    if tokio::time::timeout(options.grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!(service = %name, abandoned = tasks.len(), "grace period over, abandoning requests");
        tasks.abort_all();
    }
    if let Err(e) = service.stop().await {
        warn!(service = %name, error = %e, "stopping service registration");
    }
    Ok(())
}

async fn handle<H, Fut>(request: async_nats::service::Request, name: Arc<str>, handler: H)
where
    H: Fn(ServiceRequest, RequestContext) -> Fut,
    Fut: Future<Output = Reply>,
{
    let name: &str = &name;
    let started = Instant::now();
    let message = &request.message;
    let headers = message.headers.as_ref();
    let deadline = match header::deadline_of(headers) {
        Some(at) => match header::remaining(at, header::now_unix_ms()) {
            Some(left) => Some(started + left),
            None => {
                debug!(service = name, "dropping work past its deadline");
                return;
            }
        },
        None => None,
    };
    let text_of = |key| {
        headers
            .and_then(|h| h.get(key))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let context = RequestContext {
        deadline,
        client: text_of(header::name::client()),
        traceparent: text_of(header::name::traceparent()),
    };
    let reply = match serde_json::from_slice::<ServiceRequest>(&message.payload) {
        Ok(req) => {
            let work = handler(req, context);
            match deadline {
                Some(at) => match tokio::time::timeout_at(at.into(), work).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        debug!(service = name, "deadline reached while working, no reply");
                        return;
                    }
                },
                None => work.await,
            }
        }
        Err(e) => Reply::error(code::BAD_REQUEST, format!("cannot decode request: {e}")),
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Err(e) = request.respond(Ok(reply.encode(name, elapsed_ms))).await {
        warn!(service = name, error = %e, "cannot publish reply");
    }
}
