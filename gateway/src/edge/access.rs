//! What a public request leaves behind besides its answer, when asked for: the server span
//! (`{method} {http.route}`, with traces on) and the access line (`[log] access = true`).
//! Neither on, nothing is made: [`Observed::begin`] answers `None` after two loads, and the
//! request carries a `None`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use axum::http::{Method, Request};
use busgate_shared::header::TRACEPARENT;
use busgate_shared::telemetry::{
    self, KeyValue, SdkSpan, Span, SpanKind, Status, Traceparent, Tracer, Value,
};

use crate::edge::state::AppState;

/// The tracing target of access lines (`RUST_LOG=busgate::access=off` silences them).
pub const TARGET: &str = "busgate::access";

/// One request under observation.
pub struct Observed {
    method: Method,
    /// The server span, with traces on.
    span: Option<SdkSpan>,
    /// The request's trace: the span's, the client's, or the one the edge made.
    trace: Option<Traceparent>,
    /// The route's path template (`http.route`), once a route matched.
    route: Option<String>,
    /// The client, once known.
    client: String,
    /// The real client address (the peer, or what a trusted proxy says), when the listener
    /// knows the peer.
    address: Option<IpAddr>,
    access: bool,
}

impl Observed {
    /// Starts observing `request` from the client at `address` (the real client's, see
    /// [`crate::edge::forwarded`]) when traces or the access log are on.
    pub fn begin<B>(
        state: &AppState,
        request: &Request<B>,
        address: Option<IpAddr>,
    ) -> Option<Box<Observed>> {
        let tracer = telemetry::tracer();
        let access = state.edge.access_log;
        if tracer.is_none() && !access {
            return None;
        }
        let incoming = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let method = request.method().clone();
        let span = tracer.map(|tracer| {
            // The method's name: a standard one is a static text (no allocation); the name
            // becomes `{method} {http.route}` once a route matched.
            let name = static_method(&method)
                .map_or_else(|| method.as_str().to_owned().into(), Cow::Borrowed);
            let mut builder = tracer.span_builder(name).with_kind(SpanKind::Server);
            builder.attributes = Some(Vec::with_capacity(SERVER_ATTRIBUTES));
            let mut span = builder.start_with_context(tracer, &telemetry::parent(incoming));
            // Attributes for a recorded span only (an unsampled client trace makes none).
            if span.is_recording() {
                let method = static_method(&method)
                    .map_or_else(|| method.as_str().to_owned().into(), Value::from);
                span.set_attribute(KeyValue::new("http.request.method", method));
                span.set_attribute(KeyValue::new("url.path", request.uri().path().to_owned()));
                if let Some(address) = address {
                    span.set_attribute(KeyValue::new("client.address", address.to_string()));
                }
            }
            span
        });
        let trace = match &span {
            Some(span) => Some(telemetry::traceparent_of(span)),
            None => telemetry::parse(incoming).map(|c| Traceparent::of(&c)),
        };
        Some(Box::new(Observed {
            method,
            span,
            trace,
            route: None,
            client: String::new(),
            address,
            access,
        }))
    }

    /// The route matched: `http.route` is `path` with the order id's segment (a slice of it)
    /// written as `{order_id}`.
    pub fn matched(&mut self, path: &str, path_order_id: Option<&str>) {
        let template = match path_order_id {
            Some(id) => {
                let start = (id.as_ptr() as usize).wrapping_sub(path.as_ptr() as usize);
                let end = start.saturating_add(id.len());
                match (path.get(..start), path.get(end..)) {
                    (Some(head), Some(tail)) if path.get(start..end) == Some(id) => {
                        format!("{head}{{order_id}}{tail}")
                    }
                    _ => path.to_owned(),
                }
            }
            None => path.to_owned(),
        };
        if let Some(span) = self.span.as_mut().filter(|s| s.is_recording()) {
            match telemetry::span::server_names(self.method.as_str(), &template) {
                Some((name, route)) => {
                    span.update_name(name);
                    span.set_attribute(KeyValue::new("http.route", route));
                }
                None => {
                    span.update_name(format!("{} {template}", self.method));
                    span.set_attribute(KeyValue::new("http.route", template.clone()));
                }
            }
        }
        self.route = Some(template);
    }

