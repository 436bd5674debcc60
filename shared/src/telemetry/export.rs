//! The exporter's HTTP client: the workspace's async reqwest, run on the process's tokio
//! runtime (the SDK's batch thread only waits for it), and the one warning an unreachable
//! collector is worth: the first failed export says so, the next ones say nothing until one
//! succeeds again (then one line says that too).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// The most of a collector's answer that is read (an OTLP answer is a few bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Sends export requests through reqwest on the tokio runtime it was made on.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// The endpoint without credentials, for the log.
    endpoint: String,
    /// Whether the last export failed: the warning is written on the change only.
    failing: AtomicBool,
}

impl Client {
    /// A client whose exports give up after `timeout`. Needs a tokio runtime.
    pub fn new(timeout: Duration, endpoint: &str) -> Result<Self, crate::Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            crate::Error::invalid("telemetry", "traces need a tokio runtime to export on")
        })?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| crate::Error::invalid("telemetry.otlp_endpoint", e.to_string()))?;
        Ok(Client {
            http,
            runtime,
            endpoint: redact(endpoint),
            failing: AtomicBool::new(false),
        })
    }

    fn failed(&self, why: &str) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                endpoint = %self.endpoint,
                error = why,
                "cannot export traces; spans are dropped until the collector answers (said once)"
            );
        } else {
            tracing::debug!(endpoint = %self.endpoint, error = why, "trace export failed");
        }
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(endpoint = %self.endpoint, "exporting traces again");
        }
    }
}

/// Sends one request and reads at most [`MAX_ANSWER`] bytes of the answer.
async fn send(http: reqwest::Client, request: Request<Bytes>) -> Result<Response<Bytes>, String> {
    let (parts, body) = request.into_parts();
    let mut response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let mut answer = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if answer.len() + chunk.len() > MAX_ANSWER {
            return Err("collector answer too large".into());
        }
        answer.extend_from_slice(&chunk);
    }
    let mut out = Response::new(Bytes::from(answer));
    *out.status_mut() = status;
    Ok(out)
}

impl HttpClient for Client {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>,
    >
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let task = self.runtime.spawn(send(self.http.clone(), request));
            let result = match task.await {
                Ok(result) => result,
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(response) if response.status().is_success() => {
                    self.succeeded();
                    Ok(response)
                }
                Ok(response) => {
                    self.failed(&format!("collector answered {}", response.status()));
                    Ok(response)
                }
                Err(e) => {
                    self.failed(&e);
                    Err(e.into())
                }
            }
        })
    }
}

/// `url` without its user, password and query (where tokens hide).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => "(invalid url)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_logged_without_secrets() {
        assert_eq!(
            redact("https://user:pw@collector:4318/v1/traces?token=x"),
            "https://collector:4318/v1/traces"
        );
    }
}
