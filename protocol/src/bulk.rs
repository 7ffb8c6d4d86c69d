//! Bulk administration (SPEC §9, R19): one request carrying every row of a CSV file, each
//! row with its line number, and one answer saying how many applied and which failed; and
//! the user listing with each user's last sign-in, for `tally user list --csv`.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::message::{Assign, Revoke, UnixMillis, UserAdd, UserInfo, UserRef};

/// The most rows one bulk request may carry. With the longest e-mail addresses and names
/// the request stays under [`MAX_BULK_FRAME`] and its answer (a failure or a token per row)
/// under [`MAX_RESPONSE_FRAME`](crate::MAX_RESPONSE_FRAME).
pub const MAX_BULK_ROWS: usize = 20_000;

/// The largest frame a server reads from a signed-in admin (8 MiB): a bulk request. Others,
/// and everyone before signing in, stay under `limits.max_frame`.
pub const MAX_BULK_FRAME: usize = 8 * 1024 * 1024;

/// The longest reason a failed row carries in the answer, in characters.
pub const MAX_BULK_REASON: usize = 300;

/// Every row of one bulk file (admins); answered with [`Response::Bulk`](crate::Response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bulk {
    pub rows: BulkRows,
    /// Check every row as it would apply, store nothing and mint no token.
    pub dry_run: bool,
    /// Import only: mint each new user's first token and send it back. Without it the
    /// users are created with no token; `tally user token EMAIL` mints one later.
    pub tokens: bool,
}

/// The rows of a bulk file, in file order, of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BulkRows {
    /// `tally user import`: `email,role,name`.
    Import(Vec<BulkRow<UserAdd>>),
    /// `tally user remove --csv`: `email`.
    Remove(Vec<BulkRow<UserRef>>),
    /// `tally user deactivate --csv`: `email`.
    Deactivate(Vec<BulkRow<UserRef>>),
    /// `tally assign --csv`: `email,feature,seats,entitlement`.
    Assign(Vec<BulkRow<Assign>>),
    /// `tally revoke --csv`: `email,feature,seats`.
    Revoke(Vec<BulkRow<Revoke>>),
}

impl BulkRows {
    /// How many rows.
    pub fn len(&self) -> usize {
        match self {
            BulkRows::Import(rows) => rows.len(),
            BulkRows::Remove(rows) | BulkRows::Deactivate(rows) => rows.len(),
            BulkRows::Assign(rows) => rows.len(),
            BulkRows::Revoke(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One row of a bulk file: the request it stands for and where it is in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRow<T> {
    /// The file's physical line number (the header is line 1).
    pub line: u64,
    pub row: T,
}

/// The answer to a bulk request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BulkOutcome {
    /// How many rows applied (with a dry run: would apply).
    pub applied: u32,
    /// The rows refused, in file order.
    pub failed: Vec<BulkFailure>,
    /// Import with tokens: the first token of each user created, in file order.
    pub tokens: Vec<BulkToken>,
}

/// A row refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkFailure {
    pub line: u64,
    pub email: String,
    pub code: ErrorCode,
    /// The refusal's message, cut at [`MAX_BULK_REASON`] characters.
    pub reason: String,
}

/// A new user's first token (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkToken {
    pub line: u64,
    pub email: String,
    pub token: String,
}

/// A user with the last time any of their tokens signed in; the answer to `UsersSeen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSeen {
    pub user: UserInfo,
    /// The latest `last_used` of the user's tokens; absent when none was ever used.
    pub last_seen: Option<UnixMillis>,
}
