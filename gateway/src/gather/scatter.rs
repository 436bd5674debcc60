//! One scatter-gather: publish a request to every target of a route, each with its own reply
//! subject, then collect until every source has answered, a required one has failed, or the
//! deadlines pass.
//!
//! The bookkeeping is a pure state machine ([`Book`]) so that its deadline logic is unit-tested
//! with paused time; [`start`] and [`Pending::collect`] are the thin async code around it.
//!
//! A target whose service has a guard (`crate::resilience`) is asked through it: not at all
//! while its breaker is open ([`SourceResult::CircuitOpen`]), again after a failure while its
//! retry policy, its time and its budget allow, and once more when it is slow to answer
//! (a hedge). Every attempt uses the source's one reply subject, so the first reply settles
//! the source and the others are counted as late.

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
use crate::gather::graph::{Run, Skip};
use crate::gather::resend::Resend;
use crate::gather::stages;
use crate::resilience::Reply;

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
    /// The service's circuit breaker is open: it was not asked.
    CircuitOpen,
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
            SourceResult::CircuitOpen => "circuit_open",
        }
    }

    /// Whether the source counts as present for `complete` (answered, or not asked).
    pub fn is_present(&self) -> bool {
        matches!(self, SourceResult::Ok { .. } | SourceResult::Skipped(_))
    }

    /// What the attempt came to, as a service's guard counts it.
    pub fn reply(&self) -> Reply {
        match self {
            SourceResult::Ok { elapsed, .. } => Reply::Ok(*elapsed),
            SourceResult::NotFound { elapsed } => Reply::NotFound(*elapsed),
            _ => Reply::Failed,
        }
    }

    /// Whether asking again may help (an error, or no responders).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SourceResult::Error { .. } | SourceResult::NoResponders { .. }
        )
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
    /// Per target, the requests sent and whether one was a hedge; empty when every source was
    /// asked at most once.
    pub tries: Vec<Tries>,
}

