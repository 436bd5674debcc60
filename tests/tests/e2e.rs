//! End-to-end: real nats-server, real gateway and worker binaries, HTTP from outside.

use busgate_tests::fixture::{Route, Settings};
use busgate_tests::support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use support::{eventually, Gateway, Stack, Worker};

const PROBLEM_JSON: &str = "application/problem+json";

/// The built-in configuration written out, with a `ghost` service that nothing serves and
/// routes to service1 alone, to the ghost (required) and to the ghost (optional). The ghost's
/// timeout and its routes' deadline are [`GHOST_DEADLINE`]: an answer that waited for it is
/// unmistakable, even on a loaded machine.
fn single_and_ghost() -> Settings {
    Settings::builtin()
        .service("ghost", GHOST_DEADLINE)
        .route(
            "single",
            Route::get("/api/single/{order_id}").target("service1"),
        )
        .route(
            "ghost",
            Route::get("/api/ghost/{order_id}")
                .deadline(GHOST_DEADLINE)
                .target("ghost")
                .optional("service1"),
        )
        .route(
            "optional-ghost",
            Route::get("/api/optional-ghost/{order_id}")
                .deadline(GHOST_DEADLINE)
                .target("service1")
                .optional("ghost"),
        )
}

/// The timeout of the service nothing serves, and the deadline of its routes.
const GHOST_DEADLINE: Duration = Duration::from_secs(5);

