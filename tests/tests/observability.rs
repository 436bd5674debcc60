//! End-to-end: one trace from the client through NATS and the adapters to the upstream. A real
//! nats-server, the real `busgate gateway` and `busgate-worker adapter` processes exporting
//! over OTLP/HTTP to a receiver in this test process (decoding with the official protobuf
//! definitions), and a real HTTP server as the upstream that records the `traceparent` it got.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Json;
use busgate_tests::fixture::Settings;
use busgate_tests::gateway::Gateway;
use busgate_tests::http::{http, serve};
use busgate_tests::nats::NatsServer;
use busgate_tests::otlp::{kind, ReceivedSpan, Receiver};
use busgate_tests::wait::free_port;
use busgate_tests::workers::Worker;
use serde_json::{json, Value};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An upstream answering `/order/{id}` with JSON, keeping every `traceparent` it received.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/order/{id}",
            get(
                |State(seen): State<Arc<Mutex<Vec<String>>>>,
                 Path(id): Path<String>,
                 headers: HeaderMap| async move {
                    let traceparent = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    seen.lock().expect("seen").push(traceparent);
                    Json(json!({"id": id}))
                },
            ),
        )
        .with_state(seen.clone());
    (serve(app).await, seen)
}

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pick: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "one {what} expected in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_request_from_the_client_to_the_upstream() {
    let receiver = Receiver::start().await;
    let (upstream, seen) = recording_upstream().await;
    let nats = NatsServer::start();
    let _adapters = Worker::adapters_with(
        &nats.url,
        &[("service1", &upstream), ("service2", &upstream)],
        |cmd| {
            cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &receiver.url);
        },
    );
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url)
            .env("BUSGATE_LOG__ACCESS", "true");
    })
    .await;

    let client_traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let response = http()
        .get(gateway.url("/api/orders/A1"))
        .header("traceparent", &client_traceparent)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["busgate-request-id"]
        .to_str()
        .expect("id")
        .to_owned();

    // Seven spans: the server span, a send span per source, a process span per source and
    // an upstream client span per source.
    let spans = receiver
        .trace(CLIENT_TRACE, Duration::from_secs(30), |spans| {
            spans.len() >= 7
        })
        .await;
    assert_eq!(spans.len(), 7, "{spans:#?}");

    let server = one(&spans, "server span", |s| s.kind == kind::SERVER);
    assert_eq!(server.name, "GET /api/orders/{order_id}");
    assert_eq!(server.service, "busgate-gateway");
    assert_eq!(server.parent_span_id, CLIENT_SPAN);
    assert_eq!(server.attr("http.request.method"), "GET");
    assert_eq!(server.attr("http.route"), "/api/orders/{order_id}");
    assert_eq!(server.attr("http.response.status_code"), "200");
    assert_eq!(server.attr("busgate.request_id"), request_id);
    assert_eq!(server.attr("client.address"), "127.0.0.1");

    let mut clients_seen = HashSet::new();
    for service in ["service1", "service2"] {
        let subject = format!("busgate.svc.{service}");
        let send = one(&spans, "send span", |s| {
            s.kind == kind::PRODUCER && s.attr("messaging.destination.name") == subject
        });
        assert_eq!(send.name, format!("send {subject}"));
        assert_eq!(send.parent_span_id, server.span_id);
        assert_eq!(send.attr("messaging.system"), "nats");
        assert_eq!(send.attr("messaging.operation.type"), "send");
        assert_eq!(send.attr("busgate.outcome"), "ok");

        let process = one(&spans, "process span", |s| {
            s.kind == kind::CONSUMER && s.attr("messaging.destination.name") == subject
        });
        assert_eq!(process.name, format!("process {subject}"));
        assert_eq!(process.service, "busgate-worker");
        assert_eq!(
            process.parent_span_id, send.span_id,
            "process is a child of its send"
        );
        assert_eq!(process.attr("messaging.system"), "nats");
        assert_eq!(process.attr("messaging.operation.type"), "process");

        let client = one(&spans, "client span", |s| {
            s.kind == kind::CLIENT && s.parent_span_id == process.span_id
        });
        assert_eq!(client.name, "GET");
        assert_eq!(client.attr("http.request.method"), "GET");
        assert_eq!(client.attr("server.address"), "127.0.0.1");
        assert_eq!(client.attr("http.response.status_code"), "200");
        assert_eq!(client.attr("url.full"), format!("{upstream}/order/A1"));
        clients_seen.insert(client.span_id.clone());
    }

    // The upstream got this trace, each call with its own client span as the parent.
    let got = seen.lock().expect("seen").clone();
    assert_eq!(got.len(), 2, "{got:?}");
    for traceparent in &got {
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[1], CLIENT_TRACE);
        assert!(
            clients_seen.contains(parts[2]),
            "{traceparent} names no client span"
        );
        assert_eq!(parts[3], "01");
    }

    // The access line carries the trace.
    let access = gateway.proc.wait_for(Duration::from_secs(10), |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["message"] == "access" && v["request_id"] == request_id.as_str()).then_some(v)
    });
    assert_eq!(access["trace_id"], CLIENT_TRACE);
    assert_eq!(access["method"], "GET");
    assert_eq!(access["route"], "order");
    assert_eq!(access["status"], 200);
    assert_eq!(access["client_address"], "127.0.0.1");
    assert!(access["elapsed_ms"].is_u64(), "{access}");

    // A problem document carries the trace id.
    let problem: Value = http()
        .get(gateway.url("/api/nowhere"))
        .header("traceparent", &client_traceparent)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("problem");
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["trace_id"], CLIENT_TRACE);
}

