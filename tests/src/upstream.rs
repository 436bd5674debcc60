//! A test upstream that fails or stalls on command: an HTTP server in the test process that
//! answers `GET /{service}/order/{order_id}` as each service is told to (answer, fail always,
//! fail every second call, stall a share of the calls of one adapter instance), and counts
//! the calls it gets. Adapters send `X-Worker` (from their `WORKER_NAME`) when the service's
//! upstream asks for it ([`Upstream::spec`]), so a stall can be aimed at one instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{json, Value};

use crate::http::serve;

/// How a service of the upstream behaves.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Behaviour {
    /// Answers at once.
    #[default]
    Answer,
    /// Answers 500, always.
    Fail,
    /// Answers 422 (refuses the request, not failing), always.
    Reject,
    /// Fails every second call (the 2nd, 4th, …), answers the others.
    FailEverySecond,
    /// Answers after `delay`.
    Slow(Duration),
    /// Calls from the worker named `worker`: every `every`-th stalls `delay`; all others at once.
    StallWorker {
        /// The `X-Worker` value.
        worker: &'static str,
        /// One call in this many stalls.
        every: u64,
        /// How long.
        delay: Duration,
    },
}

#[derive(Default)]
struct Service {
    behaviour: Behaviour,
    calls: AtomicU64,
    by_worker: Mutex<HashMap<String, u64>>,
}

#[derive(Default)]
struct Inner {
    services: Mutex<HashMap<String, Arc<Service>>>,
}

/// The upstream: its base URL and the controls of its services.
#[derive(Clone)]
pub struct Upstream {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    inner: Arc<Inner>,
}

impl Upstream {
    /// Starts the server on a free port.
    pub async fn start() -> Upstream {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route("/{service}/order/{id}", get(answer))
            .with_state(inner.clone());
        Upstream {
            base: serve(app).await,
            inner,
        }
    }

    fn service(&self, name: &str) -> Arc<Service> {
        let mut services = self.inner.services.lock().expect("services");
        services.entry(name.to_owned()).or_default().clone()
    }

    /// Sets how `service` behaves from now on (its counts stay).
    pub fn set(&self, service: &str, behaviour: Behaviour) {
        let mut services = self.inner.services.lock().expect("services");
        let old = services.entry(service.to_owned()).or_default().clone();
        let calls = old.calls.load(Ordering::SeqCst);
        let by_worker = old.by_worker.lock().expect("workers").clone();
        services.insert(
            service.to_owned(),
            Arc::new(Service {
                behaviour,
                calls: AtomicU64::new(calls),
                by_worker: Mutex::new(by_worker),
            }),
        );
    }

    /// Calls `service` got so far.
    pub fn calls(&self, service: &str) -> u64 {
        self.service(service).calls.load(Ordering::SeqCst)
    }

    /// Calls `service` got so far, by `X-Worker`.
    pub fn calls_by_worker(&self, service: &str) -> HashMap<String, u64> {
        self.service(service)
            .by_worker
            .lock()
            .expect("workers")
            .clone()
    }

    /// The `upstream` object of a service served from here, sending `X-Worker`.
    pub fn spec(&self, service: &str) -> Value {
        json!({
            "url": format!("{}/{service}/order/{{order_id}}", self.base),
            "headers": {"X-Worker": {"env": "WORKER_NAME"}}
        })
    }
}

async fn answer(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path((service, id)): Path<(String, String)>,
) -> axum::response::Response {
    let svc = {
        let mut services = inner.services.lock().expect("services");
        services.entry(service.clone()).or_default().clone()
    };
    let n = svc.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let worker = headers
        .get("x-worker")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let mine = {
        let mut by_worker = svc.by_worker.lock().expect("workers");
        let count = by_worker.entry(worker.clone()).or_default();
        *count += 1;
        *count
    };
    let ok = || axum::Json(json!({"service": service, "id": id, "call": n})).into_response();
    match svc.behaviour {
        Behaviour::Answer => ok(),
        Behaviour::Fail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Behaviour::Reject => StatusCode::UNPROCESSABLE_ENTITY.into_response(),
        Behaviour::FailEverySecond if n % 2 == 0 => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Behaviour::FailEverySecond => ok(),
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            ok()
        }
        Behaviour::StallWorker {
            worker: stalled,
            every,
            delay,
        } => {
            if worker == stalled && mine % every == 0 {
                tokio::time::sleep(delay).await;
            }
            ok()
        }
    }
}
