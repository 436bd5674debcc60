//! The configuration of answers reused or completed later (issue 25, "Resilience (v3)"): a
//! service's `cache` and `coalesce`, and a route's `late` grace; their validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The longest `ttl`, `stale_while_revalidate` or `stale_if_error` a cache may have.
pub const MAX_CACHE_AGE: Duration = Duration::from_secs(24 * 3600);
/// The most entries one service's cache may be given.
pub const MAX_CACHE_ENTRIES: u64 = 1_000_000;
/// The most bytes one service's cache may be given (1 GiB).
pub const MAX_CACHE_BYTES: u64 = 1 << 30;
/// The longest a route's late grace may be.
pub const MAX_LATE_GRACE: Duration = Duration::from_secs(60);

/// A service's cache: `{"ttl":"30s","stale_while_revalidate":"30s","stale_if_error":"5m",
/// "shared":false}`. Only `ok` replies are stored, per gateway instance, bounded by entries
/// and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// How long a stored reply is fresh (served without asking the service).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long after `ttl` a stale reply is still served at once, while one background
    /// request refreshes it.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Duration::is_zero"
    )]
    pub stale_while_revalidate: Duration,
    /// How long after `ttl` a stale reply is served when the service fails (error, timeout,
    /// no responders).
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Duration::is_zero"
    )]
    pub stale_if_error: Duration,
    /// One entry for every client (`true`), or one per client (`false`, the default): a
    /// service whose answer does not depend on who asks may share.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// The most entries kept (default 10,000).
    #[serde(default = "default_entries")]
    pub max_entries: u64,
    /// The most bytes of data kept (default 16 MiB); a reply larger than a quarter of it is
    /// never stored.
    #[serde(default = "default_bytes")]
    pub max_bytes: u64,
}

fn default_entries() -> u64 {
    10_000
}

fn default_bytes() -> u64 {
    16 << 20
}

impl CacheSpec {
    /// A cache with `ttl` and the default bounds, nothing stale.
    pub fn fresh_for(ttl: Duration) -> Self {
        CacheSpec {
            ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            shared: false,
            max_entries: default_entries(),
            max_bytes: default_bytes(),
        }
    }

    /// How long an entry is kept at all: `ttl` plus the longer stale window.
    pub fn keep_for(&self) -> Duration {
        self.ttl + self.stale_while_revalidate.max(self.stale_if_error)
    }

    /// The largest reply stored: a quarter of `max_bytes`.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_bytes / 4
    }

    /// Checks the bounds; `at` is the field path of the cache (`services.x.cache`).
    pub fn validate(&self, at: &str) -> Result<(), Error> {
        if self.ttl.is_zero() || self.ttl > MAX_CACHE_AGE {
            return Err(Error::invalid(
                format!("{at}.ttl"),
                "must be between 1ms and 24h",
            ));
        }
        for (field, value) in [
            ("stale_while_revalidate", self.stale_while_revalidate),
            ("stale_if_error", self.stale_if_error),
        ] {
            if value > MAX_CACHE_AGE {
                return Err(Error::invalid(format!("{at}.{field}"), "at most 24h"));
            }
        }
        if !(1..=MAX_CACHE_ENTRIES).contains(&self.max_entries) {
            return Err(Error::invalid(
                format!("{at}.max_entries"),
                format!("must be between 1 and {MAX_CACHE_ENTRIES}"),
            ));
        }
        if !(1024..=MAX_CACHE_BYTES).contains(&self.max_bytes) {
            return Err(Error::invalid(
                format!("{at}.max_bytes"),
                format!("must be between 1024 and {MAX_CACHE_BYTES}"),
            ));
        }
        Ok(())
    }
}

/// A route's late grace: `{"grace":"5s"}`. A synchronous answer left partial by an optional
/// source keeps listening for it that much longer, and its request document completes then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateSpec {
    /// How long after the answer the late sources are still waited for.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl LateSpec {
    /// Checks the grace; `at` is the field path (`routes.x.late`).
    pub fn validate(&self, at: &str) -> Result<(), Error> {
        if self.grace.is_zero() || self.grace > MAX_LATE_GRACE {
            return Err(Error::invalid(
                format!("{at}.grace"),
                "must be between 1ms and 60s",
            ));
        }
        Ok(())
    }
}

/// `coalesce` is on unless a service says `false`.
pub fn coalesce_default() -> bool {
    true
}

/// Whether `coalesce` has its default value (left out of written documents).
pub fn is_coalesce_default(coalesce: &bool) -> bool {
    *coalesce
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<(), Error>) -> String {
        match result {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn cache_bounds_are_checked_and_named() {
        let ok: CacheSpec = serde_json::from_str(
            r#"{"ttl":"30s","stale_while_revalidate":"30s","stale_if_error":"5m"}"#,
        )
        .expect("parses");
        ok.validate("services.s.cache").expect("valid");
        assert_eq!(ok.keep_for(), Duration::from_secs(330));
        let mut bad = ok;
        bad.ttl = Duration::ZERO;
        assert_eq!(field(bad.validate("c")), "c.ttl");
        let mut bad = ok;
        bad.stale_if_error = Duration::from_secs(90_000);
        assert_eq!(field(bad.validate("c")), "c.stale_if_error");
        let mut bad = ok;
        bad.max_entries = 0;
        assert_eq!(field(bad.validate("c")), "c.max_entries");
        let mut bad = ok;
        bad.max_bytes = 2 << 30;
        assert_eq!(field(bad.validate("c")), "c.max_bytes");
        assert!(serde_json::from_str::<CacheSpec>(r#"{"ttl":"1s","nope":1}"#).is_err());
    }

    #[test]
    fn a_late_grace_over_the_cap_is_refused() {
        let late: LateSpec = serde_json::from_str(r#"{"grace":"61s"}"#).expect("parses");
        assert_eq!(field(late.validate("routes.r.late")), "routes.r.late.grace");
        let late: LateSpec = serde_json::from_str(r#"{"grace":"5s"}"#).expect("parses");
        late.validate("routes.r.late").expect("valid");
    }
}
