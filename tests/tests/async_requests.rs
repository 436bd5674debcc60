//! End-to-end: asynchronous requests on a real nats-server with JetStream.

use busgate_tests::fixture::{Callbacks, Route, Settings};
use busgate_tests::support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use busgate_tests::jobs::FINAL_WITHIN;
use support::{
    eventually, get_status, header, http, serve, status_doc, submit_request, Gateway, NatsServer,
    Stack,
};

/// The callback signing key: the secret is `whsec_` and this.
const SECRET_KEY_B64: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn secret() -> String {
    format!("whsec_{SECRET_KEY_B64}")
}

/// Fast redelivery and a short callback schedule for tests; loopback receivers allowed.
fn async_settings() -> Settings {
    Settings::default()
        .jobs_ack_wait(Duration::from_secs(2))
        .callbacks(
            Callbacks::signed(&secret())
                .retry(&[Duration::from_millis(100); 3])
                .timeout(Duration::from_secs(2))
                .allow("127.0.0.0/8"),
        )
}

async fn submit(gateway: &Gateway, path: &str) -> (reqwest::header::HeaderMap, Value) {
    submit_request(http().get(gateway.url(path))).await
}

/// Polls until the request is final; returns the status document.
async fn until_final(gateway: &Gateway, request_id: &str) -> Value {
    support::until_final(gateway, request_id, FINAL_WITHIN).await
}

/// The answer without what differs between two calls (ids, timings).
fn comparable(mut answer: Value) -> Value {
    if let Some(o) = answer.as_object_mut() {
        o.remove("request_id");
        o.remove("elapsed_ms");
    }
    if let Some(sources) = answer["sources"].as_object_mut() {
        for source in sources.values_mut() {
            if let Some(s) = source.as_object_mut() {
                s.remove("elapsed_ms");
            }
        }
    }
    answer
}

#[tokio::test]
async fn a_submitted_request_completes_with_the_synchronous_answer() {
    let stack = Stack::start(&async_settings()).await;
    let (headers, accepted) = submit(&stack.gateway, "/api/orders/A1").await;
    let id = accepted["request_id"].as_str().expect("id").to_owned();
    assert_eq!(accepted["status"], "pending");
    assert_eq!(accepted["status_url"], format!("/api/requests/{id}"));
    assert_eq!(headers["location"], format!("/api/requests/{id}"));
    assert_eq!(headers["preference-applied"], "respond-async");
    assert!(headers.contains_key("retry-after"));

    let doc = until_final(&stack.gateway, &id).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["http_status"], 200);
    assert_eq!(doc["request_id"], id.as_str());
    assert_eq!(doc["client"], "");
    assert_eq!(doc["result"]["request_id"], id.as_str());
    let sync: Value = http()
        .get(stack.gateway.url("/api/orders/A1"))
        .send()
        .await
        .expect("sync")
        .json()
        .await
        .expect("json");
    assert_eq!(comparable(doc["result"].clone()), comparable(sync));

    // A failing request ends as failed, with the problem the synchronous call gives.
    let (_, accepted) = submit(&stack.gateway, "/api/orders/missing1-x").await;
    let doc = until_final(&stack.gateway, accepted["request_id"].as_str().expect("id")).await;
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["http_status"], 404);
    assert_eq!(doc["result"]["type"], "urn:busgate:problem:order-not-found");

    // Bad input is refused like a synchronous request: never a 202.
    for (path, status) in [("/api/orders/a%20b", 400), ("/nope", 404)] {
        let response = http()
            .get(stack.gateway.url(path))
            .header("prefer", "respond-async")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
    // Unknown ids are 404 problems.
    for id in ["01a20092-06fb-75cf-a84a-ff868feb3495", "not-a-uuid"] {
        let response = http()
            .get(stack.gateway.url(&format!("/api/requests/{id}")))
            .send()
            .await
            .expect("poll");
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }

    // wait=N answers synchronously when the result is ready in time.
    let response = http()
        .post(stack.gateway.url("/api/order"))
        .header("prefer", "respond-async, wait=10")
        .json(&json!({"order_id": "W1"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["service1"]["order_id"], "W1");
}

/// Reads server-sent events until the stream ends; returns (event name, data) pairs.
async fn read_events(url: &str) -> Vec<(String, Value)> {
    let response = tokio::time::timeout(Duration::from_secs(10), http().get(url).send())
        .await
        .expect("events within 10 s")
        .expect("events");
    assert_eq!(response.status(), 200);
    assert!(header(response.headers(), "content-type").starts_with("text/event-stream"));
    let text = tokio::time::timeout(Duration::from_secs(10), response.text())
        .await
        .expect("the stream ends after the final event")
        .expect("text");
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .map(str::to_owned);
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        if let (Some(name), Some(data)) = (name, data) {
            events.push((name, serde_json::from_str(data).expect("event json")));
        }
    }
    events
}

#[tokio::test]
async fn two_instances_serve_polls_and_events_of_each_others_requests() {
    let stack = Stack::start(&async_settings()).await;
    let other = Gateway::start(&stack.nats, &async_settings()).await;
    // slow2-: takes the optional timeout (800 ms), so the stream sees pending first.
    let (_, accepted) = submit(&stack.gateway, "/api/orders/slow2-sse").await;
    let id = accepted["request_id"].as_str().expect("id").to_owned();
    let events = read_events(&other.url(&format!("/api/requests/{id}/events"))).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"pending"), "{names:?}");
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    assert_eq!(events.last().expect("final").1["result"]["complete"], false);
    let doc = until_final(&other, &id).await;
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["result"]["order_id"], "slow2-sse");
}

