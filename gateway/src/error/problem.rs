//! The one HTTP mapping of [`GatewayError`]: status, RFC 9457 problem document, and the headers
//! a kind adds (`Retry-After`, `WWW-Authenticate`, `Allow`, the rate-limit fields).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use busgate_shared::header::REQUEST_ID;

use super::kind::{
    Credentials, ErrorKind, GatewayError, SourceFailure, Store, ANSWER_ID, PROBLEM_JSON, RATELIMIT,
    RATELIMIT_POLICY,
};

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sources: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl GatewayError {
    /// The status code, the problem type's slug and its title.
    pub fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use ErrorKind as K;
        match &self.kind {
            K::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            K::InvalidBody(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-body",
                "Invalid request body",
            ),
            K::MissingOrderId => (
                StatusCode::BAD_REQUEST,
                "missing-order-id",
                "Missing order_id",
            ),
            K::InvalidOrderId { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid-order-id",
                "Invalid order_id",
            ),
            K::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            K::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            K::BodyRead(_) => (
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Unreadable request body",
            ),
            K::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request body timeout",
            ),
            K::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Overloaded"),
            K::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            K::InvalidHost(_) => (StatusCode::BAD_REQUEST, "invalid-host", "Invalid Host"),
            K::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            K::Source { failure, .. } => match failure {
                SourceFailure::NotFound => {
                    (StatusCode::NOT_FOUND, "order-not-found", "Order not found")
                }
                SourceFailure::Error => {
                    (StatusCode::BAD_GATEWAY, "upstream-error", "Upstream error")
                }
                SourceFailure::NoResponders => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service-unavailable",
                    "Service unavailable",
                ),
                SourceFailure::Timeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "deadline-exceeded",
                    "Deadline exceeded",
                ),
            },
            K::NotReady(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Gateway not ready",
            ),
            K::CallbacksDisabled => (
                StatusCode::BAD_REQUEST,
                "callbacks-not-configured",
                "Callbacks not configured",
            ),
            K::CallbackRefused(_) => (
                StatusCode::BAD_REQUEST,
                "callback-refused",
                "Callback URL refused",
            ),
            K::InvalidTimeout(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-timeout",
                "Invalid Busgate-Timeout",
            ),
            K::InvalidIdempotencyKey => (
                StatusCode::BAD_REQUEST,
                "invalid-idempotency-key",
                "Invalid Idempotency-Key",
            ),
            K::IdempotencyConflict => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
            ),
            K::RequestNotFound(_) => (
                StatusCode::NOT_FOUND,
                "request-not-found",
                "Request not found",
            ),
            K::Unreachable { .. } | K::Corrupt { .. } | K::Contended(_) | K::StatusMissing(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable",
            ),
            K::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "queue-full", "Queue full"),
            K::Exists(_) | K::Stale { .. } => (StatusCode::CONFLICT, "conflict", "Conflict"),
            K::RouteGone(_) => (StatusCode::NOT_FOUND, "route-not-found", "Route not found"),
            K::ProcessingFailed { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "processing-failed",
                "Processing failed",
            ),
            K::Unauthorized | K::ClientUnauthorized(_) => {
                (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
            }
            K::RouteNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "route-not-allowed",
                "Route not allowed",
            ),
            K::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limited",
            ),
            K::TooManyFailures { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-failures",
                "Too many failed credentials",
            ),
            K::TooManyPending => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-pending",
                "Too many pending requests",
            ),
            K::TooManyStreams => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                "Too many event streams",
            ),
            K::InvalidConfig { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-config",
                "Invalid configuration",
            ),
            K::PreconditionRequired => (
                StatusCode::PRECONDITION_REQUIRED,
                "precondition-required",
                "If-Match required",
            ),
            K::PreconditionFailed { .. } => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Lost update",
            ),
            K::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            K::ObjectNotFound(_) => (StatusCode::NOT_FOUND, "object-not-found", "Not found"),
            K::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// What a problem document says: the kind's message, except for failures inside the
    /// gateway, whose cause is for the log (see [`GatewayError::log_if_internal`]).
    fn public_detail(&self) -> String {
        use ErrorKind as K;
        match &self.kind {
            K::Unreachable { store, .. } | K::Corrupt { store, .. } => {
                format!("temporarily unavailable: the {store} store is not reachable")
            }
            K::Contended(_) | K::StatusMissing(_) => {
                format!(
                    "temporarily unavailable: the {} store is not reachable",
                    Store::Requests
                )
            }
            // hyper's words about a connection are for the log.
            K::BodyRead(_) => "cannot read request body".to_owned(),
            other => other.to_string(),
        }
    }

    /// Logs the cause of a failure inside the gateway (a store, a bug), which the problem
    /// document does not show; bad input and failed sources are not logged here.
    pub fn log_if_internal(&self) {
        self.log_traced(None);
    }

    /// [`GatewayError::log_if_internal`], the lines carrying the request's `trace_id`.
    fn log_traced(&self, trace_id: Option<&str>) {
        use ErrorKind as K;
        let internal = matches!(
            self.kind,
            K::Unreachable { .. }
                | K::Corrupt { .. }
                | K::Contended(_)
                | K::StatusMissing(_)
                | K::Internal
        );
        if internal {
            tracing::warn!(request_id = self.request_id.as_deref(), trace_id, error = %self.kind, "request failed inside the gateway");
        }
        match &self.kind {
            K::CallbackRefused(refusal) => {
                tracing::info!(request_id = self.request_id.as_deref(), trace_id, class = ?refusal.class, detail = %refusal.detail, "callback_url refused");
            }
            K::BodyRead(e) => {
                tracing::debug!(request_id = self.request_id.as_deref(), trace_id, error = %e, "cannot read a request body");
            }
            _ => {}
        }
    }

    /// The problem document: status and body bytes. Also what asynchronous results store.
    pub fn problem(&self) -> (StatusCode, Bytes) {
        self.problem_traced(None)
    }

    /// [`GatewayError::problem`], with the request's `trace_id` when it has one.
    fn problem_traced(&self, trace_id: Option<&str>) -> (StatusCode, Bytes) {
        let (status, slug, title) = self.classify();
        let problem = Problem {
            kind: problem_type(slug),
            title,
            status: status.as_u16(),
            detail: self.public_detail(),
            request_id: self.request_id.as_deref(),
            order_id: self.order_id.as_deref(),
            trace_id,
            sources: match &self.kind {
                ErrorKind::Source { sources, .. } => Some(sources),
                _ => None,
            },
            field: match &self.kind {
                ErrorKind::InvalidConfig { field, .. } => Some(field),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        (status, Bytes::from(body))
    }
}

/// The URI of a problem type: a URN, since these documents are not served anywhere.
pub fn problem_type(slug: &str) -> String {
    format!("urn:busgate:problem:{slug}")
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.into_traced_response(None)
    }
}

