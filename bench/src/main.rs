//! `tally-bench`: measures the Tally license server on this machine.
//!
//! Each scenario starts `tallyd` itself on a temporary data directory (the binary built next
//! to this one by `cargo build --release`, or `--tallyd PATH`), drives it over TLS with raw
//! protocol connections, prints a table for people and, last, one JSON line with at least
//! `scenario`, `ops_per_sec`, `p50_ms`, `p99_ms` and `server_cpu_us_per_op` (the server's own
//! CPU time per answered request, see `cpu.rs`). `checkout --database postgres://...` runs
//! the same load against a node serving from PostgreSQL (`pg.rs`); `failover` (`failover.rs`)
//! kills the leader of a cluster and reports times to the first new lease and to every held
//! lease resumed instead. `checkout` also times a durable single-row commit on the daemon's
//! disk and prints the durable limit it sets (`commit.rs`). `bulk` (`bulk.rs`) times bulk CSV
//! administration through the release `tally` binary; `report` (`report.rs`) times usage
//! reports over a year of history.

mod bulk;
mod commit;
mod cpu;
mod daemon;
mod failover;
mod load;
mod pg;
mod policy;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tally_protocol::{
    Checkout, EntitlementKind, LeasesPageQuery, LeasesQuery, NewEntitlement, Request, RequestId,
    Response, StatusQuery,
};

use daemon::{Daemon, Node, Target};
use load::{EchoServer, Latencies, Session};

