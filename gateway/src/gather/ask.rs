//! Asking one source: who asks ([`Asker`]) and the one publish of a target's request on its
//! reply subject, with the contract's headers ([`publish`]). Used by a plain gather
//! (`scatter`) and by a composed route's stages (`stages`).

use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use busgate_shared::header;

use crate::config::snapshot::Target;
use crate::gather::collector::Gather;

/// Who is asking, for the request headers and payload.
#[derive(Clone, Copy)]
pub struct Asker<'a> {
    /// The request's UUIDv7.
    pub request_id: &'a str,
    /// The validated order id.
    pub order_id: &'a str,
    /// The client id (empty until clients are configured).
    pub client: &'a str,
    /// The W3C traceparent to send.
    pub traceparent: &'a str,
    /// The request headers that conditions may read.
    pub headers: &'a dyn crate::config::snapshot::Headers,
    /// The client's own deadline (`Busgate-Timeout`): shortens every target's timeout.
    pub timeout: Option<Duration>,
}

/// Publishes one target's request, with `[request_id, client, traceparent]` in its headers
/// and a deadline `timeout` after `now_ms`; false when the bus refused it.
pub(crate) fn publish(
    gather: &Gather,
    target: &Target,
    [request_id, client, traceparent]: [&str; 3],
    payload: &Bytes,
    now_ms: u64,
    timeout: Duration,
    reply: &mut String,
) -> bool {
    let deadline_ms = now_ms.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    let mut digits = [0u8; 20];
    let headers = [
        (header::REQUEST_ID, request_id),
        (header::DEADLINE, header::decimal(deadline_ms, &mut digits)),
        (header::CLIENT, client),
        (header::TRACEPARENT, traceparent),
    ];
    let collector = gather.collector();
    collector.reply_subject(gather.id(), &target.name.0, reply);
    let published = collector
        .wire()
        .publish(&target.subject, Some(reply), &headers, payload);
    if let Err(e) = published {
        warn!(
            service = %target.service.0,
            request_id,
            trace_id = busgate_shared::telemetry::trace_id(traceparent),
            span_id = busgate_shared::telemetry::span_id(traceparent),
            error = %e,
            "cannot publish a service request"
        );
        return false;
    }
    true
}
