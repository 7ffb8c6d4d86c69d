//! The codes every call returns, the calling thread's last error message, and the guard
//! that keeps panics and Rust errors on this side of the boundary.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tally_client::protocol::ErrorCode;
use tally_client::Error;

/// What a call returns: `TALLY_CODE_OK`, one of the server's error codes (SPEC §4, values
/// 1 to 20), or a failure on the client's side (values from 100). `tally_code_str` gives
/// each its stable name (`"no_seat"`); `tally_last_error` the sentence that goes with it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TallyCode {
    /// Success.
    Ok = 0,
    /// The token is unknown, revoked, or its account is not active.
    Unauthenticated = 1,
    /// The account's role does not allow the request.
    Forbidden = 2,
    /// No such feature, lease, user, entitlement or borrow.
    NotFound = 3,
    AlreadyExists = 4,
    /// The request is malformed (for example zero seats).
    Invalid = 5,
    /// No seat of the feature is free (after `wait_ms`, for a waiting checkout).
    NoSeat = 6,
    UserLimit = 7,
    /// The seats are borrowed and cannot be changed until they return.
    Borrowed = 8,
    HasAssignments = 9,
    /// The feature's entitlements do not allow borrowing.
    NotBorrowable = 10,
    Expired = 11,
    TrialLocked = 12,
    SelfOrOwner = 13,
    /// A queued checkout waited too long (reserved: servers have no queue yet).
    QueueTimeout = 14,
    /// Only standbys answered; no leader served the request in time.
    NotLeader = 15,
    /// The server speaks another protocol version.
    VersionUnsupported = 16,
    /// Too many failed sign-ins from this address; try again later.
    RateLimited = 17,
    /// A policy rule refuses the request (reserved: servers send it from SPEC §8 on).
    Denied = 18,
    /// The account has no credit left (reserved: servers send it from SPEC §11 on).
    NoCredit = 19,
    /// The server hit an internal error; nothing was changed.
    Internal = 20,
    /// No server of the list could be reached.
    Unreachable = 100,
    /// A server's certificate does not verify against the configured CA.
    Untrusted = 101,
    /// A server was connected but did not answer in time; a change may or may not have
    /// been applied.
    Timeout = 102,
    /// The connection dropped while a request that must not be resent was in flight.
    ConnectionLost = 103,
    /// The client file, CA, token or a server address is missing or wrong.
    InvalidConfig = 104,
    /// The server said something this library cannot understand.
    Protocol = 105,
    /// The client has stopped.
    Closed = 106,
    /// An argument is NULL where it may not be, or is not UTF-8.
    InvalidArgument = 107,
    /// A bug in libtally: the call failed and told why in `tally_last_error`.
    Panic = 108,
}

/// Every code with its name, for `tally_code_str`.
const NAMES: [(TallyCode, &str); 30] = [
    (TallyCode::Ok, "ok\0"),
    (TallyCode::Unauthenticated, "unauthenticated\0"),
    (TallyCode::Forbidden, "forbidden\0"),
    (TallyCode::NotFound, "not_found\0"),
    (TallyCode::AlreadyExists, "already_exists\0"),
    (TallyCode::Invalid, "invalid\0"),
    (TallyCode::NoSeat, "no_seat\0"),
    (TallyCode::UserLimit, "user_limit\0"),
    (TallyCode::Borrowed, "borrowed\0"),
    (TallyCode::HasAssignments, "has_assignments\0"),
    (TallyCode::NotBorrowable, "not_borrowable\0"),
    (TallyCode::Expired, "expired\0"),
    (TallyCode::TrialLocked, "trial_locked\0"),
    (TallyCode::SelfOrOwner, "self_or_owner\0"),
    (TallyCode::QueueTimeout, "queue_timeout\0"),
    (TallyCode::NotLeader, "not_leader\0"),
    (TallyCode::VersionUnsupported, "version_unsupported\0"),
    (TallyCode::RateLimited, "rate_limited\0"),
    (TallyCode::Denied, "denied\0"),
    (TallyCode::NoCredit, "no_credit\0"),
    (TallyCode::Internal, "internal\0"),
    (TallyCode::Unreachable, "unreachable\0"),
    (TallyCode::Untrusted, "untrusted\0"),
    (TallyCode::Timeout, "timeout\0"),
    (TallyCode::ConnectionLost, "connection_lost\0"),
    (TallyCode::InvalidConfig, "invalid_config\0"),
    (TallyCode::Protocol, "protocol\0"),
    (TallyCode::Closed, "closed\0"),
    (TallyCode::InvalidArgument, "invalid_argument\0"),
    (TallyCode::Panic, "panic\0"),
];

