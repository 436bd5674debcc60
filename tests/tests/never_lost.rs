//! End-to-end: accepted asynchronous work is never lost. Each test leaves, with the real
//! server, the state a failure leaves (a worker missing, a gateway that died between two
//! writes, a document gone) and checks that the gateway finishes the work, or ends it once
//! with an error, rather than failing it, dropping it or retrying it forever.

use busgate_tests::fixture::{Callbacks, Route, Settings};
use busgate_tests::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use busgate_shared::subject;
use busgate_tests::jobs::FINAL_WITHIN;
use support::{
    eventually, http, serve, status_doc, submit, until_final, Gateway, NatsServer, Stack, Worker,
};

/// A request id of the shape the gateway makes (a UUID), for planted state.
const PLANTED_ID: &str = "01a20092-06fb-75cf-a84a-ff868feb3495";

/// Fast redelivery, as in the other asynchronous tests.
fn settings() -> Settings {
    Settings::builtin().jobs_ack_wait(Duration::from_secs(2))
}

/// The messages a stream holds.
async fn stream_messages(nats: &NatsServer, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("info").state.messages
}

/// Publishes a job to the work queue as a gateway's submit does.
async fn plant_job(nats: &NatsServer, job: Value) {
    let js = async_nats::jetstream::new(nats.client().await);
    let id = job["request_id"].as_str().expect("id").to_owned();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    js.publish_with_headers(
        subject::request_job(&id),
        headers,
        serde_json::to_vec(&job).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
}

/// Demo services and their adapters on `nats`.
fn workers(nats: &NatsServer) -> (Vec<(support::Proc, String)>, Vec<support::Proc>) {
    let demos = vec![Worker::demo("service1"), Worker::demo("service2")];
    let adapters = vec![
        Worker::adapter(nats, "service1", &demos[0].1),
        Worker::adapter(nats, "service2", &demos[1].1),
    ];
    (demos, adapters)
}

/// A request accepted while its service has no worker (what a worker reconnecting to another
/// node looks like) is retried until one comes, not stored as a 503; one whose service never
/// comes ends as failed after `max_deliver` deliveries, not in an endless loop.
#[tokio::test]
async fn a_request_without_responders_waits_for_a_worker_instead_of_failing() {
    let nats = NatsServer::start();
    let settings = settings()
        .jobs_max_deliver(4)
        .service("ghost", Duration::from_millis(300))
        .route("ghost", Route::get("/api/ghost/{order_id}").target("ghost"));
    let gateway = Gateway::start(&nats, &settings).await;
    let waiting = submit(&gateway, "/api/orders/R1").await;
    let ghost = submit(&gateway, "/api/ghost/G1").await;
    gateway.proc.wait_for(Duration::from_secs(10), |line| {
        (line.contains("failed transiently") && line.contains(&waiting)).then_some(())
    });
    let (_demos, _adapters) = workers(&nats);
    let doc = until_final(&gateway, &waiting, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["result"]["data"]["service1"]["order_id"], "R1");
    // Deliveries 1 to 3 retried after 1, 2 and 4 s; the 4th is final.
    let doc = until_final(&gateway, &ghost, Duration::from_secs(20)).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["http_status"], 503);
    let retries = gateway
        .proc
        .lines()
        .iter()
        .filter(|l| l.contains("failed transiently") && l.contains(&ghost))
        .count();
    assert_eq!(retries, 3, "retried until max_deliver, then final");
    eventually(Duration::from_secs(5), || async {
        stream_messages(&nats, subject::REQUESTS_STREAM).await == 0
    })
    .await;
}