/// A client that says "not sampled" is not traced (parent-based sampling), and its
/// `traceparent` still travels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_client_trace_is_not_exported() {
    let receiver = Receiver::start().await;
    let (upstream, seen) = recording_upstream().await;
    let nats = NatsServer::start();
    let _adapters = Worker::adapters_with(
        &nats.url,
        &[("service1", &upstream), ("service2", &upstream)],
        |cmd| {
            cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &receiver.url);
        },
    );
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url);
    })
    .await;
    let unsampled = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    for traceparent in [unsampled, sampled.as_str()] {
        let response = http()
            .get(gateway.url("/api/orders/A1"))
            .header("traceparent", traceparent)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }
    // Once the sampled trace is in, the unsampled one is known to be absent (same batches).
    receiver
        .trace(CLIENT_TRACE, Duration::from_secs(30), |spans| {
            spans.len() >= 7
        })
        .await;
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s.trace_id != "5bf92f3577b34da6a3ce929d0e0e4736"),
        "an unsampled trace was exported"
    );
    let got = seen.lock().expect("seen").clone();
    assert!(
        got[0].starts_with("00-5bf92f3577b34da6a3ce929d0e0e4736-"),
        "{got:?}"
    );
    assert!(got[0].ends_with("-00"), "{got:?}");
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A collector that does not answer changes nothing for clients: every request is answered,
/// memory stays bounded (the queue drops spans), and the log says so once, not per export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_changes_nothing_for_clients() {
    let nowhere = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let (upstream, _seen) = recording_upstream().await;
    let nats = NatsServer::start();
    let adapters = Worker::adapters_with(
        &nats.url,
        &[("service1", &upstream), ("service2", &upstream)],
        |cmd| {
            cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &nowhere);
        },
    );
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &nowhere)
            .env("BUSGATE_TELEMETRY__MAX_QUEUE", "256");
    })
    .await;
    let warnings = |lines: Vec<String>| {
        lines
            .iter()
            .filter(|l| l.contains("cannot export traces"))
            .count()
    };
    let ask = |n: usize| {
        let url = gateway.url("/api/orders/A1");
        async move {
            for _ in 0..n {
                let status = http()
                    .get(&url)
                    .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
                    .send()
                    .await
                    .expect("request")
                    .status();
                assert_eq!(status, 200);
            }
        }
    };
    ask(200).await;
    let pid = gateway.proc.pid().as_raw();
    let before = rss_kib(pid);
    // Requests go on through several failed exports (one every 500 ms at most).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until || warnings(gateway.proc.lines()) == 0 {
        ask(50).await;
        assert!(
            Instant::now() < until + Duration::from_secs(30),
            "no export warning"
        );
    }
    ask(1000).await;
    let after = rss_kib(pid);
    assert_eq!(warnings(gateway.proc.lines()), 1, "one warning, no flood");
    assert!(
        after < before + 32 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    // The workers too said it once at most.
    assert!(warnings(adapters.lines()) <= 1);
}

