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

use crate::config::snapshot::{Route, Target};
use crate::gather::collector::{Collector, Gather};
use crate::gather::graph::{Decision, Run, Seen, Skip};

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
    /// The target was not asked: its conditions did not hold, or (in a graph) a value or a
    /// dependency it needs is missing.
    Skipped(Skip),
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
            SourceResult::Skipped(_) => "skipped",
        }
    }

    /// Whether the source counts as present for `complete` (answered, or not asked).
    pub fn is_present(&self) -> bool {
        matches!(self, SourceResult::Ok { .. } | SourceResult::Skipped(_))
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
    /// For a composed route: when each target was asked, after the gather started (`None`:
    /// never). Empty for other routes.
    pub starts: Vec<Option<Duration>>,
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
    /// When it times out, after the gather started.
    timeout: Duration,
    /// When it was asked, after the gather started (zero but in a graph).
    start: Duration,
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
                start: Duration::ZERO,
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

    /// Marks source `index` as not asked yet (a graph's dependent): if the deadline it was
    /// given (the route's) passes before [`Book::arm`], it times out having waited nothing.
    pub fn hold(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.start = slot.timeout;
        }
    }

    /// Source `index` is asked `at` after the gather started, with `timeout` of its own; it
    /// still ends by the deadline it was given.
    pub fn arm(&mut self, index: usize, at: Duration, timeout: Duration) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.timeout = slot.timeout.min(at.saturating_add(timeout));
            slot.start = at.min(slot.timeout);
        }
    }

    /// What source `index` came to, if it has settled.
    pub fn result(&self, index: usize) -> Option<&SourceResult> {
        self.slots.get(index)?.result.as_ref()
    }

    /// How long source `index` has been asked at `now`.
    pub fn since_start(&self, index: usize, now: Instant) -> Duration {
        let start = self.slots.get(index).map_or(Duration::ZERO, |s| s.start);
        now.saturating_duration_since(self.started)
            .saturating_sub(start)
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
                let after = slot.timeout.saturating_sub(slot.start);
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
            starts: Vec::new(),
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
    /// A composed route's run; `None` for every other route.
    graph: Option<Box<Run>>,
}

impl Pending {
    /// Waits until every source of `route` (the route it was started for) has settled, a
    /// required one has failed, or the deadlines passed.
    pub async fn collect(&mut self, route: &Route) {
        collect(
            &mut self.book,
            &mut self.gather,
            route,
            self.graph.as_deref_mut(),
        )
        .await;
    }

    /// The result, after [`Pending::collect`]: sources still open are
    /// [`SourceResult::Cancelled`].
    pub fn finish(self) -> Outcome {
        let mut outcome = self.book.finish();
        if let Some(run) = self.graph {
            outcome.starts = run.starts().to_vec();
        }
        outcome
    }
}

/// Opens a gather and publishes the request to every target of `route` whose condition holds.
/// Never waits: the requests are queued on the collector's connection.
pub fn start(collector: &Collector, route: &Route, asker: &Asker<'_>) -> Pending {
    if route.graph.is_some() {
        return start_graph(collector, route, asker);
    }
    let mut book = Book::new(
        Instant::now(),
        route.targets.iter().map(|t| (t.required, t.timeout)),
    );
    let gather = collector.register(route.targets.len());
    scatter(&gather, route, asker, &mut book);
    Pending {
        book,
        gather,
        graph: None,
    }
}

/// Publishes the request to every target whose condition holds; settles the others (skipped)
/// and those that cannot be published.
fn scatter(gather: &Gather, route: &Route, asker: &Asker<'_>, book: &mut Book) {
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
                book.settle(index, SourceResult::Skipped(Skip::Condition));
                continue;
            }
        }
        let ids = [asker.request_id, asker.client, asker.traceparent];
        if !publish(
            gather,
            target,
            ids,
            &payload,
            now_ms,
            target.timeout,
            &mut reply,
        ) {
            book.settle(
                index,
                SourceResult::NoResponders {
                    elapsed: book.started().elapsed(),
                },
            );
        }
    }
}

/// Publishes one target's request, with `[request_id, client, traceparent]` in its headers
/// and a deadline `timeout` after `now_ms`; false when the bus refused it.
fn publish(
    gather: &Gather,
    target: &Target,
    [request_id, client, traceparent]: [&str; 3],
    payload: &Bytes,
    now_ms: u64,
    timeout: Duration,
    reply: &mut String,
) -> bool {
    let deadline_ms = now_ms.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    let mut digits = [0u8; 20];
    let headers = [
        (header::REQUEST_ID, request_id),
        (header::DEADLINE, header::decimal(deadline_ms, &mut digits)),
        (header::CLIENT, client),
        (header::TRACEPARENT, traceparent),
    ];
    let collector = gather.collector();
    collector.reply_subject(gather.id(), &target.name.0, reply);
    let published = collector
        .wire()
        .publish(&target.subject, Some(reply), &headers, payload);
    if let Err(e) = published {
        warn!(service = %target.service.0, error = %e, "cannot publish a service request");
        return false;
    }
    true
}

