//! A cluster of `tallyd` processes on one PostgreSQL database (SPEC §7), and what the tests
//! of failover need around it:
//!
//! - [`TestDatabase`]: a fresh database per test on the server `TALLY_TEST_POSTGRES` names,
//!   dropped when the test ends, so that no test sees another's leader row or pool;
//! - [`Proxy`]: a TCP proxy between one node and PostgreSQL that the test can cut (a pulled
//!   cable), heal and reset (a database restart), since a node's database connection is the
//!   one thing a test cannot otherwise break on purpose;
//! - [`Cluster`]: N nodes (real `tallyd-under-test` processes, so that a test can SIGKILL
//!   them) with their logs in files, which leads as the database says, and clients for all.
//!
//! Who leads is read from the database (`tally_leader`), not asked of the nodes: the row is
//! what decides, and a node cut from the database may still believe it leads for a moment.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Connection;
use tally_client::{Client, ClientConfig, ServerAddr};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::harness::{free_port, DaemonProcess};

/// The variable naming the PostgreSQL server of the tests, as a URL whose database the
/// tests may connect to (e.g. `postgres://postgres@127.0.0.1:5432/test`).
pub const POSTGRES_VAR: &str = "TALLY_TEST_POSTGRES";

/// How long a node may take from its start to `READY=1`: migrations and the first load
/// included, on a machine busy with other builds.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long the test's own statements (reading the leader row, checks) may take.
const STATEMENT_WITHIN: Duration = Duration::from_secs(5);

/// How many lines of each node's log a failing test prints.
const LOG_TAIL: usize = 60;

/// The parts of a `postgres://` URL the tests rewrite: another database, another address.
#[derive(Debug, Clone)]
struct PgUrl {
    /// `postgres` or `postgresql`.
    scheme: String,
    /// `user` or `user:password`, kept as written.
    userinfo: Option<String>,
    /// The host as written (an IPv6 literal keeps its brackets).
    host: String,
    port: u16,
    /// The query string (`sslmode=...`), kept as written.
    query: Option<String>,
}

impl PgUrl {
    fn parse(url: &str) -> PgUrl {
        let (scheme, rest) = url
            .split_once("://")
            .unwrap_or_else(|| panic!("{POSTGRES_VAR} is not a URL: {url:?}"));
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query.to_string())),
            None => (rest, None),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo.to_string()), hostport),
            None => (None, authority),
        };
        let (host, port) = match hostport.rfind(']') {
            // [::1]:5432 or [::1]
            Some(end) => (
                &hostport[..=end],
                hostport[end + 1..].strip_prefix(':').unwrap_or_default(),
            ),
            None => hostport.split_once(':').unwrap_or((hostport, "")),
        };
        assert!(
            !host.is_empty(),
            "{POSTGRES_VAR} must name a TCP host (a proxy sits in front of it): {url:?}"
        );
        let port = if port.is_empty() {
            5432
        } else {
            port.parse()
                .unwrap_or_else(|_| panic!("{POSTGRES_VAR} has a bad port: {url:?}"))
        };
        PgUrl {
            scheme: scheme.to_string(),
            userinfo,
            host: host.to_string(),
            port,
            query,
        }
    }

    /// The URL of `database` on `host:port`, with this URL's user and options.
    fn to(&self, host: &str, port: u16, database: &str) -> String {
        let user = self
            .userinfo
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let query = self
            .query
            .as_ref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        format!("{}://{user}{host}:{port}/{database}{query}", self.scheme)
    }

    /// The server's TCP address, IPv4 first (where a server on `localhost` most often
    /// listens).
    fn socket_addr(&self) -> SocketAddr {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let mut addrs: Vec<SocketAddr> = (host, self.port)
            .to_socket_addrs()
            .unwrap_or_else(|err| panic!("cannot resolve {host}: {err}"))
            .collect();
        addrs.sort_by_key(|a| !a.is_ipv4());
        *addrs
            .first()
            .unwrap_or_else(|| panic!("{host} resolves to nothing"))
    }
}

/// The live leader row: which node leads, where clients are sent, under which epoch.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaderRow {
    pub node: String,
    pub address: String,
    pub epoch: i64,
}

/// A database of one test on the server of `TALLY_TEST_POSTGRES`, made with a random name
/// and dropped `WITH (FORCE)` when the test ends (a node still connected, or a test that
/// panicked, does not leave it behind).
pub struct TestDatabase {
    /// `TALLY_TEST_POSTGRES` itself: where the database is created and dropped from.
    admin_url: String,
    /// Its parts, to write the URLs of this database.
    server: PgUrl,
    /// This test's database.
    pub name: String,
    /// The test's own connections to it, for reading the leader row and checking tables.
    pool: PgPool,
}

