//! The request path's hooks into `crate::cache`: before a target is published, its cache is
//! looked up (a fresh or revalidating entry settles the source at once) and it joins the
//! coalescing table (a follower does not publish); when a reply lands it is handed to the
//! followers and stored; when the source fails, a stale copy within `stale_if_error` takes
//! its place. Also the background refresh of a stale entry: one per key at a time, bounded by
//! the target's timeout, stopped at shutdown.
//!
//! A target with neither a cache nor coalescing never reaches this module.

use std::sync::Arc;
use std::time::Duration;

use busgate_shared::envelope::ServiceRequest;
use busgate_shared::header;
use tokio::time::Instant;
use tracing::debug;

use crate::cache::coalesce::{Joined, Ticket};
use crate::cache::store::{Entry, Found, ServiceCache};
use crate::cache::{forbids, CacheState, KeyParts, Mark, CACHE_CONTROL};
use crate::config::snapshot::{Route, Target};
use crate::gather::collector::{Collector, Gather};
use crate::gather::scatter::{Asker, Book, SourceResult};
use crate::metrics::{ServiceLabels, SourceLabels};

/// What one source of a gather holds for reuse; empty (and never looked at) for a target with
/// neither a cache nor coalescing.
#[derive(Debug, Default)]
pub struct SlotReuse {
    /// Where an `ok` reply is stored (the leader's, or a lone request's, cache).
    store: Option<(Arc<ServiceCache>, u128)>,
    /// A stale copy to serve if the service fails, with its (negative) ttl.
    fallback: Option<(Arc<Entry>, i64)>,
    /// This gather leads the flight of the source's request.
    ticket: Option<Ticket>,
}

impl SlotReuse {
    /// What a source's result becomes: an `ok` reply is stored; a failure is replaced by the
    /// stale copy within `stale_if_error`, if there is one.
    pub fn settled(&mut self, mark: &mut Mark, result: SourceResult) -> SourceResult {
        match &result {
            SourceResult::Ok { data, .. } => {
                if let Some((cache, key)) = self.store.take() {
                    if cache.store(key, data.clone(), std::time::Instant::now()) {
                        if let Some(state) = &mut mark.cache {
                            state.stored();
                        }
                    }
                }
                result
            }
            SourceResult::Error { elapsed, .. } | SourceResult::NoResponders { elapsed } => {
                self.stale_instead(mark, *elapsed).unwrap_or(result)
            }
            SourceResult::Timeout { after } => self.stale_instead(mark, *after).unwrap_or(result),
            _ => result,
        }
    }

    fn stale_instead(&mut self, mark: &mut Mark, elapsed: Duration) -> Option<SourceResult> {
        let (entry, ttl) = self.fallback.take()?;
        mark.cache = Some(CacheState::OnError { ttl });
        Some(SourceResult::Ok {
            data: entry.data.clone(),
            elapsed,
        })
    }

    /// The reply of a flight this gather leads came: the followers to forward it to.
    pub fn land(&mut self) -> Option<Vec<u64>> {
        self.ticket.take().map(Ticket::land)
    }
}

