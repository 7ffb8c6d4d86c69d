//! Starting `tallyd` as a child process on a temporary data directory (alone on SQLite, or
//! as a node of a cluster on PostgreSQL), killing and restarting it, and reading its memory.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A `tallyd` the benchmark started.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    binary: PathBuf,
    notify: UnixDatagram,
    /// Where its standard error goes: `None` inherits the benchmark's; a file (appended to
    /// across restarts) for the nodes of a cluster, so that a failure can show their logs.
    log: Option<PathBuf>,
}

/// What makes a daemon a node of a cluster (SPEC §7).
#[derive(Debug, Clone)]
pub struct Node {
    /// The PostgreSQL URL every node of the cluster names.
    pub database: String,
    /// `ha.lease`, as tallyd reads it (`3s`).
    pub lease: String,
    /// Whether to write the node's log to `tallyd.log` in its directory instead of the
    /// benchmark's standard error.
    pub log_to_file: bool,
}

/// Where the client connects and how it signs in.
pub struct Target {
    pub addr: std::net::SocketAddr,
    pub ca_pem: Vec<u8>,
    pub token: String,
}

impl Daemon {
    /// Starts `binary` with leases of `ttl` and room for `max_connections`, on SQLite.
    pub fn start(binary: &Path, ttl: &str, max_connections: usize) -> Result<Daemon> {
        Daemon::start_with(binary, ttl, max_connections, None)
    }

    /// Starts `binary` with leases of `ttl` and room for `max_connections`: on SQLite, or
    /// as a node of the cluster on `node`'s database. Returns once it reports ready, which a
    /// node does once listening, leader or not.
    pub fn start_with(
        binary: &Path,
        ttl: &str,
        max_connections: usize,
        node: Option<&Node>,
    ) -> Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // A node's database and its [ha] section; its certificate also names 127.0.0.1,
        // which tally-client checks when the server list gives addresses.
        let (database, names, ha) = match node {
            None => (String::new(), "\"localhost\"", String::new()),
            Some(node) => (
                format!("database = {:?}\n", node.database),
                "\"localhost\", \"127.0.0.1\"",
                format!(
                    "[ha]\nadvertise = \"127.0.0.1:{port}\"\nlease = {:?}\n",
                    node.lease
                ),
            ),
        };
        // All from one address, all possibly signing in at once: connections not yet signed
        // in may use half of max_connections, so the daemon gets twice the room. The restart
        // scenario holds 100,000 leases over 64 connections, past the default per client.
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n{database}[tls]\nnames = [{names}]\n[leases]\nttl = \"{ttl}\"\nsweep = \"1s\"\n[limits]\nmax_connections = {}\nmax_unauthenticated_per_address = {max_connections}\nmax_leases_per_client = 1000000\n{ha}",
            dir.path().join("data").display().to_string(),
            2 * max_connections
        );
        std::fs::write(dir.path().join("tallyd.toml"), config)?;
        let notify = UnixDatagram::bind(dir.path().join("notify"))?;
        notify.set_read_timeout(Some(Duration::from_secs(120)))?;
        let log = node
            .filter(|node| node.log_to_file)
            .map(|_| dir.path().join("tallyd.log"));
        let child = spawn(binary, dir.path(), log.as_deref())?;
        let daemon = Daemon {
            child,
            port,
            dir,
            binary: binary.to_path_buf(),
            notify,
            log,
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&self) -> Result<()> {
        let mut buf = [0u8; 256];
        loop {
            let n = self
                .notify
                .recv(&mut buf)
                .context("tallyd did not report ready")?;
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                return Ok(());
            }
        }
    }

    pub fn target(&self) -> Result<Target> {
        let data = self.dir.path().join("data");
        Ok(Target {
            addr: ([127, 0, 0, 1], self.port).into(),
            ca_pem: std::fs::read(data.join("tls/ca.pem"))?,
            token: std::fs::read_to_string(data.join("owner.token"))?
                .trim()
                .to_string(),
        })
    }

    /// The address clients reach it at, as a cluster's node advertises it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the daemon with SIGKILL, starts it again on the same data and port, and returns
    /// how long it took from the start to ready.
    pub fn kill9_and_restart(&mut self) -> Result<Duration> {
        self.kill9()?;
        self.restart()
    }

    /// Kills the daemon with SIGKILL and reaps it: when this returns, its sockets are closed.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the daemon again on the same data and port after [`Daemon::kill9`]; returns
    /// how long it took from the start to ready.
    pub fn restart(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.child = spawn(&self.binary, self.dir.path(), self.log.as_deref())?;
        self.wait_ready()?;
        Ok(started.elapsed())
    }

    /// The last `lines` lines of the node's log file, when it has one.
    pub fn log_tail(&self, lines: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.log.as_ref()?).ok()?;
        let all: Vec<&str> = text.lines().collect();
        Some(all[all.len().saturating_sub(lines)..].join("\n"))
    }

    /// Where the node's log file is, when it has one.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The daemon process, for its CPU time.
    pub fn cpu(&self) -> crate::cpu::Server {
        crate::cpu::Server::Process(self.child.id())
    }

    /// The daemon's resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.child.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(binary: &Path, dir: &Path, log: Option<&Path>) -> Result<Child> {
    if !binary.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release` or pass --tallyd",
            binary.display()
        );
    }
    // A log file is kept at info level: it is read when something went wrong.
    let (level, stderr) = match log {
        None => ("warn", Stdio::inherit()),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            ("info", Stdio::from(file))
        }
    };
    Command::new(binary)
        .arg("--config")
        .arg(dir.join("tallyd.toml"))
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .env(
            "TALLY_LOG",
            std::env::var("TALLY_LOG").unwrap_or_else(|_| level.into()),
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

/// A process's resident memory (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}