async fn get(gateway: &Gateway, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = reqwest::get(gateway.url(path)).await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn assert_merged(body: &Value, order_id: &str) {
    assert_eq!(body["order_id"], order_id, "{body}");
    assert_eq!(body["complete"], true, "{body}");
    assert_eq!(body["data"]["service1"]["order_id"], order_id, "{body}");
    assert_eq!(body["data"]["service2"]["order_id"], order_id, "{body}");
    assert!(body["data"]["service1"]["amount"].is_number(), "{body}");
    assert!(body["data"]["service2"]["carrier"].is_string(), "{body}");
    assert_eq!(body["sources"]["service1"]["status"], "ok");
    assert_eq!(body["sources"]["service2"]["status"], "ok");
}

#[tokio::test]
async fn post_and_get_answer_with_both_sources_merged() {
    let stack = Stack::start(&Settings::default()).await;
    let http = reqwest::Client::new();
    let response = http
        .post(stack.gateway.url("/api/order"))
        .header("content-type", "application/json")
        .body(r#"{"order_id":"A1"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let header_id = response.headers()["busgate-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    let posted: Value = response.json().await.expect("json");
    assert_merged(&posted, "A1");
    assert_eq!(posted["request_id"], header_id.as_str());
    assert_eq!(header_id.len(), 36);
    assert_eq!(&header_id[14..15], "7", "a UUIDv7");

    let (status, _, got) = get(&stack.gateway, "/api/orders/A1").await;
    assert_eq!(status, 200);
    assert_merged(&got, "A1");
    assert_eq!(
        got["data"], posted["data"],
        "the same order gives the same data either way"
    );
    assert_ne!(got["request_id"], posted["request_id"]);

    // An integer order id is taken as its digits.
    let response = http
        .post(stack.gateway.url("/api/order"))
        .json(&json!({"order_id": 12345}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    assert_merged(&response.json().await.expect("json"), "12345");
}

#[tokio::test]
async fn a_route_with_one_service_answers_with_that_service_only() {
    let stack = Stack::start(&single_and_ghost()).await;
    let (status, _, body) = get(&stack.gateway, "/api/single/B7").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true);
    assert_eq!(body["data"].as_object().expect("data").len(), 1, "{body}");
    assert_eq!(body["data"]["service1"]["order_id"], "B7");
    assert_eq!(body["sources"].as_object().expect("sources").len(), 1);
}

#[tokio::test]
async fn failure_modes_have_their_status_codes_and_timings() {
    let stack = Stack::start(&Settings::default()).await;
    // When service1 fails fast, service2 may or may not have answered yet: it is `ok` or
    // `cancelled`, a race the answer reports faithfully.
    let raced: &[&str] = &["ok", "cancelled"];
    // (order id, status, problem type or None for a 200, service2 statuses, min ms, max ms)
    let cases = [
        ("missing1-x", 404, Some("order-not-found"), raced, 0, 500),
        ("fail1-x", 502, Some("upstream-error"), raced, 0, 500),
        (
            "slow1-x",
            504,
            Some("deadline-exceeded"),
            &["ok"][..],
            780,
            1500,
        ),
        ("missing2-x", 200, None, &["not_found"][..], 0, 500),
        ("fail2-x", 200, None, &["error"][..], 0, 500),
        ("slow2-x", 200, None, &["timeout"][..], 780, 1500),
    ];
    let mut checks = Vec::new();
    for (order_id, status, problem, service2, min_ms, max_ms) in cases {
        let gateway = &stack.gateway;
        checks.push(async move {
            let started = Instant::now();
            let (got, headers, body) = get(gateway, &format!("/api/orders/{order_id}")).await;
            let ms = started.elapsed().as_millis();
            assert_eq!(got, status, "{order_id}: {body}");
            assert!(
                (min_ms..max_ms).contains(&ms),
                "{order_id} took {ms} ms, expected {min_ms}..{max_ms}"
            );
            let service2_status = body["sources"]["service2"]["status"]
                .as_str()
                .unwrap_or_default();
            assert!(service2.contains(&service2_status), "{order_id}: {body}");
            match problem {
                Some(kind) => {
                    assert_eq!(headers["content-type"], PROBLEM_JSON);
                    assert_eq!(body["type"], format!("urn:busgate:problem:{kind}"));
                    assert_eq!(body["status"], status);
                    assert_eq!(body["order_id"], order_id);
                    assert!(body["request_id"].is_string());
                }
                None => {
                    assert_eq!(body["complete"], false, "{order_id}: {body}");
                    assert_eq!(body["data"]["service1"]["order_id"], order_id);
                    assert!(body["data"].get("service2").is_none(), "{body}");
                }
            }
        });
    }
    futures::future::join_all(checks).await;
}

/// The adapter keeps connections to its upstream open between requests. When the upstream
/// restarts, the connections it closed are not reused: every request succeeds at once. While
/// it is down, requests fail fast as upstream errors.
#[tokio::test]
async fn an_adapter_outlives_its_upstream_restarting() {
    let mut stack = Stack::start(&Settings::default()).await;
    let gateway = &stack.gateway;
    let burst = |prefix: &'static str| {
        futures::future::join_all((0..16).map(move |i| async move {
            let order_id = format!("{prefix}{i}");
            let (status, _, body) = get(gateway, &format!("/api/orders/{order_id}")).await;
            (order_id, status, body)
        }))
    };
    let all_merged = |answers: Vec<(String, u16, Value)>| {
        for (order_id, status, body) in answers {
            assert_eq!(status, 200, "{body}");
            assert_merged(&body, &order_id);
        }
    };
    // Several connections to service1's upstream are now idle in the adapter's pool.
    all_merged(burst("before-").await);

    let address = stack.demos[0].1.trim_start_matches("http://").to_owned();
    stack.demos[0].0.kill();
    let (mut restarted, _) = Worker::demo_on("service1", &address);
    all_merged(burst("after-").await);

    restarted.kill();
    let started = Instant::now();
    for (_, status, body) in burst("down-").await {
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["type"], "urn:busgate:problem:upstream-error", "{body}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "a refused connection is an answer, not a wait for the deadline: {:?}",
        started.elapsed()
    );
}

/// A service nothing serves is answered at once (the bus says so), not at its deadline. "At
/// once" is measured twice, each far from the 5 s deadline so that a loaded machine cannot
/// make it flake: by the gateway itself (the source's `elapsed_ms`, publish to the bus's
/// answer: under a tenth of the deadline), and by the client, connection included (under
/// half of it). The 100 ms the client once allowed was a loaded machine's scheduling.
#[tokio::test]
async fn no_responders_answers_at_once_not_at_the_deadline() {
    let stack = Stack::start(&single_and_ghost()).await;
    let at_once = |body: &Value, took: Duration| {
        let gateway_ms = body["sources"]["ghost"]["elapsed_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("the source's elapsed_ms: {body}"));
        assert!(
            gateway_ms < GHOST_DEADLINE.as_secs_f64() * 1000.0 / 10.0,
            "the gateway took {gateway_ms} ms to learn there were no responders: {body}"
        );
        assert!(
            took < GHOST_DEADLINE / 2,
            "no responders answered after {took:?}, as if at the deadline: {body}"
        );
    };
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _, body) = get(&stack.gateway, "/api/ghost/A1").await;
        let took = started.elapsed();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["type"], "urn:busgate:problem:service-unavailable");
        assert_eq!(body["sources"]["ghost"]["status"], "no_responders");
        at_once(&body, took);
    }
    let started = Instant::now();
    let (status, _, body) = get(&stack.gateway, "/api/optional-ghost/A1").await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], false);
    assert_eq!(body["sources"]["ghost"]["status"], "no_responders");
    at_once(&body, took);
}

