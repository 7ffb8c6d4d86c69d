//! How a command fails: the exit code (SPEC §6) and the error printed for it.

use tally_protocol::ErrorCode;

use crate::Error;

/// Exit codes (SPEC §6).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_SEAT: u8 = 3;
    /// Unauthenticated or forbidden, or the server is not trusted (its certificate does not
    /// verify against the CA).
    pub const DENIED: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    /// `checkout -- CMD`: the command was found but cannot be run (as a shell says).
    pub const CANNOT_EXECUTE: u8 = 126;
    /// `checkout -- CMD`: the command was not found (as a shell says).
    pub const NOT_FOUND: u8 = 127;
}

/// The error code of a failure to print because stdout's reader went away: nothing is
/// said of it.
pub const BROKEN_PIPE: &str = "broken_pipe";

/// A failure of a command, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The process's exit status.
    pub code: u8,
    /// The stable code of the JSON error document.
    pub error_code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The lines of a file that are wrong, each with what is wrong on it (a bulk file):
    /// printed under the message, and in the JSON error as `lines`.
    pub lines: Vec<BadLine>,
}

/// A line of a file and what is wrong on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: u64,
    pub reason: String,
}

impl Failure {
    /// Arguments that cannot work: exit 2, before any server is asked.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            error_code: "invalid".into(),
            message: message.into(),
            lines: Vec::new(),
        }
    }

    /// A local failure of `tally` itself: exit 1.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: exit::FAILED,
            error_code: "internal".into(),
            message: message.into(),
            lines: Vec::new(),
        }
    }

    /// Writing the result failed (stdout closed or full).
    /// When the reader of stdout went away (`tally audit | head`), a quiet end with the
    /// status of a process SIGPIPE ended, as other tools give.
    pub fn printing(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            return Self {
                code: super::output::BROKEN_PIPE,
                error_code: BROKEN_PIPE.into(),
                message: String::new(),
                lines: Vec::new(),
            };
        }
        Self::internal(format!("cannot print the result: {err}"))
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::Server(body) => match body.code {
                ErrorCode::NoSeat | ErrorCode::QueueTimeout => exit::NO_SEAT,
                // Not enough credit (SPEC §11) is a refusal like any other: exit 3 is for
                // seats, which a script may wait for; credits come back only when bought.
                ErrorCode::NoCredit => exit::FAILED,
                ErrorCode::Unauthenticated | ErrorCode::Forbidden => exit::DENIED,
                // Standbys only, and no leader served the request in time.
                ErrorCode::NotLeader => exit::UNREACHABLE,
                _ => exit::FAILED,
            },
            // Reached, but no answer in time: as good as unreachable to a script.
            Error::Unreachable(_) | Error::Timeout(_) => exit::UNREACHABLE,
            // The server is not who it should be: as unauthenticated as a refused token.
            Error::Untrusted(_) => exit::DENIED,
            Error::Config(_) => exit::USAGE,
            _ => exit::FAILED,
        };
        Failure {
            code,
            error_code: err.code_str().to_string(),
            message: err.to_string(),
            lines: Vec::new(),
        }
    }
}
