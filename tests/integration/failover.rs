//! A cluster on PostgreSQL losing its leader (SPEC §7): to SIGKILL, to a cut or reset
//! database connection, and nodes starting together, standbys redirecting, borrows moving
//! to a new leader, a consumption of credits retried on a new leader. Each test has a
//! database of its own and is skipped without `TALLY_TEST_POSTGRES`.
//!
//! The load tests keep a [`Ledger`] of what the clients were told, as they were told it: a
//! lease counts as held from the moment its grant is acknowledged until its check-in is
//! sent, which is inside the time the server holds it. So if the clients ever hold more
//! seats than the pool has, the cluster granted a seat twice (R1, R13), and every lease
//! they hold must be in the lease list of whichever node leads now (R5, R14).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tally_client::{Checked, Client, ClientConfig, Error, Lease, Trust};
use tally_protocol::{
    Checkin, EndReason, EntitlementKind, ErrorCode, LeaseId, LeaseInfo, LeaseKind, LeasesQuery,
    NewEntitlement, Request, Role,
};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::{wait_ready, Cluster, ClusterSpec, TestDatabase};
use crate::harness::{add_entitlement, buy_credits, new_user, DaemonProcess};

/// The feature the load checks out, with [`SEATS`] seats: fewer than the load wants at its
/// peak (see [`keeps`]), so that the pool is often full and a seat granted twice would
/// show as more held seats than the pool has.
const FEATURE: &str = "vray";
const SEATS: usize = 10;

/// A feature of its own for the probe that times failover, with seats to spare, so that a
/// full pool of [`FEATURE`] never looks like a slow failover.
const PROBE: &str = "probe";

/// Clients of the load, each its own user and client instance.
const CLIENTS: usize = 8;

/// SPEC R14: a new checkout within 5 s of the leader's death or its cut from the database.
const FAILOVER_WITHIN: Duration = Duration::from_secs(5);

/// How long a test waits for what should take a lease or two (a leader, a new epoch).
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

/// How many leases client `k` keeps across the whole test; on top of these it checks one
/// more out and in again and again. 0, 1, 2, 0, 1, 2, 0, 1: 7 kept, up to 15 wanted of
/// the [`SEATS`].
fn keeps(k: usize) -> usize {
    k % 3
}

/// What the load's clients were told.
#[derive(Debug, Default)]
struct Ledger {
    /// Leases whose grant was acknowledged and whose check-in was not yet sent, by client.
    held: HashMap<LeaseId, usize>,
    /// Every lease ever granted: an id granted twice would be one seat given twice.
    granted: HashSet<LeaseId>,
    /// Check-ins sent without an answer: the server may still hold these.
    unsure_checkins: HashSet<LeaseId>,
    /// Check-ins acknowledged: the server must never hold these again (R5).
    checked_in: HashSet<LeaseId>,
    /// Per client, checkouts that ended without a clear refusal (the connection dropped
    /// three times, `internal`): each may have been granted without the client knowing.
    unsure_grants: Vec<usize>,
    /// Leases the server ended while a client held them (R14 says none).
    lost: Vec<(LeaseId, EndReason)>,
    /// Broken rules seen as they happened.
    violations: Vec<String>,
    /// The most seats the clients held at once.
    peak: usize,
    /// Checkouts refused for want of a seat.
    no_seat: u64,
    /// Other failures, by their code (`not_leader`, `connection_lost`, ...).
    failures: HashMap<&'static str, u64>,
}

impl Ledger {
    fn new(clients: usize) -> Ledger {
        Ledger {
            unsure_grants: vec![0; clients],
            ..Ledger::default()
        }
    }

    fn granted(&mut self, client: usize, lease: &LeaseInfo) {
        if !self.granted.insert(lease.id) {
            self.violations
                .push(format!("lease {} was granted twice", lease.id));
        }
        if lease.seats != 1 {
            self.violations
                .push(format!("lease {} has {} seats", lease.id, lease.seats));
        }
        self.held.insert(lease.id, client);
        self.peak = self.peak.max(self.held.len());
        if self.held.len() > SEATS {
            self.violations.push(format!(
                "the clients hold {} seats of a pool of {SEATS} (R1)",
                self.held.len()
            ));
        }
    }

    fn checking_in(&mut self, lease: LeaseId) {
        self.held.remove(&lease);
        self.unsure_checkins.insert(lease);
    }

    fn checked_in(&mut self, lease: LeaseId) {
        self.unsure_checkins.remove(&lease);
        self.checked_in.insert(lease);
    }

