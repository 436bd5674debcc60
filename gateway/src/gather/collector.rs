//! The collector alone owns the table of pending gathers.
//!
//! One wildcard subscription per gateway instance (`_INBOX.busgate.<instance>.>`) on the
//! request path's [`wire::Connection`] receives every reply; its read task hands each one to its
//! gather by the gather id in the subject, with no task or channel in between. Others hold a
//! cheap [`Collector`] handle: [`Collector::register`] opens a gather, dropping the returned
//! [`Gather`] closes it, so a gather that ends for any reason (answered, deadline, client gone)
//! leaves nothing behind and no sweeper is needed. Replies for a closed gather are dropped and
//! counted as late.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;
use tracing::{debug, warn};

use busgate_shared::subject;
use busgate_shared::wire::{self, Msg};

use crate::cache::Reuse;
use crate::metrics::Metrics;

/// A cheap, cloneable handle to the collector.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

struct Inner {
    /// The request path's connection: requests go out and replies come in on it.
    wire: wire::Connection,
    /// `_INBOX.busgate.<instance>.`
    prefix: String,
    pending: DashMap<u64, Arc<Inbox>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// Caches and coalescing (`crate::cache`).
    reuse: Arc<Reuse>,
}

/// The replies of one gather, waiting to be read. A small vector sized to the sources and a
/// `Notify`: a tokio channel allocates a 32-slot block per gather, which dominated the memory
/// of a gather in flight.
struct Inbox {
    replies: std::sync::Mutex<Vec<Msg>>,
    capacity: usize,
    arrived: Notify,
}

impl Inbox {
    /// Queues a reply; false when the inbox is full (a duplicate beyond the sources).
    fn push(&self, message: Msg) -> bool {
        let Ok(mut replies) = self.replies.lock() else {
            return false;
        };
        if replies.len() >= self.capacity {
            return false;
        }
        // Sized on the first reply, not when the gather opens: a message is ~200 bytes and a
        // gather spends its life waiting.
        if replies.capacity() == 0 {
            replies.reserve_exact(self.capacity);
        }
        replies.push(message);
        drop(replies);
        self.arrived.notify_one();
        true
    }

    fn pop(&self) -> Option<Msg> {
        let mut replies = self.replies.lock().ok()?;
        (!replies.is_empty()).then(|| replies.remove(0))
    }
}

/// An open gather: receives the replies addressed to it until dropped.
pub struct Gather {
    id: u64,
    inbox: Arc<Inbox>,
    collector: Collector,
}

/// The reply inbox's subscription: replies are routed until it is stopped or dropped.
pub struct InboxSubscription {
    subscription: wire::Subscription,
}

impl Collector {
    /// Subscribes to this instance's inbox on `wire` and routes replies from then on.
    pub fn start(
        wire: &wire::Connection,
        instance: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(Collector, InboxSubscription), wire::PublishError> {
        let collector = Collector {
            inner: Arc::new(Inner {
                wire: wire.clone(),
                prefix: subject::instance_inbox_prefix(instance),
                pending: DashMap::new(),
                next_id: AtomicU64::new(1),
                reuse: Arc::new(Reuse::new(metrics.clone())),
                metrics,
            }),
        };
        // The subscription's callback holds the table weakly: the connection keeps callbacks,
        // and a strong handle there would keep the collector alive through its own connection.
        let routing = Arc::downgrade(&collector.inner);
        let subscription = wire.subscribe(
            &subject::instance_inbox_wildcard(instance),
            None,
            move |message| {
                if let Some(inner) = routing.upgrade() {
                    Collector { inner }.deliver(message);
                }
            },
        )?;
        Ok((collector, InboxSubscription { subscription }))
    }

    /// The request path's connection.
    pub fn wire(&self) -> &wire::Connection {
        &self.inner.wire
    }

    /// Caches and coalescing.
    pub fn reuse(&self) -> &Arc<Reuse> {
        &self.inner.reuse
    }

    /// Hands a copy of another gather's reply to gather `id` (a coalesced follower), addressed
    /// to its target named `source` there (an alias may differ from the leader's); false when
    /// that gather has ended.
    pub fn forward(&self, id: u64, source: &str, mut message: Msg) -> bool {
        let Some(inbox) = self.inner.pending.get(&id) else {
            return false;
        };
        let mut subject = String::new();
        self.reply_subject(id, source, &mut subject);
        message.subject = subject.into();
        inbox.push(message)
    }

    /// The metrics the gather counts in.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether requests can go out right now.
    pub fn is_connected(&self) -> bool {
        self.inner.wire.is_connected()
    }

    /// Opens a gather expecting up to `sources` replies.
    pub fn register(&self, sources: usize) -> Gather {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let capacity = sources.max(1);
        let inbox = Arc::new(Inbox {
            replies: std::sync::Mutex::new(Vec::new()),
            capacity,
            arrived: Notify::new(),
        });
        self.inner.pending.insert(id, inbox.clone());
        self.inner.metrics.gathers_in_flight.inc();
        Gather {
            id,
            inbox,
            collector: self.clone(),
        }
    }

    /// Writes the reply subject of `source` within gather `id` into `s` (cleared first).
    pub fn reply_subject(&self, id: u64, source: &str, s: &mut String) {
        s.clear();
        s.reserve(self.inner.prefix.len() + 21 + source.len());
        s.push_str(&self.inner.prefix);
        // Writing into a String cannot fail.
        let _ = write!(s, "{id}.");
        s.push_str(source);
    }

    /// The source name a reply was addressed to, if it is one of ours.
    pub fn source_of<'m>(&self, message: &'m Msg) -> Option<&'m str> {
        let tail = message.subject().strip_prefix(self.inner.prefix.as_str())?;
        subject::parse_reply_tail(tail).map(|(_, source)| source)
    }

    /// Counts a reply nobody waited for.
    pub fn count_late(&self) {
        self.inner.metrics.late_replies.inc();
    }

    /// Gathers open right now.
    pub fn open_gathers(&self) -> usize {
        self.inner.pending.len()
    }

    fn deliver(&self, message: Msg) {
        let id = message
            .subject()
            .strip_prefix(self.inner.prefix.as_str())
            .and_then(subject::parse_reply_tail)
            .map(|(id, _)| id);
        let Some(id) = id else {
            warn!(subject = %message.subject(), "reply on a subject that is not a gather's");
            return;
        };
        // The shard lock is held only for a short, non-blocking push.
        let delivered = match self.inner.pending.get(&id) {
            Some(inbox) => inbox.push(message),
            None => false,
        };
        if !delivered {
            debug!(gather = id, "reply after its gather ended");
            self.count_late();
        }
    }
}

impl Gather {
    /// This gather's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next reply. Waits until one arrives (callers bound the wait with their deadline).
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            if let Some(message) = self.inbox.pop() {
                return Some(message);
            }
            // A push between the check and this wait leaves a permit: nothing is missed.
            self.inbox.arrived.notified().await;
        }
    }

    /// The handle it belongs to.
    pub fn collector(&self) -> &Collector {
        &self.collector
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        self.collector.inner.pending.remove(&self.id);
        self.collector.inner.metrics.gathers_in_flight.dec();
    }
}

impl InboxSubscription {
    /// Stops routing replies: the inbox is unsubscribed (replies after it are not read).
    pub fn stop(self) {
        self.subscription.unsubscribe();
        debug!("reply inbox unsubscribed");
    }
}