/// Every `busgate_*` metric the Grafana dashboard in `deploy/` queries is one a running
/// gateway exports (checked by `tests/tools/dashboard-metrics.py` on its `/metrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_exported_metrics() {
    let nats = NatsServer::start();
    let _services = Worker::natives(&nats, &["service1", "service2"]);
    // A cache and a breaker on service1, so that their families have samples.
    let cache = serde_json::from_value(json!({"ttl": "60s"})).expect("cache spec");
    let settings = Settings::builtin()
        .cache("service1", cache)
        .breaker("service1", Default::default());
    let gateway = Gateway::start(&nats, &settings).await;
    let status = http()
        .get(gateway.url("/api/orders/A1"))
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, 200);
    // Two at once while service2 stalls (3 s, optional): the second follows the first's
    // request to service2 (coalesced).
    let ask = || http().get(gateway.url("/api/orders/slow2-A1")).send();
    let (first, second) = tokio::join!(ask(), ask());
    assert_eq!(first.expect("request").status(), 200);
    assert_eq!(second.expect("request").status(), 200);
    let metrics = http()
        .get(gateway.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for gauge in [
        "busgate_nats_connected{connection=\"requests\"} 1",
        "busgate_async_backlog{stream=\"requests\"}",
        "busgate_source_duration_seconds_count{service=\"service1\"}",
    ] {
        assert!(metrics.contains(gauge), "{gauge} missing from {metrics}");
    }
    let file = busgate_tests::fixture::file(&metrics, ".txt");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/tests/tools/dashboard-metrics.py"))
        .arg(file.path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An asynchronous request: its processing is a trace of its own (a consumer span linked to
/// the submit's server span) whose gathers are its children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_processing_links_to_the_submit() {
    let receiver = Receiver::start().await;
    let nats = NatsServer::start();
    let _services = Worker::natives(&nats, &["service1", "service2"]);
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url);
    })
    .await;
    let (_, body) = busgate_tests::jobs::submit_request(
        http()
            .get(gateway.url("/api/orders/A1"))
            .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")),
    )
    .await;
    let request_id = busgate_tests::jobs::request_id(&body);
    busgate_tests::jobs::until_final(&gateway, &request_id, Duration::from_secs(30)).await;

    let submit = receiver
        .trace(CLIENT_TRACE, Duration::from_secs(30), |spans| {
            spans.iter().any(|s| s.kind == kind::SERVER)
        })
        .await;
    let submit = one(&submit, "submit span", |s| s.kind == kind::SERVER);
    assert_eq!(submit.attr("http.response.status_code"), "202");
    let processing = {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let found = receiver
                .spans()
                .into_iter()
                .find(|s| s.kind == kind::CONSUMER && s.name == "process busgate.jobs.request");
            if let Some(found) = found {
                break found;
            }
            assert!(Instant::now() < until, "no processing span");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(processing.attr("busgate.request_id"), request_id);
    assert_eq!(processing.parent_span_id, "", "processing starts a trace");
    assert_eq!(
        processing.links,
        vec![(CLIENT_TRACE.to_owned(), submit.span_id.clone())],
        "linked to the submit"
    );
    let sends = receiver
        .trace(&processing.trace_id, Duration::from_secs(30), |spans| {
            spans.iter().filter(|s| s.kind == kind::PRODUCER).count() >= 2
        })
        .await;
    for send in sends.iter().filter(|s| s.kind == kind::PRODUCER) {
        assert_eq!(send.parent_span_id, processing.span_id);
    }
}

