//! Serve a Busgate service directly on NATS.
//!
//! [`serve`] subscribes in the queue group `busgate.<service>` on `busgate.svc.<service>`,
//! answers the NATS service API for the instance (`$SRV.PING|INFO|STATS`, see [`crate::micro`]),
//! decodes each [`ServiceRequest`], drops work whose `Busgate-Deadline` has passed, runs the
//! handler with at most `concurrency` requests at once, cancels it at the deadline, and answers
//! with the reply envelope. An internal service that adopts NATS needs nothing else:
//!
//! Requests, replies and the service API travel on the lean [`crate::wire`] connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), busgate_shared::Error> {
//! use busgate_shared::{envelope::Reply, sdk, wire};
//! // The `[nats]` settings from the same `BUSGATE_NATS__…` variables the gateway and the
//! // workers read (URL, TLS files, nkey or creds file, pings).
//! let settings = busgate_shared::nats::NatsSettings::from_env()?;
//! let nats = wire::Connection::connect_with(&settings, "billing")?;
//! let options = sdk::ServeOptions::new("billing");
//! // `main` keeps the signal and, on SIGTERM, calls `signal.drain().await` (within a grace):
//! // that returns once the service has answered what it had and unregistered.
//! let (_signal, drain) = busgate_shared::drain::channel();
//! sdk::serve(&nats, options, |req, _ctx| async move {
//!     Reply::ok(&serde_json::json!({"order_id": req.order_id, "paid": true}))
//!         .unwrap_or_else(|e| Reply::error("internal", e.to_string()))
//! }, drain).await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn};

use crate::envelope::{code, Reply, ServiceRequest};
use crate::micro::{Discovery, Identity, Stats};
use crate::wire::{self, Msg};
use crate::{header, subject, validate, Error};

/// Requests waiting for a permit (all `concurrency` taken); beyond it, requests are dropped and
/// logged (the gateway sees a timeout), as a NATS slow consumer's would be.
const QUEUED_REQUESTS: usize = 64 * 1024;

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
    /// The message's header block, kept as it came: read through the methods below.
    headers: Option<Bytes>,
    /// With traces on, this service's `process` span: what the work's own spans (and what it
    /// passes on downstream) are children of.
    process: Option<Box<crate::telemetry::Traceparent>>,
}

impl RequestContext {
    /// The client the request came from (empty when unknown).
    pub fn client(&self) -> &str {
        self.header(header::CLIENT)
    }

