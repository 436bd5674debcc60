//! One scatter-gather: publish a request to every target of a route, each with its own reply
//! subject, then collect until every source has answered, a required one has failed, or the
//! deadlines pass.
//!
//! The bookkeeping is a pure state machine ([`Book`]) so that its deadline logic is unit-tested
//! with paused time; [`start`] and [`Pending::collect`] are the thin async code around it.

use std::time::Duration;

use busgate_shared::wire::Msg;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, warn};

use busgate_shared::envelope::code::gateway as code;
use busgate_shared::envelope::{ParsedReply, ReplyStatus, ServiceRequest};
use busgate_shared::header;
use busgate_shared::telemetry::Traceparent;

use crate::config::snapshot::Route;
use crate::gather::collector::{Collector, Gather};
use crate::gather::trace::Sends;

/// What one source came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceResult {
    /// Data (the `data` bytes exactly as the service sent them; `None` for `null`).
    Ok {
        /// The data.
        data: Option<Bytes>,
        /// Time from publish to reply, as the gateway saw it.
        elapsed: Duration,
    },
    /// The service does not know the order.
    NotFound {
        /// Time from publish to reply.
        elapsed: Duration,
    },
    /// The service failed (or sent something that is not a reply).
    Error {
        /// Machine-readable code.
        code: String,
        /// Human-readable message.
        message: String,
        /// Time from publish to reply.
        elapsed: Duration,
    },
    /// No instance of the service is subscribed (or the bus refused the publish).
    NoResponders {
        /// Time from publish to the bus's answer.
        elapsed: Duration,
    },
    /// No reply within the target's timeout.
    Timeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// The gather ended (a required source failed) before this one answered.
    Cancelled,
    /// The target's conditions did not hold for this request: it was not asked.
    Skipped,
}

impl SourceResult {
    /// The status word used in answers and metrics.
    pub fn status(&self) -> &'static str {
        match self {
            SourceResult::Ok { .. } => "ok",
            SourceResult::NotFound { .. } => "not_found",
            SourceResult::Error { .. } => "error",
            SourceResult::NoResponders { .. } => "no_responders",
            SourceResult::Timeout { .. } => "timeout",
            SourceResult::Cancelled => "cancelled",
            SourceResult::Skipped => "skipped",
        }
    }

    /// Whether the source counts as present for `complete` (answered, or not asked).
    pub fn is_present(&self) -> bool {
        matches!(self, SourceResult::Ok { .. } | SourceResult::Skipped)
    }

    /// Whether the source delivered data.
    pub fn is_ok(&self) -> bool {
        matches!(self, SourceResult::Ok { .. })
    }

    /// Reads a reply message (or the bus's status message) into a result.
    pub fn from_message(message: &Msg, elapsed: Duration) -> Self {
        if let Some(status) = message.status() {
            if status == busgate_shared::wire::NO_RESPONDERS {
                return SourceResult::NoResponders { elapsed };
            }
            return SourceResult::Error {
                code: code::BUS_STATUS.into(),
                message: format!("the bus answered status {status}"),
                elapsed,
            };
        }
        match ParsedReply::parse(&message.payload) {
            Ok(reply) => match reply.status {
                ReplyStatus::Ok => SourceResult::Ok {
                    data: reply.data,
                    elapsed,
                },
                ReplyStatus::NotFound => SourceResult::NotFound { elapsed },
                ReplyStatus::Error => {
                    let (code, message) =
                        reply.error.map(|e| (e.code, e.message)).unwrap_or_else(|| {
                            (code::UNKNOWN.into(), "the service reported an error".into())
                        });
                    SourceResult::Error {
                        code,
                        message,
                        elapsed,
                    }
                }
            },
            Err(e) => {
                // The parser's words are for the log, not for clients.
                debug!(error = %e, "a reply that is not a reply envelope");
                SourceResult::Error {
                    code: code::BAD_REPLY.into(),
                    message: "the reply is not a Busgate reply envelope".into(),
                    elapsed,
                }
            }
        }
    }
}

