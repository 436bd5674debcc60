//! Answers reused: a cache of `ok` replies per service ([`store`]), coalescing of concurrent
//! identical source requests ([`coalesce`]), the request key both use, what a source's answer
//! says about them (`sources.<s>.cache`, `coalesced`, the RFC 9211 `Cache-Status` header), and
//! the stop signal of the background work they start (refreshes, late gathers).
//!
//! Owns: [`Reuse`], the one handle the collector holds. Knows nothing of gathers: the hooks
//! that use it on the request path are in `gather::reuse`. May use: `metrics`.

pub mod coalesce;
pub mod store;

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use busgate_shared::config::CacheSpec;
use dashmap::DashMap;

use crate::cache::coalesce::Flights;
use crate::cache::store::ServiceCache;
use crate::metrics::{Metrics, Name};

/// The request header whose `no-cache` (or `no-store`) skips the cache.
pub const CACHE_CONTROL: &str = "cache-control";

/// The caches, the flights in flight and the background work of one gateway instance.
pub struct Reuse {
    keys: (std::hash::RandomState, std::hash::RandomState),
    caches: DashMap<Name, Arc<ServiceCache>>,
    flights: Arc<Flights>,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Sender<bool>,
    late_open: AtomicUsize,
}

/// What a request is, for coalescing and the cache: service, operation, order id,
/// attributes, and client unless the cache is `shared`.
pub struct KeyParts<'a> {
    /// The service asked.
    pub service: &'a str,
    /// The route's operation.
    pub operation: &'a str,
    /// The order id.
    pub order_id: &'a str,
    /// The request's attributes, as sent: empty on every route reuse applies to (a composed
    /// route, whose stages send attributes, is never cached or coalesced).
    pub attributes: &'a [u8],
    /// The client; `None` when the service's cache is shared.
    pub client: Option<&'a str>,
}

impl Reuse {
    /// An empty instance, counting in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Reuse {
            keys: (std::hash::RandomState::new(), std::hash::RandomState::new()),
            caches: DashMap::new(),
            flights: Arc::new(Flights::default()),
            metrics,
            stop: tokio::sync::watch::channel(false).0,
            late_open: AtomicUsize::new(0),
        }
    }

    /// The key of a request: 128 bits of two independently (randomly) keyed SipHashes, so
    /// that nobody outside can make two requests collide.
    pub fn key(&self, parts: &KeyParts<'_>) -> u128 {
        let hash = |state: &std::hash::RandomState| {
            let mut h = state.build_hasher();
            parts.service.hash(&mut h);
            parts.operation.hash(&mut h);
            parts.order_id.hash(&mut h);
            parts.attributes.hash(&mut h);
            parts.client.hash(&mut h);
            h.finish()
        };
        (u128::from(hash(&self.keys.0)) << 64) | u128::from(hash(&self.keys.1))
    }

    /// The cache of `service` for `spec`: a changed spec starts an empty one.
    pub fn cache(&self, service: &Name, spec: &CacheSpec) -> Arc<ServiceCache> {
        if let Some(cache) = self.caches.get(service) {
            if cache.spec() == spec {
                return cache.clone();
            }
        }
        let cache = Arc::new(ServiceCache::new(*spec));
        self.caches.insert(service.clone(), cache.clone());
        cache
    }

    /// The cache of `service`, if one was made.
    pub fn cache_of(&self, service: &str) -> Option<Arc<ServiceCache>> {
        self.caches
            .get(&Name(Arc::from(service)))
            .map(|c| c.clone())
    }

    /// The flights in flight.
    pub fn flights(&self) -> &Arc<Flights> {
        &self.flights
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A receiver that turns `true` when the instance shuts down: background work stops.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops every refresh and late gather (shutdown).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Takes one of `cap` late-gather places; `None` when all are taken.
    pub fn open_late(self: &Arc<Self>, cap: usize) -> Option<LatePlace> {
        let taken = self
            .late_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            });
        taken.ok().map(|_| LatePlace {
            reuse: self.clone(),
        })
    }

    /// Late gathers open right now.
    pub fn late_open(&self) -> usize {
        self.late_open.load(Ordering::Acquire)
    }
}

/// One open late gather's place; given back when dropped.
pub struct LatePlace {
    reuse: Arc<Reuse>,
}

impl Drop for LatePlace {
    fn drop(&mut self) {
        self.reuse.late_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a `Cache-Control` request header value asks not to be served from a cache
/// (`no-cache`, or `no-store`), as a directive of the comma-separated list.
pub fn forbids(value: &str) -> bool {
    value.split(',').any(|d| {
        let d = d.trim();
        let name = d.split('=').next().unwrap_or(d).trim();
        name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store")
    })
}

/// What the cache did for one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// Served fresh from the cache; `ttl` seconds of freshness left.
    Hit {
        /// Seconds of freshness left.
        ttl: i64,
    },
    /// Served stale at once while a refresh runs (`stale_while_revalidate`).
    Revalidating {
        /// Negative: seconds since it went stale.
        ttl: i64,
    },
    /// The service failed and the stale copy was served (`stale_if_error`).
    OnError {
        /// Negative: seconds since it went stale.
        ttl: i64,
    },
    /// Not in the cache (or not usable): the service was asked.
    Miss {
        /// Whether its reply was stored.
        stored: bool,
    },
    /// The client's `Cache-Control: no-cache` skipped the lookup.
    Bypass {
        /// Whether the reply was stored.
        stored: bool,
    },
}

impl CacheState {
    /// `sources.<s>.cache`: `hit`, `stale` or `miss`.
    pub fn word(self) -> &'static str {
        match self {
            CacheState::Hit { .. } => "hit",
            CacheState::Revalidating { .. } | CacheState::OnError { .. } => "stale",
            CacheState::Miss { .. } | CacheState::Bypass { .. } => "miss",
        }
    }

