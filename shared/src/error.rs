//! The one error type of the contract crate, and the request-path connection's errors that it
//! carries ([`UrlError`], [`PublishError`]): they are defined here, not in `wire`, so that the
//! wire imports this module and never the other way round.

/// What can go wrong while validating contract values or talking to NATS through the helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value broke a rule of the contract; `field` names where it sits.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the offending field, e.g. `routes.order.targets[1].service`.
        field: String,
        /// Human-readable reason, lower case, no trailing period.
        reason: String,
    },
    /// A reply payload could not be decoded.
    #[error("malformed reply: {0}")]
    MalformedReply(#[source] serde_json::Error),
    /// Connecting to NATS failed.
    #[error("cannot connect to nats at {url}: {source}")]
    Connect {
        /// The URL that was tried.
        url: String,
        /// What the client said.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A NATS URL list the request path's connection cannot use.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// Subscribing or publishing on the request path's connection failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A URL list this connection cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nats url {url:?}: {reason}")]
pub struct UrlError {
    /// The offending entry (credentials removed).
    pub url: String,
    /// Why.
    pub reason: &'static str,
}

/// Why a publish was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No connection to a server right now.
    #[error("not connected to nats")]
    NotConnected,
    /// The connection is closed for good.
    #[error("the nats connection is closed")]
    Closed,
    /// More than [`MAX_BACKLOG`](crate::wire::MAX_BACKLOG) bytes wait to be sent.
    #[error("too much is waiting to be sent to nats")]
    Backlog,
    /// Larger than the server's `max_payload`.
    #[error("message larger than the server's max_payload")]
    TooLarge,
    /// A subject that is empty or has whitespace or control characters.
    #[error("invalid subject")]
    InvalidSubject,
    /// A header name or value with CR, LF or (in a name) a colon.
    #[error("invalid header")]
    InvalidHeader,
}
