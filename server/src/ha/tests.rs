//! Tests of the elector and the fence against a real PostgreSQL (`TALLY_TEST_POSTGRES`; each
//! test makes its own database and drops it), and of the timing, which needs none.
//!
//! Every test database logs each write of the leader row (a trigger, test-only), and
//! [`TestDb::assert_handovers_safe`] checks from that log, in the database's own clock, that
//! no node ever took the row from another before every lease of the previous epoch lapsed.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use super::*;

/// Logs every write of `tally_leader`, with the database's clock at the time of the write.
const LOG_WRITES: &str = "\
CREATE TABLE leader_log (
    id BIGSERIAL PRIMARY KEY, epoch BIGINT, node TEXT, expires_at TIMESTAMPTZ,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION log_leader() RETURNS trigger AS $$
BEGIN
    INSERT INTO leader_log (epoch, node, expires_at) VALUES (NEW.epoch, NEW.node, NEW.expires_at);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER log_leader AFTER INSERT OR UPDATE ON tally_leader
    FOR EACH ROW EXECUTE FUNCTION log_leader();
";

/// A database of one test, dropped when the test ends.
struct TestDb {
    /// The server, connected to the database named in `TALLY_TEST_POSTGRES`.
    admin: PgConnectOptions,
    /// The test's own database.
    options: PgConnectOptions,
    /// Its name.
    name: String,
    /// The test's own connections to it.
    pool: PgPool,
}

impl TestDb {
    /// A fresh database with the schema, or `None` (and a line saying so) without
    /// `TALLY_TEST_POSTGRES`.
    async fn new(test: &str) -> Option<TestDb> {
        let Ok(url) = std::env::var("TALLY_TEST_POSTGRES") else {
            println!("skipped {test}: TALLY_TEST_POSTGRES is not set");
            return None;
        };
        let admin = PgConnectOptions::from_str(&url).expect("TALLY_TEST_POSTGRES is a URL");
        let name = format!("tally_ha_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut conn = admin
            .connect()
            .await
            .expect("connect to TALLY_TEST_POSTGRES");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        conn.close().await.ok();
        let options = admin.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .expect("connect to the test database");
        sqlx::raw_sql(SCHEMA).execute(&pool).await.expect("schema");
        sqlx::raw_sql(LOG_WRITES).execute(&pool).await.expect("log");
        Some(TestDb {
            admin,
            options,
            name,
            pool,
        })
    }

    /// An elector of node `node` on this database (or through `options`), advertising
    /// `node`'s name as its address.
    fn elector(&self, node: &str, lease: Duration) -> Elector {
        self.elector_via(self.options.clone(), node, lease)
    }

    fn elector_via(&self, options: PgConnectOptions, node: &str, lease: Duration) -> Elector {
        Elector::start(
            options,
            ElectorConfig {
                node: node.to_owned(),
                address: format!("{node}.lan:27010"),
                lease,
            },
        )
        .expect("elector starts")
    }

    async fn fence(&self, epoch: i64) -> Result<(), Fenced> {
        let mut tx = self.pool.begin().await.expect("begin");
        check_epoch(&mut tx, epoch).await
    }

    /// Checks the log of the leader row: epochs grow by one, and a node takes the row from
    /// another only after the previous epoch's last written expiry, in the database's clock.
    async fn assert_handovers_safe(&self) {
        let log: Vec<(i64, String, f64, f64)> = sqlx::query_as(
            "SELECT epoch, node, extract(epoch FROM expires_at)::float8,
                    extract(epoch FROM at)::float8 FROM leader_log ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read the log");
        let mut previous: Option<(i64, String, f64)> = None;
        for (epoch, node, expires_at, at) in log {
            previous = match previous {
                // A renewal extends the lease, a resignation ends it: the last write counts.
                Some((prev_epoch, prev_node, _)) if prev_epoch == epoch => {
                    assert_eq!(prev_node, node, "epoch {epoch} changed hands");
                    Some((epoch, node, expires_at))
                }
                Some((prev_epoch, prev_node, prev_expiry)) => {
                    assert_eq!(epoch, prev_epoch + 1, "epochs grow by one");
                    if prev_node != node {
                        assert!(
                            prev_expiry < at,
                            "{node} took epoch {epoch} at {at} before epoch {prev_epoch} of \
                             {prev_node} lapsed at {prev_expiry}"
                        );
                    }
                    Some((epoch, node, expires_at))
                }
                None => Some((epoch, node, expires_at)),
            };
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let drop_db = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime, which cannot block on itself: drop the
        // database from a thread with a runtime of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(mut conn) = admin.connect().await {
                    let _ = sqlx::raw_sql(&drop_db).execute(&mut conn).await;
                }
            });
        })
        .join()
        .ok();
    }
}

