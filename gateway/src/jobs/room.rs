//! Room in the results bucket: submits refused while the queued requests' documents would not
//! fit, results held by the processor until they do.
//!
//! A request's status document is written when it finishes
//! ([`results`](super::results)), into a bucket of `jobs.results_max_bytes` whose documents
//! live `jobs.result_ttl`: a submit is accepted only while the documents of the requests
//! already queued would fit next to those stored, else it is refused with 503 `queue-full`
//! (as when the work queue itself is full) rather than accepted into a queue that could never
//! finish. A result that does not fit all the same (the estimate is an average, and instances
//! share the bucket) is held by the processor, its message kept alive, until documents expire
//! or are removed: it is neither run again nor ended as failed.
//!
//! [`watch`] asks JetStream for the bucket's and the queue's sizes every [`PROBE_EVERY`];
//! between two answers an instance counts the submits it accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::watch as latest;
use tracing::{debug, warn};

use busgate_shared::drain;
use busgate_shared::subject;

/// How often each instance asks JetStream how full the bucket and the queue are.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long a probe waits for JetStream's answers.
const PROBE_WITHIN: Duration = Duration::from_secs(2);

/// The size assumed of a document while the bucket holds none.
const FIRST_GUESS: u64 = 1024;

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Bytes and documents in the results bucket.
    pub stored_bytes: u64,
    pub stored_docs: u64,
    /// Requests in the work queue (started or not): each will write a document.
    pub queued: u64,
    /// The bucket's limit.
    pub max_bytes: u64,
}

impl Sizes {
    /// The size expected of the next document: the stored ones' average.
    fn average(&self) -> u64 {
        match self.stored_docs {
            0 => FIRST_GUESS,
            docs => self.stored_bytes.div_ceil(docs),
        }
    }

    /// Whether one more request fits, `accepted` others having been accepted since the probe:
    /// the documents of everything queued, at the average size, within 99 % of the limit.
    pub fn admits(&self, accepted: u64) -> bool {
        let coming = self.queued.saturating_add(accepted).saturating_add(1);
        let wanted = self
            .stored_bytes
            .saturating_add(coming.saturating_mul(self.average()));
        wanted <= self.max_bytes - self.max_bytes / 100
    }

    /// Whether a document of the average size can be written now.
    pub fn has_room(&self) -> bool {
        self.stored_bytes.saturating_add(self.average()) <= self.max_bytes
    }
}

/// The latest probe and what was accepted since: one per instance, in
/// [`Jobs`](super::store::Jobs).
pub struct Room {
    sizes: latest::Sender<Option<Sizes>>,
    accepted: AtomicU64,
}

impl Default for Room {
    fn default() -> Self {
        Room {
            sizes: latest::Sender::new(None),
            accepted: AtomicU64::new(0),
        }
    }
}

impl Room {
    /// Whether a submit may be accepted (yes until the first probe answered).
    pub fn admits(&self) -> bool {
        let accepted = self.accepted.load(Ordering::Relaxed);
        self.sizes.borrow().is_none_or(|s| s.admits(accepted))
    }

    /// Counts a submit accepted since the last probe.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a probe's answer; `before` is what [`Room::accepted`] counted when the probe
    /// began (what was accepted during it stays counted: counted twice at worst).
    fn measured(&self, sizes: Sizes, before: u64) {
        self.accepted.fetch_sub(before, Ordering::Relaxed);
        self.sizes.send_replace(Some(sizes));
    }

    /// Waits for a probe made after this call that finds room for a document; `false` when
    /// `drain` is signalled first.
    pub async fn until_room(&self, drain: &drain::Watch) -> bool {
        let mut probes = self.sizes.subscribe();
        probes.mark_unchanged();
        let signaled = drain.clone().signaled();
        tokio::pin!(signaled);
        loop {
            tokio::select! {
                _ = &mut signaled => return false,
                changed = probes.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    if probes.borrow_and_update().is_some_and(|s| s.has_room()) {
                        return true;
                    }
                }
            }
        }
    }
}

