//! The adapter: NATS requests in, internal HTTP calls out.
//!
//! 2xx with a JSON body → `ok` (the body is embedded as it came), 404 → `not_found`, anything
//! else, a timeout or an unreachable upstream → `error` with a code from
//! [`busgate_shared::envelope::code`]. The upstream timeout is the time left until the request's
//! deadline; work past its deadline is dropped by the SDK before any call is made.
//!
//! An error reply's message reaches the gateway's clients (in `sources`): it is a fixed
//! sentence per code, never the upstream's URL, address or an error's own words; those go to
//! this worker's log with the request id. A body larger than a reply can carry on the bus (the
//! server's `max_payload`) is `upstream_too_large` at once, on either transport, and is not
//! read past that size. An order id of `.` or `..` is refused (`bad_request`) before any URL is
//! built: percent-encoded or not, it would be a dot-segment that walks the upstream's path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use busgate_shared::envelope::{code, Reply, ServiceRequest};
use busgate_shared::micro::{META_MODE, META_UPSTREAM};
use busgate_shared::sdk::{self, RequestContext, ServeOptions};
use busgate_shared::upstream::{Hole, Parts, Scheme, SecretSource, UpstreamSpec};
use busgate_shared::{drain, header, telemetry};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tracing::{info, warn};

use crate::{http1, hyper1};

/// How far past the request's deadline the HTTP call's own timeout is set.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);
/// How long opening a connection to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// What a reply envelope adds to an upstream body (`{"service":…,"status":"ok","data":…,
/// "elapsed_ms":…}`), with room to spare.
const REPLY_OVERHEAD: usize = 1024;

/// How a single-service adapter runs (`adapter --service … --upstream …`).
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

impl Options {
    /// The upstream as configuration would say it: the single-service form is the same
    /// adapter with its upstream from the command line.
    fn spec(&self) -> UpstreamSpec {
        UpstreamSpec {
            url: self.upstream.clone(),
            timeout: None,
            concurrency: self.concurrency,
            headers: Default::default(),
        }
    }
}

/// The `$SRV.INFO` metadata of a served service: which mode serves it and the upstream it
/// calls (no credentials, no query: [`UrlTemplate::display`]).
pub fn metadata(mode: &str, upstream: &Upstream) -> HashMap<String, String> {
    HashMap::from([
        (META_MODE.to_owned(), mode.to_owned()),
        (META_UPSTREAM.to_owned(), upstream.display.clone()),
    ])
}