/// A gateway that stored a result and died before scheduling its callback leaves the job
/// unacked with a final document whose callback was never attempted: the redelivery
/// schedules it, and the receiver gets it once.
#[tokio::test]
async fn a_redelivered_finished_request_schedules_its_pending_callback() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let settings = settings().callbacks(
        Callbacks::signed(secret)
            .retry(&[Duration::from_millis(100); 3])
            .timeout(Duration::from_secs(2))
            .allow("127.0.0.0/8"),
    );
    let stack = Stack::start(&settings).await;
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<Value>>>>,
                 body: String| async move {
                    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    seen.lock().expect("seen").push(doc);
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(seen.clone());
    let hook = format!("{}/hook", serve(app).await);

    let client = stack.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let results = js
        .get_key_value(subject::RESULTS_BUCKET)
        .await
        .expect("bucket");
    let doc = json!({
        "request_id": PLANTED_ID, "status": "completed", "http_status": 200,
        "result": {"request_id": PLANTED_ID, "order_id": "CB1", "complete": true, "data": {}},
        "route": "order", "order_id": "CB1", "client": "",
        "submitted_at": "2026-01-01T00:00:00.000Z", "completed_at": "2026-01-01T00:00:01.000Z",
        "callback": {"url": hook, "state": "pending", "attempts": 0}
    });
    results
        .put(PLANTED_ID, serde_json::to_vec(&doc).expect("json").into())
        .await
        .expect("put");
    plant_job(
        &stack.nats,
        json!({"request_id": PLANTED_ID, "route": "order", "order_id": "CB1", "client": "",
               "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
               "callback_url": hook}),
    )
    .await;
    eventually(Duration::from_secs(10), || {
        let n = seen.lock().expect("seen").len();
        async move { n >= 1 }
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        let doc: Value = http()
            .get(stack.gateway.url(&format!("/api/requests/{PLANTED_ID}")))
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("json");
        doc["callback"]["state"] == "delivered"
            && stream_messages(&stack.nats, subject::REQUESTS_STREAM).await == 0
            && stream_messages(&stack.nats, subject::CALLBACKS_STREAM).await == 0
    })
    .await;
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1, "exactly one delivery: {seen:?}");
    assert_eq!(seen[0]["request_id"], PLANTED_ID);
    assert_eq!(seen[0]["result"]["order_id"], "CB1");
}

