//! The messages of the notification outbox (SPEC §9, R20): how delivery to each sink
//! stands (`NotifyStatus`), and a test notification sent straight to every sink
//! (`NotifyTest`). Both are for admins.

use serde::{Deserialize, Serialize};

/// The answer to `NotifyStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStatus {
    /// Notifications not yet settled: some sink configured has neither delivered them nor
    /// given up.
    pub pending: u64,
    /// Notifications that at least one sink gave up on after its last attempt.
    pub failed: u64,
    /// Every sink configured, the log first.
    pub sinks: Vec<SinkStatus>,
}

/// How delivery to one sink stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// The sink as people read it: `log`, `email`, `webhook https://host/path` (never a
    /// secret, nor a URL's credentials or query).
    pub sink: String,
    /// Notifications it has delivered.
    pub delivered: u64,
    /// Notifications it gave up on.
    pub failed: u64,
    /// The latest error it met, if any.
    pub last_error: Option<String>,
}

/// The outcome of the test notification at one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkOutcome {
    /// The sink, as in [`SinkStatus::sink`].
    pub sink: String,
    /// Why it failed; `None` when it was delivered.
    pub error: Option<String>,
}
