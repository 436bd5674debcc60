//! The producer spans of a gather, with traces on: one `send busgate.svc.<service>` per
//! source asked, a child of the request's span, whose `traceparent` goes in that request's
//! headers (so that the service's `process` span is its child), ended with the source's
//! outcome (`busgate.outcome`: ok, not_found, error, timeout, no_responders, cancelled). With
//! traces off, [`Sends::begin`] answers `None` and the gather carries a `None`.

use busgate_shared::telemetry::{self, KeyValue, SdkSpan, Span, Status, Traceparent};

use crate::config::snapshot::Target;

/// The send spans of one gather, by target index.
pub struct Sends {
    spans: Vec<Option<SdkSpan>>,
}

impl Sends {
    /// Send spans for a gather of `targets` sources, when traces are on.
    pub fn begin(targets: usize) -> Option<Box<Sends>> {
        telemetry::tracer()?;
        let mut spans = Vec::with_capacity(targets);
        spans.resize_with(targets, || None);
        Some(Box::new(Sends { spans }))
    }

    /// Opens the span of the request to `target` (index `index`), a child of `parent`, and
    /// answers the `traceparent` that request carries.
    pub fn send(&mut self, index: usize, parent: &str, target: &Target) -> Option<Traceparent> {
        let tracer = telemetry::tracer()?;
        let span = telemetry::span::send(tracer, parent, &target.subject, &target.service.0);
        let own = telemetry::traceparent_of(&span);
        if let Some(slot) = self.spans.get_mut(index) {
            *slot = Some(span);
        }
        Some(own)
    }

    /// Ends every span with its source's outcome (`SourceResult::status`, in target order).
    pub fn end(self, outcomes: impl Iterator<Item = &'static str>) {
        for (span, outcome) in self.spans.into_iter().zip(outcomes) {
            let Some(mut span) = span else { continue };
            span.set_attribute(KeyValue::new("busgate.outcome", outcome));
            if !matches!(outcome, "ok" | "not_found" | "skipped") {
                span.set_attribute(KeyValue::new("error.type", outcome));
                span.set_status(Status::error(""));
            }
            span.end();
        }
    }
}