/// A source the cache answers still has its `send` span, with the outcome `cached` and no
/// `process` span below it (nothing was published); the other source is traced as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_source_has_a_send_span_with_the_outcome_cached() {
    let receiver = Receiver::start().await;
    let (upstream, _seen) = recording_upstream().await;
    let nats = NatsServer::start();
    let _adapters = Worker::adapters_with(
        &nats.url,
        &[("service1", &upstream), ("service2", &upstream)],
        |cmd| {
            cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &receiver.url);
        },
    );
    let cache = serde_json::from_value(json!({"ttl": "60s"})).expect("cache spec");
    let settings = Settings::builtin().cache("service1", cache);
    let gateway = Gateway::start_with(&nats, &settings, |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url);
    })
    .await;
    let warm = "00-6bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cached = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    for traceparent in [warm, cached.as_str()] {
        let response = http()
            .get(gateway.url("/api/orders/C1"))
            .header("traceparent", traceparent)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }
    // The server span, two send spans, and service2's process and client spans.
    let spans = receiver
        .trace(CLIENT_TRACE, Duration::from_secs(30), |spans| {
            spans.len() >= 5
        })
        .await;
    let server = one(&spans, "server span", |s| s.kind == kind::SERVER);
    let send = |service: &str| {
        let subject = format!("busgate.svc.{service}");
        one(&spans, "send span", move |s| {
            s.kind == kind::PRODUCER && s.attr("messaging.destination.name") == subject
        })
    };
    let hit = send("service1");
    assert_eq!(hit.parent_span_id, server.span_id);
    assert_eq!(hit.attr("busgate.outcome"), "cached");
    assert_eq!(send("service2").attr("busgate.outcome"), "ok");
    assert!(
        spans.iter().all(|s| s.parent_span_id != hit.span_id),
        "nothing below a cached source: {spans:#?}"
    );
}

/// A composed route: the later stage's request has its own `send` span too, a child of the
/// server span, and the service's `process` span is its child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_of_a_composed_route_has_its_send_span() {
    use busgate_tests::fixture::Route;
    let receiver = Receiver::start().await;
    let (upstream, _seen) = recording_upstream().await;
    let nats = NatsServer::start();
    let _adapters = Worker::adapters_with(
        &nats.url,
        &[("service1", &upstream), ("service2", &upstream)],
        |cmd| {
            cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &receiver.url);
        },
    );
    let chain = Route::get("/api/chain/{order_id}")
        .target("service1")
        .target_after("service2", &["service1"]);
    let settings = Settings::builtin().route("chain", chain);
    let gateway = Gateway::start_with(&nats, &settings, |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url);
    })
    .await;
    let response = http()
        .get(gateway.url("/api/chain/A1"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let spans = receiver
        .trace(CLIENT_TRACE, Duration::from_secs(30), |spans| {
            spans.len() >= 7
        })
        .await;
    assert_eq!(spans.len(), 7, "{spans:#?}");
    let server = one(&spans, "server span", |s| s.kind == kind::SERVER);
    for service in ["service1", "service2"] {
        let subject = format!("busgate.svc.{service}");
        let send = one(&spans, "send span", |s| {
            s.kind == kind::PRODUCER && s.attr("messaging.destination.name") == subject
        });
        assert_eq!(send.parent_span_id, server.span_id);
        assert_eq!(send.attr("busgate.outcome"), "ok");
        one(&spans, "process span", |s| {
            s.kind == kind::CONSUMER && s.parent_span_id == send.span_id
        });
    }
}

/// `busgate-worker adapters` (following the configuration), exporting its spans to `receiver`.
fn traced_adapters(nats: &NatsServer, receiver: &Receiver) -> busgate_tests::support::Proc {
    use busgate_tests::support::{bin, Proc, READY_WITHIN};
    let mut cmd = std::process::Command::new(bin("busgate-worker"));
    cmd.arg("adapters")
        .env("BUSGATE_NATS__URL", &nats.url)
        .env("BUSGATE_LOG__FORMAT", "json")
        .env("WORKER_NAME", "a")
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &receiver.url);
    let proc = Proc::spawn("adapters-traced", cmd);
    proc.wait_for(READY_WITHIN, |l| l.contains("nats connected").then_some(()));
    proc
}