/// [`start`] for a composed route: every target waits (held) until the graph decides it;
/// the conditions on the request are decided now (the request is not kept), then the first
/// stage goes out.
fn start_graph(collector: &Collector, route: &Route, asker: &Asker<'_>) -> Pending {
    let mut book = Book::new(
        Instant::now(),
        route.targets.iter().map(|t| (t.required, route.deadline)),
    );
    let gather = collector.register(route.targets.len());
    let mut run = Box::new(Run::new(
        route.targets.len(),
        asker.request_id,
        asker.order_id,
        asker.client,
        asker.traceparent,
    ));
    for (index, target) in route.targets.iter().enumerate() {
        book.hold(index);
        let holds = target.when.as_ref().is_none_or(|when| {
            when.holds(
                &target.service.0,
                asker.order_id,
                asker.client,
                asker.headers,
            )
        });
        if !holds {
            run.decided(index);
            book.settle(index, SourceResult::Skipped(Skip::Condition));
        }
    }
    advance(&mut book, &gather, route, &mut run);
    Pending {
        book,
        gather,
        graph: Some(run),
    }
}

/// Asks the graph which targets can be decided now and carries that out: skips are settled,
/// asks published (the target's timeout counting from now, within the route's deadline), until
/// nothing more is decided or the gather is done.
fn advance(book: &mut Book, gather: &Gather, route: &Route, run: &mut Run) {
    let Some(graph) = route.graph.as_deref() else {
        return;
    };
    let mut decisions = Vec::new();
    let mut reply = String::new();
    loop {
        if book.step() == Step::Done {
            return;
        }
        decisions.clear();
        run.next(
            graph,
            |i| match book.result(i) {
                None => Seen::Open,
                Some(SourceResult::Ok { data, .. }) => Seen::Ok(data.as_ref()),
                Some(_) => Seen::Failed,
            },
            &mut decisions,
        );
        if decisions.is_empty() {
            return;
        }
        for decision in decisions.drain(..) {
            match decision {
                Decision::Skip { index, reason } => {
                    book.settle(index, SourceResult::Skipped(reason));
                }
                Decision::Ask { index, attributes } => {
                    let Some(target) = route.targets.get(index) else {
                        continue;
                    };
                    let at = Instant::now().saturating_duration_since(book.started());
                    book.arm(index, at, target.timeout);
                    run.started(index, at);
                    let attributes: Vec<(&str, &serde_json::Value)> =
                        attributes.iter().map(|(n, v)| (&**n, v)).collect();
                    let payload = ServiceRequest::encode_with_attributes(
                        &run.request_id,
                        &run.order_id,
                        &route.operation,
                        &attributes,
                    );
                    let timeout = target.timeout.min(route.deadline.saturating_sub(at));
                    let ids = [&*run.request_id, &*run.client, &*run.traceparent];
                    let now_ms = header::now_unix_ms();
                    if !publish(gather, target, ids, &payload, now_ms, timeout, &mut reply) {
                        book.settle(
                            index,
                            SourceResult::NoResponders {
                                elapsed: Duration::ZERO,
                            },
                        );
                    }
                }
            }
        }
    }
}

/// Waits for replies until the book says the gather is done.
async fn collect(book: &mut Book, gather: &mut Gather, route: &Route, mut run: Option<&mut Run>) {
    if book.step() == Step::Done {
        return;
    }
    while let Some(deadline) = book.next_deadline() {
        match tokio::time::timeout_at(deadline, gather.next()).await {
            Ok(Some(message)) => {
                let Some(index) = gather
                    .collector()
                    .source_of(&message)
                    .and_then(|source| route.targets.iter().position(|t| &*t.name.0 == source))
                else {
                    gather.collector().count_late();
                    continue;
                };
                let result =
                    SourceResult::from_message(&message, book.since_start(index, Instant::now()));
                match book.settle(index, result) {
                    Some(Step::Done) => return,
                    Some(Step::Continue) => {
                        if let Some(run) = run.as_deref_mut() {
                            advance(book, gather, route, run);
                            if book.step() == Step::Done {
                                return;
                            }
                        }
                    }
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
                if let Some(run) = run.as_deref_mut() {
                    advance(book, gather, route, run);
                    if book.step() == Step::Done {
                        return;
                    }
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
