//! A request sent again to one source (a retry or a hedge): what it needs of the first request
//! (the payload and the headers' values, kept only for routes whose guards may send again),
//! and the publish on the source's one reply subject, so that its reply settles the same
//! source.

use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use busgate_shared::header;

use crate::config::snapshot::Target;
use crate::gather::collector::Gather;

/// A request as it is sent again.
pub struct Resend {
    payload: Bytes,
    request_id: String,
    client: String,
    traceparent: String,
    /// When the gather started, unix milliseconds: the deadlines sent are counted from it.
    start_ms: u64,
}

impl Resend {
    /// Keeps what sending `payload` again needs.
    pub fn new(
        payload: Bytes,
        request_id: &str,
        client: &str,
        traceparent: &str,
        start_ms: u64,
    ) -> Box<Resend> {
        Box::new(Resend {
            payload,
            request_id: request_id.to_owned(),
            client: client.to_owned(),
            traceparent: traceparent.to_owned(),
            start_ms,
        })
    }

    /// Sends the request to `target` again, within `gather`, with the deadline `timeout` after
    /// the gather's start, and `traceparent` when traces give the source its own (else the
    /// request's); whether it went out.
    pub fn send(
        &self,
        gather: &Gather,
        target: &Target,
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> bool {
        let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut digits = [0u8; 20];
        let headers = [
            (header::REQUEST_ID, self.request_id.as_str()),
            (
                header::DEADLINE,
                header::decimal(self.start_ms.saturating_add(timeout), &mut digits),
            ),
            (header::CLIENT, self.client.as_str()),
            (
                header::TRACEPARENT,
                traceparent.unwrap_or(self.traceparent.as_str()),
            ),
        ];
        let mut reply = String::new();
        let collector = gather.collector();
        collector.reply_subject(gather.id(), &target.name.0, &mut reply);
        collector
            .wire()
            .publish(&target.subject, Some(&reply), &headers, &self.payload)
            .map_err(|e| debug!(service = %target.service.0, error = %e, "cannot send again"))
            .is_ok()
    }
}