impl TallyCode {
    /// The code's stable name, NUL-terminated; `None` for a number that is no code.
    pub(crate) fn name(code: c_int) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(known, _)| *known as c_int == code)
            .map(|(_, name)| *name)
    }

    fn of_server(code: ErrorCode) -> TallyCode {
        match code {
            ErrorCode::Unauthenticated => TallyCode::Unauthenticated,
            ErrorCode::Forbidden => TallyCode::Forbidden,
            ErrorCode::NotFound => TallyCode::NotFound,
            ErrorCode::AlreadyExists => TallyCode::AlreadyExists,
            ErrorCode::Invalid => TallyCode::Invalid,
            ErrorCode::NoSeat => TallyCode::NoSeat,
            ErrorCode::UserLimit => TallyCode::UserLimit,
            ErrorCode::Borrowed => TallyCode::Borrowed,
            ErrorCode::HasAssignments => TallyCode::HasAssignments,
            ErrorCode::NotBorrowable => TallyCode::NotBorrowable,
            ErrorCode::Expired => TallyCode::Expired,
            ErrorCode::TrialLocked => TallyCode::TrialLocked,
            ErrorCode::SelfOrOwner => TallyCode::SelfOrOwner,
            ErrorCode::QueueTimeout => TallyCode::QueueTimeout,
            ErrorCode::NotLeader => TallyCode::NotLeader,
            ErrorCode::VersionUnsupported => TallyCode::VersionUnsupported,
            ErrorCode::RateLimited => TallyCode::RateLimited,
            ErrorCode::Internal => TallyCode::Internal,
            ErrorCode::Denied => TallyCode::Denied,
            ErrorCode::NoCredit => TallyCode::NoCredit,
        }
    }
}

/// A failed call: its code and the sentence for `tally_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: TallyCode,
    pub message: String,
}

impl Failure {
    pub fn argument(message: impl Into<String>) -> Failure {
        Failure {
            code: TallyCode::InvalidArgument,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        let code = match &err {
            Error::Server(body) => TallyCode::of_server(body.code),
            Error::Unreachable(_) => TallyCode::Unreachable,
            Error::Untrusted(_) => TallyCode::Untrusted,
            Error::ConnectionLost(_) => TallyCode::ConnectionLost,
            Error::Timeout(_) => TallyCode::Timeout,
            Error::Config(_) => TallyCode::InvalidConfig,
            Error::Protocol(_) => TallyCode::Protocol,
            Error::Closed => TallyCode::Closed,
        };
        Failure {
            code,
            message: err.to_string(),
        }
    }
}

thread_local! {
    /// The message of the calling thread's last failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Keeps `message` as this thread's last error.
fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\u{fffd}")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// This thread's last error message; valid until this thread's next failing call.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Runs the body of an exported function: its failure, or a panic, becomes a code and this
/// thread's last error; nothing unwinds into the caller.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> TallyCode {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => TallyCode::Ok,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.code
        }
        Err(panic) => {
            set_last_error(&panic_message(&*panic));
            TallyCode::Panic
        }
    }
}

/// Runs the body of an exported function that returns a value, `fallback` if it panics.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(panic) => {
            set_last_error(&panic_message(&*panic));
            fallback
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("libtally failed inside ({what}); this is a bug, please report it")
}
