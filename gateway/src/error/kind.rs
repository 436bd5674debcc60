//! What a request can meet: [`GatewayError`], its [`ErrorKind`]s with their origin and
//! whether a retry may help, and the context every problem document carries.

use serde_json::value::RawValue;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-09).
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09).
pub const RATELIMIT: &str = "ratelimit";

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON of the wrong shape.
    #[error("request body has the wrong shape: {0}")]
    InvalidBody(String),
    /// No `order_id` in path or body.
    #[error("order_id is missing")]
    MissingOrderId,
    /// The `order_id` breaks the configured pattern.
    #[error("order_id must match {pattern}")]
    InvalidOrderId {
        /// The pattern it must match.
        pattern: String,
    },
    /// A body that is not JSON by its declared type.
    #[error("content type {0:?} is not supported, send application/json")]
    UnsupportedMediaType(String),
    /// The body exceeds the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read.
    #[error("cannot read request body: {0}")]
    BodyRead(String),
    /// The body did not arrive whole in time (`http.body_timeout`); the connection closes.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The instance is at a cap (requests in flight, event streams, watchers): try again soon.
    #[error("too many {0} on this instance, try again shortly")]
    Overloaded(&'static str),
    /// No route or endpoint at this path.
    #[error("nothing is served at {0}")]
    NotFound(String),
    /// An HTTP/1.1 request without `Host`, or any request with two (RFC 9112 §3.2).
    #[error("{0}")]
    InvalidHost(&'static str),
    /// The path exists, the method does not.
    #[error("method {method} is not allowed here, use {allow}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods allowed, comma separated (the `Allow` header).
        allow: String,
    },
    /// A required source failed; `sources` has every source's outcome.
    #[error("{detail}")]
    Source {
        /// Which failure.
        failure: SourceFailure,
        /// Human-readable detail naming the source.
        detail: String,
        /// The rendered `sources` object.
        sources: Box<RawValue>,
    },
    /// The gateway cannot take requests now (NATS down, shutting down).
    #[error("gateway not ready: {0}")]
    NotReady(&'static str),
    /// A callback was asked for, but no signing secret is configured.
    #[error("callbacks are not configured on this gateway (callbacks.secret)")]
    CallbacksDisabled,
    /// The callback URL may not be called. The client hears the class only.
    #[error("callback_url {0}")]
    CallbackRefused(Refusal),
    /// The `Busgate-Timeout` header is not a usable duration (the value is not repeated).
    #[error("Busgate-Timeout {0}")]
    InvalidTimeout(busgate_shared::resilience::ClientTimeoutError),
    /// The `Idempotency-Key` header is not usable.
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    /// The `Idempotency-Key` was used before with a different request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    /// No asynchronous request with this id (or not visible to this client).
    #[error("no request {0}")]
    RequestNotFound(String),
    /// The admin API needs a valid bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// A public request without usable credentials. The detail says which rule, never what
    /// was sent.
    #[error("{0}")]
    ClientUnauthorized(Credentials),
    /// The client may not use this route.
    #[error("this client may not use the route {0}")]
    RouteNotAllowed(String),
    /// The client is over its rate.
    #[error("over the rate of {per_second} requests per second (burst {burst}), retry later")]
    RateLimited {
        /// Its rate.
        per_second: u32,
        /// Its burst.
        burst: u32,
        /// How long until a request would conform.
        retry_after: std::time::Duration,
    },
    /// Too many refused credentials from this client address (`auth.max_failures_per_minute`):
    /// its credentials are not checked until the window is over.
    #[error("too many failed credentials from this address, retry later")]
    TooManyFailures {
        /// How long until the address's window is over.
        retry_after: std::time::Duration,
    },
    /// The client has as many asynchronous requests pending as it may.
    #[error("too many asynchronous requests pending for this client, retry when some finish")]
    TooManyPending,
    /// The client has as many event streams open as it may.
    #[error("too many event streams open for this client")]
    TooManyStreams,
    /// A configuration change breaks a rule; `field` names where.
    #[error("{field}: {reason}")]
    InvalidConfig {
        /// Dotted path of the offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A write without `If-Match`.
    #[error("send If-Match with the ETag you read, so that no update is lost")]
    PreconditionRequired,
    /// A write whose `If-Match` does not match the object's current entity tag.
    #[error("If-Match does not match the current revision: {}", match current {
        Some(r) => format!("the object is at \"{r}\", read it again"),
        None => "the object does not exist".to_owned(),
    })]
    PreconditionFailed {
        /// The revision in the store (`None`: the object does not exist).
        current: Option<u64>,
    },
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// No such configuration object.
    #[error("{0} does not exist")]
    ObjectNotFound(String),
    /// A JetStream stream or KV bucket could not be used. The client is told which store; the
    /// cause goes to the log.
    #[error("the {store} store failed: {source}")]
    Unreachable {
        /// Which store.
        store: Store,
        /// What the client library said.
        #[source]
        source: async_nats::Error,
    },
    /// A stored document could not be read.
    #[error("stored {key} is not valid: {source}")]
    Corrupt {
        /// Which store.
        store: Store,
        /// Its key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The queue of asynchronous requests (or its bucket of status documents) is full.
    #[error("the queue of asynchronous requests is full, retry later")]
    QueueFull,
    /// A compare-and-set update kept losing to concurrent writers.
    #[error("too many concurrent updates of {0}")]
    Contended(String),
    /// The object exists already (a create).
    #[error("{0} exists already")]
    Exists(String),
    /// A conditional write lost: the object is no longer at `expected`.
    #[error("changed concurrently, read it again")]
    Stale {
        /// The key.
        key: String,
        /// The revision the writer had.
        expected: u64,
    },
    /// An asynchronous request whose status document is gone.
    #[error("no status document for {0}")]
    StatusMissing(String),
    /// An asynchronous request names a route that no longer exists.
    #[error("the route {0} no longer exists")]
    RouteGone(String),
    /// An asynchronous request was delivered `attempts` times without finishing.
    #[error("processing was attempted {attempts} times without finishing")]
    ProcessingFailed {
        /// How many deliveries.
        attempts: i64,
    },
    /// A bug or an unexpected failure; detail goes to the log only.
    #[error("internal error")]
    Internal,
}

