//! Asynchronous requests as a client makes them: submit one (`Prefer: respond-async`, 202),
//! then poll its status document until it is final, bounded.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::gateway::Gateway;
use crate::http::http;

/// How long [`until_final`] waits unless told otherwise.
pub const FINAL_WITHIN: Duration = Duration::from_secs(30);

/// Sends `request` with `Prefer: respond-async`; asserts 202; returns the headers and body.
pub async fn submit_request(request: reqwest::RequestBuilder) -> (HeaderMap, Value) {
    let response = request
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("submit");
    let status = response.status();
    let headers = response.headers().clone();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 202, "{body}");
    (headers, body)
}

/// Submits `GET path` anonymously; returns the request id.
pub async fn submit(gateway: &Gateway, path: &str) -> String {
    let (_, body) = submit_request(http().get(gateway.url(path))).await;
    request_id(&body)
}

/// The `request_id` of a 202's body.
pub fn request_id(body: &Value) -> String {
    body["request_id"].as_str().expect("request id").to_owned()
}

/// The status document of a request, as a poll returns it.
pub async fn status_doc(gateway: &Gateway, request_id: &str) -> Value {
    http()
        .get(gateway.url(&format!("/api/requests/{request_id}")))
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("json")
}

/// Polls the request until it is final, at most `within`: `Ok` with its status document, or
/// `Err` with the last one seen (`Null` if none) when it never was. Connection errors (a
/// gateway restarting) are polled through.
pub async fn poll_final(
    gateway: &Gateway,
    request_id: &str,
    within: Duration,
) -> Result<Value, Value> {
    let url = gateway.url(&format!("/api/requests/{request_id}"));
    let until = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < until {
        if let Ok(response) = http().get(&url).send().await {
            if response.status() == 200 {
                if let Ok(doc) = response.json::<Value>().await {
                    if doc["status"] != "pending" {
                        return Ok(doc);
                    }
                    last = doc;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// [`poll_final`], panicking when the request is not final within `within`.
pub async fn until_final(gateway: &Gateway, request_id: &str, within: Duration) -> Value {
    poll_final(gateway, request_id, within)
        .await
        .unwrap_or_else(|last| panic!("{request_id} not final within {within:?}: {last}"))
}
