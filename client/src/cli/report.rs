//! Usage reports (SPEC §10): `report usage` and `report users`, as a table, CSV or JSON.
//! The server computes them from its lease history; reports count whole UTC hours.

use serde_json::{json, Value};
use tally_protocol::{ReportPeriod, UsageQuery, UsageRow, UserUsageRow, UsersQuery};

use super::args::ReportCommand;
use super::failure::{exit, Failure};
use super::output::{csv_cell, line, table, time, Output};
use super::values;
use crate::Client;

const USAGE_COLUMNS: [&str; 9] = [
    "feature",
    "period_start",
    "pool",
    "peak_in_use",
    "seat_hours",
    "utilisation",
    "checkouts",
    "denials",
    "distinct_users",
];

const USER_COLUMNS: [&str; 6] = [
    "user",
    "feature",
    "seat_hours",
    "checkouts",
    "denials",
    "last_used",
];

/// A report, checked and ready to send.
pub struct Action {
    query: Query,
    csv: bool,
}

enum Query {
    Usage(UsageQuery),
    Users(UsersQuery),
}

impl Action {
    pub fn new(command: ReportCommand, json: bool) -> Result<Self, Failure> {
        let (feature, since, until, by, csv) = match command {
            ReportCommand::Usage {
                feature,
                since,
                until,
                by,
                csv,
            } => (feature, since, until, Some(by), csv),
            ReportCommand::Users {
                feature,
                since,
                until,
                csv,
            } => (feature, since, until, None, csv),
        };
        if csv && json {
            return Err(Failure::usage(
                "--csv and --json ask for two formats; give one of them",
            ));
        }
        let feature = values::feature_opt(feature)?;
        let since = values::start_opt(since.as_deref())?;
        let until = values::start_opt(until.as_deref())?;
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                return Err(Failure::usage(format!(
                    "--since {} is not before --until {}; give a range that starts before it ends",
                    time(s),
                    time(u)
                )));
            }
        }
        let query = match by {
            Some(by) => Query::Usage(UsageQuery {
                feature,
                since,
                until,
                by: period(&by)?,
            }),
            None => Query::Users(UsersQuery {
                feature,
                since,
                until,
            }),
        };
        Ok(Action { query, csv })
    }

    pub async fn run(self, client: &Client, out: &Output) -> Result<u8, Failure> {
        match self.query {
            Query::Usage(query) => usage(out, &client.report_usage(query).await?, self.csv),
            Query::Users(query) => users(out, &client.report_users(query).await?, self.csv),
        }
        .map_err(Failure::printing)?;
        Ok(exit::OK)
    }
}

/// `--by`: hour, day, week or month.
fn period(text: &str) -> Result<ReportPeriod, Failure> {
    match text.trim().to_ascii_lowercase().as_str() {
        "hour" => Ok(ReportPeriod::Hour),
        "day" => Ok(ReportPeriod::Day),
        "week" => Ok(ReportPeriod::Week),
        "month" => Ok(ReportPeriod::Month),
        _ => Err(Failure::usage(format!(
            "--by {text} is not a period; give hour, day, week or month"
        ))),
    }
}

/// Seat-hours and utilisation to 3 decimals for people and CSV; JSON keeps the number.
fn decimal(value: f64) -> String {
    format!("{value:.3}")
}

fn usage_cells(row: &UsageRow) -> Vec<String> {
    vec![
        row.feature.clone(),
        time(row.period_start),
        row.pool.to_string(),
        row.peak_in_use.to_string(),
        decimal(row.seat_hours()),
        decimal(row.utilisation()),
        row.checkouts.to_string(),
        row.denials.to_string(),
        row.distinct_users.to_string(),
    ]
}

fn user_cells(row: &UserUsageRow) -> Vec<String> {
    vec![
        row.user.clone(),
        row.feature.clone(),
        decimal(row.seat_hours()),
        row.checkouts.to_string(),
        row.denials.to_string(),
        row.last_used.map(time).unwrap_or_default(),
    ]
}

fn write_csv(columns: &[&str], rows: impl Iterator<Item = Vec<String>>) -> std::io::Result<()> {
    let mut writer = csv::Writer::from_writer(super::output::stdout());
    writer.write_record(columns)?;
    for cells in rows {
        writer.write_record(cells.iter().map(|cell| csv_cell(cell).into_owned()))?;
    }
    writer.flush()
}

/// `{"usage": [{"feature", "period_start", "pool", "peak_in_use", "seat_hours",
/// "utilisation", "checkouts", "denials", "distinct_users"}]}`, CSV, or a table.
fn usage(out: &Output, rows: &[UsageRow], csv: bool) -> std::io::Result<()> {
    if csv {
        return write_csv(&USAGE_COLUMNS, rows.iter().map(usage_cells));
    }
    if out.is_json() {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "feature": r.feature,
                    "period_start": time(r.period_start),
                    "pool": r.pool,
                    "peak_in_use": r.peak_in_use,
                    "seat_hours": r.seat_hours(),
                    "utilisation": r.utilisation(),
                    "checkouts": r.checkouts,
                    "denials": r.denials,
                    "distinct_users": r.distinct_users,
                })
            })
            .collect();
        out.doc(json!({ "usage": list }));
        return Ok(());
    }
    if rows.is_empty() {
        line("no usage in that range");
        return Ok(());
    }
    table(&USAGE_COLUMNS, rows.iter().map(usage_cells).collect());
    Ok(())
}

/// `{"users": [{"user", "feature", "seat_hours", "checkouts", "denials", "last_used"}]}`,
/// CSV, or a table.
fn users(out: &Output, rows: &[UserUsageRow], csv: bool) -> std::io::Result<()> {
    if csv {
        return write_csv(&USER_COLUMNS, rows.iter().map(user_cells));
    }
    if out.is_json() {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "user": r.user,
                    "feature": r.feature,
                    "seat_hours": r.seat_hours(),
                    "checkouts": r.checkouts,
                    "denials": r.denials,
                    "last_used": r.last_used.map(time),
                })
            })
            .collect();
        out.doc(json!({ "users": list }));
        return Ok(());
    }
    if rows.is_empty() {
        line("no usage in that range");
        return Ok(());
    }
    table(&USER_COLUMNS, rows.iter().map(user_cells).collect());
    Ok(())
}
