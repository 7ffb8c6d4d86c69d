//! The notification outbox (SPEC §9, R20): `notify status` and `notify test`.

use serde_json::{json, Value};
use tally_protocol::{NotifyStatus, SinkOutcome};

use super::args::NotifyCommand;
use super::failure::{exit, Failure};
use super::output::{line, table, Output};
use crate::Client;

/// A notify command, ready to send.
pub enum Action {
    Status,
    Test,
}

impl Action {
    pub fn new(command: NotifyCommand) -> Self {
        match command {
            NotifyCommand::Status => Action::Status,
            NotifyCommand::Test => Action::Test,
        }
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self {
            Action::Status => {
                status(out, &client.notify_status().await?);
                Ok(exit::OK)
            }
            Action::Test => {
                let outcomes = client.notify_test().await?;
                tested(out, &outcomes);
                if outcomes.iter().any(|o| o.error.is_some()) {
                    Ok(exit::FAILED)
                } else {
                    Ok(exit::OK)
                }
            }
        }
    }
}

/// `{"pending", "failed", "sinks": [{"sink", "delivered", "failed", "last_error"}]}`, or a
/// line and a table for people.
fn status(out: &Output, status: &NotifyStatus) {
    if out.is_json() {
        let sinks: Vec<Value> = status
            .sinks
            .iter()
            .map(|s| {
                json!({
                    "sink": s.sink,
                    "delivered": s.delivered,
                    "failed": s.failed,
                    "last_error": s.last_error,
                })
            })
            .collect();
        return out.doc(json!({
            "pending": status.pending,
            "failed": status.failed,
            "sinks": sinks,
        }));
    }
    line(&format!(
        "{} notification(s) pending, {} given up by a sink",
        status.pending, status.failed
    ));
    let rows = status
        .sinks
        .iter()
        .map(|s| {
            vec![
                s.sink.clone(),
                s.delivered.to_string(),
                s.failed.to_string(),
                s.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["sink", "delivered", "failed", "last error"], rows);
}

/// `{"sinks": [{"sink", "ok", "error"}]}`, or a line per sink for people.
fn tested(out: &Output, outcomes: &[SinkOutcome]) {
    if out.is_json() {
        let sinks: Vec<Value> = outcomes
            .iter()
            .map(|o| json!({ "sink": o.sink, "ok": o.error.is_none(), "error": o.error }))
            .collect();
        return out.doc(json!({ "sinks": sinks }));
    }
    for outcome in outcomes {
        match &outcome.error {
            None => line(&format!("{}: delivered", outcome.sink)),
            Some(error) => line(&format!("{}: failed: {error}", outcome.sink)),
        }
    }
}
