//! The spans two processes make alike, named and attributed by the OpenTelemetry semantic
//! conventions: the messaging spans of a service request (`send` in the gateway, `process` in
//! the service) and the client span of an adapter's upstream call. Each is made only when
//! [`super::tracer`] answers, so the callers pay for them only with traces on.

use opentelemetry::trace::{SpanKind, Tracer};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};

/// `messaging.system` of every messaging span.
pub const MESSAGING_SYSTEM: &str = "nats";

/// The producer span of one service request: `send <subject>`, a child of the span
/// `parent` (a `traceparent`) names.
pub fn send(tracer: &SdkTracer, parent: &str, subject: &str, service: &str) -> SdkSpan {
    messaging(tracer, parent, subject, service, SpanKind::Producer, "send")
}

/// The consumer span of one service request in the service: `process <subject>`, a child of
/// the gateway's send span (the message's `traceparent`).
pub fn process(tracer: &SdkTracer, parent: &str, subject: &str, service: &str) -> SdkSpan {
    messaging(
        tracer,
        parent,
        subject,
        service,
        SpanKind::Consumer,
        "process",
    )
}

fn messaging(
    tracer: &SdkTracer,
    parent: &str,
    subject: &str,
    service: &str,
    kind: SpanKind,
    operation: &'static str,
) -> SdkSpan {
    tracer
        .span_builder(format!("{operation} {subject}"))
        .with_kind(kind)
        .with_attributes([
            KeyValue::new("messaging.system", MESSAGING_SYSTEM),
            KeyValue::new("messaging.destination.name", subject.to_owned()),
            KeyValue::new("messaging.operation.type", operation),
            KeyValue::new("messaging.operation.name", operation),
            KeyValue::new("busgate.service", service.to_owned()),
        ])
        .start_with_context(tracer, &super::parent(parent))
}

/// The client span of an upstream call: `GET`, with `http.request.method`, `server.address`,
/// `server.port` and `url.full` (which the caller gives without user, password or query: the
/// query may hold a key). `http.response.status_code` is added when the answer comes.
pub fn http_client(
    tracer: &SdkTracer,
    parent: &str,
    method: &'static str,
    server: (&str, u16),
    url: String,
) -> SdkSpan {
    tracer
        .span_builder(method)
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("http.request.method", method),
            KeyValue::new("server.address", server.0.to_owned()),
            KeyValue::new("server.port", i64::from(server.1)),
            KeyValue::new("url.full", url),
        ])
        .start_with_context(tracer, &super::parent(parent))
}

/// Marks a `process` span with the service's reply: `busgate.outcome` (`ok`, `not_found`,
/// or the error code) and an error status for an error.
pub fn outcome(span: &mut SdkSpan, reply: &crate::envelope::Reply) {
    use crate::envelope::Reply;
    use opentelemetry::trace::{Span, Status};
    match reply {
        Reply::Ok(_) => span.set_attribute(KeyValue::new("busgate.outcome", "ok")),
        Reply::NotFound => span.set_attribute(KeyValue::new("busgate.outcome", "not_found")),
        Reply::Error(e) => {
            span.set_attribute(KeyValue::new("busgate.outcome", e.code.clone()));
            span.set_status(Status::error(e.message.clone()));
        }
    }
}
