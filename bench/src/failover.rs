//! The failover scenario (SPEC §7, R14): a cluster of `tallyd` nodes on one PostgreSQL
//! database, clients of the real client library each holding a lease, and a prober taking
//! new leases all the time; the leader is killed with SIGKILL again and again.
//!
//! For every kill it measures, from the moment SIGKILL is sent:
//! - **takeover**: until the `tally_leader` row names another node under a newer epoch;
//! - **first grant**: until the prober's first checkout started after the kill is granted;
//! - **all resumed**: until every holder's client has had a request answered by the new
//!   leader, on the connection that also carries its resumption and its heartbeats: from
//!   then on the leader renews its lease (it restored the lease with a full ttl when it
//!   loaded the pool), unless it told the client the lease is lost.
//!
//! Then it checks that nothing was lost or doubled: no holder was told its lease ended, and
//! the new leader lists exactly the holders' leases of the feature, and counts that many in
//! use. The killed node is started again, as a standby, before the next kill. After the
//! last kill it waits one lease ttl and checks again, since a lease that its client does
//! not renew on the new leader lapses only then.
//!
//! A kill fails the run, with the nodes' logs kept, when no new lease or some holder is not
//! answered by a leader within 30 s (or four leases), when a lease is lost or doubled, or
//! when with the default `ha.lease` the first new lease took longer than R14's 5 s.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tally_client::{Client, ClientConfig, Lease, ServerAddr};
use tally_protocol::{LeaseId, LeasesQuery};
use tokio_util::task::AbortOnDropHandle;

use crate::daemon::{Daemon, Node, Target};
use crate::load::Latencies;
use crate::pg;

/// The feature the holders lease.
const HELD: &str = "bench";

/// The feature the prober leases, apart so that its leases never blur the holders' count.
const PROBED: &str = "probe";

/// The lease of `ha.lease` when none is given, the one R14's 5 s bound is stated for.
pub const DEFAULT_LEASE: &str = "3s";

/// R14: with the default lease, a new checkout is granted within this long of the kill.
const GRANT_BOUND: Duration = Duration::from_secs(5);

/// The leases' ttl (clients heartbeat every third of it). A new leader gives every lease a
/// full ttl when it loads the pool, so a lease whose client never reaches it lapses one ttl
/// later: the run ends by waiting that long and checking the leases once more.
const TTL: &str = "15s";

/// The prober's pause after a failed attempt, so that instant refusals do not spin.
const PROBE_PAUSE: Duration = Duration::from_millis(10);

/// A holder's pause between two requests while it waits for the new leader.
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// What the scenario was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Times the leader is killed.
    pub kills: usize,
    /// Clients each holding one lease.
    pub clients: usize,
    /// `ha.lease`.
    pub lease: String,
    /// The command line, for the report.
    pub command: String,
}

/// One kill's figures.
#[derive(Debug)]
struct Kill {
    /// Until another node held the leader row.
    takeover: Duration,
    /// Until the prober's first new lease.
    first_grant: Duration,
    /// Until every holder was answered by the new leader.
    all_resumed: Duration,
}

/// The prober's record: the start and the grant of every lease it got.
#[derive(Debug, Default)]
struct Probes {
    grants: Vec<(Instant, Instant)>,
    /// The last refusal or failure, for a report that has no grant to show.
    last_error: Option<(Instant, String)>,
}

impl Probes {
    /// The first lease granted to a checkout that started at or after `since`.
    fn first_grant_after(&self, since: Instant) -> Option<Instant> {
        self.grants
            .iter()
            .find(|(started, _)| *started >= since)
            .map(|(_, granted)| *granted)
    }
}

/// Runs the scenario on the fresh database at `url`.
pub async fn run(tallyd: &Path, url: &str, options: &Options) -> Result<Value> {
    if options.nodes < 2 {
        bail!("a failover needs at least 2 nodes, not {}", options.nodes);
    }
    let node = Node {
        database: url.to_string(),
        lease: options.lease.clone(),
        log_to_file: true,
    };
    let mut daemons = Vec::new();
    for _ in 0..options.nodes {
        // The first node makes the cluster; the others join it.
        daemons.push(Daemon::start_with(
            tallyd,
            TTL,
            options.clients + 100,
            Some(&node),
        )?);
    }
    let outcome = drive(&mut daemons, url, options).await;
    if let Err(err) = &outcome {
        keep_logs(&daemons, err);
    }
    outcome
}

