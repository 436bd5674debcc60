//! A request's identity: its id (a UUIDv7, also what a client polls an asynchronous request
//! by) and the W3C `traceparent` it carries to the services.

use axum::http::HeaderName;
use uuid::Uuid;

use busgate_shared::header::REQUEST_ID_LOWER;

/// `Busgate-Request-Id` as a ready header name: inserting a `&str` name that is not a standard
/// one allocates a copy of it on every response.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID_LOWER);

/// A request id in its text form, kept inline: no allocation per request.
#[derive(Clone, Copy)]
pub struct RequestId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl RequestId {
    /// A fresh id (see [`new_request_id`]).
    pub fn fresh() -> Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        new_request_id().hyphenated().encode_lower(&mut text);
        RequestId(text)
    }

    /// The id, e.g. `019a…-7…`.
    pub fn as_str(&self) -> &str {
        // Always ASCII: written by `encode_lower`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A UUIDv7 request id: the unix millisecond clock, then 74 bits from the thread-local CSPRNG
/// (an id is a capability: whoever holds it can read the result). `Uuid::now_v7` asks the
/// kernel for its random bits, a system call on every request.
pub fn new_request_id() -> Uuid {
    let mut random = [0u8; 10];
    rand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(busgate_shared::header::now_unix_ms(), &random)
        .into_uuid()
}

/// The W3C traceparent to send: the caller's trace (`incoming`, when valid) with our own span
/// and the caller's flags, or a new random trace, marked sampled with probability
/// `sample_ratio`. The span id is the tail of the request id; the trace id is never the
/// request id, which is a capability (whoever holds it could read an asynchronous result) and
/// must not travel to every service and tracing backend.
///
/// Unsampled is also the cheap case on the bus: nats-server lifts every header of a message
/// into a map of its own when a `traceparent` says sampled (for its message tracing), which
/// cost it about 7 µs per merged request here (`tests/perf/floor.sh`, nats-server 2.15).
pub fn traceparent(incoming: Option<&str>, request_id: &str, sample_ratio: f64) -> String {
    let mut simple = String::with_capacity(32);
    simple.extend(request_id.chars().filter(|c| *c != '-'));
    let span = simple.get(16..32).unwrap_or("");
    let mut fresh = [0u8; 32];
    let (trace, flags) = incoming.and_then(parse_traceparent).unwrap_or_else(|| {
        let sampled = sample_ratio > 0.0 && rand::random::<f64>() < sample_ratio;
        (new_trace_id(&mut fresh), if sampled { "01" } else { "00" })
    });
    let mut out = String::with_capacity(55);
    for piece in ["00-", trace, "-", span, "-", flags] {
        out.push_str(piece);
    }
    out
}

/// 128 random bits in lower-case hex, written into `out` (never all zeros: W3C forbids it).
fn new_trace_id(out: &mut [u8; 32]) -> &str {
    let mut random = [0u8; 16];
    rand::fill(&mut random);
    random[15] |= 1;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in random.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(out).unwrap_or("00000000000000000000000000000001")
}

/// `(trace_id, flags)` of a valid version-00 traceparent.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace, flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{request::Parts, HeaderValue};
    use busgate_shared::header::TRACEPARENT;

    #[test]
    fn request_ids_are_fresh_version_7_uuids_of_now() {
        let before = busgate_shared::header::now_unix_ms();
        let (a, b) = (new_request_id(), new_request_id());
        let after = busgate_shared::header::now_unix_ms();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().expect("v7 has a time").to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                (before..=after).contains(&ms),
                "{ms} not in {before}..={after}"
            );
        }
    }

    #[test]
    fn traceparents_are_propagated_or_made() {
        let id = "0190f5a2-7b3c-7def-8123-456789abcdef";
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        let incoming = |parts: &Parts| {
            parts
                .headers
                .get(TRACEPARENT)?
                .to_str()
                .ok()
                .map(str::to_owned)
        };
        let made = traceparent(incoming(&parts).as_deref(), id, 0.0);
        let (trace, rest) = made
            .strip_prefix("00-")
            .and_then(|m| m.split_once('-'))
            .expect("version and trace");
        assert_eq!(rest, "8123456789abcdef-00");
        assert_eq!(trace.len(), 32);
        assert_ne!(
            trace, "0190f5a27b3c7def8123456789abcdef",
            "not the request id"
        );
        assert_ne!(
            trace,
            &traceparent(None, id, 0.0)[3..35],
            "a new trace each time"
        );
        assert!(traceparent(None, id, 1.0).ends_with("-01"));
        let sampled = (0..1000)
            .filter(|_| traceparent(None, id, 0.25).ends_with("-01"))
            .count();
        assert!((150..350).contains(&sampled), "{sampled} of 1000 at 0.25");
        parts.headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert_eq!(
            traceparent(incoming(&parts).as_deref(), id, 1.0),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-8123456789abcdef-00",
            "the caller's flags are kept"
        );
        parts.headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-0000-00f067aa0ba902b7-01"),
        );
        assert!(traceparent(incoming(&parts).as_deref(), id, 0.0).ends_with("-8123456789abcdef-00"));
    }
}
