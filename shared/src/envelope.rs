//! Request and reply payloads (JSON).
//!
//! Request: `{"request_id","order_id","operation","attributes":{}}`.
//! Reply: `{"service","status":"ok"|"not_found"|"error","data":<json>,"error":{"code","message"},"elapsed_ms"}`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Error;

/// What the gateway publishes to `busgate.svc.<service>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRequest {
    /// UUIDv7 of the client request; the same for every service of one gather.
    pub request_id: String,
    /// The order the client asked about. Validated, but still client text: never a subject.
    pub order_id: String,
    /// What is asked (the route's operation, `order` by default).
    pub operation: String,
    /// Extra request attributes for the service; empty by default.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl ServiceRequest {
    /// The wire payload of a request without attributes (what the gateway sends), written
    /// straight from borrowed parts: the same bytes as serialising a [`ServiceRequest`], without
    /// copying the parts into one first.
    pub fn encode_without_attributes(request_id: &str, order_id: &str, operation: &str) -> Bytes {
        let mut out =
            BytesMut::with_capacity(72 + request_id.len() + order_id.len() + operation.len());
        out.put_slice(b"{\"request_id\":");
        put_json(&mut out, request_id);
        out.put_slice(b",\"order_id\":");
        put_json(&mut out, order_id);
        out.put_slice(b",\"operation\":");
        put_json(&mut out, operation);
        out.put_slice(b",\"attributes\":{}}");
        out.freeze()
    }

    /// The wire payload of a request with `attributes` (name, value): what a target of a
    /// composed route that has `with` is sent. Same layout as
    /// [`ServiceRequest::encode_without_attributes`].
    pub fn encode_with_attributes(
        request_id: &str,
        order_id: &str,
        operation: &str,
        attributes: &[(&str, &serde_json::Value)],
    ) -> Bytes {
        let mut out = BytesMut::with_capacity(
            96 + request_id.len() + order_id.len() + operation.len() + 32 * attributes.len(),
        );
        out.put_slice(b"{\"request_id\":");
        put_json(&mut out, request_id);
        out.put_slice(b",\"order_id\":");
        put_json(&mut out, order_id);
        out.put_slice(b",\"operation\":");
        put_json(&mut out, operation);
        out.put_slice(b",\"attributes\":{");
        for (i, (name, value)) in attributes.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            put_json(&mut out, name);
            out.put_u8(b':');
            put_json(&mut out, *value);
        }
        out.put_slice(b"}}");
        out.freeze()
    }
}

/// How a service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// The service answered with data.
    Ok,
    /// The service does not know this order.
    NotFound,
    /// The service failed; `error` says why.
    Error,
}

/// Why a service failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    /// Machine-readable code, one of [`code`] or the service's own.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// Error codes that Busgate's own workers put into [`ReplyError::code`].
pub mod code {
    /// The upstream HTTP service answered a non-2xx, non-404 status that says it is failing (5xx,
    /// 408, 429, or anything else not listed below).
    pub const UPSTREAM_STATUS: &str = "upstream_status";
    /// The upstream HTTP service refused this request (a 4xx other than 404, 408 and 429): an
    /// answer about the request, not a failing service. A circuit breaker does not count it and
    /// it is not retried.
    pub const UPSTREAM_REJECTED: &str = "upstream_rejected";
    /// The upstream HTTP service did not answer before the deadline.
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    /// The upstream HTTP service could not be reached.
    pub const UPSTREAM_UNREACHABLE: &str = "upstream_unreachable";
    /// The upstream answered 2xx with a body that is not JSON.
    pub const UPSTREAM_BAD_BODY: &str = "upstream_bad_body";
    /// The upstream's body is larger than a reply can carry on the bus (the NATS server's
    /// `max_payload`): answered at once, not left to time out.
    pub const UPSTREAM_TOO_LARGE: &str = "upstream_too_large";
    /// The upstream answered a redirect (3xx): adapters never follow one (it could lead
    /// anywhere, and the configuration names the upstream).
    pub const UPSTREAM_REDIRECT: &str = "upstream_redirect";
    /// A header of the upstream takes its value from an environment variable or a file that
    /// the adapter cannot read (its log says which; never the value).
    pub const UPSTREAM_SECRET_MISSING: &str = "upstream_secret_missing";
    /// The request payload could not be decoded.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The service failed for a reason of its own.
    pub const INTERNAL: &str = "internal";