/// Probes the bucket and the queue every [`PROBE_EVERY`] until `drain` is signalled. A
/// probe that fails keeps the last answer (a submit's write then fails on its own if the
/// store is down).
pub async fn watch(js: &jetstream::Context, room: &Room, drain: drain::Watch) {
    let signaled = drain.signaled();
    tokio::pin!(signaled);
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_full = false;
    loop {
        tokio::select! {
            _ = &mut signaled => return,
            _ = ticks.tick() => {}
        }
        let before = room.accepted.load(Ordering::Relaxed);
        match tokio::time::timeout(PROBE_WITHIN, probe(js)).await {
            Ok(Some(sizes)) => {
                let full = !sizes.admits(0);
                if full && !was_full {
                    warn!(
                        stored_bytes = sizes.stored_bytes,
                        max_bytes = sizes.max_bytes,
                        queued = sizes.queued,
                        "the results bucket cannot take the documents of more requests: submits are refused (503) until documents expire (jobs.results_max_bytes, jobs.result_ttl)"
                    );
                } else if !full && was_full {
                    warn!("the results bucket has room again: submits are accepted");
                }
                was_full = full;
                room.measured(sizes, before);
            }
            _ => debug!("cannot measure the results bucket, keeping the last answer"),
        }
    }
}

/// A stream's state and configuration as JetStream answers now, in one request (looking a
/// stream up fetches its info; asking that stream for its info again would be a second), or
/// `None` when JetStream does not answer. The probe's and `/metrics`' backlog's.
pub(super) async fn stream_info(js: &jetstream::Context, name: &str) -> Option<stream::Info> {
    Some(js.get_stream(name).await.ok()?.cached_info().clone())
}

/// The bucket's and the queue's sizes, or `None` when JetStream does not answer.
async fn probe(js: &jetstream::Context) -> Option<Sizes> {
    let results = stream_info(js, &format!("KV_{}", subject::RESULTS_BUCKET)).await?;
    let queued = stream_info(js, subject::REQUESTS_STREAM)
        .await?
        .state
        .messages;
    Some(Sizes {
        stored_bytes: results.state.bytes,
        stored_docs: results.state.messages,
        queued,
        max_bytes: u64::try_from(results.config.max_bytes).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sizes(stored_bytes: u64, stored_docs: u64, queued: u64) -> Sizes {
        Sizes {
            stored_bytes,
            stored_docs,
            queued,
            max_bytes: 100_000,
        }
    }

    #[test]
    fn a_submit_is_admitted_while_the_queued_requests_documents_fit() {
        // Empty: 1 KiB assumed per document, 99 000 bytes usable: 96 fit.
        assert!(sizes(0, 0, 0).admits(95));
        assert!(!sizes(0, 0, 0).admits(96));
        // 500-byte documents, 40 000 stored: room for 118 more, queued or accepted.
        assert!(sizes(40_000, 80, 100).admits(17));
        assert!(!sizes(40_000, 80, 100).admits(18));
        assert!(!sizes(40_000, 80, 118).admits(0));
        // Nothing overflows.
        assert!(!sizes(u64::MAX, 1, u64::MAX).admits(u64::MAX));
    }

    #[test]
    fn a_held_result_is_written_once_an_average_document_fits() {
        assert!(sizes(99_500, 199, 0).has_room());
        assert!(!sizes(99_600, 199, 0).has_room());
        assert!(!sizes(99_500, 0, 0).has_room());
    }

    /// A waiter on a room `full` at first: spawned, then the bucket measured full once.
    async fn waiting(room: &Arc<Room>) -> (drain::Signal, tokio::task::JoinHandle<bool>) {
        let (signal, drain) = drain::channel();
        let waiter = tokio::spawn({
            let room = room.clone();
            async move { room.until_room(&drain).await }
        });
        tokio::task::yield_now().await;
        room.measured(sizes(99_900, 100, 0), 0);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a full bucket keeps it waiting");
        (signal, waiter)
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_needs_a_probe_made_after_it_began_that_finds_room() {
        let room = Arc::new(Room::default());
        // The last probe found room, but the waiter's write failed: it waits for the next.
        room.measured(sizes(0, 0, 0), 0);
        let (_signal, waiter) = waiting(&room).await;
        room.measured(sizes(50_000, 100, 0), 0);
        assert!(waiter.await.expect("waiter"), "room found");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_ends_a_wait_for_room() {
        let room = Arc::new(Room::default());
        let (signal, waiter) = waiting(&room).await;
        let drained = tokio::spawn(signal.drain());
        assert!(!waiter.await.expect("waiter"), "no room, drained");
        drained.await.expect("drain");
    }
}
