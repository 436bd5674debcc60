//! The one HTTP client helper of the tests, and the few shapes every scenario uses with it:
//! a body as JSON or text, a header as text, and a tiny HTTP server of the test's own.
//!
//! A new `reqwest` client each call: a client's pooled connections belong to the runtime that
//! opened them, and every `#[tokio::test]` has its own.

use reqwest::header::HeaderMap;
use serde_json::Value;

/// An HTTP client for one test's requests.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// `GET url`'s body as text.
pub async fn get_text(url: &str) -> String {
    http()
        .get(url)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text")
}

/// `GET url`'s body as JSON.
pub async fn get_json(url: &str) -> Value {
    serde_json::from_str(&get_text(url).await).expect("json")
}

/// `GET url`'s status code.
pub async fn get_status(url: &str) -> u16 {
    http().get(url).send().await.expect("get").status().as_u16()
}

/// A header's value as text (empty when it is absent or not text).
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Serves `app` on a free port of 127.0.0.1 for as long as the test's runtime runs; returns its
/// base URL (`http://127.0.0.1:<port>`).
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a test server");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}
