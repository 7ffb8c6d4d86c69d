//! The property test of the usage reports (SPEC §10): random lease histories (grants, ends,
//! denials and pool changes at random times over a few days, leases spanning hours and
//! days, committed in random groups) recorded as rollups, merged as a store merges them,
//! and reported for a random range by every period; compared with a brute-force count
//! straight from the list of intervals, replayed in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use tally_protocol::{ReportPeriod, UsageRow, UserUsageRow, HOUR_MS};

use super::history::{hour_of, HistoryRows, UsageHour, UserHour};
use super::report::{self, distinct_in_rows, periods, report_range, OpenLease, Period};

const FEATURES: [&str; 2] = ["maya", "nuke"];
const USERS: [&str; 4] = ["ana", "ben", "cy", "dee"];
const T0: i64 = 1_704_067_200_000 + 17 * 60_000 + 123;

#[derive(Debug, Clone)]
enum Op {
    Grant {
        feature: usize,
        user: usize,
        seats: u32,
    },
    End {
        pick: usize,
    },
    Deny {
        feature: usize,
        user: usize,
    },
    Pool {
        feature: usize,
        seats: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..4usize, 1..4u32).prop_map(|(feature, user, seats)| Op::Grant { feature, user, seats }),
        3 => any::<usize>().prop_map(|pick| Op::End { pick }),
        1 => (0..2usize, 0..4usize).prop_map(|(feature, user)| Op::Deny { feature, user }),
        1 => (0..2usize, 0..12u32).prop_map(|(feature, seats)| Op::Pool { feature, seats }),
    ]
}

/// Time between two events: often none, often minutes, sometimes hours or a day.
fn gap() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => Just(0i64),
        3 => 1..600_000i64,
        3 => 1..3 * HOUR_MS,
        1 => 1..30 * HOUR_MS,
    ]
}

fn by() -> impl Strategy<Value = ReportPeriod> {
    prop_oneof![
        Just(ReportPeriod::Hour),
        Just(ReportPeriod::Day),
        Just(ReportPeriod::Week),
        Just(ReportPeriod::Month),
    ]
}

/// One lease as the brute force sees it.
#[derive(Debug, Clone)]
struct Interval {
    feature: String,
    user: String,
    seats: u32,
    granted: i64,
    ended: Option<i64>,
}

/// What happened, in the order it happened.
#[derive(Debug, Default)]
struct Truth {
    leases: Vec<Interval>,
    /// (time, feature, seats held after) for each grant and end, and (time, feature, pool
    /// after) for each pool change, in order.
    in_use: Vec<(i64, String, u32)>,
    pools: Vec<(i64, String, u32)>,
    denials: Vec<(i64, String, String)>,
}

/// The model store: the rollups merged as the SQL merges them.
#[derive(Debug, Default)]
struct Model {
    hours: BTreeMap<(String, i64), UsageHour>,
    users: BTreeMap<(String, String, i64), UserHour>,
}

impl Model {
    fn commit(&mut self, rows: HistoryRows) {
        for (key, row) in rows.hours {
            match self.hours.get_mut(&key) {
                Some(slot) => slot.merge(&row),
                None => {
                    self.hours.insert(key, row);
                }
            }
        }
        for (key, row) in rows.user_hours {
            match self.users.get_mut(&key) {
                Some(slot) => slot.merge(&row),
                None => {
                    self.users.insert(key, row);
                }
            }
        }
    }

    /// What a store reads for `report usage`.
    fn usage_data(
        &self,
        feature: Option<&str>,
        since: i64,
        until: i64,
        periods: &[Period],
        open: &[OpenLease],
    ) -> report::UsageData {
        let wanted = |f: &str| feature.is_none_or(|w| w == f);
        let hours: Vec<UsageHour> = self
            .hours
            .values()
            .filter(|h| wanted(&h.feature) && since <= h.hour_start && h.hour_start < until)
            .cloned()
            .collect();
        let mut before: BTreeMap<String, (Option<u32>, Option<u32>)> = BTreeMap::new();
        for h in self.hours.values() {
            if wanted(&h.feature) && h.hour_start < since {
                let slot = before.entry(h.feature.clone()).or_default();
                slot.0 = h.in_use_last.or(slot.0);
                slot.1 = h.pool_last.or(slot.1);
            }
        }
        let open: Vec<OpenLease> = open
            .iter()
            .filter(|l| wanted(&l.feature))
            .cloned()
            .collect();
        let user_hours: Vec<UserHour> = self
            .users
            .values()
            .filter(|u| wanted(&u.feature) && since <= u.hour_start && u.hour_start < until)
            .cloned()
            .collect();
        report::UsageData {
            hours,
            before: before.into_iter().map(|(f, (a, b))| (f, a, b)).collect(),
            distinct: distinct_in_rows(&user_hours, periods, &open),
            open,
        }
    }

