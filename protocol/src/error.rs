//! The stable error codes of SPEC §4, and the error a peer receives.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable error code. Append-only: the wire carries the variant index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    NotFound,
    AlreadyExists,
    Invalid,
    NoSeat,
    UserLimit,
    Borrowed,
    HasAssignments,
    NotBorrowable,
    Expired,
    TrialLocked,
    SelfOrOwner,
    QueueTimeout,
    NotLeader,
    VersionUnsupported,
    RateLimited,
    Internal,
    /// A policy rule refuses it (SPEC §8); the message names the rule.
    Denied,
    /// A meter has not enough credit for the user (SPEC §11).
    NoCredit,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 20] = [
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::AlreadyExists,
        Self::Invalid,
        Self::NoSeat,
        Self::UserLimit,
        Self::Borrowed,
        Self::HasAssignments,
        Self::NotBorrowable,
        Self::Expired,
        Self::TrialLocked,
        Self::SelfOrOwner,
        Self::QueueTimeout,
        Self::NotLeader,
        Self::VersionUnsupported,
        Self::RateLimited,
        Self::Internal,
        Self::Denied,
        Self::NoCredit,
    ];

    /// The code as SPEC §4 spells it, e.g. `no_seat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::Invalid => "invalid",
            Self::NoSeat => "no_seat",
            Self::UserLimit => "user_limit",
            Self::Borrowed => "borrowed",
            Self::HasAssignments => "has_assignments",
            Self::NotBorrowable => "not_borrowable",
            Self::Expired => "expired",
            Self::TrialLocked => "trial_locked",
            Self::SelfOrOwner => "self_or_owner",
            Self::QueueTimeout => "queue_timeout",
            Self::NotLeader => "not_leader",
            Self::VersionUnsupported => "version_unsupported",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::Denied => "denied",
            Self::NoCredit => "no_credit",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as a peer receives it: a stable code and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "the server hit an internal error; nothing was changed. The server log has the details",
        )
    }
}
