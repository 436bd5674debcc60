//! The service SDK against a real nats-server.

use std::time::Duration;

use busgate_shared::envelope::{Reply, ServiceRequest};
use busgate_shared::{sdk, subject};
use busgate_tests::support::{eventually, NatsServer};
use serde_json::{json, Value};

async fn ask(client: &async_nats::Client, order_id: &str) -> Option<Value> {
    let payload =
        json!({"request_id": "r", "order_id": order_id, "operation": "get", "attributes": {}});
    let asked = client.request(subject::service("panicky"), payload.to_string().into());
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
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let client = client.clone();
        async move {
            let handler = |req: ServiceRequest, _ctx| async move {
                if req.order_id.starts_with("later") {
                    // Not ready at the first poll: the rest runs on a task of its own.
                    tokio::task::yield_now().await;
                }
                assert!(!req.order_id.ends_with("boom"), "the handler fails");
                Reply::ok(&json!({"order_id": req.order_id})).expect("json")
            };
            let stopped = async {
                let _ = stopped.await;
            };
            sdk::serve(&client, sdk::ServeOptions::new("panicky"), handler, stopped).await
        }
    });
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
    stop.send(()).expect("still serving");
    let ended = tokio::time::timeout(Duration::from_secs(15), serving).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "serve ends cleanly: {ended:?}"
    );
}
