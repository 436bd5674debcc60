//! Pulling: how the processor and the callback deliverer take messages from their durable
//! consumers, for the life of the gateway. Each asks for only as many messages as it may start
//! at once, in short pulls that expire after [`PULL_EXPIRES`]; a message it holds is a message
//! it runs, so a gateway that dies strands at most what it was running.
//!
//! Nothing but the drain stops a [`Puller`]: a consumer that cannot be had (no JetStream yet,
//! a request timed out under load, the consumer deleted), a pull that fails, that ends with an
//! error (no responders while the consumer elects a leader, `Consumer Deleted`) or whose end
//! never comes, each cost a retry with the one backoff, after which the consumer is looked up
//! (or created) again. async-nats' long-lived `messages()` stream is not used: after a pull
//! answered "no responders" it counted the lost pull's 200 messages as still due and sent no
//! other until its missed-heartbeat timer (30 s), and a loop that stops on an error or an end
//! stops serving for the gateway's life.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use busgate_shared::backoff::Backoff;
use busgate_shared::drain;

use crate::jobs::store::Jobs;

/// How long one pull waits for messages before it is made again. It bounds how long a
/// stopping instance waits for the pull it has out, and how long a message waits while an
/// instance is idle with a pull that the server lost.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How long a pull may go on past its expiry before it is given up and made again: the
/// server ends an expired pull with a status message, and one that never comes (a pull the
/// consumer's leader dropped, a status lost on the way) would otherwise stop this instance
/// pulling for good. A message delivered to a pull given up is redelivered after `ack_wait`.
pub const PULL_GIVE_UP: Duration = Duration::from_secs(2);

/// A durable pull consumer, pulled for the life of the gateway (see the module's docs).
pub struct Puller {
    jobs: std::sync::Arc<Jobs>,
    /// The stream and the durable consumer's name.
    stream: &'static str,
    name: &'static str,
    ack_wait: Duration,
    /// What it pulls, for the logs: "asynchronous requests", "callbacks".
    what: &'static str,
    /// The consumer, once had; `None` makes the next pull look it up (or create it) again.
    consumer: Option<consumer::PullConsumer>,
    /// Whether the last pull failed: the next one waits its turn of `retry` first.
    failed: bool,
    retry: Backoff,
    drain: drain::Watch,
}

/// One pull out: its messages, and when it is given up if its end never comes.
pub struct Pull {
    batch: consumer::pull::Batch,
    give_up: Instant,
}

impl Puller {
    /// A puller of the durable consumer `name` on `stream` (made with `ack_wait` when it does
    /// not exist), obeying `drain`.
    pub fn new(
        jobs: std::sync::Arc<Jobs>,
        (stream, name): (&'static str, &'static str),
        ack_wait: Duration,
        what: &'static str,
        drain: drain::Watch,
    ) -> Self {
        Puller {
            jobs,
            stream,
            name,
            ack_wait,
            what,
            consumer: None,
            failed: false,
            retry: crate::clock::retry_backoff().stream(),
            drain,
        }
    }

    /// Makes a pull for at most `max` messages; `None` once the drain is signalled (the only
    /// way it gives up). After a failure it waits its turn of the backoff and looks the
    /// consumer up again.
    pub async fn pull(&mut self, max: usize) -> Option<Pull> {
        loop {
            if self.failed && !self.retry.wait(&self.drain).await {
                return None;
            }
            self.failed = true;
            let consumer = match &self.consumer {
                Some(consumer) => consumer,
                None => match self
                    .jobs
                    .consumer(self.stream, self.name, self.ack_wait, 20_000)
                    .await
                {
                    Ok(consumer) => self.consumer.insert(consumer),
                    Err(e) => {
                        warn!(what = self.what, error = %e, attempt = self.retry.attempts() + 1, "cannot find the consumer to pull from, retrying");
                        continue;
                    }
                },
            };
            let made = consumer
                .batch()
                .max_messages(max.max(1))
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            match made {
                Ok(batch) => {
                    self.failed = false;
                    return Some(Pull {
                        batch,
                        give_up: Instant::now() + PULL_EXPIRES + PULL_GIVE_UP,
                    });
                }
                Err(e) => {
                    warn!(what = self.what, error = %e, attempt = self.retry.attempts() + 1, "cannot pull, retrying");
                    self.consumer = None;
                }
            }
        }
    }

    /// The next message of `pull`; `None` when the pull is over (expired, full, failed or
    /// given up): the caller makes the next one. A pull that failed makes the next one wait
    /// its turn of the backoff and look the consumer up again; one that brought messages or
    /// simply expired resets the backoff.
    pub async fn next(&mut self, pull: &mut Pull) -> Option<jetstream::Message> {
        match tokio::time::timeout_at(pull.give_up, pull.batch.next()).await {
            Ok(Some(Ok(message))) => {
                self.retry.reset();
                Some(message)
            }
            Ok(Some(Err(e))) => {
                // "no responders" while the consumer elects a leader, "Consumer Deleted", ...
                warn!(what = self.what, error = %e, attempt = self.retry.attempts() + 1, "a pull failed, pulling again");
                self.failed = true;
                self.consumer = None;
                None
            }
            Ok(None) => {
                self.retry.reset();
                None
            }
            Err(_) => {
                warn!(
                    what = self.what,
                    "a pull outlived its expiry, pulling again"
                );
                self.failed = true;
                None
            }
        }
    }
}

/// Hands back what a pull still brings after a stop, at once (NAK without delay) so that
/// another instance takes it now rather than after `ack_wait`. Bounded by the pull's end.
pub async fn hand_back(pull: &mut Pull, what: &'static str) {
    let mut handed = 0u32;
    let drained = tokio::time::timeout_at(pull.give_up, async {
        while let Some(next) = pull.batch.next().await {
            if let Ok(message) = next {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                handed += 1;
            }
        }
    })
    .await;
    if handed > 0 || drained.is_err() {
        info!(what, handed, "messages not started handed back");
    } else {
        debug!(what, "nothing to hand back");
    }
}

/// Pulls with `puller` until `drain` is signalled, as many messages at a time as `permits` has
/// free, and runs `start(message)` on `tasks` for each, holding one permit until it ends. A
/// message beyond the free permits (only this loop takes them) is handed back at once. What
/// the drain released is returned (`None` if the permits were closed), to be held until
/// `tasks` are done. The processor's and the deliverer's loop.
pub async fn run_within<F, Fut>(
    puller: &mut Puller,
    permits: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    drain: &drain::Watch,
    start: F,
) -> Option<drain::ReleaseShutdown>
where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let signaled = drain.clone().signaled();
    tokio::pin!(signaled);
    'pulling: loop {
        let first = tokio::select! {
            release = &mut signaled => break Some(release),
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break None },
        };
        let free = permits.available_permits() + 1;
        let Some(mut pull) = puller.pull(free).await else {
            // Only the drain stops the puller.
            break Some((&mut signaled).await);
        };
        let mut held = Some(first);
        loop {
            let next = tokio::select! {
                release = &mut signaled => {
                    hand_back(&mut pull, puller.what).await;
                    break 'pulling Some(release);
                }
                next = puller.next(&mut pull) => next,
            };
            let Some(message) = next else { break };
            // One permit per message asked for: the first is held, the others were free
            // when the pull was made and only this loop takes permits.
            let permit = match held.take() {
                Some(p) => Some(p),
                None => permits.clone().try_acquire_owned().ok(),
            };
            let Some(permit) = permit else {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                continue;
            };
            let run = start(message);
            tasks.spawn(async move {
                run.await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
    }
}
