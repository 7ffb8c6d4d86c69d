//! `tallyd`'s own commands as an admin meets them: `check-config` finding what a start would
//! refuse, SIGHUP saying which changed keys it applied and which need a restart, a failed
//! start printing each error once, and `server info` naming the listen address and ttl.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::*;

/// `tallyd ARGS` as a user whom file permissions bind: this user, or nobody when the tests
/// run as root (root reads and writes whatever the modes say).
fn tallyd_unprivileged(args: &[&str]) -> Output {
    let mut command = Command::new(DAEMON);
    command.args(args);
    if running_as_root() {
        command.uid(65534).gid(65534);
    }
    command.output().unwrap()
}

fn running_as_root() -> bool {
    let probe = tempfile::tempfile().unwrap();
    probe.metadata().unwrap().uid() == 0
}

/// A scratch directory anyone may use, so that the unprivileged check reads what it holds
/// and may make a data directory in it.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    dir
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    chmod(path, 0o644);
    path.display().to_string()
}

fn check_config(config: &str) -> (Option<i32>, Vec<String>) {
    let out = tallyd_unprivileged(&["check-config", "--config", config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().map(str::to_string).collect(),
    )
}

/// A certificate for `localhost` and its key, in PEM.
fn cert_and_key() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn check_config_reports_every_value_out_of_range_with_its_value_and_the_file() {
    let dir = open_tempdir();
    let config = write(
        &dir.path().join("tallyd.toml"),
        &format!(
            "listen = \"127.0.0.1:27010\"\ndata_dir = {:?}\n[leases]\nttl = \"60s\"\nsweep = \"90s\"\n[borrow]\nmax = \"30s\"\n[limits]\nmax_frame = 10\n",
            dir.path().join("data").display().to_string()
        ),
    );
    let (code, lines) = check_config(&config);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 3, "one line per problem: {lines:?}");
    for line in &lines {
        assert!(
            line.starts_with(&format!("tallyd: {config}: ")),
            "{line} does not name the file"
        );
    }
    assert!(
        lines[0].contains("leases.sweep = 1m 30s is longer than leases.ttl = 1m"),
        "{lines:?}"
    );
    assert!(lines[1].contains("borrow.max = 30s"), "{lines:?}");
    assert!(lines[2].contains("limits.max_frame = 10"), "{lines:?}");
}

#[test]
fn check_config_refuses_a_host_name_in_listen_saying_what_is_accepted() {
    let dir = open_tempdir();
    let config = write(
        &dir.path().join("tallyd.toml"),
        "listen = \"localhost:27010\"\n",
    );
    let (code, lines) = check_config(&config);
    assert_eq!(code, Some(2), "{lines:?}");
    let text = lines.join("\n");
    assert!(text.contains(&config), "{text}");
    assert!(
        text.contains("listen = \"localhost:27010\" is not an IP address and port"),
        "{text}"
    );
    for example in ["127.0.0.1:27010", "0.0.0.0:27010", "[::]:27010"] {
        assert!(text.contains(example), "{text} lacks {example}");
    }
    assert!(!text.contains("invalid socket address syntax"), "{text}");
}

#[test]
fn check_config_finds_a_key_that_does_not_belong_to_the_certificate() {
    let dir = open_tempdir();
    let (cert, _) = cert_and_key();
    let (_, other_key) = cert_and_key();
    let cert_path = write(&dir.path().join("server.pem"), &cert);
    let key_path = write(&dir.path().join("server.key"), &other_key);
    let config = write(
        &dir.path().join("tallyd.toml"),
        &format!(
            "listen = \"127.0.0.1:27010\"\ndata_dir = {:?}\n[tls]\ncert = {cert_path:?}\nkey = {key_path:?}\n",
            dir.path().join("data").display().to_string()
        ),
    );
    let (code, lines) = check_config(&config);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&format!(
            "tls.key = {key_path} is not the key of tls.cert = {cert_path}"
        )),
        "{lines:?}"
    );
}

