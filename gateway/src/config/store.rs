//! The configuration store: services, routes and clients as documents in the KV bucket
//! `busgate-config` (`services.<name>`, `routes.<name>`, `clients.<name>`), watched by every
//! gateway instance.
//!
//! [`ConfigStore`] is the guarded way to read and write them (revisions for `ETag`/`If-Match`,
//! history, the value at a revision). [`run_watcher`] keeps an instance's configuration in
//! force: it loads every key, then follows changes; after each change it validates the whole
//! new snapshot and swaps it in atomically, or refuses it, logs why and keeps the last good one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use busgate_shared::config::{ClientSpec, ConfigSpec, RouteSpec, ServiceSpec};
use busgate_shared::drain;
use busgate_shared::subject;
use busgate_shared::watch::Event;

use crate::config::snapshot::Snapshot;
use crate::error::{ErrorKind, GatewayError, Store};

/// The store this module owns, as errors name it.
const STORE: Store = Store::Config;

/// A JetStream or KV failure of this store.
fn js(e: impl Into<async_nats::Error>) -> GatewayError {
    STORE.failed(e)
}

/// The outcome of a conditional write: what it returned; `lost()` when the store says the
/// condition did not hold (`lost_when`); else the store's failure.
fn conditional<T, K>(
    result: Result<T, async_nats::error::Error<K>>,
    lost_when: K,
    lost: impl FnOnce() -> ErrorKind,
) -> Result<T, GatewayError>
where
    K: Clone + std::fmt::Debug + std::fmt::Display + PartialEq + Send + Sync + 'static,
{
    match result {
        Ok(value) => Ok(value),
        Err(e) if e.kind() == lost_when => Err(lost().into()),
        Err(e) => Err(js(e)),
    }
}

/// The store as read: `kind.name` keys (`services.billing`) with their revision and document.
pub type Stored = BTreeMap<String, (u64, serde_json::Value)>;

/// The kinds of configuration objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `services.<name>`.
    Service,
    /// `routes.<name>`.
    Route,
    /// `clients.<name>`.
    Client,
}

impl Kind {
    /// The key prefix and the word used in URLs and errors.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Route => "routes",
            Kind::Client => "clients",
        }
    }

    /// The KV key of an object (`name` must be a validated name).
    pub fn key(self, name: &str) -> String {
        format!("{}.{name}", self.plural())
    }
}

/// One revision of an object.
#[derive(Debug, Clone, Serialize)]
pub struct Revision {
    /// The KV revision.
    pub revision: u64,
    /// `put` or `delete`.
    pub operation: &'static str,
    /// When it was written (RFC 3339).
    pub created: String,
    /// The document (absent for a delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

/// What the watcher reports about the configuration in force.
#[derive(Debug, Default)]
pub struct StoreStatus {
    /// Whether a configuration from the store is in force.
    pub loaded: AtomicBool,
    /// The highest KV revision in the configuration in force.
    pub revision: AtomicU64,
    /// Why the last change was refused, if it was.
    pub last_error: Mutex<Option<String>>,
    /// The highest KV revision the watcher has dealt with, in force or refused.
    seen: AtomicU64,
    /// Wakes those waiting for `seen` to move.
    moved: Notify,
}

impl StoreStatus {
    fn saw(&self, revision: u64) {
        self.seen.fetch_max(revision, Ordering::Release);
        self.moved.notify_waiters();
    }

    /// Waits until the watcher has dealt with `revision` (so this instance runs it, or has
    /// refused it), at most `within`; false when it has not by then.
    pub async fn wait_for(&self, revision: u64, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            // Registered before the check: a move between the check and the wait is not lost.
            moved.as_mut().enable();
            if self.seen.load(Ordering::Acquire) >= revision {
                return true;
            }
            if tokio::time::timeout_at(until, moved).await.is_err() {
                return self.seen.load(Ordering::Acquire) >= revision;
            }
        }
    }
}

/// `store` reading from its stream's leader when the bucket has replicas.
///
/// async-nats makes every bucket with `allow_direct`: a read is then answered by any
/// replica, and a follower that has not caught up answers with an older value, or none. On a
/// 3-node cluster that left a gateway started just after another without the routes the
/// first had seeded (its load read the keys, then missed an entry), and a poll right after a
/// 202 with a 404. Without `allow_direct` a read goes through the JetStream API to the
/// leader: read-after-write holds. A single replica is its own leader: it keeps direct reads.
pub async fn read_from_leader(
    context: &jetstream::Context,
    store: kv::Store,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    if replicas <= 1 {
        return Ok(store);
    }
    let bucket = store.name.clone();
    let stream = context.get_stream(format!("KV_{bucket}")).await?;
    let mut config = stream.cached_info().config.clone();
    if !config.allow_direct {
        return Ok(store);
    }
    config.allow_direct = false;
    context.update_stream(&config).await?;
    Ok(context.get_key_value(bucket).await?)
}

