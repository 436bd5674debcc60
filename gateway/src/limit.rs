//! Counted capacity: how many of a thing (requests in flight, open connections, event streams,
//! `Prefer: wait` watchers) one instance holds at once, and a cap on it.
//!
//! A [`Slots`] is one atomic counter: taking a slot is a `fetch_add` and a compare, giving it
//! back a `fetch_sub`; nothing waits and nothing is queued. Past the cap a taker is refused at
//! once, which is what load shedding wants (tower's `ConcurrencyLimit` + `LoadShed` do the same
//! with a semaphore, an `Arc`ed permit and a boxed error per refusal).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A counter of things held and the most that may be held at once.
#[derive(Debug)]
pub struct Slots {
    used: AtomicUsize,
    cap: usize,
}

impl Slots {
    /// At most `cap` at once.
    pub fn new(cap: usize) -> Self {
        Slots {
            used: AtomicUsize::new(0),
            cap,
        }
    }

    /// Takes a slot if one is free; the caller gives it back with [`Slots::give_back`].
    /// (The counter may pass the cap for an instant while a refused taker undoes its add.)
    pub fn try_take(&self) -> bool {
        if self.used.fetch_add(1, Ordering::AcqRel) < self.cap {
            true
        } else {
            self.used.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// Gives back a slot taken with [`Slots::try_take`].
    pub fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }

    /// Takes a slot held by the returned guard until it drops.
    pub fn try_hold(self: &Arc<Self>) -> Option<Slot> {
        self.try_take().then(|| Slot(self.clone()))
    }

    /// How many are held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed).min(self.cap)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// A slot of a [`Slots`], given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_refuse_past_the_cap_and_free_on_drop() {
        let slots = Arc::new(Slots::new(2));
        let a = slots.try_hold().expect("first");
        let b = slots.try_hold().expect("second");
        assert!(slots.try_hold().is_none(), "a third is past the cap");
        assert!(!slots.try_take());
        assert_eq!(slots.used(), 2);
        drop(a);
        assert_eq!(slots.used(), 1);
        assert!(slots.try_take());
        slots.give_back();
        drop(b);
        assert_eq!(slots.used(), 0);
    }

    #[test]
    fn concurrent_takers_never_hold_more_than_the_cap() {
        let slots = Arc::new(Slots::new(3));
        let (holders, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (slots, holders, peak) = (slots.clone(), holders.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(slot) = slots.try_hold() {
                            let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            holders.fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(slots.used(), 0);
    }
}
