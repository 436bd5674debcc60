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

/// How long loading the bucket's current values may take before the watch is started again.
const LOAD_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Every current key as `key → (revision, value)`, the revision they were read up to, and the
/// watch that delivered them, which goes on with the changes after them.
///
/// One consumer of the bucket's stream (the last value of every key, then every change), not
/// `kv.keys()` and a `kv.entry()` per key: entries are read with direct gets, which any replica
/// of a clustered bucket may answer, and one that lagged the stream's leader loaded a key stale
/// or not at all, while a watch from the leader's last sequence never delivered it again: a
/// gateway kept serving without a route until some other change came (seen in the fault tests
/// right after a 3-node cluster started).
async fn load(
    js: &jetstream::Context,
    kv: &kv::Store,
) -> Result<(Entries, u64, kv::Watch), WatchError> {
    let mut stream = js
        .get_stream(format!("KV_{}", subject::CONFIG_BUCKET))
        .await?;
    let state = stream.info().await?.state.clone();
    let mut watch = kv.watch_with_history(">").await?;
    let mut entries = BTreeMap::new();
    let mut last = state.last_sequence;
    if state.messages > 0 {
        // The current values come first; the one with nothing pending after it is the last.
        let initial = async {
            while let Some(entry) = watch.next().await {
                let entry = entry?;
                last = last.max(entry.revision);
                let done = entry.delta == 0;
                record(&mut entries, entry);
                if done {
                    return Ok(());
                }
            }
            Err::<(), WatchError>("the watch ended while loading".into())
        };
        tokio::time::timeout(LOAD_WITHIN, initial)
            .await
            .map_err(|_| "the bucket's current values did not come in time")??;
    }
    Ok((entries, last, watch))
}

/// Puts an entry's change into `entries`.
fn record(entries: &mut Entries, entry: kv::Entry) {
    match entry.operation {
        kv::Operation::Put => {
            entries.insert(entry.key, (entry.revision, entry.value));
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            entries.remove(&entry.key);
        }
    }
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
    let (mut entries, last, mut changes) = load(js, kv).await?;
    on(&entries, Event::Loaded { last });
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
        let revision = entry.revision;
        record(&mut entries, entry);
        on(
            &entries,
            Event::Changed {
                revision,
                fresh: true,
            },
        );
    }
}