/// The result of a gather.
#[derive(Debug)]
pub struct Outcome {
    /// One result per target, in the route's order.
    pub results: Vec<SourceResult>,
    /// The first required target that failed, if any.
    pub failed: Option<usize>,
}

/// The state of one gather: which targets are open, until when, and what came back.
#[derive(Debug)]
pub struct Book {
    started: Instant,
    slots: Vec<Slot>,
    open: usize,
    failed: Option<usize>,
}

#[derive(Debug)]
struct Slot {
    required: bool,
    timeout: Duration,
    result: Option<SourceResult>,
}

/// Whether a gather goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep collecting.
    Continue,
    /// Every source is settled, or a required one failed.
    Done,
}

impl Book {
    /// A book for targets given as `(required, timeout)`, started at `started`.
    pub fn new(started: Instant, targets: impl IntoIterator<Item = (bool, Duration)>) -> Self {
        let slots: Vec<Slot> = targets
            .into_iter()
            .map(|(required, timeout)| Slot {
                required,
                timeout,
                result: None,
            })
            .collect();
        let open = slots.len();
        Book {
            started,
            slots,
            open,
            failed: None,
        }
    }

    /// When the gather started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records what source `index` came to. Returns `None` when the source was already settled
    /// (a duplicate or late reply), else whether to go on.
    pub fn settle(&mut self, index: usize, result: SourceResult) -> Option<Step> {
        let slot = self.slots.get_mut(index)?;
        if slot.result.is_some() {
            return None;
        }
        if slot.required && !result.is_present() && self.failed.is_none() {
            self.failed = Some(index);
        }
        slot.result = Some(result);
        self.open -= 1;
        Some(self.step())
    }

    /// Times out every open source whose timeout has passed at `now`.
    pub fn expire(&mut self, now: Instant) -> Step {
        let elapsed = now.saturating_duration_since(self.started);
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.result.is_none() && slot.timeout <= elapsed {
                let after = slot.timeout;
                self.settle(index, SourceResult::Timeout { after });
            }
        }
        self.step()
    }

    /// The earliest instant at which an open source times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.result.is_none())
            .map(|s| self.started + s.timeout)
            .min()
    }

    fn step(&self) -> Step {
        if self.open == 0 || self.failed.is_some() {
            Step::Done
        } else {
            Step::Continue
        }
    }

    /// Ends the gather: open sources become [`SourceResult::Cancelled`].
    pub fn finish(self) -> Outcome {
        Outcome {
            failed: self.failed,
            results: self
                .slots
                .into_iter()
                .map(|s| s.result.unwrap_or(SourceResult::Cancelled))
                .collect(),
        }
    }
}

/// Who is asking, for the request headers and payload.
#[derive(Clone, Copy)]
pub struct Asker<'a> {
    /// The request's UUIDv7.
    pub request_id: &'a str,
    /// The validated order id.
    pub order_id: &'a str,
    /// The client id (empty until clients are configured).
    pub client: &'a str,
    /// The W3C traceparent to send.
    pub traceparent: &'a str,
    /// The request headers that conditions may read.
    pub headers: &'a dyn crate::config::snapshot::Headers,
}

/// A gather whose requests are out: all it needs to collect the replies. It holds nothing of
/// the request that asked for it, so a request waiting on one is small.
pub struct Pending {
    book: Book,
    gather: Gather,
    /// The send spans, with traces on.
    sends: Option<Box<Sends>>,
}

impl Pending {
    /// Waits until every source of `route` (the route it was started for) has settled, a
    /// required one has failed, or the deadlines passed.
    pub async fn collect(&mut self, route: &Route) {
        collect(&mut self.book, &mut self.gather, route).await;
    }

    /// The result, after [`Pending::collect`]: sources still open are
    /// [`SourceResult::Cancelled`].
    pub fn finish(self) -> Outcome {
        let outcome = self.book.finish();
        if let Some(sends) = self.sends {
            sends.end(outcome.results.iter().map(SourceResult::status));
        }
        outcome
    }
}

