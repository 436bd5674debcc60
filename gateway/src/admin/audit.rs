//! The audit trail of the admin API: every request that is not a read (a write, a rollback, an
//! import, a try-it), allowed or refused, becomes one event on the tracing target
//! [`TARGET`], with who made it, on what, the revisions before and after, and the outcome.
//!
//! Who is the token's fingerprint: the first 12 hex digits of SHA-256 over the SHA-256 of the
//! token, which names a token in the log without revealing it or the digest the guard compares
//! against. A token that was refused is `invalid`, a request without one `none`.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::config::store::Kind;
use crate::error::GatewayError;

/// The tracing target of audit events.
pub const TARGET: &str = "busgate::audit";

/// Who made a request, as the audit trail names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A valid token, by its fingerprint.
    Token(String),
    /// A token that was refused.
    Invalid,
    /// No bearer token.
    Anonymous,
}

impl Actor {
    /// The actor holding the token whose SHA-256 is `token_hash`.
    pub fn of(token_hash: &[u8; 32]) -> Actor {
        let digest = Sha256::digest(token_hash);
        Actor::Token(hex::encode(&digest[..6]))
    }

    fn as_str(&self) -> &str {
        match self {
            Actor::Token(fingerprint) => fingerprint,
            Actor::Invalid => "invalid",
            Actor::Anonymous => "none",
        }
    }
}

/// What a write did to one object: handlers attach it to their answer, success or not, and
/// the guard logs it.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// `routes.order`, `services.billing`, `config`.
    pub object: String,
    /// The revision before (the object's, or the store's for `config`).
    pub old: Option<u64>,
    /// The revision written.
    pub new: Option<u64>,
}

impl Change {
    /// A change of the object `name` of `kind` (a validated name).
    pub fn of(kind: Kind, name: &str) -> Change {
        Change {
            object: kind.key(name),
            ..Change::default()
        }
    }

    /// The answer of a handler, carrying this change for the audit event.
    pub fn attach(self, result: Result<Response, GatewayError>) -> Response {
        let mut response = result.unwrap_or_else(IntoResponse::into_response);
        response.extensions_mut().insert(self);
        response
    }
}

/// Whether a request with `method` is audited (anything but a read).
pub fn audited(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Logs one audit event.
pub fn record(
    actor: &Actor,
    method: &Method,
    path: &str,
    change: Option<&Change>,
    status: StatusCode,
) {
    let outcome = if status.is_success() {
        "done"
    } else if status.is_client_error() {
        "refused"
    } else {
        "failed"
    };
    // The path is the request's URI path: percent-encoded, so it holds no control characters.
    let object = change.map_or(path, |c| c.object.as_str());
    tracing::info!(
        target: TARGET,
        token = actor.as_str(),
        method = %method,
        object,
        old_revision = change.and_then(|c| c.old),
        new_revision = change.and_then(|c| c.new),
        status = status.as_u16(),
        outcome,
        "admin write"
    );
}

/// Logs one audit event of a write made straight to the store, not through the admin API
/// (`busgate config apply` without `--admin`, `busgate up --config`): the actor is `nats`,
/// whoever holds the NATS credentials; `operation` is `create`, `update` or `delete`.
pub fn record_direct(operation: &str, change: &Change, done: bool) {
    tracing::info!(
        target: TARGET,
        token = "nats",
        method = operation,
        object = change.object.as_str(),
        old_revision = change.old,
        new_revision = change.new,
        outcome = if done { "done" } else { "refused" },
        "direct write"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_short_stable_and_not_the_digest() {
        let hash: [u8; 32] = Sha256::digest(b"a token of at least thirty-two characters").into();
        let Actor::Token(fingerprint) = Actor::of(&hash) else {
            panic!("a token");
        };
        assert_eq!(fingerprint.len(), 12);
        assert_eq!(Actor::of(&hash), Actor::Token(fingerprint.clone()));
        let digest_hex = hex::encode(hash);
        assert!(!digest_hex.contains(&fingerprint));
    }

    #[test]
    fn reads_are_not_audited() {
        assert!(!audited(&Method::GET));
        assert!(audited(&Method::PUT));
        assert!(audited(&Method::DELETE));
        assert!(audited(&Method::POST));
    }
}