    fn lost(&mut self, lease: LeaseId, reason: EndReason) {
        self.held.remove(&lease);
        self.lost.push((lease, reason));
    }

    fn failed(&mut self, client: usize, checkout: bool, err: &Error) {
        *self.failures.entry(err.code_str()).or_default() += 1;
        // `not_leader` at the deadline does not say the checkout was never applied: an earlier
        // send of it may have been committed by the old leader just before the connection
        // dropped. Such a lease is the client's session's, and its next resume checks it
        // in; until then it counts as a grant of unknown outcome.
        let refused = matches!(err.code(), Some(ErrorCode::NoSeat));
        if checkout && !refused {
            self.unsure_grants[client] += 1;
        }
    }

    /// The leases of `user` (client `client`) in `listed` that the client neither holds
    /// nor has an unanswered check-in of.
    fn unknown_to(&self, client: usize, user: &str, listed: &[LeaseInfo]) -> Vec<LeaseId> {
        listed
            .iter()
            .filter(|l| l.user == user)
            .map(|l| l.id)
            .filter(|id| self.held.get(id) != Some(&client) && !self.unsure_checkins.contains(id))
            .collect()
    }

    /// Panics unless every lease of a client in `listed` is one it holds, one whose
    /// check-in went unanswered, or one of at most as many as its checkouts of unknown
    /// outcome: anything more is a second seat (R4).
    fn assert_no_second_seat(&self, users: &[String], listed: &[LeaseInfo], when: &str) {
        for (k, user) in users.iter().enumerate() {
            let unknown = self.unknown_to(k, user, listed);
            assert!(
                unknown.len() <= self.unsure_grants[k],
                "{when}: {user} holds {unknown:?} besides the leases it knows of, with only {} checkouts of unknown outcome: a second seat (R4)",
                self.unsure_grants[k]
            );
        }
    }
}

/// The ledger, also after a check failed while holding it (the failure is reported once,
/// by the check, rather than again by every client).
fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A load of [`CLIENTS`] clients checking seats of [`FEATURE`] out and in, each as its own
/// user, recording everything in a [`Ledger`].
struct Load {
    ledger: Arc<Mutex<Ledger>>,
    /// Each operation (a checkout or check-in and its record) holds it shared; a check
    /// takes it exclusively, so that it compares the server with a ledger nobody is
    /// changing.
    gate: Arc<RwLock<()>>,
    stop: CancellationToken,
    /// Each client's task, which returns the client and the leases it still holds.
    tasks: Vec<JoinHandle<(Client, Vec<Lease>)>>,
    /// Client `k` signs in as `users[k]`.
    users: Vec<String>,
}

