//! Usage reports (SPEC §10): how much of each feature was used, period by period
//! (`ReportUsage`), and by whom (`ReportUsers`). Both are for admins. Reports count whole
//! UTC hours: the server rounds `since` down and `until` up to the hour, and never reads
//! past the current hour.

use serde::{Deserialize, Serialize};

use crate::message::UnixMillis;
use crate::time::validate_time;

/// One hour, in milliseconds: the grain of every report.
pub const HOUR_MS: i64 = 3_600_000;

/// The range a report reads when the request names none: the last 7 days up to now.
pub const DEFAULT_REPORT_RANGE_MS: i64 = 7 * 24 * HOUR_MS;

/// The most rows one `ReportUsage` answer may hold (features × periods); a larger report
/// is refused `invalid`, asking for a shorter range, a longer period or one feature.
pub const MAX_REPORT_ROWS: u64 = 100_000;

/// The length of a report's periods, in UTC: weeks are ISO weeks (from Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportPeriod {
    Hour,
    Day,
    Week,
    Month,
}

impl ReportPeriod {
    /// The name as `--by` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportPeriod::Hour => "hour",
            ReportPeriod::Day => "day",
            ReportPeriod::Week => "week",
            ReportPeriod::Month => "month",
        }
    }
}

/// `ReportUsage`: usage per feature and period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageQuery {
    /// One feature, or every feature with history in the range.
    pub feature: Option<String>,
    /// The start of the range (rounded down to the hour); default: `until` less 7 days.
    pub since: Option<UnixMillis>,
    /// The end of the range, excluded (rounded up to the hour); default: now.
    pub until: Option<UnixMillis>,
    pub by: ReportPeriod,
}

/// `ReportUsers`: usage per user and feature over the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersQuery {
    pub feature: Option<String>,
    pub since: Option<UnixMillis>,
    pub until: Option<UnixMillis>,
}

/// Checks the times of a report's range: each within the times a request may name, and
/// `since` before `until` when both are given.
pub fn validate_range(since: Option<UnixMillis>, until: Option<UnixMillis>) -> Result<(), String> {
    if let Some(since) = since {
        validate_time("since", since)?;
    }
    if let Some(until) = until {
        validate_time("until", until)?;
    }
    match (since, until) {
        (Some(since), Some(until)) if since >= until => Err(format!(
            "since ({}) must come before until ({})",
            crate::format_time(since),
            crate::format_time(until)
        )),
        _ => Ok(()),
    }
}

impl UsageQuery {
    pub fn validate(&self) -> Result<(), String> {
        validate_range(self.since, self.until)
    }
}

impl UsersQuery {
    pub fn validate(&self) -> Result<(), String> {
        validate_range(self.since, self.until)
    }
}

/// One feature in one period. Figures are exact integers; clients derive
/// `seat_hours = seat_ms / 3,600,000` and `utilisation = seat_ms / (pool × period_ms)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub feature: String,
    /// The period's start (a whole hour, day, Monday or first of a month, UTC).
    pub period_start: UnixMillis,
    /// How much of the period the report covers (the range may cut a period short).
    pub period_ms: i64,
    /// The largest pool of the feature at any instant of the period.
    pub pool: u32,
    /// The largest number of seats held at once (online and borrowed) in the period.
    pub peak_in_use: u32,
    /// Seat-milliseconds held in the period.
    pub seat_ms: u64,
    /// Seats granted (checkouts and borrows) in the period.
    pub checkouts: u64,
    /// Checkouts, queued checkouts and borrows refused `no_seat`, `denied` or
    /// `queue_timeout` in the period.
    pub denials: u64,
    /// Users who held a seat of the feature in the period.
    pub distinct_users: u32,
}

impl UsageRow {
    /// Seat-hours held in the period.
    pub fn seat_hours(&self) -> f64 {
        self.seat_ms as f64 / HOUR_MS as f64
    }

    /// `seat_hours / (pool × hours in the period)`; 0 when the pool was empty.
    pub fn utilisation(&self) -> f64 {
        let capacity = f64::from(self.pool) * self.period_ms as f64;
        if capacity > 0.0 {
            self.seat_ms as f64 / capacity
        } else {
            0.0
        }
    }
}

/// One user's use of one feature over the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsageRow {
    pub user: String,
    pub feature: String,
    pub seat_ms: u64,
    pub checkouts: u64,
    pub denials: u64,
    /// The last instant in the range at which the user held a seat of the feature; `None`
    /// when they only were refused.
    pub last_used: Option<UnixMillis>,
}

impl UserUsageRow {
    pub fn seat_hours(&self) -> f64 {
        self.seat_ms as f64 / HOUR_MS as f64
    }
}