/// A submit's one durable write is the job: a queued job without a status document (the
/// rule now, and the case of a document that expired) runs, and its document is written when
/// it finishes, before the message leaves the queue. Jobs of earlier gateways (on the old
/// single subject) run too.
#[tokio::test]
async fn a_queued_job_without_a_status_document_runs_and_its_document_is_written_at_the_end() {
    let stack = Stack::start(&settings()).await;
    plant_job(
        &stack.nats,
        json!({"request_id": PLANTED_ID, "route": "order", "order_id": "D1", "client": "",
               "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
    )
    .await;
    let doc = until_final(&stack.gateway, PLANTED_ID, FINAL_WITHIN).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["result"]["order_id"], "D1");
    eventually(Duration::from_secs(5), || async {
        stream_messages(&stack.nats, subject::REQUESTS_STREAM).await == 0
    })
    .await;
    // An earlier gateway's job, on the old subject, with no document either.
    let old_id = "01a20092-06fb-75cf-a84a-ff868feb3496";
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", old_id);
    let job = json!({"request_id": old_id, "route": "order", "order_id": "D2", "client": "",
                     "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"});
    js.publish_with_headers(
        subject::REQUESTS_SUBJECT,
        headers,
        serde_json::to_vec(&job).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let doc = until_final(&stack.gateway, old_id, FINAL_WITHIN).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["result"]["order_id"], "D2");
}

/// An idempotency key claimed by a submit that died before queueing its request (its
/// gateway, or its connection to NATS) never names a request that is not queued: a repeat
/// within the grace is told to retry (503, `Retry-After`), a repeat after it queues the
/// request under the id the key names, and later repeats get that id.
#[tokio::test]
async fn an_idempotency_key_left_by_a_dead_submit_is_resumed_not_dangling() {
    let stack = Stack::start(&settings()).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let keys = js
        .get_key_value(subject::IDEMPOTENCY_BUCKET)
        .await
        .expect("bucket");
    let body = json!({"order_id": "K1"}).to_string();
    let fingerprint = hex::encode(Sha256::digest(
        format!("POST\0/api/order\0{body}").as_bytes(),
    ));
    let plant = |key: &str, claimed_ms: u64| {
        let keys = keys.clone();
        let hashed = hex::encode(Sha256::digest(format!("\0{key}").as_bytes()));
        let record = json!({"request_id": PLANTED_ID, "fingerprint": fingerprint,
                            "queued": false, "claimed_ms": claimed_ms});
        async move {
            keys.put(hashed, serde_json::to_vec(&record).expect("json").into())
                .await
                .expect("put");
        }
    };
    let send = |key: &'static str| {
        let (url, body) = (stack.gateway.url("/api/order"), body.clone());
        async move {
            http()
                .post(url)
                .header("prefer", "respond-async")
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .expect("send")
        }
    };
    // A claim made just now: its submit may still be under way.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    plant("fresh-key", now_ms).await;
    let response = send("fresh-key").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // A claim its submit never confirmed, long ago: nothing was queued under it.
    plant("dead-key", 0).await;
    let response = send("dead-key").await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("json");
    assert_eq!(accepted["request_id"], PLANTED_ID, "the id the key names");
    let doc = until_final(&stack.gateway, PLANTED_ID, Duration::from_secs(15)).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["result"]["order_id"], "K1");
    // Confirmed now: a repeat gets the same id and queues nothing more.
    let again = send("dead-key").await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["request_id"], PLANTED_ID);
    let mut stream = js
        .get_stream(subject::REQUESTS_STREAM)
        .await
        .expect("stream");
    assert_eq!(stream.info().await.expect("info").state.last_sequence, 1);
}

/// A stopping gateway holds no request it has not started: one that is busy (concurrency 2,
/// both slots on a service that never answers) does not take the next request, so another
/// instance runs it at once, not after `ack_wait` (30 s here). (Before, its pull had the
/// next request delivered already, and held it unacked until `ack_wait` after the stop.)
#[tokio::test]
async fn a_stopping_gateway_hands_back_requests_it_has_not_started() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let mut hold = client
        .queue_subscribe(subject::service("hold"), subject::queue_group("hold"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let (_demos, _adapters) = workers(&nats);
    let settings = Settings::builtin()
        .jobs_ack_wait(Duration::from_secs(30))
        .jobs_concurrency(2)
        .service("hold", Duration::from_secs(3))
        .route(
            "hold",
            Route::get("/api/hold/{order_id}")
                .deadline(Duration::from_secs(3))
                .target("hold"),
        );
    let mut busy = Gateway::start(&nats, &settings).await;
    for held in ["H1", "H2"] {
        submit(&busy, &format!("/api/hold/{held}")).await;
        // The busy gateway has started it: its request reached the (silent) service.
        let started =
            tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut hold))
                .await
                .expect("the held request is started");
        assert!(started.is_some());
    }
    let next = submit(&busy, "/api/orders/N1").await;
    // Not a synchronisation: a margin for a negative. A pull out for more than the busy
    // gateway can start (the old processor had one) would bring this request within it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let code = busy.proc.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let other = Gateway::start(&nats, &settings).await;
    let doc = until_final(&other, &next, Duration::from_secs(10)).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["result"]["data"]["service1"]["order_id"], "N1");
}