    /// Codes the gateway gives a source that sent no usable reply (they appear in `sources`).
    pub mod gateway {
        /// The bus answered with a status of its own (other than no responders).
        pub const BUS_STATUS: &str = "bus_status";
        /// The reply was not a valid reply envelope.
        pub const BAD_REPLY: &str = "bad_reply";
        /// The reply said `error` without saying which.
        pub const UNKNOWN: &str = "unknown";
    }
}

/// A reply as a service builds it; [`Reply::encode`] turns it into the wire payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Data for the order. The bytes must be one valid JSON value ([`Reply::ok_json`] checks).
    Ok(Bytes),
    /// The service does not know this order.
    NotFound,
    /// The service failed.
    Error(ReplyError),
}

impl Reply {
    /// An `ok` reply from any serialisable value.
    pub fn ok<T: Serialize>(data: &T) -> Result<Self, serde_json::Error> {
        Ok(Reply::Ok(Bytes::from(serde_json::to_vec(data)?)))
    }

    /// An `ok` reply from bytes that must hold one JSON value (checked, not re-serialised).
    pub fn ok_json(body: Bytes) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_slice(&body)?;
        let trimmed = body.slice_ref(raw.get().as_bytes());
        Ok(Reply::Ok(trimmed))
    }

    /// An `error` reply.
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Self {
        Reply::Error(ReplyError {
            code: code.into(),
            message: message.into(),
        })
    }

    /// The status this reply carries.
    pub fn status(&self) -> ReplyStatus {
        match self {
            Reply::Ok(_) => ReplyStatus::Ok,
            Reply::NotFound => ReplyStatus::NotFound,
            Reply::Error(_) => ReplyStatus::Error,
        }
    }

    /// The wire payload. Data bytes are embedded as they are, never re-parsed.
    pub fn encode(&self, service: &str, elapsed_ms: u64) -> Bytes {
        let data_len = match self {
            Reply::Ok(b) => b.len(),
            _ => 0,
        };
        let mut out = BytesMut::with_capacity(64 + service.len() + data_len);
        out.put_slice(b"{\"service\":");
        put_json(&mut out, service);
        match self {
            Reply::Ok(data) => {
                out.put_slice(b",\"status\":\"ok\",\"data\":");
                out.put_slice(data);
            }
            Reply::NotFound => out.put_slice(b",\"status\":\"not_found\",\"data\":null"),
            Reply::Error(e) => {
                out.put_slice(b",\"status\":\"error\",\"data\":null,\"error\":{\"code\":");
                put_json(&mut out, &e.code);
                out.put_slice(b",\"message\":");
                put_json(&mut out, &e.message);
                out.put_u8(b'}');
            }
        }
        out.put_slice(b",\"elapsed_ms\":");
        put_json(&mut out, &elapsed_ms);
        out.put_u8(b'}');
        out.freeze()
    }
}

/// Writes `value` as JSON at the end of `out` (serde_json escapes strings).
fn put_json<T: Serialize + ?Sized>(out: &mut BytesMut, value: &T) {
    // Writing into memory cannot fail, and neither can serialising a string or a number.
    let _ = serde_json::to_writer(out.writer(), value);
}

/// A reply as the gateway reads it: status and error decoded, `data` kept as a zero-copy slice
/// of the received payload so the merge can embed it without parsing it again.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedReply {
    /// How the service answered.
    pub status: ReplyStatus,
    /// The `data` value exactly as received (valid JSON), `None` when absent or `null`.
    pub data: Option<Bytes>,
    /// Why the service failed, when it did.
    pub error: Option<ReplyError>,
    /// The service's own processing time.
    pub elapsed_ms: Option<u64>,
}

#[derive(Deserialize)]
struct ReplyView<'a> {
    status: ReplyStatus,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ReplyError>,
    #[serde(default)]
    elapsed_ms: Option<u64>,
}

