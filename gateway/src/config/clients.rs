//! Clients as the snapshot compiles them: the index of API keys (SHA-256 of a key → its
//! client), the routes a client may use, and its limits with their state.
//!
//! The state of a client's limits (its GCRA limiter, its pending requests and open streams)
//! lives in the compiled [`Client`], and a new snapshot takes it over from the one it replaces
//! ([`Clients::inherit`]): a configuration change elsewhere neither resets a client's rate nor
//! forgets what it holds. A changed rate starts a fresh limiter, in force from the swap on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busgate_shared::config::{ClientSpec, RateSpec};

use crate::metrics::Name;

/// A SHA-256 digest: how an API key is known to the gateway.
pub type KeyHash = [u8; 32];

/// The clients of a snapshot.
#[derive(Debug, Default)]
pub struct Clients {
    /// By the SHA-256 of each live key.
    by_key: HashMap<KeyHash, Arc<Client>>,
    /// By name.
    by_name: BTreeMap<String, Arc<Client>>,
}

/// A compiled client.
#[derive(Debug)]
pub struct Client {
    /// Its name: the metrics label, `Busgate-Client`, the owner of its asynchronous requests.
    pub name: Name,
    /// The routes it may use; `None`: every route.
    routes: Option<Vec<Box<str>>>,
    /// Its rate limiter, if it has a rate.
    pub limiter: Option<Arc<Limiter>>,
    /// The most asynchronous requests it may have pending, across the deployment (this
    /// instance's part: [`Client::pending_cap`]).
    pub max_pending: Option<usize>,
    /// The most event streams it may have open on this instance.
    pub max_streams: Option<usize>,
    /// What it holds now, and its counters; shared with the snapshots before and after.
    pub usage: Arc<Usage>,
}

/// What a client holds on this instance.
#[derive(Debug, Default)]
pub struct Usage {
    /// Asynchronous requests submitted here and not finished.
    pub pending: Arc<Held>,
    /// Event streams open here.
    pub streams: Arc<Held>,
}

/// A count of things held, whose cap is given at each take (so a changed cap applies to the
/// next take without losing the count).
#[derive(Debug, Default)]
pub struct Held(AtomicUsize);