/// The pulls of the processor and the callback deliverer survive their consumers going away
/// under them: the pulls out fail ("Consumer Deleted", then "no responders"), and the gateway
/// finds (makes) its consumers again and goes on, rather than stopping for its life or until
/// a client library's heartbeat timer (30 s). Both consumers are deleted after a first request
/// went through; a second one submitted after it still completes and its callback arrives,
/// once each, within bounds.
#[tokio::test]
async fn the_processor_and_the_deliverer_pull_again_when_their_consumers_go_away() {
    let settings = settings().callbacks(
        Callbacks::signed("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .retry(&[Duration::from_millis(100); 3])
            .timeout(Duration::from_secs(2))
            .allow("127.0.0.0/8"),
    );
    let stack = Stack::start(&settings).await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<String>>>>,
                 body: String| async move {
                    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let id = doc["request_id"].as_str().unwrap_or("").to_owned();
                    seen.lock().expect("seen").push(id);
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(seen.clone());
    let hook = format!("{}/hook", serve(app).await);
    let submit_with_callback = |order: &'static str| {
        let (gateway, hook) = (&stack.gateway, hook.clone());
        async move {
            let (_, body) = busgate_tests::jobs::submit_request(
                http()
                    .post(gateway.url("/api/order"))
                    .json(&json!({"order_id": order, "callback_url": hook})),
            )
            .await;
            busgate_tests::jobs::request_id(&body)
        }
    };
    // Delivered within `within`: completed, its callback received and recorded as delivered.
    let delivered = |id: String, within: Duration| {
        let (gateway, seen) = (&stack.gateway, seen.clone());
        async move {
            let doc = until_final(gateway, &id, within).await;
            assert_eq!(doc["status"], "completed", "{doc}");
            eventually(within, || async {
                let doc: Value = http()
                    .get(gateway.url(&format!("/api/requests/{id}")))
                    .send()
                    .await
                    .expect("poll")
                    .json()
                    .await
                    .expect("json");
                doc["callback"]["state"] == "delivered"
            })
            .await;
            let times = seen
                .lock()
                .expect("seen")
                .iter()
                .filter(|s| **s == id)
                .count();
            assert_eq!(times, 1, "one delivery of {id}");
        }
    };
    let first = submit_with_callback("GONE1").await;
    delivered(first, Duration::from_secs(10)).await;

    let js = async_nats::jetstream::new(stack.nats.client().await);
    for (stream, consumer) in [
        (subject::REQUESTS_STREAM, subject::REQUESTS_CONSUMER),
        (subject::CALLBACKS_STREAM, subject::CALLBACKS_CONSUMER),
    ] {
        js.get_stream(stream)
            .await
            .expect("stream")
            .delete_consumer(consumer)
            .await
            .expect("delete the consumer");
    }
    // Well under the 30 s a stalled `messages()` stream took to notice, and bounded.
    let second = submit_with_callback("GONE2").await;
    let started = std::time::Instant::now();
    delivered(second, Duration::from_secs(15)).await;
    println!(
        "after the consumers were deleted: completed and called back in {:?}",
        started.elapsed()
    );
    assert!(
        stack.gateway.proc.logged("a pull failed, pulling again"),
        "the failed pulls were noticed"
    );
    for stream in [subject::REQUESTS_STREAM, subject::CALLBACKS_STREAM] {
        eventually(Duration::from_secs(10), || async {
            stream_messages(&stack.nats, stream).await == 0
        })
        .await;
    }
}

/// A results bucket that cannot take the documents of more requests refuses submits (503
/// `queue-full`, `Retry-After`) instead of accepting work that could never finish, and every
/// request it accepted completes. Without the check, every submit was accepted and the ones
/// past the bucket's size stayed pending for the documents' lifetime (a day by default).
#[tokio::test]
async fn a_full_results_bucket_refuses_submits_and_every_accepted_request_completes() {
    let stack = Stack::start(&settings().jobs_results_max_bytes(16 * 1024)).await;
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let response = http()
            .get(stack.gateway.url(&format!("/api/orders/F{i}")))
            .header("prefer", "respond-async")
            .send()
            .await
            .expect("submit");
        match response.status().as_u16() {
            202 => {
                let body: Value = response.json().await.expect("json");
                accepted.push(busgate_tests::jobs::request_id(&body));
            }
            503 => {
                let retry_after = response.headers().get("retry-after").cloned();
                refused = Some((retry_after, response.json::<Value>().await.expect("json")));
                break;
            }
            other => panic!("submit {i}: {other}"),
        }
    }
    let (retry_after, body) = refused.expect("a full results bucket refuses a submit");
    assert_eq!(body["type"], "urn:busgate:problem:queue-full", "{body}");
    assert!(retry_after.is_some(), "Retry-After on queue-full");
    assert!(accepted.len() >= 5, "{} accepted", accepted.len());
    for id in &accepted {
        let doc = until_final(&stack.gateway, id, FINAL_WITHIN).await;
        assert_eq!(doc["status"], "completed", "{doc}");
    }
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut bucket = js
        .get_stream(format!("KV_{}", subject::RESULTS_BUCKET))
        .await
        .expect("bucket");
    let state = bucket.info().await.expect("info").state.clone();
    assert_eq!(state.messages, accepted.len() as u64, "one document each");
    assert!(state.bytes <= 16 * 1024);
}