impl TestDatabase {
    /// A fresh, empty database, or `None` (after printing a line saying the test is
    /// skipped) when `TALLY_TEST_POSTGRES` is not set.
    pub async fn create(test: &str) -> Option<TestDatabase> {
        let Ok(admin_url) = std::env::var(POSTGRES_VAR) else {
            println!("skipped {test}: {POSTGRES_VAR} is not set");
            return None;
        };
        let server = PgUrl::parse(&admin_url);
        let name = format!("tally_e2e_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {POSTGRES_VAR}: {err}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("cannot create database {name}: {err}"));
        admin.close().await.ok();
        let url = server.to(&server.host, server.port, &name);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(STATEMENT_WITHIN)
            .connect(&url)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {name}: {err}"));
        Some(TestDatabase {
            admin_url,
            server,
            name,
            pool,
        })
    }

    /// The URL of this database, straight to the server.
    pub fn url(&self) -> String {
        self.server
            .to(&self.server.host, self.server.port, &self.name)
    }

    /// The URL of this database through `proxy`.
    pub fn url_via(&self, proxy: &Proxy) -> String {
        self.server.to("127.0.0.1", proxy.port(), &self.name)
    }

    /// The PostgreSQL server's TCP address, for a [`Proxy`] in front of it.
    pub fn server_addr(&self) -> SocketAddr {
        self.server.socket_addr()
    }

    /// The leader row whose lease has not lapsed in the database's clock; `Ok(None)` when
    /// no node leads. An error until a node has created the table.
    pub async fn leader_row(&self) -> Result<Option<LeaderRow>, String> {
        let query = sqlx::query_as::<_, LeaderRow>(
            "SELECT node, address, epoch FROM tally_leader WHERE id = 1 AND expires_at > now()",
        )
        .fetch_optional(&self.pool);
        match tokio::time::timeout(STATEMENT_WITHIN, query).await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {STATEMENT_WITHIN:?}")),
        }
    }

    /// From now on, logs every write of the leader row with the database's clock at the
    /// time (a trigger of the test's; the nodes never see it), starting with the row as it
    /// is (all in one transaction: creating the trigger holds writers off until it ends), so
    /// that a handover before the leader's next renewal is counted too; for
    /// [`assert_handovers_safe`](Self::assert_handovers_safe). Call it once the first node
    /// has made the tables.
    pub async fn log_leader_writes(&self) {
        let sql = "\
            CREATE TABLE e2e_leader_log (
                id BIGSERIAL PRIMARY KEY, epoch BIGINT, node TEXT, expires_at TIMESTAMPTZ,
                at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
            );
            CREATE FUNCTION e2e_log_leader() RETURNS trigger AS $$
            BEGIN
                INSERT INTO e2e_leader_log (epoch, node, expires_at)
                    VALUES (NEW.epoch, NEW.node, NEW.expires_at);
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER e2e_log_leader AFTER INSERT OR UPDATE ON tally_leader
                FOR EACH ROW EXECUTE FUNCTION e2e_log_leader();
            INSERT INTO e2e_leader_log (epoch, node, expires_at)
                SELECT epoch, node, expires_at FROM tally_leader;";
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .expect("install the leader log");
    }

    /// Checks the log of [`log_leader_writes`](Self::log_leader_writes): epochs grow by one,
    /// an epoch never changes hands, and a node takes the row from another only after the
    /// previous epoch's last written expiry, in the database's clock (R13: one leader at a
    /// time). Returns how many changes of leader the log holds.
    pub async fn assert_handovers_safe(&self) -> usize {
        let log: Vec<(i64, String, f64, f64)> = sqlx::query_as(
            "SELECT epoch, node, extract(epoch FROM expires_at)::float8,
                    extract(epoch FROM at)::float8 FROM e2e_leader_log ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read the leader log");
        let mut handovers = 0;
        let mut previous: Option<(i64, String, f64)> = None;
        for (epoch, node, expires_at, at) in log {
            if let Some((prev_epoch, prev_node, prev_expiry)) = &previous {
                if *prev_epoch == epoch {
                    assert_eq!(*prev_node, node, "epoch {epoch} changed hands");
                } else {
                    assert_eq!(epoch, prev_epoch + 1, "epochs grow by one");
                    if *prev_node != node {
                        handovers += 1;
                        assert!(
                            *prev_expiry < at,
                            "{node} took epoch {epoch} at {at} before epoch {prev_epoch} of \
                             {prev_node} lapsed at {prev_expiry}"
                        );
                    }
                }
            }
            previous = Some((epoch, node, expires_at));
        }
        handovers
    }

    /// Runs a query that yields one number (a count), panicking on any error.
    pub async fn count(&self, sql: &str) -> i64 {
        let query = sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool);
        tokio::time::timeout(STATEMENT_WITHIN, query)
            .await
            .unwrap_or_else(|_| panic!("{sql}: no answer within {STATEMENT_WITHIN:?}"))
            .unwrap_or_else(|err| panic!("{sql}: {err}"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let drop_db = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside the test's runtime, which cannot block on itself: drop the
        // database from a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .map_err(|err| err.to_string())?;
                sqlx::raw_sql(&drop_db)
                    .execute(&mut conn)
                    .await
                    .map_err(|err| err.to_string())?;
                Ok::<_, String>(())
            })
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("could not drop test database {}: {err}", self.name);
        }
    }
}