/// Runs an adapter for each of `adapters` (one service and its upstream each) on one NATS
/// connection until `drain` is signalled; the drain is released once the services have
/// unregistered and the connection is closed. One process for several upstreams is what one nginx
/// does for several `upstream` blocks: both requests of a merge come in one read, and both
/// replies go out in one write.
pub async fn run(
    nats: &busgate_shared::nats::NatsSettings,
    adapters: &[Options],
    drain: drain::Watch,
) -> anyhow::Result<()> {
    let upstreams = adapters
        .iter()
        .map(|options| {
            Upstream::new(&options.service, &options.spec(), options.timeout)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("--upstream {:?}: {e}", options.upstream))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names: Vec<&str> = adapters.iter().map(|o| o.service.as_str()).collect();
    let nats = busgate_shared::wire::Connection::connect_with(
        nats,
        &format!("busgate-worker adapter {}", names.join(",")),
    )?;
    let serving = adapters.iter().zip(upstreams).map(|(options, upstream)| {
        let mut serve = ServeOptions::new(&options.service);
        serve.concurrency = options.concurrency;
        serve.description = format!("adapter to {}", upstream.display);
        serve.metadata = metadata("adapter", &upstream);
        let nats = nats.clone();
        let handler = move |req: ServiceRequest, ctx: RequestContext| {
            let upstream = upstream.clone();
            // The server says its max_payload when a connection is made.
            let max_body = nats.max_payload().saturating_sub(REPLY_OVERHEAD);
            async move { upstream.call(&req, &ctx, max_body).await }
        };
        (serve, handler)
    });
    sdk::serve_all(&nats, serving, drain.clone()).await?;
    nats.close(Duration::from_secs(2)).await;
    drop(drain);
    Ok(())
}

/// The largest body a reply can carry on `nats` (its server's `max_payload`, less the
/// envelope).
pub fn max_body(nats: &busgate_shared::wire::Connection) -> usize {
    nats.max_payload().saturating_sub(REPLY_OVERHEAD)
}

/// The internal HTTP service an adapter calls, built once per upstream configuration (a
/// change builds a new one; calls in flight finish on the old).
pub struct Upstream {
    service: String,
    transport: Transport,
    /// The template split around its placeholders: the whole URL for reqwest, the request
    /// target (path and query) for the HTTP/1.1 pool.
    parts: Parts,
    /// For `$SRV.INFO` and logs: no query, no credentials.
    pub display: String,
    /// The upstream's host and port, for the client spans.
    host: String,
    port: u16,
    /// Bounds each call when the request's deadline is later (or absent).
    timeout: Option<Duration>,
    /// Bounds a call of a request that carries no deadline and no timeout of the upstream.
    default_timeout: Duration,
    /// Header names and where their values come from.
    secrets: Vec<(String, SecretSource)>,
    /// Their values, read when this upstream was built (or, after a failure, at the next
    /// call): `Err` names what is missing, never a value.
    resolved: ArcSwap<Result<Vec<(String, String)>, String>>,
}

/// Plain `http://` upstreams go through Busgate's keep-alive HTTP/1.1 pool ([`http1`]);
/// `https://` ones through reqwest and rustls.
///
/// Why these: Busgate's own pool for plain HTTP, each call on its caller's task (reqwest's
/// per-request task hand-off, URL parsing and header maps were more than half of an adapter's
/// CPU under load), since it is ≥ 15 % ahead of hyper's client connection driven the same way
/// on the one runtime thread workers run by default (issue 24, `tests/perf/ab-http-client.sh`);
/// hyper's is kept as its A/B control. TLS is the library's job (reqwest with rustls): a
/// hand-written TLS path would not be as complete (certificate verification, ALPN, session
/// resumption) for what users need.
enum Transport {
    Http1(http1::Pool),
    /// The A/B control of `Http1`, for benchmarking (`BUSGATE_ADAPTER_HTTP_CLIENT=hyper`).
    Hyper(hyper1::Pool),
    Reqwest(reqwest::Client),
}

/// What a call brought back, whichever transport made it.
enum Outcome {
    Answered { status: u16, body: Bytes },
    TimedOut,
    TooLarge,
    Unreachable(String),
}

/// The outcome of a plain-HTTP call, bounded by `own_timeout` when there is one.
async fn bounded(
    call: impl std::future::Future<Output = Result<http1::Response, http1::Error>>,
    own_timeout: Option<Duration>,
) -> Outcome {
    let result = match own_timeout {
        None => Ok(call.await),
        Some(t) => tokio::time::timeout(t, call).await,
    };
    match result {
        Ok(Ok(r)) => Outcome::Answered {
            status: r.status,
            body: r.body,
        },
        Ok(Err(http1::Error::TooLarge)) => Outcome::TooLarge,
        Ok(Err(e)) => Outcome::Unreachable(e.to_string()),
        Err(_) => Outcome::TimedOut,
    }
}

/// Reads every header value now: all, or what is missing.
fn resolve(secrets: &[(String, SecretSource)]) -> Result<Vec<(String, String)>, String> {
    secrets
        .iter()
        .map(|(name, source)| {
            source
                .resolve()
                .map(|value| (name.clone(), value))
                .map_err(|e| format!("header {name}: {e}"))
        })
        .collect()
}

impl Upstream {
    /// Builds the upstream of `service` from its configuration (validated again here: an
    /// adapter trusts no document it reads).
    pub fn new(
        service: &str,
        spec: &UpstreamSpec,
        default_timeout: Duration,
    ) -> Result<Self, busgate_shared::Error> {
        let template = spec.validate("upstream")?;
        let (transport, parts) = match template.scheme {
            Scheme::Http if hyper1::from_env() => {
                let pool = hyper1::Pool::new(
                    format!("{}:{}", template.host, template.port),
                    &template.authority,
                    spec.concurrency,
                    CONNECT_TIMEOUT,
                )
                .map_err(|e| busgate_shared::Error::invalid("upstream", e.to_string()))?;
                (Transport::Hyper(pool), template.target)
            }
            Scheme::Http => {
                let pool = http1::Pool::new(
                    format!("{}:{}", template.host, template.port),
                    &template.authority,
                    spec.concurrency,
                    CONNECT_TIMEOUT,
                );
                (Transport::Http1(pool), template.target)
            }
            Scheme::Https => {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(spec.concurrency)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| {
                        busgate_shared::Error::invalid(
                            "upstream",
                            format!("cannot build the HTTP client: {e}"),
                        )
                    })?;
                (Transport::Reqwest(client), template.url)
            }
        };
        let secrets: Vec<(String, SecretSource)> = spec
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let resolved = resolve(&secrets);
        if let Err(missing) = &resolved {
            warn!(service, %missing, "a header value of the upstream cannot be read; calls fail with upstream_secret_missing until it can");
        }
        Ok(Upstream {
            service: service.to_owned(),
            transport,
            parts,
            display: template.display,
            host: template.host,
            port: template.port,
            timeout: spec.timeout,
            default_timeout,
            secrets,
            resolved: ArcSwap::from_pointee(resolved),
        })
    }

    /// What the transport is given for `req`: the request target or the whole URL, each
    /// placeholder replaced by the order id or an attribute, percent-encoded. An attribute the
    /// template needs and the request lacks (or a dot-segment value) is a `bad_request`.
    fn target(&self, req: &ServiceRequest) -> Result<String, Reply> {
        let Parts { literals, holes } = &self.parts;
        let mut url = String::with_capacity(
            literals.iter().map(String::len).sum::<usize>() + req.order_id.len() + 16 * holes.len(),
        );
        for (literal, hole) in literals.iter().zip(holes) {
            url.push_str(literal);
            match hole {
                Hole::OrderId => percent_encode_into(&mut url, &req.order_id),
                Hole::Attribute(name) => {
                    let text = match req.attributes.get(name) {
                        Some(serde_json::Value::String(s)) => {
                            std::borrow::Cow::Borrowed(s.as_str())
                        }
                        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                            std::borrow::Cow::Owned(v.to_string())
                        }
                        _ => {
                            return Err(Reply::error(
                                code::BAD_REQUEST,
                                format!("attribute {name} is missing or not a string"),
                            ))
                        }
                    };
                    if text.is_empty() || is_dot_segment(&text) {
                        return Err(Reply::error(
                            code::BAD_REQUEST,
                            format!("attribute {name} may not be empty, . or .."),
                        ));
                    }
                    percent_encode_into(&mut url, &text);
                }
            }
        }
        if let Some(last) = literals.last() {
            url.push_str(last);
        }
        // Each value is checked alone above; adjacent ones (`/{a}{b}` with `.` and `.`) could
        // still make a dot-segment together, which a server or proxy upstream would resolve.
        let path = url.split(['?', '#']).next().unwrap_or_default();
        if path.split('/').any(is_dot_segment) {
            return Err(Reply::error(
                code::BAD_REQUEST,
                "the values make a path segment . or ..",
            ));
        }
        Ok(url)
    }

    /// The URL a call for `order_id` is shown as (in its client span): [`Upstream::display`]
    /// with the order id in place, no query, no credentials.
    fn display_url(&self, order_id: &str) -> String {
        let mut id = String::with_capacity(order_id.len());
        percent_encode_into(&mut id, order_id);
        self.display.replacen("{order_id}", &id, 1)
    }

    /// The header values, read again after a failure (a secret file may have appeared).
    fn secrets(&self) -> Arc<Result<Vec<(String, String)>, String>> {
        let current = self.resolved.load_full();
        if current.is_ok() {
            return current;
        }
        let again = Arc::new(resolve(&self.secrets));
        if again.is_ok() {
            info!(service = %self.service, "the upstream's header values can be read now");
        }
        self.resolved.store(again.clone());
        again
    }

    /// Calls the upstream for `req`; a body over `max_body` bytes is `upstream_too_large`.
    pub async fn call(&self, req: &ServiceRequest, ctx: &RequestContext, max_body: usize) -> Reply {
        if is_dot_segment(&req.order_id) {
            return Reply::error(code::BAD_REQUEST, "order_id may not be . or ..");
        }
        let request_id = req.request_id.as_str();
        let secrets = if self.secrets.is_empty() {
            None
        } else {
            match &*self.secrets() {
                Ok(values) => Some(values.clone()),
                Err(missing) => {
                    info!(request_id, trace_id = telemetry::trace_id(ctx.traceparent()), span_id = telemetry::span_id(ctx.traceparent()), service = %self.service, %missing, "upstream header value missing");
                    return Reply::error(
                        code::UPSTREAM_SECRET_MISSING,
                        "a header value of the upstream cannot be read by the adapter",
                    );
                }
            }
        };
        let target = match self.target(req) {
            Ok(target) => target,
            Err(reply) => return reply,
        };
        // With traces on, the client span of this call, whose traceparent goes upstream.
        let mut span = telemetry::tracer().map(|tracer| {
            let server = (self.host.as_str(), self.port);
            // Boxed: the call's future stays as small as without traces.
            Box::new(telemetry::span::http_client(
                tracer,
                ctx.traceparent(),
                "GET",
                server,
                || self.display_url(&req.order_id),
            ))
        });
        let own = span
            .as_deref()
            .map(|s| Box::new(telemetry::traceparent_of(s)));
        let traceparent = own.as_deref().map_or(ctx.traceparent(), |t| t.as_str());
        // Passed on so the upstream's logs and traces join the gateway's.
        let mut extra: Vec<(&str, &str)> = Vec::new();
        let mut fixed: [(&str, &str); 2] = [("", ""); 2];
        let mut n = 0;
        for (name, value) in [
            (header::REQUEST_ID, req.request_id.as_str()),
            (header::TRACEPARENT, traceparent),
        ] {
            if is_header_text(value) {
                fixed[n] = (name, value);
                n += 1;
            }
        }
        let extra: &[(&str, &str)] = match &secrets {
            // No allocation per call for the common case: no configured headers.
            None => &fixed[..n],
            Some(values) => {
                extra.extend_from_slice(&fixed[..n]);
                extra.extend(values.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                &extra
            }
        };
        // The upstream's own timeout ends a call with a reply when it comes before the
        // request's deadline; at the deadline the SDK cancels the call and sends nothing (the
        // gateway reports the timeout itself).
        let left = ctx
            .deadline
            .map(|at| at.saturating_duration_since(Instant::now()));
        let own_timeout = match (self.timeout, left) {
            (Some(t), Some(left)) if t < left => Some(t),
            (Some(t), None) => Some(t),
            (None, None) => Some(self.default_timeout),
            _ => None,
        };
        let outcome = match &self.transport {
            Transport::Http1(pool) => {
                bounded(pool.get_limited(&target, extra, max_body), own_timeout).await
            }
            Transport::Hyper(pool) => {
                bounded(pool.get_limited(&target, extra, max_body), own_timeout).await
            }
            Transport::Reqwest(http) => {
                // reqwest always sets a timer: the margin makes sure that the SDK's
                // cancellation, not this timer, ends a call at the deadline, so a late
                // "upstream_timeout" reply never races the gateway's.
                let timeout = own_timeout
                    .or(left.map(|l| l + DEADLINE_MARGIN))
                    .unwrap_or(self.default_timeout);
                reqwest_get(http, target, extra, timeout, max_body).await
            }
        };
        if let Some(span) = span.as_deref_mut() {
            record(span, &outcome);
        }
        match outcome {
            Outcome::Answered { status: 404, .. } => Reply::NotFound,
            Outcome::Answered { status, body } if (200..300).contains(&status) => {
                Reply::ok_json(body).unwrap_or_else(|e| {
                    tracing::info!(request_id, trace_id = telemetry::trace_id(traceparent), span_id = telemetry::span_id(traceparent), error = %e, "upstream body is not JSON");
                    Reply::error(code::UPSTREAM_BAD_BODY, "upstream body is not JSON")
                })
            }
            Outcome::Answered { status, .. } if (300..400).contains(&status) => Reply::error(
                code::UPSTREAM_REDIRECT,
                format!("upstream answered {status} (redirects are not followed)"),
            ),
            Outcome::Answered { status, .. }
                if (400..500).contains(&status) && status != 408 && status != 429 =>
            {
                Reply::error(code::UPSTREAM_REJECTED, format!("upstream answered {status}"))
            }
            Outcome::Answered { status, .. } => {
                Reply::error(code::UPSTREAM_STATUS, format!("upstream answered {status}"))
            }
            Outcome::TimedOut => {
                Reply::error(code::UPSTREAM_TIMEOUT, "upstream did not answer in time")
            }
            Outcome::TooLarge => {
                tracing::info!(
                    request_id,
                    trace_id = telemetry::trace_id(traceparent),
                    span_id = telemetry::span_id(traceparent),
                    max_body,
                    "upstream body larger than a reply can carry"
                );
                Reply::error(
                    code::UPSTREAM_TOO_LARGE,
                    "upstream body larger than the bus carries",
                )
            }
            Outcome::Unreachable(e) => {
                tracing::info!(request_id, trace_id = telemetry::trace_id(traceparent), span_id = telemetry::span_id(traceparent), error = %e, "upstream unreachable");
                Reply::error(code::UPSTREAM_UNREACHABLE, "upstream unreachable")
            }
        }
    }
}

