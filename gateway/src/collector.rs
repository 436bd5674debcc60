//! The collector alone owns the table of pending gathers.
//!
//! One wildcard subscription per gateway instance (`_INBOX.busgate.<instance>.>`) receives every
//! reply; a single routing task hands each one to its gather by the gather id in the subject.
//! Others hold a cheap [`Collector`] handle: [`Collector::register`] opens a gather, dropping the
//! returned [`Gather`] closes it, so a gather that ends for any reason (answered, deadline,
//! client gone) leaves nothing behind and no sweeper is needed. Replies for a closed gather are
//! dropped and counted as late.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::{Client, Message, Subject};
use dashmap::DashMap;
use futures::StreamExt;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use busgate_shared::subject;

use crate::metrics::Metrics;

/// A cheap, cloneable handle to the collector.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

struct Inner {
    /// `_INBOX.busgate.<instance>.`
    prefix: String,
    pending: DashMap<u64, Arc<Inbox>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

/// The replies of one gather, waiting to be read. A small vector sized to the sources and a
/// `Notify`: a tokio channel allocates a 32-slot block per gather, which dominated the memory
/// of a gather in flight.
struct Inbox {
    replies: std::sync::Mutex<Vec<Message>>,
    capacity: usize,
    arrived: Notify,
}

impl Inbox {
    /// Queues a reply; false when the inbox is full (a duplicate beyond the sources).
    fn push(&self, message: Message) -> bool {
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

    fn pop(&self) -> Option<Message> {
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

/// Stops the routing task when told to or dropped.
pub struct CollectorTask {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Collector {
    /// Subscribes to this instance's inbox and starts routing replies.
    pub async fn start(
        nats: &Client,
        instance: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(Collector, CollectorTask), async_nats::SubscribeError> {
        let subscription = nats
            .subscribe(subject::instance_inbox_wildcard(instance))
            .await?;
        let collector = Collector {
            inner: Arc::new(Inner {
                prefix: subject::instance_inbox_prefix(instance),
                pending: DashMap::new(),
                next_id: AtomicU64::new(1),
                metrics,
            }),
        };
        let (stop, mut stopped) = oneshot::channel();
        let routing = collector.clone();
        let task = tokio::spawn(async move {
            let mut subscription = subscription;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    next = subscription.next() => match next {
                        Some(message) => routing.deliver(message),
                        None => break,
                    },
                }
            }
            if let Err(e) = subscription.unsubscribe().await {
                debug!(error = %e, "unsubscribing the reply inbox");
            }
        });
        Ok((
            collector,
            CollectorTask {
                stop: Some(stop),
                task: Some(task),
            },
        ))
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

    /// The reply subject of `source` within gather `id`.
    pub fn reply_subject(&self, id: u64, source: &str) -> Subject {
        let mut s = String::with_capacity(self.inner.prefix.len() + 21 + source.len());
        s.push_str(&self.inner.prefix);
        // Writing into a String cannot fail.
        let _ = write!(s, "{id}.");
        s.push_str(source);
        Subject::from(s)
    }

    /// The source name a reply was addressed to, if it is one of ours.
    pub fn source_of<'m>(&self, message: &'m Message) -> Option<&'m str> {
        let tail = message
            .subject
            .as_str()
            .strip_prefix(self.inner.prefix.as_str())?;
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

    fn deliver(&self, message: Message) {
        let id = message
            .subject
            .as_str()
            .strip_prefix(self.inner.prefix.as_str())
            .and_then(subject::parse_reply_tail)
            .map(|(id, _)| id);
        let Some(id) = id else {
            warn!(subject = %message.subject, "reply on a subject that is not a gather's");
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
    pub async fn next(&mut self) -> Option<Message> {
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

impl CollectorTask {
    /// Stops routing replies and waits for the task to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                warn!(error = %e, "reply routing task ended abnormally");
            }
        }
    }
}

impl Drop for CollectorTask {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
