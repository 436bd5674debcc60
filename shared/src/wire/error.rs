//! Why a publish or a flush was refused (the public [`PublishError`], [`FlushError`]), and why
//! a server connection ended ([`ConnError`], which decides how loudly it is logged).

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

/// Why a flush did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// Not connected, or the connection was lost before the server answered.
    #[error("not connected to nats")]
    NotConnected,
    /// The server did not answer in time.
    #[error("nats did not answer the flush in time")]
    Timeout,
}

/// Why a connection to a server ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("server error: {0}")]
    Server(String),
    #[error("the server refused the credentials: {0}")]
    Auth(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("the server stopped answering pings")]
    Stale,
    #[error("the server is entering lame duck mode")]
    LameDuck,
}

impl ConnError {
    /// A server's `-ERR`, classified: authentication failures apart, as they are logged at
    /// error level (an operator must act) and never end by themselves.
    pub(crate) fn from_server(e: String) -> ConnError {
        let lower = e.to_ascii_lowercase();
        let auth = ["authorization", "authentication", "account"];
        if auth.iter().any(|a| lower.contains(a)) {
            ConnError::Auth(e)
        } else {
            ConnError::Server(e)
        }
    }

    /// Whether an operator must act (bad credentials, a certificate not trusted).
    pub(crate) fn needs_operator(&self) -> bool {
        matches!(self, ConnError::Auth(_) | ConnError::Tls(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_about_credentials_are_for_the_operator() {
        assert!(ConnError::from_server("Authorization Violation".into()).needs_operator());
        assert!(ConnError::from_server("User Authentication Expired".into()).needs_operator());
        assert!(!ConnError::from_server("Stale Connection".into()).needs_operator());
    }
}