/// A result that does not fit in a full results bucket is held, its message kept alive, and
/// written once there is room: the request is neither run again nor ended as failed. The
/// test fills the bucket while the request's upstream call waits for it, then lets the call
/// answer, then empties the bucket of its filler.
#[tokio::test]
async fn a_result_that_does_not_fit_is_held_and_written_once_there_is_room() {
    let nats = NatsServer::start();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = axum::Router::new().route(
        "/order/{order_id}",
        axum::routing::get({
            let (calls, release) = (calls.clone(), release.clone());
            move |axum::extract::Path(order_id): axum::extract::Path<String>| async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = started_tx.send(());
                let _ = release.acquire().await.map(|p| p.forget());
                axum::Json(json!({"order_id": order_id, "held": true}))
            }
        }),
    );
    let upstream = serve(app).await;
    let _adapter = Worker::adapter(&nats, "held", &upstream);
    let settings = settings()
        .jobs_results_max_bytes(16 * 1024)
        .service("held", Duration::from_secs(20))
        .route(
            "held",
            Route::get("/api/held/{order_id}")
                .deadline(Duration::from_secs(20))
                .target("held"),
        );
    let gateway = Gateway::start(&nats, &settings).await;
    let id = submit(&gateway, "/api/held/FULL1").await;
    tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("the upstream is called");
    let js = async_nats::jetstream::new(nats.client().await);
    let results = js
        .get_key_value(subject::RESULTS_BUCKET)
        .await
        .expect("bucket");
    let mut filled = 0;
    while results
        .put(format!("filler.{filled}"), vec![b'x'; 1000].into())
        .await
        .is_ok()
    {
        filled += 1;
        assert!(filled < 64, "a 16 KiB bucket refuses a 64th kilobyte");
    }
    release.add_permits(1);
    // Not a synchronisation: a margin for a negative. The result cannot be written; past a
    // redelivery's first delay (1 s) and the 2 s ack wait, the request is still pending and
    // its upstream was called once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_doc(&gateway, &id).await["status"], "pending");
    let bucket = js
        .get_stream(format!("KV_{}", subject::RESULTS_BUCKET))
        .await
        .expect("bucket");
    bucket
        .purge()
        .filter(format!("$KV.{}.filler.>", subject::RESULTS_BUCKET))
        .await
        .expect("purge the filler");
    let doc = until_final(&gateway, &id, Duration::from_secs(10)).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["result"]["data"]["held"]["held"], true, "{doc}");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one gather"
    );
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(subject::REQUESTS_STREAM)
        .await
        .expect("stream")
        .get_consumer(subject::REQUESTS_CONSUMER)
        .await
        .expect("consumer");
    let info = consumer.cached_info();
    assert_eq!(info.num_redelivered, 0, "held, not handed back: {info:?}");
}
