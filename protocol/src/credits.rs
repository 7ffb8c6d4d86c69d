//! Metered credits (SPEC §11, R21): purchases into a meter's pool, each user's access to it
//! (none, a quota, or unlimited), and consumptions applied exactly once per request id.
//!
//! A meter is named like a feature. Amounts are whole units of at least 1.

use serde::{Deserialize, Serialize};

use crate::ids::RequestId;
use crate::message::UnixMillis;
use crate::report::UsageQuery;

/// The largest amount one purchase or one consumption may name, and the largest quota: far
/// above any real purchase, and low enough that a meter's sums stay exact in an `i64` column.
pub const MAX_CREDITS: u64 = 1 << 48;

/// `credits add`: credits bought into a meter's pool (admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsAdd {
    pub meter: String,
    pub amount: u64,
    /// When what is left of them stops counting; `None`: never.
    pub expires_at: Option<UnixMillis>,
    /// Free text, e.g. the order number.
    pub reference: String,
}

/// A purchase, as `credits add` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseInfo {
    pub id: u64,
    pub meter: String,
    pub amount: u64,
    pub expires_at: Option<UnixMillis>,
    pub reference: String,
}

/// `credits status` and `quota list`: one meter, or every meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterQuery {
    pub meter: Option<String>,
}

/// A meter's figures: `balance = purchased − consumed − expired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterInfo {
    pub meter: String,
    pub purchased: u64,
    pub consumed: u64,
    /// What expired purchases had left when they ended.
    pub expired: u64,
    pub balance: u64,
}

/// `quota set`: gives a user a quota of a meter, or unlimited access (admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaSet {
    pub username: String,
    pub meter: String,
    /// `None`: unlimited.
    pub quota: Option<u64>,
}

/// `quota remove`: takes a user's access to a meter away (admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRef {
    pub username: String,
    pub meter: String,
}

/// A user's access to a meter and what they have consumed of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaInfo {
    pub user: String,
    pub meter: String,
    /// The quota; `None` when unlimited or without access.
    pub quota: Option<u64>,
    pub unlimited: bool,
    /// Consumed by the user so far (kept when access is taken away and given again).
    pub used: u64,
    /// What the quota has left; `None` when unlimited, 0 without access.
    pub remaining: Option<u64>,
}

/// `consume`: takes `amount` credits of a meter from its pool for the signed-in user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consume {
    /// Chosen by the client and reused on every retry: the server answers a request id it
    /// has seen with its first answer, and consumes nothing again.
    pub request_id: RequestId,
    pub meter: String,
    pub amount: u64,
}

/// A consumption granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumed {
    pub consumed: u64,
    /// The meter's balance right after it.
    pub balance: u64,
    /// What the user's quota has left right after it; `None` when unlimited.
    pub remaining: Option<u64>,
}

/// `ReportMeters`: credits consumed per meter, period and user (admins). The query's
/// `feature` names a meter.
pub type MeterUsageQuery = UsageQuery;

/// What one user consumed of one meter in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterUsageRow {
    pub meter: String,
    /// The period's start (a whole hour, day, Monday or first of a month, UTC).
    pub period_start: UnixMillis,
    pub user: String,
    /// Credits consumed.
    pub consumed: u64,
    /// How many consumptions.
    pub consumptions: u64,
}

impl CreditsAdd {
    pub fn validate(&self) -> Result<(), String> {
        validate_amount("amount", self.amount)?;
        match self.expires_at {
            Some(at) => crate::time::validate_time("expires", at),
            None => Ok(()),
        }
    }
}

impl QuotaSet {
    pub fn validate(&self) -> Result<(), String> {
        match self.quota {
            Some(quota) if quota > MAX_CREDITS => Err(format!(
                "a quota of {quota} is more than the largest, {MAX_CREDITS}"
            )),
            _ => Ok(()),
        }
    }
}

impl Consume {
    pub fn validate(&self) -> Result<(), String> {
        validate_amount("amount", self.amount)
    }
}

/// An amount of credits is a whole number from 1 to [`MAX_CREDITS`].
pub fn validate_amount(what: &str, amount: u64) -> Result<(), String> {
    match amount {
        0 => Err(format!(
            "the {what} of credits must be a whole number of at least 1"
        )),
        n if n > MAX_CREDITS => Err(format!(
            "the {what} of credits, {n}, is more than the largest, {MAX_CREDITS}"
        )),
        _ => Ok(()),
    }
}