/// Looks `target` (source `index` of `route`) up before it is published: true when the
/// source is settled or follows another gather's flight, so nothing is published for it.
pub fn intercept(
    gather: &Gather,
    route: &Route,
    target: &Target,
    asker: &Asker<'_>,
    book: &mut Book,
    index: usize,
) -> bool {
    let collector = gather.collector();
    let reuse = collector.reuse();
    let metrics = reuse.metrics();
    let shared = target.cache.is_some_and(|c| c.shared);
    let key = reuse.key(&KeyParts {
        service: &target.service.0,
        operation: &route.operation,
        order_id: asker.order_id,
        attributes: b"",
        client: (!shared).then_some(asker.client),
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
        let bypass = asker.headers.get_header(CACHE_CONTROL).is_some_and(forbids);
        let found = if bypass {
            Found::Miss
        } else {
            cache.lookup(key, std::time::Instant::now())
        };
        match found {
            Found::Fresh { entry, ttl } => {
                count("hit");
                mark.cache = Some(CacheState::Hit { ttl });
                book.settle_reused(index, served(&entry, book), mark, slot);
                return true;
            }
            Found::Revalidate { entry, ttl } => {
                count("stale");
                mark.cache = Some(CacheState::Revalidating { ttl });
                if cache.claim_refresh(key) {
                    refresh(collector, route, target, asker, cache.clone(), key);
                }
                book.settle_reused(index, served(&entry, book), mark, slot);
                return true;
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
        let until = book.started() + target.timeout;
        match reuse.flights().join(key, gather.id(), until) {
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
                book.reuse_slot(index, mark, slot);
                return true;
            }
            Joined::Lead(ticket) => slot.ticket = Some(ticket),
        }
    }
    book.reuse_slot(index, mark, slot);
    false
}

fn served(entry: &Entry, book: &Book) -> SourceResult {
    SourceResult::Ok {
        data: entry.data.clone(),
        elapsed: book.started().elapsed(),
    }
}

/// Refreshes a stale entry in the background: one request to the service on a gather of its
/// own, its `ok` reply stored; bounded by the target's timeout, stopped at shutdown. The
/// caller holds the key's refresh claim, given back here whatever happens.
fn refresh(
    collector: &Collector,
    route: &Route,
    target: &Target,
    asker: &Asker<'_>,
    cache: Arc<ServiceCache>,
    key: u128,
) {
    let collector = collector.clone();
    let subject = target.subject.clone();
    let service = target.service.clone();
    let timeout = target.timeout;
    let payload = ServiceRequest::encode_without_attributes(
        asker.request_id,
        asker.order_id,
        &route.operation,
    );
    let request_id = asker.request_id.to_owned();
    let client = asker.client.to_owned();
    let traceparent = asker.traceparent.to_owned();
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
            if let Some(message) = message {
                if let SourceResult::Ok { data, .. } =
                    SourceResult::from_message(&message, started.elapsed())
                {
                    cache.store(key, data, std::time::Instant::now());
                    outcome = "ok";
                }
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

#[cfg(test)]
mod tests {
    use busgate_shared::config::CacheSpec;
    use bytes::Bytes;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn stale_copy() -> SlotReuse {
        let entry = Arc::new(Entry {
            data: Some(Bytes::from_static(b"{\"old\":1}")),
            stored: std::time::Instant::now(),
        });
        SlotReuse {
            fallback: Some((entry, -40)),
            ..SlotReuse::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_required_source_with_a_stale_copy_does_not_fail_the_gather() {
        for failure in [
            SourceResult::Error {
                code: "c".into(),
                message: "m".into(),
                elapsed: MS,
            },
            SourceResult::NoResponders { elapsed: MS },
        ] {
            let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
            book.reuse_slot(0, Mark::default(), stale_copy());
            book.settle(0, failure);
            let outcome = book.finish();
            assert_eq!(outcome.failed, None);
            assert!(outcome.results[0].is_ok());
            assert_eq!(
                outcome.marks[0].cache,
                Some(CacheState::OnError { ttl: -40 })
            );
        }
        // A timeout too, through the deadline.
        let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
        book.reuse_slot(0, Mark::default(), stale_copy());
        tokio::time::advance(100 * MS).await;
        book.expire(Instant::now());
        let outcome = book.finish();
        assert_eq!(outcome.failed, None);
        assert_eq!(outcome.marks[0].cache.map(CacheState::word), Some("stale"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ok_reply_is_stored_and_says_so() {
        let cache = Arc::new(ServiceCache::new(CacheSpec::fresh_for(
            Duration::from_secs(5),
        )));
        let mut book = Book::new(Instant::now(), [(true, 100 * MS)]);
        let slot = SlotReuse {
            store: Some((cache.clone(), 42)),
            ..SlotReuse::default()
        };
        let mark = Mark {
            cache: Some(CacheState::Miss { stored: false }),
            coalesced: false,
        };
        book.reuse_slot(0, mark, slot);
        book.settle(
            0,
            SourceResult::Ok {
                data: Some(Bytes::from_static(b"{}")),
                elapsed: MS,
            },
        );
        let outcome = book.finish();
        assert_eq!(
            outcome.marks[0].cache,
            Some(CacheState::Miss { stored: true })
        );
        assert!(matches!(
            cache.lookup(42, std::time::Instant::now()),
            Found::Fresh { .. }
        ));
        // An answer without reuse carries no marks at all (nothing allocated).
        let mut plain = Book::new(Instant::now(), [(true, 100 * MS)]);
        plain.settle(0, SourceResult::NotFound { elapsed: MS });
        assert!(plain.finish().marks.is_empty());
    }
}