impl ParsedReply {
    /// Decodes a reply payload. Unknown fields are ignored (forward compatible).
    pub fn parse(payload: &Bytes) -> Result<Self, Error> {
        let view: ReplyView<'_> = serde_json::from_slice(payload).map_err(Error::MalformedReply)?;
        Ok(ParsedReply {
            status: view.status,
            data: view.data.map(|raw| payload.slice_ref(raw.get().as_bytes())),
            error: view.error,
            elapsed_ms: view.elapsed_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_reply_round_trips_without_reparsing_data() {
        let reply = Reply::ok_json(Bytes::from_static(b"  {\"a\": [1, 2]}\n")).expect("json");
        let wire = reply.encode("service1", 7);
        assert_eq!(
            &wire[..],
            br#"{"service":"service1","status":"ok","data":{"a": [1, 2]},"elapsed_ms":7}"#
        );
        let parsed = ParsedReply::parse(&wire).expect("parse");
        assert_eq!(parsed.status, ReplyStatus::Ok);
        assert_eq!(parsed.data.as_deref(), Some(&br#"{"a": [1, 2]}"#[..]));
        assert_eq!(parsed.elapsed_ms, Some(7));
    }

    #[test]
    fn error_reply_escapes_text() {
        let wire = Reply::error("upstream_status", "said \"no\"").encode("s", 1);
        let parsed = ParsedReply::parse(&wire).expect("parse");
        assert_eq!(parsed.status, ReplyStatus::Error);
        assert_eq!(parsed.data, None);
        let err = parsed.error.expect("error");
        assert_eq!(err.code, "upstream_status");
        assert_eq!(err.message, "said \"no\"");
    }

    #[test]
    fn not_found_has_null_data() {
        let parsed = ParsedReply::parse(&Reply::NotFound.encode("s", 0)).expect("parse");
        assert_eq!(parsed.status, ReplyStatus::NotFound);
        assert_eq!(parsed.data, None);
    }

    #[test]
    fn garbage_is_a_malformed_reply() {
        let err = ParsedReply::parse(&Bytes::from_static(b"{\"status\":\"maybe\"}"));
        assert!(matches!(err, Err(Error::MalformedReply(_))));
        assert!(Reply::ok_json(Bytes::from_static(b"not json")).is_err());
    }

    #[test]
    fn a_request_written_from_parts_is_the_serialised_request() {
        for (request_id, order_id, operation) in [
            ("019a", "A1", "order"),
            ("r", "quote\" back\\slash", "op"),
            ("r", "tab\t nl\n nul\u{0} é ✓", "über"),
            ("", "", ""),
        ] {
            let wire = ServiceRequest::encode_without_attributes(request_id, order_id, operation);
            let req = ServiceRequest {
                request_id: request_id.into(),
                order_id: order_id.into(),
                operation: operation.into(),
                attributes: Default::default(),
            };
            assert_eq!(&wire[..], &serde_json::to_vec(&req).expect("json")[..]);
            let back: ServiceRequest = serde_json::from_slice(&wire).expect("decodes");
            assert_eq!(back, req);
        }
    }

    #[test]
    fn a_request_with_attributes_decodes_to_them() {
        let carrier = serde_json::json!("DHL \"x\"");
        let n = serde_json::json!(3);
        let wire = ServiceRequest::encode_with_attributes(
            "r",
            "A1",
            "order",
            &[("carrier", &carrier), ("n", &n)],
        );
        let back: ServiceRequest = serde_json::from_slice(&wire).expect("decodes");
        assert_eq!(back.attributes["carrier"], carrier);
        assert_eq!(back.attributes["n"], n);
        let empty = ServiceRequest::encode_with_attributes("r", "A1", "order", &[]);
        assert_eq!(
            empty,
            ServiceRequest::encode_without_attributes("r", "A1", "order")
        );
    }

    #[test]
    fn request_envelope_matches_the_contract() {
        let req = ServiceRequest {
            request_id: "r".into(),
            order_id: "A1".into(),
            operation: "order".into(),
            attributes: Default::default(),
        };
        assert_eq!(
            serde_json::to_string(&req).expect("json"),
            r#"{"request_id":"r","order_id":"A1","operation":"order","attributes":{}}"#
        );
    }
}