/// Every role a receiver sees, with the instant it saw it, on the test's one monotonic clock.
type History = Arc<Mutex<Vec<(Instant, Role)>>>;

fn record(mut role: watch::Receiver<Role>) -> History {
    let history: History = Arc::new(Mutex::new(vec![(
        Instant::now(),
        role.borrow_and_update().clone(),
    )]));
    let log = history.clone();
    tokio::spawn(async move {
        while role.changed().await.is_ok() {
            let now = Instant::now();
            let seen = role.borrow_and_update().clone();
            log.lock().unwrap().push((now, seen));
        }
    });
    history
}

/// The spells of leadership in a history: (from, to, epoch); an open spell ends at `now`.
fn spells(history: &History, now: Instant) -> Vec<(Instant, Instant, i64)> {
    let history = history.lock().unwrap();
    let mut spells = Vec::new();
    let mut open: Option<(Instant, i64)> = None;
    for (at, role) in history.iter() {
        if let Some((from, epoch)) = open.take() {
            spells.push((from, *at, epoch));
        }
        if let Role::Leader { epoch } = role {
            open = Some((*at, *epoch));
        }
    }
    if let Some((from, epoch)) = open {
        spells.push((from, now, epoch));
    }
    spells
}

/// Asserts that no two nodes ever led at the same instant, as their receivers saw it.
fn assert_never_two_leaders(histories: &[&History]) {
    let now = Instant::now();
    let all: Vec<Vec<_>> = histories.iter().map(|h| spells(h, now)).collect();
    for (i, a) in all.iter().enumerate() {
        for b in all.iter().skip(i + 1) {
            for (a_from, a_to, a_epoch) in a {
                for (b_from, b_to, b_epoch) in b {
                    assert!(
                        a_to <= b_from || b_to <= a_from,
                        "epochs {a_epoch} and {b_epoch} led at the same time"
                    );
                }
            }
        }
    }
}

/// The instant a history first shows a role, once its recorder has seen it.
async fn first(history: &History, what: fn(&Role) -> bool) -> Instant {
    let found = async {
        loop {
            let seen = history
                .lock()
                .unwrap()
                .iter()
                .find(|(_, role)| what(role))
                .map(|(at, _)| *at);
            match seen {
                Some(at) => return at,
                None => tokio::task::yield_now().await,
            }
        }
    };
    timeout(LEASE, found)
        .await
        .expect("the recorder saw the role")
}

async fn wait_for(
    role: &mut watch::Receiver<Role>,
    within: Duration,
    what: &str,
    ok: impl FnMut(&Role) -> bool,
) -> Role {
    timeout(within, role.wait_for(ok))
        .await
        .unwrap_or_else(|_| panic!("no {what} within {within:?}"))
        .expect("the elector is running")
        .clone()
}

fn is_leader(role: &Role) -> bool {
    matches!(role, Role::Leader { .. })
}

fn follows(role: &Role) -> bool {
    matches!(role, Role::Standby { leader: Some(_) })
}