/// A submit writes only the job (its document is written when it finishes): while it is
/// queued or running, a poll on either instance finds it pending, from the queue.
#[tokio::test]
async fn a_pending_request_is_polled_pending_on_any_instance_before_its_document_exists() {
    let stack = Stack::start(&async_settings()).await;
    let other = Gateway::start(&stack.nats, &async_settings()).await;
    // slow1-: service1 (required) waits 3 s, so the request stays pending for a while.
    let (_, accepted) = submit(&stack.gateway, "/api/orders/slow1-pending").await;
    let id = accepted["request_id"].as_str().expect("id").to_owned();
    for gateway in [&stack.gateway, &other] {
        let response = http()
            .get(gateway.url(&format!("/api/requests/{id}")))
            .send()
            .await
            .expect("poll");
        assert_eq!(response.status(), 200);
        let doc: Value = response.json().await.expect("json");
        assert_eq!(doc["status"], "pending", "{doc}");
        assert_eq!(doc["request_id"], id.as_str());
        assert_eq!(doc["order_id"], "slow1-pending");
        assert!(
            doc["submitted_at"].as_str().is_some_and(|t| !t.is_empty()),
            "{doc}"
        );
    }
    // No status document while it is pending: the one write of the submit is the job.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let results = js
        .get_key_value(busgate_shared::subject::RESULTS_BUCKET)
        .await
        .expect("bucket");
    let stored = results.get(&id).await.expect("get");
    let doc = until_final(&other, &id).await;
    assert_ne!(doc["status"], "pending");
    if let Some(stored) = stored {
        // Only if it already finished when read.
        let stored: Value = serde_json::from_slice(&stored).expect("json");
        assert_ne!(stored["status"], "pending", "{stored}");
    }
    // An unknown id is still a 404 on both.
    let unknown = "00000000-0000-4000-8000-000000000000";
    for gateway in [&stack.gateway, &other] {
        let status = get_status(&gateway.url(&format!("/api/requests/{unknown}"))).await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn a_killed_gateway_loses_no_accepted_request() {
    let stack = Stack::start(&async_settings()).await;
    let mut doomed = Gateway::start(&stack.nats, &async_settings()).await;
    let total = 500;
    // slow2- orders keep every gather in flight for 800 ms, so the kill lands mid-gather.
    let ids: Vec<String> = futures::stream::iter(0..total)
        .map(|i| {
            let url = doomed.url(&format!("/api/orders/slow2-kill-{i}"));
            async move {
                let response = http()
                    .get(url)
                    .header("prefer", "respond-async")
                    .send()
                    .await
                    .expect("submit");
                assert_eq!(response.status(), 202);
                let body: Value = response.json().await.expect("json");
                body["request_id"].as_str().expect("id").to_owned()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    doomed.proc.kill(); // SIGKILL, right after the last 202
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), total);
    let survivor = &stack.gateway;
    let docs: Vec<Value> = futures::stream::iter(ids.iter())
        .map(|id| until_final(survivor, id))
        .buffer_unordered(32)
        .collect()
        .await;
    let mut seen = HashSet::new();
    for doc in &docs {
        assert_eq!(doc["status"], "completed", "{doc}");
        let order = doc["result"]["order_id"].as_str().expect("order");
        assert!(order.starts_with("slow2-kill-"));
        assert!(seen.insert(order.to_owned()), "one result per request");
    }
    assert_eq!(seen.len(), total, "0 lost");
    // The work queue is drained: nothing is left to run twice.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    eventually(Duration::from_secs(10), || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("BUSGATE_REQUESTS").await.expect("stream");
            stream.info().await.expect("info").state.messages == 0
        }
    })
    .await;
}