impl Held {
    /// Takes one if fewer than `cap` are held (any number when `None`); the guard gives it back.
    pub fn try_hold(self: &Arc<Self>, cap: Option<usize>) -> Option<HeldSlot> {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        if cap.is_some_and(|cap| before >= cap) {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(HeldSlot(self.clone()))
    }

    /// How many are held.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One of a [`Held`], given back when dropped.
#[derive(Debug)]
pub struct HeldSlot(Arc<Held>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client's GCRA limiter (the generic cell rate algorithm: one atomic "theoretical arrival
/// time", moved on by a compare-and-swap per admitted request) and the rate it was made for.
///
/// The rate is the client's for the whole deployment: with N live gateway instances
/// (`crate::share`), this instance admits one request every `N / per_second` seconds and a
/// burst of `burst / N` (at least 1), so that the instances together admit the client's rate.
/// A change of N takes effect at the next request, the state carried over.
#[derive(Debug)]
pub struct Limiter {
    /// The rate (the deployment's, not this instance's share).
    pub rate: RateSpec,
    /// What `tat` counts from.
    origin: Instant,
    /// The theoretical arrival time of the next conforming request, in nanoseconds since
    /// `origin`.
    tat: AtomicU64,
}

impl Limiter {
    /// A limiter of `rate` (validated: both numbers at least 1).
    pub fn new(rate: RateSpec) -> Self {
        Limiter {
            rate,
            origin: Instant::now(),
            tat: AtomicU64::new(0),
        }
    }

    /// Counts one request against this instance's share: `Ok` when it conforms, else how long
    /// until one would.
    pub fn check(&self) -> Result<(), Duration> {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.check_at(now, crate::share::instances())
    }

    /// Whether the limiter is back at its full burst (forgetting it loses nothing).
    pub fn idle(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.tat.load(Ordering::Acquire) <= now
    }

    /// [`Limiter::check`] at `now` (nanoseconds since the limiter was made) with `instances`
    /// sharing the rate.
    pub fn check_at(&self, now: u64, instances: u32) -> Result<(), Duration> {
        let n = u64::from(instances.max(1));
        let per_second = u64::from(self.rate.per_second.max(1));
        // This instance's share: one request every `interval`, `burst` of them at once.
        let interval = (n * 1_000_000_000 / per_second).max(1);
        let burst = (u64::from(self.rate.burst().max(1)) / n).max(1);
        let tolerance = interval.saturating_mul(burst - 1);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(now);
            let allowed_until = now.saturating_add(tolerance);
            if start > allowed_until {
                return Err(Duration::from_nanos(start - allowed_until));
            }
            match self.tat.compare_exchange_weak(
                tat,
                start.saturating_add(interval),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

impl Client {
    /// The anonymous client of one address (`[auth.anonymous]`, see `crate::auth::anonymous`):
    /// no name, every route, the given limits and fresh usage.
    pub fn anonymous(
        rate: Option<RateSpec>,
        max_pending: Option<usize>,
        max_streams: Option<usize>,
    ) -> Self {
        Client {
            name: Name(Arc::from("")),
            routes: None,
            limiter: rate.map(|rate| Arc::new(Limiter::new(rate))),
            max_pending,
            max_streams,
            usage: Arc::new(Usage::default()),
        }
    }

    /// Whether it holds nothing and its limiter is at its full burst.
    pub fn idle(&self) -> bool {
        self.usage.pending.count() == 0
            && self.usage.streams.count() == 0
            && self.limiter.as_ref().is_none_or(|l| l.idle())
    }

    /// The most asynchronous requests it may have pending on this instance: its cap for the
    /// deployment, shared among the live instances (`crate::share::of_cap`).
    pub fn pending_cap(&self) -> Option<usize> {
        self.max_pending
            .map(|cap| crate::share::of_cap(cap, crate::share::instances()))
    }

    /// Whether it may use the route named `route`.
    pub fn may_use(&self, route: &str) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|routes| routes.iter().any(|r| &**r == route))
    }
}

impl Clients {
    /// Compiles validated client documents.
    pub fn compile(specs: &BTreeMap<String, ClientSpec>) -> Self {
        let mut clients = Clients::default();
        for (name, spec) in specs {
            let client = Arc::new(Client {
                name: Name(Arc::from(name.as_str())),
                routes: (!spec.routes.is_empty())
                    .then(|| spec.routes.iter().map(|r| r.as_str().into()).collect()),
                limiter: spec.rate.map(|rate| Arc::new(Limiter::new(rate))),
                max_pending: spec.max_pending.map(|n| n as usize),
                max_streams: spec.max_streams.map(|n| n as usize),
                usage: Arc::new(Usage::default()),
            });
            for key in &spec.keys {
                if let Some(hash) = parse_hash(&key.hash) {
                    clients.by_key.insert(hash, client.clone());
                }
            }
            clients.by_name.insert(name.clone(), client);
        }
        clients
    }

    /// Takes over the state of the clients of `previous` that are still here: their usage,
    /// and their limiter when the rate is unchanged.
    pub fn inherit(&mut self, previous: &Clients) {
        let mut replaced = BTreeMap::new();
        for (name, client) in &self.by_name {
            let Some(old) = previous.by_name.get(name) else {
                continue;
            };
            let limiter = match (&client.limiter, &old.limiter) {
                (Some(new), Some(old)) if new.rate == old.rate => Some(old.clone()),
                _ => client.limiter.clone(),
            };
            let carried = Arc::new(Client {
                name: client.name.clone(),
                routes: client.routes.clone(),
                limiter,
                max_pending: client.max_pending,
                max_streams: client.max_streams,
                usage: old.usage.clone(),
            });
            replaced.insert(name.clone(), carried);
        }
        for client in self.by_key.values_mut() {
            if let Some(carried) = replaced.get(&*client.name.0) {
                *client = carried.clone();
            }
        }
        for (name, carried) in replaced {
            self.by_name.insert(name, carried);
        }
    }

    /// The stored digest equal to a key's SHA-256, and the client it belongs to.
    pub fn by_key(&self, hash: &KeyHash) -> Option<(&KeyHash, &Arc<Client>)> {
        self.by_key.get_key_value(hash)
    }

    /// A client by name.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Client>> {
        self.by_name.get(name)
    }

    /// Every client, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.by_name.values()
    }
}

/// A hex SHA-256 as bytes.
pub fn parse_hash(hex: &str) -> Option<KeyHash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use busgate_shared::config::KeySpec;

    fn spec(rate: Option<RateSpec>, hash: &str) -> BTreeMap<String, ClientSpec> {
        BTreeMap::from([(
            "acme".to_owned(),
            ClientSpec {
                routes: vec!["order".into()],
                rate,
                max_pending: Some(1),
                keys: vec![KeySpec {
                    id: "k1".into(),
                    hash: hash.into(),
                    created: String::new(),
                }],
                ..Default::default()
            },
        )])
    }

    #[test]
    fn keys_find_their_client_and_routes_are_checked() {
        let hash = "ab".repeat(32);
        let clients = Clients::compile(&spec(None, &hash));
        let (_, client) = clients
            .by_key(&parse_hash(&hash).expect("hash"))
            .expect("found");
        assert_eq!(&*client.name.0, "acme");
        assert!(client.may_use("order") && !client.may_use("other"));
        assert!(clients.by_key(&[0; 32]).is_none());
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = Limiter::new(RateSpec {
            per_second: 2,
            burst: Some(3),
        });
        for _ in 0..3 {
            assert!(limiter.check().is_ok());
        }
        let wait = limiter.check().expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }

    #[test]
    fn instances_share_the_rate_and_the_burst() {
        let limiter = Limiter::new(RateSpec {
            per_second: 20,
            burst: Some(10),
        });
        // Two instances: a burst of 5, then one every 100 ms.
        let admitted = (0..10).filter(|_| limiter.check_at(0, 2).is_ok()).count();
        assert_eq!(admitted, 5);
        let wait = limiter.check_at(0, 2).expect_err("burst spent");
        assert_eq!(wait, Duration::from_millis(100));
        // Over 10 s offered 50/s, this instance admits 10/s (+ its burst, spent above).
        let mut admitted = 0;
        for step in 1..=500u64 {
            if limiter.check_at(step * 20_000_000, 2).is_ok() {
                admitted += 1;
            }
        }
        assert!((99..=101).contains(&admitted), "{admitted}");
        // Alone again: the whole rate, from the next request on.
        let mut alone = 0;
        for step in 501..=1000u64 {
            if limiter.check_at(step * 20_000_000, 1).is_ok() {
                alone += 1;
            }
        }
        assert!((199..=211).contains(&alone), "{alone}");
    }

    #[test]
    fn a_new_snapshot_keeps_usage_and_an_unchanged_limiter() {
        let hash = "cd".repeat(32);
        let rate = RateSpec {
            per_second: 1,
            burst: Some(1),
        };
        let old = Clients::compile(&spec(Some(rate), &hash));
        let acme = old.by_name("acme").expect("acme").clone();
        assert!(acme.limiter.as_ref().expect("limiter").check().is_ok());
        let slot = acme.usage.pending.try_hold(acme.max_pending).expect("one");
        assert!(acme.usage.pending.try_hold(acme.max_pending).is_none());

        let mut same = Clients::compile(&spec(Some(rate), &hash));
        same.inherit(&old);
        let (_, by_key) = same
            .by_key(&parse_hash(&hash).expect("hash"))
            .expect("found");
        assert!(
            by_key.limiter.as_ref().expect("limiter").check().is_err(),
            "the spent burst is remembered"
        );
        assert!(by_key.usage.pending.try_hold(by_key.max_pending).is_none());
        drop(slot);
        assert!(by_key.usage.pending.try_hold(by_key.max_pending).is_some());

        let mut faster = Clients::compile(&spec(
            Some(RateSpec {
                per_second: 100,
                burst: Some(5),
            }),
            &hash,
        ));
        faster.inherit(&same);
        let acme = faster.by_name("acme").expect("acme");
        assert!(
            acme.limiter.as_ref().expect("limiter").check().is_ok(),
            "a new rate is a new limiter"
        );
    }
}
