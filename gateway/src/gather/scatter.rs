//! One scatter-gather: publish a request to every target of a route, each with its own reply
//! subject, then collect until every source has answered, a required one has failed, or the
//! deadlines pass.
//!
//! The bookkeeping is a pure state machine ([`Book`], in `gather::book`) so that its deadline
//! logic is unit-tested with paused time; [`start`] and [`Pending::collect`] are the thin async
//! code around it.
//!
//! A target with a cache or coalescing goes through `gather::reuse` first (a fresh copy
//! settles it, a follower does not publish); a follower's reply is its leader's final one, so
//! its guard counts nothing and a leader's retry keeps its followers waiting.
//!
//! A target whose service has a guard (`crate::resilience`) is asked through it: not at all
//! while its breaker is open ([`SourceResult::CircuitOpen`]), again after a failure while its
//! retry policy, its time and its budget allow, and once more when it is slow to answer
//! (a hedge). Every attempt uses the source's one reply subject, so the first reply settles
//! the source and the others are counted as late.

use tokio::time::Instant;
use tracing::debug;

use busgate_shared::envelope::ServiceRequest;
use busgate_shared::header;
use busgate_shared::telemetry::Traceparent;

use crate::config::snapshot::Route;
use crate::gather::ask::publish;
pub use crate::gather::ask::Asker;
pub use crate::gather::book::{Book, Outcome, SourceResult, Step, Tries};
use crate::gather::collector::{Collector, Gather};
use crate::gather::graph::{Run, Skip};
use crate::gather::resend::Resend;
use crate::gather::reuse::{self, Ask, Intercepted, SlotReuse};
use crate::gather::stages;
use crate::gather::trace::Sends;
use crate::resilience::Reply;

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
    /// What a retry or a hedge sends again; only for routes with guards that may send more.
    resend: Option<Box<Resend>>,
    /// A composed route's run; `None` for every other route.
    graph: Option<Box<Run>>,
    /// The send spans, with traces on.
    sends: Option<Box<Sends>>,
}

impl Pending {
    /// A composed route's gather (see [`crate::gather::stages`]).
    pub(crate) fn composed(
        book: Book,
        gather: Gather,
        run: Box<Run>,
        sends: Option<Box<Sends>>,
    ) -> Pending {
        Pending {
            book,
            gather: Some(gather),
            resend: None,
            graph: Some(run),
            sends,
        }
    }