/// A TCP proxy between one node and PostgreSQL that the test can stall: from then on it
/// forwards nothing in either direction and holds every socket open, as a cut link does
/// before any timeout fires.
struct Proxy {
    port: u16,
    stalled: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (stalled, _) = watch::channel(false);
        let stall = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let stall = stall.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pipe(client_read, server_write, stall.clone()),
                        pipe(server_read, client_write, stall),
                    );
                });
            }
        });
        Proxy { port, stalled }
    }

    fn options(&self, db: &TestDb) -> PgConnectOptions {
        db.options.clone().host("127.0.0.1").port(self.port)
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Once stalled, wait forever (the socket stays open, the bytes go nowhere).
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

const LEASE: Duration = Duration::from_millis(1000);

#[test]
fn timing_steps_down_a_margin_before_the_lease_can_lapse() {
    for ms in [300, 600, 1000, 3000, 60_000] {
        let lease = Duration::from_millis(ms);
        let timing = Timing::new(lease).unwrap();
        let start = Instant::now();
        assert_eq!(timing.leads_until(start) + timing.margin, start + lease);
        assert!(timing.margin > Duration::ZERO);
        assert!(timing.statement_timeout < timing.margin, "{timing:?}");
        // A leader renews at least once more before it would step down.
        assert!(timing.renew_every < lease - timing.margin, "{timing:?}");
        assert!(timing.poll_every < timing.renew_every, "{timing:?}");
    }
}

#[test]
fn a_lease_out_of_range_and_empty_names_are_refused() {
    for ms in [0, 299, 3_600_001] {
        let err = Timing::new(Duration::from_millis(ms)).unwrap_err();
        assert!(err.to_string().contains("ha.lease"), "{err}");
        assert!(err.to_string().contains(&format!("not {ms} ms")), "{err}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let options = PgConnectOptions::new();
    let config = |node: &str, address: &str| ElectorConfig {
        node: node.into(),
        address: address.into(),
        lease: LEASE,
    };
    let err = Elector::start(options.clone(), config("", "a:1")).unwrap_err();
    assert_eq!(err.to_string(), "the node id is empty");
    let err = Elector::start(options, config("a", "")).unwrap_err();
    assert_eq!(err.to_string(), "ha.advertise is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_electors_exactly_one_leads_and_the_other_follows_it() {
    let Some(db) = TestDb::new("of_two_electors_exactly_one_leads").await else {
        return;
    };
    let a = db.elector("a", LEASE);
    let b = db.elector("b", LEASE);
    let (history_a, history_b) = (record(a.role()), record(b.role()));
    let (mut role_a, mut role_b) = (a.role(), b.role());
    // Whichever leads, the other names it; neither changes over two leases.
    let (leader, mut follower) = tokio::select! {
        _ = role_a.wait_for(is_leader) => ("a", b.role()),
        _ = role_b.wait_for(is_leader) => ("b", a.role()),
    };
    let seen = wait_for(&mut follower, LEASE, "standby naming the leader", follows).await;
    assert_eq!(
        seen,
        Role::Standby {
            leader: Some(format!("{leader}.lan:27010"))
        }
    );
    tokio::time::sleep(2 * LEASE).await;
    assert_never_two_leaders(&[&history_a, &history_b]);
    let now = Instant::now();
    let spells: Vec<_> = [&history_a, &history_b]
        .iter()
        .flat_map(|h| spells(h, now))
        .collect();
    assert_eq!(spells.len(), 1, "one spell of leadership: {spells:?}");
    assert_eq!(spells[0].2, 1);
    // Epoch 1 is current, unless a busy machine delayed a renewal since the spells were
    // read: then the leader must already have stepped down (it does so before its row can
    // lapse), so no node still leads under a fenced-off epoch.
    let fenced = db.fence(1).await;
    let leading = |role: &watch::Receiver<Role>| *role.borrow() == Role::Leader { epoch: 1 };
    assert!(
        fenced.is_ok() || !(leading(&role_a) || leading(&role_b)),
        "epoch 1 fenced off ({fenced:?}) while a node still leads under it"
    );
    let nodes: Vec<(String, String)> =
        sqlx::query_as("SELECT id, address FROM tally_nodes ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        nodes,
        [
            ("a".to_owned(), "a.lan:27010".to_owned()),
            ("b".to_owned(), "b.lan:27010".to_owned())
        ]
    );
    db.assert_handovers_safe().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_only_after_its_lease_lapses() {
    let Some(db) = TestDb::new("a_killed_leader_is_replaced").await else {
        return;
    };
    let a = db.elector("a", LEASE);
    wait_for(&mut a.role(), LEASE, "leader", is_leader).await;
    let b = db.elector("b", LEASE);
    let mut role_b = b.role();
    wait_for(&mut role_b, LEASE, "standby naming a", follows).await;
    let killed = Instant::now();
    a.kill().await;
    let role = wait_for(&mut role_b, 3 * LEASE, "takeover", is_leader).await;
    let waited = killed.elapsed();
    assert_eq!(role, Role::Leader { epoch: 2 });
    // The row was renewed at most `renew_every` before the kill and lasts a lease.
    let timing = Timing::new(LEASE).unwrap();
    assert!(
        waited >= LEASE - timing.renew_every - timing.statement_timeout,
        "took over {waited:?} after the kill"
    );
    db.assert_handovers_safe().await;
    assert!(matches!(
        db.fence(1).await,
        Err(Fenced::Superseded {
            ours: 1,
            current: 2
        })
    ));
    assert!(db.fence(2).await.is_ok());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_from_the_database_steps_down_before_the_takeover() {
    let Some(db) = TestDb::new("a_leader_cut_from_the_database").await else {
        return;
    };
    let upstream = (db.options.get_host().to_owned(), db.options.get_port());
    let proxy = Proxy::start(upstream).await;
    let a = db.elector_via(proxy.options(&db), "a", LEASE);
    let mut role_a = a.role();
    wait_for(&mut role_a, LEASE, "leader", is_leader).await;
    let b = db.elector("b", LEASE);
    let mut role_b = b.role();
    wait_for(&mut role_b, LEASE, "standby naming a", follows).await;
    let (history_a, history_b) = (record(a.role()), record(b.role()));

    proxy.stall();
    let role = wait_for(&mut role_b, 3 * LEASE, "takeover", is_leader).await;
    // Epoch 2, or a later one of b's if a busy machine made b step down and take over
    // again before this test looked.
    let epoch = role.epoch().expect("b leads");
    assert!(epoch >= 2, "{role:?}");
    let stepped_down = first(&history_a, |role| !is_leader(role)).await;
    let took_over = first(&history_b, is_leader).await;
    assert!(
        stepped_down < took_over,
        "a stepped down {:?} after b took over",
        stepped_down - took_over
    );
    assert_never_two_leaders(&[&history_a, &history_b]);
    db.assert_handovers_safe().await;
    assert!(matches!(
        db.fence(1).await,
        Err(Fenced::Superseded { ours: 1, current }) if current >= 2
    ));
    assert!(db.fence(epoch).await.is_ok() || role_b.borrow().epoch() != Some(epoch));
    drop(a);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigning_leader_hands_over_at_once() {
    let Some(db) = TestDb::new("a_resigning_leader_hands_over").await else {
        return;
    };
    // A long lease: standbys poll every second, so only the notification is this fast.
    let lease = Duration::from_secs(3);
    let a = db.elector("a", lease);
    let mut role_a = a.role();
    wait_for(&mut role_a, lease, "leader", is_leader).await;
    let b = db.elector("b", lease);
    let mut role_b = b.role();
    wait_for(&mut role_b, lease, "standby naming a", follows).await;
    // Wait for both listeners' connections: they are made as the electors start.
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if n == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let resigned = Instant::now();
    a.shutdown().await;
    assert_eq!(*role_a.borrow(), Role::Standby { leader: None });
    let role = wait_for(&mut role_b, lease, "takeover", is_leader).await;
    let waited = resigned.elapsed();
    assert_eq!(role, Role::Leader { epoch: 2 });
    assert!(
        waited < Duration::from_millis(500),
        "took over after {waited:?}"
    );
    db.assert_handovers_safe().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn electors_started_together_elect_one() {
    let Some(db) = TestDb::new("electors_started_together").await else {
        return;
    };
    let electors: Vec<Elector> = ["a", "b", "c", "d"]
        .iter()
        .map(|node| db.elector(node, LEASE))
        .collect();
    let histories: Vec<History> = electors.iter().map(|e| record(e.role())).collect();
    tokio::time::sleep(2 * LEASE).await;
    let now = Instant::now();
    let spells: Vec<_> = histories.iter().flat_map(|h| spells(h, now)).collect();
    assert_eq!(spells.len(), 1, "one spell of leadership: {spells:?}");
    assert_eq!(spells[0].2, 1);
    let epochs: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT epoch FROM leader_log")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(epochs, [1]);
    for elector in electors {
        elector.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_leader_steps_down_at_its_next_renewal() {
    let Some(db) = TestDb::new("a_superseded_leader_steps_down").await else {
        return;
    };
    // A long lease, so that the step-down comes from the failed renewal, not the deadline.
    let lease = Duration::from_secs(3);
    let a = db.elector("a", lease);
    let mut role_a = a.role();
    wait_for(&mut role_a, lease, "leader", is_leader).await;
    let taken = Instant::now();
    sqlx::query("UPDATE tally_leader SET node = 'x', address = 'x:1', epoch = epoch + 1")
        .execute(&db.pool)
        .await
        .unwrap();
    let role = wait_for(&mut role_a, lease, "step-down", |role| !is_leader(role)).await;
    let waited = taken.elapsed();
    let timing = Timing::new(lease).unwrap();
    assert!(
        waited < timing.renew_every + timing.statement_timeout,
        "stepped down after {waited:?}"
    );
    // It then follows x, which holds an unexpired lease.
    assert!(matches!(role, Role::Standby { .. }));
    let role = wait_for(&mut role_a, lease, "standby naming x", follows).await;
    assert_eq!(
        role,
        Role::Standby {
            leader: Some("x:1".into())
        }
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_left_naming_this_node_is_taken_at_once_with_a_new_epoch() {
    let Some(db) = TestDb::new("a_row_left_naming_this_node").await else {
        return;
    };
    // What a takeover cancelled on the client side but run on the server leaves behind: a
    // row naming this node under an epoch it does not know, good for an hour.
    sqlx::query(
        "INSERT INTO tally_leader VALUES (1, 'a', 'a.lan:27010', 7, now() + interval '1 hour')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let a = db.elector("a", LEASE);
    let role = wait_for(&mut a.role(), LEASE, "leader", is_leader).await;
    assert_eq!(role, Role::Leader { epoch: 8 });
    assert!(matches!(db.fence(7).await, Err(Fenced::Superseded { .. })));
    // Another node's row is left alone until it lapses.
    let b = db.elector("b", LEASE);
    let role = wait_for(&mut b.role(), LEASE, "standby naming a", follows).await;
    assert_eq!(
        role,
        Role::Standby {
            leader: Some("a.lan:27010".into())
        }
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_fence_refuses_old_and_lapsed_epochs_and_holds_off_a_takeover() {
    let Some(db) = TestDb::new("the_fence").await else {
        return;
    };
    assert!(matches!(db.fence(1).await, Err(Fenced::NoLeader)));
    sqlx::query("INSERT INTO tally_leader VALUES (1, 'a', 'a:1', 3, now() + interval '1 hour')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(db.fence(3).await.is_ok());
    let err = db.fence(2).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "leadership moved on: this node committed under epoch 2, the database holds epoch 3"
    );

    // A commit that passed the fence holds the row: a takeover waits for it to end.
    let mut commit = db.pool.begin().await.unwrap();
    check_epoch(&mut commit, 3).await.unwrap();
    let mut other = db.pool.acquire().await.unwrap();
    sqlx::query("SET lock_timeout = '200ms'")
        .execute(&mut *other)
        .await
        .unwrap();
    let takeover = "UPDATE tally_leader SET node = 'b', epoch = epoch + 1";
    let err = sqlx::query(takeover)
        .execute(&mut *other)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("55P03"),
        "lock_not_available: {err}"
    );
    commit.commit().await.unwrap();
    sqlx::query(takeover).execute(&mut *other).await.unwrap();
    assert!(matches!(
        db.fence(3).await,
        Err(Fenced::Superseded {
            ours: 3,
            current: 4
        })
    ));

    // The current epoch, lapsed in the database's clock, is refused too.
    sqlx::query("UPDATE tally_leader SET expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = db.fence(4).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the lease of epoch 4 has lapsed in the database's clock"
    );
}