/// Each problem of the files and directories the configuration names is found, not only
/// the first: an unreadable certificate, a CA bundle that is not there, a signing
/// certificate that is a directory, and a data directory under a parent the daemon's user
/// cannot write. Nothing is created.
#[test]
fn check_config_names_every_unreadable_file_and_an_unwritable_data_dir() {
    let dir = open_tempdir();
    let (cert, key) = cert_and_key();
    let cert_path = write(&dir.path().join("server.pem"), &cert);
    let key_path = write(&dir.path().join("server.key"), &key);
    chmod(Path::new(&cert_path), 0o000);
    let client_ca = dir.path().join("clients.pem").display().to_string();
    let signing = dir.path().join("signing.pem");
    std::fs::create_dir(&signing).unwrap();
    let read_only = dir.path().join("ro");
    std::fs::create_dir(&read_only).unwrap();
    chmod(&read_only, 0o555);
    let data_dir = read_only.join("data");
    let config = write(
        &dir.path().join("tallyd.toml"),
        &format!(
            "listen = \"127.0.0.1:27010\"\ndata_dir = {:?}\n[tls]\ncert = {cert_path:?}\nkey = {key_path:?}\nclient_ca = {client_ca:?}\n[borrow]\nsigning_cert = {:?}\n",
            data_dir.display().to_string(),
            signing.display().to_string()
        ),
    );
    let (code, lines) = check_config(&config);
    chmod(&read_only, 0o755);
    assert_eq!(code, Some(2), "{lines:?}");
    let text = lines.join("\n");
    assert_eq!(lines.len(), 4, "{text}");
    let expect = [
        format!("data_dir = {} does not exist, and", data_dir.display()),
        format!("{} is not writable", read_only.display()),
        format!("tls.cert: cannot read {cert_path}: Permission denied"),
        format!("tls.client_ca: cannot read {client_ca}: No such file"),
        format!("borrow.signing_cert: cannot read {}", signing.display()),
    ];
    for part in expect {
        assert!(text.contains(&part), "{text}\nlacks {part}");
    }
    assert!(!data_dir.exists(), "check-config made the data directory");
}

#[test]
fn check_config_passes_a_good_file_and_makes_nothing() {
    let dir = open_tempdir();
    let data_dir = dir.path().join("data");
    let config = write(
        &dir.path().join("tallyd.toml"),
        &format!(
            "listen = \"[::]:27010\"\ndata_dir = {:?}\n",
            data_dir.display().to_string()
        ),
    );
    let out = tallyd_unprivileged(&["check-config", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("configuration is valid") && stdout.contains("checked as"),
        "{stdout}"
    );
    assert!(!data_dir.exists(), "check-config made the data directory");
}

/// The lines the daemon logs, as they come.
fn log_lines(daemon: &mut DaemonProcess) -> mpsc::Receiver<String> {
    let stderr = daemon.child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The lines logged until (and with) the first that contains `what`.
fn lines_until(log: &mpsc::Receiver<String>, what: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(what);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!(
                "no line with {what:?} in the log; seen:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn the_line<'a>(lines: &'a [String], parts: &[&str]) -> &'a String {
    let found: Vec<&String> = lines
        .iter()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "not one line with {parts:?}:\n{}",
        lines.join("\n")
    );
    found[0]
}

#[test]
fn sighup_logs_each_changed_key_as_applied_or_needing_a_restart_and_keeps_a_bad_file_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start_with(dir.path(), "3s", "250ms", "", Stdio::piped());
    let log = log_lines(&mut daemon);
    let rewrite = |ttl: &str, sweep: &str, extra: &str| {
        let text = daemon_config(daemon.port, &daemon.data_dir, ttl, sweep, extra);
        std::fs::write(&daemon.config_path, text).unwrap();
    };

    rewrite("5s", "250ms", "[limits]\nmax_connections = 500\n");
    daemon.signal(Signal::SIGHUP);
    let lines = lines_until(&log, "configuration reloaded");
    the_line(
        &lines,
        &[
            "reload: applied",
            "key=limits.max_connections",
            "old=10000",
            "new=500",
        ],
    );
    the_line(
        &lines,
        &[
            "reload: needs a restart",
            "key=leases.ttl",
            "old=3s",
            "new=5s",
        ],
    );
    the_line(&lines, &["applied=1", "needs_restart=1"]);
    assert_eq!(
        lines.iter().filter(|l| l.contains("reload:")).count(),
        2,
        "only the changed keys: {lines:#?}"
    );

    // Neither the sweep past the ttl nor the frame limit is taken; each is logged once.
    rewrite(
        "5s",
        "10s",
        "[limits]\nmax_connections = 20\nmax_frame = 10\n",
    );
    daemon.signal(Signal::SIGHUP);
    let mut lines = lines_until(&log, "limits.max_frame = 10");
    // A good file again: the ttl still needs a restart, since the running one is still 3s.
    // Its summary comes after anything more the bad file could have logged.
    rewrite("5s", "250ms", "[limits]\nmax_connections = 500\n");
    daemon.signal(Signal::SIGHUP);
    lines.extend(lines_until(&log, "configuration reloaded"));
    let config = daemon.config_path.display().to_string();
    let sweep = the_line(
        &lines,
        &[
            "configuration not reloaded",
            "leases.sweep = 10s is longer than leases.ttl = 5s",
        ],
    );
    assert!(sweep.contains(&config), "{sweep}");
    the_line(
        &lines,
        &["configuration not reloaded", "limits.max_frame = 10"],
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("configuration not reloaded"))
            .count(),
        2,
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("new=20")),
        "a file that does not validate was applied: {lines:#?}"
    );
    the_line(
        &lines,
        &["reload: needs a restart", "key=leases.ttl", "old=3s"],
    );
    the_line(&lines, &["applied=0", "needs_restart=1"]);

    daemon.signal(Signal::SIGTERM);
    assert!(daemon.child.wait().unwrap().success());
}

