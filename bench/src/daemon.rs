//! Starting `tallyd` as a child process on a temporary data directory, and reading its
//! memory.

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
}

/// Where the client connects and how it signs in.
pub struct Target {
    pub addr: std::net::SocketAddr,
    pub ca_pem: Vec<u8>,
    pub token: String,
}

impl Daemon {
    /// Starts `binary` with leases of `ttl` and room for `max_connections`.
    pub fn start(binary: &Path, ttl: &str, max_connections: usize) -> Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // All from one address, all possibly signing in at once: connections not yet signed
        // in may use half of max_connections, so the daemon gets twice the room. The restart
        // scenario holds 100,000 leases over 64 connections, past the default per client.
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n[tls]\nnames = [\"localhost\"]\n[leases]\nttl = \"{ttl}\"\nsweep = \"1s\"\n[limits]\nmax_connections = {}\nmax_unauthenticated_per_address = {max_connections}\nmax_leases_per_client = 1000000\n",
            dir.path().join("data").display().to_string(),
            2 * max_connections
        );
        std::fs::write(dir.path().join("tallyd.toml"), config)?;
        let notify = UnixDatagram::bind(dir.path().join("notify"))?;
        notify.set_read_timeout(Some(Duration::from_secs(120)))?;
        let child = spawn(binary, dir.path())?;
        let daemon = Daemon {
            child,
            port,
            dir,
            binary: binary.to_path_buf(),
            notify,
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

    /// Kills the daemon with SIGKILL, starts it again on the same data and port, and returns
    /// how long it took from the start to ready.
    pub fn kill9_and_restart(&mut self) -> Result<Duration> {
        self.child.kill()?;
        self.child.wait()?;
        let started = Instant::now();
        self.child = spawn(&self.binary, self.dir.path())?;
        self.wait_ready()?;
        Ok(started.elapsed())
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

fn spawn(binary: &Path, dir: &Path) -> Result<Child> {
    if !binary.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release` or pass --tallyd",
            binary.display()
        );
    }
    Command::new(binary)
        .arg("--config")
        .arg(dir.join("tallyd.toml"))
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .env(
            "TALLY_LOG",
            std::env::var("TALLY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
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
