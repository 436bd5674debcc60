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

use crate::cache::Mark;
use crate::config::snapshot::Route;
use crate::gather::collector::{Collector, Gather};
use crate::gather::reuse::{self, Ask, Intercepted, SlotReuse};

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
    /// What the cache and coalescing did per target, in the route's order; empty when they
    /// did nothing (see `crate::cache::Mark`).
    pub marks: Vec<Mark>,
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
    mark: Mark,
    reuse: SlotReuse,
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
                mark: Mark::default(),
                reuse: SlotReuse::default(),
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
        let result = match result {
            SourceResult::Ok { ref data, .. } => {
                slot.reuse.answered(&mut slot.mark, data);
                result
            }
            SourceResult::Error { elapsed, .. }
            | SourceResult::NoResponders { elapsed }
            | SourceResult::Timeout { after: elapsed } => match slot.reuse.failed(&mut slot.mark) {
                // The stale copy within `stale_if_error` answers instead.
                Some(data) => SourceResult::Ok { data, elapsed },
                None => result,
            },
            other => other,
        };
        if slot.required && !result.is_present() && self.failed.is_none() {
            self.failed = Some(index);
        }
        slot.result = Some(result);
        self.open -= 1;
        Some(self.step())
    }

    /// Gives source `index` what reuse made of it (before it is published).
    pub(crate) fn reuse_slot(&mut self, index: usize, mark: Mark, reuse: SlotReuse) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.mark = mark;
            slot.reuse = reuse;
        }
    }

    /// The flights of sources still waiting for their reply that other gathers follow
    /// (taken from their slots).
    pub(crate) fn open_flights(&mut self) -> Vec<reuse::OpenFlight> {
        let mut open = Vec::new();
        for slot in &mut self.slots {
            if let Some(flight) = slot.reuse.open_flight() {
                open.push(flight);
            }
        }
        open
    }

    /// The reply of source `index` came and this gather leads its flight: the gathers that
    /// follow it (to forward the reply to).
    pub(crate) fn land(&mut self, index: usize) -> Option<Vec<u64>> {
        self.slots.get_mut(index)?.reuse.land()
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
        let marks = if self.slots.iter().all(|s| s.mark.is_empty()) {
            Vec::new()
        } else {
            self.slots.iter().map(|s| s.mark).collect()
        };
        Outcome {
            failed: self.failed,
            results: self
                .slots
                .into_iter()
                .map(|s| s.result.unwrap_or(SourceResult::Cancelled))
                .collect(),
            marks,
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
///
/// A gather that ends (answered, failed early, or dropped with its client) while it leads a
/// coalesced flight that others follow hands its inbox over to `reuse::orphan`, which forwards
/// the reply to the followers when it comes (see `Pending::hand_over`).
pub struct Pending {
    book: Book,
    /// `None` once handed over.
    gather: Option<Gather>,
}

impl Pending {
    /// Waits until every source of `route` (the route it was started for) has settled, a
    /// required one has failed, or the deadlines passed.
    pub async fn collect(&mut self, route: &Route) {
        if let Some(gather) = &mut self.gather {
            collect(&mut self.book, gather, route).await;
        }
    }

    /// The result, after [`Pending::collect`]: sources still open are
    /// [`SourceResult::Cancelled`].
    pub fn finish(self) -> Outcome {
        let (outcome, open) = self.finish_open();
        if let Some(open) = open {
            open.release();
        }
        outcome
    }

    /// [`Pending::finish`], keeping the gather's reply inbox open (for a late grace), with the
    /// flights it leads whose reply has not come and that others follow.
    pub fn finish_open(mut self) -> (Outcome, Option<Open>) {
        let flights = self.book.open_flights();
        let started = self.book.started();
        let book = std::mem::replace(&mut self.book, Book::new(started, []));
        let open = self.gather.take().map(|gather| Open { gather, flights });
        (book.finish(), open)
    }

    /// The flights this gather leads whose reply has not come and that others follow: the
    /// inbox goes to a task that forwards their replies (nothing happens, and nothing is
    /// allocated, when there is none).
    fn hand_over(&mut self) {
        let flights = self.book.open_flights();
        if flights.is_empty() {
            return;
        }
        if let Some(gather) = self.gather.take() {
            reuse::orphan(gather, flights);
        }
    }
}

/// A finished gather's reply inbox, still open, and the flights it leads that others follow
/// (see [`Pending::finish_open`]).
pub struct Open {
    /// The inbox.
    pub gather: Gather,
    /// The flights whose reply has not come.
    pub flights: Vec<reuse::OpenFlight>,
}

impl Open {
    /// Done with the inbox: it goes to the followers of its open flights, if any, else closes.
    pub fn release(self) {
        if !self.flights.is_empty() {
            reuse::orphan(self.gather, self.flights);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.hand_over();
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
    scatter(&gather, route, asker, &mut book);
    Pending {
        book,
        gather: Some(gather),
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
                book.settle(index, SourceResult::Skipped);
                continue;
            }
        }
        if target.coalesce || target.cache.is_some() {
            let ask = Ask {
                request_id: asker.request_id,
                order_id: asker.order_id,
                client: asker.client,
                traceparent: asker.traceparent,
                cache_control: target
                    .cache
                    .and(asker.headers.get_header(crate::cache::CACHE_CONTROL)),
            };
            match reuse::intercept(gather, route, target, &ask, book.started()) {
                Intercepted::Publish(mark, slot) => book.reuse_slot(index, mark, slot),
                Intercepted::Follows(mark, slot) => {
                    book.reuse_slot(index, mark, slot);
                    continue;
                }
                Intercepted::Served(mark, data) => {
                    book.reuse_slot(index, mark, SlotReuse::default());
                    let elapsed = book.started().elapsed();
                    book.settle(index, SourceResult::Ok { data, elapsed });
                    continue;
                }
            }
        }
        // A route with a late grace still wants the reply that long after its deadline.
        let wanted = target.timeout + route.late.unwrap_or_default();
        let deadline_ms =
            now_ms.saturating_add(u64::try_from(wanted.as_millis()).unwrap_or(u64::MAX));
        let mut digits = [0u8; 20];
        let headers = [
            (header::REQUEST_ID, asker.request_id),
            (header::DEADLINE, header::decimal(deadline_ms, &mut digits)),
            (header::CLIENT, asker.client),
            (header::TRACEPARENT, asker.traceparent),
        ];
        let collector = gather.collector();
        collector.reply_subject(gather.id(), &target.service.0, &mut reply);
        let published = collector
            .wire()
            .publish(&target.subject, Some(&reply), &headers, &payload);
        if let Err(e) = published {
            warn!(service = %target.service.0, error = %e, "cannot publish a service request");
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
                if let Some(followers) = book.land(index) {
                    for follower in followers {
                        gather.collector().forward(follower, message.clone());
                    }
                }
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

    fn stale_copy() -> SlotReuse {
        let entry = std::sync::Arc::new(crate::cache::store::Entry {
            data: Some(Bytes::from_static(b"{\"old\":1}")),
            stored: std::time::Instant::now(),
        });
        SlotReuse::with_fallback(entry, -40)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_required_source_with_a_stale_copy_does_not_fail_the_gather() {
        use crate::cache::CacheState;
        for failure in [
            SourceResult::Error {
                code: "c".into(),
                message: "m".into(),
                elapsed: MS,
            },
            SourceResult::NoResponders { elapsed: MS },
        ] {
            let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
            book.reuse_slot(0, Mark::default(), stale_copy());
            book.settle(0, failure);
            let outcome = book.finish();
            assert_eq!(outcome.failed, None);
            assert!(outcome.results[0].is_ok());
            assert_eq!(
                outcome.marks[0].cache,
                Some(CacheState::OnError { ttl: -40 })
            );
        }
        // A timeout too, through the deadline.
        let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
        book.reuse_slot(0, Mark::default(), stale_copy());
        tokio::time::advance(100 * MS).await;
        book.expire(Instant::now());
        let outcome = book.finish();
        assert_eq!(outcome.failed, None);
        assert_eq!(outcome.marks[0].cache.map(CacheState::word), Some("stale"));
        // A not_found is an answer, not a failure: no stale copy for it.
        let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
        book.reuse_slot(0, Mark::default(), stale_copy());
        book.settle(0, SourceResult::NotFound { elapsed: MS });
        assert_eq!(book.finish().failed, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ok_reply_is_stored_and_says_so() {
        use crate::cache::store::{Found, ServiceCache};
        use crate::cache::CacheState;
        use busgate_shared::config::CacheSpec;
        let cache = std::sync::Arc::new(ServiceCache::new(CacheSpec::fresh_for(
            Duration::from_secs(5),
        )));
        let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
        let mark = Mark {
            cache: Some(CacheState::Miss { stored: false }),
            coalesced: false,
        };
        book.reuse_slot(0, mark, SlotReuse::storing(cache.clone(), 42));
        book.settle(0, ok());
        let outcome = book.finish();
        assert_eq!(
            outcome.marks[0].cache,
            Some(CacheState::Miss { stored: true })
        );
        assert!(matches!(
            cache.lookup(42, std::time::Instant::now()),
            Found::Fresh { .. }
        ));
        // An answer without reuse carries no marks at all (nothing allocated).
        let mut plain = Book::new(Instant::now(), [(true, 100 * MS)]);
        plain.settle(0, SourceResult::NotFound { elapsed: MS });
        assert!(plain.finish().marks.is_empty());
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