/// Creates the service `name` (`spec`) and a route `GET /api/<name>/{order_id}` asking it
/// alone (optional), through the admin API.
async fn service_and_route(gateway: &Gateway, name: &str, spec: Value) {
    let route = json!({
        "bindings": [{"method": "GET", "path": format!("/api/{name}/{{order_id}}")}],
        "deadline": "2s",
        "targets": [{"service": name, "required": false}],
    });
    for (kind, spec) in [("services", spec), ("routes", route)] {
        let body = json!({"name": name, "spec": spec});
        let answer = gateway
            .admin_send("POST", &format!("/admin/v1/{kind}"), None, Some(&body))
            .await;
        assert_eq!(answer.status, 201, "{kind}/{name}: {}", answer.body);
    }
}

/// `GET url` in a trace of its own (`trace`, sampled); the status of source `service`.
async fn traced_get(url: &str, trace: &str, service: &str) -> String {
    let response = http()
        .get(url)
        .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .expect("request");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["sources"][service]["status"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// A fresh trace id for request `n` of a test.
fn trace_of(n: usize) -> String {
    format!("{:032x}", (0xb0_5eu128 << 64) | (n as u128 + 1))
}

/// The send span of `service` in `spans`.
fn send_of<'a>(spans: &'a [ReceivedSpan], service: &str) -> &'a ReceivedSpan {
    let subject = format!("busgate.svc.{service}");
    one(spans, "send span", |s| {
        s.kind == kind::PRODUCER && s.attr("messaging.destination.name") == subject
    })
}