    /// The W3C `traceparent` to pass on downstream (empty when none): the one the gateway
    /// sent, or with traces on, this service's `process` span.
    pub fn traceparent(&self) -> &str {
        match &self.process {
            Some(own) => own.as_str(),
            None => self.header(header::TRACEPARENT),
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .as_deref()
            .and_then(|h| wire::header_value(h, name))
            .unwrap_or("")
    }
}

/// What every request of one served endpoint shares.
struct Endpoint<H> {
    wire: wire::Connection,
    name: String,
    stats: Arc<Stats>,
    handler: H,
    /// One per request being handled: at most `concurrency` at once.
    permits: Arc<Semaphore>,
    /// Requests that came while every permit was taken, for the serve loop to start.
    overflow: mpsc::Sender<Msg>,
    /// How many wait there: while any do, new requests queue behind them.
    queued: AtomicUsize,
}

/// Serves `service` until `drain` is signalled, then stops taking requests, answers those
/// already received, lets in-flight ones finish (bounded by `grace`) and unregisters; the
/// drain is released only then. The caller owns (and closes) the connection.
///
/// A request is started on the connection's read task as it arrives: its handler is polled
/// once there, and given a task of its own only if it has to wait. Most handlers answer without
/// waiting, and a hop to another task per request (a wake-up, often a context switch) cost more
/// than the handlers of the benchmark do.
pub async fn serve<H, Fut>(
    nats: &wire::Connection,
    options: ServeOptions,
    handler: H,
    drain: drain::Watch,
) -> Result<(), Error>
where
    H: Fn(ServiceRequest, RequestContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    // Held from the drain signal until the service has unregistered.
    let mut held: Option<drain::ReleaseShutdown> = None;
    let shutdown = drain.signaled();
    let name = options.service.clone();
    validate::name("service", &name)?;
    let identity = Identity {
        name: name.clone(),
        id: uuid::Uuid::new_v4().simple().to_string(),
        version: crate::VERSION.to_owned(),
        description: options.description.clone(),
        metadata: options.metadata.clone(),
        subject: subject::service(&name),
        queue_group: subject::queue_group(&name),
    };
    let concurrency = options.concurrency.max(1);
    let (overflow, mut requests) = mpsc::channel::<Msg>(QUEUED_REQUESTS);
    let stats = Arc::new(Stats::default());
    let endpoint = Arc::new(Endpoint {
        wire: nats.clone(),
        name: name.clone(),
        stats: stats.clone(),
        handler,
        permits: Arc::new(Semaphore::new(concurrency)),
        overflow,
        queued: AtomicUsize::new(0),
    });
    let arrived = endpoint.clone();
    let mut subscription = nats
        .subscribe(
            &identity.subject,
            Some(&identity.queue_group),
            move |message| arrived.arrive(message),
        )
        .map(Some)?;
    let discovery = Discovery::start(nats, identity, stats)?;
    tokio::pin!(shutdown);
    // The server knows our interest once a flush returns: only then are we "serving". A server
    // that is not up yet is waited for (the subscription is made on connecting).
    loop {
        let flushed = async {
            nats.connected(Duration::from_secs(1)).await
                && nats.flush(Duration::from_secs(5)).await.is_ok()
        };
        tokio::select! {
            release = &mut shutdown => {
                stop_taking(&mut subscription, &mut requests);
                discovery.stop().await;
                drop(release);
                return Ok(());
            }
            ok = flushed => if ok { break },
        }
    }
    info!(service = %name, subject = %subject::service(&name), concurrency, "serving");

    // The overflow: requests that found every permit taken, started as permits come back.
    let grace = tokio::time::sleep(options.grace);
    tokio::pin!(grace);
    let mut stopping = false;
    loop {
        let message = tokio::select! {
            release = &mut shutdown, if !stopping => {
                held = Some(release);
                stopping = begin_stop(&mut subscription, &mut requests, grace.as_mut(), options.grace);
                continue;
            }
            () = &mut grace, if stopping => break,
            next = requests.recv() => match next {
                Some(m) => m,
                None => break,
            },
        };
        let permit = loop {
            tokio::select! {
                release = &mut shutdown, if !stopping => {
                    held = Some(release);
                    stopping = begin_stop(&mut subscription, &mut requests, grace.as_mut(), options.grace);
                }
                () = &mut grace, if stopping => break None,
                permit = endpoint.permits.clone().acquire_owned() => break permit.ok(),
            }
        };
        let Some(permit) = permit else { break };
        endpoint.queued.fetch_sub(1, Ordering::AcqRel);
        endpoint.clone().start(message, permit);
    }
    if !stopping {
        begin_stop(
            &mut subscription,
            &mut requests,
            grace.as_mut(),
            options.grace,
        );
    }
    info!(service = %name, in_flight = endpoint.in_flight(concurrency), "stopping");
    // Every permit back: nothing is in flight.
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    tokio::select! {
        _ = endpoint.permits.acquire_many(all) => {}
        () = &mut grace => warn!(
            service = %name,
            abandoned = endpoint.in_flight(concurrency),
            "grace period over, abandoning requests"
        ),
    }
    discovery.stop().await;
    drop(held);
    Ok(())
}

/// Serves each of `services` (its options and handler) on `nats` until `drain` is signalled,
/// then stops them all as [`serve`] does and returns once every one has. The first error is
/// returned at once; the services still serving are dropped with it.
pub async fn serve_all<H, Fut>(
    nats: &wire::Connection,
    services: impl IntoIterator<Item = (ServeOptions, H)>,
    drain: drain::Watch,
) -> Result<(), Error>
where
    H: Fn(ServiceRequest, RequestContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let serving = services
        .into_iter()
        .map(|(options, handler)| serve(nats, options, handler, drain.clone()));
    futures::future::try_join_all(serving).await.map(drop)
}

impl<H, Fut> Endpoint<H>
where
    H: Fn(ServiceRequest, RequestContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    /// A request came in (on the connection's read task): start it, or queue it when every
    /// permit is taken or others already wait.
    fn arrive(self: &Arc<Self>, message: Msg) {
        if self.queued.load(Ordering::Acquire) == 0 {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                self.clone().start(message, permit);
                return;
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.overflow.try_send(message).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            warn!(service = %self.name, "request queue full or closed, request dropped");
        }
    }

    /// Runs the handler once here; gives it a task of its own only if it has to wait. The
    /// permit is held until the request is done. A panicking handler loses its request (the
    /// gateway sees a timeout), never the service.
    fn start(self: Arc<Self>, message: Msg, permit: OwnedSemaphorePermit) {
        let name = self.name.clone();
        let mut work = Box::pin(handle(message, self));
        let mut first_poll = Context::from_waker(Waker::noop());
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(&mut first_poll))) {
            Ok(Poll::Ready(())) => {}
            Ok(Poll::Pending) => {
                // Polled again by its task at once, which registers the task's real waker.
                tokio::spawn(async move {
                    if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                        error!(service = %name, "handler panicked; its request is dropped");
                    }
                    drop(permit);
                });
            }
            Err(_) => error!(service = %name, "handler panicked; its request is dropped"),
        }
    }

    fn in_flight(&self, concurrency: usize) -> usize {
        concurrency.saturating_sub(self.permits.available_permits())
    }
}

