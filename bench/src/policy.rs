//! `tally-bench policy`: what policy rules (SPEC §8) cost a checkout. One daemon, one set of
//! connections: checkout and check-in loops with no rule, then the same loops with `rules`
//! rules on the feature (every kind, most of them about groups the benchmark's client is
//! not in, some about a group it is in, so that `max` and `reserve` count seats), and the
//! ratio of the server's CPU time per request between the two.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tally_protocol::{GroupAdd, PolicyAdd, Request, RuleKind, RuleRef, RuleSpec};

use crate::daemon::Daemon;
use crate::load::{self, Latencies, Session};

/// What one phase measured.
struct Phase {
    ops_per_sec: f64,
    latencies: Latencies,
    server_cpu_us_per_op: f64,
}

pub async fn run(tallyd: &std::path::Path, conns: usize, secs: u64, rules: usize) -> Result<Value> {
    let daemon = Daemon::start_with(tallyd, "60s", conns + 100, None)?;
    let target = daemon.target()?;
    let connector = load::connector(&target.ca_pem)?;
    // Room for every connection, and for what the reserves keep.
    crate::setup(&target, &connector, (conns * 2 + rules) as u32).await?;
    let mut admin = Session::open(&connector, &target).await?;
    let mut sessions = Vec::new();
    for _ in 0..conns {
        sessions.push(Session::open(&connector, &target).await?);
    }
    // No rules, rules, no rules again: the two phases without bracket the one with, so that
    // a machine getting busier or quieter over the run does not pass for the rules' cost.
    let (before, sessions) = phase(&daemon, sessions, secs).await?;
    add_rules(&mut admin, rules).await?;
    let (mut with, sessions) = phase(&daemon, sessions, secs).await?;
    remove_rules(&mut admin, rules).await?;
    let (after, _) = phase(&daemon, sessions, secs).await?;
    let mut without = Phase {
        ops_per_sec: (before.ops_per_sec + after.ops_per_sec) / 2.0,
        server_cpu_us_per_op: (before.server_cpu_us_per_op + after.server_cpu_us_per_op) / 2.0,
        latencies: before.latencies,
    };
    without.latencies.merge(after.latencies);
    println!(
        "policy: {conns} connections looping checkout + check-in for {secs} s with no rule, then with {rules} rules on the feature (SQLite, synchronous = FULL)"
    );
    let ratio = with.server_cpu_us_per_op / without.server_cpu_us_per_op;
    Ok(json!({
        "scenario": "policy",
        "conns": conns,
        "secs": secs,
        "rules": rules,
        "ops_per_sec": with.ops_per_sec.round(),
        "p50_ms": with.latencies.quantile_ms(0.5),
        "p99_ms": with.latencies.quantile_ms(0.99),
        "server_cpu_us_per_op": with.server_cpu_us_per_op,
        "no_rules_ops_per_sec": without.ops_per_sec.round(),
        "no_rules_p99_ms": without.latencies.quantile_ms(0.99),
        "no_rules_server_cpu_us_per_op": without.server_cpu_us_per_op,
        "no_rules_before_server_cpu_us_per_op": before.server_cpu_us_per_op,
        "no_rules_after_server_cpu_us_per_op": after.server_cpu_us_per_op,
        "cpu_ratio_to_no_rules": (ratio * 1000.0).round() / 1000.0,
    }))
}

/// Every session loops checkout and check-in for `secs` seconds, the daemon's CPU metered.
async fn phase(
    daemon: &Daemon,
    sessions: Vec<Session>,
    secs: u64,
) -> Result<(Phase, Vec<Session>)> {
    let meter = daemon.cpu().meter()?;
    let (latencies, sessions, ops_per_sec) = load::checkout_loops(sessions, secs).await?;
    let phase = Phase {
        ops_per_sec,
        server_cpu_us_per_op: meter.us_per_op(latencies.0.len())?,
        latencies,
    };
    Ok((phase, sessions))
}

/// Removes the rules `add_rules` added (ids 1 to `rules`).
async fn remove_rules(admin: &mut Session, rules: usize) -> Result<()> {
    for id in 1..=rules as u64 {
        match admin.call(Request::PolicyRemove(RuleRef { id })).await? {
            Ok(_) => {}
            Err(err) => bail!("{err}"),
        }
    }
    Ok(())
}

/// `rules` rules on `bench`: first `include` of a group the benchmark's client is in (its
/// address), then, in turn, include, exclude, reserve, max and borrow-exclude of groups it
/// is not in, `max` (alternately `--each`) of its own group, and priority.
async fn add_rules(admin: &mut Session, rules: usize) -> Result<()> {
    async fn ask(admin: &mut Session, request: Request) -> Result<()> {
        match admin.call(request).await? {
            Ok(_) => Ok(()),
            Err(err) => bail!("{err}"),
        }
    }
    ask(
        admin,
        Request::GroupAdd(GroupAdd {
            name: "benchers".into(),
            members: vec!["ip:127.0.0.0/8".into(), "ip:::1".into()],
        }),
    )
    .await?;
    let rule = |kind, seats, group: &str, each| {
        Request::PolicyAdd(PolicyAdd {
            rule: RuleSpec {
                feature: "bench".into(),
                kind,
                seats,
                group: Some(group.to_string()),
                each,
            },
            dry_run: false,
        })
    };
    if rules > 0 {
        ask(admin, rule(RuleKind::Include, 0, "benchers", false)).await?;
    }
    for i in 1..rules {
        let group = format!("g{i}");
        ask(
            admin,
            Request::GroupAdd(GroupAdd {
                name: group.clone(),
                members: vec![
                    format!("user:artist{i}@studio.example"),
                    format!("host:render-{i}-*"),
                    format!("ip:10.{}.0.0/16", i % 250),
                ],
            }),
        )
        .await?;
        let request = match i % 7 {
            0 => rule(RuleKind::Include, 0, &group, false),
            1 => rule(RuleKind::Exclude, 0, &group, false),
            2 => rule(RuleKind::Reserve, 1, &group, false),
            3 => rule(RuleKind::Max, 1000, &group, false),
            4 => rule(RuleKind::Max, 100_000 + i as u32, "benchers", i % 2 == 0),
            5 => rule(RuleKind::BorrowExclude, 0, &group, false),
            _ => rule(RuleKind::Priority, i as u32, &group, false),
        };
        ask(admin, request).await?;
    }
    Ok(())
}