impl Load {
    /// Starts the clients, each with the configuration `config` makes for its user's token.
    async fn start(owner: &Client, config: impl Fn(&str) -> ClientConfig) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::new(CLIENTS)));
        let gate = Arc::new(RwLock::new(()));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut users = Vec::new();
        for k in 0..CLIENTS {
            let user = format!("load{k}@studio.test");
            let token = new_user(owner, &user, Role::Member).await;
            let client = Client::connect(config(&token))
                .await
                .expect("a load client signs in");
            users.push(user);
            tasks.push(tokio::spawn(run_client(
                k,
                client,
                ledger.clone(),
                gate.clone(),
                stop.clone(),
            )));
        }
        Load {
            ledger,
            gate,
            stop,
            tasks,
            users,
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    /// Waits until the clients hold at least `held` seats and `grants` more were granted
    /// than now: the load is running, with leases held, before a fault.
    async fn wait_for_progress(&self, held: usize, grants: usize) {
        let target = self.ledger().granted.len() + grants;
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            {
                let ledger = self.ledger();
                if ledger.held.len() >= held && ledger.granted.len() >= target {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the load made no progress: {} held, {} of {target} grants; failures {:?}",
                    ledger.held.len(),
                    ledger.granted.len(),
                    ledger.failures
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Compares the ledger with the lease list of the node that leads now, with the load
    /// held still: every held lease is there under its client's user (R14), no lease whose
    /// check-in was acknowledged is (R5), no user holds a seat it was not told of beyond
    /// the checkouts whose outcome it never learnt (R4), and the status agrees.
    async fn check(&self, owner: &Client, when: &str) {
        let _still = tokio::time::timeout(SETTLE_WITHIN, self.gate.write())
            .await
            .unwrap_or_else(|_| {
                panic!("{when}: a load client's request has had no answer for {SETTLE_WITHIN:?}")
            });
        let server = until_ok(when, || owner.leases(feature_query())).await;
        let in_use = until_ok(when, || owner.status(Some(FEATURE))).await[0].in_use;
        let ledger = self.ledger();
        assert!(
            ledger.violations.is_empty(),
            "{when}: {:?}",
            ledger.violations
        );
        assert!(
            ledger.lost.is_empty(),
            "{when}: leases lost: {:?}",
            ledger.lost
        );
        let by_id: HashMap<LeaseId, &LeaseInfo> = server.iter().map(|l| (l.id, l)).collect();
        for (id, k) in &ledger.held {
            match by_id.get(id) {
                Some(lease) => assert_eq!(
                    lease.user, self.users[*k],
                    "{when}: lease {id} of client {k} is held by someone else"
                ),
                None => panic!(
                    "{when}: lease {id}, acknowledged to client {k} and never checked in, is not in the leader's lease list ({} leases)",
                    server.len()
                ),
            }
        }
        for id in &ledger.checked_in {
            assert!(
                !by_id.contains_key(id),
                "{when}: lease {id} is held again after its check-in was acknowledged"
            );
        }
        ledger.assert_no_second_seat(&self.users, &server, when);
        assert_eq!(
            in_use as usize,
            server.len(),
            "{when}: status and the lease list disagree"
        );
        assert!(in_use as usize <= SEATS, "{when}: {in_use} seats in use");
    }

    /// Stops the load; returns the ledger, the users, and each client with the leases it
    /// still holds.
    async fn stop(self) -> (Ledger, Vec<String>, Vec<(Client, Vec<Lease>)>) {
        self.stop.cancel();
        let mut clients = Vec::new();
        for task in self.tasks {
            let stopped = tokio::time::timeout(SETTLE_WITHIN, task)
                .await
                .expect("a load client's request has had no answer since the load stopped");
            clients.push(stopped.expect("a load client panicked"));
        }
        let ledger = Arc::try_unwrap(self.ledger)
            .expect("the clients have stopped")
            .into_inner()
            .unwrap();
        (ledger, self.users, clients)
    }
}

/// One client of the load: checks a seat out when it holds no more than it keeps, else
/// checks its newest lease in; records each answer.
async fn run_client(
    k: usize,
    client: Client,
    ledger: Arc<Mutex<Ledger>>,
    gate: Arc<RwLock<()>>,
    stop: CancellationToken,
) -> (Client, Vec<Lease>) {
    let mut leases: Vec<Lease> = Vec::new();
    while !stop.is_cancelled() {
        let mut refused = false;
        {
            let _going = gate.read().await;
            leases.retain(|lease| match lease.is_lost() {
                Some(reason) => {
                    lock(&ledger).lost(lease.id(), reason);
                    false
                }
                None => true,
            });
            if leases.len() > keeps(k) {
                let lease = leases.pop().expect("a lease to check in");
                let id = lease.id();
                lock(&ledger).checking_in(id);
                match lease.release().await {
                    Ok(()) => lock(&ledger).checked_in(id),
                    Err(err) => lock(&ledger).failed(k, false, &err),
                }
            } else {
                match client.checkout(FEATURE, 1).await {
                    Ok(lease) => {
                        lock(&ledger).granted(k, lease.info());
                        leases.push(lease);
                    }
                    Err(err) => {
                        refused = err.code() == Some(ErrorCode::NoSeat);
                        let mut ledger = lock(&ledger);
                        if refused {
                            ledger.no_seat += 1;
                        } else {
                            ledger.failed(k, true, &err);
                        }
                    }
                }
            }
        }
        if refused {
            // A full pool: ask again a little later rather than spin on refusals.
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    (client, leases)
}

fn feature_query() -> LeasesQuery {
    LeasesQuery {
        feature: Some(FEATURE.into()),
        user: None,
    }
}

/// Retries `call` until it succeeds (a client's request may fail while the cluster elects
/// a leader); panics after [`SETTLE_WITHIN`] with the last error, or if a call is still
/// unanswered then.
async fn until_ok<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, call()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(err)) => panic!("{what}: still failing after {SETTLE_WITHIN:?}: {err}"),
            Err(_) => panic!("{what}: no answer within {SETTLE_WITHIN:?}"),
        }
    }
}

/// The owner's client once a leader serves: a leader row alone does not mean its node has
/// loaded the pool, and a standby answers `not_leader` meanwhile. `status` is answered
/// only by a serving leader, so once it succeeds, requests that must not be sent twice
/// (adding entitlements and users) can be sent.
async fn served_owner(cluster: &mut Cluster) -> Client {
    cluster.wait_leader(SETTLE_WITHIN).await;
    let owner = cluster.owner().await;
    until_ok("the first status", || owner.status(None)).await;
    owner
}

/// Checks a seat of [`PROBE`] out through `client` until one is granted, checks it in, and
/// returns how long after `since` the grant came. Panics if none came in three times
/// [`FAILOVER_WITHIN`] (the caller asserts the limit, so a slow failover says how slow).
async fn probe(client: &Client, since: Instant, what: &str) -> Duration {
    let deadline = since + FAILOVER_WITHIN * 3;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, client.checkout(PROBE, 1)).await {
            Ok(Ok(lease)) => {
                let took = since.elapsed();
                let _ = lease.release().await;
                return took;
            }
            Ok(Err(err)) => {
                last = Some(err);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => panic!(
                "no checkout granted within {:?} of {what}; last error: {last:?}",
                FAILOVER_WITHIN * 3
            ),
        }
    }
}

