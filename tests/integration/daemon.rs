//! `tallyd`'s own commands as an admin meets them: `check-config` finding what a start would
//! refuse.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

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