/// The guarded access to `busgate-config`.
#[derive(Clone)]
pub struct ConfigStore {
    js: jetstream::Context,
    kv: kv::Store,
    /// The largest document the store takes: the server's message size less room for the
    /// subject and headers. A larger one is refused (413) before it is sent, not answered
    /// with the server's refusal (which would read as an unreachable store, 503).
    max_object: usize,
}

/// Room left in a message for the KV subject and JetStream headers.
const MESSAGE_OVERHEAD: usize = 4096;
/// nats-server's default message size, when the server did not say.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

impl ConfigStore {
    /// Opens (or creates) the bucket.
    pub async fn open(nats: &async_nats::Client, replicas: usize) -> Result<Self, GatewayError> {
        let context = jetstream::new(nats.clone());
        let kv = context
            .create_or_update_key_value(kv::Config {
                bucket: subject::CONFIG_BUCKET.into(),
                description: "Busgate services and routes".into(),
                history: 64,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(js)?;
        let kv = read_from_leader(&context, kv, replicas).await.map_err(js)?;
        let max_payload = match nats.server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n,
        };
        Ok(ConfigStore {
            js: context,
            kv,
            max_object: max_payload.saturating_sub(MESSAGE_OVERHEAD).max(1024),
        })
    }

    /// Seeds an empty bucket with `spec`; returns how many objects were written (0 when the
    /// bucket had any). Concurrent seeders do not overwrite each other (`create`).
    pub async fn seed(&self, spec: &ConfigSpec) -> Result<usize, GatewayError> {
        if self.last_sequence().await? > 0 {
            return Ok(0);
        }
        let mut written = 0;
        for (kind, name, value) in objects(spec)? {
            self.fits(&value)?;
            match self.kv.create(kind.key(&name), value).await {
                Ok(_) => written += 1,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(js(e)),
            }
        }
        Ok(written)
    }

    /// Every object in the store, by key (`services.billing`), with its revision and document.
    pub async fn objects(&self) -> Result<Stored, GatewayError> {
        let mut keys = self.kv.keys().await.map_err(js)?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(js)?);
        }
        let mut out = Stored::new();
        for key in names {
            let Some(entry) = self.kv.entry(&key).await.map_err(js)? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let value = serde_json::from_slice(&entry.value).map_err(STORE.corrupt(&key))?;
            out.insert(key, (entry.revision, value));
        }
        Ok(out)
    }

    /// The revision of the bucket's latest change, whatever its key.
    pub async fn last_sequence(&self) -> Result<u64, GatewayError> {
        busgate_shared::watch::last_sequence(&self.js)
            .await
            .map_err(js)
    }

    /// An object and its revision.
    pub async fn get(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<(u64, serde_json::Value)>, GatewayError> {
        let key = kind.key(name);
        match self.kv.entry(&key).await.map_err(js)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let value = serde_json::from_slice(&entry.value).map_err(STORE.corrupt(&key))?;
                Ok(Some((entry.revision, value)))
            }
            _ => Ok(None),
        }
    }

    /// Writes an object on a condition: `None`, that it does not exist (a create, else
    /// [`ErrorKind::Exists`]); `Some(revision)`, that it is still at that revision (an update,
    /// else [`ErrorKind::Stale`]).
    pub async fn write_if(
        &self,
        kind: Kind,
        name: &str,
        value: &serde_json::Value,
        expected: Option<u64>,
    ) -> Result<u64, GatewayError> {
        let (key, bytes) = encode(kind, name, value)?;
        self.fits(&bytes)?;
        match expected {
            None => {
                let written = self.kv.create(&key, bytes).await;
                conditional(written, kv::CreateErrorKind::AlreadyExists, || {
                    ErrorKind::Exists(key)
                })
            }
            Some(expected) => {
                let written = self.kv.update(&key, bytes, expected).await;
                conditional(written, kv::UpdateErrorKind::WrongLastRevision, || {
                    ErrorKind::Stale { key, expected }
                })
            }
        }
    }

    /// Refuses a document larger than the store takes: 413, never the 503 of the server's
    /// own refusal.
    fn fits(&self, document: &[u8]) -> Result<(), GatewayError> {
        if document.len() > self.max_object {
            return Err(ErrorKind::PayloadTooLarge {
                limit: self.max_object,
            }
            .into());
        }
        Ok(())
    }

    /// Writes an object whatever its revision (import).
    pub async fn put(
        &self,
        kind: Kind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<u64, GatewayError> {
        let (key, bytes) = encode(kind, name, value)?;
        self.fits(&bytes)?;
        self.kv.put(key, bytes).await.map_err(js)
    }

    /// Deletes an object if its revision is still `expected` (any revision when `None`).
    pub async fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected: Option<u64>,
    ) -> Result<(), GatewayError> {
        let key = kind.key(name);
        let deleted = self.kv.delete_expect_revision(&key, expected).await;
        // Without `expected` no revision is checked, so the store cannot say it was wrong.
        conditional(deleted, kv::UpdateErrorKind::WrongLastRevision, || {
            ErrorKind::Stale {
                key,
                expected: expected.unwrap_or_default(),
            }
        })
    }

    /// Every revision of an object still in history, oldest first.
    pub async fn history(&self, kind: Kind, name: &str) -> Result<Vec<Revision>, GatewayError> {
        let key = kind.key(name);
        let mut history = match self.kv.history(&key).await {
            Ok(h) => h,
            Err(e) if e.to_string().contains("no message found") => return Ok(Vec::new()),
            Err(e) => return Err(js(e)),
        };
        let mut revisions = Vec::new();
        while let Some(entry) = history.next().await {
            let entry = entry.map_err(js)?;
            let put = entry.operation == kv::Operation::Put;
            revisions.push(Revision {
                revision: entry.revision,
                operation: if put { "put" } else { "delete" },
                created: crate::clock::rfc3339(SystemTime::from(entry.created)),
                spec: if put {
                    serde_json::from_slice(&entry.value).ok()
                } else {
                    None
                },
            });
        }
        Ok(revisions)
    }

    /// The document an object had at `revision`.
    pub async fn at_revision(
        &self,
        kind: Kind,
        name: &str,
        revision: u64,
    ) -> Result<Option<serde_json::Value>, GatewayError> {
        Ok(self
            .history(kind, name)
            .await?
            .into_iter()
            .find(|r| r.revision == revision)
            .and_then(|r| r.spec))
    }
}

