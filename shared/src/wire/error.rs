//! Why a flush was refused (the public [`FlushError`]), and why a server connection ended
//! ([`ConnError`], which decides how loudly it is logged). [`PublishError`](crate::error::PublishError)
//! lives with the crate's error type, which carries it, so that imports point one way.

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
