//! One service's cache of `ok` replies: a `moka` cache bounded by entries and bytes through
//! one weigher, entries kept for `ttl` plus the longer stale window, and the set of keys whose
//! background refresh is running (one at a time per key).

use std::sync::Arc;
use std::time::{Duration, Instant};

use busgate_shared::config::CacheSpec;
use bytes::Bytes;
use dashmap::DashSet;

/// A stored reply: the `data` bytes as the service sent them (`None` for `null`).
#[derive(Debug)]
pub struct Entry {
    /// The data.
    pub data: Option<Bytes>,
    /// When it was stored.
    pub stored: Instant,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Found {
    /// A fresh entry; `ttl` is what is left of its freshness, in whole seconds.
    Fresh { entry: Arc<Entry>, ttl: i64 },
    /// Stale, within `stale_while_revalidate`: serve it and refresh in the background. `ttl`
    /// is negative: how long ago it went stale.
    Revalidate { entry: Arc<Entry>, ttl: i64 },
    /// Stale, past `stale_while_revalidate` but within `stale_if_error`: ask the service, and
    /// serve this copy if it fails.
    Fallback { entry: Arc<Entry>, ttl: i64 },
    /// Nothing usable.
    Miss,
}

/// The cache of one service, for one `CacheSpec` (a changed spec gets a new one).
pub struct ServiceCache {
    spec: CacheSpec,
    entries: moka::sync::Cache<u128, Arc<Entry>>,
    refreshing: DashSet<u128>,
}

impl std::fmt::Debug for ServiceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCache")
            .field("spec", &self.spec)
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl ServiceCache {
    /// An empty cache for `spec`.
    pub fn new(spec: CacheSpec) -> Self {
        // Every entry weighs at least `max_bytes / max_entries`, so the byte bound is the
        // entry bound too: `max_entries` entries of that weight fill it.
        let floor = (spec.max_bytes / spec.max_entries.max(1)).max(1);
        let entries = moka::sync::Cache::builder()
            .max_capacity(spec.max_bytes)
            .weigher(move |_key: &u128, entry: &Arc<Entry>| {
                let bytes = entry.data.as_ref().map_or(0, |d| d.len() as u64) + 64;
                u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
            })
            .time_to_live(spec.keep_for())
            .build();
        ServiceCache {
            spec,
            entries,
            refreshing: DashSet::new(),
        }
    }

    /// The spec it was made for.
    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    /// What is stored under `key`, judged at `now`.
    pub fn lookup(&self, key: u128, now: Instant) -> Found {
        let Some(entry) = self.entries.get(&key) else {
            return Found::Miss;
        };
        let age = now.saturating_duration_since(entry.stored);
        if age < self.spec.ttl {
            let ttl = seconds(self.spec.ttl - age);
            return Found::Fresh { entry, ttl };
        }
        let stale_for = age - self.spec.ttl;
        let ttl = -seconds(stale_for);
        if stale_for < self.spec.stale_while_revalidate {
            Found::Revalidate { entry, ttl }
        } else if stale_for < self.spec.stale_if_error {
            Found::Fallback { entry, ttl }
        } else {
            Found::Miss
        }
    }

    /// Stores an `ok` reply's data; false (not stored) when it is larger than the spec allows.
    pub fn store(&self, key: u128, data: Option<Bytes>, now: Instant) -> bool {
        let len = data.as_ref().map_or(0, |d| d.len() as u64);
        if len > self.spec.max_entry_bytes() {
            return false;
        }
        self.entries
            .insert(key, Arc::new(Entry { data, stored: now }));
        true
    }

    /// Claims the refresh of `key`: true for the one caller that should run it, until
    /// [`ServiceCache::refreshed`].
    pub fn claim_refresh(&self, key: u128) -> bool {
        self.refreshing.insert(key)
    }

    /// Ends the refresh of `key` (whatever it came to).
    pub fn refreshed(&self, key: u128) {
        self.refreshing.remove(&key);
    }

    /// Refreshes running now.
    pub fn refreshes_running(&self) -> usize {
        self.refreshing.len()
    }

    /// Entries and weighed bytes right now, after pending evictions are applied.
    pub fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

/// Whole seconds, rounded up (so a fresh entry never shows `ttl=0`).
fn seconds(d: Duration) -> i64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(s).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CacheSpec {
        CacheSpec {
            ttl: Duration::from_secs(10),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(20),
            shared: false,
            max_entries: 100,
            max_bytes: 64 * 1024,
        }
    }

    #[test]
    fn an_entry_ages_from_fresh_through_stale_to_gone() {
        let cache = ServiceCache::new(spec());
        let t0 = Instant::now();
        assert!(cache.store(1, Some(Bytes::from_static(b"{}")), t0));
        let at = |s: u64| cache.lookup(1, t0 + Duration::from_secs(s));
        assert!(matches!(at(0), Found::Fresh { ttl: 10, .. }));
        assert!(matches!(at(9), Found::Fresh { ttl: 1, .. }));
        assert!(matches!(at(12), Found::Revalidate { ttl: -2, .. }));
        assert!(matches!(at(16), Found::Fallback { ttl: -6, .. }));
        assert!(matches!(at(31), Found::Miss));
        assert!(matches!(cache.lookup(2, t0), Found::Miss));
    }

    #[test]
    fn a_reply_over_a_quarter_of_the_bytes_is_not_stored() {
        let cache = ServiceCache::new(spec());
        let huge = Bytes::from(vec![b'x'; 16 * 1024 + 1]);
        assert!(!cache.store(1, Some(huge), Instant::now()));
        assert!(matches!(cache.lookup(1, Instant::now()), Found::Miss));
    }

    #[test]
    fn many_distinct_keys_stay_within_the_entry_bound() {
        let cache = ServiceCache::new(spec());
        let now = Instant::now();
        for key in 0..5_000u128 {
            cache.store(key, Some(Bytes::from_static(b"{\"a\":1}")), now);
        }
        let (entries, bytes) = cache.size();
        assert!(entries <= 100, "{entries} entries");
        assert!(bytes <= 64 * 1024, "{bytes} bytes");
    }

    #[test]
    fn one_refresh_at_a_time_per_key() {
        let cache = ServiceCache::new(spec());
        assert!(cache.claim_refresh(7));
        assert!(!cache.claim_refresh(7));
        assert!(cache.claim_refresh(8));
        cache.refreshed(7);
        assert!(cache.claim_refresh(7));
    }
}