#[tokio::test]
async fn completed_results_survive_a_nats_restart() {
    let nats = NatsServer::start();
    let (demo1, base1) = support::Worker::demo("service1");
    let (demo2, base2) = support::Worker::demo("service2");
    let adapters = vec![
        support::Worker::adapter(&nats, "service1", &base1),
        support::Worker::adapter(&nats, "service2", &base2),
    ];
    let gateway = Gateway::start(&nats, &async_settings()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let (_, accepted) = submit(&gateway, &format!("/api/orders/restart-{i}")).await;
        ids.push(accepted["request_id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        assert_eq!(until_final(&gateway, id).await["status"], "completed");
    }
    let (dir, port) = nats.stop();
    let nats = NatsServer::start_in(dir, port);
    // Every client reconnects by itself; the results are still there.
    for (i, id) in ids.iter().enumerate() {
        let doc = until_final(&gateway, id).await;
        assert_eq!(doc["status"], "completed");
        assert_eq!(doc["result"]["order_id"], format!("restart-{i}"));
    }
    // And new work goes through again.
    eventually(Duration::from_secs(15), || async {
        matches!(http().get(gateway.url("/api/orders/after-restart")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    drop((adapters, demo1, demo2, nats));
}

/// HMAC-SHA256 written out from its definition (RFC 2104) over SHA-256: independent of the
/// gateway's `hmac` crate.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_key: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_key: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_key)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_key)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// One callback as received: (webhook-id, webhook-timestamp, webhook-signature, body).
type Delivery = (String, String, String, String);

#[derive(Clone, Default)]
struct Receiver {
    /// Statuses to answer, in order; 200 once they run out.
    script: Arc<Mutex<Vec<u16>>>,
    /// What arrived.
    seen: Arc<Mutex<Vec<Delivery>>>,
}

async fn receiver(script: Vec<u16>) -> (Receiver, String) {
    use axum::http::{HeaderMap, StatusCode};
    let state = Receiver {
        script: Arc::new(Mutex::new(script)),
        seen: Arc::default(),
    };
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Receiver>,
                 headers: HeaderMap,
                 body: String| async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    r.seen.lock().expect("seen").push((
                        h("webhook-id"),
                        h("webhook-timestamp"),
                        h("webhook-signature"),
                        body,
                    ));
                    let mut script = r.script.lock().expect("script");
                    let status = if script.is_empty() {
                        200
                    } else {
                        script.remove(0)
                    };
                    StatusCode::from_u16(status).expect("status")
                },
            ),
        )
        .with_state(state.clone());
    let url = format!("{}/hook", serve(app).await);
    (state, url)
}

async fn submit_with_callback(
    gateway: &Gateway,
    order_id: &str,
    callback_url: &str,
) -> reqwest::Response {
    http()
        .post(gateway.url("/api/order"))
        .json(&json!({"order_id": order_id, "callback_url": callback_url}))
        .send()
        .await
        .expect("submit")
}

#[tokio::test]
async fn callbacks_are_signed_retried_with_one_id_and_stop_on_410() {
    let stack = Stack::start(&async_settings()).await;
    let (hook, url) = receiver(vec![500, 500]).await;
    let response = submit_with_callback(&stack.gateway, "C1", &url).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.expect("json")["request_id"]
        .as_str()
        .expect("id")
        .to_owned();
    eventually(Duration::from_secs(15), || {
        let n = hook.seen.lock().expect("seen").len();
        async move { n >= 3 }
    })
    .await;
    let seen = hook.seen.lock().expect("seen").clone();
    assert_eq!(
        seen.len(),
        3,
        "two failures, then delivered: no more attempts"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET_KEY_B64)
        .expect("key");
    for (webhook_id, timestamp, signature, body) in &seen {
        assert_eq!(webhook_id, &seen[0].0, "the same webhook-id on every retry");
        let signed = format!("{webhook_id}.{timestamp}.{body}");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, signed.as_bytes()));
        assert_eq!(signature, &format!("v1,{expected}"), "signature verifies");
        let doc: Value = serde_json::from_str(body).expect("body json");
        assert_eq!(doc["request_id"], id.as_str());
        assert_eq!(doc["status"], "completed");
        assert_eq!(doc["result"]["data"]["service1"]["order_id"], "C1");
    }
    eventually(Duration::from_secs(5), || {
        let (gateway, id) = (&stack.gateway, &id);
        async move {
            let doc = status_doc(gateway, id).await;
            doc["callback"]["state"] == "delivered"
                && doc["callback"]["attempts"] == 3
                && doc["callback"]["last_status"] == 200
        }
    })
    .await;

    // 410 Gone stops retrying at once.
    let (gone, gone_url) = receiver(vec![410, 500, 500]).await;
    let response = submit_with_callback(&stack.gateway, "C2", &gone_url).await;
    let id = response.json::<Value>().await.expect("json")["request_id"]
        .as_str()
        .expect("id")
        .to_owned();
    eventually(Duration::from_secs(10), || {
        let (gateway, id) = (&stack.gateway, &id);
        async move {
            let doc = status_doc(gateway, id).await;
            doc["callback"]["state"] == "gone"
        }
    })
    .await;
    // Nothing is scheduled any more: the callback work queue is empty.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    eventually(Duration::from_secs(5), || {
        let js = js.clone();
        async move {
            js.get_stream("BUSGATE_CALLBACKS")
                .await
                .expect("stream")
                .info()
                .await
                .expect("info")
                .state
                .messages
                == 0
        }
    })
    .await;
    assert_eq!(gone.seen.lock().expect("seen").len(), 1);
}

