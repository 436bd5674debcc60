//! Failed credentials, counted per client address (`[auth] max_failures_per_minute`): after
//! that many refused credentials (401, anything but "none sent") from one address within a
//! minute of its first, that address's requests with credentials are answered 429
//! `too-many-failures` until the minute is over, without the credentials being checked.
//!
//! The address is the real client's ([`crate::edge::forwarded`]: the peer, or what a trusted
//! proxy says); IPv4 by address, IPv6 by its /64 (one host usually holds a whole /64).
//!
//! The table is fixed: [`BUCKETS`] × [`WAYS`] entries of one `AtomicU64` each (64 KiB),
//! allocated once, never grown by an attacker's address count. An address hashes (SipHash with
//! a key drawn at start, so that nobody can aim at a bucket) to one bucket of [`WAYS`]
//! entries; a new address takes the bucket's empty or expired entry, else the one with the
//! fewest failures, so addresses already throttled are the last to be forgotten. An entry
//! packs the window's start (seconds since the table was made), 20 bits of the hash (a tag:
//! with the bucket, 31 bits tell addresses apart) and the count. Checking an address is a hash
//! and four atomic loads, no lock and no allocation; only a failure writes (a compare-and-swap).
//!
//! Per instance: with N gateways behind a balancer, an address gets up to N × the limit.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets of the table.
pub const BUCKETS: usize = 2048;
/// Entries of a bucket.
pub const WAYS: usize = 4;
/// The window a count runs for, from an address's first failure.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The highest `max_failures_per_minute` (the count has 12 bits).
pub const MAX_LIMIT: u32 = crate::config::settings::auth::MAX_FAILURES_PER_MINUTE;

const COUNT_BITS: u32 = 12;
const TAG_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Tries of a compare-and-swap that lost to another writer before a failure goes uncounted.
const TRIES: usize = 8;

/// The table of failures per address.
#[derive(Debug)]
pub struct Throttle {
    limit: u64,
    entries: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    origin: Instant,
}

/// One entry, unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The window's start, in seconds since the table's origin.
    start: u32,
    tag: u64,
    /// Failures in the window; 0: the entry is free.
    count: u64,
}

impl Entry {
    fn unpack(v: u64) -> Self {
        Entry {
            start: (v >> 32) as u32,
            tag: (v >> COUNT_BITS) & TAG_MASK,
            count: v & COUNT_MASK,
        }
    }

    fn pack(self) -> u64 {
        (u64::from(self.start) << 32) | ((self.tag & TAG_MASK) << COUNT_BITS) | self.count
    }

    /// Seconds since the window started, at `now`.
    fn age(self, now: u32) -> u32 {
        now.wrapping_sub(self.start)
    }
}

impl Throttle {
    /// A table allowing `limit` failures a minute per address; `None` when `limit` is 0 (off).
    pub fn new(limit: u32) -> Option<Self> {
        (limit > 0).then(|| Throttle {
            limit: u64::from(limit.min(MAX_LIMIT)),
            entries: (0..BUCKETS * WAYS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            origin: Instant::now(),
        })
    }

    /// `Err` with the time left when `address` is throttled now.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        self.check_at(address, self.now())
    }

    /// Counts a failure from `address`.
    pub fn failed(&self, address: IpAddr) {
        self.failed_at(address, self.now());
    }

    /// Addresses with failures in their window now (for tests and the table's bound).
    pub fn tracked(&self) -> usize {
        let now = self.now();
        self.entries
            .iter()
            .map(|e| Entry::unpack(e.load(Ordering::Relaxed)))
            .filter(|e| e.count > 0 && u64::from(e.age(now)) < WINDOW.as_secs())
            .count()
    }