/// The resilience of a source shows on its send span: a breaker that is open is the outcome
/// `circuit_open` (an error, nothing published below it); a retry and a hedge are events
/// (`busgate.retry`, `busgate.hedge`) on the span, whose second request is its child too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_retries_and_hedges_show_on_the_send_spans() {
    use busgate_tests::upstream::{Behaviour, Upstream};
    let receiver = Receiver::start().await;
    let upstream = Upstream::start().await;
    let nats = NatsServer::start();
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url);
    })
    .await;
    let _adapters = traced_adapters(&nats, &receiver);
    let breaker = json!({"failure_ratio": 0.5, "min_requests": 3, "window": "30s",
                         "open_for": "60s", "probes": 1});
    let services = [
        ("flaky", json!({"breaker": breaker})),
        ("retried", json!({"retry": {"attempts": 2, "budget": 1.0}})),
        (
            "hedged",
            json!({"hedge": {"after": "50ms", "max_extra": 1.0}}),
        ),
    ];
    for (name, mut spec) in services {
        spec["timeout"] = json!("2s");
        spec["upstream"] = upstream.spec(name);
        service_and_route(&gateway, name, spec).await;
        busgate_tests::support::eventually(Duration::from_secs(15), || async {
            traced_get(&gateway.url(&format!("/api/{name}/A1")), &trace_of(0), name).await == "ok"
        })
        .await;
    }
    upstream.set("flaky", Behaviour::Fail);
    upstream.set("retried", Behaviour::Fail);
    upstream.set("hedged", Behaviour::Slow(Duration::from_millis(400)));

    // The breaker opens after a few failures; then a traced request finds it open.
    let flaky = gateway.url("/api/flaky/B1");
    let mut n = 1;
    while traced_get(&flaky, &trace_of(n), "flaky").await != "circuit_open" {
        n += 1;
        assert!(n < 30, "the breaker never opened");
    }
    let spans = receiver
        .trace(&trace_of(n), Duration::from_secs(30), |spans| {
            spans.iter().any(|s| s.kind == kind::PRODUCER)
        })
        .await;
    let server = one(&spans, "server span", |s| s.kind == kind::SERVER);
    let open = send_of(&spans, "flaky");
    assert_eq!(open.parent_span_id, server.span_id);
    assert_eq!(open.attr("busgate.outcome"), "circuit_open");
    assert_eq!(open.attr("error.type"), "circuit_open");
    assert!(
        spans.iter().all(|s| s.parent_span_id != open.span_id),
        "nothing published below an open breaker: {spans:#?}"
    );
    let calls = upstream.calls("flaky");

    // A retry: the event on the source's span, and two process spans below it.
    let retried = trace_of(100);
    assert_eq!(
        traced_get(&gateway.url("/api/retried/R1"), &retried, "retried").await,
        "error"
    );
    let spans = receiver
        .trace(&retried, Duration::from_secs(30), |spans| {
            spans.iter().filter(|s| s.kind == kind::CONSUMER).count() >= 2
                && spans.iter().any(|s| s.kind == kind::PRODUCER)
        })
        .await;
    let send = send_of(&spans, "retried");
    assert_eq!(send.events, vec!["busgate.retry".to_owned()], "{send:#?}");
    assert_eq!(send.attr("busgate.outcome"), "error");
    let processes: Vec<_> = spans.iter().filter(|s| s.kind == kind::CONSUMER).collect();
    assert_eq!(processes.len(), 2, "{spans:#?}");
    assert!(processes.iter().all(|s| s.parent_span_id == send.span_id));

    // A hedge: the first answer is slow, a second request goes out after 50 ms.
    let hedged = trace_of(200);
    assert_eq!(
        traced_get(&gateway.url("/api/hedged/H1"), &hedged, "hedged").await,
        "ok"
    );
    let spans = receiver
        .trace(&hedged, Duration::from_secs(30), |spans| {
            spans.iter().filter(|s| s.kind == kind::CONSUMER).count() >= 2
                && spans.iter().any(|s| s.kind == kind::PRODUCER)
        })
        .await;
    let send = send_of(&spans, "hedged");
    assert_eq!(send.events, vec!["busgate.hedge".to_owned()], "{send:#?}");
    assert_eq!(send.attr("busgate.outcome"), "ok");
    assert!(spans
        .iter()
        .filter(|s| s.kind == kind::CONSUMER)
        .all(|s| s.parent_span_id == send.span_id));
    assert_eq!(
        upstream.calls("flaky"),
        calls,
        "the open breaker asked nobody"
    );
}

