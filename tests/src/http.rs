//! The one HTTP client helper of the tests. A new `reqwest` client each call: a client's pooled
//! connections belong to the runtime that opened them, and every `#[tokio::test]` has its own.

/// An HTTP client for one test's requests.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}
