//! The errors of a request and their one HTTP mapping: RFC 9457 `application/problem+json`;
//! and, apart, [`StartupError`]: why a process could not start, with its exit code.
//!
//! Shaped like async-nats `Error<Kind>`: a [`ErrorKind`] that tests match on, plus the request
//! context (`request_id`, `order_id`) that every problem document carries. As pingora's errors
//! do, a kind says where it came from ([`ErrorKind::origin`]: the client, a source behind the
//! gateway, the gateway itself) and whether a retry may help ([`ErrorKind::retryable`]).

mod kind;
mod problem;
mod startup;

pub use kind::*;
pub use problem::problem_type;
pub use startup::{StartupError, EXIT_BAD_SETTINGS, EXIT_SOFTWARE, EXIT_UNAVAILABLE};
