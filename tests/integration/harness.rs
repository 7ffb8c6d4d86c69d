//! Starting real servers and driving them: in-process (`TestServer`), as a process that can
//! be killed with SIGKILL (`DaemonProcess`), through the `tally` binary (`cli`), and with raw
//! protocol frames (`RawConn`).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tally_client::{Client, ClientConfig, ServerAddr};
use tally_protocol::{
    Authenticate, ClientId, ClientInfo, ClientMessage, Connection, EntitlementKind, FeatureStatus,
    Hello, LeaseInfo, LeasesQuery, NewEntitlement, Request, Response, ServerMessage, StatusQuery,
    DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use tally_server::config::Config;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_tallyd-under-test");
pub const CLI: &str = env!("CARGO_BIN_EXE_tally-under-test");

/// A test configuration: short leases, quick sweeps.
pub fn test_config(listen: SocketAddr, data_dir: &Path, ttl: Duration, sweep: Duration) -> Config {
    let mut config = Config::with_defaults(listen, data_dir.to_path_buf());
    config.tls.names = vec!["localhost".into(), "127.0.0.1".into()];
    config.leases.ttl = ttl;
    config.leases.sweep = sweep;
    config
}

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `/metrics` and the probes are served, when the configuration has `[http]`.
    pub http: Option<SocketAddr>,
    pub dir: TempDir,
    /// The server's time: the system clock, or a manual one the test steps
    /// ([`start_stepped`](Self::start_stepped)).
    pub clock: tally_server::Clock,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tally_server::Error>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_on(tally_server::Clock::system(), adjust).await
    }

    /// A server on a manual clock that starts at the current time and moves only when the
    /// test calls [`step`](Self::step): expiry, sweeps and borrow ends happen in stepped
    /// time, with no waiting.
    pub async fn start_stepped(adjust: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_on(tally_server::Clock::manual(now_millis()), adjust).await
    }

    /// Steps the manual clock forward (waking the server's sweep); returns the new time.
    pub fn step(&self, by: Duration) -> i64 {
        self.clock.advance(by)
    }

    /// The server's current time.
    pub fn now(&self) -> i64 {
        self.clock.now_millis()
    }

    async fn start_on(clock: tally_server::Clock, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = test_config(
            addr,
            &dir.path().join("data"),
            Duration::from_secs(3),
            Duration::from_millis(200),
        );
        adjust(&mut config);
        // `[http]` on a port of its own, bound here as the protocol's is.
        let http = match &mut config.http {
            Some(settings) => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                settings.listen = listener.local_addr().unwrap();
                Some(listener)
            }
            None => None,
        };
        let http_addr = http.as_ref().map(|l| l.local_addr().unwrap());
        config.validate().unwrap();
        let store = tally_server::store::open(
            None,
            &tally_server::init::prepare_data_dir(&config).unwrap().root,
        )
        .await
        .unwrap();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let control = tally_server::Control {
            ready: Some(ready_tx),
            clock: clock.clone(),
            http,
            ..Default::default()
        };
        let shutdown = control.shutdown.clone();
        let task = tokio::spawn(tally_server::run(listener, config, store, control));
        ready_rx.await.expect("server failed to start");
        TestServer {
            addr,
            http: http_addr,
            dir,
            clock,
            shutdown,
            task,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn owner_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("owner.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir().join("tls/ca.pem")).unwrap()
    }

    pub fn client_config(&self, token: &str) -> ClientConfig {
        let server = ServerAddr {
            host: "localhost".into(),
            port: self.addr.port(),
        };
        ClientConfig::new(vec![server], self.ca_pem(), token)
    }

    /// A client signed in as the owner.
    pub async fn owner(&self) -> Client {
        Client::connect(self.client_config(&self.owner_token()))
            .await
            .unwrap()
    }

    /// Stops the server as SIGTERM would, and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// `tallyd` as a child process, ready when it says so through `NOTIFY_SOCKET`.
pub struct DaemonProcess {
    pub child: Child,
    pub port: u16,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    /// Where the daemon's `sd_notify` messages arrive.
    pub notify: UnixDatagram,
}

/// The configuration text of a test daemon: listen, data_dir, tls and leases, with `extra`'s
/// top-level keys before the first table and its tables after the harness's.
pub fn daemon_config(port: u16, data_dir: &Path, ttl: &str, sweep: &str, extra: &str) -> String {
    let (top, tables) = split_top_level(extra);
    format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n{top}[tls]\nnames = [\"localhost\", \"127.0.0.1\"]\n[leases]\nttl = \"{ttl}\"\nsweep = \"{sweep}\"\n{tables}",
        data_dir.display().to_string()
    )
}

/// Splits extra configuration TOML into its top-level keys (every line before the first
/// table header) and its tables (the rest), each ending in a newline unless empty.
fn split_top_level(extra: &str) -> (String, String) {
    let mut top = String::new();
    let mut tables = String::new();
    for line in extra.lines() {
        if !tables.is_empty() || line.trim_start().starts_with('[') {
            tables.push_str(line);
            tables.push('\n');
        } else {
            top.push_str(line);
            top.push('\n');
        }
    }
    (top, tables)
}

/// A port that was free a moment ago; a restarted daemon must come back on the same one.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl DaemonProcess {
    /// Writes a configuration into `dir` and starts the daemon on it.
    pub fn start(dir: &Path, ttl: &str, sweep: &str) -> DaemonProcess {
        Self::start_with(dir, ttl, sweep, "", Stdio::null())
    }

    /// Like [`start`](Self::start), with more TOML in the configuration and the daemon's
    /// stderr (its log) going to `log`.
    pub fn start_with(
        dir: &Path,
        ttl: &str,
        sweep: &str,
        extra: &str,
        log: Stdio,
    ) -> DaemonProcess {
        let process = Self::launch(dir, free_port(), ttl, sweep, extra, log);
        process.wait_for("READY=1");
        process
    }

    /// Writes a configuration into `dir` for a daemon listening on `port` and starts it,
    /// without waiting for it to be ready (so that several can start at the same moment).
    ///
    /// `extra` is more TOML. Its top-level keys (the lines before its first `[table]`, such
    /// as `database`) are written before the harness's own tables, since TOML would read a
    /// key written after `[leases]` as a key of `leases`; its tables go at the end.
    pub fn launch(
        dir: &Path,
        port: u16,
        ttl: &str,
        sweep: &str,
        extra: &str,
        log: Stdio,
    ) -> DaemonProcess {
        let data_dir = dir.join("data");
        let config_path = dir.join("tallyd.toml");
        let text = daemon_config(port, &data_dir, ttl, sweep, extra);
        std::fs::write(&config_path, text).unwrap();
        Self::spawn(port, config_path, data_dir, log)
    }

    /// Like [`start_with`](Self::start_with), with more variables in the daemon's
    /// environment (e.g. `TALLYD_TEST_FAULT`); a restart does not keep them.
    pub fn start_env(dir: &Path, extra: &str, log: Stdio, env: &[(&str, &str)]) -> DaemonProcess {
        let data_dir = dir.join("data");
        let config_path = dir.join("tallyd.toml");
        let port = free_port();
        std::fs::write(
            &config_path,
            daemon_config(port, &data_dir, "30s", "1s", extra),
        )
        .unwrap();
        let process = Self::spawn_env(port, config_path, data_dir, log, env);
        process.wait_for("READY=1");
        process
    }

    /// Starts the daemon; it is ready once it sends `READY=1` (see [`wait_for`](Self::wait_for)).
    fn spawn(port: u16, config_path: PathBuf, data_dir: PathBuf, log: Stdio) -> DaemonProcess {
        Self::spawn_env(port, config_path, data_dir, log, &[])
    }

    fn spawn_env(
        port: u16,
        config_path: PathBuf,
        data_dir: PathBuf,
        log: Stdio,
        env: &[(&str, &str)],
    ) -> DaemonProcess {
        let socket_path = config_path.with_file_name(format!("notify-{}", rand::random::<u32>()));
        let notify = UnixDatagram::bind(&socket_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let child = Command::new(DAEMON)
            .arg("--config")
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("TALLY_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        DaemonProcess {
            child,
            port,
            config_path,
            data_dir,
            notify,
        }
    }

    /// Blocks until the daemon sends a notification containing `what`.
    pub fn wait_for(&self, what: &str) {
        let mut buf = [0u8; 512];
        loop {
            let n = self
                .notify
                .recv(&mut buf)
                .unwrap_or_else(|err| panic!("no {what} from tallyd: {err}"));
            if String::from_utf8_lossy(&buf[..n]).contains(what) {
                return;
            }
        }
    }

    /// Starts the daemon again on the same port and data, after [`kill9`](Self::kill9).
    pub fn restart(&mut self) {
        self.relaunch(Stdio::null());
        self.wait_for("READY=1");
    }

    /// Starts the daemon again on the same port, configuration and data, its stderr going
    /// to `log`, without waiting for it to be ready.
    pub fn relaunch(&mut self, log: Stdio) {
        let restarted = Self::spawn(
            self.port,
            self.config_path.clone(),
            self.data_dir.clone(),
            log,
        );
        let old = std::mem::replace(self, restarted);
        drop(old);
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn client_toml(&self) -> PathBuf {
        self.data_dir.join("client.toml")
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::from_file(&self.client_toml()).unwrap()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `tally` binary.
pub fn cli(args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .env_remove("TALLY_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

/// Runs `tally --config CONFIG --json ARGS...`: its exit code and its one JSON document.
pub fn cli_json(config: &str, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["--config", config, "--json"];
    all.extend_from_slice(args);
    let out = cli(&all);
    (out.status.code(), stdout_json(&out))
}

pub fn stdout_json(output: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}): {text:?}; stderr {:?}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

pub async fn status(client: &Client, feature: &str) -> FeatureStatus {
    match client
        .call(Request::Status(StatusQuery {
            feature: Some(feature.into()),
        }))
        .await
        .unwrap()
    {
        Response::Status(mut list) => list.remove(0),
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn leases(client: &Client) -> Vec<LeaseInfo> {
    match client
        .call(Request::Leases(LeasesQuery {
            feature: None,
            user: None,
        }))
        .await
        .unwrap()
    {
        Response::Leases(list) => list,
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn add_entitlement(
    client: &Client,
    feature: &str,
    seats: u32,
    expires_at: Option<i64>,
) -> u64 {
    let new = NewEntitlement {
        feature: feature.into(),
        seats,
        starts_at: None,
        expires_at,
        kind: EntitlementKind::Standard,
        borrowable: false,
        max_borrow_secs: None,
        reference: "PO-1".into(),
    };
    match client.call(Request::EntitlementAdd(new)).await.unwrap() {
        Response::Entitlement(e) => e.id,
        other => panic!("unexpected {other:?}"),
    }
}

/// Adds a user as `owner`; their first token.
pub async fn new_user(owner: &Client, email: &str, role: tally_protocol::Role) -> String {
    let request = Request::UserAdd(tally_protocol::UserAdd {
        username: email.into(),
        name: String::new(),
        role,
    });
    match owner.call(request).await.unwrap() {
        Response::UserAdded { token, .. } => token,
        other => panic!("{other:?}"),
    }
}

/// The newest 10,000 events of the audit log, newest first.
pub async fn audit(owner: &Client) -> Vec<tally_protocol::AuditEvent> {
    let query = tally_protocol::AuditQuery {
        since: None,
        user: None,
        feature: None,
        limit: Some(10_000),
    };
    match owner.call(Request::Audit(query)).await.unwrap() {
        Response::AuditEvents(events) => events,
        other => panic!("{other:?}"),
    }
}

pub use tally_protocol::now_millis;

/// A connection that speaks raw protocol frames, to send what a well-behaved client never
/// would.
pub struct RawConn {
    pub conn: Connection<TlsStream<TcpStream>>,
}

/// A TLS connector trusting one CA (PEM), for raw connections to a test server.
pub fn tls_connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem) {
        let cert: rustls_pki_types::CertificateDer = cert.expect("the CA is PEM");
        roots.add(cert).expect("the CA is usable");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The name test servers' certificates carry.
pub fn server_name() -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from("localhost").expect("a valid name")
}

impl RawConn {
    pub async fn tls(addr: SocketAddr, ca_pem: &[u8]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tls_connector(ca_pem)
            .connect(server_name(), tcp)
            .await
            .unwrap()
    }

    pub async fn connect(server: &TestServer) -> RawConn {
        let tls = Self::tls(server.addr, &server.ca_pem()).await;
        RawConn {
            conn: Connection::new(tls, DEFAULT_MAX_FRAME),
        }
    }

    pub fn hello(version: u16, instance: ClientId) -> ClientMessage {
        ClientMessage::Hello(Hello {
            protocol_version: version,
            client: ClientInfo {
                agent: "raw-test".into(),
                host: "raw".into(),
                instance,
                machine_id: String::new(),
                pid: 1,
            },
        })
    }

    /// Hello and Authenticate; panics unless both are accepted.
    pub async fn signed_in(server: &TestServer, instance: ClientId) -> RawConn {
        let mut raw = Self::connect(server).await;
        raw.send(&Self::hello(PROTOCOL_VERSION, instance)).await;
        assert!(matches!(raw.recv().await, Some(ServerMessage::Welcome(_))));
        raw.send(&ClientMessage::Authenticate(Authenticate {
            token: server.owner_token(),
        }))
        .await;
        assert!(matches!(
            raw.recv().await,
            Some(ServerMessage::Authenticated(_))
        ));
        raw
    }

    pub async fn send(&mut self, message: &ClientMessage) {
        self.conn.send(message).await.unwrap();
    }

    /// The next message, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        tokio::time::timeout(Duration::from_secs(10), self.conn.recv())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    /// Writes bytes past the framing, as a broken peer would.
    pub async fn conn_write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let stream = self.conn.get_mut();
        stream.write_all(bytes).await.unwrap();
        stream.flush().await.unwrap();
    }

    pub async fn request(&mut self, id: u32, body: Request) -> ServerMessage {
        self.send(&ClientMessage::Request { id, body }).await;
        self.recv().await.expect("an answer")
    }
}

/// Starts `tally --json checkout FEATURE` as a process holding a seat, and waits for the
/// grant; returns the process and its lease id.
pub fn spawn_holder(client_toml: &Path, feature: &str) -> (Child, tally_protocol::LeaseId) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(CLI)
        .args([
            "--config",
            client_toml.to_str().unwrap(),
            "--json",
            "checkout",
            feature,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let granted: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("no grant: {line:?}"));
    let id = granted["lease"]["id"].as_str().unwrap().parse().unwrap();
    (child, id)
}

impl RawConn {
    /// Signs in to any server, as a client instance running on `host`.
    pub async fn signed_in_to(
        addr: SocketAddr,
        ca_pem: &[u8],
        token: &str,
        host: &str,
    ) -> anyhow::Result<RawConn> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = tls_connector(ca_pem).connect(server_name(), tcp).await?;
        let mut raw = RawConn {
            conn: Connection::new(tls, tally_protocol::MAX_RESPONSE_FRAME),
        };
        let hello = ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: ClientInfo {
                agent: "fault-test".into(),
                host: host.into(),
                instance: ClientId(rand::random()),
                machine_id: String::new(),
                pid: 1,
            },
        });
        raw.conn.send(&hello).await?;
        anyhow::ensure!(matches!(
            raw.conn.recv::<ServerMessage>().await?,
            Some(ServerMessage::Welcome(_))
        ));
        raw.conn
            .send(&ClientMessage::Authenticate(Authenticate {
                token: token.into(),
            }))
            .await?;
        anyhow::ensure!(matches!(
            raw.conn.recv::<ServerMessage>().await?,
            Some(ServerMessage::Authenticated(_))
        ));
        Ok(raw)
    }
}

/// A client file for `token`, beside the server's data directory.
pub fn client_file(server: &TestServer, name: &str, token: &str) -> PathBuf {
    let dir = server.dir.path();
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, token).unwrap();
    let ca = server.data_dir().join("tls/ca.pem");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "servers = [\"localhost:{}\"]\nca = \"{}\"\ntoken_file = \"{}\"\n",
            server.addr.port(),
            ca.display(),
            token_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for file in [&token_file, &path] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// Runs `tally --config CONFIG ARGS...` off the runtime's threads.
pub async fn tally(config: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = vec!["--config".into(), config.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await
    .unwrap()
}

/// Buys `amount` credits of `meter` with no end (SPEC §11), as an admin.
pub async fn buy_credits(client: &Client, meter: &str, amount: u64) {
    client
        .add_credits(tally_protocol::CreditsAdd {
            meter: meter.into(),
            amount,
            expires_at: None,
            reference: String::new(),
        })
        .await
        .unwrap();
}