/// (method, path, content type, body, status, problem type)
type BadInput<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);

#[tokio::test]
async fn bad_inputs_are_refused_with_problems_and_nothing_is_published() {
    let stack = Stack::start(&Settings::default()).await;
    let watcher = stack.nats.client().await;
    let mut published = watcher.subscribe("busgate.svc.>").await.expect("subscribe");
    watcher.flush().await.expect("flush");
    let http = reqwest::Client::new();
    let big = format!(r#"{{"order_id":"A1","pad":"{}"}}"#, "x".repeat(70 * 1024));
    let long_id = format!(r#"{{"order_id":"{}"}}"#, "a".repeat(65));
    let json = "application/json";
    let cases: Vec<BadInput<'_>> = vec![
        (
            "POST",
            "/api/order",
            Some(json),
            r#"{"order_id":"#.into(),
            400,
            "malformed-json",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            "not json".into(),
            400,
            "malformed-json",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            "[1,2]".into(),
            400,
            "invalid-body",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            r#"{"order_id":{"a":1}}"#.into(),
            400,
            "invalid-body",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            "{}".into(),
            400,
            "missing-order-id",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            "".into(),
            400,
            "missing-order-id",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            r#"{"order_id":""}"#.into(),
            400,
            "invalid-order-id",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            r#"{"order_id":"a b"}"#.into(),
            400,
            "invalid-order-id",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            r#"{"order_id":"busgate.svc.>"}"#.into(),
            400,
            "invalid-order-id",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            long_id,
            400,
            "invalid-order-id",
        ),
        (
            "POST",
            "/api/order",
            Some(json),
            big,
            413,
            "payload-too-large",
        ),
        (
            "POST",
            "/api/order",
            Some("text/plain"),
            r#"{"order_id":"A1"}"#.into(),
            415,
            "unsupported-media-type",
        ),
        (
            "GET",
            "/api/orders/a%2Fb",
            None,
            String::new(),
            400,
            "invalid-order-id",
        ),
        (
            "GET",
            "/api/orders/%zz",
            None,
            String::new(),
            400,
            "invalid-order-id",
        ),
        (
            "GET",
            "/api/orders/",
            None,
            String::new(),
            400,
            "invalid-order-id",
        ),
        ("GET", "/nope", None, String::new(), 404, "not-found"),
        (
            "GET",
            "/api/orders/A1/extra",
            None,
            String::new(),
            404,
            "not-found",
        ),
        (
            "PUT",
            "/api/order",
            Some(json),
            r#"{"order_id":"A1"}"#.into(),
            405,
            "method-not-allowed",
        ),
        (
            "DELETE",
            "/api/orders/A1",
            None,
            String::new(),
            405,
            "method-not-allowed",
        ),
        (
            "POST",
            "/metrics",
            None,
            String::new(),
            405,
            "method-not-allowed",
        ),
    ];
    assert!(cases.len() >= 10);
    for (method, path, content_type, body, status, kind) in cases {
        let mut request = http
            .request(method.parse().expect("method"), stack.gateway.url(path))
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("send");
        let what = format!("{method} {path}");
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(response.headers()["content-type"], PROBLEM_JSON, "{what}");
        if status == 405 {
            assert!(
                response.headers().contains_key("allow"),
                "{what}: Allow header"
            );
        }
        let header_id = response
            .headers()
            .get("busgate-request-id")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let problem: Value = response.json().await.expect("problem json");
        assert_eq!(
            problem["type"],
            format!("urn:busgate:problem:{kind}"),
            "{what}: {problem}"
        );
        assert_eq!(problem["status"], status, "{what}");
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{what}"
        );
        if path != "/metrics" {
            assert_eq!(
                problem["request_id"].as_str(),
                header_id.as_deref(),
                "{what}"
            );
        }
    }
    // A good request after all the bad ones: the first thing ever published must be it.
    let (status, _, _) = get(&stack.gateway, "/api/orders/marker-1").await;
    assert_eq!(status, 200);
    let first = tokio::time::timeout(Duration::from_secs(5), published.next())
        .await
        .expect("the marker was published")
        .expect("message");
    let payload: Value = serde_json::from_slice(&first.payload).expect("request json");
    assert_eq!(
        payload["order_id"], "marker-1",
        "something was published for a bad input"
    );
}

