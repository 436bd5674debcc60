//! Header names carried on every service request, and deadline arithmetic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request id (UUIDv7) of the client request this message serves.
pub const REQUEST_ID: &str = "Busgate-Request-Id";
/// [`REQUEST_ID`] in lower case, the spelling a ready-made HTTP header name takes
/// (`http::HeaderName::from_static`); the gateway's answers carry it.
pub const REQUEST_ID_LOWER: &str = "busgate-request-id";
/// Absolute deadline of the work, unix milliseconds. Workers drop work past it.
pub const DEADLINE: &str = "Busgate-Deadline";
/// A public request's own deadline (`250ms`, `2s`): shortens the route's, never lengthens it.
/// Read by the gateway only; what reaches services is [`DEADLINE`].
pub const TIMEOUT: &str = "Busgate-Timeout";
/// The client id the request came from (empty until clients are configured).
pub const CLIENT: &str = "Busgate-Client";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The same names as NATS [`HeaderName`](async_nats::HeaderName)s, made without checking or
/// allocating: building a name from a `&str` does both, on every message.
pub mod name {
    use async_nats::HeaderName;

    /// [`super::REQUEST_ID`].
    pub fn request_id() -> HeaderName {
        HeaderName::from_static(super::REQUEST_ID)
    }
    /// [`super::DEADLINE`].
    pub fn deadline() -> HeaderName {
        HeaderName::from_static(super::DEADLINE)
    }
    /// [`super::CLIENT`].
    pub fn client() -> HeaderName {
        HeaderName::from_static(super::CLIENT)
    }
    /// [`super::TRACEPARENT`].
    pub fn traceparent() -> HeaderName {
        HeaderName::from_static(super::TRACEPARENT)
    }
}

/// `n` in decimal, written into `digits` (a header value without an allocation).
pub fn decimal(n: u64, digits: &mut [u8; 20]) -> &str {
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&digits[i..]).unwrap_or("0")
}

/// Milliseconds since the unix epoch, now.
pub fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Milliseconds since the unix epoch of `t` (0 for times before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Time left until the deadline `deadline_ms` (unix ms) as seen at `now_ms`; `None` once passed.
pub fn remaining(deadline_ms: u64, now_ms: u64) -> Option<Duration> {
    deadline_ms
        .checked_sub(now_ms)
        .filter(|left| *left > 0)
        .map(Duration::from_millis)
}

/// Reads a deadline header's value, if present and well formed.
pub fn deadline_of(value: Option<&str>) -> Option<u64> {
    value?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_case_request_id_is_the_same_name() {
        assert_eq!(REQUEST_ID_LOWER, REQUEST_ID.to_ascii_lowercase());
    }

    #[test]
    fn remaining_is_none_once_the_deadline_passed() {
        assert_eq!(remaining(1_000, 400), Some(Duration::from_millis(600)));
        assert_eq!(remaining(1_000, 1_000), None);
        assert_eq!(remaining(1_000, 2_000), None);
    }

    #[test]
    fn decimals_are_written_in_place() {
        let mut d = [0u8; 20];
        assert_eq!(decimal(0, &mut d), "0");
        assert_eq!(decimal(1_700_000_000_123, &mut d), "1700000000123");
        assert_eq!(decimal(u64::MAX, &mut d), u64::MAX.to_string());
    }

    #[test]
    fn deadline_header_parses() {
        assert_eq!(deadline_of(Some("1700000000123")), Some(1_700_000_000_123));
        assert_eq!(deadline_of(Some("soon")), None);
        assert_eq!(deadline_of(None), None);
    }
}
