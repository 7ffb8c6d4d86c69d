//! The daemon as a process: SIGKILL with leases held (R5), SIGTERM and SIGHUP; and holders
//! killed with SIGKILL (R3), against a daemon on a stepped clock.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tally_client::Client;
use tally_protocol::LeaseId;

use crate::harness::*;

/// The daemon runs in-process on a stepped clock (on worker threads, so that it serves while
/// this thread waits for the holder's grant); the holder is a `tally` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_with_sigkill_loses_its_seat_after_ttl_and_within_ttl_plus_sweep() {
    let server = TestServer::start_stepped(|c| {
        c.leases.ttl = Duration::from_secs(3);
        c.leases.sweep = Duration::from_millis(250);
    })
    .await;
    let owner = server.owner().await;
    crate::harness::add_entitlement(&owner, "vray", 2, None).await;
    let (mut holder, id) = spawn_holder(&server.data_dir().join("client.toml"), "vray");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let lease = leases(&owner)
        .await
        .into_iter()
        .find(|l| l.id == id)
        .expect("lease held");
    // Killed before its first heartbeat (ttl / 3): the lease lapses one ttl after the grant.
    assert_eq!(lease.expires_at - lease.granted_at, 3000);
    let lapse = lease.expires_at;
    // A millisecond before it lapses, in the server's time, the seat is still held.
    server.step(Duration::from_millis((lapse - 1 - server.now()) as u64));
    assert_eq!(
        status(&owner, "vray").await.in_use,
        1,
        "reclaimed before ttl"
    );
    // One sweep period past the lapse the sweep has reclaimed it, with no request asking.
    server.step(Duration::from_millis((lapse + 250 - server.now()) as u64));
    let mut reclaimed = None;
    for _ in 0..500 {
        reclaimed = audit(&owner)
            .await
            .into_iter()
            .find(|e| e.action == "reclaim" && e.subject == id.to_string());
        if reclaimed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reclaimed = reclaimed.expect("not reclaimed within ttl + sweep");
    let late = reclaimed.at - lapse;
    assert!(
        (0..=250).contains(&late),
        "reclaimed {late} ms after the lease lapsed; sweep is 250 ms"
    );
    assert_eq!(status(&owner, "vray").await.in_use, 0);
    server.stop().await;
}

#[tokio::test]
async fn sigkill_with_50_leases_held_loses_none_and_resumes_every_holder() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "3s", "250ms");
    let owner = Client::connect(daemon.client_config()).await.unwrap();
    crate::harness::add_entitlement(&owner, "vray", 60, None).await;
    // 50 live holders, one lease each.
    let mut live = Vec::new();
    for _ in 0..50 {
        let client = Client::connect(daemon.client_config()).await.unwrap();
        let lease = client.checkout("vray", 1).await.unwrap();
        live.push((client, lease));
    }
    // 5 holders that die with the daemon.
    let doomed: Vec<_> = (0..5)
        .map(|_| spawn_holder(&daemon.client_toml(), "vray").0)
        .collect();
    let live_ids: BTreeSet<LeaseId> = live.iter().map(|(_, lease)| lease.id()).collect();
    let before: BTreeSet<LeaseId> = leases(&owner).await.iter().map(|l| l.id).collect();
    assert_eq!(before.len(), 55);
    drop(owner);

    daemon.kill9();
    for mut child in doomed {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let restarting_at = now_millis();
    daemon.restart();

    let owner = Client::connect(daemon.client_config()).await.unwrap();
    let after = leases(&owner).await;
    let after_ids: BTreeSet<LeaseId> = after.iter().map(|l| l.id).collect();
    assert_eq!(after_ids, before, "the same 55 lease ids after the restart");
    // Every lease, the dead holders' too, got one full ttl from the restart: none can be
    // reclaimed before its ttl, however slowly this test runs.
    for lease in &after {
        assert!(
            lease.expires_at >= restarting_at + 3000,
            "lease {} given {} ms from the restart, less than the ttl",
            lease.id,
            lease.expires_at - restarting_at
        );
    }

    // Once the dead holders' leases are reclaimed (one ttl after the restart), the live
    // holders have resumed their own leases and keep exactly those.
    let mut now = BTreeSet::new();
    for _ in 0..600 {
        now = leases(&owner).await.iter().map(|l| l.id).collect();
        if now.len() <= live_ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now, live_ids, "live holders keep exactly their leases");
    let figures = status(&owner, "vray").await;
    assert_eq!(
        (figures.in_use, figures.available),
        (50, 10),
        "never a second seat"
    );
    for (_, lease) in &live {
        assert!(
            lease.is_lost().is_none(),
            "a live holder was told its lease was lost"
        );
    }
    assert!(
        now_millis() - restarting_at >= 3000,
        "the dead holders' leases were reclaimed before one ttl"
    );
}

