//! This instance's share of every client's deployment-wide limits: a client's rate, burst and
//! cap of pending requests are for the whole deployment, and each of the N live gateway
//! instances enforces 1/N of them. N is counted by `crate::fleet` from the instances'
//! heartbeats on NATS and kept here, in one atomic, so that the request path reads it with one
//! relaxed load (no lock, no await, no NATS round trip).
//!
//! One value per process, like the process's NATS connections: a process runs one gateway.

use std::sync::atomic::{AtomicU32, Ordering};

/// How many gateway instances share the limits; at least 1 (this one).
static INSTANCES: AtomicU32 = AtomicU32::new(1);

/// The live gateway instances, this one included (1 until others are heard).
pub fn instances() -> u32 {
    INSTANCES.load(Ordering::Relaxed).max(1)
}

/// Records how many instances are live (`crate::fleet` alone calls it).
pub fn set_instances(n: u32) {
    INSTANCES.store(n.max(1), Ordering::Relaxed);
}

/// This instance's part of a cap held across `n` instances: `cap / n`, rounded down (so that
/// together they never hold more than the cap), but at least 1 (so that a cap below the
/// instance count still lets a client in somewhere).
pub fn of_cap(cap: usize, n: u32) -> usize {
    (cap / n.max(1) as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_splits_down_but_never_to_nothing() {
        assert_eq!(of_cap(10, 1), 10);
        assert_eq!(of_cap(10, 2), 5);
        assert_eq!(of_cap(10, 3), 3);
        assert_eq!(of_cap(1, 2), 1);
        assert_eq!(of_cap(10, 0), 10);
    }
}