/// After the load stopped: every lease the clients hold is still held (none lost), and
/// once the checkouts and check-ins whose outcome the clients never learnt are settled
/// (checked in again by their clients), the leader's lease list is exactly the held
/// leases and `status` counts exactly their seats.
async fn final_check(owner: &Client, load: Load) {
    let (ledger, users, clients) = load.stop().await;
    let mut held: HashSet<LeaseId> = HashSet::new();
    for (k, (_, leases)) in clients.iter().enumerate() {
        for lease in leases {
            assert_eq!(
                lease.is_lost(),
                None,
                "client {k} lost lease {}",
                lease.id()
            );
            held.insert(lease.id());
        }
    }
    let recorded: HashSet<LeaseId> = ledger.held.keys().copied().collect();
    assert_eq!(
        held, recorded,
        "the ledger and the clients' guards disagree"
    );
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    assert!(ledger.lost.is_empty(), "leases lost: {:?}", ledger.lost);

    // Leases whose check-in was never answered, and grants never acknowledged, stay bound
    // to their client instance (its heartbeats renew them): their own clients check them
    // in, within what the ledger allows.
    let server = until_ok("the final lease list", || owner.leases(feature_query())).await;
    ledger.assert_no_second_seat(&users, &server, "at the end");
    for lease in server.iter().filter(|l| !held.contains(&l.id)) {
        let k = users
            .iter()
            .position(|u| *u == lease.user)
            .unwrap_or_else(|| panic!("a lease of nobody in the load: {lease:?}"));
        let client = &clients[k].0;
        let lease = lease.id;
        until_ok("checking in an unsettled lease", || async move {
            match client.call(Request::Checkin(Checkin { lease })).await {
                Err(err) if err.code() == Some(ErrorCode::NotFound) => Ok(()),
                other => other.map(drop),
            }
        })
        .await;
    }
    let server = until_ok("the final lease list", || owner.leases(feature_query())).await;
    let listed: HashSet<LeaseId> = server.iter().map(|l| l.id).collect();
    assert_eq!(
        listed, held,
        "the leader's lease list is not the leases the clients hold"
    );
    let figures = until_ok("status", || owner.status(Some(FEATURE))).await;
    assert_eq!(
        figures[0].in_use as usize,
        held.len(),
        "in_use is not the seats held"
    );
    println!(
        "{} grants, {} held at the end, peak {} of {SEATS}, {} refused for want of a seat, failures {:?}, {} checkouts and {} check-ins of unknown outcome",
        ledger.granted.len(),
        held.len(),
        ledger.peak,
        ledger.no_seat,
        ledger.failures,
        ledger.unsure_grants.iter().sum::<usize>(),
        ledger.unsure_checkins.len()
    );
    drop(clients);
}

/// A cluster with the load's feature and the probe's, an owner, and a probe client.
async fn loaded_cluster(db: TestDatabase, spec: ClusterSpec) -> (Cluster, Client, Client) {
    let mut cluster = Cluster::start(db, spec).await;
    let owner = served_owner(&mut cluster).await;
    add_entitlement(&owner, FEATURE, SEATS as u32, None).await;
    add_entitlement(&owner, PROBE, 100, None).await;
    let token = new_user(&owner, "probe@studio.test", Role::Member).await;
    let prober = Client::connect(cluster.client_config(&token))
        .await
        .expect("the probe signs in");
    (cluster, owner, prober)
}

