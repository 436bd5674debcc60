//! The service SDK against a real nats-server.

use std::time::Duration;

use busgate_shared::envelope::{Reply, ServiceRequest};
use busgate_shared::{sdk, subject};
use busgate_tests::support::{eventually, NatsServer};
use futures::StreamExt;
use serde_json::{json, Value};

/// A service request payload for `order_id`.
fn request(order_id: &str) -> String {
    json!({"request_id": "r", "order_id": order_id, "operation": "get", "attributes": {}})
        .to_string()
}

/// A service served by the SDK on a task of its own, until [`Serving::stop`].
struct Serving {
    stop: busgate_shared::drain::Signal,
    task: tokio::task::JoinHandle<Result<(), busgate_shared::Error>>,
}

impl Serving {
    fn start<H, Fut>(
        nats: &busgate_shared::wire::Connection,
        options: sdk::ServeOptions,
        handler: H,
    ) -> Self
    where
        H: Fn(ServiceRequest, sdk::RequestContext) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Reply> + Send + 'static,
    {
        let (stop, drain) = busgate_shared::drain::channel();
        let nats = nats.clone();
        let task = tokio::spawn(async move { sdk::serve(&nats, options, handler, drain).await });
        Serving { stop, task }
    }

    /// Stops the service and asserts that `serve` ends cleanly within 15 s.
    async fn stop(self) {
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            self.stop.drain().await;
            self.task.await
        })
        .await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "serve ends cleanly: {ended:?}"
        );
    }
}

async fn ask(client: &async_nats::Client, order_id: &str) -> Option<Value> {
    let asked = client.request(subject::service("panicky"), request(order_id).into());
    match tokio::time::timeout(Duration::from_millis(500), asked).await {
        Ok(Ok(reply)) if reply.status.is_none() => serde_json::from_slice(&reply.payload).ok(),
        _ => None,
    }
}

/// A handler that panics, whether in place (its first poll) or on its own task (after
/// waiting), loses its request; the service keeps answering the next ones.
#[tokio::test]
async fn a_panicking_handler_loses_its_request_not_the_service() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let handler = |req: ServiceRequest, _ctx| async move {
        if req.order_id.starts_with("later") {
            // Not ready at the first poll: the rest runs on a task of its own.
            tokio::task::yield_now().await;
        }
        assert!(!req.order_id.ends_with("boom"), "the handler fails");
        Reply::ok(&json!({"order_id": req.order_id})).expect("json")
    };
    let serving = Serving::start(&nats.wire(), sdk::ServeOptions::new("panicky"), handler);
    eventually(Duration::from_secs(10), || async {
        ask(&client, "first").await.is_some()
    })
    .await;
    for order_id in ["boom", "later-boom"] {
        assert_eq!(
            ask(&client, order_id).await,
            None,
            "{order_id} has no reply"
        );
    }
    for order_id in ["after", "later-after"] {
        let reply = ask(&client, order_id)
            .await
            .expect("the service still answers");
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(reply["data"]["order_id"], order_id, "{reply}");
    }
    serving.stop().await;
}

