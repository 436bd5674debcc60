//! Following the configuration bucket `busgate-config`: every current key first, then each
//! change as it comes. The gateway (which validates and swaps in whole configurations) and
//! `busgate-worker adapters` (which serves the services that have an upstream) both follow it
//! through [`follow`], so that both see the same sequence of states.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

use crate::subject;

/// Every current key of the bucket with its revision and value (deleted keys are absent).
pub type Entries = BTreeMap<String, (u64, Bytes)>;

/// What [`follow`] reports along with the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Every key was loaded; `last` is the bucket's latest revision before the load.
    Loaded {
        /// The stream's last sequence when the load began.
        last: u64,
    },
    /// A change at `revision`; `fresh` is false when the load had already read it (the entries
    /// did not change).
    Changed {
        /// The change's revision.
        revision: u64,
        /// Whether it changed the entries.
        fresh: bool,
    },
}

/// A failure of the bucket or its watch (the caller retries with a backoff).
pub type WatchError = async_nats::Error;

/// The revision of the bucket's latest change, whatever its key.
pub async fn last_sequence(js: &jetstream::Context) -> Result<u64, WatchError> {
    let mut stream = js
        .get_stream(format!("KV_{}", subject::CONFIG_BUCKET))
        .await?;
    Ok(stream.info().await?.state.last_sequence)
}

/// Every current key as `key → (revision, value)`, and the stream's last sequence before they
/// were read.
pub async fn load(js: &jetstream::Context, kv: &kv::Store) -> Result<(Entries, u64), WatchError> {
    let last = last_sequence(js).await?;
    let mut keys = kv.keys().await?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key?);
    }
    let mut entries = BTreeMap::new();
    for key in names {
        if let Some(entry) = kv.entry(&key).await? {
            if entry.operation == kv::Operation::Put {
                entries.insert(key, (entry.revision, entry.value));
            }
        }
    }
    Ok((entries, last))
}

/// Loads the bucket, then follows its changes, calling `on` with the entries after each step,
/// until `shutdown` resolves (then `Ok`): a task that obeys a drain passes
/// `drain.clone().signaled()` and keeps its own [`drain::Watch`] until it has cleaned up. A change already read by the load is reported with
/// `fresh: false` and never applied again (no flip back to an older value). An error ends the
/// watch: the caller starts again after a backoff.
pub async fn follow(
    js: &jetstream::Context,
    kv: &kv::Store,
    shutdown: impl std::future::Future,
    mut on: impl FnMut(&Entries, Event),
) -> Result<(), WatchError> {
    let (mut entries, last) = load(js, kv).await?;
    on(&entries, Event::Loaded { last });
    let mut changes = kv.watch_all_from_revision(last + 1).await?;
    tokio::pin!(shutdown);
    loop {
        let entry = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            next = changes.next() => match next {
                Some(entry) => entry?,
                None => return Err("the watch ended".into()),
            },
        };
        if entries
            .get(&entry.key)
            .is_some_and(|(rev, _)| *rev >= entry.revision)
        {
            on(
                &entries,
                Event::Changed {
                    revision: entry.revision,
                    fresh: false,
                },
            );
            continue;
        }
        match entry.operation {
            kv::Operation::Put => {
                entries.insert(entry.key.clone(), (entry.revision, entry.value.clone()));
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                entries.remove(&entry.key);
            }
        }
        on(
            &entries,
            Event::Changed {
                revision: entry.revision,
                fresh: true,
            },
        );
    }
}