    /// What a store reads for `report users`.
    fn users_data(&self, since: i64, until: i64, open: &[OpenLease]) -> report::UsersData {
        let mut sums: BTreeMap<(String, String), UserHour> = BTreeMap::new();
        for u in self.users.values() {
            if since <= u.hour_start && u.hour_start < until {
                let slot = sums
                    .entry((u.feature.clone(), u.user.clone()))
                    .or_insert_with(|| UserHour {
                        feature: u.feature.clone(),
                        user: u.user.clone(),
                        hour_start: since,
                        ..UserHour::default()
                    });
                slot.merge(u);
            }
        }
        report::UsersData {
            rows: sums.into_values().collect(),
            open: open.to_vec(),
        }
    }
}

/// The largest of a value that changes at `changes` (in order) over `[from, to)`: the
/// value entering `from` and every value set within, in the order they were set.
fn largest(changes: &[(i64, String, u32)], feature: &str, from: i64, to: i64) -> u32 {
    let mut value = 0;
    let mut most: Option<u32> = None;
    for (t, _, v) in changes.iter().filter(|(_, f, _)| f == feature) {
        if *t >= to {
            break;
        }
        if *t < from {
            value = *v;
            continue;
        }
        let entering = value;
        let m = most.get_or_insert(entering);
        value = *v;
        *m = (*m).max(value);
    }
    most.unwrap_or(value)
}

fn overlap(l: &Interval, from: i64, to: i64, now: i64) -> i64 {
    let end = l.ended.unwrap_or(now).min(to);
    (end - l.granted.max(from)).max(0)
}

/// Whether the lease was held at some instant of `[from, to)`.
fn held_in(l: &Interval, from: i64, to: i64, now: i64) -> bool {
    match l.ended {
        Some(e) if e == l.granted => from <= l.granted && l.granted < to,
        Some(_) => overlap(l, from, to, now) > 0,
        None => l.granted < to && (from < now || l.granted >= from),
    }
}

fn brute_usage(truth: &Truth, feature: &str, p: &Period, now: i64) -> UsageRow {
    let (from, to) = (p.from, p.to);
    let leases = truth.leases.iter().filter(|l| l.feature == feature);
    let users: BTreeSet<&str> = leases
        .clone()
        .filter(|l| held_in(l, from, to, now))
        .map(|l| l.user.as_str())
        .collect();
    UsageRow {
        feature: feature.to_string(),
        period_start: p.start,
        period_ms: to - from,
        pool: largest(&truth.pools, feature, from, to),
        peak_in_use: largest(&truth.in_use, feature, from, to),
        seat_ms: leases
            .clone()
            .map(|l| i64::from(l.seats) * overlap(l, from, to, now))
            .sum::<i64>() as u64,
        checkouts: leases
            .clone()
            .filter(|l| from <= l.granted && l.granted < to)
            .count() as u64,
        denials: truth
            .denials
            .iter()
            .filter(|(t, f, _)| f == feature && from <= *t && *t < to)
            .count() as u64,
        distinct_users: users.len() as u32,
    }
}