/// The load and its checks on a single daemon (SQLite, no cluster): across a SIGKILL and
/// restart under load the checks find nothing wrong and no lease is lost, so that when a
/// cluster test fails, the cluster is at fault and not the harness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_and_its_checks_hold_across_a_restart_of_one_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "3s", "200ms");
    let config = daemon.client_config();
    let owner = Client::connect(config.clone()).await.unwrap();
    add_entitlement(&owner, FEATURE, SEATS as u32, None).await;
    add_entitlement(&owner, PROBE, 100, None).await;
    let for_token = |token: &str| {
        let mut config = config.clone();
        config.token = token.to_string();
        config
    };
    let token = new_user(&owner, "probe@studio.test", Role::Member).await;
    let prober = Client::connect(for_token(&token)).await.unwrap();
    let load = Load::start(&owner, for_token).await;
    for round in 1..=2 {
        load.wait_for_progress(5, 20).await;
        let killed_at = Instant::now();
        daemon.kill9();
        daemon.relaunch(std::process::Stdio::null());
        wait_ready(&mut daemon, SETTLE_WITHIN).await.unwrap();
        let took = probe(&prober, killed_at, "the restart").await;
        assert!(took <= FAILOVER_WITHIN, "round {round}: {took:?}");
        load.check(&owner, &format!("after restart {round}")).await;
    }
    load.wait_for_progress(5, 20).await;
    final_check(&owner, load).await;
}

/// Three nodes, leadership lease 1 s, under a load of eight clients. Three times: SIGKILL
/// the leader; a new checkout is granted within 5 s of the kill; a new node leads under a
/// later epoch; every lease a client holds is in the new leader's list under its user, no
/// acknowledged check-in came back, nobody holds a seat it does not know of; then the
/// killed node comes back as a standby. Throughout, the clients never hold more seats than
/// the pool has and never get one lease id twice. At the end the lease list is exactly the
/// leases held and `in_use` their seats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_sigkill_under_load_keeps_every_lease() {
    let Some(db) =
        TestDatabase::create("failover_after_sigkill_under_load_keeps_every_lease").await
    else {
        return;
    };
    let (mut cluster, owner, prober) = loaded_cluster(db, ClusterSpec::new(3)).await;
    let load = Load::start(&owner, |token| cluster.client_config(token)).await;
    for round in 1..=3 {
        let (leader, epoch) = cluster.wait_leadership(SETTLE_WITHIN).await;
        load.wait_for_progress(5, 20).await;
        let killed_at = Instant::now();
        cluster.kill9(leader);
        let took = probe(&prober, killed_at, "the SIGKILL").await;
        assert!(
            took <= FAILOVER_WITHIN,
            "round {round}: the first checkout after the SIGKILL of node {leader} took {took:?}"
        );
        let (next, next_epoch) = cluster.wait_leader_after(epoch, SETTLE_WITHIN).await;
        assert_ne!(next, leader, "the killed node cannot lead");
        println!(
            "round {round}: killed node {leader} (epoch {epoch}); node {next} leads (epoch {next_epoch}); a checkout {took:?} after the kill"
        );
        load.check(&owner, &format!("after SIGKILL {round}")).await;
        cluster.restart(leader).await;
    }
    load.wait_for_progress(5, 20).await;
    final_check(&owner, load).await;
}

