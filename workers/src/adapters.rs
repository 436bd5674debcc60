//! `busgate-worker adapters`: serves every service of the configuration that has an upstream.
//!
//! Follows the bucket `busgate-config` (current values, then changes; the same
//! [`busgate_shared::watch::follow`] the gateway uses). A service with an upstream that
//! appears is served at once (its queue group joined, registered in the NATS service API with
//! `busgate.mode = adapters` and `busgate.upstream`); one that goes, or loses its upstream, is
//! stopped alone (its subscription ends, requests in flight finish). A changed upstream is a
//! new [`Upstream`] swapped in: the next request calls it, requests in flight finish on the
//! old one. A change of `concurrency` starts the endpoint anew (the new one first, then the
//! old one stops). Any number of such processes share the load through the queue groups.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_nats::jetstream;
use busgate_shared::backoff::ExponentialBackoff;
use busgate_shared::config::ServiceSpec;
use busgate_shared::envelope::ServiceRequest;
use busgate_shared::sdk::{self, RequestContext, ServeOptions};
use busgate_shared::upstream::UpstreamSpec;
use busgate_shared::watch::{self, Entries};
use busgate_shared::{drain, subject, wire};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::adapter::{self, Upstream};

/// The mode named in `$SRV.INFO` metadata.
pub const MODE: &str = "adapters";
/// The upstream timeout of a request that carries no deadline (and no upstream timeout).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stopped endpoints may take to finish their requests when the process stops.
const STOP_WITHIN: Duration = Duration::from_secs(12);

/// The delays between attempts to follow the configuration bucket (200 ms doubling to 2 s,
/// jittered by up to half).
fn follow_backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(2), 0.5)
}

/// One served service.
struct Served {
    spec: UpstreamSpec,
    upstream: Arc<ArcSwap<Upstream>>,
    /// The endpoint's own drain: dropped (or drained) to stop this service alone, which its
    /// watch sees as the signal.
    stop: drain::Signal,
}

impl Served {
    /// Stops this service alone: its watch sees its signal dropped, and the endpoint leaves
    /// its queue group and finishes its requests in flight (on its task of the `JoinSet`).
    fn stop(self) {
        drop(self.stop);
    }
}

/// Runs until `drain` is signalled; the drain is released once every endpoint has stopped and
/// the connections are drained and closed.
pub async fn run(
    nats: &busgate_shared::nats::NatsSettings,
    drain: drain::Watch,
) -> anyhow::Result<()> {
    let client = busgate_shared::nats::connect(nats, "busgate-worker adapters").await?;
    let wire = wire::Connection::connect_with(nats, "busgate-worker adapters requests")?;
    let js = jetstream::new(client.clone());
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    let mut endpoints = JoinSet::new();
    let mut backoff = follow_backoff().stream();
    loop {
        let result = async {
            let kv = js.get_key_value(subject::CONFIG_BUCKET).await?;
            watch::follow(&js, &kv, drain.clone().signaled(), |entries, _| {
                reconcile(&wire, entries, &mut served, &mut endpoints);
            })
            .await
        };
        let result = tokio::select! {
            result = result => result,
            _release = drain.clone().signaled() => Ok(()),
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                warn!(error = %e, attempt = backoff.attempts() + 1, "cannot follow the configuration bucket (is a gateway up?)");
                if !backoff.wait(&drain).await {
                    break;
                }
            }
        }
    }
    for (_, s) in std::mem::take(&mut served) {
        s.stop();
    }
    let _ = tokio::time::timeout(STOP_WITHIN, async {
        while endpoints.join_next().await.is_some() {}
    })
    .await;
    wire.close(Duration::from_secs(2)).await;
    let _ = client.drain().await;
    drop(drain);
    Ok(())
}

