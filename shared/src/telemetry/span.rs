//! The spans two processes make alike, named and attributed by the OpenTelemetry semantic
//! conventions: the messaging spans of a service request (`send` in the gateway, `process` in
//! the service) and the client span of an adapter's upstream call. Each is made only when
//! [`super::tracer`] answers, so the callers pay for them only with traces on.
//!
//! With traces on they are made on every request, so they cost as little as the SDK allows:
//! the messaging spans' names and text attributes are made once per subject ([`Names`], kept
//! for the process's life: subjects are the configured services) and shared as `&'static str`,
//! never formatted per request; attributes are set only on a span that is recorded (an
//! unsampled parent, a sampler's drop: no attribute is made), in a vector sized once.

use std::sync::Mutex;

use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Tracer};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};

/// `messaging.system` of every messaging span.
pub const MESSAGING_SYSTEM: &str = "nats";

/// Attributes a messaging span has when it ends (five at the start, the outcome and
/// `error.type` at the end): its vector is made this large once.
const MESSAGING_ATTRIBUTES: usize = 7;

/// Attributes a client span has when it ends.
const CLIENT_ATTRIBUTES: usize = 6;

/// The most subjects whose names are kept; past it, names are made per span (still right,
/// only slower). Bounds what a process keeps whatever subjects it is sent.
const MAX_NAMES: usize = 1024;

/// Texts made once and kept: for a kind of span, two inputs (`a`, `b`) and what is made of
/// them (`x`, `y`).
#[derive(Debug)]
struct Names {
    kind: Kind,
    a: &'static str,
    b: &'static str,
    x: &'static str,
    y: &'static str,
}

/// What a [`Names`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `a` a subject, `b` its service; `x` the send span's name, `y` the process span's.
    Messaging,
    /// `a` a method, `b` a route template; `x` the server span's name, `y` the template.
    Server,
    /// `a` a text kept as it is (`x`).
    Text,
}

/// Every [`Names`] made so far (at most [`MAX_NAMES`]).
static NAMES: Mutex<Vec<&'static Names>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's copy of the [`Names`] it used: looked up without a lock.
    static LOCAL: std::cell::RefCell<Vec<&'static Names>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The [`Names`] of `kind` for `a` and `b` (`make` makes `x` and `y` the first time), or
/// `None` when [`MAX_NAMES`] are kept already.
fn names(
    kind: Kind,
    a: &str,
    b: &str,
    make: impl FnOnce() -> (String, String),
) -> Option<&'static Names> {
    let same = |n: &&'static Names| n.kind == kind && n.a == a && n.b == b;
    if let Some(found) = LOCAL.with(|local| local.borrow().iter().copied().find(same)) {
        return Some(found);
    }
    let found = {
        let mut all = NAMES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match all.iter().copied().find(same) {
            Some(found) => found,
            None if all.len() >= MAX_NAMES => return None,
            None => {
                let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
                let (x, y) = make();
                let made: &'static Names = Box::leak(Box::new(Names {
                    kind,
                    a: leak(a.to_owned()),
                    b: leak(b.to_owned()),
                    x: leak(x),
                    y: leak(y),
                }));
                all.push(made);
                made
            }
        }
    };
    LOCAL.with(|local| local.borrow_mut().push(found));
    Some(found)
}

/// The server span's name (`{method} {template}`) and `http.route` (the template) of a
/// route, made once; `None` past [`MAX_NAMES`] (the caller makes its own).
pub fn server_names(method: &str, template: &str) -> Option<(&'static str, &'static str)> {
    let names = names(Kind::Server, method, template, || {
        (format!("{method} {template}"), template.to_owned())
    })?;
    Some((names.x, names.y))
}

/// `text` (a route's name, a configured value: a few texts) made once and kept; `None`
/// past [`MAX_NAMES`] (the caller makes its own).
pub fn text(text: &str) -> Option<&'static str> {
    Some(names(Kind::Text, text, "", || (text.to_owned(), String::new()))?.a)
}

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

/// A span builder whose attributes (none yet) have room for `attributes`.
fn builder(
    tracer: &SdkTracer,
    name: impl Into<std::borrow::Cow<'static, str>>,
    kind: SpanKind,
    attributes: usize,
) -> SpanBuilder {
    let mut builder = tracer.span_builder(name).with_kind(kind);
    builder.attributes = Some(Vec::with_capacity(attributes));
    builder
}

/// Starts a span under the span `parent` names; a parent that is not sampled makes a span
/// that is not recorded, so nothing is allocated for its attributes.
fn start(
    tracer: &SdkTracer,
    parent: &str,
    name: impl Into<std::borrow::Cow<'static, str>>,
    kind: SpanKind,
    attributes: usize,
) -> SdkSpan {
    let parent = super::parent(parent);
    let builder = if opentelemetry::trace::TraceContextExt::span(&parent)
        .span_context()
        .is_sampled()
        || !opentelemetry::trace::TraceContextExt::has_active_span(&parent)
    {
        builder(tracer, name, kind, attributes)
    } else {
        tracer.span_builder(name).with_kind(kind)
    };
    builder.start_with_context(tracer, &parent)
}