    /// Records that the reply was stored.
    pub fn stored(&mut self) {
        if let CacheState::Miss { stored } | CacheState::Bypass { stored } = self {
            *stored = true;
        }
    }
}

/// What reuse did for one source of an answer (nothing, by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// The cache's part; `None` when the service has no cache.
    pub cache: Option<CacheState>,
    /// The reply was another gather's (coalescing).
    pub coalesced: bool,
}

impl Mark {
    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        *self == Mark::default()
    }

    /// Appends this mark's fields to a source's object in `sources` (`,"cache":"hit"`,
    /// `,"coalesced":true`).
    pub fn put_fields(&self, out: &mut Vec<u8>) {
        if let Some(state) = self.cache {
            out.extend_from_slice(b",\"cache\":\"");
            out.extend_from_slice(state.word().as_bytes());
            out.push(b'"');
        }
        if self.coalesced {
            out.extend_from_slice(b",\"coalesced\":true");
        }
    }
}

/// The RFC 9211 `Cache-Status` field value for the cached sources of an answer: one list
/// member per source whose service has a cache, named `busgate-<service>` (a token: service
/// names are `[a-z][a-z0-9_-]*`), in the route's order, e.g.
/// `busgate-service1; hit; ttl=12, busgate-service2; fwd=miss; stored`. `None` when no source
/// has a cache.
pub fn cache_status<'a>(sources: impl Iterator<Item = (&'a str, Mark)>) -> Option<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (service, mark) in sources {
        let Some(state) = mark.cache else {
            continue;
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str("busgate-");
        out.push_str(service);
        // Writing into a String cannot fail.
        let _ = match state {
            CacheState::Hit { ttl } => write!(out, "; hit; ttl={ttl}"),
            CacheState::Revalidating { ttl } => {
                write!(out, "; hit; ttl={ttl}; detail=stale-while-revalidate")
            }
            CacheState::OnError { ttl } => {
                write!(out, "; fwd=stale; ttl={ttl}; detail=stale-if-error")
            }
            CacheState::Miss { stored } => {
                out.push_str("; fwd=miss");
                if stored {
                    out.push_str("; stored");
                }
                Ok(())
            }
            CacheState::Bypass { stored } => {
                out.push_str("; fwd=request");
                if stored {
                    out.push_str("; stored");
                }
                Ok(())
            }
        };
        if mark.coalesced {
            out.push_str("; collapsed");
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cache_is_read_as_a_directive() {
        assert!(forbids("no-cache"));
        assert!(forbids("max-age=0, No-Cache"));
        assert!(forbids("no-store"));
        assert!(forbids("no-cache=\"set-cookie\""));
        assert!(!forbids("max-age=60"));
        assert!(!forbids("no-cachex"));
    }

    #[test]
    fn keys_separate_what_they_must() {
        let reuse = Reuse::new(Arc::new(Metrics::new()));
        let parts = |order_id, client| KeyParts {
            service: "s",
            operation: "order",
            order_id,
            attributes: b"",
            client,
        };
        let a = reuse.key(&parts("1", Some("acme")));
        assert_eq!(a, reuse.key(&parts("1", Some("acme"))));
        assert_ne!(a, reuse.key(&parts("1", Some("other"))));
        assert_ne!(a, reuse.key(&parts("1", None)));
        assert_ne!(a, reuse.key(&parts("2", Some("acme"))));
        // No ambiguity at the seams between fields.
        let x = KeyParts {
            service: "ab",
            operation: "c",
            order_id: "1",
            attributes: b"",
            client: None,
        };
        let y = KeyParts {
            service: "a",
            operation: "bc",
            ..x
        };
        assert_ne!(reuse.key(&x), reuse.key(&y));
    }

    /// Each member is `token *( ";" key [ "=" value ] )` (RFC 8941 list of tokens with
    /// parameters): keys lower-case, values integers or tokens, boolean params bare.
    #[test]
    fn cache_status_is_an_rfc_9211_list() {
        let marks = [
            (
                "service1",
                Mark {
                    cache: Some(CacheState::Hit { ttl: 12 }),
                    coalesced: false,
                },
            ),
            ("plain", Mark::default()),
            (
                "service2",
                Mark {
                    cache: Some(CacheState::Miss { stored: true }),
                    coalesced: true,
                },
            ),
            (
                "s3",
                Mark {
                    cache: Some(CacheState::Revalidating { ttl: -3 }),
                    coalesced: false,
                },
            ),
            (
                "s4",
                Mark {
                    cache: Some(CacheState::OnError { ttl: -40 }),
                    coalesced: false,
                },
            ),
            (
                "s5",
                Mark {
                    cache: Some(CacheState::Bypass { stored: false }),
                    coalesced: false,
                },
            ),
        ];
        let value = cache_status(marks.iter().copied()).expect("cached sources");
        assert_eq!(
            value,
            "busgate-service1; hit; ttl=12, busgate-service2; fwd=miss; stored; collapsed, \
             busgate-s3; hit; ttl=-3; detail=stale-while-revalidate, \
             busgate-s4; fwd=stale; ttl=-40; detail=stale-if-error, busgate-s5; fwd=request"
        );
        assert!(axum::http::HeaderValue::from_str(&value).is_ok());
        assert_eq!(cache_status([("plain", Mark::default())].into_iter()), None);
    }
}
