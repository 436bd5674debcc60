//! Serve a Busgate service directly on NATS.
//!
//! [`serve`] subscribes in the queue group `busgate.<service>` on `busgate.svc.<service>`,
//! answers the NATS service API for the instance (`$SRV.PING|INFO|STATS`, see [`crate::micro`]),
//! decodes each [`ServiceRequest`], drops work whose `Busgate-Deadline` has passed, runs the
//! handler with at most `concurrency` requests at once, cancels it at the deadline, and answers
//! with the reply envelope. An internal service that adopts NATS needs nothing else:
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

use async_nats::{Client, HeaderMap, Message};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::envelope::{code, Reply, ServiceRequest};
use crate::micro::{Discovery, Identity, Stats};
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
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// When the gateway stops waiting; the handler is cancelled then.
    pub deadline: Option<Instant>,
    /// The message's headers, kept as they came: read through the methods below.
    headers: Option<HeaderMap>,
}

impl RequestContext {
    /// The client the request came from (empty when unknown).
    pub fn client(&self) -> &str {
        self.header(header::name::client())
    }

    /// The W3C `traceparent` the gateway sent (empty when none), to pass on downstream.
    pub fn traceparent(&self) -> &str {
        self.header(header::name::traceparent())
    }

    fn header(&self, name: async_nats::HeaderName) -> &str {
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map_or("", |v| v.as_str())
    }
}

/// What every request of one served endpoint shares.
struct Endpoint {
    client: Client,
    name: String,
    stats: Arc<Stats>,
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
    let service_err = |e: &dyn std::fmt::Display| Error::Service(e.to_string());
    let identity = Identity {
        name: name.clone(),
        id: uuid::Uuid::new_v4().simple().to_string(),
        version: crate::VERSION.to_owned(),
        description: options.description.clone(),
        metadata: options.metadata.clone(),
        subject: subject::service(&name),
        queue_group: subject::queue_group(&name),
    };
    let mut requests = client
        .queue_subscribe(identity.subject.clone(), identity.queue_group.clone())
        .await
        .map_err(|e| service_err(&e))?;
    let stats = Arc::new(Stats::default());
    let discovery = Discovery::start(client, identity, stats.clone()).await?;
    // The server knows our interest once the flush returns: only then are we "serving".
    client.flush().await.map_err(|e| service_err(&e))?;
    info!(service = %name, subject = %subject::service(&name), concurrency = options.concurrency, "serving");

    let endpoint = Arc::new(Endpoint {
        client: client.clone(),
        name: name.clone(),
        stats,
    });
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
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
        let message = tokio::select! {
            () = &mut shutdown => break,
            next = requests.next() => match next {
                Some(m) => m,
                None => break,
            },
        };
        // Most requests are answered without waiting for anything: run the handler here once
        // and give it a task of its own only if it has to wait. A task per request cost more
        // than the handlers of the benchmark do.
        // A panicking handler loses its request (the gateway sees a timeout), never the
        // service: caught here as a task would have caught it.
        let mut work = Box::pin(handle(message, endpoint.clone(), handler.clone()));
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
    if let Err(e) = requests.unsubscribe().await {
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
    discovery.stop().await;
    Ok(())
}

async fn handle<H, Fut>(mut message: Message, endpoint: Arc<Endpoint>, handler: H)
where
    H: Fn(ServiceRequest, RequestContext) -> Fut,
    Fut: Future<Output = Reply>,
{
    let name = endpoint.name.as_str();
    let started = Instant::now();
    let Some(reply_to) = message.reply.take() else {
        debug!(service = name, "dropping a request without a reply subject");
        return;
    };
    let headers = message.headers.take();
    let deadline = match header::deadline_of(headers.as_ref()) {
        Some(at) => match header::remaining(at, header::now_unix_ms()) {
            Some(left) => Some(started + left),
            None => {
                debug!(service = name, "dropping work past its deadline");
                return;
            }
        },
        None => None,
    };
    let context = RequestContext { deadline, headers };
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
    let elapsed = started.elapsed();
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let payload = reply.encode(name, elapsed_ms);
    let error = match &reply {
        Reply::Error(e) => Some(format!("{}: {}", e.code, e.message)),
        _ => None,
    };
    endpoint.stats.record(elapsed, error);
    if let Err(e) = endpoint.client.publish(reply_to, payload).await {
        warn!(service = name, error = %e, "cannot publish reply");
    }
}