    /// Waits until every source of `route` (the route it was started for) has settled, a
    /// required one has failed, or the deadlines passed.
    pub async fn collect(&mut self, route: &Route) {
        if let Some(gather) = &mut self.gather {
            collect(
                &mut self.book,
                gather,
                route,
                self.resend.as_deref(),
                self.graph.as_deref_mut(),
                self.sends.as_deref_mut(),
            )
            .await;
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
        let mut outcome = book.finish();
        if let Some(run) = self.graph.take() {
            outcome.starts = run.starts().to_vec();
        }
        if let Some(sends) = self.sends.take() {
            sends.end(outcome.results.iter().map(SourceResult::status));
        }
        (outcome, open)
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
    if route.graph.is_some() {
        let mut sends = Sends::begin(route.targets.len());
        let (book, gather, run) =
            stages::start_graph(collector, route, asker, sends.as_deref_mut());
        return Pending::composed(book, gather, run, sends);
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
    let mut sends = Sends::begin(route.targets.len());
    let resend = scatter(&gather, route, asker, &mut book, sends.as_deref_mut());
    Pending {
        book,
        gather: Some(gather),
        resend,
        graph: None,
        sends,
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
    mut sends: Option<&mut Sends>,
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
            let budget = book.timeout(index);
            match reuse::intercept(gather, route, target, &ask, book.started() + budget, budget) {
                Intercepted::Publish(mark, slot) => book.reuse_slot(index, mark, slot),
                Intercepted::Follows(mark, slot) => {
                    book.reuse_slot(index, mark, slot);
                    if let Some(sends) = sends.as_deref_mut() {
                        sends.note(index, asker.traceparent, target, "coalesced");
                    }
                    continue;
                }
                Intercepted::Served(mark, data) => {
                    book.reuse_slot(index, mark, SlotReuse::default());
                    if let Some(sends) = sends.as_deref_mut() {
                        sends.note(index, asker.traceparent, target, "cached");
                    }
                    let elapsed = book.started().elapsed();
                    book.settle(index, SourceResult::Ok { data, elapsed });
                    continue;
                }
            }
        }
        if let Some(guard) = &target.guard {
            if !guard.admit(gather.collector().metrics()) {
                // A flight it leads ends unanswered (a stale copy may still answer it).
                book.land(index);
                if let Some(sends) = sends.as_deref_mut() {
                    // Not asked, but a source of the request: its span says why.
                    sends.send(index, asker.traceparent, target);
                }
                book.settle(index, SourceResult::CircuitOpen);
                continue;
            }
            if let Some(after) = guard.hedge_after() {
                book.arm_hedge(index, book.started() + after);
            }
        }
        // With traces on, this request's send span is the service's parent.
        let own = sends
            .as_deref_mut()
            .and_then(|s| s.send(index, asker.traceparent, target));
        let traceparent = own.as_ref().map_or(asker.traceparent, Traceparent::as_str);
        let ids = [asker.request_id, asker.client, traceparent];
        // A route with a late grace still wants the reply that long after its deadline.
        let timeout = book.timeout(index) + route.late.unwrap_or_default();
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

/// Sends the request to source `index` again (a retry or a hedge: `event` on its send span,
/// whose `traceparent` it carries, with traces on); whether it went out.
fn send_again(
    gather: &Gather,
    route: &Route,
    book: &Book,
    index: usize,
    resend: &Resend,
    sends: Option<&mut Sends>,
    event: &'static str,
) -> bool {
    let own = sends.and_then(|s| s.again(index, event));
    route.targets.get(index).is_some_and(|target| {
        // As the first request: a route with a late grace wants the reply that long after.
        resend.send(
            gather,
            target,
            book.timeout(index) + route.late.unwrap_or_default(),
            own.as_ref().map(Traceparent::as_str),
        )
    })
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
    mut sends: Option<&mut Sends>,
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
                // A coalesced follower did not ask the service: its guard counts nothing.
                let guard = route.targets[index]
                    .guard
                    .as_ref()
                    .filter(|_| !book.is_follower(index));
                if let Some(guard) = guard {
                    if book.is_open(index) {
                        let metrics = gather.collector().metrics();
                        guard.record(metrics, result.reply());
                        if let Some(resend) = resend.filter(|_| result.is_retryable()) {
                            let left = book.left(index, Instant::now());
                            if guard.retry(metrics, book.attempts(index), left)
                                && send_again(
                                    gather,
                                    route,
                                    book,
                                    index,
                                    resend,
                                    sends.as_deref_mut(),
                                    "busgate.retry",
                                )
                            {
                                // The followers of its flight wait for the final reply.
                                book.sent(index, false);
                                continue;
                            }
                        }
                    }
                }
                if let Some(followers) = book.land(index) {
                    let collector = gather.collector();
                    for (follower, name) in followers {
                        collector.forward(follower, &name.0, message.clone());
                    }
                }
                match book.settle(index, result) {
                    Some(Step::Done) => return,
                    Some(Step::Continue) => {
                        if let Some(run) = run.as_deref_mut() {
                            stages::advance(book, gather, route, run, sends.as_deref_mut());
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
                    guarded_wake(book, gather, route, resend, sends.as_deref_mut(), now);
                }
                if book.expire(now) == Step::Done {
                    return;
                }
                if let Some(run) = run.as_deref_mut() {
                    stages::advance(book, gather, route, run, sends.as_deref_mut());
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
    mut sends: Option<&mut Sends>,
    now: Instant,
) {
    let metrics = gather.collector().metrics();
    while let Some(index) = book.due_hedge(now) {
        let (Some(guard), Some(resend)) = (&route.targets[index].guard, resend) else {
            continue;
        };
        let sends = sends.as_deref_mut();
        if guard.hedge(metrics)
            && send_again(gather, route, book, index, resend, sends, "busgate.hedge")
        {
            book.sent(index, true);
        }
    }
    for (index, target) in route.targets.iter().enumerate() {
        if let Some(guard) = &target.guard {
            // Only a source that had its service's whole timeout failed by timing out: a client
            // that cuts its own deadline (`Busgate-Timeout: 1ms`) must not open the breaker for
            // everyone.
            if book.times_out(index, now)
                && !book.is_follower(index)
                && book.given(index) >= target.timeout
            {
                guard.record(metrics, Reply::Failed);
            }
        }
    }
}
