//! End-to-end: resilience per service (circuit breaker, retries within a budget, hedged
//! requests) and the client's own deadline (`Busgate-Timeout`). A real nats-server, the real
//! `busgate gateway`, `busgate-worker adapters` following the configuration, and a test
//! upstream that fails or stalls on command ([`busgate_tests::upstream`]).

use std::process::Command;
use std::time::{Duration, Instant};

use busgate_tests::fixture::Settings;
use busgate_tests::jobs::{submit_request, until_final};
use busgate_tests::support::{bin, eventually, http, Gateway, NatsServer, Proc};
use busgate_tests::upstream::{Behaviour, Upstream};
use serde_json::{json, Value};

/// `busgate-worker adapters` named `worker` (sent as `X-Worker`), ready once connected.
fn adapters(nats: &NatsServer, worker: &str) -> Proc {
    let mut cmd = Command::new(bin("busgate-worker"));
    cmd.arg("adapters")
        .env("BUSGATE_NATS__URL", &nats.url)
        .env("BUSGATE_LOG__FORMAT", "json")
        .env("WORKER_NAME", worker);
    let proc = Proc::spawn(&format!("adapters-{worker}"), cmd);
    proc.wait_for(busgate_tests::support::READY_WITHIN, |l| {
        l.contains("nats connected").then_some(())
    });
    proc
}

/// Creates `name` among `kind` through the admin API; asserts 201.
async fn create(gateway: &Gateway, kind: &str, name: &str, spec: Value) {
    let body = json!({"name": name, "spec": spec});
    let answer = gateway
        .admin_send("POST", &format!("/admin/v1/{kind}"), None, Some(&body))
        .await;
    assert_eq!(answer.status, 201, "{kind}/{name}: {}", answer.body);
}

/// A route at `GET /api/<name>/{order_id}` with `targets` and `deadline`.
fn route(name: &str, deadline: &str, targets: Value) -> Value {
    json!({
        "bindings": [{"method": "GET", "path": format!("/api/{name}/{{order_id}}")}],
        "deadline": deadline,
        "targets": targets,
    })
}

/// `GET` with optional headers: status, body, and how long it took.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value, Duration) {
    let mut request = http().get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let started = Instant::now();
    let response = request.send().await.expect("get");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

/// The upstream, a NATS server, a gateway and one adapters process named `a`.
async fn stack() -> (Upstream, NatsServer, Gateway, Proc) {
    let upstream = Upstream::start().await;
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let worker = adapters(&nats, "a");
    (upstream, nats, gateway, worker)
}

/// Waits until `url` answers 200 with every source `ok` (the adapters follow the new service).
async fn served(url: &str) {
    eventually(Duration::from_secs(10), || async {
        let (status, body, _) = get(url, &[]).await;
        status == 200
            && body["sources"]
                .as_object()
                .is_some_and(|s| s.values().all(|v| v["status"] == "ok"))
    })
    .await;
}

async fn breaker_state(gateway: &Gateway, service: &str) -> Value {
    let answer = gateway
        .admin_send("GET", "/admin/v1/resilience", None, None)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["services"][service]["breaker"].clone()
}