#[tokio::test]
async fn callbacks_to_special_addresses_are_refused_and_never_called() {
    let no_allow = Settings::default().callbacks(Callbacks::signed(&secret()));
    let stack = Stack::start(&no_allow).await;
    // A listener that must never see a connection.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = trap.local_addr().expect("addr").port();
    let urls = [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://127.1:{port}/x"),
        format!("http://0x7f000001:{port}/x"),
        format!("http://[::1]:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/x".to_owned(),
        format!("http://localhost:{port}/x"),
    ];
    for url in &urls {
        let response = submit_with_callback(&stack.gateway, "S1", url).await;
        assert_eq!(response.status(), 400, "{url}");
        let problem: Value = response.json().await.expect("json");
        assert_eq!(
            problem["type"], "urn:busgate:problem:callback-refused",
            "{url}"
        );
    }
    let accepted = tokio::time::timeout(Duration::from_millis(200), trap.accept()).await;
    assert!(
        accepted.is_err(),
        "no connection is made to a refused callback"
    );
    // And nothing was queued.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut stream = js.get_stream("BUSGATE_REQUESTS").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.last_sequence, 0);
}

#[tokio::test]
async fn an_idempotency_key_maps_to_one_request() {
    let stack = Stack::start(&async_settings()).await;
    let send = |order: &'static str, key: &'static str| {
        let url = stack.gateway.url("/api/order");
        async move {
            http()
                .post(url)
                .header("prefer", "respond-async")
                .header("idempotency-key", key)
                .json(&json!({"order_id": order}))
                .send()
                .await
                .expect("send")
        }
    };
    let first = send("I1", "key-1").await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");
    let again = send("I1", "key-1").await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.expect("json");
    assert_eq!(first["request_id"], again["request_id"]);
    let other = send("I2", "key-1").await;
    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.expect("json");
    assert_eq!(
        problem["type"],
        "urn:busgate:problem:idempotency-key-reused"
    );
    // One request was published, not two.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut stream = js.get_stream("BUSGATE_REQUESTS").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.last_sequence, 1);
    let doc = until_final(&stack.gateway, first["request_id"].as_str().expect("id")).await;
    assert_eq!(doc["result"]["order_id"], "I1");
}

/// A full work queue refuses a submit with 503 `queue-full` and `Retry-After`, leaving no
/// document behind, while synchronous requests keep answering. The queue holds 2 requests and
/// the instance runs 1 at a time; the `hold` service is a subscriber that never answers, so
/// each request on it stays queued until its 20 s deadline.
#[tokio::test]
async fn a_full_queue_refuses_submits_and_synchronous_requests_keep_answering() {
    let nats = NatsServer::start();
    let hold = Duration::from_secs(20);
    let settings = Settings::builtin()
        .jobs_concurrency(1)
        .jobs_requests_max_msgs(2)
        .service("hold", hold)
        .route(
            "hold",
            Route::get("/api/hold/{order_id}")
                .deadline(hold)
                .target("hold"),
        );
    let _silent = nats.silent("hold").await;
    let _worker = support::Worker::native(&nats, "service1");
    let gateway = Gateway::start(&nats, &settings).await;

    // A request stays in the queue until it is processed (the running one too): the third
    // submit finds the queue of 2 full.
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..6 {
        let response = http()
            .get(gateway.url(&format!("/api/hold/H{i}")))
            .header("prefer", "respond-async")
            .send()
            .await
            .expect("submit");
        match response.status().as_u16() {
            202 => accepted.push(response.json::<Value>().await.expect("json")),
            503 => {
                let retry_after = response.headers().get("retry-after").cloned();
                let id = response.headers().get("busgate-request-id").cloned();
                let body: Value = response.json().await.expect("json");
                refused = Some((retry_after, id, body));
                break;
            }
            other => panic!("submit {i}: {other}"),
        }
    }
    let (retry_after, id, body) = refused.expect("a full queue refuses a submit");
    assert_eq!(accepted.len(), 2, "the queue holds 2: {accepted:?}");
    assert_eq!(body["type"], "urn:busgate:problem:queue-full", "{body}");
    assert_eq!(body["status"], 503);
    assert!(retry_after.is_some(), "Retry-After on queue-full");
    // The refused request left no document: polling its id finds nothing.
    let id = id.expect("the refused answer names its request id");
    let poll = http()
        .get(gateway.url(&format!("/api/requests/{}", id.to_str().expect("ascii"))))
        .send()
        .await
        .expect("poll");
    assert_eq!(
        poll.status(),
        404,
        "a refused request has no status document"
    );
    // Synchronous requests do not use the queue: they keep answering.
    assert_eq!(get_status(&gateway.url("/api/orders/A1")).await, 200);
}