/// Marks the client span with the call's outcome: the status, or `error.type`.
fn record(span: &mut telemetry::SdkSpan, outcome: &Outcome) {
    use telemetry::{KeyValue, Span, Status};
    let error = match outcome {
        Outcome::Answered { status, .. } => {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(*status),
            ));
            if *status < 400 || *status == 404 {
                return;
            }
            "http_status"
        }
        Outcome::TimedOut => "timeout",
        Outcome::TooLarge => "too_large",
        Outcome::Unreachable(_) => "unreachable",
    };
    span.set_attribute(KeyValue::new("error.type", error));
    span.set_status(Status::error(error));
}

async fn reqwest_get(
    http: &reqwest::Client,
    url: String,
    extra: &[(&str, &str)],
    timeout: Duration,
    max_body: usize,
) -> Outcome {
    // Without the URL: its query may hold a key (`?api_key=…`), and this text is logged.
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            Outcome::TimedOut
        } else {
            Outcome::Unreachable(e.without_url().to_string())
        }
    };
    let mut request = http.get(url).timeout(timeout);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let status = response.status().as_u16();
    // Only a success's body is read: the others are reported by status alone.
    if !(200..300).contains(&status) {
        return Outcome::Answered {
            status,
            body: Bytes::new(),
        };
    }
    // The same limit as the HTTP/1.1 pool's: refused by its length when it says one, else
    // as soon as the bytes pass it.
    let max_body = max_body.min(http1::MAX_BODY);
    if response
        .content_length()
        .is_some_and(|len| len > max_body as u64)
    {
        return Outcome::TooLarge;
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if chunk.len() > max_body - body.len() {
                    return Outcome::TooLarge;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => {
                return Outcome::Answered {
                    status,
                    body: body.freeze(),
                }
            }
            Err(e) => return failed(e),
        }
    }
}