/// What a [`Proxy`] does with bytes, and the counts its connections compare against to
/// learn what happened since they opened (a `watch` may show only the latest value, so a
/// cut quickly followed by a heal must still be seen by every connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ProxyState {
    /// No byte moves, new connections hang.
    cut: bool,
    /// How many times the proxy was cut.
    cuts: u64,
    /// How many times every connection was reset.
    resets: u64,
}

/// A TCP proxy on 127.0.0.1 in front of PostgreSQL, for one node, under the test's control:
///
/// - [`cut`](Self::cut): a pulled cable. Connections stay open, but no byte moves either
///   way, and new connections are accepted and then hang. Nobody gets a reset: the node
///   finds out only through its own timeouts, as it would on a real network.
/// - [`heal`](Self::heal): bytes flow again on new connections; connections that were open
///   during the cut are reset (their sessions are long gone on a real network too).
/// - [`reset`](Self::reset): every connection is reset at once, as when the database
///   restarts; new connections flow.
///
/// A reset is a TCP RST (`SO_LINGER` 0) to both the node and the server.
pub struct Proxy {
    addr: SocketAddr,
    state: watch::Sender<ProxyState>,
    /// The accept loop; aborted on drop.
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `upstream`, flowing.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (state, _) = watch::channel(ProxyState::default());
        let states = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(relay(client, upstream, states.subscribe()));
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops every byte, silently (see [`Proxy`]).
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.cut = true;
            s.cuts += 1;
        });
    }

    /// Lets bytes flow on new connections and resets those the cut stalled.
    pub fn heal(&self) {
        self.state.send_modify(|s| s.cut = false);
    }

    /// Resets every connection now.
    pub fn reset(&self) {
        self.state.send_modify(|s| s.resets += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Every connection ends with the proxy.
        self.reset();
    }
}

/// Ends a connection with a reset instead of a FIN, as a dead peer's network would.
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// One proxied connection: from accept to its end (either side closing, or the test's
/// cut, heal or reset).
async fn relay(client: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<ProxyState>) {
    let start = *state.borrow_and_update();
    let mut ending = state.clone();
    // Ends when this connection must be reset: at any reset, or at a heal once it was
    // stalled by a cut. A closed channel (the proxy dropped) ends it too.
    let doomed = async move {
        until(&mut ending, |now| {
            now.resets != start.resets || (!now.cut && (start.cut || now.cuts != start.cuts))
        })
        .await
    };
    tokio::pin!(doomed);
    if start.cut {
        // Accepted during a cut: hangs until healed or reset, never reaching the server.
        doomed.await;
        abort(client);
        return;
    }
    let server = tokio::select! {
        server = TcpStream::connect(upstream) => match server {
            Ok(server) => server,
            Err(_) => return abort(client),
        },
        () = &mut doomed => return abort(client),
    };
    let _ = server.set_nodelay(true);
    let (mut client, mut server) = (client, server);
    let stalled = move |now: &ProxyState| now.cut || now.cuts != start.cuts;
    let finished = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = async {
            tokio::try_join!(
                pipe(client_read, server_write, state.clone(), stalled),
                pipe(server_read, client_write, state.clone(), stalled),
            )
        };
        tokio::select! {
            result = both => result.is_ok(),
            () = &mut doomed => false,
        }
    };
    if !finished {
        abort(client);
        abort(server);
    }
}