/// No more requests come in: the subscription ends, and the queue takes nothing new. Those
/// already received are still answered.
fn stop_taking(subscription: &mut Option<wire::Subscription>, requests: &mut mpsc::Receiver<Msg>) {
    if let Some(subscription) = subscription.take() {
        subscription.unsubscribe();
    }
    requests.close();
}

/// Stops taking requests ([`stop_taking`]) and starts the grace period, `within` from now.
/// Returns true: the serve loop is stopping from then on.
fn begin_stop(
    subscription: &mut Option<wire::Subscription>,
    requests: &mut mpsc::Receiver<Msg>,
    grace: std::pin::Pin<&mut tokio::time::Sleep>,
    within: Duration,
) -> bool {
    stop_taking(subscription, requests);
    grace.reset(tokio::time::Instant::now() + within);
    true
}

async fn handle<H, Fut>(message: Msg, endpoint: Arc<Endpoint<H>>)
where
    H: Fn(ServiceRequest, RequestContext) -> Fut,
    Fut: Future<Output = Reply>,
{
    let name = endpoint.name.as_str();
    let started = Instant::now();
    let Some(reply_to) = message.reply() else {
        debug!(service = name, "dropping a request without a reply subject");
        return;
    };
    let deadline = match header::deadline_of(message.header(header::DEADLINE)) {
        Some(at) => match header::remaining(at, header::now_unix_ms()) {
            Some(left) => Some(started + left),
            None => {
                debug!(
                    service = name,
                    trace_id = crate::telemetry::trace_id(
                        message.header(header::TRACEPARENT).unwrap_or("")
                    ),
                    "dropping work past its deadline"
                );
                return;
            }
        },
        None => None,
    };
    // With traces on, the consumer span; it ends when this returns (or is cancelled). Boxed:
    // this future stays as small as without traces.
    let mut span = crate::telemetry::tracer().map(|tracer| {
        let parent = message.header(header::TRACEPARENT).unwrap_or("");
        Box::new(crate::telemetry::span::process(
            tracer,
            parent,
            message.subject(),
            name,
        ))
    });
    let context = RequestContext {
        deadline,
        headers: message.headers.clone(),
        process: span
            .as_deref()
            .map(|s| Box::new(crate::telemetry::traceparent_of(s))),
    };
    let reply = match serde_json::from_slice::<ServiceRequest>(&message.payload) {
        Ok(req) => {
            let work = (endpoint.handler)(req, context);
            match deadline {
                Some(at) => match tokio::time::timeout_at(at.into(), work).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        debug!(
                            service = name,
                            trace_id = crate::telemetry::trace_id(
                                message.header(header::TRACEPARENT).unwrap_or("")
                            ),
                            "deadline reached while working, no reply"
                        );
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
    if let Some(span) = span.as_deref_mut() {
        crate::telemetry::span::outcome(span, &reply);
    }
    endpoint.stats.record(elapsed, error);
    if let Err(e) = endpoint.wire.publish(reply_to, None, &[], &payload) {
        warn!(service = name, error = %e, "cannot publish reply");
    }
}