/// Two identical requests at once share one publish: the one that followed has its send span
/// with the outcome `coalesced` and nothing below it; the one that led has the process span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_source_has_a_send_span_with_the_outcome_coalesced() {
    use busgate_tests::upstream::{Behaviour, Upstream};
    let receiver = Receiver::start().await;
    let upstream = Upstream::start().await;
    let nats = NatsServer::start();
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url);
    })
    .await;
    let _adapters = traced_adapters(&nats, &receiver);
    let spec = json!({"timeout": "2s", "upstream": upstream.spec("shared"), "coalesce": true});
    service_and_route(&gateway, "shared", spec).await;
    busgate_tests::support::eventually(Duration::from_secs(15), || async {
        traced_get(&gateway.url("/api/shared/W1"), &trace_of(0), "shared").await == "ok"
    })
    .await;
    upstream.set("shared", Behaviour::Slow(Duration::from_millis(500)));
    let url = gateway.url("/api/shared/S1");
    let before = upstream.calls("shared");
    let (first, second) = (trace_of(1), trace_of(2));
    let (a, b) = tokio::join!(traced_get(&url, &first, "shared"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        traced_get(&url, &second, "shared").await
    });
    assert_eq!((a.as_str(), b.as_str()), ("ok", "ok"));
    let led = receiver
        .trace(&first, Duration::from_secs(30), |spans| spans.len() >= 4)
        .await;
    let leader = send_of(&led, "shared");
    assert_eq!(leader.attr("busgate.outcome"), "ok");
    one(&led, "process span", |s| {
        s.kind == kind::CONSUMER && s.parent_span_id == leader.span_id
    });
    let followed = receiver
        .trace(&second, Duration::from_secs(30), |spans| spans.len() >= 2)
        .await;
    let server = one(&followed, "server span", |s| s.kind == kind::SERVER);
    let follower = send_of(&followed, "shared");
    assert_eq!(follower.parent_span_id, server.span_id);
    assert_eq!(follower.attr("busgate.outcome"), "coalesced");
    assert_eq!(follower.attr("error.type"), "", "coalesced is no error");
    assert!(
        followed
            .iter()
            .all(|s| s.parent_span_id != follower.span_id),
        "nothing published for a follower: {followed:#?}"
    );
    assert_eq!(upstream.calls("shared"), before + 1, "one call for both");
}

/// Every callback delivery is a client span `POST` of its own trace, linked to the submit's
/// server span; a failed attempt is an error span with the receiver's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_deliveries_are_spans_linked_to_the_submit() {
    use busgate_tests::fixture::Callbacks;
    let receiver = Receiver::start().await;
    let nats = NatsServer::start();
    let _services = Worker::natives(&nats, &["service1", "service2"]);
    let settings = Settings::builtin()
        .jobs_ack_wait(Duration::from_secs(2))
        .callbacks(
            Callbacks::signed("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .retry(&[Duration::from_millis(100); 2])
                .timeout(Duration::from_secs(2))
                .allow("127.0.0.0/8"),
        );
    let gateway = Gateway::start_with(&nats, &settings, |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url);
    })
    .await;
    // The hook answers 503 once, then 200.
    let calls = Arc::new(Mutex::new(0u32));
    let hook = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|State(calls): State<Arc<Mutex<u32>>>| async move {
                let mut calls = calls.lock().expect("calls");
                *calls += 1;
                if *calls == 1 {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }),
        )
        .with_state(calls.clone());
    let hook = format!("{}/hook", serve(hook).await);
    let response = http()
        .post(gateway.url("/api/order"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"order_id": "K1", "callback_url": hook}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 202);
    let submit = receiver
        .trace(CLIENT_TRACE, Duration::from_secs(30), |spans| {
            spans.iter().any(|s| s.kind == kind::SERVER)
        })
        .await;
    let submit = one(&submit, "submit span", |s| s.kind == kind::SERVER);
    let until = Instant::now() + Duration::from_secs(30);
    let deliveries = loop {
        let found: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.kind == kind::CLIENT && s.name == "POST")
            .collect();
        if found.len() >= 2 {
            break found;
        }
        assert!(Instant::now() < until, "deliveries: {found:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(deliveries.len(), 2, "{deliveries:#?}");
    let mut statuses: Vec<&str> = deliveries
        .iter()
        .map(|s| s.attr("http.response.status_code"))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["200", "503"]);
    for delivery in &deliveries {
        assert_ne!(delivery.trace_id, CLIENT_TRACE, "a trace of its own");
        assert_eq!(delivery.parent_span_id, "");
        assert_eq!(
            delivery.links,
            vec![(CLIENT_TRACE.to_owned(), submit.span_id.clone())],
            "linked to the submit"
        );
        assert_eq!(delivery.attr("server.address"), "127.0.0.1");
        assert!(!delivery.attr("url.full").contains('?'));
    }
    assert_eq!(*calls.lock().expect("calls"), 2);
}