/// An object's key and stored document.
fn encode(
    kind: Kind,
    name: &str,
    value: &serde_json::Value,
) -> Result<(String, Bytes), GatewayError> {
    let key = kind.key(name);
    let bytes = serde_json::to_vec(value).map_err(STORE.corrupt(&key))?;
    Ok((key, Bytes::from(bytes)))
}

/// The objects of a configuration as `(kind, name, document)`.
fn objects(spec: &ConfigSpec) -> Result<Vec<(Kind, String, Bytes)>, GatewayError> {
    let mut out = Vec::new();
    for (name, service) in &spec.services {
        out.push((
            Kind::Service,
            name.clone(),
            Bytes::from(serde_json::to_vec(service).map_err(STORE.corrupt(name))?),
        ));
    }
    for (name, route) in &spec.routes {
        out.push((
            Kind::Route,
            name.clone(),
            Bytes::from(serde_json::to_vec(route).map_err(STORE.corrupt(name))?),
        ));
    }
    for (name, client) in &spec.clients {
        out.push((
            Kind::Client,
            name.clone(),
            Bytes::from(serde_json::to_vec(client).map_err(STORE.corrupt(name))?),
        ));
    }
    Ok(out)
}

/// Builds a configuration from stored documents.
pub fn spec_from(entries: &BTreeMap<String, (u64, Bytes)>) -> Result<ConfigSpec, GatewayError> {
    let mut spec = ConfigSpec {
        services: BTreeMap::new(),
        routes: BTreeMap::new(),
        clients: BTreeMap::new(),
    };
    for (key, (_, value)) in entries {
        if let Some(name) = key.strip_prefix("services.") {
            spec.services.insert(
                name.to_owned(),
                serde_json::from_slice::<ServiceSpec>(value).map_err(STORE.corrupt(key))?,
            );
        } else if let Some(name) = key.strip_prefix("routes.") {
            spec.routes.insert(
                name.to_owned(),
                serde_json::from_slice::<RouteSpec>(value).map_err(STORE.corrupt(key))?,
            );
        } else if let Some(name) = key.strip_prefix("clients.") {
            spec.clients.insert(
                name.to_owned(),
                serde_json::from_slice::<ClientSpec>(value).map_err(STORE.corrupt(key))?,
            );
        }
    }
    Ok(spec)
}

/// Keeps the configuration in force in line with the store until `drain` is signalled;
/// retries an interrupted watch with the one backoff.
pub async fn run_watcher(
    store: ConfigStore,
    config: Arc<ArcSwap<Snapshot>>,
    status: Arc<StoreStatus>,
    drain: drain::Watch,
) {
    let mut backoff = crate::clock::retry_backoff().stream();
    // `busgate_shared::watch::follow` also stops on a flag; the drain stops it here instead,
    // by dropping it at an await (it only reads). The flag stays open and unset.
    let (_open, mut never) = watch::channel(false);
    loop {
        let result = tokio::select! {
            _release = drain.clone().signaled() => return,
            result = follow(&store, &config, &status, &mut never) => result,
        };
        if let Err(e) = result {
            warn!(error = %e, attempt = backoff.attempts() + 1, "configuration watch interrupted");
        }
        if !backoff.wait(&drain).await {
            return;
        }
    }
}

