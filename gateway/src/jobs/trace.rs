//! The spans of asynchronous requests, with traces on. Processing is a trace of its own (it
//! may run long after the submit, on another instance, more than once): a consumer span
//! `process busgate.jobs.request` whose gathers are its children, linked to the submit's
//! span (the job's `traceparent`). Each callback delivery is a client span `POST`, linked to the submit's span too. With
//! traces off, nothing is made.

use busgate_shared::subject;
use busgate_shared::telemetry::{
    self, Context, KeyValue, Link, SdkSpan, Span, SpanKind, Status, Tracer,
};

use crate::route::Call;

/// The processing span of `call` and the call to run under it (its `traceparent` that
/// span's), when traces are on.
pub fn processing(call: &Call, delivered: i64) -> Option<(SdkSpan, Call)> {
    let tracer = telemetry::tracer()?;
    let mut builder = tracer
        .span_builder(format!("process {}", subject::REQUESTS_SUBJECT))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", telemetry::span::MESSAGING_SYSTEM),
            KeyValue::new("messaging.destination.name", subject::REQUESTS_SUBJECT),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("busgate.request_id", call.request_id.clone()),
            KeyValue::new("busgate.route", call.route.clone()),
            KeyValue::new("busgate.delivered", delivered),
        ]);
    if let Some(submit) = telemetry::parse(&call.traceparent) {
        builder = builder.with_links(vec![Link::with_context(submit)]);
    }
    let span = builder.start_with_context(tracer, &Context::new());
    let mut traced = call.clone();
    traced.traceparent = telemetry::traceparent_of(&span).as_str().to_owned();
    Some((span, traced))
}

/// Ends a processing span with the status its run came to.
pub fn processed(mut span: SdkSpan, status: u16) {
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(""));
    }
    span.end();
}

/// The client span of one callback delivery to `url` (shown without user, password or
/// query), when traces are on: a trace of its own (deliveries are retried, long after the
/// processing), linked to the submit's span (`submit`, its `traceparent`) when known.
pub fn delivery(
    url: &str,
    request_id: &str,
    attempt: u32,
    submit: Option<&str>,
) -> Option<SdkSpan> {
    let tracer = telemetry::tracer()?;
    let parsed = url::Url::parse(url).ok();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let port = parsed.as_ref().and_then(url::Url::port_or_known_default);
    let links = submit
        .and_then(telemetry::parse)
        .map(|submit| vec![Link::with_context(submit)])
        .unwrap_or_default();
    Some(
        tracer
            .span_builder("POST")
            .with_links(links)
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("server.address", host),
                KeyValue::new("server.port", i64::from(port.unwrap_or(0))),
                KeyValue::new("url.full", telemetry::export::redact(url)),
                KeyValue::new("busgate.request_id", request_id.to_owned()),
                KeyValue::new("busgate.callback.attempt", i64::from(attempt)),
            ])
            .start_with_context(tracer, &Context::new()),
    )
}

/// Ends a delivery span: the status the receiver answered, or the error class.
pub fn delivered(mut span: SdkSpan, status: Option<u16>, error: Option<&str>) {
    if let Some(status) = status {
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    if let Some(error) = error {
        span.set_attribute(KeyValue::new("error.type", error.to_owned()));
        span.set_status(Status::error(""));
    }
    span.end();
}
