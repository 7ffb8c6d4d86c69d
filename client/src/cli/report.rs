//! Usage reports (SPEC §10): `report usage` and `report users`, as a table, CSV or JSON.
//! The server computes them from its lease history; reports count whole UTC hours.
//! `report usage` also reads the credits consumed per meter, period and user (§11) with the
//! same query (`--feature` names a feature or a meter), shown after the features' rows, or
//! alone with `--meters`.

use serde_json::{json, Value};
use tally_protocol::{
    ErrorBody, ErrorCode, MeterUsageRow, ReportPeriod, UsageQuery, UsageRow, UserUsageRow,
    UsersQuery,
};

use super::args::ReportCommand;
use super::failure::{exit, Failure};
use super::output::{csv_cell, line, table, time, Output};
use super::values;
use crate::{Client, Error};

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

const METER_COLUMNS: [&str; 5] = ["meter", "period_start", "user", "consumed", "consumptions"];

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
    Usage {
        query: UsageQuery,
        /// `--meters`: only the credits consumed.
        meters_only: bool,
    },
    Users(UsersQuery),
}

impl Action {
    pub fn new(command: ReportCommand, json: bool) -> Result<Self, Failure> {
        let (feature, since, until, by, csv, meters_only) = match command {
            ReportCommand::Usage {
                feature,
                since,
                until,
                by,
                csv,
                meters,
            } => (feature, since, until, Some(by), csv, meters),
            ReportCommand::Users {
                feature,
                since,
                until,
                csv,
            } => (feature, since, until, None, csv, false),
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
            Some(by) => Query::Usage {
                query: UsageQuery {
                    feature,
                    since,
                    until,
                    by: period(&by)?,
                },
                meters_only,
            },
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
            Query::Usage {
                query,
                meters_only: true,
            } => meters(out, &client.report_meters(query).await?, self.csv, true),
            Query::Usage {
                query,
                meters_only: false,
            } => {
                let (features, metered) = usage_and_meters(client, query).await?;
                usage(out, &features, &metered, self.csv)
            }
            Query::Users(query) => users(out, &client.report_users(query).await?, self.csv),
        }
        .map_err(Failure::printing)?;
        Ok(exit::OK)
    }
}

/// The features' usage and the meters' consumption for one query. `--feature` names a
/// feature or a meter, so one side's `not_found` is an empty side when the other answered;
/// when both say `not_found`, the report fails with both messages. Any other refusal of
/// either side fails it. The meters are asked only once the features' report came back
/// served or `not_found`, so that a refusal (`forbidden`) is asked and audited once.
async fn usage_and_meters(
    client: &Client,
    query: UsageQuery,
) -> Result<(Vec<UsageRow>, Vec<MeterUsageRow>), Error> {
    // The features' rows, or the `not_found` that may be a meter's name.
    let features = match client.report_usage(query.clone()).await {
        Ok(rows) => Ok(rows),
        Err(err) => match not_found(&err) {
            Some(body) => Err(body.clone()),
            None => return Err(err),
        },
    };
    let metered = client.report_meters(query).await;
    match (features, metered) {
        (Ok(features), Ok(metered)) => Ok((features, metered)),
        (Err(_), Ok(metered)) => Ok((Vec::new(), metered)),
        (Ok(features), Err(err)) if not_found(&err).is_some() => Ok((features, Vec::new())),
        (Err(features), Err(err)) => match not_found(&err) {
            Some(meters) => Err(Error::Server(ErrorBody::not_found(format!(
                "{}; nor is it a meter: {}",
                features.message, meters.message
            )))),
            None => Err(err),
        },
        (Ok(_), Err(err)) => Err(err),
    }
}

/// The server's `not_found`, if that is the error.
fn not_found(err: &Error) -> Option<&ErrorBody> {
    match err {
        Error::Server(body) if body.code == ErrorCode::NotFound => Some(body),
        _ => None,
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

fn meter_cells(row: &MeterUsageRow) -> Vec<String> {
    vec![
        row.meter.clone(),
        time(row.period_start),
        row.user.clone(),
        row.consumed.to_string(),
        row.consumptions.to_string(),
    ]
}

fn meter_json(r: &MeterUsageRow) -> Value {
    json!({
        "meter": r.meter,
        "period_start": time(r.period_start),
        "user": r.user,
        "consumed": r.consumed,
        "consumptions": r.consumptions,
    })
}

/// The heading of the meters' table under the features'.
const METERS_HEADING: &str = "Credits consumed";

/// `report usage --meters`: `{"meters": [{"meter", "period_start", "user", "consumed",
/// "consumptions"}]}`, CSV, or a table (`alone`: with nothing printed before it).
fn meters(out: &Output, rows: &[MeterUsageRow], csv: bool, alone: bool) -> std::io::Result<()> {
    if csv {
        return write_csv(&METER_COLUMNS, rows.iter().map(meter_cells));
    }
    if out.is_json() {
        let list: Vec<Value> = rows.iter().map(meter_json).collect();
        out.doc(json!({ "meters": list }));
        return Ok(());
    }
    if rows.is_empty() {
        if alone {
            line("no credits consumed in that range");
        }
        return Ok(());
    }
    if !alone {
        line("");
    }
    line(METERS_HEADING);
    table(&METER_COLUMNS, rows.iter().map(meter_cells).collect());
    Ok(())
}

/// `{"usage": [{"feature", "period_start", "pool", "peak_in_use", "seat_hours",
/// "utilisation", "checkouts", "denials", "distinct_users"}], "meters": [...]}`, the
/// features' CSV (unchanged by meters), or the features' table and, when credits were
/// consumed, the meters' table under "Credits consumed".
fn usage(
    out: &Output,
    rows: &[UsageRow],
    metered: &[MeterUsageRow],
    csv: bool,
) -> std::io::Result<()> {
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
        let metered: Vec<Value> = metered.iter().map(meter_json).collect();
        out.doc(json!({ "usage": list, "meters": metered }));
        return Ok(());
    }
    if rows.is_empty() {
        line("no usage in that range");
    } else {
        table(&USAGE_COLUMNS, rows.iter().map(usage_cells).collect());
    }
    meters(out, metered, false, false)
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