/// Copies bytes one way until the source closes (then passes the close on) or fails. Once
/// `stalled`, it moves nothing more, ever: the connection waits for its reset.
async fn pipe(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut state: watch::Receiver<ProxyState>,
    stalled: impl Fn(&ProxyState) -> bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            () = until(&mut state, &stalled) => return std::future::pending().await,
            read = from.read(&mut buf) => read?,
        };
        if n == 0 {
            return to.shutdown().await;
        }
        tokio::select! {
            biased;
            () = until(&mut state, &stalled) => return std::future::pending().await,
            written = to.write_all(&buf[..n]) => written?,
        }
    }
}

/// Resolves once the proxy's state fits `what`, or the proxy is gone.
async fn until(state: &mut watch::Receiver<ProxyState>, what: impl Fn(&ProxyState) -> bool) {
    let _ = state.wait_for(what).await;
}

/// The shape of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// How many nodes.
    pub nodes: usize,
    /// Whether each node reaches PostgreSQL through a [`Proxy`] of its own.
    pub proxied: bool,
    /// `ha.lease`: how long leadership lasts unrenewed.
    pub lease: &'static str,
    /// `leases.ttl` and `leases.sweep` of the seats.
    pub ttl: &'static str,
    pub sweep: &'static str,
    /// More configuration for every node (its tables go after the harness's and `[ha]`).
    pub extra: String,
    /// Whether each node serves `[http]` on a port of its own ([`Node::http`]).
    pub http: bool,
}

impl ClusterSpec {
    /// `nodes` nodes straight to the database, leadership lease 1 s (or
    /// `TALLY_TEST_HA_LEASE`, e.g. `3s`, the default of `ha.lease`, with which
    /// `TALLY_TEST_HA_LEASE=3s scripts/soak-failover` checks the 5 s bound), seat ttl 3 s.
    pub fn new(nodes: usize) -> ClusterSpec {
        let lease = match std::env::var("TALLY_TEST_HA_LEASE") {
            Ok(lease) => &*Box::leak(lease.into_boxed_str()),
            Err(_) => "1s",
        };
        ClusterSpec {
            nodes,
            proxied: false,
            lease,
            ttl: "3s",
            sweep: "200ms",
            extra: String::new(),
            http: false,
        }
    }

    /// Each node serves `/metrics` and the probes over HTTPS.
    pub fn with_http(mut self) -> ClusterSpec {
        self.http = true;
        self
    }

    /// Each node through its own proxy.
    pub fn proxied(mut self) -> ClusterSpec {
        self.proxied = true;
        self
    }
}

/// One node of a [`Cluster`].
pub struct Node {
    /// The process; `None` until the node is first started.
    pub process: Option<DaemonProcess>,
    /// Its directory: `tallyd.toml` and `data/`.
    pub dir: PathBuf,
    /// Its configuration on top of the harness's: `database` and `[ha]`.
    extra: String,
    /// Where it listens, and what it advertises (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    /// Where it serves HTTPS, when the spec asked for it.
    pub http: Option<SocketAddr>,
    /// Its stderr (the log), appended to across restarts.
    pub log: PathBuf,
    /// False before its start and between [`Cluster::kill9`] and [`Cluster::restart`].
    pub running: bool,
}

impl Node {
    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn process(&mut self) -> &mut DaemonProcess {
        self.process.as_mut().expect("the node was started")
    }
}

/// Nodes of one cluster on one [`TestDatabase`], each a `tallyd-under-test` process with
/// its own data directory and log file, node `i` optionally through `proxies[i]`.
///
/// When the test panics, dropping the cluster prints the tail of every node's log and keeps
/// the temporary directory (its path is printed), so a failure in a soak run can be read
/// afterwards.
pub struct Cluster {
    // Fields drop in this order: the processes first, then the proxies, then the
    // database (which a running node would hold connections to), then the files.
    pub nodes: Vec<Node>,
    /// One per node when the spec asked for them, else none.
    pub proxies: Vec<Proxy>,
    /// What the cluster was started with.
    pub spec: ClusterSpec,
    pub db: TestDatabase,
    dir: TempDir,
}