/// Generous timeouts: this test is about correlation under load, not latency.
fn load() -> Settings {
    Settings::builtin()
        .service("service1", Duration::from_secs(9))
        .service("service2", Duration::from_secs(9))
        .route(
            "order",
            Route::order()
                .deadline(Duration::from_secs(10))
                .target("service1")
                .optional("service2"),
        )
}

#[tokio::test]
async fn a_thousand_concurrent_requests_each_get_their_own_answer() {
    let stack = Stack::start(&load()).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1000)
        .build()
        .expect("client");
    let requests = (0..1000).map(|i| {
        let http = http.clone();
        let url = stack.gateway.url(&format!("/api/orders/load-{i}"));
        async move {
            let response = http.get(url).send().await.expect("send");
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.expect("json");
            (i, body)
        }
    });
    let answers = futures::future::join_all(requests).await;
    assert_eq!(answers.len(), 1000);
    let mut request_ids = std::collections::HashSet::new();
    for (i, body) in answers {
        assert_merged(&body, &format!("load-{i}"));
        assert!(request_ids.insert(body["request_id"].as_str().expect("id").to_owned()));
    }
    assert_eq!(
        stack.gateway.metric("busgate_gathers_in_flight", "").await,
        0.0
    );
}

/// `num_requests` of every instance of `service`, from the NATS service API.
async fn instance_request_counts(
    client: &async_nats::Client,
    service: &str,
    instances: usize,
) -> Vec<u64> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(format!("$SRV.STATS.{service}"), inbox, "".into())
        .await
        .expect("publish");
    let mut counts = Vec::new();
    while counts.len() < instances {
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("every instance answers STATS")
            .expect("reply");
        let stats: Value = serde_json::from_slice(&reply.payload).expect("stats json");
        counts.push(
            stats["endpoints"][0]["num_requests"]
                .as_u64()
                .expect("num_requests"),
        );
    }
    counts
}

#[tokio::test]
async fn two_workers_of_one_service_share_the_load() {
    let stack = Stack::start(&Settings::default()).await;
    let _second = Worker::adapter(&stack.nats, "service1", &stack.demos[0].1);
    let http = reqwest::Client::new();
    let total = 200;
    futures::stream::iter(0..total)
        .for_each_concurrent(16, |i| {
            let http = http.clone();
            let url = stack.gateway.url(&format!("/api/orders/share-{i}"));
            async move {
                let response = http.get(url).send().await.expect("send");
                assert_eq!(response.status(), 200);
            }
        })
        .await;
    let client = stack.nats.client().await;
    let counts = instance_request_counts(&client, "service1", 2).await;
    assert_eq!(counts.iter().sum::<u64>(), total, "{counts:?}");
    for count in &counts {
        assert!(
            *count >= 40,
            "queue group split {counts:?}: each instance should take a fair share"
        );
    }
}

/// Sends `total` GETs, 32 at a time, each bounded by `limit`; returns (status or 0 for a hang).
fn spawn_load(
    base: String,
    prefix: &'static str,
    total: usize,
    limit: Duration,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        futures::stream::iter(0..total)
            .map(|i| {
                let (http, url, progress) = (
                    http.clone(),
                    format!("{base}/api/orders/{prefix}-{i}"),
                    progress.clone(),
                );
                async move {
                    let status = match tokio::time::timeout(limit, http.get(url).send()).await {
                        Ok(Ok(r)) => r.status().as_u16(),
                        Ok(Err(_)) => 1,
                        Err(_) => 0,
                    };
                    progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    status
                }
            })
            .buffer_unordered(32)
            .collect()
            .await
    })
}