fn messaging(
    tracer: &SdkTracer,
    parent: &str,
    subject: &str,
    service: &str,
    kind: SpanKind,
    operation: &'static str,
) -> SdkSpan {
    let attributes = |span: &mut SdkSpan, subject: KeyValue, service: KeyValue| {
        span.set_attribute(KeyValue::new("messaging.system", MESSAGING_SYSTEM));
        span.set_attribute(subject);
        span.set_attribute(KeyValue::new("messaging.operation.type", operation));
        span.set_attribute(KeyValue::new("messaging.operation.name", operation));
        span.set_attribute(service);
    };
    let made = || (format!("send {subject}"), format!("process {subject}"));
    match names(Kind::Messaging, subject, service, made) {
        Some(names) => {
            let name = if operation == "send" {
                names.x
            } else {
                names.y
            };
            let mut span = start(tracer, parent, name, kind, MESSAGING_ATTRIBUTES);
            if span.is_recording() {
                attributes(
                    &mut span,
                    KeyValue::new("messaging.destination.name", names.a),
                    KeyValue::new("busgate.service", names.b),
                );
            }
            span
        }
        None => {
            let name = format!("{operation} {subject}");
            let mut span = start(tracer, parent, name, kind, MESSAGING_ATTRIBUTES);
            if span.is_recording() {
                attributes(
                    &mut span,
                    KeyValue::new("messaging.destination.name", subject.to_owned()),
                    KeyValue::new("busgate.service", service.to_owned()),
                );
            }
            span
        }
    }
}

/// The client span of an upstream call: `GET`, with `http.request.method`, `server.address`,
/// `server.port` and `url.full` (which `url` makes, without user, password or query: the
/// query may hold a key; called only for a recorded span). `http.response.status_code` is
/// added when the answer comes.
pub fn http_client(
    tracer: &SdkTracer,
    parent: &str,
    method: &'static str,
    server: (&str, u16),
    url: impl FnOnce() -> String,
) -> SdkSpan {
    let mut span = start(tracer, parent, method, SpanKind::Client, CLIENT_ATTRIBUTES);
    if span.is_recording() {
        span.set_attribute(KeyValue::new("http.request.method", method));
        span.set_attribute(KeyValue::new("server.address", server.0.to_owned()));
        span.set_attribute(KeyValue::new("server.port", i64::from(server.1)));
        span.set_attribute(KeyValue::new("url.full", url()));
    }
    span
}

/// Marks a `process` span with the service's reply: `busgate.outcome` (`ok`, `not_found`,
/// or the error code) and an error status for an error.
pub fn outcome(span: &mut SdkSpan, reply: &crate::envelope::Reply) {
    use crate::envelope::Reply;
    use opentelemetry::trace::Status;
    if !span.is_recording() {
        return;
    }
    match reply {
        Reply::Ok(_) => span.set_attribute(KeyValue::new("busgate.outcome", "ok")),
        Reply::NotFound => span.set_attribute(KeyValue::new("busgate.outcome", "not_found")),
        Reply::Error(e) => {
            span.set_attribute(KeyValue::new("busgate.outcome", e.code.clone()));
            span.set_status(Status::error(e.message.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_once() {
        let made = || ("send s".to_owned(), "process s".to_owned());
        let a = names(Kind::Messaging, "busgate.svc.t", "t", made).expect("room");
        let b = names(Kind::Messaging, "busgate.svc.t", "t", || unreachable!()).expect("room");
        assert!(std::ptr::eq(a, b), "one copy");
        assert_eq!((a.x, a.y), ("send s", "process s"));
        let other = names(Kind::Messaging, "busgate.svc.t", "u", made).expect("room");
        assert!(!std::ptr::eq(a, other), "both inputs are the key");
        let server = names(Kind::Server, "busgate.svc.t", "t", made).expect("room");
        assert!(!std::ptr::eq(a, server), "so is the kind");
        // From another thread: the same copy, found under the lock.
        let c = std::thread::spawn(|| {
            names(Kind::Messaging, "busgate.svc.t", "t", || unreachable!())
                .map(|n| n as *const Names as usize)
        })
        .join()
        .expect("thread");
        assert_eq!(c, Some(a as *const Names as usize));
        assert_eq!(
            server_names("GET", "/api/orders/{order_id}"),
            Some(("GET /api/orders/{order_id}", "/api/orders/{order_id}"))
        );
        assert_eq!(text("order"), Some("order"));
    }
}