/// Opens a gather and publishes the request to every target of `route` whose condition holds.
/// Never waits: the requests are queued on the collector's connection.
pub fn start(collector: &Collector, route: &Route, asker: &Asker<'_>) -> Pending {
    let mut book = Book::new(
        Instant::now(),
        route.targets.iter().map(|t| (t.required, t.timeout)),
    );
    let gather = collector.register(route.targets.len());
    let mut sends = Sends::begin(route.targets.len());
    scatter(&gather, route, asker, &mut book, sends.as_deref_mut());
    Pending {
        book,
        gather,
        sends,
    }
}

/// Publishes the request to every target whose condition holds; settles the others (skipped)
/// and those that cannot be published.
fn scatter(
    gather: &Gather,
    route: &Route,
    asker: &Asker<'_>,
    book: &mut Book,
    mut sends: Option<&mut Sends>,
) {
    let payload = ServiceRequest::encode_without_attributes(
        asker.request_id,
        asker.order_id,
        &route.operation,
    );
    let now_ms = header::now_unix_ms();
    let mut reply = String::new();
    for (index, target) in route.targets.iter().enumerate() {
        if let Some(when) = &target.when {
            if !when.holds(
                &target.service.0,
                asker.order_id,
                asker.client,
                asker.headers,
            ) {
                book.settle(index, SourceResult::Skipped);
                continue;
            }
        }
        let deadline_ms =
            now_ms.saturating_add(u64::try_from(target.timeout.as_millis()).unwrap_or(u64::MAX));
        let mut digits = [0u8; 20];
        // With traces on, this request's send span is the service's parent.
        let own = sends
            .as_deref_mut()
            .and_then(|s| s.send(index, asker.traceparent, target));
        let traceparent = own.as_ref().map_or(asker.traceparent, Traceparent::as_str);
        let headers = [
            (header::REQUEST_ID, asker.request_id),
            (header::DEADLINE, header::decimal(deadline_ms, &mut digits)),
            (header::CLIENT, asker.client),
            (header::TRACEPARENT, traceparent),
        ];
        let collector = gather.collector();
        collector.reply_subject(gather.id(), &target.service.0, &mut reply);
        let published = collector
            .wire()
            .publish(&target.subject, Some(&reply), &headers, &payload);
        if let Err(e) = published {
            warn!(
                service = %target.service.0,
                request_id = asker.request_id,
                trace_id = busgate_shared::telemetry::trace_id(traceparent),
                span_id = busgate_shared::telemetry::span_id(traceparent),
                error = %e,
                "cannot publish a service request"
            );
            book.settle(
                index,
                SourceResult::NoResponders {
                    elapsed: book.started().elapsed(),
                },
            );
        }
    }
}

