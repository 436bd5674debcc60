//! The one error type of the contract crate.

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
    Url(#[from] crate::wire::UrlError),
    /// Subscribing or publishing on the request path's connection failed.
    #[error(transparent)]
    Publish(#[from] crate::wire::PublishError),
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