/// Three nodes, each reaching PostgreSQL through its own proxy, under load. Ten times,
/// after a random wait (so that faults land at any point of a commit or a renewal): cut
/// the leader's proxy (a pulled cable: the node learns nothing but silence) or, every
/// other time, reset its connections (a database restart). A checkout is granted within
/// 5 s; after a cut a new node leads under a later epoch, and the old leader's row was
/// taken only after it lapsed in the database's clock. The clients' view stays within the
/// pool and every lease they hold is in the leader's list, so the cut leader acknowledged
/// no grant the database does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_from_the_database_stops_granting_before_another_starts() {
    let Some(db) =
        TestDatabase::create("a_leader_cut_from_the_database_stops_granting_before_another_starts")
            .await
    else {
        return;
    };
    let (mut cluster, owner, prober) = loaded_cluster(db, ClusterSpec::new(3).proxied()).await;
    cluster.db.log_leader_writes().await;
    let load = Load::start(&owner, |token| cluster.client_config(token)).await;
    let mut changes = 0;
    for cycle in 1..=10 {
        let (leader, epoch) = cluster.wait_leadership(SETTLE_WITHIN).await;
        load.wait_for_progress(5, 10).await;
        let offset = Duration::from_millis(rand::random::<u64>() % 1000);
        tokio::time::sleep(offset).await;
        let blackhole = cycle % 2 == 1;
        let fault = if blackhole { "cut" } else { "reset" };
        let faulted_at = Instant::now();
        if blackhole {
            cluster.proxy(leader).cut();
        } else {
            cluster.proxy(leader).reset();
        }
        let took = probe(&prober, faulted_at, fault).await;
        assert!(
            took <= FAILOVER_WITHIN,
            "cycle {cycle}: the first checkout after the {fault} of node {leader}'s database took {took:?}"
        );
        let now_leads = if blackhole {
            let (next, next_epoch) = cluster.wait_leader_after(epoch, SETTLE_WITHIN).await;
            assert_ne!(next, leader, "a node cut from the database cannot lead");
            changes += 1;
            format!("node {next} leads (epoch {next_epoch})")
        } else {
            let next = cluster.wait_leader(SETTLE_WITHIN).await;
            format!("node {next} leads")
        };
        println!(
            "cycle {cycle}: {fault} of node {leader} (epoch {epoch}) after {offset:?}; {now_leads}; a checkout {took:?} after"
        );
        load.check(&owner, &format!("after {fault} {cycle}")).await;
        if blackhole {
            cluster.proxy(leader).heal();
        }
    }
    load.wait_for_progress(5, 10).await;
    final_check(&owner, load).await;
    let handovers = cluster.db.assert_handovers_safe().await;
    assert!(
        handovers >= changes,
        "{handovers} handovers in the leader log, {changes} cuts moved the leadership"
    );
}

/// Two nodes spawned at the same moment on an empty database: both become ready, exactly
/// one leads, and they make one cluster: one node wrote the owner's files, one owner
/// account, one CA (both nodes' `tls/ca.pem` are the same), one server id, each migration
/// applied once, both nodes known. A client of either node alone works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_started_together_on_an_empty_database_make_one_cluster() {
    let Some(db) =
        TestDatabase::create("two_nodes_started_together_on_an_empty_database_make_one_cluster")
            .await
    else {
        return;
    };
    if std::env::var("TALLY_TEST_TRACE").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("tally_client=debug")
            .with_test_writer()
            .try_init();
    }
    let mut cluster = Cluster::start_together(db, ClusterSpec::new(2)).await;
    let leader = cluster.wait_leader(SETTLE_WITHIN).await;
    assert!(cluster.is_running(0) && cluster.is_running(1));
    let founder = cluster.founder_data_dir();
    let ca = |i: usize| std::fs::read(cluster.nodes[i].data_dir().join("tls/ca.pem")).unwrap();
    assert_eq!(ca(0), ca(1), "the nodes have different CAs");
    let owners = cluster
        .db
        .count("SELECT count(*) FROM users WHERE role = 'owner'")
        .await;
    assert_eq!(owners, 1, "owner accounts");
    let migrations = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../server/migrations/postgres"
    ))
    .unwrap()
    .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
    .count() as i64;
    assert_eq!(
        cluster
            .db
            .count("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .await,
        migrations,
        "each migration applied once"
    );
    assert_eq!(
        cluster
            .db
            .count("SELECT count(DISTINCT version) FROM _sqlx_migrations")
            .await,
        migrations
    );

    let token = cluster.owner_token();
    let mut ids = Vec::new();
    for i in 0..2 {
        let client = Client::connect(cluster.client_config_of(&[i], &token))
            .await
            .unwrap_or_else(|err| panic!("a client of node {i} alone: {err}"));
        until_ok("status", || client.status(None)).await;
        let info = until_ok("server info", || client.server_info()).await;
        assert_eq!(info.id, client.welcome().server_id);
        ids.push(info.id);
    }
    assert_eq!(ids[0], ids[1], "two server ids: two clusters");
    println!(
        "node {leader} leads; {} made the cluster",
        founder.display()
    );
}

/// A client whose server list holds only a standby checks a seat out: the standby
/// redirects it, the leader grants, and the lease is in the leader's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_redirects_a_client_to_the_leader() {
    let Some(db) = TestDatabase::create("a_standby_redirects_a_client_to_the_leader").await else {
        return;
    };
    let mut cluster = Cluster::start(db, ClusterSpec::new(2)).await;
    let owner = served_owner(&mut cluster).await;
    let leader = cluster.wait_leader(SETTLE_WITHIN).await;
    let standby = 1 - leader;
    add_entitlement(&owner, FEATURE, 2, None).await;
    let token = new_user(&owner, "ana@studio.test", Role::Member).await;
    let ana = Client::connect(cluster.client_config_of(&[standby], &token))
        .await
        .expect("a standby signs clients in");
    let lease = ana
        .checkout(FEATURE, 1)
        .await
        .expect("a checkout through a standby");
    let listed = until_ok("leases", || owner.leases(feature_query())).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id, listed[0].user.as_str()),
        (lease.id(), "ana@studio.test")
    );
    assert_eq!(
        cluster.leader().await,
        Some(leader),
        "the leader did not change"
    );
    let figures = until_ok("status", || ana.status(Some(FEATURE))).await;
    assert_eq!(figures[0].in_use, 1);
    lease.release().await.expect("a check-in through a standby");
    assert!(until_ok("leases", || owner.leases(feature_query()))
        .await
        .is_empty());
}