#[tokio::test]
async fn a_worker_restart_mid_load_leaves_no_request_hanging() {
    let mut stack = Stack::start(&Settings::default()).await;
    let _spare = Worker::adapter(&stack.nats, "service1", &stack.demos[0].1);
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = 600;
    // Deadline 1 s: an answer that takes longer than 3 s is a hung request.
    let load = spawn_load(
        stack.gateway.base.clone(),
        "restart",
        total,
        Duration::from_secs(3),
        progress.clone(),
    );
    eventually(Duration::from_secs(30), || {
        let n = progress.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= total / 5 }
    })
    .await;
    stack.adapters[0].kill();
    let _replacement = Worker::adapter(&stack.nats, "service1", &stack.demos[0].1);
    let statuses = load.await.expect("load task");
    assert_eq!(statuses.len(), total);
    let hung = statuses.iter().filter(|s| **s == 0).count();
    let broken = statuses
        .iter()
        .filter(|s| ![200, 503, 504].contains(*s))
        .count();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(hung, 0, "requests hung: {statuses:?}");
    assert_eq!(broken, 0, "unexpected statuses: {statuses:?}");
    // Only requests in flight at the killed worker may fail (at most the 32 in flight).
    assert!(ok >= total - 32, "only {ok} of {total} answered 200");
    assert_eq!(
        stack.gateway.metric("busgate_gathers_in_flight", "").await,
        0.0
    );
    // After the restart, the service answers fully again.
    let after = spawn_load(
        stack.gateway.base.clone(),
        "after",
        64,
        Duration::from_secs(3),
        progress,
    )
    .await
    .expect("load task");
    assert!(after.iter().all(|s| *s == 200), "{after:?}");
}

/// A client that hangs up while its gather waits ends the gather then, not at its deadline:
/// nothing of the request is left behind (the services are slow for 3 s, the deadline is 10 s).
#[tokio::test]
async fn a_client_that_hangs_up_ends_its_gather() {
    use tokio::io::AsyncWriteExt;
    let ten = Duration::from_secs(10);
    let settings = Settings::default()
        .service("service1", ten)
        .service("service2", ten)
        .route(
            "order",
            Route::get("/api/orders/{order_id}")
                .deadline(ten)
                .target("service1")
                .optional("service2"),
        );
    let stack = Stack::start(&settings).await;
    let addr = stack.gateway.base.trim_start_matches("http://").to_owned();
    let mut client = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    client
        .write_all(b"GET /api/orders/slow-gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let gateway = &stack.gateway;
    eventually(Duration::from_secs(5), || async move {
        gateway.metric("busgate_gathers_in_flight", "").await == 1.0
    })
    .await;
    let hung_up = Instant::now();
    drop(client);
    eventually(Duration::from_secs(2), || async move {
        gateway.metric("busgate_gathers_in_flight", "").await == 0.0
    })
    .await;
    assert!(
        hung_up.elapsed() < Duration::from_secs(2),
        "the gather outlived its client by {:?}",
        hung_up.elapsed()
    );
    // The gateway goes on answering.
    let response = reqwest::get(stack.gateway.url("/api/orders/after-hang-up"))
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_gathers() {
    let mut stack = Stack::start(&Settings::default()).await;
    let url = stack.gateway.url("/api/orders/slow2-shutdown");
    let in_flight = tokio::spawn(async move {
        reqwest::get(url)
            .await
            .expect("answered")
            .json::<Value>()
            .await
    });
    eventually(Duration::from_secs(5), || {
        let gateway = &stack.gateway;
        async move { gateway.metric("busgate_gathers_in_flight", "").await == 1.0 }
    })
    .await;
    let code = stack.gateway.proc.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "a clean exit");
    let body = in_flight.await.expect("task").expect("json");
    assert_eq!(body["order_id"], "slow2-shutdown");
    assert_eq!(body["complete"], false, "{body}");
    assert_eq!(body["sources"]["service2"]["status"], "timeout");
}

/// Native services answer through the SDK, which runs a handler in place when it does not wait
/// and gives it a task of its own when it does: both paths, side by side, under load.
#[tokio::test]
async fn native_services_answer_in_place_and_from_their_own_tasks() {
    let (nats, _services) = support::native_services();
    let gateway = Gateway::start(&nats, &Settings::default()).await;

    // Slow orders on service2 (3 s, past its deadline) hold tasks and permits while quick
    // orders are answered in place around them.
    let slow = (0..20).map(|i| {
        let gateway = &gateway;
        async move { get(gateway, &format!("/api/orders/slow2-{i}")).await }
    });
    let quick = (0..300).map(|i| {
        let gateway = &gateway;
        async move { (i, get(gateway, &format!("/api/orders/Q{i}")).await) }
    });
    let (slow, quick) = tokio::join!(
        futures::future::join_all(slow),
        futures::stream::iter(quick)
            .buffer_unordered(64)
            .collect::<Vec<_>>()
    );
    for (i, (status, _, body)) in quick {
        assert_eq!(status, 200, "Q{i}: {body}");
        assert_eq!(body["complete"], true, "Q{i}: {body}");
        for source in ["service1", "service2"] {
            assert_eq!(body["data"][source]["order_id"], format!("Q{i}"), "{body}");
        }
    }
    for (status, _, body) in slow {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["complete"], false, "{body}");
        assert_eq!(body["sources"]["service1"]["status"], "ok", "{body}");
        assert_eq!(body["sources"]["service2"]["status"], "timeout", "{body}");
    }
    // A handler's own failure and a missing order come back as replies, not as silence.
    let (status, _, body) = get(&gateway, "/api/orders/fail2-x").await;
    assert_eq!(
        (status, &body["sources"]["service2"]["status"]),
        (200, &json!("error")),
        "{body}"
    );
    let (status, _, body) = get(&gateway, "/api/orders/missing1-x").await;
    assert_eq!(status, 404, "{body}");
}