/// The services of `entries` that have an upstream (documents that do not parse are skipped
/// with a warning: the gateway refuses them too).
fn upstreams(entries: &Entries) -> BTreeMap<String, UpstreamSpec> {
    let mut out = BTreeMap::new();
    for (key, (_, value)) in entries {
        let Some(name) = key.strip_prefix("services.") else {
            continue;
        };
        match serde_json::from_slice::<ServiceSpec>(value) {
            Ok(ServiceSpec {
                upstream: Some(upstream),
                ..
            }) => {
                out.insert(name.to_owned(), upstream);
            }
            Ok(_) => {}
            Err(e) => warn!(key, error = %e, "service document does not parse, skipped"),
        }
    }
    out
}

/// Serves what `entries` says should be served, and only that.
fn reconcile(
    wire: &wire::Connection,
    entries: &Entries,
    served: &mut BTreeMap<String, Served>,
    endpoints: &mut JoinSet<()>,
) {
    let wanted = upstreams(entries);
    let gone: Vec<String> = served
        .keys()
        .filter(|name| !wanted.contains_key(*name))
        .cloned()
        .collect();
    for name in gone {
        if let Some(s) = served.remove(&name) {
            info!(service = %name, "service has no upstream any more, leaving its queue group");
            s.stop();
        }
    }
    for (name, spec) in wanted {
        if served.get(&name).is_some_and(|s| s.spec == spec) {
            continue;
        }
        let upstream = match Upstream::new(&name, &spec, DEFAULT_TIMEOUT) {
            Ok(u) => u,
            Err(e) => {
                warn!(service = %name, error = %e, "upstream refused, the service keeps what it had");
                continue;
            }
        };
        match served.get_mut(&name) {
            Some(current) if current.spec.concurrency == spec.concurrency => {
                info!(service = %name, upstream = %upstream.display, "upstream changed, calling the new one from the next request");
                current.upstream.store(Arc::new(upstream));
                current.spec = spec;
            }
            _ => {
                // New, or a new concurrency: a new endpoint first, then the old one stops.
                let next = start(wire, &name, &spec, upstream, endpoints);
                if let Some(old) = served.insert(name, next) {
                    old.stop();
                }
            }
        }
    }
}

/// Starts serving `name` with `upstream` on a task of `endpoints`.
fn start(
    wire: &wire::Connection,
    name: &str,
    spec: &UpstreamSpec,
    upstream: Upstream,
    endpoints: &mut JoinSet<()>,
) -> Served {
    let mut options = ServeOptions::new(name);
    options.concurrency = spec.concurrency;
    options.description = format!("adapter to {}", upstream.display);
    options.metadata = adapter::metadata(MODE, &upstream);
    let current = Arc::new(ArcSwap::from_pointee(upstream));
    let handler = {
        let current = current.clone();
        let wire = wire.clone();
        move |req: ServiceRequest, ctx: RequestContext| {
            // The upstream in force when the request came: a change meanwhile does not touch it.
            let upstream = current.load_full();
            let max_body = adapter::max_body(&wire);
            async move { upstream.call(&req, &ctx, max_body).await }
        }
    };
    let (stop, stopped) = drain::channel();
    let wire = wire.clone();
    let service = name.to_owned();
    endpoints.spawn(async move {
        if let Err(e) = sdk::serve(&wire, options, handler, stopped).await {
            warn!(service, error = %e, "cannot serve");
        }
    });
    Served {
        spec: spec.clone(),
        upstream: current,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn only_services_with_an_upstream_are_served_and_bad_documents_are_skipped() {
        let entries: Entries = [
            (
                "services.billing",
                r#"{"timeout":"1s","upstream":{"url":"http://b/{order_id}"}}"#,
            ),
            ("services.native", r#"{"timeout":"1s"}"#),
            ("services.broken", "not json"),
            (
                "routes.order",
                r#"{"bindings":[],"targets":[],"upstream":"ignored"}"#,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), (1, Bytes::from(v))))
        .collect();
        let wanted = upstreams(&entries);
        assert_eq!(wanted.keys().collect::<Vec<_>>(), ["billing"]);
        assert_eq!(wanted["billing"].url, "http://b/{order_id}");
        assert_eq!(
            wanted["billing"].concurrency,
            busgate_shared::upstream::DEFAULT_CONCURRENCY
        );
    }
}