/// Where an error came from (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client: what it sent, who it is, how much it asks.
    Downstream,
    /// A source behind the gateway (a service over NATS).
    Upstream,
    /// The gateway itself or a store it depends on.
    Internal,
}

impl ErrorKind {
    /// Where this error came from.
    pub fn origin(&self) -> Origin {
        use ErrorKind as K;
        match self {
            K::Source { .. } => Origin::Upstream,
            K::NotReady(_)
            | K::Overloaded(_)
            | K::Unreachable { .. }
            | K::Corrupt { .. }
            | K::QueueFull
            | K::Contended(_)
            | K::StatusMissing(_)
            | K::ProcessingFailed { .. }
            | K::Internal => Origin::Internal,
            _ => Origin::Downstream,
        }
    }

    /// Whether the same request may succeed if sent again later, unchanged.
    pub fn retryable(&self) -> bool {
        use ErrorKind as K;
        match self {
            K::Source { failure, .. } => *failure != SourceFailure::NotFound,
            K::NotReady(_)
            | K::Overloaded(_)
            | K::Unreachable { .. }
            | K::QueueFull
            | K::Contended(_)
            | K::RateLimited { .. }
            | K::TooManyFailures { .. }
            | K::TooManyPending
            | K::TooManyStreams
            | K::BodyTimeout(_) => true,
            _ => false,
        }
    }
}

tokio::task_local! {
    /// The id of the answer being made, where a listener gives every answer one (the admin
    /// listener, the public listener's built-in paths; see `edge::with_request_id`): a problem
    /// document made while answering carries it when it has no other.
    pub static ANSWER_ID: String;
}

/// Why a callback URL is refused: a class the client is told, and the detail (what a name
/// resolved to, the port) that only the log gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What the client is told.
    pub class: RefusalClass,
    /// For the log only.
    pub detail: String,
}

