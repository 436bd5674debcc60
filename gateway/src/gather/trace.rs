//! The producer spans of a gather, with traces on: one `send busgate.svc.<service>` per
//! source asked, a child of the request's span, whose `traceparent` goes in that request's
//! headers (so that the service's `process` span is its child), ended with the source's
//! outcome (`busgate.outcome`: ok, not_found, error, timeout, no_responders, cancelled,
//! circuit_open, or `cached` / `coalesced` when the source was answered without a publish of
//! its own). A retry or a hedge is an event on its source's span (`busgate.retry`,
//! `busgate.hedge`), and its request carries the same span's `traceparent`. With traces off,
//! [`Sends::begin`] answers `None` and the gather carries a `None`.

use busgate_shared::telemetry::{self, KeyValue, SdkSpan, Span, Status, Traceparent};

use crate::config::snapshot::Target;

/// The send spans of one gather, by target index, each with an outcome that is not the
/// source's result word (`cached`, `coalesced`), if it has one.
pub struct Sends {
    spans: Vec<(Option<SdkSpan>, Option<&'static str>)>,
}

impl Sends {
    /// Send spans for a gather of `targets` sources, when traces are on.
    pub fn begin(targets: usize) -> Option<Box<Sends>> {
        telemetry::tracer()?;
        let mut spans = Vec::with_capacity(targets);
        spans.resize_with(targets, || (None, None));
        Some(Box::new(Sends { spans }))
    }

    /// Opens the span of the request to `target` (index `index`), a child of `parent`, and
    /// answers the `traceparent` that request carries.
    pub fn send(&mut self, index: usize, parent: &str, target: &Target) -> Option<Traceparent> {
        let tracer = telemetry::tracer()?;
        let span = telemetry::span::send(tracer, parent, &target.subject, &target.service.0);
        let own = telemetry::traceparent_of(&span);
        if let Some(slot) = self.spans.get_mut(index) {
            slot.0 = Some(span);
        }
        Some(own)
    }

    /// Opens the span of a source settled without a publish of its own, whose outcome is
    /// `outcome` (`cached`, `coalesced`) rather than its result's word.
    pub fn note(&mut self, index: usize, parent: &str, target: &Target, outcome: &'static str) {
        if self.send(index, parent, target).is_some() {
            if let Some(slot) = self.spans.get_mut(index) {
                slot.1 = Some(outcome);
            }
        }
    }

    /// Records a request sent again to source `index` (`busgate.retry`, `busgate.hedge`) and
    /// answers the `traceparent` it carries: its source's span's.
    pub fn again(&mut self, index: usize, event: &'static str) -> Option<Traceparent> {
        let span = self.spans.get_mut(index)?.0.as_mut()?;
        span.add_event(event, Vec::new());
        Some(telemetry::traceparent_of(span))
    }

    /// Ends every span with its source's outcome (`SourceResult::status`, in target order).
    pub fn end(self, outcomes: impl Iterator<Item = &'static str>) {
        for ((span, noted), outcome) in self.spans.into_iter().zip(outcomes) {
            let Some(mut span) = span else { continue };
            let outcome = noted.unwrap_or(outcome);
            span.set_attribute(KeyValue::new("busgate.outcome", outcome));
            if !matches!(
                outcome,
                "ok" | "not_found" | "skipped" | "cached" | "coalesced"
            ) {
                span.set_attribute(KeyValue::new("error.type", outcome));
                span.set_status(Status::error(""));
            }
            span.end();
        }
    }
}