#[derive(Debug, Parser)]
#[command(name = "tally-bench", about = "Benchmarks of the Tally license server")]
struct Args {
    /// The tallyd binary to start (default: next to this one).
    #[arg(long, global = true)]
    tallyd: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// A bare tokio-rustls echo server with the same framing: the ceiling of this machine.
    Baseline {
        #[arg(long, default_value_t = 64)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Each connection loops checkout and check-in of one seat, durable; against baseline.
    Checkout {
        #[arg(long, default_value_t = 64)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Serve from PostgreSQL: a fresh database made on this server (postgres://...), with
        /// tallyd the one node of a cluster. Default: SQLite.
        #[arg(long)]
        database: Option<String>,
        /// Keep the database made for the run instead of dropping it.
        #[arg(long, requires = "database")]
        keep_database: bool,
    },
    /// Checkout loops with no policy rule, then with RULES rules on the feature: their cost.
    Policy {
        #[arg(long, default_value_t = 64)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        #[arg(long, default_value_t = 50)]
        rules: usize,
    },
    /// `tally user import` of ROWS users, then `tally assign --csv` of a seat to each (SPEC
    /// R19), each timed whole through the release `tally` binary.
    Bulk {
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
    },
    /// A year of lease history of a 200-seat feature written through the store, then
    /// `tally report usage --by day|month|hour` and `tally report users` over it, each
    /// timed whole through the release `tally` binary (SPEC §10).
    Report {
        /// Leases a weekday (a fifth of it on weekends).
        #[arg(long, default_value_t = 1_900)]
        leases_per_day: u32,
        #[arg(long, default_value_t = 300)]
        users: usize,
    },
    /// Sessions each holding a lease and heartbeating: latency and server memory.
    Heartbeat {
        #[arg(long, default_value_t = 15_000)]
        sessions: usize,
        /// Seconds between two heartbeats of one session.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// Heartbeats each session sends.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Clients that connect, sign in and check out all at once; against baseline handshakes.
    Storm {
        #[arg(long, default_value_t = 5_000)]
        clients: usize,
    },
    /// Leases held, tallyd killed with SIGKILL and restarted: time to serve, all back?
    Restart {
        #[arg(long, default_value_t = 100_000)]
        leases: usize,
    },
    /// A cluster on PostgreSQL whose leader is killed with SIGKILL, again and again: time to
    /// the first new lease and until every held lease is resumed, none lost or doubled.
    Failover {
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Times the leader is killed.
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// The PostgreSQL server on which a fresh database is made for the run.
        #[arg(
            long,
            env = "TALLY_BENCH_DATABASE",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database: String,
        /// Clients each holding one lease.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// The nodes' `ha.lease`.
        #[arg(long, default_value = failover::DEFAULT_LEASE)]
        lease: String,
        /// Keep the database made for the run instead of dropping it.
        #[arg(long)]
        keep_database: bool,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tallyd = match args.tallyd {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("tallyd"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        match args.scenario {
            Scenario::Baseline { conns, secs } => baseline(conns, secs).await,
            Scenario::Checkout {
                conns,
                secs,
                database: None,
                ..
            } => checkout(&tallyd, conns, secs, None).await,
            Scenario::Checkout {
                conns,
                secs,
                database: Some(server),
                keep_database,
            } => {
                pg::with_fresh_database(&server, keep_database, |url| async move {
                    checkout(&tallyd, conns, secs, Some(&url)).await
                })
                .await
            }
            Scenario::Policy { conns, secs, rules } => {
                policy::run(&tallyd, conns, secs, rules).await
            }
            Scenario::Bulk { rows } => bulk::run(&tallyd, rows).await,
            Scenario::Report {
                leases_per_day,
                users,
            } => report::run(&tallyd, leases_per_day, users).await,
            Scenario::Heartbeat {
                sessions,
                interval,
                rounds,
            } => heartbeat(&tallyd, sessions, interval, rounds).await,
            Scenario::Storm { clients } => storm(&tallyd, clients).await,
            Scenario::Restart { leases } => restart(&tallyd, leases).await,
            Scenario::Failover {
                nodes,
                kills,
                database,
                clients,
                lease,
                keep_database,
            } => {
                let options = failover::Options {
                    nodes,
                    kills,
                    clients,
                    lease,
                    command: std::env::args().collect::<Vec<_>>().join(" "),
                };
                pg::with_fresh_database(&database, keep_database, |url| async move {
                    failover::run(&tallyd, &url, &options).await
                })
                .await
            }
        }
    })?;
    print_report(&report);
    Ok(())
}

/// A table of the report's figures, then the report as one JSON line.
fn print_report(report: &Value) {
    if let Some(fields) = report.as_object() {
        let width = fields.keys().map(String::len).max().unwrap_or(0);
        for (key, value) in fields {
            println!("{key:<width$}  {value}");
        }
    }
    println!("{report}");
}

/// A standard entitlement of `seats` seats of `feature`, from now on.
fn new_entitlement(feature: &str, seats: u32) -> NewEntitlement {
    NewEntitlement {
        feature: feature.into(),
        seats,
        starts_at: None,
        expires_at: None,
        kind: EntitlementKind::Standard,
        borrowable: false,
        max_borrow_secs: None,
        reference: "bench".into(),
    }
}

fn entitlement(feature: &str, seats: u32) -> Request {
    Request::EntitlementAdd(new_entitlement(feature, seats))
}

async fn setup(target: &Target, connector: &tokio_rustls::TlsConnector, seats: u32) -> Result<()> {
    let mut admin = Session::open(connector, target).await?;
    admin
        .call(entitlement("bench", seats))
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// What a run against the bare echo server measured.
struct Baseline {
    ops_per_sec: f64,
    latencies: Latencies,
    /// The echo server's CPU time per round trip.
    server_cpu_us_per_op: f64,
    /// The load generator's CPU time per round trip.
    client_cpu_us_per_op: f64,
    /// The mean of the round trips' times as each connection measured them, send to reply,
    /// in milliseconds: the round trip of the durable limit.
    mean_round_trip_ms: f64,
}

/// Round trips per second against the bare echo server.
async fn measure_baseline(conns: usize, secs: u64) -> Result<Baseline> {
    let server = EchoServer::start().await?;
    let server = Arc::new(server);
    // A frame the size of a checkout request.
    let frame = Bytes::from(vec![7u8; 40]);
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(server.open().await?);
    }
    let meter = cpu::Server::EchoThreads.meter()?;
    let client_meter = cpu::Server::Generator.meter()?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut framed in opened {
        let frame = frame.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            while Instant::now() < deadline {
                let started = Instant::now();
                load::echo(&mut framed, &frame).await?;
                latencies.record(started.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let started = Instant::now();
    let mut all = Latencies::default();
    for task in tasks {
        all.merge(task.await??);
    }
    Ok(Baseline {
        ops_per_sec: all.0.len() as f64 / started.elapsed().as_secs_f64(),
        server_cpu_us_per_op: meter.us_per_op(all.0.len())?,
        client_cpu_us_per_op: client_meter.us_per_op(all.0.len())?,
        mean_round_trip_ms: all.mean_ms(),
        latencies: all,
    })
}

async fn baseline(conns: usize, secs: u64) -> Result<Value> {
    let mut run = measure_baseline(conns, secs).await?;
    println!("baseline: {conns} connections echoing frames for {secs} s");
    Ok(json!({
        "scenario": "baseline",
        "conns": conns,
        "secs": secs,
        "ops_per_sec": run.ops_per_sec.round(),
        "p50_ms": run.latencies.quantile_ms(0.5),
        "p99_ms": run.latencies.quantile_ms(0.99),
        "server_cpu_us_per_op": run.server_cpu_us_per_op,
    }))
}

/// The checkout scenario on SQLite, or on the PostgreSQL database at `database` with
/// tallyd the one node of a cluster (loaded once it leads, as the leader row says).
async fn checkout(
    tallyd: &std::path::Path,
    conns: usize,
    secs: u64,
    database: Option<&str>,
) -> Result<Value> {
    let baseline = measure_baseline(conns, secs).await?;
    let node = database.map(|url| Node {
        database: url.to_string(),
        lease: failover::DEFAULT_LEASE.into(),
        log_to_file: false,
    });
    let daemon = Daemon::start_with(tallyd, "60s", conns + 100, node.as_ref())?;
    let (store, store_text, mut db) = match database {
        None => ("sqlite", "SQLite, synchronous = FULL".to_string(), None),
        Some(url) => {
            let mut db = pg::connect(url).await?;
            let address = daemon.address();
            pg::wait_for_leader(&mut db, Duration::from_secs(30), |leader| {
                leader.address == address
            })
            .await?;
            let text = format!(
                "PostgreSQL {}, synchronous_commit = {}, fsync = {}",
                pg::setting(&mut db, "server_version").await?,
                pg::setting(&mut db, "synchronous_commit").await?,
                pg::setting(&mut db, "fsync").await?,
            );
            ("postgres", text, Some(db))
        }
    };
    let target = daemon.target()?;
    let connector = load::connector(&target.ca_pem)?;
    setup(&target, &connector, conns as u32 * 2).await?;
    // The durable limit: a commit on the disk of the daemon's data directory (a file beside
    // it), timed while the daemon is idle.
    let commit = commit::measure(
        &daemon.dir.path().join("commit-probe.sqlite"),
        commit::WARMUP,
        commit::SAMPLES,
    )
    .await?;
    let durable_limit = commit::durable_limit(conns, commit.median_ms, baseline.mean_round_trip_ms);
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(Session::open(&connector, &target).await?);
    }
    // The PostgreSQL backends serving tallyd: the database's share of each request.
    let database_meter = match db.as_mut() {
        Some(db) => Some(cpu::Server::Processes(pg::backends(db).await?).meter()?),
        None => None,
    };
    let meter = daemon.cpu().meter()?;
    let client_meter = cpu::Server::Generator.meter()?;
    let (mut all, _, ops) = load::checkout_loops(opened, secs).await?;
    println!(
        "checkout: {conns} connections looping checkout + check-in for {secs} s ({store_text})"
    );
    let mut report = json!({
        "scenario": "checkout",
        "store": store,
        "conns": conns,
        "secs": secs,
        "ops_per_sec": ops.round(),
        "p50_ms": all.quantile_ms(0.5),
        "p99_ms": all.quantile_ms(0.99),
        "server_cpu_us_per_op": meter.us_per_op(all.0.len())?,
        "client_cpu_us_per_op": client_meter.us_per_op(all.0.len())?,
        "baseline_ops_per_sec": baseline.ops_per_sec.round(),
        "baseline_server_cpu_us_per_op": baseline.server_cpu_us_per_op,
        "baseline_client_cpu_us_per_op": baseline.client_cpu_us_per_op,
        "ratio_to_baseline": round3(ops / baseline.ops_per_sec),
        "baseline_mean_rtt_ms": round3(baseline.mean_round_trip_ms),
        "commit_ms": round3(commit.median_ms),
        "commit_p90_ms": round3(commit.p90_ms),
        "commit_samples": commit.samples,
        "durable_limit": durable_limit.round(),
        "ratio_to_limit": round3(ops / baseline.ops_per_sec.min(durable_limit)),
    });
    if let Some(database_meter) = database_meter {
        report["database_cpu_us_per_op"] = json!(database_meter.us_per_op(all.0.len())?);
    }
    Ok(report)
}

/// `value` to three decimals.
fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Opens `count` sessions, `parallel` at a time.
async fn open_sessions(
    connector: &tokio_rustls::TlsConnector,
    target: &Arc<Target>,
    count: usize,
    parallel: usize,
) -> Result<Vec<Session>> {
    use futures::StreamExt;
    let opened: Vec<Result<Session>> = futures::stream::iter(0..count)
        .map(|_| {
            let connector = connector.clone();
            let target = target.clone();
            async move { Session::open(&connector, &target).await }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    opened.into_iter().collect()
}

async fn heartbeat(
    tallyd: &std::path::Path,
    sessions: usize,
    interval: u64,
    rounds: u32,
) -> Result<Value> {
    let ttl = format!("{}s", interval * 3);
    let daemon = Daemon::start(tallyd, &ttl, sessions + 100)?;
    let target = Arc::new(daemon.target()?);
    let connector = load::connector(&target.ca_pem)?;
    setup(&target, &connector, sessions as u32).await?;
    let rss_before = daemon.rss_kib()?;
    let opening = Instant::now();
    let mut opened = open_sessions(&connector, &target, sessions, 256).await?;
    for session in &mut opened {
        let request = Request::Checkout(Checkout {
            request_id: RequestId(rand::random()),
            feature: "bench".into(),
            seats: 1,
        });
        match session.call(request).await? {
            Ok(Response::Lease(_)) => {}
            other => bail!("checkout: {other:?}"),
        }
    }
    let opened_in = opening.elapsed();
    let rss_after = daemon.rss_kib()?;
    let interval = Duration::from_secs(interval);
    let meter = daemon.cpu().meter()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut session in opened {
        // Spread the sessions over the interval, as clients started at different times are.
        let offset = interval.mul_f64(rand::random::<f64>());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let mut next = tokio::time::Instant::now() + offset;
            for _ in 0..rounds {
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                match session.call(Request::Heartbeat).await? {
                    Ok(Response::Heartbeat(ack)) if ack.renewed == 1 => {}
                    other => bail!("heartbeat: {other:?}"),
                }
                latencies.record(sent.elapsed());
                next += interval;
            }
            Ok(latencies)
        }));
    }
    let mut all = Latencies::default();
    for task in tasks {
        all.merge(task.await??);
    }
    let ops = all.0.len() as f64 / started.elapsed().as_secs_f64();
    let rss_end = daemon.rss_kib()?;
    println!("heartbeat: {sessions} sessions each holding a lease, heartbeating every {interval:?}, {rounds} rounds");
    Ok(json!({
        "scenario": "heartbeat",
        "sessions": sessions,
        "interval_secs": interval.as_secs(),
        "ops_per_sec": ops.round(),
        "p50_ms": all.quantile_ms(0.5),
        "p99_ms": all.quantile_ms(0.99),
        "server_cpu_us_per_op": meter.us_per_op(all.0.len())?,
        "sessions_opened_secs": (opened_in.as_secs_f64() * 10.0).round() / 10.0,
        "server_rss_before_kib": rss_before,
        "server_rss_kib": rss_after.max(rss_end),
        "rss_per_session_kib": ((rss_after.max(rss_end) - rss_before) as f64 / sessions as f64 * 100.0).round() / 100.0,
    }))
}

/// Time for `clients` TLS handshakes (and one echo each) at once against the echo server,
/// and the echo server's CPU time per client.
async fn baseline_handshakes(clients: usize) -> Result<(Duration, f64)> {
    let server = Arc::new(EchoServer::start().await?);
    let frame = Bytes::from(vec![7u8; 40]);
    let meter = cpu::Server::EchoThreads.meter()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let server = server.clone();
            let frame = frame.clone();
            tokio::spawn(async move {
                let mut framed = server.open().await?;
                load::echo(&mut framed, &frame).await?;
                Ok::<_, anyhow::Error>(framed)
            })
        })
        .collect();
    let mut held = Vec::new();
    for task in tasks {
        held.push(task.await??);
    }
    Ok((started.elapsed(), meter.us_per_op(clients)?))
}

async fn storm(tallyd: &std::path::Path, clients: usize) -> Result<Value> {
    let (baseline, baseline_cpu) = baseline_handshakes(clients).await?;
    let daemon = Daemon::start(tallyd, "60s", clients + 100)?;
    let target = Arc::new(daemon.target()?);
    let connector = load::connector(&target.ca_pem)?;
    setup(&target, &connector, clients as u32).await?;
    let meter = daemon.cpu().meter()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let connector = connector.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let begun = Instant::now();
                let mut session = Session::open(&connector, &target).await?;
                let request = Request::Checkout(Checkout {
                    request_id: RequestId(rand::random()),
                    feature: "bench".into(),
                    seats: 1,
                });
                match session.call(request).await? {
                    Ok(Response::Lease(_)) => Ok::<_, anyhow::Error>((session, begun.elapsed())),
                    other => bail!("checkout: {other:?}"),
                }
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut latencies = Latencies::default();
    for task in tasks {
        let (session, elapsed) = task.await??;
        latencies.record(elapsed);
        held.push(session);
    }
    let all_granted = started.elapsed();
    println!("storm: {clients} clients connect, sign in and check out at once");
    Ok(json!({
        "scenario": "storm",
        "clients": clients,
        "ops_per_sec": (clients as f64 / all_granted.as_secs_f64()).round(),
        "p50_ms": latencies.quantile_ms(0.5),
        "p99_ms": latencies.quantile_ms(0.99),
        "server_cpu_us_per_op": meter.us_per_op(clients)?,
        "all_granted_secs": (all_granted.as_secs_f64() * 1000.0).round() / 1000.0,
        "baseline_server_cpu_us_per_op": baseline_cpu,
        "baseline_handshakes_secs": (baseline.as_secs_f64() * 1000.0).round() / 1000.0,
        "ratio_to_baseline": (all_granted.as_secs_f64() / baseline.as_secs_f64() * 1000.0).round() / 1000.0,
    }))
}

async fn restart(tallyd: &std::path::Path, leases: usize) -> Result<Value> {
    // Leases must not lapse while the test runs.
    let mut daemon = Daemon::start(tallyd, "600s", 1000)?;
    let target = Arc::new(daemon.target()?);
    let connector = load::connector(&target.ca_pem)?;
    setup(&target, &connector, leases as u32).await?;
    let conns = 64.min(leases.max(1));
    let meter = daemon.cpu().meter()?;
    let filling = Instant::now();
    let sessions = open_sessions(&connector, &target, conns, conns).await?;
    let mut tasks = Vec::new();
    for (i, mut session) in sessions.into_iter().enumerate() {
        let share = leases / conns + usize::from(i < leases % conns);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            for _ in 0..share {
                let started = Instant::now();
                let request = Request::Checkout(Checkout {
                    request_id: RequestId(rand::random()),
                    feature: "bench".into(),
                    seats: 1,
                });
                match session.call(request).await? {
                    Ok(Response::Lease(_)) => latencies.record(started.elapsed()),
                    other => bail!("checkout: {other:?}"),
                }
            }
            Ok(latencies)
        }));
    }
    let mut all = Latencies::default();
    for task in tasks {
        all.merge(task.await??);
    }
    let fill_secs = filling.elapsed().as_secs_f64();
    // The checkouts that filled the pool, before the process is killed.
    let fill_cpu = meter.us_per_op(leases)?;

    let to_ready = daemon.kill9_and_restart()?;
    let restarted = Instant::now();
    let mut session = Session::open(&connector, &target)
        .await
        .context("after the restart")?;
    let in_use = match session
        .call(Request::Status(StatusQuery {
            feature: Some("bench".into()),
        }))
        .await?
    {
        Ok(Response::Status(list)) => list[0].in_use,
        other => bail!("status: {other:?}"),
    };
    let serving = to_ready + restarted.elapsed();
    // Every lease, page by page (a listing answers at most 1,000 a page).
    let mut listed = 0;
    let mut after = None;
    loop {
        let page = Request::LeasesPage(LeasesPageQuery {
            query: LeasesQuery {
                feature: None,
                user: None,
            },
            after,
            limit: None,
        });
        match session.call(page).await? {
            Ok(Response::LeasesPage(page)) => {
                listed += page.leases.len();
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            other => bail!("leases: {other:?}"),
        }
    }
    println!("restart: {leases} leases held, tallyd killed with SIGKILL and restarted");
    Ok(json!({
        "scenario": "restart",
        "leases": leases,
        "ops_per_sec": (leases as f64 / fill_secs).round(),
        "p50_ms": all.quantile_ms(0.5),
        "p99_ms": all.quantile_ms(0.99),
        "server_cpu_us_per_op": fill_cpu,
        "serving_again_secs": (serving.as_secs_f64() * 1000.0).round() / 1000.0,
        "in_use_after": in_use,
        "leases_listed_after": listed,
        "all_back": in_use as usize == leases && listed == leases,
    }))
}
