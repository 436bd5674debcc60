//! When the writer stops gathering and writes: the batching policy of the connection's writer
//! ([`Gather`]), pure so that it is tested without a socket.
//!
//! A writer woken by the first publish of a burst lets the rest of the event loop run before
//! it writes, so that what else is ready on this thread goes out in the same write. One
//! `yield_now` catches only what is ready after one turn: replies produced by a read of the
//! bus (the native worker's) are all there, but replies that each wait for an HTTP response
//! (the adapters') come in over several turns, 10–13 per write against about 50 for the native
//! worker (bench-results/README.md, "Why the adapter path costs more"). So the writer yields
//! again while the last turn added something, and writes as soon as a turn adds nothing: a
//! flush driven by "nothing more ready", bounded by a number of turns, a size and a time.

use std::time::Duration;

use tokio::time::Instant;

/// The most turns of the event loop a write waits for (the first included).
pub(crate) const MAX_TURNS: u32 = 8;
/// Written at once when this much is queued: a larger write saves nothing more.
pub(crate) const MAX_BYTES: usize = 32 * 1024;
/// The longest a write waits for more, from the wake: well under a millisecond, so that a
/// request's latency never waits more than a tick of the event loop's timer.
pub(crate) const MAX_WAIT: Duration = Duration::from_micros(200);

/// The variable that makes the writer yield once and write, as before issue 24
/// (`BUSGATE_WIRE_GATHER=single`): the same-run control of A/B measurements
/// (`tests/perf/replies-per-write.sh`), not a setting.
pub(crate) const GATHER_VAR: &str = "BUSGATE_WIRE_GATHER";

/// The most turns a connection's writer waits: [`MAX_TURNS`], or 1 when [`GATHER_VAR`] says
/// `single`. Read once per connection handle.
pub(crate) fn max_turns_from_env() -> u32 {
    max_turns_for(std::env::var(GATHER_VAR).ok().as_deref())
}

fn max_turns_for(value: Option<&str>) -> u32 {
    match value {
        Some(v) if v.trim().eq_ignore_ascii_case("single") => 1,
        _ => MAX_TURNS,
    }
}

/// What the writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Let the rest of the event loop run once more, then ask again.
    Yield,
    /// Write what is queued now.
    Write,
}

/// One gathering, from the writer's wake to its write.
#[derive(Debug)]
pub(crate) struct Gather {
    started: Instant,
    turns: u32,
    max_turns: u32,
    last_len: usize,
}

impl Gather {
    /// A gathering that starts now, with `queued` bytes already waiting, of at most
    /// [`MAX_TURNS`] turns.
    #[cfg(test)]
    pub(crate) fn start(queued: usize) -> Gather {
        Gather::start_within(queued, MAX_TURNS)
    }

    /// A gathering of at most `max_turns` turns (at least one).
    pub(crate) fn start_within(queued: usize, max_turns: u32) -> Gather {
        Gather {
            started: Instant::now(),
            turns: 0,
            max_turns: max_turns.max(1),
            last_len: queued,
        }
    }

    /// What to do with `queued` bytes waiting now. The first turn is always taken (what the
    /// writer did before: one yield); after it, another only while the last turn added bytes,
    /// and only within [`MAX_TURNS`], [`MAX_BYTES`] and [`MAX_WAIT`].
    pub(crate) fn next(&mut self, queued: usize) -> Step {
        let grew = queued > self.last_len;
        self.last_len = queued;
        let first = self.turns == 0;
        if !first && !grew {
            return Step::Write;
        }
        if self.turns >= self.max_turns || queued >= MAX_BYTES || self.started.elapsed() >= MAX_WAIT
        {
            return Step::Write;
        }
        self.turns += 1;
        Step::Yield
    }

    /// Turns taken so far.
    #[cfg(test)]
    pub(crate) fn turns(&self) -> u32 {
        self.turns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_turn_is_always_taken_then_a_turn_that_adds_nothing_writes() {
        let mut g = Gather::start(100);
        assert_eq!(g.next(100), Step::Yield);
        assert_eq!(g.next(100), Step::Write);
        assert_eq!(g.turns(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn turns_that_add_replies_keep_gathering_until_one_adds_nothing() {
        let mut g = Gather::start(100);
        assert_eq!(g.next(100), Step::Yield);
        assert_eq!(g.next(300), Step::Yield);
        assert_eq!(g.next(500), Step::Yield);
        assert_eq!(g.next(500), Step::Write);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_written_after_max_turns() {
        let mut g = Gather::start(10);
        let mut steps = 0;
        let mut len = 10;
        while g.next(len) == Step::Yield {
            steps += 1;
            len += 10;
            assert!(steps <= MAX_TURNS, "gathered past the bound");
        }
        assert_eq!(steps, MAX_TURNS);
    }

    #[tokio::test(start_paused = true)]
    async fn the_single_control_yields_once_as_before() {
        assert_eq!(max_turns_for(Some("single")), 1);
        assert_eq!(max_turns_for(Some("turns")), MAX_TURNS);
        assert_eq!(max_turns_for(None), MAX_TURNS);
        let mut g = Gather::start_within(10, 1);
        assert_eq!(g.next(10), Step::Yield);
        assert_eq!(g.next(20), Step::Write);
        // Zero is taken as one: the first turn is always taken.
        let mut g = Gather::start_within(10, 0);
        assert_eq!(g.next(10), Step::Yield);
        assert_eq!(g.next(20), Step::Write);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_is_written_at_once() {
        let mut g = Gather::start(MAX_BYTES);
        assert_eq!(g.next(MAX_BYTES), Step::Write);
        let mut g = Gather::start(10);
        assert_eq!(g.next(10), Step::Yield);
        assert_eq!(g.next(MAX_BYTES + 1), Step::Write);
    }

    #[tokio::test(start_paused = true)]
    async fn no_write_waits_longer_than_max_wait() {
        let mut g = Gather::start(10);
        assert_eq!(g.next(10), Step::Yield);
        assert_eq!(g.next(20), Step::Yield);
        tokio::time::advance(MAX_WAIT).await;
        // Still growing, but waited long enough.
        assert_eq!(g.next(30), Step::Write);
    }

    proptest! {
        /// Whatever the queue does, a gathering ends within MAX_TURNS yields, and never yields
        /// after a turn that added nothing.
        #[test]
        fn gathering_is_bounded(lens in proptest::collection::vec(0usize..64 * 1024, 1..40)) {
            let mut g = Gather::start(lens[0]);
            let mut yields = 0u32;
            let mut prev = lens[0];
            for (i, &len) in lens.iter().enumerate() {
                match g.next(len) {
                    Step::Yield => {
                        yields += 1;
                        prop_assert!(yields <= MAX_TURNS);
                        prop_assert!(len < MAX_BYTES);
                        if i > 0 {
                            prop_assert!(len > prev);
                        }
                    }
                    Step::Write => break,
                }
                prev = len;
            }
        }
    }
}