/// Everything after the nodes started; a failure leaves the nodes' logs for the caller.
async fn drive(daemons: &mut [Daemon], url: &str, options: &Options) -> Result<Value> {
    let mut db = pg::connect(url).await?;
    let first = pg::wait_for_leader(&mut db, Duration::from_secs(30), |_| true).await?;
    let target = daemons[0].target()?;
    let servers: Vec<ServerAddr> = daemons
        .iter()
        .map(|daemon| ServerAddr::parse(&daemon.address()))
        .collect::<Result<_, _>>()?;
    let config = client_config(servers, &target);

    let admin = connect_to(&first.address, &target).await?;
    admin
        .add_entitlement(crate::new_entitlement(HELD, 2 * options.clients as u32))
        .await
        .context("entitlement for the holders")?;
    admin
        .add_entitlement(crate::new_entitlement(PROBED, 1000))
        .await
        .context("entitlement for the prober")?;
    drop(admin);

    let mut holders: Vec<(Client, Lease)> = Vec::new();
    for _ in 0..options.clients {
        let client = Client::connect(config.clone()).await?;
        let lease = client
            .checkout(HELD, 1)
            .await
            .context("a holder's checkout")?;
        holders.push((client, lease));
    }
    let held: BTreeSet<LeaseId> = holders.iter().map(|(_, lease)| lease.id()).collect();
    check_leases(&first.address, &target, &held, &holders)
        .await
        .context("before the first kill")?;

    let probes = Arc::new(Mutex::new(Probes::default()));
    // Stopped when this returns, whichever way.
    let _prober = AbortOnDropHandle::new(tokio::spawn(probe(
        Client::connect(config.clone()).await?,
        probes.clone(),
    )));

    println!(
        "failover: {} nodes on PostgreSQL, ha.lease = {}, leases.ttl = {TTL}; {} clients each holding a lease of {HELD:?} and one prober checking {PROBED:?} out and in; the leader killed with SIGKILL {} times",
        options.nodes, options.lease, options.clients, options.kills
    );
    let deadline = Duration::from_secs(30).max(4 * duration_of(&options.lease)?);
    let bounded = options.lease == DEFAULT_LEASE;
    let mut kills = Vec::new();
    let mut leader = first;
    for round in 1..=options.kills {
        // The prober has been granted under this leader: the cluster serves.
        let serving = Instant::now();
        while probes.lock().unwrap().first_grant_after(serving).is_none() {
            if serving.elapsed() > deadline {
                bail!(
                    "kill {round}: the prober got no lease for {deadline:?} before the kill; last: {:?}",
                    probes.lock().unwrap().last_error
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = daemons
            .iter()
            .position(|daemon| daemon.address() == leader.address)
            .with_context(|| {
                format!(
                    "no node of this run at the leader's address {}",
                    leader.address
                )
            })?;

        let killed = Instant::now();
        daemons[victim].kill9()?;
        let takeover = {
            let url = url.to_string();
            let old = leader.epoch;
            tokio::spawn(async move {
                let mut db = pg::connect(&url).await?;
                let next = pg::wait_for_leader(&mut db, deadline, |row| row.epoch > old).await?;
                Ok::<_, anyhow::Error>((next, killed.elapsed()))
            })
        };
        let resumed: Vec<_> = holders
            .iter()
            .enumerate()
            .map(|(index, (client, _))| {
                tokio::spawn(answered_by_leader(index, client.clone(), killed, deadline))
            })
            .collect();
        let first_grant = wait_for_grant(&probes, killed, deadline).await;
        let (next, takeover) = takeover.await?.with_context(|| {
            format!(
                "kill {round}: node {} (epoch {}) killed",
                victim + 1,
                leader.epoch
            )
        })?;
        let new_node = node_name(daemons, &next.address);
        let mut all_resumed = Duration::ZERO;
        let mut unanswered = Vec::new();
        for task in resumed {
            match task.await? {
                Ok(answered) => all_resumed = all_resumed.max(answered),
                Err(err) => unanswered.push(format!("{err:#}")),
            }
        }
        let killed_text = format!(
            "kill {round}: node {} (epoch {}) killed, {new_node} leads at epoch {} after {}",
            victim + 1,
            leader.epoch,
            next.epoch,
            secs(takeover)
        );
        let holders_text = match unanswered.first() {
            None => "every holder was answered by the leader".to_string(),
            Some(first) => format!(
                "{} of {} holders were not answered by the leader ({first})",
                unanswered.len(),
                options.clients
            ),
        };
        let first_grant = match first_grant {
            Some(first_grant) if unanswered.is_empty() => first_grant,
            first_grant => {
                // What the leader holds now, for the report.
                let leases_text = match check_leases(&next.address, &target, &held, &holders).await
                {
                    Ok(()) => format!(
                        "the leader still lists the {} held leases, none doubled",
                        held.len()
                    ),
                    Err(err) => format!("{err:#}"),
                };
                let last = probes.lock().unwrap().last_error.clone();
                let grant_text = match first_grant {
                    Some(first_grant) => format!("first new lease {}", secs(first_grant)),
                    None => format!(
                        "no new lease was granted within {deadline:?} of the kill (the prober's last answer: {})",
                        last.map_or_else(
                            || "none".to_string(),
                            |(at, why)| format!("{why}, {} after the kill", secs(at - killed))
                        )
                    ),
                };
                bail!("{killed_text}; {grant_text}; {holders_text}; {leases_text}");
            }
        };
        check_leases(&next.address, &target, &held, &holders)
            .await
            .with_context(|| format!("kill {round}: after the failover"))?;
        println!(
            "kill {round}/{}: node {} (epoch {}) killed; {new_node} leads at epoch {} after {}; first new lease {}; all {} held leases resumed {}",
            options.kills,
            victim + 1,
            leader.epoch,
            next.epoch,
            secs(takeover),
            secs(first_grant),
            options.clients,
            secs(all_resumed),
        );
        if bounded && first_grant > GRANT_BOUND {
            bail!(
                "kill {round}: the first new lease took {} with the default ha.lease = {DEFAULT_LEASE}: past R14's bound of {GRANT_BOUND:?}",
                secs(first_grant)
            );
        }
        kills.push(Kill {
            takeover,
            first_grant,
            all_resumed,
        });
        // Back as a standby before the next kill.
        daemons[victim]
            .restart()
            .with_context(|| format!("restarting node {}", victim + 1))?;
        leader = next;
    }
    // Past the ttl the last leader gave every lease: only leases that their clients renew
    // on it are still there.
    let ttl = duration_of(TTL)?;
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    check_leases(&leader.address, &target, &held, &holders)
        .await
        .with_context(|| format!("{ttl:?} after the last failover"))?;
    println!(
        "{} after the last failover: the leader still lists the {} held leases, none lost or doubled",
        secs(ttl + Duration::from_secs(2)),
        held.len()
    );

    let mut takeovers = Latencies::default();
    let mut grants = Latencies::default();
    let mut resumes = Latencies::default();
    for kill in &kills {
        takeovers.record(kill.takeover);
        grants.record(kill.first_grant);
        resumes.record(kill.all_resumed);
    }
    let grant_max = grants.quantile_ms(1.0);
    println!(
        "command: {}\nha.lease = {}: first new lease p50 {} ms, max {grant_max} ms; all held leases resumed p50 {} ms, max {} ms; takeover p50 {} ms, max {} ms",
        options.command,
        options.lease,
        grants.quantile_ms(0.5),
        resumes.quantile_ms(0.5),
        resumes.quantile_ms(1.0),
        takeovers.quantile_ms(0.5),
        takeovers.quantile_ms(1.0),
    );
    Ok(json!({
        "scenario": "failover",
        "store": "postgres",
        "command": options.command,
        "nodes": options.nodes,
        "kills": options.kills,
        "clients": options.clients,
        "ha_lease": options.lease,
        "leases_ttl": TTL,
        "first_grant_p50_ms": grants.quantile_ms(0.5),
        "first_grant_max_ms": grant_max,
        "all_resumed_p50_ms": resumes.quantile_ms(0.5),
        "all_resumed_max_ms": resumes.quantile_ms(1.0),
        "takeover_p50_ms": takeovers.quantile_ms(0.5),
        "takeover_max_ms": takeovers.quantile_ms(1.0),
        "all_leases_kept": true,
        "grant_bound_ms": if bounded { json!(GRANT_BOUND.as_millis() as u64) } else { Value::Null },
    }))
}

/// The time from `killed` to the prober's first lease of a checkout started after it;
/// `None` when there was none within `deadline`.
async fn wait_for_grant(
    probes: &Mutex<Probes>,
    killed: Instant,
    deadline: Duration,
) -> Option<Duration> {
    loop {
        if let Some(granted) = probes.lock().unwrap().first_grant_after(killed) {
            return Some(granted - killed);
        }
        if killed.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `node N` for the node of this run at `address`, else the address.
fn node_name(daemons: &[Daemon], address: &str) -> String {
    daemons
        .iter()
        .position(|daemon| daemon.address() == address)
        .map_or_else(|| address.to_string(), |at| format!("node {}", at + 1))
}

/// The client configuration of the holders and the prober: every node, in order.
fn client_config(servers: Vec<ServerAddr>, target: &Target) -> ClientConfig {
    let mut config = ClientConfig::new(servers, target.ca_pem.clone(), target.token.clone());
    config.agent = "tally-bench".into();
    config
}

/// A client of the node at `address` alone, to ask that node and no other.
async fn connect_to(address: &str, target: &Target) -> Result<Client> {
    let config = client_config(vec![ServerAddr::parse(address)?], target);
    Client::connect(config)
        .await
        .with_context(|| format!("cannot connect to the leader at {address}"))
}

/// The prober: checks a lease of [`PROBED`] out and in again, for ever, recording when
/// each checkout started and when it was granted.
async fn probe(client: Client, probes: Arc<Mutex<Probes>>) {
    loop {
        let started = Instant::now();
        match client.checkout(PROBED, 1).await {
            Ok(lease) => {
                probes
                    .lock()
                    .unwrap()
                    .grants
                    .push((started, Instant::now()));
                if let Err(err) = lease.release().await {
                    probes.lock().unwrap().last_error =
                        Some((Instant::now(), format!("check-in: {err}")));
                    tokio::time::sleep(PROBE_PAUSE).await;
                }
            }
            Err(err) => {
                probes.lock().unwrap().last_error =
                    Some((Instant::now(), format!("checkout: {err}")));
                tokio::time::sleep(PROBE_PAUSE).await;
            }
        }
    }
}

/// Asks through holder `index`'s client until a request is answered (by the leader: a
/// standby answers `not_leader`, a dead node nothing); the time from the kill.
async fn answered_by_leader(
    index: usize,
    client: Client,
    killed: Instant,
    deadline: Duration,
) -> Result<Duration> {
    let mut last = String::from("no answer");
    loop {
        let left = deadline.saturating_sub(killed.elapsed());
        if left.is_zero() {
            bail!(
                "holder {} was not answered by a leader within {deadline:?} of the kill; its last answer: {last}",
                index + 1
            );
        }
        match tokio::time::timeout(left, client.status(Some(HELD))).await {
            Ok(Ok(_)) => return Ok(killed.elapsed()),
            Ok(Err(err)) => last = format!("{} ({})", err, err.code_str()),
            Err(_) => last = "no answer before the deadline".into(),
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
}

/// Checks that no holder lost its lease and that the leader at `address` lists exactly the
/// holders' leases of [`HELD`], once each, and counts as many in use.
async fn check_leases(
    address: &str,
    target: &Target,
    held: &BTreeSet<LeaseId>,
    holders: &[(Client, Lease)],
) -> Result<()> {
    let lost: Vec<String> = holders
        .iter()
        .enumerate()
        .filter_map(|(index, (_, lease))| {
            lease
                .is_lost()
                .map(|why| format!("holder {} ({}): {why:?}", index + 1, lease.id()))
        })
        .collect();
    if !lost.is_empty() {
        bail!("leases lost: {}", lost.join(", "));
    }
    let leader = connect_to(address, target).await?;
    let listed = leader
        .leases(LeasesQuery {
            feature: Some(HELD.into()),
            user: None,
        })
        .await
        .context("the leader's lease list")?;
    let ids: Vec<LeaseId> = listed.iter().map(|lease| lease.id).collect();
    let unique: BTreeSet<LeaseId> = ids.iter().copied().collect();
    let missing: Vec<String> = held.difference(&unique).map(ToString::to_string).collect();
    let extra: Vec<String> = unique.difference(held).map(ToString::to_string).collect();
    if !missing.is_empty() || !extra.is_empty() || unique.len() != ids.len() {
        bail!(
            "the leader at {address} lists {} leases of {HELD:?} for {} held: missing {missing:?}, not held by any client {extra:?}, listed twice {}",
            ids.len(),
            held.len(),
            ids.len() - unique.len()
        );
    }
    let status = leader
        .status(Some(HELD))
        .await
        .context("the leader's status")?;
    let in_use = status.first().map_or(0, |feature| feature.in_use);
    if in_use as usize != held.len() {
        bail!(
            "the leader at {address} counts {in_use} seats of {HELD:?} in use for {} held",
            held.len()
        );
    }
    Ok(())
}

/// Copies every node's log out of its temporary directory and prints the end of each, so
/// that a failure can be read after the directories are gone.
fn keep_logs(daemons: &[Daemon], err: &anyhow::Error) {
    let kept = std::env::temp_dir().join(format!("tally-bench-failover-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&kept);
    eprintln!("failover failed: {err:#}");
    for (index, daemon) in daemons.iter().enumerate() {
        let copy: Option<PathBuf> = daemon.log_path().and_then(|path| {
            let to = kept.join(format!("node-{}.log", index + 1));
            std::fs::copy(path, &to).ok().map(|_| to)
        });
        eprintln!(
            "--- node {} ({}), log kept at {} ---\n{}",
            index + 1,
            daemon.address(),
            copy.map_or_else(|| "(none)".into(), |path| path.display().to_string()),
            daemon.log_tail(30).unwrap_or_default()
        );
    }
}

/// A duration as the benchmark writes it into tallyd's configuration (`ha.lease`,
/// `leases.ttl`): a number and `ms`, `s` or `m`.
fn duration_of(text: &str) -> Result<Duration> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: u64 = digits
        .parse()
        .with_context(|| format!("{text:?} is not a duration such as 3s"))?;
    match &text[digits.len()..] {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(60 * number)),
        _ => bail!("{text:?} is not a duration such as 3s (ms, s or m)"),
    }
}

/// A duration in seconds, to the millisecond.
fn secs(duration: Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_in_milliseconds_seconds_and_minutes() {
        assert_eq!(duration_of("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(duration_of("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration_of("1m").unwrap(), Duration::from_secs(60));
        assert!(duration_of("3").is_err());
        assert!(duration_of("s").is_err());
        assert!(duration_of("3h").is_err());
    }

    #[test]
    fn the_first_grant_is_of_a_checkout_started_after_the_kill() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let probes = Probes {
            grants: vec![(at(0), at(20)), (at(30), at(40)), (at(60), at(70))],
            last_error: None,
        };
        // Started before the kill, granted after it: not a new grant.
        assert_eq!(probes.first_grant_after(at(10)), Some(at(40)));
        assert_eq!(probes.first_grant_after(at(30)), Some(at(40)));
        assert_eq!(probes.first_grant_after(at(61)), None);
    }
}