/// A borrow made on the leader, whose token is signed with the cluster's key: after the
/// leader's SIGKILL it verifies offline against the cluster CA, then with the new leader
/// (which holds the borrow and has the same server id), and is returned there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrow_made_on_the_old_leader_verifies_and_returns_on_the_new_one() {
    let Some(db) =
        TestDatabase::create("a_borrow_made_on_the_old_leader_verifies_and_returns_on_the_new_one")
            .await
    else {
        return;
    };
    let mut cluster = Cluster::start(db, ClusterSpec::new(3)).await;
    let owner = served_owner(&mut cluster).await;
    let new = NewEntitlement {
        feature: FEATURE.into(),
        seats: 2,
        starts_at: None,
        expires_at: None,
        kind: EntitlementKind::Standard,
        borrowable: true,
        max_borrow_secs: None,
        reference: String::new(),
    };
    owner.add_entitlement(new).await.unwrap();
    let token = new_user(&owner, "ana@studio.test", Role::Member).await;
    let laptop = tempfile::tempdir().unwrap();
    let config = |cluster: &Cluster, nodes: &[usize]| {
        let mut config = cluster.client_config_of(nodes, &token);
        config.data_dir = Some(laptop.path().to_path_buf());
        config.machine_id = "ana-laptop".into();
        config
    };
    let all: Vec<usize> = (0..3).collect();
    let ana = Client::connect(config(&cluster, &all)).await.unwrap();
    let (lease, token_file) = ana
        .borrow(FEATURE, 1, Duration::from_secs(3600))
        .await
        .expect("a borrow on the leader");
    assert_eq!(lease.kind, LeaseKind::Borrowed);
    let claims = tally_protocol::decode_token(std::fs::read_to_string(&token_file).unwrap().trim())
        .unwrap()
        .claims;

    let (leader, epoch) = cluster.wait_leadership(SETTLE_WITHIN).await;
    cluster.kill9(leader);
    // With no server at all: the token, the cluster's CA and the machine.
    let ca = std::fs::read(cluster.founder_data_dir().join("tls/ca.pem")).unwrap();
    let trust = Trust::from_pem(&ca).unwrap();
    let offline = ana
        .borrow_store()
        .unwrap()
        .verify_offline(FEATURE, &trust, "ana-laptop")
        .unwrap();
    assert!(offline.valid, "{offline:?}");

    let (next, _) = cluster.wait_leader_after(epoch, SETTLE_WITHIN).await;
    let fresh = Client::connect(config(&cluster, &[next])).await.unwrap();
    assert_eq!(
        fresh.welcome().server_id,
        claims.server_id,
        "the new leader has another server id"
    );
    for client in [&ana, &fresh] {
        let verdict = until_ok("verify", || client.verify_borrow(FEATURE)).await;
        assert!(verdict.valid, "{verdict:?}");
        assert_eq!(verdict.checked, Checked::Server, "{verdict:?}");
    }
    let listed = until_ok("leases", || owner.leases(feature_query())).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id, listed[0].kind),
        (lease.id, LeaseKind::Borrowed)
    );
    assert_eq!(fresh.return_borrows(FEATURE).await.unwrap(), 1);
    assert!(
        !token_file.exists(),
        "the token file stays after the return"
    );
    let figures = until_ok("status", || owner.status(Some(FEATURE))).await;
    assert_eq!((figures[0].borrowed, figures[0].available), (0, 2));
    assert_eq!(cluster.leader().await, Some(next));
}