/// The requests sent to one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tries {
    /// Requests sent (the first, retries and a hedge).
    pub attempts: u8,
    /// Whether one of them was a hedge.
    pub hedged: bool,
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
    tries: Tries,
    /// When a hedge is due, if one is armed.
    hedge_at: Option<Instant>,
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
                tries: Tries {
                    attempts: 1,
                    hedged: false,
                },
                hedge_at: None,
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

    /// The earliest instant at which an open source times out or is due a hedge.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.result.is_none())
            .map(|s| match s.hedge_at {
                Some(at) => at.min(self.started + s.timeout),
                None => self.started + s.timeout,
            })
            .min()
    }

    /// The time source `index` has for this request (the target's timeout, shortened by the
    /// client's `Busgate-Timeout`).
    pub fn timeout(&self, index: usize) -> Duration {
        self.slots.get(index).map_or(Duration::ZERO, |s| s.timeout)
    }

    /// What is left of source `index`'s time at `now`.
    pub fn left(&self, index: usize, now: Instant) -> Duration {
        (self.started + self.timeout(index)).saturating_duration_since(now)
    }

    /// Whether source `index` is still open.
    pub fn is_open(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(|s| s.result.is_none())
    }

    /// Whether open source `index` times out by `now`.
    pub fn times_out(&self, index: usize, now: Instant) -> bool {
        self.is_open(index) && self.left(index, now).is_zero()
    }

    /// Requests sent to source `index` other than hedges: what its retry policy counts.
    pub fn attempts(&self, index: usize) -> u32 {
        self.slots.get(index).map_or(0, |s| {
            u32::from(s.tries.attempts) - u32::from(s.tries.hedged)
        })
    }

    /// Counts another request sent to source `index`; `hedge`: it is a hedge.
    pub fn sent(&mut self, index: usize, hedge: bool) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.tries.attempts = slot.tries.attempts.saturating_add(1);
            slot.tries.hedged |= hedge;
        }
    }

    /// Arms a hedge of source `index` at `at` (ignored at or past its timeout).
    pub fn arm_hedge(&mut self, index: usize, at: Instant) {
        let started = self.started;
        if let Some(slot) = self.slots.get_mut(index) {
            if at < started + slot.timeout {
                slot.hedge_at = Some(at);
            }
        }
    }

    /// An open source whose hedge is due at `now`, its hedge disarmed.
    pub fn due_hedge(&mut self, now: Instant) -> Option<usize> {
        let index = self
            .slots
            .iter()
            .position(|s| s.result.is_none() && s.hedge_at.is_some_and(|at| at <= now))?;
        self.slots[index].hedge_at = None;
        Some(index)
    }

    pub fn step(&self) -> Step {
        if self.open == 0 || self.failed.is_some() {
            Step::Done
        } else {
            Step::Continue
        }
    }

    /// Ends the gather: open sources become [`SourceResult::Cancelled`].
    pub fn finish(self) -> Outcome {
        let tries = if self.slots.iter().any(|s| s.tries.attempts > 1) {
            self.slots.iter().map(|s| s.tries).collect()
        } else {
            Vec::new()
        };
        Outcome {
            starts: Vec::new(),
            failed: self.failed,
            tries,
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
    /// The client's own deadline (`Busgate-Timeout`): shortens every target's timeout.
    pub timeout: Option<Duration>,
}

/// A gather whose requests are out: all it needs to collect the replies. It holds nothing of
/// the request that asked for it, so a request waiting on one is small.
pub struct Pending {
    book: Book,
    gather: Gather,
    /// What a retry or a hedge sends again; only for routes with guards that may send more.
    resend: Option<Box<Resend>>,
    /// A composed route's run; `None` for every other route.
    graph: Option<Box<Run>>,
}

impl Pending {
    /// A composed route's gather (see [`crate::gather::stages`]).
    pub(crate) fn composed(book: Book, gather: Gather, run: Box<Run>) -> Pending {
        Pending {
            book,
            gather,
            resend: None,
            graph: Some(run),
        }
    }

    /// Waits until every source of `route` (the route it was started for) has settled, a
    /// required one has failed, or the deadlines passed.
    pub async fn collect(&mut self, route: &Route) {
        collect(
            &mut self.book,
            &mut self.gather,
            route,
            self.resend.as_deref(),
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
        return stages::start_graph(collector, route, asker);
    }
    let limit = asker.timeout;
    let mut book = Book::new(
        Instant::now(),
        route.targets.iter().map(|t| {
            let timeout = limit.map_or(t.timeout, |limit| t.timeout.min(limit));
            (t.required, timeout)
        }),
    );
    let gather = collector.register(route.targets.len() + route.extra_replies);
    let resend = scatter(&gather, route, asker, &mut book);
    Pending {
        book,
        gather,
        resend,
        graph: None,
    }
}

/// Publishes the request to every target whose condition holds; settles the others (skipped,
/// circuit open) and those that cannot be published. Returns what a retry or hedge needs to
/// send the request again, when the route's guards may.
fn scatter(
    gather: &Gather,
    route: &Route,
    asker: &Asker<'_>,
    book: &mut Book,
) -> Option<Box<Resend>> {
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
        if let Some(guard) = &target.guard {
            if !guard.admit(gather.collector().metrics()) {
                book.settle(index, SourceResult::CircuitOpen);
                continue;
            }
            if let Some(after) = guard.hedge_after() {
                book.arm_hedge(index, book.started() + after);
            }
        }
        let ids = [asker.request_id, asker.client, asker.traceparent];
        let timeout = book.timeout(index);
        if !publish(gather, target, ids, &payload, now_ms, timeout, &mut reply) {
            book.settle(
                index,
                SourceResult::NoResponders {
                    elapsed: book.started().elapsed(),
                },
            );
        }
    }
    (route.extra_replies > 0).then(|| {
        Resend::new(
            payload,
            asker.request_id,
            asker.client,
            asker.traceparent,
            now_ms,
        )
    })
}

/// Sends the request to source `index` again (a retry or a hedge); whether it went out.
fn send_again(gather: &Gather, route: &Route, book: &Book, index: usize, resend: &Resend) -> bool {
    route
        .targets
        .get(index)
        .is_some_and(|target| resend.send(gather, target, book.timeout(index)))
}

/// Publishes one target's request, with `[request_id, client, traceparent]` in its headers
/// and a deadline `timeout` after `now_ms`; false when the bus refused it.
pub(crate) fn publish(
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

/// Waits for replies until the book says the gather is done; retries and hedges through the
/// targets' guards when `resend` is there, and asks a composed route's next stages (`run`) as
/// their needs settle.
async fn collect(
    book: &mut Book,
    gather: &mut Gather,
    route: &Route,
    resend: Option<&Resend>,
    mut run: Option<&mut Run>,
) {
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
                if let Some(guard) = &route.targets[index].guard {
                    if book.is_open(index) {
                        let metrics = gather.collector().metrics();
                        guard.record(metrics, result.reply());
                        if let Some(resend) = resend.filter(|_| result.is_retryable()) {
                            let left = book.left(index, Instant::now());
                            if guard.retry(metrics, book.attempts(index), left)
                                && send_again(gather, route, book, index, resend)
                            {
                                book.sent(index, false);
                                continue;
                            }
                        }
                    }
                }
                match book.settle(index, result) {
                    Some(Step::Done) => return,
                    Some(Step::Continue) => {
                        if let Some(run) = run.as_deref_mut() {
                            stages::advance(book, gather, route, run);
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
                let now = Instant::now();
                if route.extra_replies > 0 || route.targets.iter().any(|t| t.guard.is_some()) {
                    guarded_wake(book, gather, route, resend, now);
                }
                if book.expire(now) == Step::Done {
                    return;
                }
                if let Some(run) = run.as_deref_mut() {
                    stages::advance(book, gather, route, run);
                    if book.step() == Step::Done {
                        return;
                    }
                }
            }
        }
    }
}

/// A wake-up of a gather with guards: the hedges that are due go out (within their budget),
/// and the timeouts about to be settled are counted as failures by their breakers.
fn guarded_wake(
    book: &mut Book,
    gather: &Gather,
    route: &Route,
    resend: Option<&Resend>,
    now: Instant,
) {
    let metrics = gather.collector().metrics();
    while let Some(index) = book.due_hedge(now) {
        let (Some(guard), Some(resend)) = (&route.targets[index].guard, resend) else {
            continue;
        };
        if guard.hedge(metrics) && send_again(gather, route, book, index, resend) {
            book.sent(index, true);
        }
    }
    for (index, target) in route.targets.iter().enumerate() {
        if let Some(guard) = &target.guard {
            if book.times_out(index, now) {
                guard.record(metrics, Reply::Failed);
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

    #[tokio::test(start_paused = true)]
    async fn a_hedge_wakes_the_gather_before_the_timeout_and_fires_once() {
        let start = Instant::now();
        let mut book = Book::new(start, [(true, 300 * MS), (false, 300 * MS)]);
        book.arm_hedge(0, start + 50 * MS);
        book.arm_hedge(1, start + 300 * MS);
        assert_eq!(
            book.next_deadline(),
            Some(start + 50 * MS),
            "the hedge comes first"
        );
        assert_eq!(book.due_hedge(start + 49 * MS), None);
        assert_eq!(book.due_hedge(start + 50 * MS), Some(0));
        assert_eq!(book.due_hedge(start + 50 * MS), None, "disarmed");
        book.sent(0, true);
        assert_eq!(
            book.next_deadline(),
            Some(start + 300 * MS),
            "a hedge at the timeout is none"
        );
        assert_eq!(book.attempts(0), 1, "a hedge is no retry");
        book.sent(0, false);
        assert_eq!(book.attempts(0), 2);
        assert_eq!(book.settle(0, ok()), Some(Step::Continue));
        assert_eq!(
            book.settle(0, ok()),
            None,
            "the second reply is a duplicate"
        );
        let outcome = book.finish();
        assert_eq!(
            outcome.tries,
            vec![
                Tries {
                    attempts: 3,
                    hedged: true
                },
                Tries {
                    attempts: 1,
                    hedged: false
                }
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_left_follows_the_shortened_timeout() {
        let start = Instant::now();
        let book = Book::new(start, [(true, 100 * MS)]);
        assert_eq!(book.left(0, start + 30 * MS), 70 * MS);
        assert!(!book.times_out(0, start + 99 * MS));
        assert!(book.times_out(0, start + 100 * MS));
        assert_eq!(book.left(0, start + 200 * MS), Duration::ZERO);
        let single = Book::new(start, [(true, 100 * MS)]).finish();
        assert!(
            single.tries.is_empty(),
            "no allocation when nothing was sent twice"
        );
    }

    #[test]
    fn circuit_open_is_a_failure_worth_no_retry() {
        let open = SourceResult::CircuitOpen;
        assert_eq!(open.status(), "circuit_open");
        assert!(!open.is_present());
        assert!(!open.is_retryable());
        assert_eq!(open.reply(), Reply::Failed);
        assert!(SourceResult::NoResponders { elapsed: MS }.is_retryable());
        assert!(!SourceResult::NotFound { elapsed: MS }.is_retryable());
        assert_eq!(
            SourceResult::NotFound { elapsed: MS }.reply(),
            Reply::NotFound(MS)
        );
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
