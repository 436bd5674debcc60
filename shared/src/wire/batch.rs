//! When the writer stops gathering and writes: the batching policy of the connection's writer
//! ([`Gather`]), pure so that it is tested without a socket.
//!
//! A writer woken by the first publish of a burst lets the rest of the event loop run before
//! it writes, so that what else is ready on this thread goes out in the same write. One
//! `yield_now` catches only what is ready after one turn: replies produced by a read of the
//! bus (the native worker's) are all there, but replies that each wait for an HTTP response
//! (the adapters') come in over several turns, 10–13 per write against about 50 for the native
//! worker (bench-results/README.md, "Why the adapter path costs more"). So the writer takes
//! [`MIN_TURNS`] turns, then yields again while the last turn added something, and writes as
//! soon as a turn adds nothing: a flush driven by "nothing more ready", bounded by a number of
//! turns, a size and a time.

use std::time::Duration;

use tokio::time::Instant;

/// The most turns of the event loop a write waits for (the first included).
pub(crate) const MAX_TURNS: u32 = 8;
/// Written at once when this much is queued: a larger write saves nothing more.
pub(crate) const MAX_BYTES: usize = 32 * 1024;
/// The longest a write waits for more, from the wake: well under a millisecond, so that a
/// request's latency never waits more than a tick of the event loop's timer.
pub(crate) const MAX_WAIT: Duration = Duration::from_micros(200);

/// The variable that chooses the writer's policy for A/B measurements
/// (`tests/perf/replies-per-write.sh`), not a setting: `single` yields once and writes, as before
/// issue 24; `turns` takes the first turn only before asking whether a turn added anything;
/// unset (or anything else), the default, [`MIN_TURNS`].
pub(crate) const GATHER_VAR: &str = "BUSGATE_WIRE_GATHER";

/// The turns always taken. Two, because of how tokio schedules a yielded task: it is woken
/// after the I/O driver's poll, ahead of the tasks that poll woke (the LIFO slot). After one
/// turn the writer has seen what the tasks queued before it published, not yet what the
/// responses that poll read publish: the second turn lets those run.
pub(crate) const MIN_TURNS: u32 = 2;

/// A connection writer's policy: the turns always taken and the most taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Turns {
    pub min: u32,
    pub max: u32,
}

/// The policy [`GATHER_VAR`] chooses. Read once per connection handle.
pub(crate) fn turns_from_env() -> Turns {
    turns_for(std::env::var(GATHER_VAR).ok().as_deref())
}

fn turns_for(value: Option<&str>) -> Turns {
    match value.map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("single") => Turns { min: 1, max: 1 },
        Some(v) if v.eq_ignore_ascii_case("turns") => Turns {
            min: 1,
            max: MAX_TURNS,
        },
        _ => Turns {
            min: MIN_TURNS,
            max: MAX_TURNS,
        },
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
    policy: Turns,
    last_len: usize,
}

impl Gather {
    /// A gathering that starts now, with `queued` bytes already waiting, by the default
    /// policy.
    #[cfg(test)]
    pub(crate) fn start(queued: usize) -> Gather {
        Gather::start_with(queued, turns_for(None))
    }

    /// A gathering by `policy` (at least one turn, at most `max`, and `min` ≤ `max`).
    pub(crate) fn start_with(queued: usize, policy: Turns) -> Gather {
        let max = policy.max.max(1);
        Gather {
            started: Instant::now(),
            turns: 0,
            policy: Turns {
                min: policy.min.clamp(1, max),
                max,
            },
            last_len: queued,
        }
    }

    /// What to do with `queued` bytes waiting now. The first [`Turns::min`] turns are always
    /// taken (bounded by [`MAX_BYTES`] and [`MAX_WAIT`]); after them, another only while the
    /// last turn added bytes, and only within [`Turns::max`], [`MAX_BYTES`] and [`MAX_WAIT`].
    pub(crate) fn next(&mut self, queued: usize) -> Step {
        let grew = queued > self.last_len;
        self.last_len = queued;
        if self.turns >= self.policy.min && !grew {
            return Step::Write;
        }
        if self.turns >= self.policy.max
            || queued >= MAX_BYTES
            || self.started.elapsed() >= MAX_WAIT
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
    async fn the_first_turns_are_always_taken_then_a_turn_that_adds_nothing_writes() {
        let mut g = Gather::start(100);
        assert_eq!(g.next(100), Step::Yield);
        assert_eq!(g.next(100), Step::Yield);
        assert_eq!(g.next(100), Step::Write);
        assert_eq!(g.turns(), MIN_TURNS);
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
    async fn the_controls_single_and_turns_and_the_default() {
        assert_eq!(turns_for(Some("single")), Turns { min: 1, max: 1 });
        assert_eq!(
            turns_for(Some(" TURNS ")),
            Turns {
                min: 1,
                max: MAX_TURNS
            }
        );
        let default = Turns {
            min: MIN_TURNS,
            max: MAX_TURNS,
        };
        assert_eq!(turns_for(None), default);
        assert_eq!(turns_for(Some("other")), default);
        // single: one yield, then a write, as before issue 24.
        let mut g = Gather::start_with(10, turns_for(Some("single")));
        assert_eq!(g.next(10), Step::Yield);
        assert_eq!(g.next(20), Step::Write);
        // turns: one turn always, then only while growing.
        let mut g = Gather::start_with(10, turns_for(Some("turns")));
        assert_eq!(g.next(10), Step::Yield);
        assert_eq!(g.next(10), Step::Write);
        // Nonsense is made sane: at least one turn, min never above max.
        let mut g = Gather::start_with(10, Turns { min: 5, max: 0 });
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
        // Also within the turns always taken.
        let mut g = Gather::start(10);
        assert_eq!(g.next(MAX_BYTES), Step::Write);
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
        /// Whatever the queue does, a gathering ends within MAX_TURNS yields, and past the
        /// turns always taken never yields after a turn that added nothing.
        #[test]
        fn gathering_is_bounded(lens in proptest::collection::vec(0usize..64 * 1024, 1..40)) {
            let mut g = Gather::start(lens[0]);
            let mut yields = 0u32;
            let mut prev = lens[0];
            for &len in &lens {
                match g.next(len) {
                    Step::Yield => {
                        yields += 1;
                        prop_assert!(yields <= MAX_TURNS);
                        prop_assert!(len < MAX_BYTES);
                        if yields > MIN_TURNS {
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
