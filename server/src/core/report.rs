//! Usage reports (SPEC §10) computed from the hourly rollups of `history`, free of I/O so
//! that the property tests can compare them with a brute-force count of the leases.
//!
//! The engine settles the range ([`report_range`]) and its periods ([`periods`]), the
//! store reads the rollup rows of the range, the last state before it, the users who held
//! a seat in each period according to the rows, and the leases still open, all in one
//! snapshot ([`UsageData`], [`UsersData`]); [`usage`] and [`users`] make the answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_protocol::{ReportPeriod, UsageRow, UserUsageRow, DEFAULT_REPORT_RANGE_MS, HOUR_MS};

use super::history::{hour_of, UsageHour};

const DAY_MS: i64 = 24 * HOUR_MS;

/// The whole hours a report reads: `since` rounded down and `until` rounded up to the
/// hour, `until` no later than the end of the current hour. Defaults: `until` now, `since`
/// 7 days before `until`. `None` when nothing is left (a range wholly in the future).
pub fn report_range(since: Option<i64>, until: Option<i64>, now: i64) -> Option<(i64, i64)> {
    let ceil = |t: i64| hour_of(t.saturating_add(HOUR_MS - 1));
    let until = ceil(until.unwrap_or(now)).min(ceil(now));
    let since = hour_of(since.unwrap_or(until.saturating_sub(DEFAULT_REPORT_RANGE_MS)));
    (since < until).then_some((since, until))
}

/// A period of a report: where it starts (a whole hour, day, Monday or first of a month,
/// UTC) and the part of it within the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: i64,
    pub from: i64,
    pub to: i64,
}

/// The periods of `by` that cover `[since, until)`, in order.
pub fn periods(since: i64, until: i64, by: ReportPeriod) -> Vec<Period> {
    let mut out = Vec::new();
    let mut start = period_start(since, by);
    while start < until {
        let next = next_period(start, by);
        out.push(Period {
            start,
            from: start.max(since),
            to: next.min(until),
        });
        start = next;
    }
    out
}

/// How many periods of `by` cover `[since, until)`, without listing them.
pub fn period_count(since: i64, until: i64, by: ReportPeriod) -> u64 {
    let len = match by {
        ReportPeriod::Hour => HOUR_MS,
        ReportPeriod::Day => DAY_MS,
        ReportPeriod::Week => 7 * DAY_MS,
        ReportPeriod::Month => 28 * DAY_MS,
    };
    ((until - since) / len + 2) as u64
}

/// The start of the period of `by` holding `at`.
pub fn period_start(at: i64, by: ReportPeriod) -> i64 {
    let day = at.div_euclid(DAY_MS);
    match by {
        ReportPeriod::Hour => hour_of(at),
        ReportPeriod::Day => day * DAY_MS,
        // 1970-01-01 was a Thursday: Mondays are 4 days on, modulo 7.
        ReportPeriod::Week => (day - (day - 4).rem_euclid(7)) * DAY_MS,
        ReportPeriod::Month => {
            let (y, m, _) = civil_from_days(day);
            days_from_civil(y, m, 1) * DAY_MS
        }
    }
}

fn next_period(start: i64, by: ReportPeriod) -> i64 {
    match by {
        ReportPeriod::Hour => start + HOUR_MS,
        ReportPeriod::Day => start + DAY_MS,
        ReportPeriod::Week => start + 7 * DAY_MS,
        ReportPeriod::Month => {
            let (y, m, _) = civil_from_days(start.div_euclid(DAY_MS));
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(y, m, 1) * DAY_MS
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// A lease still open when the report is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLease {
    pub feature: String,
    pub user: String,
    pub seats: u32,
    pub granted_at: i64,
}

/// What the store reads for `report usage`, in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageData {
    /// The rollup rows of the range.
    pub hours: Vec<UsageHour>,
    /// Each feature's last seats held and pool set before the range.
    pub before: Vec<(String, Option<u32>, Option<u32>)>,
    /// Per feature and period (by its `from`): users with seats in it according to the
    /// user rollups, leaving out every user who holds an open lease of the feature granted
    /// before the period's end (those are counted from `open`). See [`distinct_in_rows`].
    pub distinct: Vec<(String, i64, u32)>,
    /// Leases open now.
    pub open: Vec<OpenLease>,
}

/// What the store reads for `report users`, in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersData {
    /// Per feature and user, the sums of the user rollups of the range (`user` and
    /// `feature` set, `hour_start` unused), `last_used` their latest.
    pub rows: Vec<super::history::UserHour>,
    pub open: Vec<OpenLease>,
}

/// The earliest grant of each (feature, user) with an open lease.
pub fn open_holders(open: &[OpenLease]) -> BTreeMap<(String, String), i64> {
    let mut first: BTreeMap<(String, String), i64> = BTreeMap::new();
    for lease in open {
        let at = first
            .entry((lease.feature.clone(), lease.user.clone()))
            .or_insert(lease.granted_at);
        *at = (*at).min(lease.granted_at);
    }
    first
}