/// The SDK answers the NATS service API itself: `$SRV.PING|INFO|STATS` by name and by id,
/// with replies and error replies counted, and nothing answers once `serve` has returned.
#[tokio::test]
async fn the_service_api_counts_replies_and_errors_and_stops_with_the_service() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let handler = |req: ServiceRequest, _ctx| async move {
        if req.order_id.starts_with("fail") {
            Reply::error("internal", "no luck")
        } else {
            Reply::ok(&json!({"order_id": req.order_id})).expect("json")
        }
    };
    let mut options = sdk::ServeOptions::new("counted");
    options.description = "counts".into();
    options.metadata.insert("kind".into(), "native".into());
    let serving = Serving::start(&nats.wire(), options, handler);
    let api = |subject: String| {
        let client = client.clone();
        async move {
            let asked = client.request(subject, "".into());
            match tokio::time::timeout(Duration::from_secs(2), asked).await {
                Ok(Ok(reply)) if reply.status.is_none() => {
                    serde_json::from_slice::<Value>(&reply.payload).ok()
                }
                _ => None,
            }
        }
    };
    eventually(Duration::from_secs(10), || async {
        api("$SRV.PING.counted".into()).await.is_some()
    })
    .await;
    for order_id in ["one", "fail-two", "three"] {
        let reply = client
            .request(subject::service("counted"), request(order_id).into())
            .await
            .expect("a reply");
        let reply: Value = serde_json::from_slice(&reply.payload).expect("json");
        assert_eq!(reply["service"], "counted");
    }

    let ping = api("$SRV.PING".into()).await.expect("ping");
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["name"], "counted");
    let id = ping["id"].as_str().expect("id").to_owned();
    let info = api(format!("$SRV.INFO.counted.{id}"))
        .await
        .expect("info by id");
    assert_eq!(info["description"], "counts");
    assert_eq!(info["metadata"]["kind"], "native");
    assert_eq!(info["endpoints"][0]["subject"], "busgate.svc.counted");
    assert_eq!(info["endpoints"][0]["queue_group"], "busgate.counted");
    let stats = api("$SRV.STATS.counted".into()).await.expect("stats");
    let endpoint = &stats["endpoints"][0];
    assert_eq!(endpoint["num_requests"], 3, "{stats}");
    assert_eq!(endpoint["num_errors"], 1, "{stats}");
    assert_eq!(endpoint["last_error"], "internal: no luck", "{stats}");
    assert!(
        endpoint["average_processing_time"].as_u64().is_some(),
        "{stats}"
    );
    assert!(
        stats["started"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{stats}"
    );
    assert_eq!(api("$SRV.STATS.other".into()).await, None, "another name");

    serving.stop().await;
    let asked = client.request("$SRV.PING.counted", "".into()).await;
    assert!(
        matches!(&asked, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "nothing answers once stopped: {asked:?}"
    );
}

/// A service stopped with one request in flight and two waiting for a permit (concurrency 1)
/// answers all three before `serve` returns; nothing is lost and nothing answers afterwards.
#[tokio::test]
async fn a_stopped_service_answers_what_it_had_received() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let wire = nats.wire();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<String>();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let opened = gate.clone();
    let handler = move |req: ServiceRequest, _ctx| {
        let _ = started_tx.send(req.order_id.clone());
        let gate = opened.clone();
        async move {
            if req.order_id == "first" {
                gate.notified().await;
            }
            Reply::ok(&json!({"order_id": req.order_id})).expect("json")
        }
    };
    let mut options = sdk::ServeOptions::new("draining");
    options.concurrency = 1;
    let serving = Serving::start(&wire, options, handler);
    let mut replies = client.subscribe("replies.>").await.expect("sub");
    eventually(Duration::from_secs(10), || async {
        let asked = client.request(subject::service("draining"), request("probe").into());
        matches!(tokio::time::timeout(Duration::from_secs(1), asked).await, Ok(Ok(r)) if r.status.is_none())
    })
    .await;
    let within = Duration::from_secs(5);
    // Drain what the probes started.
    while let Ok(Some(order_id)) =
        tokio::time::timeout(Duration::from_millis(1), started.recv()).await
    {
        assert_eq!(order_id, "probe");
    }
    let ask = |order_id: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish_with_reply(
                    subject::service("draining"),
                    format!("replies.{order_id}"),
                    request(order_id).into(),
                )
                .await
                .expect("publish");
        }
    };
    ask("first").await;
    let first = tokio::time::timeout(within, started.recv())
        .await
        .expect("in time");
    assert_eq!(first.as_deref(), Some("first"));
    // The marker comes on the service's own connection after both requests: once it is here,
    // both have been received and wait for the one permit.
    let (marker_tx, mut marker) = tokio::sync::mpsc::unbounded_channel();
    let _marker = wire
        .subscribe("marker", None, move |_| {
            let _ = marker_tx.send(());
        })
        .expect("subscribe");
    wire.flush(within).await.expect("flush");
    ask("second").await;
    ask("third").await;
    client.publish("marker", "".into()).await.expect("publish");
    tokio::time::timeout(within, marker.recv())
        .await
        .expect("marker in time");

    let stopped = tokio::spawn(serving.stop());
    // Stop has begun (nothing new is taken); the request in flight may finish now.
    eventually(within, || {
        let client = client.clone();
        async move {
            let asked = client.request(subject::service("draining"), request("late").into());
            matches!(
                tokio::time::timeout(Duration::from_millis(500), asked).await,
                Ok(Err(_))
            )
        }
    })
    .await;
    gate.notify_one();
    let mut answered = Vec::new();
    for _ in 0..3 {
        let reply = tokio::time::timeout(within, replies.next())
            .await
            .expect("every received request is answered")
            .expect("reply");
        let body: Value = serde_json::from_slice(&reply.payload).expect("json");
        assert_eq!(body["status"], "ok", "{body}");
        answered.push(reply.subject.to_string());
    }
    answered.sort();
    assert_eq!(
        answered,
        ["replies.first", "replies.second", "replies.third"]
    );
    stopped.await.expect("stop task");
}
