//! Subjects and queue groups. Subjects are built only from our own ids and validated names:
//! an `order_id` or any other client text never becomes part of a subject.

/// Prefix of every service request subject: `busgate.svc.<service>`.
pub const SERVICE_PREFIX: &str = "busgate.svc";
/// Prefix of every adapter/native worker queue group: `busgate.<service>`.
pub const QUEUE_PREFIX: &str = "busgate";
/// Prefix of the reply inboxes of gateway instances:
/// `_INBOX.busgate.<instance>.<gather_id>.<source>`.
pub const INBOX_PREFIX: &str = "_INBOX.busgate";
/// Wildcard that matches every service request subject (monitoring, tests).
pub const ALL_SERVICES: &str = "busgate.svc.>";

/// JetStream work-queue stream of accepted asynchronous requests.
pub const REQUESTS_STREAM: &str = "BUSGATE_REQUESTS";
/// Subject an accepted asynchronous request was published on by earlier gateways (the stream
/// still takes it); now each goes to [`request_job`]`(request_id)` below it.
pub const REQUESTS_SUBJECT: &str = "busgate.jobs.request";
/// Wildcard of every accepted asynchronous request's own subject ([`request_job`]).
pub const REQUESTS_ALL: &str = "busgate.jobs.request.>";
/// Durable consumer that every gateway instance pulls asynchronous requests from.
pub const REQUESTS_CONSUMER: &str = "gateways";
/// JetStream work-queue stream of callback deliveries (retries are scheduled by NAK delays).
pub const CALLBACKS_STREAM: &str = "BUSGATE_CALLBACKS";
/// Subject a callback delivery is published on.
pub const CALLBACKS_SUBJECT: &str = "busgate.jobs.callback";
/// Durable consumer of callback deliveries.
pub const CALLBACKS_CONSUMER: &str = "callbacks";
/// KV bucket of asynchronous requests' status documents, keyed by request id.
pub const RESULTS_BUCKET: &str = "busgate-results";
/// KV bucket of idempotency keys (hashed), mapping to request ids.
pub const IDEMPOTENCY_BUCKET: &str = "busgate-idempotency";
/// KV bucket of the dynamic configuration.
pub const CONFIG_BUCKET: &str = "busgate-config";
/// Prefix of the gateways' heartbeats: every gateway instance announces itself on
/// `busgate.fleet.<instance>` (payload `alive` or `leaving`), so that each knows how many share
/// the deployment-wide client limits.
pub const FLEET_PREFIX: &str = "busgate.fleet";
/// Wildcard that every gateway instance subscribes to, to hear the others' heartbeats.
pub const FLEET_ALL: &str = "busgate.fleet.*";
/// A heartbeat's payload while the instance runs.
pub const FLEET_ALIVE: &[u8] = b"alive";
/// The payload of an instance's last heartbeat, sent when it stops.
pub const FLEET_LEAVING: &[u8] = b"leaving";

/// The subject a request to `service` is published on.
pub fn service(service: &str) -> String {
    format!("{SERVICE_PREFIX}.{service}")
}

/// The subject the asynchronous request `request_id` (a UUID the gateway made) is published
/// on: its own, so that the stream's last message on it is the request while it is pending
/// (a poll on any instance finds it there before its status document is written).
pub fn request_job(request_id: &str) -> String {
    format!("{REQUESTS_SUBJECT}.{request_id}")
}

/// The queue group that workers of `service` share, so N instances split the load.
pub fn queue_group(service: &str) -> String {
    format!("{QUEUE_PREFIX}.{service}")
}

/// Prefix (with the trailing dot) of every reply subject of one gateway instance.
pub fn instance_inbox_prefix(instance: &str) -> String {
    format!("{INBOX_PREFIX}.{instance}.")
}

/// The one wildcard subscription a gateway instance holds for all its replies.
pub fn instance_inbox_wildcard(instance: &str) -> String {
    format!("{INBOX_PREFIX}.{instance}.>")
}

/// The subject a gateway instance announces itself on.
pub fn fleet_heartbeat(instance: &str) -> String {
    format!("{FLEET_PREFIX}.{instance}")
}

/// The instance a heartbeat subject names, if it is one.
pub fn parse_fleet_heartbeat(subject: &str) -> Option<&str> {
    let instance = subject.strip_prefix(FLEET_PREFIX)?.strip_prefix('.')?;
    (!instance.is_empty() && !instance.contains('.')).then_some(instance)
}

/// Splits the tail of a reply subject (what follows the instance prefix) into
/// `(gather_id, source)`. Returns `None` for anything that is not ours.
pub fn parse_reply_tail(tail: &str) -> Option<(u64, &str)> {
    let (gather, source) = tail.split_once('.')?;
    let gather = gather.parse().ok()?;
    if source.is_empty() || source.contains('.') {
        return None;
    }
    Some((gather, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        assert_eq!(service("service1"), "busgate.svc.service1");
        assert_eq!(queue_group("service1"), "busgate.service1");
        assert_eq!(instance_inbox_prefix("g1"), "_INBOX.busgate.g1.");
        assert_eq!(instance_inbox_wildcard("g1"), "_INBOX.busgate.g1.>");
        assert_eq!(fleet_heartbeat("g1"), "busgate.fleet.g1");
        assert_eq!(parse_fleet_heartbeat("busgate.fleet.g1"), Some("g1"));
        assert_eq!(parse_fleet_heartbeat("busgate.fleet."), None);
        assert_eq!(parse_fleet_heartbeat("busgate.fleetx.g1"), None);
        assert_eq!(parse_fleet_heartbeat("busgate.svc.g1"), None);
    }

    #[test]
    fn reply_tails_parse_only_when_well_formed() {
        assert_eq!(parse_reply_tail("42.service1"), Some((42, "service1")));
        assert_eq!(parse_reply_tail("x.service1"), None);
        assert_eq!(parse_reply_tail("42."), None);
        assert_eq!(parse_reply_tail("42"), None);
        assert_eq!(parse_reply_tail("42.a.b"), None);
    }
}
