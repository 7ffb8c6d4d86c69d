//! What can go wrong for a client.

use tally_protocol::{ErrorBody, ErrorCode};

/// A client error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused the request; `not_leader` when standbys answered it and no leader
    /// served it before its deadline (the message names the leader, or says none is known).
    #[error("{}", .0.message)]
    Server(ErrorBody),
    /// No server of the list could be reached (each one's reason is in the text).
    #[error("cannot reach any server: {0}")]
    Unreachable(String),
    /// No server of the list could be trusted: a server's certificate does not verify
    /// against the configured CA (not signed by it, not for the name dialled, expired).
    /// The text names each server, why, and the CA file.
    #[error("{0}")]
    Untrusted(String),
    /// The connection dropped while a request that must not be sent twice was in flight;
    /// it may or may not have been applied.
    #[error("the connection dropped before the server answered; the request may or may not have been applied: {0}")]
    ConnectionLost(String),
    /// A server was connected but did not answer the request within its deadline (the
    /// text names the request, the server and the deadline); a request that changes
    /// something may or may not have been applied.
    #[error("{0}")]
    Timeout(String),
    /// The client configuration is incomplete or wrong.
    #[error("{0}")]
    Config(String),
    /// The server said something this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client was shut down.
    #[error("the client has stopped")]
    Closed,
}

impl Error {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(body) => Some(body.code),
            _ => None,
        }
    }

    /// The stable code for JSON output: the server's, or one for local failures.
    pub fn code_str(&self) -> &'static str {
        match self {
            Error::Server(body) => body.code.as_str(),
            Error::Unreachable(_) => "unreachable",
            Error::Untrusted(_) => "untrusted",
            Error::ConnectionLost(_) => "connection_lost",
            Error::Timeout(_) => "timeout",
            Error::Config(_) => "invalid",
            Error::Protocol(_) => "protocol",
            Error::Closed => "closed",
        }
    }
}

impl From<ErrorBody> for Error {
    fn from(body: ErrorBody) -> Self {
        Error::Server(body)
    }
}