    /// The caller is known.
    pub fn client(&mut self, client: &str) {
        client.clone_into(&mut self.client);
    }

    /// The `traceparent` to send to the services, when this request has a server span.
    pub fn traceparent(&self) -> Option<&str> {
        self.span
            .as_ref()
            .and(self.trace.as_ref())
            .map(Traceparent::as_str)
    }

    /// The edge made (or passed on) `traceparent` without a span: the request's trace.
    pub fn sent(&mut self, traceparent: &str) {
        if self.trace.is_none() {
            self.trace = telemetry::parse(traceparent).map(|c| Traceparent::of(&c));
        }
    }

    /// The request's trace id, when it has one.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace.as_ref().map(Traceparent::trace_id)
    }

    /// The answer is out: ends the span and writes the access line.
    pub fn finish(mut self, route: &str, status: u16, request_id: &str, elapsed: Duration) {
        let trace_id = self.trace.as_ref().map_or("", Traceparent::trace_id);
        if self.access {
            tracing::info!(
                target: TARGET,
                method = %self.method,
                route,
                path = self.route.as_deref().unwrap_or(""),
                status,
                client = self.client.as_str(),
                client_address = self.address.map(tracing::field::display),
                request_id,
                trace_id,
                elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "access"
            );
        }
        if let Some(span) = &mut self.span {
            if !span.is_recording() {
                return;
            }
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            span.set_attribute(KeyValue::new("busgate.request_id", request_id.to_owned()));
            let route =
                telemetry::span::text(route).map_or_else(|| route.to_owned().into(), Value::from);
            span.set_attribute(KeyValue::new("busgate.route", route));
            if !self.client.is_empty() {
                span.set_attribute(KeyValue::new("busgate.client", self.client.clone()));
            }
            if status >= 500 {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(""));
            }
            span.end();
        }
    }
}

/// Attributes a server span has when it ends: its vector is made this large once.
const SERVER_ATTRIBUTES: usize = 10;

/// The name of a standard method as a static text.
fn static_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed() -> Observed {
        Observed {
            method: Method::GET,
            span: None,
            trace: None,
            route: None,
            client: String::new(),
            address: None,
            access: false,
        }
    }

    #[test]
    fn the_route_template_names_the_order_id_segment() {
        let path = String::from("/api/orders/A1/details");
        let path = path.as_str();
        let mut o = observed();
        o.matched(path, path.get(12..14));
        assert_eq!(o.route.as_deref(), Some("/api/orders/{order_id}/details"));
        let mut o = observed();
        o.matched("/api/order", None);
        assert_eq!(o.route.as_deref(), Some("/api/order"));
        // A slice of another string is never mistaken for a segment.
        let mut o = observed();
        o.matched(path, Some("A1"));
        assert_eq!(o.route.as_deref(), Some(path));
    }

    /// Neither traces nor the access log: nothing is made for a request.
    #[tokio::test]
    async fn nothing_is_observed_when_neither_is_on() {
        let state = crate::edge::tests::unconnected_state().await;
        let request = Request::get("/api/orders/1")
            .header(
                TRACEPARENT,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .expect("request");
        assert!(telemetry::tracer().is_none());
        assert!(Observed::begin(&state, &request, Some([127, 0, 0, 1].into())).is_none());
    }

    #[test]
    fn the_trace_is_the_one_sent() {
        let mut o = observed();
        assert_eq!(o.trace_id(), None);
        o.sent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        assert_eq!(o.trace_id(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(o.traceparent(), None);
    }
}