impl GatewayError {
    /// The problem response, carrying `trace_id` (in the document and the log line) when the
    /// request has one: the public edge's answers, with traces or the access log on.
    pub fn into_traced_response(mut self, trace_id: Option<&str>) -> Response {
        if self.request_id.is_none() {
            self.request_id = ANSWER_ID.try_with(Clone::clone).ok();
        }
        self.log_traced(trace_id);
        let (status, body) = self.problem_traced(trace_id);
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            headers.insert(REQUEST_ID, id);
        }
        if let ErrorKind::MethodNotAllowed { allow, .. } = &self.kind {
            if let Ok(v) = HeaderValue::from_str(allow) {
                headers.insert(header::ALLOW, v);
            }
        }
        match &self.kind {
            // Shed load, a full queue and a contended write come back soon; the client should
            // not retry at once in a loop.
            ErrorKind::Overloaded(_) | ErrorKind::QueueFull | ErrorKind::Contended(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            ErrorKind::BodyTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        match &self.kind {
            ErrorKind::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"busgate-admin\""),
                );
            }
            // RFC 6750 §3: no error code when nothing was sent, `invalid_request` for a
            // malformed request, `invalid_token` for a credential that does not verify.
            ErrorKind::ClientUnauthorized(why) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(match why {
                        Credentials::Missing => "Bearer realm=\"busgate\"",
                        Credentials::Malformed | Credentials::Ambiguous => {
                            "Bearer realm=\"busgate\", error=\"invalid_request\""
                        }
                        Credentials::Invalid => "Bearer realm=\"busgate\", error=\"invalid_token\"",
                    }),
                );
            }
            ErrorKind::RateLimited {
                per_second,
                retry_after,
                ..
            } => {
                // Whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3).
                let seconds = retry_after.as_millis().div_ceil(1000).max(1);
                let mut digits = [0u8; 20];
                let seconds = busgate_shared::header::decimal(
                    u64::try_from(seconds).unwrap_or(1),
                    &mut digits,
                );
                if let Ok(v) = HeaderValue::from_str(seconds) {
                    headers.insert(header::RETRY_AFTER, v);
                }
                // draft-ietf-httpapi-ratelimit-headers-09: the policy ("q" requests per "w"
                // seconds) and what is left of it ("r") with when it resets ("t").
                if let Ok(v) = HeaderValue::from_str(&format!("\"client\";q={per_second};w=1")) {
                    headers.insert(RATELIMIT_POLICY, v);
                }
                if let Ok(v) = HeaderValue::from_str(&format!("\"client\";r=0;t={seconds}")) {
                    headers.insert(RATELIMIT, v);
                }
            }
            ErrorKind::TooManyFailures { retry_after } => {
                let seconds = retry_after.as_secs().max(1);
                if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            ErrorKind::TooManyPending | ErrorKind::TooManyStreams => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