impl Cluster {
    /// Starts the first node, which makes the cluster on the empty database, then the
    /// others together; returns once every node has sent `READY=1`.
    pub async fn start(db: TestDatabase, spec: ClusterSpec) -> Cluster {
        let mut cluster = Self::prepare(db, &spec).await;
        cluster.launch(0);
        cluster.ready(0).await;
        for i in 1..spec.nodes {
            cluster.launch(i);
        }
        for i in 1..spec.nodes {
            cluster.ready(i).await;
        }
        cluster
    }

    /// Starts every node at the same moment (all spawned before any is waited for), so
    /// that they race to make the cluster.
    pub async fn start_together(db: TestDatabase, spec: ClusterSpec) -> Cluster {
        let mut cluster = Self::prepare(db, &spec).await;
        for i in 0..spec.nodes {
            cluster.launch(i);
        }
        for i in 0..spec.nodes {
            cluster.ready(i).await;
        }
        cluster
    }

    /// Chooses every node's port and database URL (through a new proxy when asked)
    /// without starting any.
    async fn prepare(db: TestDatabase, spec: &ClusterSpec) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut proxies = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..spec.nodes {
            let url = if spec.proxied {
                let proxy = Proxy::start(db.server_addr()).await;
                let url = db.url_via(&proxy);
                proxies.push(proxy);
                url
            } else {
                db.url()
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let http = spec
                .http
                .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
            let http_section = match http {
                Some(http) => format!("[http]\nlisten = \"{http}\"\n"),
                None => String::new(),
            };
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("a node directory");
            nodes.push(Node {
                process: None,
                dir: node_dir,
                extra: format!(
                    "database = {url:?}\n[ha]\nadvertise = \"{addr}\"\nlease = \"{}\"\n{}{http_section}",
                    spec.lease, spec.extra
                ),
                addr,
                http,
                log: dir.path().join(format!("node{i}.log")),
                running: false,
            });
        }
        Cluster {
            nodes,
            proxies,
            spec: spec.clone(),
            db,
            dir,
        }
    }

    /// Starts node `i` (the first time on a configuration written now), its stderr
    /// appended to its log; does not wait for it to be ready.
    fn launch(&mut self, i: usize) {
        use std::io::Write;
        let spec = &self.spec;
        let node = &mut self.nodes[i];
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open a node log");
        let _ = writeln!(log, "---- tallyd node {i} starting ----");
        match &mut node.process {
            Some(process) => process.relaunch(Stdio::from(log)),
            None => {
                node.process = Some(DaemonProcess::launch(
                    &node.dir,
                    node.addr.port(),
                    spec.ttl,
                    spec.sweep,
                    &node.extra,
                    Stdio::from(log),
                ))
            }
        }
        node.running = true;
    }