#[tokio::test]
async fn sigterm_finishes_cleanly_and_sighup_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "3s", "250ms");
    let owner = Client::connect(daemon.client_config()).await.unwrap();
    crate::harness::add_entitlement(&owner, "vray", 1, None).await;
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for("READY=1");
    // The same connection still serves after the reload.
    assert_eq!(status(&owner, "vray").await.total, 1);
    daemon.signal(Signal::SIGTERM);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "tallyd exited with {status:?}");
}

#[tokio::test]
async fn checkout_holds_until_sigterm_then_checks_in_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let owner = Client::connect(daemon.client_config()).await.unwrap();
    crate::harness::add_entitlement(&owner, "vray", 1, None).await;
    let (mut holder, _) = spawn_holder(&daemon.client_toml(), "vray");
    assert_eq!(status(&owner, "vray").await.in_use, 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let exit = holder.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    assert_eq!(
        status(&owner, "vray").await.in_use,
        0,
        "checked in before exiting"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[log]\nformat = \"json\"\n";
    let mut daemon = DaemonProcess::start_with(dir.path(), "3s", "250ms", extra, Stdio::piped());
    let owner = Client::connect(daemon.client_config()).await.unwrap();
    crate::harness::add_entitlement(&owner, "vray", 1, None).await;
    drop(owner);
    daemon.signal(Signal::SIGTERM);
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(daemon.child.wait().unwrap().success());
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "tallyd serving"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "pool changed"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "stopped cleanly"),
        "{log}"
    );
}

/// Under systemd stderr goes to the journal: colour codes would land there as escape
/// sequences.
#[tokio::test]
async fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start_with(dir.path(), "3s", "250ms", "", Stdio::piped());
    let owner = Client::connect(daemon.client_config()).await.unwrap();
    crate::harness::add_entitlement(&owner, "vray", 1, None).await;
    drop(owner);
    daemon.signal(Signal::SIGTERM);
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(daemon.child.wait().unwrap().success());
    assert!(
        log.contains("tallyd serving") && log.contains("pool changed"),
        "{log}"
    );
    assert!(!log.contains('\x1b'), "colour codes in the log: {log:?}");
}

#[test]
fn completions_and_the_man_page_need_no_configuration() {
    let tallyd = |args: &[&str]| {
        std::process::Command::new(DAEMON)
            .args(args)
            .env("TALLYD_CONFIG", "/nonexistent/tallyd.toml")
            .output()
            .unwrap()
    };
    for (args, words) in [
        (&["completions", "bash"][..], ["tallyd", "owner-token"]),
        (&["completions", "fish"][..], ["tallyd", "owner-token"]),
        (&["man"][..], [".TH tallyd", r"owner\-token"]),
    ] {
        let out = tallyd(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        for word in words {
            assert!(text.contains(word), "{args:?} lacks {word}: {text}");
        }
    }
    let out = tallyd(&["completions", "cmd.exe"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cmd.exe"),
        "{out:?}"
    );
}
