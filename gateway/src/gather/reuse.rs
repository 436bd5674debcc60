//! The request path's hooks into `crate::cache`: before a target is published, its cache is
//! looked up (a fresh or revalidating entry settles the source at once) and it joins the
//! coalescing table (a follower does not publish); when a reply lands it is handed to the
//! followers and stored; when the source fails, a stale copy within `stale_if_error` takes
//! its place. Also the background refresh of a stale entry: one per key at a time, bounded by
//! the target's timeout, stopped at shutdown.
//!
//! A target with neither a cache nor coalescing never reaches this module. It knows sources'
//! data as bytes; `scatter` turns what it says into results.

use std::sync::Arc;
use std::time::Duration;

use busgate_shared::envelope::{ParsedReply, ReplyStatus, ServiceRequest};
use busgate_shared::header;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;

use crate::cache::coalesce::{Follower, Joined, Ticket};
use crate::cache::store::{Entry, Found, ServiceCache};
use crate::cache::{forbids, CacheState, KeyParts, Mark};
use crate::config::snapshot::{Route, Target};
use crate::gather::collector::{Collector, Gather};
use crate::metrics::{Name, ServiceLabels, SourceLabels};

/// What one source of a gather holds for reuse; empty (and never looked at) for a target with
/// neither a cache nor coalescing.
#[derive(Debug, Default)]
pub struct SlotReuse {
    /// Where an `ok` reply is stored (the leader's, or a lone request's, cache).
    store: Option<(Arc<ServiceCache>, u128)>,
    /// A stale copy to serve if the service fails, with its (negative) ttl.
    fallback: Option<(Arc<Entry>, i64)>,
    /// This gather leads the flight of the source's request (whose target has this name).
    ticket: Option<(Ticket, Name)>,
}

/// A flight whose leader's gather ended before the reply came, while others follow it.
pub struct OpenFlight {
    ticket: Ticket,
    /// The leader's target name (the source its reply subject names).
    source: Name,
}

/// Forwards `message` (a reply to `source`) to the followers of the matching flight of
/// `flights`, which ends; false when none matches.
pub fn land_open(
    collector: &Collector,
    flights: &mut Vec<OpenFlight>,
    source: &str,
    message: &busgate_shared::wire::Msg,
) -> bool {
    let Some(at) = flights.iter().position(|f| &*f.source.0 == source) else {
        return false;
    };
    let flight = flights.swap_remove(at);
    for (follower, name) in flight.ticket.land() {
        collector.forward(follower, &name.0, message.clone());
    }
    true
}

impl SlotReuse {
    /// Stores into `cache` under `key` when the source answers `ok`.
    pub fn storing(cache: Arc<ServiceCache>, key: u128) -> Self {
        SlotReuse {
            store: Some((cache, key)),
            ..SlotReuse::default()
        }
    }

    /// Serves `entry` (stale by `-ttl` seconds) if the source fails.
    pub fn with_fallback(entry: Arc<Entry>, ttl: i64) -> Self {
        SlotReuse {
            fallback: Some((entry, ttl)),
            ..SlotReuse::default()
        }
    }

    /// The source answered `ok` with `data`: stored, if this slot stores.
    pub fn answered(&mut self, mark: &mut Mark, data: &Option<Bytes>) {
        if let Some((cache, key)) = self.store.take() {
            if cache.store(key, data.clone(), std::time::Instant::now()) {
                if let Some(state) = &mut mark.cache {
                    state.stored();
                }
            }
        }
    }

    /// The source failed (error, no responders, timeout): the stale copy's data to answer
    /// with instead, if there is one.
    pub fn failed(&mut self, mark: &mut Mark) -> Option<Option<Bytes>> {
        let (entry, ttl) = self.fallback.take()?;
        mark.cache = Some(CacheState::OnError { ttl });
        Some(entry.data.clone())
    }

    /// The reply of a flight this gather leads came: the followers to forward it to.
    pub fn land(&mut self) -> Option<Vec<Follower>> {
        self.ticket.take().map(|(ticket, _)| ticket.land())
    }

    /// The flight this slot leads, if its reply has not come and others follow it.
    pub fn open_flight(&mut self) -> Option<OpenFlight> {
        let (ticket, source) = self.ticket.take()?;
        // Without followers the ticket just drops here: the flight ends.
        ticket
            .has_followers()
            .then_some(OpenFlight { ticket, source })
    }
}

/// Who asks, as reuse needs it.
pub struct Ask<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The order id.
    pub order_id: &'a str,
    /// The client.
    pub client: &'a str,
    /// The traceparent to send with a refresh.
    pub traceparent: &'a str,
    /// The request's `Cache-Control`, if any.
    pub cache_control: Option<&'a str>,
}

/// What reuse made of a target before it is published.
pub enum Intercepted {
    /// Publish it, holding this.
    Publish(Mark, SlotReuse),
    /// Settled from the cache with this data: nothing to publish.
    Served(Mark, Option<Bytes>),
    /// Another gather's flight brings the reply: nothing to publish.
    Follows(Mark, SlotReuse),
}