/// The classes of [`Refusal`]: short, and the same whatever a name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    /// Not a URL.
    NotUrl,
    /// Not http or https.
    Scheme,
    /// Longer than 2048 characters.
    TooLong,
    /// No host.
    NoHost,
    /// A port other than 80, 443 and the ones the allowlist names.
    Port,
    /// An IP literal in a special-purpose range.
    Address,
    /// A name that does not resolve, or resolves to an address that is not allowed.
    Host,
}

impl Refusal {
    /// A refusal of `class`, with `detail` for the log.
    pub fn new(class: RefusalClass, detail: impl Into<String>) -> Self {
        Refusal {
            class,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.class {
            RefusalClass::NotUrl => "refused: not a URL",
            RefusalClass::Scheme => "refused: only http and https",
            RefusalClass::TooLong => "refused: longer than 2048 characters",
            RefusalClass::NoHost => "refused: no host",
            RefusalClass::Port => "refused: port not allowed (80, 443 or an allowlisted port)",
            RefusalClass::Address => "refused: address not allowed",
            RefusalClass::Host => "refused: host not allowed",
        })
    }
}

/// Why a public request's credentials were refused; the client is told the rule it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// None were sent.
    Missing,
    /// The header is not `Bearer <token>`, not ASCII, or too long.
    Malformed,
    /// More than one credential (two headers, or both kinds).
    Ambiguous,
    /// An unknown, revoked or garbled key, or a token that does not verify.
    Invalid,
}

impl std::fmt::Display for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Missing => {
                "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>"
            }
            Credentials::Malformed => "the Authorization header must be Bearer <token>",
            Credentials::Ambiguous => "send exactly one credential",
            Credentials::Invalid => "the credentials are not valid",
        })
    }
}

/// The stores a request can depend on, as named to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Asynchronous requests: the work queue, status documents, idempotency keys.
    Requests,
    /// `busgate-config`.
    Config,
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Requests => "request",
            Store::Config => "configuration",
        })
    }
}

impl Store {
    /// Wraps a client library error of this store.
    pub fn failed(self, source: impl Into<async_nats::Error>) -> GatewayError {
        ErrorKind::Unreachable {
            store: self,
            source: source.into(),
        }
        .into()
    }

    /// Wraps the error of a document at `key` of this store that is not the JSON it should be.
    pub fn corrupt(self, key: &str) -> impl FnOnce(serde_json::Error) -> GatewayError + '_ {
        move |source| {
            ErrorKind::Corrupt {
                store: self,
                key: key.to_owned(),
                source,
            }
            .into()
        }
    }
}

/// How a required source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFailure {
    /// It does not know the order: 404.
    NotFound,
    /// It answered an error or garbage: 502.
    Error,
    /// Nobody serves it: 503.
    NoResponders,
    /// It did not answer in time: 504.
    Timeout,
}

/// An error with the context of the request it ended.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct GatewayError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The request's id, when one was assigned.
    pub request_id: Option<String>,
    /// The order id, when known and valid.
    pub order_id: Option<String>,
}

impl From<ErrorKind> for GatewayError {
    fn from(kind: ErrorKind) -> Self {
        GatewayError {
            kind,
            request_id: None,
            order_id: None,
        }
    }
}

impl GatewayError {
    /// A configuration change that breaks a rule of the contract: 422, naming the field.
    pub fn invalid_config(e: busgate_shared::Error) -> Self {
        match e {
            busgate_shared::Error::Invalid { field, reason } => {
                ErrorKind::InvalidConfig { field, reason }.into()
            }
            other => ErrorKind::InvalidConfig {
                field: String::new(),
                reason: other.to_string(),
            }
            .into(),
        }
    }

    /// Attaches the request id.
    pub fn with_request(mut self, request_id: &str) -> Self {
        self.request_id = Some(request_id.to_owned());
        self
    }