/// What a store's count of users per period is (the reference the SQL is tested against):
/// users of rows with seat time or a grant in the period, less those counted from open
/// leases granted before the period's end.
pub fn distinct_in_rows(
    user_hours: &[super::history::UserHour],
    periods: &[Period],
    open: &[OpenLease],
) -> Vec<(String, i64, u32)> {
    let holders = open_holders(open);
    let mut users: BTreeMap<(String, i64), BTreeSet<&str>> = BTreeMap::new();
    for row in user_hours {
        if row.seat_ms <= 0 && row.checkouts <= 0 {
            continue;
        }
        let Some(period) = periods
            .iter()
            .find(|p| p.from <= row.hour_start && row.hour_start < p.to)
        else {
            continue;
        };
        let key = (row.feature.clone(), row.user.clone());
        if holders.get(&key).is_some_and(|&g| g < period.to) {
            continue;
        }
        users
            .entry((row.feature.clone(), period.from))
            .or_default()
            .insert(row.user.as_str());
    }
    users
        .into_iter()
        .map(|((feature, from), set)| (feature, from, set.len() as u32))
        .collect()
}

/// Seat-milliseconds of an open lease within `[from, to)`, counting it held up to `now`.
fn open_ms(lease: &OpenLease, from: i64, to: i64, now: i64) -> u64 {
    let start = lease.granted_at.max(from);
    let end = now.min(to);
    if end > start {
        u64::from(lease.seats) * (end - start) as u64
    } else {
        0
    }
}

/// `report usage`: every feature (or the one asked) period by period, features by name.
pub fn usage(
    data: &UsageData,
    feature: Option<&str>,
    periods: &[Period],
    now: i64,
) -> Vec<UsageRow> {
    let mut features: BTreeSet<&str> = BTreeSet::new();
    match feature {
        Some(feature) => {
            features.insert(feature);
        }
        None => {
            features.extend(data.hours.iter().map(|h| h.feature.as_str()));
            features.extend(
                data.before
                    .iter()
                    .filter(|(_, in_use, pool)| in_use.unwrap_or(0) > 0 || pool.unwrap_or(0) > 0)
                    .map(|(f, _, _)| f.as_str()),
            );
            features.extend(data.open.iter().map(|l| l.feature.as_str()));
            features.extend(data.distinct.iter().map(|(f, _, _)| f.as_str()));
        }
    }
    let hours: HashMap<(&str, i64), &UsageHour> = data
        .hours
        .iter()
        .map(|h| ((h.feature.as_str(), h.hour_start), h))
        .collect();
    let distinct: HashMap<(&str, i64), u32> = data
        .distinct
        .iter()
        .map(|(f, from, n)| ((f.as_str(), *from), *n))
        .collect();
    let holders = open_holders(&data.open);
    let mut out = Vec::with_capacity(features.len() * periods.len());
    for feature in features {
        let (mut in_use, mut pool) = data
            .before
            .iter()
            .find(|(f, _, _)| f == feature)
            .map_or((0, 0), |(_, in_use, pool)| {
                (in_use.unwrap_or(0), pool.unwrap_or(0))
            });
        let open: Vec<&OpenLease> = data.open.iter().filter(|l| l.feature == feature).collect();
        let first_grants: Vec<i64> = holders
            .iter()
            .filter(|((f, _), _)| f == feature)
            .map(|(_, g)| *g)
            .collect();
        for period in periods {
            let mut row = UsageRow {
                feature: feature.to_string(),
                period_start: period.start,
                period_ms: period.to - period.from,
                pool: 0,
                peak_in_use: 0,
                seat_ms: 0,
                checkouts: 0,
                denials: 0,
                distinct_users: 0,
            };
            let mut hour = period.from;
            while hour < period.to {
                let (mut peak, mut largest) = (in_use, pool);
                if let Some(h) = hours.get(&(feature, hour)) {
                    peak = peak.max(h.peak);
                    largest = largest.max(h.pool_max);
                    in_use = h.in_use_last.unwrap_or(in_use);
                    pool = h.pool_last.unwrap_or(pool);
                    row.seat_ms += h.seat_ms.max(0) as u64;
                    row.checkouts += h.checkouts.max(0) as u64;
                    row.denials += h.denials.max(0) as u64;
                }
                row.peak_in_use = row.peak_in_use.max(peak);
                row.pool = row.pool.max(largest);
                hour += HOUR_MS;
            }
            row.seat_ms += open
                .iter()
                .map(|l| open_ms(l, period.from, period.to, now))
                .sum::<u64>();
            row.distinct_users = distinct.get(&(feature, period.from)).copied().unwrap_or(0)
                + first_grants.iter().filter(|&&g| g < period.to).count() as u32;
            out.push(row);
        }
    }
    out
}

