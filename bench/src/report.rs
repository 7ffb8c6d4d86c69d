//! `tally-bench report`: usage reports (SPEC §10) over a year of history. One daemon; a
//! year of synthetic lease history of one 200-seat feature (about 1,500 leases a day over
//! 300 users in working hours, a few borrows of days, refusals when the pool is full) is
//! recorded through the core's rollups (`HistoryRows`, as the pool records grants, ends
//! and denials) and written through the store's commit of batches, a simulated hour per
//! batch, straight into the daemon's SQLite database (not through the network). Then
//! `report usage --by day`, `--by month`, `--by hour` and `report users` over the year
//! are each timed whole through the release `tally` binary.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tally_server::core::history::HistoryRows;
use tally_server::core::Batch;
use tally_server::store::Fence;

use crate::bulk::timed;
use crate::daemon::Daemon;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const POOL: u32 = 200;
const FEATURE: &str = "bench";

/// A small deterministic generator (xorshift), so that every run writes the same year.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One event of the simulated year: a grant (with its end) or a refusal.
enum Event {
    Grant {
        user: usize,
        seats: u32,
        end: i64,
    },
    End {
        user: usize,
        seats: u32,
        granted: i64,
    },
}

pub async fn run(tallyd: &Path, leases_per_day: u32, users: usize) -> Result<Value> {
    let tally = crate::bulk::tally_beside(tallyd)?;
    let daemon = Daemon::start(tallyd, "60s", 16)?;
    let config = daemon.dir.path().join("data/client.toml");
    let (_, added) = timed(
        &tally,
        &config,
        &["entitlement", "add", FEATURE, "--seats", &POOL.to_string()],
    )?;
    if added.get("entitlement").is_none() {
        bail!("entitlement add failed: {added}");
    }
    let store = tally_server::store::open(None, &daemon.dir.path().join("data")).await?;

    let now = tally_protocol::now_millis();
    let until = now / HOUR * HOUR;
    let since = until - 365 * DAY;
    let names: Vec<String> = (0..users)
        .map(|i| format!("user{i}@bench.example"))
        .collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // Grants through the year: working hours (08:00-20:00 UTC) on weekdays get most.
    let mut grants: Vec<(i64, usize, u32, i64)> = Vec::new();
    for day in 0..365 {
        let start = since + day * DAY;
        let weekday = ((start / DAY) + 3) % 7 < 5;
        let count = if weekday {
            leases_per_day
        } else {
            leases_per_day / 5
        };
        for _ in 0..count {
            let at = start + 8 * HOUR + rng.below(12 * HOUR as u64) as i64;
            // From five minutes to a few hours, about an hour and a quarter on average.
            let length = 5 * 60_000 + rng.below(23 * HOUR as u64 / 10) as i64;
            grants.push((at, rng.below(users as u64) as usize, 1, at + length));
        }
        if rng.below(7) < 2 {
            // A borrow of one to five days.
            let at = start + 9 * HOUR;
            grants.push((
                at,
                rng.below(users as u64) as usize,
                1,
                at + (1 + rng.below(5) as i64) * DAY,
            ));
        }
    }
    grants.sort_unstable_by_key(|g| g.0);
    let mut events: Vec<(i64, Event)> = grants
        .into_iter()
        .map(|(at, user, seats, end)| (at, Event::Grant { user, seats, end }))
        .collect();
    let started = Instant::now();
    let mut in_use = 0u32;
    let mut rows = HistoryRows::default();
    rows.pool(FEATURE, since, POOL);
    let (mut leases, mut denials, mut commits) = (0u64, 0u64, 0u64);
    let mut hour = since / HOUR;
    let mut ends: std::collections::BinaryHeap<std::cmp::Reverse<(i64, usize, u32, i64)>> =
        std::collections::BinaryHeap::new();
    let mut i = 0;
    loop {
        // The next event: the earlier of the next grant and the next end.
        let next_end = ends.peek().map(|std::cmp::Reverse(e)| e.0);
        let next_grant = events.get(i).map(|e| e.0);
        let (at, event) = match (next_grant, next_end) {
            (None, None) => break,
            (Some(g), Some(e)) if e <= g => {
                let std::cmp::Reverse((at, user, seats, granted)) = ends.pop().unwrap();
                (
                    at,
                    Event::End {
                        user,
                        seats,
                        granted,
                    },
                )
            }
            (Some(_), _) => {
                i += 1;
                let (at, event) = std::mem::replace(
                    &mut events[i - 1],
                    (
                        0,
                        Event::End {
                            user: 0,
                            seats: 0,
                            granted: 0,
                        },
                    ),
                );
                (at, event)
            }
            (None, Some(_)) => {
                let std::cmp::Reverse((at, user, seats, granted)) = ends.pop().unwrap();
                (
                    at,
                    Event::End {
                        user,
                        seats,
                        granted,
                    },
                )
            }
        };
        if at >= until {
            break;
        }
        if at / HOUR != hour {
            let mut batch = Batch::default();
            batch.history = std::mem::take(&mut rows);
            store.commit(&batch, Fence::Single).await?;
            commits += 1;
            hour = at / HOUR;
        }
        match event {
            Event::Grant { user, seats, end } => {
                if in_use + seats > POOL {
                    rows.deny(FEATURE, &names[user], at);
                    denials += 1;
                } else {
                    in_use += seats;
                    rows.grant(FEATURE, &names[user], at, in_use);
                    ends.push(std::cmp::Reverse((end, user, seats, at)));
                    leases += 1;
                }
            }
            Event::End {
                user,
                seats,
                granted,
            } => {
                in_use -= seats;
                rows.end(FEATURE, &names[user], seats, granted, at, in_use);
            }
        }
    }
    let mut batch = Batch::default();
    batch.history = rows;
    store.commit(&batch, Fence::Single).await?;
    store.close().await;
    let written = started.elapsed();
    events.clear();

    let since_text = tally_protocol::format_time(since);
    let until_text = tally_protocol::format_time(until);
    let range = [
        "--since",
        since_text.as_str(),
        "--until",
        until_text.as_str(),
    ];
    let mut figures = serde_json::Map::new();
    println!(
        "report: one year of history of a {POOL}-seat feature, {leases} leases and {denials} refusals over {users} users, written in {commits} commits in {:.1} s; each report timed whole through the release `tally` binary (SQLite)",
        written.as_secs_f64()
    );
    for (name, args) in [
        ("usage_by_day", vec!["report", "usage", "--by", "day"]),
        ("usage_by_month", vec!["report", "usage", "--by", "month"]),
        ("usage_by_hour", vec!["report", "usage", "--by", "hour"]),
        ("users", vec!["report", "users"]),
    ] {
        let args: Vec<&str> = args.into_iter().chain(range).collect();
        let (took, doc) = timed(&tally, &config, &args)?;
        let rows = doc
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_array)
            .map(Vec::len)
            .with_context(|| format!("tally {args:?} answered {doc}"))?;
        println!(
            "  tally {:<40} {rows:>6} rows  {:>7.3} s",
            args[..4.min(args.len())].join(" "),
            took.as_secs_f64()
        );
        figures.insert(format!("{name}_secs"), json!(secs(took)));
        figures.insert(format!("{name}_rows"), json!(rows));
    }
    let mut doc = json!({
        "scenario": "report",
        "leases": leases,
        "denials": denials,
        "users": users,
        "write_secs": secs(written),
    });
    doc.as_object_mut().unwrap().extend(figures);
    Ok(doc)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