/// The harness's configuration for `port`, started and waited for: its exit status and
/// its log.
fn failed_start(dir: &Path, port: u16, extra: &str) -> (Option<i32>, String) {
    let mut daemon = DaemonProcess::launch(dir, port, "3s", "250ms", extra, Stdio::piped());
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    (daemon.child.wait().unwrap().code(), log)
}

#[test]
fn a_failed_start_prints_each_error_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cannot = format!("cannot listen on 127.0.0.1:{port}");

    let dir = tempfile::tempdir().unwrap();
    let (code, log) = failed_start(dir.path(), port, "");
    assert_eq!(code, Some(1), "{log}");
    assert_eq!(log.matches(&cannot).count(), 1, "{log}");

    // In JSON, every line stays one object.
    let dir = tempfile::tempdir().unwrap();
    let (code, log) = failed_start(dir.path(), port, "[log]\nformat = \"json\"\n");
    assert_eq!(code, Some(1), "{log}");
    let errors: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .filter(|line: &serde_json::Value| line["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    let error = errors[0]["fields"]["error"].as_str().unwrap();
    assert!(error.contains(&cannot), "{log}");

    // A file that does not validate: every problem, each once, before any logging.
    let dir = tempfile::tempdir().unwrap();
    let (code, log) = failed_start(
        dir.path(),
        port,
        "[limits]\nmax_frame = 10\nmax_connections = 0\n",
    );
    assert_eq!(code, Some(2), "{log}");
    assert_eq!(log.lines().count(), 2, "{log}");
    assert_eq!(log.matches("limits.max_frame = 10").count(), 1, "{log}");
    assert_eq!(
        log.matches("limits.max_connections = 0").count(),
        1,
        "{log}"
    );
    drop(busy);
}

#[test]
fn server_info_shows_the_listen_address_and_the_lease_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let (code, doc) = cli_json(config, &["server", "info"]);
    assert_eq!(code, Some(0), "{doc}");
    let listen = format!("127.0.0.1:{}", daemon.port);
    assert_eq!(doc["server"]["listen"], listen.as_str(), "{doc}");
    assert_eq!(doc["server"]["lease_ttl_ms"], 30_000, "{doc}");
    let out = cli(&["--config", config, "server", "info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("listen       {listen}")), "{text}");
    assert!(text.contains("lease ttl    30s"), "{text}");
}

/// The systemd unit checks the file before every start, with the configuration it starts
/// with (and as the user it starts as).
#[test]
fn the_systemd_unit_checks_the_configuration_before_every_start() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/tallyd.service"
    ))
    .unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
    };
    let start = value("ExecStart=");
    assert_eq!(
        value("ExecStartPre="),
        start.replacen("tallyd ", "tallyd check-config ", 1),
        "{unit}"
    );
}
