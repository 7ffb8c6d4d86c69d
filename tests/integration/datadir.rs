//! The data directory: one daemon at a time (a second one on the same directory would grant
//! the same seats twice), and files only the daemon's user can read.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_client::Client;
use tally_protocol::Request;

use crate::harness::*;

#[tokio::test]
async fn a_second_daemon_on_the_same_data_directory_refuses_to_start_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = DaemonProcess::start(dir.path(), "30s", "1s");
    // The same data directory, another port.
    let second_config = dir.path().join("second.toml");
    let text = std::fs::read_to_string(&first.config_path)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", first.port),
            &format!("127.0.0.1:{}", free_port()),
        );
    std::fs::write(&second_config, text).unwrap();
    let mut second = Command::new(DAEMON)
        .arg("--config")
        .arg(&second_config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while second.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("a second tallyd is serving from the same data directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let data_dir = std::fs::canonicalize(&first.data_dir).unwrap();
    assert!(stderr.contains(&data_dir.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );

    // `tallyd owner-token` only adds a token row: it works beside the running daemon, and
    // the new token signs in to it at once.
    let out = Command::new(DAEMON)
        .args(["owner-token", "--config"])
        .arg(&first.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut config = first.client_config();
    config.token = token;
    let owner = Client::connect(config).await.unwrap();
    assert!(owner.call(Request::ServerInfo).await.is_ok());
}

#[tokio::test]
async fn the_database_and_tls_directory_are_private_whatever_the_umask() {
    let server = TestServer::start().await;
    let mode = |name: &str| {
        std::fs::metadata(server.data_dir().join(name))
            .unwrap_or_else(|err| panic!("{name}: {err}"))
            .permissions()
            .mode()
            & 0o777
    };
    // SQLite keeps the WAL and shared-memory files while the store is open.
    for name in ["tally.db", "tally.db-wal", "tally.db-shm"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    assert_eq!(mode("tls"), 0o700);
    assert_eq!(mode("."), 0o700);
    server.stop().await;
}

/// `tallyd owner-token --revoke-others` (for a leaked owner token) refuses while the daemon
/// runs, since the daemon would keep honouring the tokens it knows; with the daemon stopped
/// it revokes every other owner token, and after the restart only the new one signs in.
#[tokio::test]
async fn owner_token_revoke_others_needs_the_daemon_stopped_and_then_ends_the_old_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let old = daemon.client_config();
    let revoke = |config: &std::path::Path| {
        Command::new(DAEMON)
            .args(["owner-token", "--revoke-others", "--config"])
            .arg(config)
            .output()
            .unwrap()
    };
    let out = revoke(&daemon.config_path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs tallyd stopped"), "{stderr}");
    assert!(stderr.contains("tally user token revoke"), "{stderr}");
    assert!(
        Client::connect(old.clone()).await.is_ok(),
        "nothing was revoked"
    );

    daemon.kill9();
    let out = revoke(&daemon.config_path);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    daemon.restart();
    match Client::connect(old.clone()).await {
        Err(tally_client::Error::Server(body)) => {
            assert_eq!(body.code, tally_protocol::ErrorCode::Unauthenticated)
        }
        other => panic!("the old owner token still signs in: {other:?}"),
    }
    let mut config = old;
    config.token = new;
    assert!(Client::connect(config).await.is_ok());
}