/// `.` and `..`: dot-segments (RFC 3986 section 5.2.4) that a server or proxy upstream may
/// resolve, also when percent-encoded (`%2E%2E`), so they never become part of a URL.
fn is_dot_segment(order_id: &str) -> bool {
    matches!(order_id, "." | "..")
}

/// Visible ASCII only: safe to write as an HTTP header value.
fn is_header_text(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
}

/// What an order id keeps of itself in a URL path segment: RFC 3986 unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`); every other byte (UTF-8 included) is percent-encoded.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode_into(out: &mut String, s: &str) {
    out.extend(utf8_percent_encode(s, PATH_SEGMENT));
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

    fn build(o: &Options) -> Result<Upstream, busgate_shared::Error> {
        Upstream::new(&o.service, &o.spec(), o.timeout)
    }

    fn request(order_id: &str, attributes: serde_json::Value) -> ServiceRequest {
        ServiceRequest {
            request_id: "r".into(),
            order_id: order_id.into(),
            operation: "order".into(),
            attributes: match attributes {
                serde_json::Value::Object(map) => map,
                _ => Default::default(),
            },
        }
    }

    fn target_of(u: &Upstream, order_id: &str) -> String {
        match u.target(&request(order_id, serde_json::json!({}))) {
            Ok(t) => t,
            Err(reply) => panic!("{reply:?}"),
        }
    }

    #[test]
    fn attributes_fill_their_placeholders_encoded_and_are_checked() {
        let u = build(&options("http://h/c/{carrier}/o/{order_id}?n={n}")).expect("ok");
        let t = u.target(&request(
            "A 1",
            serde_json::json!({"carrier": "D/HL", "n": 3}),
        ));
        assert_eq!(t.ok(), Some("/c/D%2FHL/o/A%201?n=3".to_owned()));
        for bad in [
            serde_json::json!({"n": 3}),
            serde_json::json!({"carrier": "", "n": 3}),
            serde_json::json!({"carrier": "..", "n": 3}),
            serde_json::json!({"carrier": {"x": 1}, "n": 3}),
        ] {
            let reply = u.target(&request("A", bad.clone())).expect_err("refused");
            assert!(
                matches!(&reply, Reply::Error(e) if e.code == code::BAD_REQUEST),
                "{bad}: {reply:?}"
            );
        }
    }

    #[test]
    fn adjacent_values_never_make_a_dot_segment() {
        for template in [
            "http://h/x/{a}{b}/y",
            "https://h/x/.{a}",
            "http://h/{order_id}{a}",
        ] {
            let u = build(&options(template)).expect("ok");
            let reply = u
                .target(&request(".", serde_json::json!({"a": ".", "b": "."})))
                .expect_err(template);
            assert!(
                matches!(&reply, Reply::Error(e) if e.code == code::BAD_REQUEST),
                "{template}: {reply:?}"
            );
        }
        let u = build(&options("http://h/x/{a}{b}/y")).expect("ok");
        let fine = u.target(&request("1", serde_json::json!({"a": ".a", "b": "b."})));
        assert_eq!(fine.ok(), Some("/x/.ab./y".to_owned()));
    }

    /// An unreachable https upstream is reported without its URL: the query may hold a key.
    #[tokio::test]
    async fn an_unreachable_upstream_is_reported_without_its_query() {
        // Not left to whichever test of this binary ran first.
        busgate_shared::runtime::install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/x?api_key=sekrit-123");
        match reqwest_get(&http, url, &[], Duration::from_secs(2), 1000).await {
            Outcome::Unreachable(text) => assert!(!text.contains("sekrit"), "{text}"),
            _ => panic!("not unreachable"),
        }
    }

    #[test]
    fn urls_are_built_from_the_template_with_encoding() {
        let u = build(&options("http://127.0.0.1:8081/order/{order_id}?x=1")).expect("ok");
        assert_eq!(target_of(&u, "A1"), "/order/A1?x=1");
        assert_eq!(target_of(&u, "a/b c"), "/order/a%2Fb%20c?x=1");
        let u = build(&options("http://h:81/o%20k/{order_id}")).expect("ok");
        assert_eq!(target_of(&u, "1"), "/o%20k/1");
        let u = build(&options("https://h/order/{order_id}")).expect("ok");
        assert_eq!(target_of(&u, "a b"), "https://h/order/a%20b");
    }

    /// The reqwest transport (https upstreams) has the pool's limit: by the length a response
    /// declares, and by the bytes of one that declares none.
    #[tokio::test]
    async fn the_reqwest_path_refuses_bodies_over_the_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let body = format!("[{}1]", "1,".repeat(5000));
        let answers = [
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
            format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{body}"),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        ];
        tokio::spawn(async move {
            for answer in answers {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        busgate_shared::runtime::install_crypto_provider();
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/x");
        let timeout = Duration::from_secs(5);
        for _ in 0..2 {
            let outcome = reqwest_get(&http, url.clone(), &[], timeout, 1000).await;
            assert!(matches!(outcome, Outcome::TooLarge));
        }
        let outcome = reqwest_get(&http, url, &[], timeout, body.len()).await;
        assert!(
            matches!(outcome, Outcome::Answered { status: 200, body: b } if b.len() == body.len())
        );
    }

    #[test]
    fn dot_segments_never_reach_a_url() {
        assert!(is_dot_segment("."));
        assert!(is_dot_segment(".."));
        for fine in ["...", ".a", "a..", "a.b", "%2E%2E"] {
            assert!(!is_dot_segment(fine), "{fine}");
        }
        // Dots elsewhere are kept as they are (unreserved), and a slash is encoded.
        let u = build(&options("http://h/order/{order_id}/x")).expect("ok");
        assert_eq!(target_of(&u, "a..b"), "/order/a..b/x");
        assert_eq!(target_of(&u, "../a"), "/order/..%2Fa/x");
    }

    /// The encoding of a path segment as it was written by hand before the crate: every byte
    /// but the unreserved ones as `%XX`, upper-case.
    fn encoded_by_hand(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    #[test]
    fn a_path_segment_keeps_only_unreserved_characters() {
        let mut out = String::new();
        percent_encode_into(&mut out, "aZ09-._~ /?#[]@!$&'()*+,;=%\"\u{e9}\u{1f600}");
        assert_eq!(
            out,
            "aZ09-._~%20%2F%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%25%22%C3%A9%F0%9F%98%80"
        );
        for b in 0u8..=0x7f {
            let c = char::from(b);
            let mut one = String::new();
            percent_encode_into(&mut one, &c.to_string());
            assert_eq!(one, encoded_by_hand(&c.to_string()), "{b:#x}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_order_id_is_encoded_as_before_and_decodes_back(id in "\\PC{0,32}") {
            let mut out = String::new();
            percent_encode_into(&mut out, &id);
            proptest::prop_assert_eq!(&out, &encoded_by_hand(&id));
            proptest::prop_assert_eq!(busgate_shared::validate::percent_decode(&out), Some(id));
        }
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(build(&options("http://127.0.0.1:8081/order")).is_err());
        assert!(build(&options("http://h/{order_id}/{order_id}")).is_err());
        assert!(build(&options("ftp://h/{order_id}")).is_err());
        if let Err(e) = build(&options("https://h/{order_id}")) {
            panic!("https upstreams are allowed: {e:#}");
        }
        assert!(build(&options("not a url {order_id}")).is_err());
        assert!(build(&options("http://{order_id}.svc/x")).is_err());
        assert!(build(&options("http://h/x#{order_id}")).is_err());
        assert!(build(&options("http://u:p@h/{order_id}")).is_err());
    }
}
