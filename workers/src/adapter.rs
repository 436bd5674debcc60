//! The adapter: NATS requests in, internal HTTP calls out.
//!
//! 2xx with a JSON body → `ok` (the body is embedded as it came), 404 → `not_found`, anything
//! else, a timeout or an unreachable upstream → `error` with a code from
//! [`busgate_shared::envelope::code`]. The upstream timeout is the time left until the request's
//! deadline; work past its deadline is dropped by the SDK before any call is made.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use busgate_shared::envelope::{code, Reply, ServiceRequest};
use busgate_shared::sdk::{self, RequestContext, ServeOptions};

/// How far past the request's deadline the HTTP call's own timeout is set.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// How an adapter runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Busgate service name.
    pub service: String,
    /// Upstream URL template with `{order_id}`.
    pub upstream: String,
    /// Requests at once.
    pub concurrency: usize,
    /// Upstream timeout when a request carries no deadline.
    pub timeout: Duration,
}

/// Runs the adapter until `shutdown` resolves.
pub async fn run(
    nats: &str,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let upstream = Arc::new(Upstream::new(&options)?);
    let client =
        busgate_shared::nats::connect(nats, &format!("busgate-worker adapter {}", options.service))
            .await?;
    let mut serve = ServeOptions::new(&options.service);
    serve.concurrency = options.concurrency;
    serve.description = format!("adapter to {}", options.upstream);
    serve.metadata.insert("kind".into(), "adapter".into());
    serve
        .metadata
        .insert("upstream".into(), options.upstream.clone());
    sdk::serve(
        &client,
        serve,
        move |req, ctx| {
            let upstream = upstream.clone();
            async move { upstream.call(&req, &ctx).await }
        },
        shutdown,
    )
    .await?;
    client.drain().await?;
    Ok(())
}

/// The internal HTTP service an adapter calls.
struct Upstream {
    http: reqwest::Client,
    /// The template split around `{order_id}`.
    before: String,
    after: String,
    default_timeout: Duration,
}

impl Upstream {
    fn new(options: &Options) -> anyhow::Result<Self> {
        let Some((before, after)) = options.upstream.split_once("{order_id}") else {
            bail!("--upstream must contain {{order_id}}, e.g. http://127.0.0.1:8081/order/{{order_id}}");
        };
        if after.contains("{order_id}") {
            bail!("--upstream may contain {{order_id}} only once");
        }
        let probe = format!("{before}x{after}");
        let url = reqwest::Url::parse(&probe)
            .with_context(|| format!("--upstream {probe:?} is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("--upstream must be an http:// or https:// URL");
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(options.concurrency)
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Upstream {
            http,
            before: before.to_owned(),
            after: after.to_owned(),
            default_timeout: options.timeout,
        })
    }

    fn url(&self, order_id: &str) -> String {
        let mut url = String::with_capacity(self.before.len() + order_id.len() + self.after.len());
        url.push_str(&self.before);
        percent_encode_into(&mut url, order_id);
        url.push_str(&self.after);
        url
    }

    async fn call(&self, req: &ServiceRequest, ctx: &RequestContext) -> Reply {
        // With a deadline, the SDK cancels this call at the deadline and sends nothing: the
        // gateway reports the timeout itself. The margin makes sure that cancellation, not
        // the HTTP client's own timer, ends the call, so a late "upstream_timeout" reply
        // never races the gateway's timer.
        let timeout = ctx
            .deadline
            .map(|at| at.saturating_duration_since(Instant::now()) + DEADLINE_MARGIN)
            .unwrap_or(self.default_timeout);
        let result = self
            .http
            .get(self.url(&req.order_id))
            .timeout(timeout)
            .send()
            .await;
        let response = match result {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Reply::NotFound;
        }
        if !status.is_success() {
            return Reply::error(code::UPSTREAM_STATUS, format!("upstream answered {status}"));
        }
        match response.bytes().await {
            Ok(body) => Reply::ok_json(body).unwrap_or_else(|e| {
                Reply::error(
                    code::UPSTREAM_BAD_BODY,
                    format!("upstream body is not JSON: {e}"),
                )
            }),
            Err(e) => transport_error(&e),
        }
    }
}

fn transport_error(e: &reqwest::Error) -> Reply {
    if e.is_timeout() {
        Reply::error(code::UPSTREAM_TIMEOUT, "upstream did not answer in time")
    } else {
        Reply::error(
            code::UPSTREAM_UNREACHABLE,
            format!("upstream unreachable: {e}"),
        )
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(upstream: &str) -> Options {
        busgate_shared::runtime::install_crypto_provider();
        Options {
            service: "s".into(),
            upstream: upstream.into(),
            concurrency: 4,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn urls_are_built_from_the_template_with_encoding() {
        let u = Upstream::new(&options("http://127.0.0.1:8081/order/{order_id}?x=1")).expect("ok");
        assert_eq!(u.url("A1"), "http://127.0.0.1:8081/order/A1?x=1");
        assert_eq!(u.url("a/b c"), "http://127.0.0.1:8081/order/a%2Fb%20c?x=1");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(Upstream::new(&options("http://127.0.0.1:8081/order")).is_err());
        assert!(Upstream::new(&options("http://h/{order_id}/{order_id}")).is_err());
        assert!(Upstream::new(&options("ftp://h/{order_id}")).is_err());
        if let Err(e) = Upstream::new(&options("https://h/{order_id}")) {
            panic!("https upstreams are allowed: {e:#}");
        }
        assert!(Upstream::new(&options("not a url {order_id}")).is_err());
    }
}