    fn now(&self) -> u32 {
        u32::try_from(self.origin.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// The bucket and the tag of an address.
    fn slot(&self, address: IpAddr) -> (&[AtomicU64], u64) {
        let hash = self.hasher.hash_one(key(address));
        let bucket = (hash as usize) % BUCKETS;
        let tag = (hash >> 40) & TAG_MASK;
        (&self.entries[bucket * WAYS..(bucket + 1) * WAYS], tag)
    }

    fn check_at(&self, address: IpAddr, now: u32) -> Result<(), Duration> {
        let (bucket, tag) = self.slot(address);
        for entry in bucket {
            let e = Entry::unpack(entry.load(Ordering::Relaxed));
            if e.count >= self.limit && e.tag == tag {
                let age = u64::from(e.age(now));
                if age < WINDOW.as_secs() {
                    return Err(Duration::from_secs(WINDOW.as_secs() - age));
                }
            }
        }
        Ok(())
    }

    fn failed_at(&self, address: IpAddr, now: u32) {
        let (bucket, tag) = self.slot(address);
        let window = WINDOW.as_secs();
        for _ in 0..TRIES {
            // Its own entry if it has one, else the cheapest to forget.
            let mut victim: Option<(usize, u64, u64)> = None;
            let mut own = None;
            for (i, entry) in bucket.iter().enumerate() {
                let v = entry.load(Ordering::Relaxed);
                let e = Entry::unpack(v);
                let expired = e.count == 0 || u64::from(e.age(now)) >= window;
                if e.count > 0 && e.tag == tag {
                    own = Some((i, v, e, expired));
                    break;
                }
                // Free or expired first, then the fewest failures.
                let cost = if expired { 0 } else { e.count };
                if victim.is_none_or(|(_, _, c)| cost < c) {
                    victim = Some((i, v, cost));
                }
            }
            let (i, old, new) = match own {
                Some((i, v, e, expired)) => {
                    let new = if expired {
                        Entry {
                            start: now,
                            tag,
                            count: 1,
                        }
                    } else {
                        Entry {
                            count: (e.count + 1).min(COUNT_MASK),
                            ..e
                        }
                    };
                    (i, v, new)
                }
                None => {
                    let Some((i, v, _)) = victim else { return };
                    let new = Entry {
                        start: now,
                        tag,
                        count: 1,
                    };
                    (i, v, new)
                }
            };
            if bucket[i]
                .compare_exchange(old, new.pack(), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// What an address is counted under: an IPv4 address (or IPv4-mapped IPv6) whole, an IPv6
/// address by its /64.
pub(crate) fn key(address: IpAddr) -> u128 {
    match address.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !(u128::from(u64::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn off_at_zero() {
        assert!(Throttle::new(0).is_none());
    }

    #[test]
    fn trips_at_the_limit_and_not_before_until_the_window_passes() {
        let t = Throttle::new(3).expect("on");
        let a = ip("203.0.113.7");
        for _ in 0..2 {
            t.failed_at(a, 10);
            assert!(t.check_at(a, 10).is_ok());
        }
        t.failed_at(a, 20);
        assert_eq!(t.check_at(a, 20), Err(Duration::from_secs(50)));
        assert_eq!(t.check_at(a, 69), Err(Duration::from_secs(1)));
        assert!(t.check_at(a, 70).is_ok(), "the window is over");
        assert!(t.check_at(ip("203.0.113.8"), 20).is_ok(), "others are not");
        // A failure after the window starts a new count.
        t.failed_at(a, 71);
        assert!(t.check_at(a, 71).is_ok());
    }

    #[test]
    fn ipv6_is_counted_by_its_64() {
        let t = Throttle::new(2).expect("on");
        t.failed_at(ip("2001:db8:1:2::1"), 0);
        t.failed_at(ip("2001:db8:1:2:ffff::9"), 0);
        assert!(t.check_at(ip("2001:db8:1:2::abcd"), 1).is_err());
        assert!(t.check_at(ip("2001:db8:1:3::1"), 1).is_ok());
        // An IPv4 address seen as IPv4-mapped IPv6 is the same address.
        t.failed_at(ip("::ffff:198.51.100.1"), 0);
        t.failed_at(ip("198.51.100.1"), 0);
        assert!(t.check_at(ip("198.51.100.1"), 1).is_err());
        assert!(t.check_at(ip("198.51.100.2"), 1).is_ok());
    }

    /// A million addresses leave the table at its size, and an address already throttled
    /// survives a churn of addresses that failed once each.
    #[test]
    fn the_table_is_bounded_and_keeps_the_throttled() {
        let t = Throttle::new(5).expect("on");
        let abuser = ip("192.0.2.1");
        for _ in 0..5 {
            t.failed_at(abuser, 0);
        }
        for n in 0..1_000_000u32 {
            t.failed_at(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)), 1);
        }
        assert_eq!(t.entries.len(), BUCKETS * WAYS);
        assert!(t.tracked() <= BUCKETS * WAYS);
        assert!(
            t.check_at(abuser, 2).is_err(),
            "the throttled address is kept"
        );
    }

    #[test]
    fn entries_pack_and_unpack() {
        let e = Entry {
            start: u32::MAX - 3,
            tag: TAG_MASK,
            count: COUNT_MASK,
        };
        assert_eq!(Entry::unpack(e.pack()), e);
    }
}
