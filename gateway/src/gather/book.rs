//! A gather's bookkeeping: what each source came to ([`SourceResult`]), the pure state
//! machine of one gather ([`Book`]: which sources are open, until when, their retries and
//! hedges, what reuse holds for them) and its result ([`Outcome`]). No I/O: its deadline logic
//! is unit-tested with paused time; `scatter` is the async code around it.

use std::time::Duration;

use busgate_shared::envelope::code::gateway as code;
use busgate_shared::envelope::code::UPSTREAM_REJECTED;
use busgate_shared::envelope::{ParsedReply, ReplyStatus};
use busgate_shared::wire::Msg;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;

use crate::cache::coalesce::Follower;
use crate::cache::Mark;
use crate::gather::graph::Skip;
use crate::gather::reuse::{self, SlotReuse};
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
            // The upstream refused this request (a 4xx): an answer, or a client that knows an
            // order the upstream rejects could open the breaker for everyone.
            SourceResult::Error { code, elapsed, .. } if code == UPSTREAM_REJECTED => {
                Reply::NotFound(*elapsed)
            }
            _ => Reply::Failed,
        }
    }

    /// Whether asking again may help (an error other than the upstream refusing this request,
    /// or no responders).
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceResult::Error { code, .. } => code != UPSTREAM_REJECTED,
            SourceResult::NoResponders { .. } => true,
            _ => false,
        }
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
    mark: Mark,
    reuse: SlotReuse,
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
                mark: Mark::default(),
                reuse: SlotReuse::default(),
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

    /// The time source `index` was given from when it was asked: its service's timeout, or less
    /// when the client's `Busgate-Timeout` or the route's deadline cut it.
    pub fn given(&self, index: usize) -> Duration {
        self.slots
            .get(index)
            .map_or(Duration::ZERO, |s| s.timeout.saturating_sub(s.start))
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
            // An open breaker is a failure too: the stale copy answers at once.
            SourceResult::CircuitOpen => match slot.reuse.failed(&mut slot.mark) {
                Some(data) => SourceResult::Ok {
                    data,
                    elapsed: Duration::ZERO,
                },
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
    /// follow it, with the name their target has there (to forward the reply to).
    pub(crate) fn land(&mut self, index: usize) -> Option<Vec<Follower>> {
        self.slots.get_mut(index)?.reuse.land()
    }

    /// Whether source `index` follows another gather's flight (it was not published here).
    pub fn is_follower(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(|s| s.mark.coalesced)
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
        let marks = if self.slots.iter().all(|s| s.mark.is_empty()) {
            Vec::new()
        } else {
            self.slots.iter().map(|s| s.mark).collect()
        };
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
            marks,
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

    #[tokio::test(start_paused = true)]
    async fn only_a_coalesced_slot_is_a_follower() {
        let mut book = Book::new(Instant::now(), [(true, 100 * MS), (true, 100 * MS)]);
        let follows = Mark {
            cache: None,
            coalesced: true,
        };
        book.reuse_slot(1, follows, SlotReuse::default());
        assert!(!book.is_follower(0), "published here: its guard counts it");
        assert!(
            book.is_follower(1),
            "follows a flight: its guard counts nothing"
        );
        assert!(book.land(1).is_none(), "a follower leads no flight");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_serves_the_stale_copy() {
        use crate::cache::CacheState;
        let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
        book.reuse_slot(0, Mark::default(), stale_copy());
        assert_eq!(book.settle(0, SourceResult::CircuitOpen), Some(Step::Done));
        let outcome = book.finish();
        assert_eq!(outcome.failed, None);
        assert!(outcome.results[0].is_ok());
        assert_eq!(
            outcome.marks[0].cache,
            Some(CacheState::OnError { ttl: -40 })
        );
        // Without a stale copy it stays a failure.
        let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
        book.settle(0, SourceResult::CircuitOpen);
        assert_eq!(book.finish().failed, Some(0));
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