    /// Waits for node `i`'s `READY=1`; panics if it exits or takes longer than
    /// [`READY_WITHIN`].
    async fn ready(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Err(why) = wait_ready(node.process(), READY_WITHIN).await {
            panic!("node {i} ({}) did not become ready: {why}", node.addr);
        }
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].process().kill9();
        self.nodes[i].running = false;
    }

    /// Starts node `i` again on its port, configuration and data, and waits until ready.
    pub async fn restart(&mut self, i: usize) {
        self.launch(i);
        self.ready(i).await;
    }

    /// Whether node `i` runs (it was not killed, and did not exit by itself).
    pub fn is_running(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        node.running && matches!(node.process().child.try_wait(), Ok(None))
    }

    /// The proxy in front of node `i` (a cluster started with [`ClusterSpec::proxied`]).
    pub fn proxy(&self, i: usize) -> &Proxy {
        &self.proxies[i]
    }

    /// The index of the node a leader row names.
    fn index_of(&self, row: &LeaderRow) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr.to_string() == row.address)
            .unwrap_or_else(|| panic!("the leader row names no node of this cluster: {row:?}"))
    }

    /// The node whose lease is live in the database, with its epoch; `None` when none is
    /// (or the table does not exist yet).
    pub async fn leadership(&self) -> Option<(usize, i64)> {
        match self.db.leader_row().await {
            Ok(Some(row)) => Some((self.index_of(&row), row.epoch)),
            _ => None,
        }
    }

    /// The node whose lease is live in the database.
    pub async fn leader(&self) -> Option<usize> {
        self.leadership().await.map(|(i, _)| i)
    }

    /// Waits for a live leader row naming a running node; its index.
    pub async fn wait_leader(&mut self, within: Duration) -> usize {
        self.wait_leadership(within).await.0
    }

    /// Waits for a live leader row naming a running node; its index and epoch.
    pub async fn wait_leadership(&mut self, within: Duration) -> (usize, i64) {
        self.wait_until(within, |_, _| true).await
    }

    /// Waits for a live leader row of an epoch after `epoch` naming a running node.
    pub async fn wait_leader_after(&mut self, epoch: i64, within: Duration) -> (usize, i64) {
        self.wait_until(within, |_, e| e > epoch).await
    }

    async fn wait_until(
        &mut self,
        within: Duration,
        fits: impl Fn(usize, i64) -> bool,
    ) -> (usize, i64) {
        let deadline = Instant::now() + within;
        loop {
            let last = self.db.leader_row().await;
            if let Ok(Some(row)) = &last {
                let i = self.index_of(row);
                if fits(i, row.epoch) && self.is_running(i) {
                    return (i, row.epoch);
                }
            }
            if Instant::now() >= deadline {
                panic!("no fitting leader within {within:?}; the leader row: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The data directory of the node that made the cluster (the one holding `owner.token`
    /// and `client.toml`).
    pub fn founder_data_dir(&self) -> PathBuf {
        let founders: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.data_dir().join("owner.token").exists())
            .collect();
        assert_eq!(
            founders.len(),
            1,
            "exactly one node writes owner.token: {:?}",
            founders.iter().map(|n| n.addr).collect::<Vec<_>>()
        );
        founders[0].data_dir()
    }

    /// The owner's token, as the founding node wrote it.
    pub fn owner_token(&self) -> String {
        std::fs::read_to_string(self.founder_data_dir().join("owner.token"))
            .expect("read owner.token")
            .trim()
            .to_string()
    }

    /// A client configuration for `token` naming the nodes `nodes`, in that order, with the
    /// cluster's CA (from the founder's `client.toml`).
    pub fn client_config_of(&self, nodes: &[usize], token: &str) -> ClientConfig {
        let mut config = ClientConfig::from_file(&self.founder_data_dir().join("client.toml"))
            .expect("the founder's client.toml");
        config.servers = nodes
            .iter()
            .map(|&i| ServerAddr {
                host: "localhost".into(),
                port: self.nodes[i].addr.port(),
            })
            .collect();
        config.token = token.to_string();
        config.request_timeout = Duration::from_secs(15);
        config.connect_timeout = Duration::from_secs(3);
        config
    }

    /// A client configuration for `token` listing every node.
    pub fn client_config(&self, token: &str) -> ClientConfig {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.client_config_of(&all, token)
    }

    /// A client signed in as the owner, knowing every node.
    pub async fn owner(&self) -> Client {
        Client::connect(self.client_config(&self.owner_token()))
            .await
            .expect("the owner signs in to the cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            eprintln!(
                "---- last {LOG_TAIL} lines of node {i} ({}, {}) ----\n{}",
                node.addr,
                node.log.display(),
                tail(&node.log, LOG_TAIL)
            );
        }
        self.dir.disable_cleanup(true);
        eprintln!(
            "---- the cluster's files are kept in {} ----",
            self.dir.path().display()
        );
    }
}

/// The last `lines` lines of a file, or why it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// Waits for `READY=1` from a daemon without blocking the runtime (the tests' load keeps
/// running while a node restarts), and gives up at once if the daemon exits first.
///
/// It reads a duplicate of the daemon's notify socket made non-blocking, which makes the
/// original non-blocking too (they share the open file): after this, only this function
/// may wait on that process's socket. A restart makes a new socket.
pub async fn wait_ready(process: &mut DaemonProcess, within: Duration) -> Result<(), String> {
    let socket = process.notify.try_clone().map_err(|e| e.to_string())?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let socket = tokio::net::UnixDatagram::from_std(socket).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!("it exited ({status}) before it was ready"));
        }
        if Instant::now() >= deadline {
            return Err(format!("no READY=1 within {within:?}"));
        }
        let slice = tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await;
        if let Ok(Ok(n)) = slice {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pieces that need no cluster: URLs, the proxy, a database per test, readiness.

    use super::*;

    #[test]
    fn urls_of_the_test_server_keep_user_options_and_rewrite_host_and_database() {
        let url = PgUrl::parse("postgres://postgres:pw@db.lan:6543/test?sslmode=disable");
        assert_eq!(
            url.to("127.0.0.1", 40001, "tally_e2e_1"),
            "postgres://postgres:pw@127.0.0.1:40001/tally_e2e_1?sslmode=disable"
        );
        let url = PgUrl::parse("postgresql://u@[::1]/test");
        assert_eq!((url.host.as_str(), url.port), ("[::1]", 5432));
        assert_eq!(
            url.to(&url.host, url.port, "d"),
            "postgresql://u@[::1]:5432/d"
        );
        let url = PgUrl::parse("postgres://localhost");
        assert_eq!(url.to("h", 1, "d"), "postgres://h:1/d");
        assert_eq!(url.socket_addr().port(), 5432);
    }

    /// What a raw connection through the proxy sees within a short while.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Bytes,
        Nothing,
        Closed,
        Reset,
    }

    async fn read_within(stream: &mut TcpStream, within: Duration) -> Seen {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(within, stream.read(&mut byte)).await {
            Err(_) => Seen::Nothing,
            Ok(Ok(0)) => Seen::Closed,
            Ok(Ok(_)) => Seen::Bytes,
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => Seen::Reset,
            Ok(Err(err)) => panic!("unexpected {err}"),
        }
    }

    /// PostgreSQL's `SSLRequest`, which the server answers with one byte (`S` or `N`): the
    /// smallest exchange that shows bytes going both ways.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    async fn select(conn: &mut sqlx::PgConnection) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("SELECT 41 + 1").fetch_one(conn).await
    }

    /// A query through the proxy works. After `cut`, a query on an open connection gets no
    /// answer and no error (nothing was reset: a pulled cable), and a new connection is
    /// accepted but gets no answer. After `heal`, both stalled connections are reset, and a
    /// new connection works. After `reset`, open connections fail at once and new ones
    /// work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proxy_cuts_heals_and_resets_connections_to_postgres() {
        let Some(db) =
            TestDatabase::create("the_proxy_cuts_heals_and_resets_connections_to_postgres").await
        else {
            return;
        };
        let proxy = Proxy::start(db.server_addr()).await;
        let url = db.url_via(&proxy);
        let connect = || sqlx::PgConnection::connect(&url);
        let short = Duration::from_millis(1500);

        let mut conn = connect().await.expect("connect through the proxy");
        assert_eq!(select(&mut conn).await.unwrap(), 42);
        let mut raw = TcpStream::connect(proxy.addr()).await.unwrap();
        raw.write_all(&SSL_REQUEST).await.unwrap();
        assert_eq!(read_within(&mut raw, short).await, Seen::Bytes);

        proxy.cut();
        let stalled = tokio::time::timeout(short, select(&mut conn)).await;
        assert!(stalled.is_err(), "a cut connection answered: {stalled:?}");
        assert_eq!(read_within(&mut raw, short).await, Seen::Nothing);
        let mut late = TcpStream::connect(proxy.addr())
            .await
            .expect("a connection is accepted during a cut");
        late.write_all(&SSL_REQUEST).await.unwrap();
        assert_eq!(read_within(&mut late, short).await, Seen::Nothing);
        let hanging = tokio::time::timeout(short, connect()).await;
        assert!(hanging.is_err(), "a new connection got through a cut");

        proxy.heal();
        assert_eq!(read_within(&mut raw, short).await, Seen::Reset);
        assert_eq!(read_within(&mut late, short).await, Seen::Reset);
        let mut fresh = tokio::time::timeout(short, connect())
            .await
            .expect("a new connection after the heal is not held up")
            .expect("a new connection after the heal works");
        assert_eq!(select(&mut fresh).await.unwrap(), 42);
        let mut raw = TcpStream::connect(proxy.addr()).await.unwrap();
        raw.write_all(&SSL_REQUEST).await.unwrap();
        assert_eq!(read_within(&mut raw, short).await, Seen::Bytes);

        proxy.reset();
        assert_eq!(read_within(&mut raw, short).await, Seen::Reset);
        let after = tokio::time::timeout(short, select(&mut fresh)).await;
        assert!(
            matches!(after, Ok(Err(_))),
            "an open connection survived a reset: {after:?}"
        );
        let mut again = connect().await.expect("connect after a reset");
        assert_eq!(select(&mut again).await.unwrap(), 42);
    }

    /// The database exists while the guard lives and is gone after, even with a session
    /// still open in it (`WITH (FORCE)`).
    #[tokio::test]
    async fn a_test_database_is_made_fresh_and_dropped_with_its_sessions() {
        let Some(db) =
            TestDatabase::create("a_test_database_is_made_fresh_and_dropped_with_its_sessions")
                .await
        else {
            return;
        };
        let name = db.name.clone();
        let tables = db
            .count("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .await;
        assert_eq!(tables, 0, "a fresh database is empty");
        assert!(db.leader_row().await.is_err(), "no leader table yet");
        let mut open = sqlx::PgConnection::connect(&db.url()).await.unwrap();
        sqlx::query("SELECT 1").execute(&mut open).await.unwrap();
        drop(db);
        let admin = std::env::var(POSTGRES_VAR).unwrap();
        let mut admin = sqlx::PgConnection::connect(&admin).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, 0, "{name} was not dropped");
    }

    /// The leader is the node whose address the live `tally_leader` row holds; a lapsed
    /// row names nobody. The leader log accepts a handover after the old lease lapsed and
    /// refuses one before. (No node runs: the test writes the rows as a node would.)
    #[tokio::test]
    async fn the_leader_is_read_from_the_live_row_and_handovers_are_checked() {
        let Some(db) =
            TestDatabase::create("the_leader_is_read_from_the_live_row_and_handovers_are_checked")
                .await
        else {
            return;
        };
        let cluster = Cluster::prepare(db, &ClusterSpec::new(3)).await;
        let pool = &cluster.db.pool;
        let write = |sql: &'static str, node: usize| {
            sqlx::query(sql)
                .bind(format!("n{node}"))
                .bind(cluster.nodes[node].addr.to_string())
                .execute(pool)
        };
        assert_eq!(cluster.leader().await, None, "no table yet");
        sqlx::raw_sql(tally_server::ha::SCHEMA)
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(cluster.leader().await, None, "no row yet");
        write(
            "INSERT INTO tally_leader VALUES (1, $1, $2, 7, now() + interval '1 minute')",
            1,
        )
        .await
        .unwrap();
        assert_eq!(cluster.leadership().await, Some((1, 7)));
        cluster.db.log_leader_writes().await;
        write(
            "UPDATE tally_leader SET node = $1, address = $2, expires_at = now() - interval '1 second'",
            1,
        )
        .await
        .unwrap();
        assert_eq!(cluster.leader().await, None, "a lapsed row");
        write(
            "UPDATE tally_leader SET node = $1, address = $2, epoch = 8, expires_at = now() + interval '1 minute'",
            2,
        )
        .await
        .unwrap();
        assert_eq!(cluster.leadership().await, Some((2, 8)));
        assert_eq!(cluster.db.assert_handovers_safe().await, 1);

        // Node 0 takes epoch 9 while epoch 8's lease runs for another minute.
        write(
            "UPDATE tally_leader SET node = $1, address = $2, epoch = 9, expires_at = now() + interval '1 minute'",
            0,
        )
        .await
        .unwrap();
        let unsafe_handover = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            cluster.db.assert_handovers_safe(),
        ))
        .await;
        assert!(
            unsafe_handover.is_err(),
            "a takeover before the lapse passed"
        );
    }

    /// `wait_ready` sees a single daemon's `READY=1` (without blocking the runtime), and
    /// reports a daemon that exits before it instead of waiting out its time.
    #[tokio::test]
    async fn readiness_is_awaited_and_an_early_exit_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon =
            DaemonProcess::launch(dir.path(), free_port(), "30s", "1s", "", Stdio::null());
        wait_ready(&mut daemon, READY_WITHIN).await.unwrap();

        let broken = tempfile::tempdir().unwrap();
        let mut daemon = DaemonProcess::launch(
            broken.path(),
            free_port(),
            "30s",
            "1s",
            "no_such_key = 1\n",
            Stdio::null(),
        );
        let started = Instant::now();
        let err = wait_ready(&mut daemon, READY_WITHIN).await.unwrap_err();
        assert!(err.contains("exited"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// The cluster's extra configuration puts `database` at the top level and `[ha]` in a
    /// table of its own, whatever the harness writes in between.
    #[test]
    fn a_nodes_configuration_keeps_database_at_the_top_level() {
        let extra = "database = \"postgres://u@h:1/d\"\n[ha]\nadvertise = \"127.0.0.1:7\"\nlease = \"1s\"\n";
        let text = crate::harness::daemon_config(7, Path::new("/d"), "3s", "200ms", extra);
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(parsed["database"].as_str(), Some("postgres://u@h:1/d"));
        assert_eq!(parsed["ha"]["lease"].as_str(), Some("1s"));
        assert_eq!(parsed["ha"]["advertise"].as_str(), Some("127.0.0.1:7"));
        assert_eq!(parsed["leases"]["ttl"].as_str(), Some("3s"));
        assert!(parsed["leases"].get("database").is_none());
    }
}