/// One adapter process can serve several services, each to its own upstream: a merged request
/// through it has both sources, both register with the service API, and flags that do not pair
/// up are refused before anything connects.
#[tokio::test]
async fn one_adapter_process_serves_two_services() {
    let nats = support::NatsServer::start();
    let (_demo1, base1) = Worker::demo("service1");
    let (_demo2, base2) = Worker::demo("service2");
    let _adapters = Worker::adapters(&nats, &[("service1", &base1), ("service2", &base2)]);
    let gateway = Gateway::start(&nats, &Settings::default()).await;
    let answers = futures::stream::iter(0..200)
        .map(|i| {
            let gateway = &gateway;
            async move { (i, get(gateway, &format!("/api/orders/M{i}")).await) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for (i, (status, _, body)) in answers {
        assert_eq!(status, 200, "M{i}: {body}");
        assert_merged(&body, &format!("M{i}"));
    }
    let client = nats.client().await;
    for service in ["service1", "service2"] {
        let ping = client
            .request(format!("$SRV.INFO.{service}"), "".into())
            .await
            .expect("info");
        let info: Value = serde_json::from_slice(&ping.payload).expect("json");
        assert_eq!(info["metadata"]["busgate.mode"], "adapter", "{info}");
        assert_eq!(
            info["endpoints"][0]["subject"],
            format!("busgate.svc.{service}")
        );
    }

    // Flags that do not pair up: a usage error (exit code 2) before anything connects. The
    // NATS URL is a listener that must never see a connection. (The same flags paired up are
    // taken: the adapter process above.)
    let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    trap.set_nonblocking(true).expect("nonblocking");
    let trap_url = format!("nats://{}", trap.local_addr().expect("addr"));
    let mut refused = std::process::Command::new(support::bin("busgate-worker"))
        .args([
            "adapter",
            "--service",
            "a",
            "--service",
            "b",
            "--upstream",
            "http://x/{order_id}",
        ])
        .env("BUSGATE_NATS__URL", &trap_url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let until = Instant::now() + support::READY_WITHIN;
    let code = loop {
        if let Some(status) = refused.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() >= until {
            let _ = refused.kill();
            let _ = refused.wait();
            panic!("an adapter with 2 --service and 1 --upstream was not refused");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(2), "a usage error");
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "refused before connecting"
    );
}

/// A `nats.url` that lists several servers (a cluster) connects both of the gateway's
/// connections: the dead first entry is skipped and the gateway becomes ready and answers.
#[tokio::test]
async fn a_list_of_nats_servers_is_a_cluster_not_one_address() {
    let nats = support::NatsServer::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let dead_url = format!(
        "nats://127.0.0.1:{}",
        dead.local_addr().expect("addr").port()
    );
    drop(dead);
    let _worker = Worker::native(&nats, "service1");
    let list = format!("{dead_url},{}", nats.url);
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_NATS__URL", &list);
    })
    .await;
    let answer = reqwest::get(gateway.url("/api/orders/L1"))
        .await
        .expect("request");
    assert_eq!(answer.status(), 200);
}