async fn follow(
    store: &ConfigStore,
    config: &ArcSwap<Snapshot>,
    status: &StoreStatus,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    let stop = stop.changed();
    busgate_shared::watch::follow(&store.js, &store.kv, stop, |entries, event| match event {
        Event::Loaded { last } => {
            apply(entries, config, status);
            status.saw(last);
        }
        Event::Changed {
            revision,
            fresh: false,
        } => status.saw(revision),
        Event::Changed {
            revision,
            fresh: true,
        } => {
            status.revision.fetch_max(revision, Ordering::Relaxed);
            apply(entries, config, status);
            status.saw(revision);
        }
    })
    .await
    .map_err(js)
}

/// Validates and swaps in the configuration the entries describe, or refuses it.
fn apply(
    entries: &BTreeMap<String, (u64, Bytes)>,
    config: &ArcSwap<Snapshot>,
    status: &StoreStatus,
) {
    let revision = entries.values().map(|(r, _)| *r).max().unwrap_or(0);
    let compiled = spec_from(entries)
        .and_then(|spec| Snapshot::compile(spec).map_err(GatewayError::invalid_config));
    match compiled {
        Ok(mut snapshot) => {
            snapshot.inherit(&config.load());
            let routes = snapshot.spec.routes.len();
            let services = snapshot.spec.services.len();
            config.store(Arc::new(snapshot));
            status.revision.fetch_max(revision, Ordering::Relaxed);
            status.loaded.store(true, Ordering::Release);
            if let Ok(mut last) = status.last_error.lock() {
                *last = None;
            }
            info!(revision, routes, services, "configuration in force");
        }
        Err(e) => {
            warn!(revision, error = %e, "configuration refused, the last good one stays in force");
            if let Ok(mut last) = status.last_error.lock() {
                *last = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_a_revision_ends_when_the_watcher_reaches_it_or_at_its_bound() {
        let status = Arc::new(StoreStatus::default());
        status.saw(3);
        assert!(status.wait_for(3, Duration::from_secs(2)).await);

        let started = tokio::time::Instant::now();
        assert!(!status.wait_for(5, Duration::from_secs(2)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        let waiting = tokio::spawn({
            let status = status.clone();
            async move { status.wait_for(5, Duration::from_secs(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        status.saw(4);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "4 is not 5");
        status.saw(6);
        assert!(waiting.await.expect("join"));
    }

    #[test]
    fn documents_round_trip_through_keys() {
        let spec = ConfigSpec::builtin();
        let entries: BTreeMap<String, (u64, Bytes)> = objects(&spec)
            .expect("objects")
            .into_iter()
            .enumerate()
            .map(|(i, (kind, name, value))| (kind.key(&name), (i as u64 + 1, value)))
            .collect();
        assert!(entries.contains_key("services.service1"));
        assert!(entries.contains_key("routes.order"));
        assert_eq!(spec_from(&entries).expect("spec"), spec);
    }

    #[test]
    fn an_invalid_change_keeps_the_last_good_configuration() {
        let spec = ConfigSpec::builtin();
        let mut entries: BTreeMap<String, (u64, Bytes)> = objects(&spec)
            .expect("objects")
            .into_iter()
            .map(|(kind, name, value)| (kind.key(&name), (1, value)))
            .collect();
        let config =
            ArcSwap::from_pointee(Snapshot::compile(ConfigSpec::builtin()).expect("compile"));
        let status = StoreStatus::default();
        apply(&entries, &config, &status);
        assert!(status.loaded.load(Ordering::Acquire));
        // A route naming a service that does not exist.
        entries.insert(
            "routes.order".into(),
            (2, Bytes::from_static(br#"{"bindings":[{"method":"GET","path":"/x/{order_id}"}],"targets":[{"service":"ghost"}]}"#)),
        );
        apply(&entries, &config, &status);
        assert!(
            config
                .load()
                .route("order")
                .is_some_and(|r| r.targets.len() == 2),
            "the old route stays"
        );
        assert!(status
            .last_error
            .lock()
            .expect("lock")
            .as_deref()
            .is_some_and(|e| e.contains("ghost")));
        // Garbage is refused the same way.
        entries.insert(
            "services.service1".into(),
            (3, Bytes::from_static(b"not json")),
        );
        apply(&entries, &config, &status);
        assert!(config.load().route("order").is_some());
    }
}
