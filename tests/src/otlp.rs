//! An OTLP/HTTP receiver ([`Receiver`]): what a collector would get from the gateway and the
//! workers, decoded with the official protobuf definitions (`opentelemetry-proto`), kept as
//! [`ReceivedSpan`]s for a test to check.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// One span as the receiver got it, ids in lower-case hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// The OTLP kind: 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Attributes, their values as text.
    pub attributes: BTreeMap<String, String>,
    /// Span ids this span links to.
    pub links: Vec<(String, String)>,
    /// The names of its events, in order.
    pub events: Vec<String>,
}

impl ReceivedSpan {
    /// The attribute `key`, or "".
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// OTLP span kinds.
pub mod kind {
    pub const SERVER: i32 = 2;
    pub const CLIENT: i32 = 3;
    pub const PRODUCER: i32 = 4;
    pub const CONSUMER: i32 = 5;
}

/// An OTLP/HTTP traces endpoint on a free port, for as long as the test's runtime runs.
#[derive(Clone)]
pub struct Receiver {
    /// The traces URL (`http://127.0.0.1:<port>/v1/traces`).
    pub url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Export requests received.
    requests: Arc<Mutex<usize>>,
}

impl Receiver {
    /// Starts one.
    pub async fn start() -> Receiver {
        let receiver = Receiver {
            url: String::new(),
            spans: Arc::default(),
            requests: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(receiver.clone());
        let base = crate::http::serve(app).await;
        Receiver {
            url: format!("{base}/v1/traces"),
            ..receiver
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }

    /// The spans of trace `trace_id`, once `ready` holds for them (bounded wait).
    pub async fn trace(
        &self,
        trace_id: &str,
        within: Duration,
        ready: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let of_trace = || {
            self.spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect::<Vec<_>>()
        };
        let until = std::time::Instant::now() + within;
        loop {
            let spans = of_trace();
            if ready(&spans) {
                return spans;
            }
            assert!(
                std::time::Instant::now() < until,
                "trace {trace_id} incomplete after {within:?}: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn export(State(receiver): State<Receiver>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    *receiver.requests.lock().expect("requests") += 1;
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(text)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    events: span.events.iter().map(|e| e.name.clone()).collect(),
                });
            }
        }
    }
    receiver.spans.lock().expect("spans").extend(out);
    StatusCode::OK
}

/// An attribute's value as text.
fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Bytes in lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    /// How many export requests came.
    pub fn requests(&self) -> usize {
        *self.requests.lock().expect("requests")
    }
}