/// `server info` says which node answered, its role and the epoch, and where the leader is,
/// on a standby as on the leader; `server nodes` lists every node for admins, one of them
/// the leader, and is refused to members (SPEC §7, R15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_and_server_nodes_tell_each_nodes_role() {
    let Some(db) = TestDatabase::create("server_info_and_server_nodes_tell_each_nodes_role").await
    else {
        return;
    };
    let mut cluster = Cluster::start(db, ClusterSpec::new(2)).await;
    let owner = served_owner(&mut cluster).await;
    let (leader, epoch) = cluster.wait_leadership(SETTLE_WITHIN).await;
    let standby = 1 - leader;
    let leader_address = cluster.nodes[leader].addr.to_string();
    let token = cluster.owner_token();
    for (node, role) in [
        (leader, tally_protocol::NodeRole::Leader),
        (standby, tally_protocol::NodeRole::Standby),
    ] {
        let client = Client::connect(cluster.client_config_of(&[node], &token))
            .await
            .expect("the owner signs in to one node");
        let info = until_ok("server info", || client.server_info()).await;
        let of_cluster = info.cluster.expect("a node of a cluster says so");
        assert_eq!(of_cluster.role, role, "node {node}");
        assert_eq!(of_cluster.epoch, epoch, "node {node}");
        assert_eq!(of_cluster.leader.as_deref(), Some(leader_address.as_str()));
        assert_eq!(info.store, "postgres");
        // A node is listed from its first heartbeat, which a busy machine may delay.
        let deadline = Instant::now() + SETTLE_WITHIN;
        let nodes = loop {
            let nodes = until_ok("server nodes", || client.server_nodes()).await;
            if nodes.len() == 2 || Instant::now() > deadline {
                break nodes;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(nodes.len(), 2, "{nodes:?}");
        let leaders: Vec<_> = nodes
            .iter()
            .filter(|n| n.role == tally_protocol::NodeRole::Leader)
            .collect();
        assert_eq!(leaders.len(), 1, "{nodes:?}");
        assert_eq!(leaders[0].address, leader_address);
        assert!(nodes.iter().all(|n| n.epoch == epoch), "{nodes:?}");
        assert!(nodes.iter().any(|n| n.id == of_cluster.node), "{nodes:?}");
    }
    let member = new_user(&owner, "ana@studio.test", Role::Member).await;
    let ana = Client::connect(cluster.client_config_of(&[standby], &member))
        .await
        .expect("a member signs in to a standby");
    match ana.server_nodes().await {
        Err(Error::Server(body)) => assert_eq!(body.code, ErrorCode::Forbidden, "{body:?}"),
        other => panic!("a member listed the nodes: {other:?}"),
    }
}

/// Metered credits across a failover (R21): a consumption acknowledged by the old leader,
/// retried with its request id on the new one, is answered as first and taken once; the
/// quota and the pool's balance carry over exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumption_retried_on_the_new_leader_is_taken_once() {
    let Some(db) =
        TestDatabase::create("a_consumption_retried_on_the_new_leader_is_taken_once").await
    else {
        return;
    };
    let mut cluster = Cluster::start(db, ClusterSpec::new(3)).await;
    let owner = served_owner(&mut cluster).await;
    buy_credits(&owner, "cloud", 100).await;
    let token = new_user(&owner, "ana@studio.test", Role::Member).await;
    owner
        .set_quota("ana@studio.test", "cloud", Some(80))
        .await
        .unwrap();
    let all: Vec<usize> = (0..3).collect();
    let ana = Client::connect(cluster.client_config_of(&all, &token))
        .await
        .unwrap();
    let id = tally_protocol::RequestId(rand::random());
    let first = ana.consume_with_id("cloud", 30, id).await.unwrap();
    assert_eq!((first.balance, first.remaining), (70, Some(50)));

    let (leader, epoch) = cluster.wait_leadership(SETTLE_WITHIN).await;
    cluster.kill9(leader);
    let (next, _) = cluster.wait_leader_after(epoch, SETTLE_WITHIN).await;
    let fresh = Client::connect(cluster.client_config_of(&[next], &token))
        .await
        .unwrap();
    let again = until_ok("retry", || fresh.consume_with_id("cloud", 30, id)).await;
    assert_eq!(again, first, "the new leader answered the retry otherwise");
    let short = fresh.consume("cloud", 60).await.unwrap_err();
    let Error::Server(err) = short else {
        panic!("{short:?}");
    };
    assert_eq!(err.code, ErrorCode::NoCredit, "{}", err.message);
    assert!(
        err.message.contains("50 left of their quota"),
        "{}",
        err.message
    );
    let rest = fresh.consume("cloud", 50).await.unwrap();
    assert_eq!((rest.balance, rest.remaining), (20, Some(0)));
    let meter = until_ok("credits", || owner.credits_status(Some("cloud"))).await;
    assert_eq!((meter[0].consumed, meter[0].balance), (80, 20));
}