/// `report users`: by user, then feature, over `[since, until)`.
pub fn users(data: &UsersData, since: i64, until: i64, now: i64) -> Vec<UserUsageRow> {
    let mut by: BTreeMap<(String, String), UserUsageRow> = BTreeMap::new();
    let entry = |by: &mut BTreeMap<(String, String), UserUsageRow>, user: &str, feature: &str| {
        by.entry((user.to_string(), feature.to_string()))
            .or_insert_with(|| UserUsageRow {
                user: user.to_string(),
                feature: feature.to_string(),
                seat_ms: 0,
                checkouts: 0,
                denials: 0,
                last_used: None,
            })
            .clone()
    };
    for row in &data.rows {
        let mut out = entry(&mut by, &row.user, &row.feature);
        out.seat_ms += row.seat_ms.max(0) as u64;
        out.checkouts += row.checkouts.max(0) as u64;
        out.denials += row.denials.max(0) as u64;
        out.last_used = out.last_used.max(row.last_used);
        by.insert((row.user.clone(), row.feature.clone()), out);
    }
    for lease in &data.open {
        if lease.granted_at >= until {
            continue;
        }
        let mut out = entry(&mut by, &lease.user, &lease.feature);
        out.seat_ms += open_ms(lease, since, until, now);
        out.last_used = out.last_used.max(Some(now.min(until)));
        by.insert((lease.user.clone(), lease.feature.clone()), out);
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-01T00:00:00Z, a Monday.
    const JAN_1_2024: i64 = 1_704_067_200_000;

    #[test]
    fn periods_are_utc_hours_days_iso_weeks_and_months() {
        assert_eq!(days_from_civil(2024, 1, 1) * DAY_MS, JAN_1_2024);
        assert_eq!(civil_from_days(JAN_1_2024 / DAY_MS), (2024, 1, 1));
        let mid = JAN_1_2024 + 45 * DAY_MS + 5 * HOUR_MS; // 2024-02-15T05:00Z, a Thursday
        assert_eq!(
            period_start(mid, ReportPeriod::Month),
            days_from_civil(2024, 2, 1) * DAY_MS
        );
        assert_eq!(
            period_start(mid, ReportPeriod::Week),
            JAN_1_2024 + 42 * DAY_MS,
            "the Monday before"
        );
        assert_eq!(
            period_start(mid, ReportPeriod::Day),
            JAN_1_2024 + 45 * DAY_MS
        );
        let months = periods(mid, JAN_1_2024 + 100 * DAY_MS, ReportPeriod::Month);
        assert_eq!(months.len(), 3, "February, March and April");
        assert_eq!(months[0].from, mid, "cut at the range's start");
        assert_eq!(
            months[1].to - months[1].from,
            31 * DAY_MS,
            "March has 31 days"
        );
        assert_eq!(
            months[0].to,
            days_from_civil(2024, 3, 1) * DAY_MS,
            "leap year"
        );
    }

    #[test]
    fn the_range_is_whole_hours_up_to_the_current_one() {
        let now = JAN_1_2024 + 10 * HOUR_MS + 5;
        assert_eq!(
            report_range(
                Some(JAN_1_2024 + 1),
                Some(JAN_1_2024 + 2 * HOUR_MS + 1),
                now
            ),
            Some((JAN_1_2024, JAN_1_2024 + 3 * HOUR_MS))
        );
        assert_eq!(
            report_range(None, None, now),
            Some((now - 5 - 7 * DAY_MS + HOUR_MS, JAN_1_2024 + 11 * HOUR_MS))
        );
        assert_eq!(
            report_range(Some(now + DAY_MS), None, now),
            None,
            "nothing to read in the future"
        );
    }
}

/// Credits consumed of one meter by one user in one whole UTC hour (SPEC §11), as a store
/// sums them: what [`meter_usage`] groups into periods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterHour {
    pub meter: String,
    pub user: String,
    pub hour_start: i64,
    pub consumed: u64,
    pub consumptions: u64,
}

/// Credits consumed per meter, period of `by` and user, by meter, period, then user; only
/// periods with a consumption have rows.
pub fn meter_usage(hours: &[MeterHour], by: ReportPeriod) -> Vec<tally_protocol::MeterUsageRow> {
    let mut sums: BTreeMap<(&str, i64, &str), (u64, u64)> = BTreeMap::new();
    for hour in hours {
        let key = (
            hour.meter.as_str(),
            period_start(hour.hour_start, by),
            hour.user.as_str(),
        );
        let sum = sums.entry(key).or_default();
        sum.0 += hour.consumed;
        sum.1 += hour.consumptions;
    }
    sums.into_iter()
        .map(|((meter, period_start, user), (consumed, consumptions))| {
            tally_protocol::MeterUsageRow {
                meter: meter.to_string(),
                period_start,
                user: user.to_string(),
                consumed,
                consumptions,
            }
        })
        .collect()
}