/// Waits for replies until the book says the gather is done.
async fn collect(book: &mut Book, gather: &mut Gather, route: &Route) {
    if book.step() == Step::Done {
        return;
    }
    while let Some(deadline) = book.next_deadline() {
        match tokio::time::timeout_at(deadline, gather.next()).await {
            Ok(Some(message)) => {
                let Some(index) = gather
                    .collector()
                    .source_of(&message)
                    .and_then(|source| route.targets.iter().position(|t| &*t.service.0 == source))
                else {
                    gather.collector().count_late();
                    continue;
                };
                let result = SourceResult::from_message(&message, book.started().elapsed());
                match book.settle(index, result) {
                    Some(Step::Done) => return,
                    Some(Step::Continue) => {}
                    None => {
                        debug!(gather = gather.id(), index, "duplicate reply");
                        gather.collector().count_late();
                    }
                }
            }
            Ok(None) => return,
            Err(_) => {
                if book.expire(Instant::now()) == Step::Done {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ok() -> SourceResult {
        SourceResult::Ok {
            data: Some(Bytes::from_static(b"{}")),
            elapsed: MS,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_sources_answering_completes_at_once() {
        let start = Instant::now();
        let mut book = Book::new(start, [(true, 800 * MS), (false, 800 * MS)]);
        assert_eq!(book.settle(1, ok()), Some(Step::Continue));
        assert_eq!(book.settle(0, ok()), Some(Step::Done));
        let outcome = book.finish();
        assert_eq!(outcome.failed, None);
        assert!(outcome.results.iter().all(SourceResult::is_ok));
    }

    #[tokio::test(start_paused = true)]
    async fn optional_timeout_leaves_the_answer_incomplete() {
        let start = Instant::now();
        let mut book = Book::new(start, [(true, 800 * MS), (false, 300 * MS)]);
        assert_eq!(book.next_deadline(), Some(start + 300 * MS));
        assert_eq!(book.settle(0, ok()), Some(Step::Continue));
        tokio::time::advance(299 * MS).await;
        assert_eq!(book.expire(Instant::now()), Step::Continue);
        tokio::time::advance(MS).await;
        assert_eq!(book.expire(Instant::now()), Step::Done);
        let outcome = book.finish();
        assert_eq!(outcome.failed, None);
        assert_eq!(
            outcome.results[1],
            SourceResult::Timeout { after: 300 * MS }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn required_failure_ends_the_gather_and_cancels_the_rest() {
        let start = Instant::now();
        let mut book = Book::new(start, [(false, 800 * MS), (true, 800 * MS)]);
        let step = book.settle(1, SourceResult::NoResponders { elapsed: MS });
        assert_eq!(step, Some(Step::Done));
        let outcome = book.finish();
        assert_eq!(outcome.failed, Some(1));
        assert_eq!(outcome.results[0], SourceResult::Cancelled);
    }

    #[tokio::test(start_paused = true)]
    async fn required_timeout_fails_and_duplicates_are_refused() {
        let start = Instant::now();
        let mut book = Book::new(start, [(true, 100 * MS), (false, 900 * MS)]);
        tokio::time::advance(100 * MS).await;
        assert_eq!(book.expire(Instant::now()), Step::Done);
        assert_eq!(
            book.settle(0, ok()),
            None,
            "a reply after the timeout is late"
        );
        let outcome = book.finish();
        assert_eq!(outcome.failed, Some(0));
        assert_eq!(
            outcome.results[0],
            SourceResult::Timeout { after: 100 * MS }
        );
        assert_eq!(outcome.results[1], SourceResult::Cancelled);
    }

    #[test]
    fn bus_statuses_and_bad_payloads_are_classified() {
        let message = |status: Option<u16>, payload: &'static [u8]| Msg {
            subject: Bytes::from_static(b"s"),
            reply: None,
            headers: status.map(|s| Bytes::from(format!("NATS/1.0 {s}\r\n\r\n"))),
            payload: Bytes::from_static(payload),
        };
        assert_eq!(
            SourceResult::from_message(&message(Some(503), b""), MS),
            SourceResult::NoResponders { elapsed: MS }
        );
        assert_eq!(
            SourceResult::from_message(&message(Some(408), b""), MS).status(),
            "error"
        );
        assert!(matches!(
            SourceResult::from_message(&message(None, b"nope"), MS),
            SourceResult::Error { code, message, .. }
                if code == code::BAD_REPLY && !message.contains("expected")
        ));
        let r = SourceResult::from_message(
            &message(
                None,
                br#"{"service":"s","status":"ok","data":{"x":1},"elapsed_ms":1}"#,
            ),
            MS,
        );
        assert_eq!(
            r,
            SourceResult::Ok {
                data: Some(Bytes::from_static(br#"{"x":1}"#)),
                elapsed: MS
            }
        );
        let r = SourceResult::from_message(
            &message(
                None,
                br#"{"service":"s","status":"error","error":{"code":"c","message":"m"}}"#,
            ),
            MS,
        );
        assert_eq!(r.status(), "error");
    }
}