/// A failing upstream opens the breaker: answers say `circuit_open` at once and the upstream
/// hears nothing while it is open; once the upstream recovers, probes close it.
#[tokio::test]
async fn a_failing_service_opens_its_breaker_and_recovery_closes_it() {
    let (upstream, _nats, gateway, _worker) = stack().await;
    let breaker = json!({"failure_ratio": 0.5, "min_requests": 5, "window": "10s", "open_for": "1s", "probes": 2});
    create(
        &gateway,
        "services",
        "flaky",
        json!({"timeout": "2s", "upstream": upstream.spec("flaky"), "breaker": breaker}),
    )
    .await;
    create(
        &gateway,
        "routes",
        "flaky",
        route(
            "flaky",
            "2s",
            json!([{"service": "flaky", "required": false}]),
        ),
    )
    .await;
    let url = gateway.url("/api/flaky/A1");
    served(&url).await;
    assert_eq!(breaker_state(&gateway, "flaky").await, "closed");

    upstream.set("flaky", Behaviour::Fail);
    // What served() saw counts in the window too (an answer, and no_responders while the
    // adapter was starting): the breaker opens within min_requests failures.
    let mut errors = 0;
    loop {
        let (status, body, _) = get(&url, &[]).await;
        assert_eq!(status, 200, "{body}");
        match body["sources"]["flaky"]["status"].as_str() {
            Some("error") => errors += 1,
            Some("circuit_open") => break,
            other => panic!("{other:?}: {body}"),
        }
        assert!(errors <= 5, "still closed after {errors} errors");
    }
    assert!(errors >= 1, "opened before any error");
    assert_eq!(breaker_state(&gateway, "flaky").await, "open");
    let calls = upstream.calls("flaky");
    // Timed by the gateway (its `elapsed_ms`) for each answer, and by this client for the
    // median: a loaded test machine may stall one HTTP round trip, not the gateway's answer.
    let mut took_all = Vec::new();
    for _ in 0..10 {
        let (status, body, took) = get(&url, &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sources"]["flaky"]["status"], "circuit_open", "{body}");
        assert_eq!(body["complete"], false);
        let gateway_ms = body["elapsed_ms"].as_f64().expect("elapsed_ms");
        assert!(
            gateway_ms < 50.0,
            "circuit_open took {gateway_ms} ms in the gateway"
        );
        took_all.push(took);
    }
    let median = percentile(&mut took_all, 50);
    assert!(
        median < Duration::from_millis(50),
        "circuit_open took {median:?}"
    );
    // The asynchronous path runs the same gather: the breaker answers for it too.
    let (_, accepted) = submit_request(http().get(&url)).await;
    let id = accepted["request_id"].as_str().expect("id").to_owned();
    let doc = until_final(&gateway, &id, Duration::from_secs(30)).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(
        doc["result"]["sources"]["flaky"]["status"], "circuit_open",
        "{doc}"
    );
    assert_eq!(
        upstream.calls("flaky"),
        calls,
        "nothing reaches an open circuit"
    );
    assert_eq!(
        gateway
            .metric("busgate_breaker_state", "service=\"flaky\"")
            .await,
        1.0
    );

    // It recovers: after open_for, the probes pass and the breaker closes.
    upstream.set("flaky", Behaviour::Answer);
    eventually(Duration::from_secs(10), || async {
        get(&url, &[]).await.1["sources"]["flaky"]["status"] == "ok"
            && get(&url, &[]).await.1["sources"]["flaky"]["status"] == "ok"
    })
    .await;
    assert_eq!(breaker_state(&gateway, "flaky").await, "closed");
    for kind in ["open", "half_open", "closed"] {
        let labels = format!("service=\"flaky\",kind=\"{kind}\"");
        let transitions = gateway
            .metric("busgate_breaker_transitions_total", &labels)
            .await;
        assert!(transitions >= 1.0, "{kind}: {transitions}");
    }
    assert_eq!(
        gateway
            .metric("busgate_breaker_state", "service=\"flaky\"")
            .await,
        0.0
    );
}

/// An upstream failing every second call: with `retry`, every answer is `ok`; an upstream
/// failing always is asked at most the budget's share more.
/// An attacker cannot open a service's breaker for everyone: neither by cutting its own deadline
/// (`Busgate-Timeout: 1ms`: those timeouts are its own, not the service's) nor by asking for
/// orders the upstream refuses (a 4xx is `upstream_rejected`: an answer, and not retried).
#[tokio::test]
async fn a_client_cannot_open_a_breaker_for_everyone() {
    let (upstream, _nats, gateway, _worker) = stack().await;
    let breaker = json!({"failure_ratio": 0.5, "min_requests": 5, "window": "10s", "open_for": "5s", "probes": 1});
    create(
        &gateway,
        "services",
        "shared",
        json!({"timeout": "2s", "upstream": upstream.spec("shared"), "breaker": breaker,
               "retry": {"attempts": 3, "budget": 0.5}}),
    )
    .await;
    create(
        &gateway,
        "routes",
        "shared",
        route(
            "shared",
            "2s",
            json!([{"service": "shared", "required": false}]),
        ),
    )
    .await;
    let url = gateway.url("/api/shared/A1");
    served(&url).await;

    upstream.set("shared", Behaviour::Slow(Duration::from_millis(100)));
    for _ in 0..20 {
        let (status, body, _) = get(&url, &[("busgate-timeout", "1ms")]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sources"]["shared"]["status"], "timeout", "{body}");
    }
    assert_eq!(breaker_state(&gateway, "shared").await, "closed");

    upstream.set("shared", Behaviour::Reject);
    let before = upstream.calls("shared");
    for _ in 0..20 {
        let (status, body, _) = get(&url, &[]).await;
        assert_eq!(status, 200, "{body}");
        let source = &body["sources"]["shared"];
        assert_eq!(source["status"], "error", "{body}");
        assert_eq!(source["error"]["code"], "upstream_rejected", "{body}");
        assert!(source.get("attempts").is_none(), "not retried: {body}");
    }
    assert_eq!(upstream.calls("shared") - before, 20, "one call each");
    assert_eq!(breaker_state(&gateway, "shared").await, "closed");

    upstream.set("shared", Behaviour::Answer);
    let (status, body, _) = get(&url, &[]).await;
    assert_eq!(
        (status, &body["sources"]["shared"]["status"]),
        (200, &json!("ok")),
        "{body}"
    );
}

#[tokio::test]
async fn retries_cure_every_second_failure_and_stay_within_the_budget() {
    let (upstream, _nats, gateway, _worker) = stack().await;
    create(
        &gateway,
        "services",
        "halfway",
        json!({"upstream": upstream.spec("halfway"), "retry": {"attempts": 2, "budget": 1.0}}),
    )
    .await;
    create(
        &gateway,
        "services",
        "dead",
        json!({"upstream": upstream.spec("dead"), "retry": {"attempts": 3, "budget": 0.2}}),
    )
    .await;
    create(
        &gateway,
        "routes",
        "halfway",
        route("halfway", "2s", json!([{"service": "halfway"}])),
    )
    .await;
    create(
        &gateway,
        "routes",
        "dead",
        route(
            "dead",
            "2s",
            json!([{"service": "dead", "required": false}]),
        ),
    )
    .await;
    let url = gateway.url("/api/halfway/A1");
    served(&url).await;
    served(&gateway.url("/api/dead/A1")).await;

    upstream.set("halfway", Behaviour::FailEverySecond);
    let mut retried = 0;
    for _ in 0..20 {
        let (status, body, _) = get(&url, &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sources"]["halfway"]["status"], "ok", "{body}");
        if body["sources"]["halfway"]["attempts"] == 2 {
            retried += 1;
        }
    }
    assert!(retried >= 9, "{retried} answers needed a retry");
    // Asynchronously too: whichever call fails, the retry answers.
    for _ in 0..2 {
        let (_, accepted) = submit_request(http().get(&url)).await;
        let id = accepted["request_id"].as_str().expect("id").to_owned();
        let doc = until_final(&gateway, &id, Duration::from_secs(30)).await;
        assert_eq!(doc["status"], "completed", "{doc}");
        assert_eq!(doc["result"]["sources"]["halfway"]["status"], "ok", "{doc}");
    }

    upstream.set("dead", Behaviour::Fail);
    let before = upstream.calls("dead");
    let requests = 50;
    for _ in 0..requests {
        let (status, body, _) = get(&gateway.url("/api/dead/A1"), &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sources"]["dead"]["status"], "error", "{body}");
    }
    let calls = upstream.calls("dead") - before;
    // The served() requests count in the budget's window too (at most a few more).
    assert!(calls > requests, "some retries were made: {calls}");
    assert!(
        calls as f64 <= requests as f64 * 1.2 + 3.0,
        "{calls} calls for {requests} requests: over the 20 % budget"
    );
    let refused = gateway
        .metric(
            "busgate_resilience_extra_requests_total",
            "service=\"dead\",kind=\"retry_over_budget\"",
        )
        .await;
    assert!(refused >= 1.0, "the budget refused some: {refused}");
}

/// Percentile `q` (0..100) of `samples`.
fn percentile(samples: &mut [Duration], q: usize) -> Duration {
    samples.sort_unstable();
    samples[(samples.len() * q / 100).min(samples.len() - 1)]
}

/// Runs `n` requests to `url`, 4 at a time; their latencies.
async fn latencies(url: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n / 4 {
        let batch = futures::future::join_all((0..4).map(|_| get(url, &[]))).await;
        for (status, body, took) in batch {
            assert_eq!(status, 200, "{body}");
            out.push(took);
        }
    }
    out
}

/// One of two adapter instances stalls one call in ten for 400 ms: hedged after 50 ms, the
/// slow calls are overtaken and the p99 falls, for a few percent of extra calls.
#[tokio::test]
async fn hedging_overtakes_a_stalling_instance() {
    let (upstream, nats, gateway, _a) = stack().await;
    let _b = adapters(&nats, "b");
    let stall = Behaviour::StallWorker {
        worker: "a",
        every: 10,
        delay: Duration::from_millis(400),
    };
    create(
        &gateway,
        "services",
        "plain",
        json!({"timeout": "2s", "upstream": upstream.spec("plain")}),
    )
    .await;
    create(
        &gateway,
        "services",
        "hedged",
        json!({"timeout": "2s", "upstream": upstream.spec("hedged"),
               "hedge": {"after": "50ms", "max_extra": 0.15}}),
    )
    .await;
    for name in ["plain", "hedged"] {
        create(
            &gateway,
            "routes",
            name,
            route(name, "2s", json!([{"service": name}])),
        )
        .await;
        served(&gateway.url(&format!("/api/{name}/A1"))).await;
    }
    // Both instances serve both services before the stall starts.
    eventually(Duration::from_secs(10), || async {
        get(&gateway.url("/api/plain/A1"), &[]).await;
        get(&gateway.url("/api/hedged/A1"), &[]).await;
        ["plain", "hedged"]
            .iter()
            .all(|s| upstream.calls_by_worker(s).len() == 2)
    })
    .await;
    upstream.set("plain", stall);
    upstream.set("hedged", stall);

    let n = 200;
    let mut plain = latencies(&gateway.url("/api/plain/A1"), n).await;
    let before = upstream.calls("hedged");
    let mut hedged = latencies(&gateway.url("/api/hedged/A1"), n).await;
    let extra = (upstream.calls("hedged") - before) as f64 / n as f64 - 1.0;
    let (plain_p99, hedged_p99) = (percentile(&mut plain, 99), percentile(&mut hedged, 99));
    println!(
        "hedge: p50 {:?} → {:?}, p99 {plain_p99:?} → {hedged_p99:?}, extra calls {:.1} %",
        percentile(&mut plain, 50),
        percentile(&mut hedged, 50),
        extra * 100.0
    );
    assert!(
        plain_p99 >= Duration::from_millis(350),
        "the stall shows without a hedge"
    );
    assert!(
        hedged_p99 < Duration::from_millis(150),
        "p99 with hedging: {hedged_p99:?}"
    );
    assert!(extra < 0.15, "extra calls: {:.1} %", extra * 100.0);
    let (_, body, _) = get(&gateway.url("/api/hedged/A1"), &[]).await;
    assert!(
        body["sources"]["hedged"]["hedged"].is_null()
            || body["sources"]["hedged"]["hedged"] == true
    );
    assert!(
        gateway
            .metric(
                "busgate_resilience_extra_requests_total",
                "service=\"hedged\",kind=\"hedge\""
            )
            .await
            >= 1.0
    );
}

/// `Busgate-Timeout: 100ms` on a route with a 1 s deadline and a 500 ms optional source: the
/// answer comes in about 100 ms, partial; synchronously and asynchronously. A longer value
/// never lengthens the deadline.
#[tokio::test]
async fn a_client_timeout_shortens_the_deadline_and_never_lengthens_it() {
    let (upstream, _nats, gateway, _worker) = stack().await;
    for name in ["quick", "lazy"] {
        create(
            &gateway,
            "services",
            name,
            json!({"timeout": "1s", "upstream": upstream.spec(name)}),
        )
        .await;
    }
    create(
        &gateway,
        "routes",
        "both",
        route(
            "both",
            "1s",
            json!([{"service": "quick"}, {"service": "lazy", "required": false}]),
        ),
    )
    .await;
    let url = gateway.url("/api/both/A1");
    served(&url).await;
    upstream.set("lazy", Behaviour::Slow(Duration::from_millis(500)));

    let (status, body, took) = get(&url, &[("Busgate-Timeout", "100ms")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], false, "{body}");
    assert_eq!(body["sources"]["quick"]["status"], "ok");
    assert_eq!(body["sources"]["lazy"]["status"], "timeout");
    assert_eq!(body["sources"]["lazy"]["elapsed_ms"], 100.0);
    assert!(
        took >= Duration::from_millis(95) && took < Duration::from_millis(400),
        "answered in {took:?}"
    );

    // Longer than the deadline: the route's own deadline holds (the 500 ms source answers).
    let (status, body, took) = get(&url, &[("Busgate-Timeout", "9999h")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true, "{body}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Asynchronously: the stored request carries the client's deadline to its gather.
    let (_, accepted) = submit_request(http().get(&url).header("Busgate-Timeout", "100ms")).await;
    let id = accepted["request_id"].as_str().expect("id").to_owned();
    let doc = until_final(&gateway, &id, Duration::from_secs(30)).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(
        doc["result"]["sources"]["lazy"]["status"], "timeout",
        "{doc}"
    );
    assert_eq!(doc["result"]["sources"]["lazy"]["elapsed_ms"], 100.0);
}

/// Every value that is not a duration of at least 1 ms is a 400 problem, on the synchronous
/// and the asynchronous path, and the value is never repeated back.
#[tokio::test]
async fn invalid_client_timeouts_are_400_problems() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let huge = "9".repeat(4096);
    let values: Vec<&str> = vec![
        "abc",
        "100",
        "-1s",
        "0ms",
        "0",
        "500us",
        "1.5.5s",
        "99999999999999999999999999999s",
        &huge,
        "1s, 2s",
        "1s;drop",
    ];
    let url = gateway.url("/api/orders/A1");
    for value in values {
        for asynchronous in [false, true] {
            let mut request = http().get(&url).header("Busgate-Timeout", value);
            if asynchronous {
                request = request.header("prefer", "respond-async");
            }
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let shown = &value[..value.len().min(20)];
            assert_eq!(status, 400, "{shown} (async: {asynchronous}): {body}");
            assert_eq!(content_type, "application/problem+json");
            assert!(
                body["type"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("invalid-timeout"),
                "{body}"
            );
            if value.len() > 3 {
                assert!(!body.to_string().contains(value), "{shown} was repeated");
            }
        }
    }
}

/// Bad settings are 422s naming the field; a settings file with one exits 64.
#[tokio::test]
async fn bad_resilience_settings_name_their_field() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let cases = [
        (
            json!({"breaker": {"failure_ratio": 1.5}}),
            "services.x.breaker.failure_ratio",
        ),
        (
            json!({"breaker": {"failure_ratio": 0}}),
            "services.x.breaker.failure_ratio",
        ),
        (
            json!({"breaker": {"probes": 0}}),
            "services.x.breaker.probes",
        ),
        (
            json!({"breaker": {"window": "0s"}}),
            "services.x.breaker.window",
        ),
        (
            json!({"breaker": {"open_for": "0ms"}}),
            "services.x.breaker.open_for",
        ),
        (
            json!({"breaker": {"min_requests": 0}}),
            "services.x.breaker.min_requests",
        ),
        (
            json!({"retry": {"budget": -0.1}}),
            "services.x.retry.budget",
        ),
        (json!({"retry": {"budget": 2}}), "services.x.retry.budget"),
        (
            json!({"retry": {"attempts": 1}}),
            "services.x.retry.attempts",
        ),
        (
            json!({"retry": {"attempts": 100}}),
            "services.x.retry.attempts",
        ),
        (json!({"hedge": {"after": "0ms"}}), "services.x.hedge.after"),
        (
            json!({"hedge": {"max_extra": 1.01}}),
            "services.x.hedge.max_extra",
        ),
    ];
    for (spec, field) in cases {
        let body = json!({"name": "x", "spec": spec});
        let answer = gateway
            .admin_send("POST", "/admin/v1/services", None, Some(&body))
            .await;
        assert_eq!(answer.status, 422, "{spec}: {}", answer.body);
        assert_eq!(answer.body["field"], field, "{spec}: {}", answer.body);
    }
    // Not a duration nor "p95", or a field that does not exist: refused too.
    for spec in [
        json!({"hedge": {"after": "p99"}}),
        json!({"breaker": {"ratio": 0.5}}),
    ] {
        let body = json!({"name": "x", "spec": spec});
        let answer = gateway
            .admin_send("POST", "/admin/v1/services", None, Some(&body))
            .await;
        assert!(
            answer.status == 400 || answer.status == 422,
            "{spec}: {} {}",
            answer.status,
            answer.body
        );
    }

    // From a settings file: exit 64 before any port is bound.
    let file = busgate_tests::fixture::file(
        "[services.x]\ntimeout = \"1s\"\nbreaker = { failure_ratio = 2.0 }\n",
        ".toml",
    );
    let output = Command::new(bin("busgate"))
        .args(["check-config", "--config"])
        .arg(file.path())
        .env_remove("BUSGATE_ADMIN__TOKEN")
        .output()
        .expect("busgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(64), "{text}");
    assert!(text.contains("services.x.breaker.failure_ratio"), "{text}");
}