    /// Attaches the order id.
    pub fn with_order(mut self, order_id: &str) -> Self {
        self.order_id = Some(order_id.to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;

    use super::*;

    #[test]
    fn problems_carry_type_status_and_request_id() {
        let err = GatewayError::from(ErrorKind::PayloadTooLarge { limit: 10 }).with_request("r1");
        let (status, body) = err.problem();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["type"], "urn:busgate:problem:payload-too-large");
        assert_eq!(v["status"], 413);
        assert_eq!(v["request_id"], "r1");
        assert!(v.get("order_id").is_none());
    }

    #[test]
    fn source_failures_map_to_gateway_statuses() {
        let cases = [
            (SourceFailure::NotFound, 404),
            (SourceFailure::Error, 502),
            (SourceFailure::NoResponders, 503),
            (SourceFailure::Timeout, 504),
        ];
        for (failure, code) in cases {
            let err = GatewayError::from(ErrorKind::Source {
                failure,
                detail: "x".into(),
                sources: RawValue::from_string("{}".into()).expect("raw"),
            });
            assert_eq!(err.classify().0.as_u16(), code);
            let (_, body) = err.problem();
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(v["sources"], serde_json::json!({}));
        }
    }

    /// Every fallible step of a request carries this type: it stays as small as it was.
    #[test]
    fn the_error_stays_small() {
        assert!(std::mem::size_of::<GatewayError>() <= 128);
    }

    /// Problem documents say a class, never the detail: what a callback host resolved to,
    /// hyper's words about a connection.
    #[test]
    fn public_details_hold_no_internal_detail() {
        let refused = GatewayError::from(ErrorKind::CallbackRefused(Refusal::new(
            RefusalClass::Host,
            "hooks.internal resolves to 10.0.0.5",
        )))
        .with_request("r2");
        let body = String::from_utf8(refused.problem().1.to_vec()).expect("utf-8");
        assert!(body.contains("refused: host not allowed"), "{body}");
        assert!(!body.contains("10.0.0.5"), "{body}");
        assert!(body.contains("\"request_id\":\"r2\""), "{body}");
        let read = GatewayError::from(ErrorKind::BodyRead(
            "error reading a body from connection: 10.1.2.3:4711 reset".into(),
        ));
        let body = String::from_utf8(read.problem().1.to_vec()).expect("utf-8");
        assert!(!body.contains("10.1.2.3"), "{body}");
    }

    #[test]
    fn overload_says_when_to_retry_and_a_body_timeout_closes() {
        let r = GatewayError::from(ErrorKind::Overloaded("requests in flight")).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = GatewayError::from(ErrorKind::BodyTimeout(std::time::Duration::from_secs(1)))
            .into_response();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn client_refusals_say_how_to_authenticate_and_when_to_retry() {
        let r =
            GatewayError::from(ErrorKind::ClientUnauthorized(Credentials::Invalid)).into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"busgate\", error=\"invalid_token\""
        );
        let r = GatewayError::from(ErrorKind::RateLimited {
            per_second: 5,
            burst: 10,
            retry_after: std::time::Duration::from_millis(1200),
        })
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[RATELIMIT_POLICY], "\"client\";q=5;w=1");
        assert_eq!(r.headers()[RATELIMIT], "\"client\";r=0;t=2");
    }

    #[test]
    fn kinds_say_where_they_came_from_and_whether_to_retry() {
        let source = ErrorKind::Source {
            failure: SourceFailure::Timeout,
            detail: "x".into(),
            sources: RawValue::from_string("{}".into()).expect("raw"),
        };
        assert_eq!(source.origin(), Origin::Upstream);
        assert!(source.retryable());
        assert_eq!(ErrorKind::MissingOrderId.origin(), Origin::Downstream);
        assert!(!ErrorKind::MissingOrderId.retryable());
        assert_eq!(ErrorKind::QueueFull.origin(), Origin::Internal);
        assert!(ErrorKind::QueueFull.retryable());
    }

    #[test]
    fn method_not_allowed_sets_allow() {
        let r = GatewayError::from(ErrorKind::MethodNotAllowed {
            method: "PUT".into(),
            allow: "GET, POST".into(),
        })
        .into_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, POST");
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
