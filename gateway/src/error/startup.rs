//! Why a process could not start, and the exit code each reason ends it with.
//!
//! Separate from [`GatewayError`](super::GatewayError), which is what a request can meet:
//! nothing here reaches a client. Every variant says where it came from (the settings, the
//! machine, NATS, a client library), so that `main` maps it to an exit code and an operator
//! knows what to fix.

use std::net::SocketAddr;

/// Exit code of bad settings (BSD's EX_USAGE: what operators grep for in this project; bad
/// settings never start a listener).
pub const EXIT_BAD_SETTINGS: u8 = 64;
/// Exit code when a service the process needs at start is unavailable (EX_UNAVAILABLE): NATS.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code of an internal failure at start (EX_SOFTWARE): a client library that cannot be
/// built.
pub const EXIT_SOFTWARE: u8 = 70;
/// Exit code when the machine refuses (EX_OSERR): an address that cannot be bound.
pub const EXIT_OS: u8 = 71;

/// A failure before the process serves: loading and validating settings, binding, connecting,
/// building clients.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The settings could not be read from the file or the environment.
    #[error("cannot load settings: {0}")]
    LoadSettings(#[source] Box<config::ConfigError>),
    /// A setting breaks a rule of the contract (the field is in the message).
    #[error("invalid settings: {0}")]
    InvalidSettings(#[source] busgate_shared::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address of the listener.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The NATS connections could not be made (or their settings used).
    #[error("cannot connect to nats: {0}")]
    Nats(#[source] busgate_shared::Error),
    /// The reply inbox of the request path could not be subscribed.
    #[error("cannot subscribe to the reply inbox: {0}")]
    Inbox(#[source] busgate_shared::wire::PublishError),
    /// The HTTP client of callbacks could not be built.
    #[error("cannot build the callback client: {0}")]
    CallbackClient(#[source] reqwest::Error),
}

impl StartupError {
    /// The process's exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::LoadSettings(_) | StartupError::InvalidSettings(_) => EXIT_BAD_SETTINGS,
            StartupError::Nats(_) | StartupError::Inbox(_) => EXIT_UNAVAILABLE,
            StartupError::CallbackClient(_) => EXIT_SOFTWARE,
            StartupError::Listen { .. } => EXIT_OS,
        }
    }
}

impl From<config::ConfigError> for StartupError {
    fn from(e: config::ConfigError) -> Self {
        StartupError::LoadSettings(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_exit_64_and_other_failures_their_own_code() {
        let bad = StartupError::InvalidSettings(busgate_shared::Error::invalid("http", "x"));
        assert!(matches!(bad, StartupError::InvalidSettings(_)));
        assert_eq!(bad.exit_code(), 64);
        let listen = StartupError::Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(listen.exit_code(), EXIT_OS);
        let nats = StartupError::Nats(busgate_shared::Error::invalid("nats.url", "x"));
        assert_eq!(nats.exit_code(), EXIT_UNAVAILABLE);
        let codes = [EXIT_BAD_SETTINGS, EXIT_UNAVAILABLE, EXIT_SOFTWARE, EXIT_OS];
        for (i, a) in codes.iter().enumerate() {
            assert!(codes[i + 1..].iter().all(|b| a != b), "codes are distinct");
        }
    }
}