/// Looks `target` of `route` up before it is published (see [`Intercepted`]). `budget` is the
/// time this request gives the source (its timeout, perhaps cut by the client's
/// `Busgate-Timeout`), `until` when it stops waiting: it follows only a flight whose leader gave
/// at least as much.
pub fn intercept(
    gather: &Gather,
    route: &Route,
    target: &Target,
    ask: &Ask<'_>,
    until: Instant,
    budget: Duration,
) -> Intercepted {
    let collector = gather.collector();
    let reuse = collector.reuse();
    let metrics = reuse.metrics();
    let shared = target.cache.is_some_and(|c| c.shared);
    let key = reuse.key(&KeyParts {
        service: &target.service.0,
        operation: &route.operation,
        order_id: ask.order_id,
        attributes: b"",
        client: (!shared).then_some(ask.client),
    });
    let count = |outcome: &'static str| {
        metrics
            .cache_lookups
            .get_or_create(&SourceLabels {
                service: target.service.clone(),
                outcome,
            })
            .inc();
    };
    let mut mark = Mark::default();
    let mut slot = SlotReuse::default();
    if let Some(spec) = &target.cache {
        let cache = reuse.cache(&target.service, spec);
        let bypass = ask.cache_control.is_some_and(forbids);
        let found = if bypass {
            Found::Miss
        } else {
            cache.lookup(key, std::time::Instant::now())
        };
        match found {
            Found::Fresh { entry, ttl } => {
                count("hit");
                mark.cache = Some(CacheState::Hit { ttl });
                return Intercepted::Served(mark, entry.data.clone());
            }
            Found::Revalidate { entry, ttl } => {
                count("stale");
                mark.cache = Some(CacheState::Revalidating { ttl });
                if cache.claim_refresh(key) {
                    refresh(collector, route, target, ask, cache.clone(), key);
                }
                return Intercepted::Served(mark, entry.data.clone());
            }
            Found::Fallback { entry, ttl } => {
                count("miss");
                mark.cache = Some(CacheState::Miss { stored: false });
                slot.fallback = Some((entry, ttl));
            }
            Found::Miss if bypass => {
                count("bypass");
                mark.cache = Some(CacheState::Bypass { stored: false });
            }
            Found::Miss => {
                count("miss");
                mark.cache = Some(CacheState::Miss { stored: false });
            }
        }
        slot.store = Some((cache, key));
    }
    if target.coalesce {
        match reuse
            .flights()
            .join(key, gather.id(), &target.name, until, budget)
        {
            Joined::Follow => {
                metrics
                    .coalesced
                    .get_or_create(&ServiceLabels {
                        service: target.service.clone(),
                    })
                    .inc();
                mark.coalesced = true;
                // The leader stores the reply; a follower keeps only its stale fallback.
                slot.store = None;
                return Intercepted::Follows(mark, slot);
            }
            Joined::Lead(ticket) => slot.ticket = Some((ticket, target.name.clone())),
            // A flight that ends before this request would stop waiting (its leader's client
            // cut its deadline): publish alone, neither following nor taking it over.
            Joined::Alone => {}
        }
    }
    Intercepted::Publish(mark, slot)
}

/// Refreshes a stale entry in the background: one request to the service on a gather of its
/// own, its `ok` reply stored; bounded by the target's timeout, stopped at shutdown. The
/// caller holds the key's refresh claim, given back here whatever happens.
fn refresh(
    collector: &Collector,
    route: &Route,
    target: &Target,
    ask: &Ask<'_>,
    cache: Arc<ServiceCache>,
    key: u128,
) {
    let collector = collector.clone();
    let subject = target.subject.clone();
    let service = target.service.clone();
    let timeout = target.timeout;
    let payload =
        ServiceRequest::encode_without_attributes(ask.request_id, ask.order_id, &route.operation);
    let request_id = ask.request_id.to_owned();
    let client = ask.client.to_owned();
    let traceparent = ask.traceparent.to_owned();
    let mut stopping = collector.reuse().stopping();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut gather = collector.register(1);
        let mut reply = String::new();
        collector.reply_subject(gather.id(), &service.0, &mut reply);
        let deadline_ms = header::now_unix_ms()
            .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let mut digits = [0u8; 20];
        let headers = [
            (header::REQUEST_ID, request_id.as_str()),
            (header::DEADLINE, header::decimal(deadline_ms, &mut digits)),
            (header::CLIENT, client.as_str()),
            (header::TRACEPARENT, traceparent.as_str()),
        ];
        let published = collector
            .wire()
            .publish(&subject, Some(&reply), &headers, &payload);
        let mut outcome = "failed";
        if published.is_ok() {
            let wait = tokio::time::timeout_at(started + timeout, gather.next());
            let message = tokio::select! {
                m = wait => m.ok().flatten(),
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let reply = message
                .filter(|m| m.status().is_none())
                .and_then(|m| ParsedReply::parse(&m.payload).ok());
            if let Some(reply) = reply.filter(|r| r.status == ReplyStatus::Ok) {
                cache.store(key, reply.data, std::time::Instant::now());
                outcome = "ok";
            }
        }
        drop(gather);
        cache.refreshed(key);
        debug!(service = %service.0, outcome, "cache refresh");
        collector
            .reuse()
            .metrics()
            .cache_refreshes
            .get_or_create(&SourceLabels { service, outcome })
            .inc();
    });
}

/// Takes over the inbox of a gather that ended while leading `flights` that others follow: the
/// replies, when they come, go to the followers. Bounded by the flights' deadlines, stopped at
/// shutdown.
pub fn orphan(mut gather: Gather, mut flights: Vec<OpenFlight>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(until) = flights.iter().map(|f| f.ticket.until()).max() else {
        return;
    };
    let mut stopping = gather.collector().reuse().stopping();
    runtime.spawn(async move {
        while !flights.is_empty() {
            let next = tokio::time::timeout_at(until, gather.next());
            let message = tokio::select! {
                m = next => m,
                _ = stopping.wait_for(|stop| *stop) => break,
            };
            let Ok(Some(message)) = message else { break };
            let collector = gather.collector();
            if let Some(source) = collector.source_of(&message) {
                land_open(collector, &mut flights, source, &message);
            }
        }
        debug!(
            gather = gather.id(),
            unanswered = flights.len(),
            "orphaned flights ended"
        );
    });
}
