//! Wire types and framing of the Tally license protocol.
//!
//! Everything a client and the daemon say to each other is defined here, and nothing else:
//! this crate knows nothing of sockets, TLS or SQL. A connection carries length-delimited
//! frames (a 4-byte big-endian length, then a postcard-encoded message) through
//! [`Connection`], which works over any async byte stream.
//!
//! Postcard encodes an enum variant by its index, so every enum here is **append-only**:
//! never reorder or remove a variant, never add a field to an existing struct. The golden-bytes
//! tests in `tests.rs` fail if that happens. The only fields added since are at the end of
//! `ServerInfo`, the last message of its frame: `cluster`, then `listen` and `lease_ttl_ms`.
//! Older clients skip them (postcard ignores what follows a decoded value); a client of this
//! build cannot read the `ServerInfo` of a server built before them.

mod borrow;
mod bulk;
mod connection;
mod credits;
mod error;
mod ids;
mod message;
mod names;
mod notify;
mod policy;
mod report;
pub mod text;
mod time;
mod validate;

pub use borrow::{
    decode_token, key_id, BorrowClaims, SignedClaims, TokenError, MAX_CHAIN, TOKEN_PREFIX,
    TOKEN_PREFIX_V1,
};
pub use bulk::{
    Bulk, BulkFailure, BulkOutcome, BulkRow, BulkRows, BulkToken, UserSeen, MAX_BULK_FRAME,
    MAX_BULK_REASON, MAX_BULK_ROWS,
};
pub use connection::{Connection, FrameError, MAX_RESPONSE_FRAME};
pub use credits::{
    validate_amount, Consume, Consumed, CreditsAdd, MeterInfo, MeterQuery, MeterUsageQuery,
    MeterUsageRow, PurchaseInfo, QuotaInfo, QuotaRef, QuotaSet, MAX_CREDITS,
};
pub use error::{ErrorBody, ErrorCode};
pub use ids::{ClientId, LeaseId, LeasePattern, ParseIdError, RequestId, MIN_PATTERN_DIGITS};
pub use message::*;
pub use names::{validate_feature, validate_username, FEATURE_MAX_LEN};
pub use notify::{NotifyStatus, SinkOutcome, SinkStatus};
pub use policy::{
    validate_group, FeatureFigures, GroupAdd, GroupInfo, GroupMembers, GroupRef, Member, PolicyAdd,
    PolicyCheck, PolicyDecision, PolicyQuery, RuleAdded, RuleEffect, RuleInfo, RuleKind, RuleRef,
    RuleSpec, GROUP_MAX_LEN, HOST_PATTERN_MAX_LEN, MAX_GROUP_MEMBERS,
};
pub use report::{
    validate_range, ReportPeriod, UsageQuery, UsageRow, UserUsageRow, UsersQuery,
    DEFAULT_REPORT_RANGE_MS, HOUR_MS, MAX_REPORT_ROWS,
};
pub use time::{format_time, format_time_millis, now_millis, validate_time, MAX_TIME, MIN_TIME};
pub use validate::{validate_duration_secs, validate_seats, MAX_DURATION_SECS, MAX_SEATS};

/// The protocol version this build speaks. A `Hello` with another version is refused with
/// `version_unsupported`.
pub const PROTOCOL_VERSION: u16 = 1;

/// The port `tallyd` listens on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 27010;

/// The largest frame accepted by default (64 KiB). A larger length prefix closes the
/// connection before anything is allocated.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// How many bytes `message` takes on the wire, for checking a request against a frame
/// limit before sending it.
pub fn encoded_len<M: serde::Serialize>(message: &M) -> usize {
    postcard::experimental::serialized_size(message).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