fn brute_users(truth: &Truth, since: i64, until: i64, now: i64) -> Vec<UserUsageRow> {
    let row = |user: &str, feature: &str| UserUsageRow {
        user: user.to_string(),
        feature: feature.to_string(),
        seat_ms: 0,
        checkouts: 0,
        denials: 0,
        last_used: None,
    };
    let mut rows: HashMap<(String, String), UserUsageRow> = HashMap::new();
    for l in &truth.leases {
        let held = held_in(l, since, until, now);
        let granted = since <= l.granted && l.granted < until;
        if !held && !granted {
            continue;
        }
        let key = (l.user.clone(), l.feature.clone());
        let mut r = rows
            .remove(&key)
            .unwrap_or_else(|| row(&l.user, &l.feature));
        r.seat_ms += (i64::from(l.seats) * overlap(l, since, until, now)) as u64;
        r.checkouts += u64::from(granted);
        if held {
            r.last_used = r.last_used.max(Some(l.ended.unwrap_or(now).min(until)));
        }
        rows.insert(key, r);
    }
    for (t, f, u) in &truth.denials {
        if since <= *t && *t < until {
            let key = (u.clone(), f.clone());
            let mut r = rows.remove(&key).unwrap_or_else(|| row(u, f));
            r.denials += 1;
            rows.insert(key, r);
        }
    }
    let mut list: Vec<UserUsageRow> = rows.into_values().collect();
    list.sort_by(|a, b| (&a.user, &a.feature).cmp(&(&b.user, &b.feature)));
    list
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn reports_from_rollups_match_a_brute_force_count_of_the_leases(
        script in prop::collection::vec((op(), gap(), any::<bool>()), 1..80),
        tail in 0..30 * HOUR_MS,
        since_at in 0..120 * HOUR_MS,
        length in 1..150 * HOUR_MS,
        by in by(),
        one_feature in prop::option::of(0..2usize),
    ) {
        let mut model = Model::default();
        let mut truth = Truth::default();
        let mut rows = HistoryRows::default();
        let mut open: Vec<usize> = Vec::new();
        let mut in_use: HashMap<&str, u32> = HashMap::new();
        let mut now = T0;
        for (op, gap, commit) in script {
            now += gap;
            match op {
                Op::Grant { feature, user, seats } => {
                    let (f, u) = (FEATURES[feature], USERS[user]);
                    let held = in_use.entry(f).or_default();
                    *held += seats;
                    rows.grant(f, u, now, *held);
                    truth.in_use.push((now, f.to_string(), *held));
                    open.push(truth.leases.len());
                    truth.leases.push(Interval { feature: f.into(), user: u.into(), seats, granted: now, ended: None });
                }
                Op::End { pick } => {
                    if open.is_empty() {
                        continue;
                    }
                    let i = open.swap_remove(pick % open.len());
                    let l = &mut truth.leases[i];
                    l.ended = Some(now);
                    let held = in_use.get_mut(l.feature.as_str()).unwrap();
                    *held -= l.seats;
                    rows.end(&l.feature, &l.user, l.seats, l.granted, now, *held);
                    truth.in_use.push((now, l.feature.clone(), *held));
                }
                Op::Deny { feature, user } => {
                    rows.deny(FEATURES[feature], USERS[user], now);
                    truth.denials.push((now, FEATURES[feature].into(), USERS[user].into()));
                }
                Op::Pool { feature, seats } => {
                    rows.pool(FEATURES[feature], now, seats);
                    truth.pools.push((now, FEATURES[feature].into(), seats));
                }
            }
            if commit {
                model.commit(std::mem::take(&mut rows));
            }
        }
        model.commit(rows);
        now += tail;
        let open_leases: Vec<OpenLease> = open
            .iter()
            .map(|&i| {
                let l = &truth.leases[i];
                OpenLease { feature: l.feature.clone(), user: l.user.clone(), seats: l.seats, granted_at: l.granted }
            })
            .collect();
        let since = hour_of(T0) - 24 * HOUR_MS + since_at;
        let Some((since, until)) = report_range(Some(since), Some(since + length), now) else {
            return Ok(());
        };
        let feature = one_feature.map(|f| FEATURES[f]);
        let list = periods(since, until, by);
        let grouped = list.clone();
        let data = model.usage_data(feature, since, until, &grouped, &open_leases);
        let got = report::usage(&data, feature, &list, now);
        let reported: BTreeSet<&str> = got.iter().map(|r| r.feature.as_str()).collect();
        for f in FEATURES.iter().filter(|f| feature.is_none_or(|w| w == **f)) {
            let want: Vec<UsageRow> = list.iter().map(|p| brute_usage(&truth, f, p, now)).collect();
            if reported.contains(f) {
                let mine: Vec<UsageRow> = got.iter().filter(|r| r.feature == *f).cloned().collect();
                prop_assert_eq!(mine, want, "feature {} by {:?}", f, by);
            } else {
                prop_assert!(
                    want.iter().all(|r| r.pool == 0 && r.peak_in_use == 0 && r.seat_ms == 0 && r.checkouts == 0 && r.denials == 0),
                    "{} left out of the report though it has usage: {:?}", f, want
                );
            }
        }
        let data = model.users_data(since, until, &open_leases);
        prop_assert_eq!(report::users(&data, since, until, now), brute_users(&truth, since, until, now));
    }
}
