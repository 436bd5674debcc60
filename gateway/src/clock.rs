//! Timestamps as the APIs write them.

use std::time::SystemTime;

/// A time as RFC 3339 with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
