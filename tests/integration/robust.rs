//! One request must not stop the server for everyone: times, counts and durations out of
//! range are refused cleanly, times stored by an older version still print, a dead engine or
//! notifier ends the process with a failure (so systemd restarts it), and the engine pings
//! the systemd watchdog from its own loop (so a stuck engine is restarted too).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tally_protocol::{
    Assign, AuditQuery, Borrow, Checkout, ClientId, Entitlement, EntitlementKind, ErrorCode,
    NewEntitlement, Outcome, Request, RequestId, Response, Revoke, Role, ServerMessage,
    StatusQuery, UserAdd, UserRef, MAX_DURATION_SECS, MAX_SEATS, MAX_TIME,
};
use tally_server::core::Batch;
use tally_server::store::{Fence, SqliteStore, Store};

use crate::harness::*;

/// Starts `tallyd-under-test` with `env`, and with `watchdog_usec` the variables systemd sets
/// for `WatchdogSec=`: `WATCHDOG_USEC`, and `WATCHDOG_PID` naming the daemon itself (a shell
/// exports its own pid, then `exec`s the daemon in its place). Its log goes to `dir/tallyd.log`.
fn start_daemon(dir: &Path, env: &[(&str, &str)], watchdog_usec: Option<u64>) -> DaemonProcess {
    let port = free_port();
    let data_dir = dir.join("data");
    let config_path = dir.join("tallyd.toml");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n[tls]\nnames = [\"localhost\", \"127.0.0.1\"]\n",
        data_dir.display().to_string()
    );
    std::fs::write(&config_path, text).unwrap();
    let socket_path = dir.join("notify");
    let _ = std::fs::remove_file(&socket_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut command = match watchdog_usec {
        Some(usec) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
                .arg(DAEMON)
                .env("WATCHDOG_USEC", usec.to_string());
            sh
        }
        None => {
            let mut daemon = Command::new(DAEMON);
            daemon
                .env_remove("WATCHDOG_USEC")
                .env_remove("WATCHDOG_PID");
            daemon
        }
    };
    command
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("TALLY_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tallyd.log")).unwrap());
    let daemon = DaemonProcess {
        child: command.spawn().unwrap(),
        port,
        config_path,
        data_dir,
        notify,
    };
    daemon.wait_for("READY=1");
    daemon
}

/// The next `sd_notify` message, or `None` after `timeout` without one.
fn next_notification(daemon: &DaemonProcess, timeout: Duration) -> Option<String> {
    daemon.notify.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    match daemon.notify.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(err) => panic!("notify socket: {err}"),
    }
}

/// Waits up to `limit` for the daemon to exit on its own.
fn exit_within(daemon: &mut DaemonProcess, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// An entitlement whose commit sets off the fault `tallyd-under-test` was started with.
fn trigger() -> NewEntitlement {
    NewEntitlement {
        feature: "fault".into(),
        seats: 1,
        starts_at: None,
        expires_at: None,
        kind: EntitlementKind::Standard,
        borrowable: false,
        max_borrow_secs: None,
        reference: "fault-injection".into(),
    }
}

/// Signs in to the daemon as the owner with raw frames.
async fn raw_owner(daemon: &DaemonProcess) -> RawConn {
    let ca = std::fs::read(daemon.data_dir.join("tls/ca.pem")).unwrap();
    let token = std::fs::read_to_string(daemon.data_dir.join("owner.token")).unwrap();
    RawConn::signed_in_to(
        ([127, 0, 0, 1], daemon.port).into(),
        &ca,
        token.trim(),
        "robust",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_engine_pings_the_watchdog_while_idle_and_goes_quiet_when_stuck() {
    let dir = tempfile::tempdir().unwrap();
    // A 400 ms watchdog: pings every 200 ms.
    let daemon = start_daemon(
        dir.path(),
        &[("TALLYD_TEST_FAULT", "engine-hang")],
        Some(400_000),
    );

    // Idle, with no request at all, the loop still wakes and pings.
    let started = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        let message = next_notification(&daemon, Duration::from_secs(5))
            .expect("WATCHDOG=1 keeps coming while the engine is idle");
        if message.contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "pinged at half the period, not faster: 5 pings in {:?}",
        started.elapsed()
    );

    // A commit that never returns: the loop stops turning, so the pings stop (systemd would
    // kill and restart the daemon), although the process and its other tasks live on.
    let mut raw = raw_owner(&daemon).await;
    raw.send(&tally_protocol::ClientMessage::Request {
        id: 1,
        body: Request::EntitlementAdd(trigger()),
    })
    .await;
    let mut late = 0;
    while let Some(message) = next_notification(&daemon, Duration::from_secs(2)) {
        if message.contains("WATCHDOG=1") {
            late += 1;
            assert!(late <= 2, "the engine is stuck, yet pings keep coming");
        }
    }
}

#[tokio::test]
async fn a_panicking_engine_ends_tallyd_with_a_failure_status_and_a_reason_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_daemon(dir.path(), &[("TALLYD_TEST_FAULT", "engine-panic")], None);
    let mut raw = raw_owner(&daemon).await;
    raw.send(&tally_protocol::ClientMessage::Request {
        id: 1,
        body: Request::EntitlementAdd(trigger()),
    })
    .await;

    let status = exit_within(&mut daemon, Duration::from_secs(20))
        .expect("tallyd exits instead of answering \"shutting down\" for ever");
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("tallyd.log")).unwrap();
    assert!(
        log.contains("the engine task ended unexpectedly")
            && log.contains("injected fault: the commit panics"),
        "{log}"
    );
}

#[tokio::test]
async fn a_panicking_notifier_ends_tallyd_with_a_failure_status_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_daemon(dir.path(), &[("TALLYD_TEST_FAULT", "notifier-panic")], None);
    let mut raw = raw_owner(&daemon).await;
    let user = "fault@injection.test";
    // Removing the user queues a notification (user_removed), which the notifier takes.
    let requests = [
        Request::UserAdd(UserAdd {
            username: user.into(),
            name: "Fault".into(),
            role: Role::Member,
        }),
        Request::UserRemove(UserRef {
            username: user.into(),
        }),
    ];
    for (id, request) in (1..).zip(requests) {
        let answer = raw.request(id, request).await;
        assert!(
            matches!(
                answer,
                ServerMessage::Response {
                    outcome: Outcome::Ok(_),
                    ..
                }
            ),
            "{answer:?}"
        );
    }

    let status = exit_within(&mut daemon, Duration::from_secs(20))
        .expect("tallyd exits when its notifier dies");
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("tallyd.log")).unwrap();
    assert!(
        log.contains("the notifier task ended unexpectedly")
            && log.contains("injected fault: the notifier panics"),
        "{log}"
    );
}

#[tokio::test]
async fn times_past_9999_stored_by_an_older_version_are_printed_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_daemon(dir.path(), &[], None);
    daemon.kill9();
    // What an older version let an admin store: an entitlement ending past year 9999 and
    // one starting past it.
    let store = SqliteStore::open(&daemon.data_dir.join("tally.db"))
        .await
        .unwrap();
    let mut batch = Batch::default();
    for (id, starts_at, expires_at) in [(100, 0, Some(i64::MAX)), (101, MAX_TIME + 1, None)] {
        batch.add_entitlement(Entitlement {
            id,
            feature: "farfuture".into(),
            seats: 2,
            starts_at,
            expires_at,
            kind: EntitlementKind::Standard,
            borrowable: true,
            max_borrow_secs: 3600,
            reference: "old".into(),
        });
    }
    batch.next_entitlement_id = Some(102);
    store.commit(&batch, Fence::Single).await.unwrap();
    store.close().await;
    daemon.restart();

    let owner = tally_client::Client::connect(daemon.client_config())
        .await
        .unwrap();
    // Messages that print those times: the engine answers and keeps serving.
    let refused = owner
        .call(Request::Assign(Assign {
            username: "owner@localhost".into(),
            feature: "farfuture".into(),
            seats: 1,
            entitlement: Some(101),
            from: None,
            expires_at: None,
        }))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("unix-ms 253402300800000 (after year 9999)"),
        "{refused}"
    );
    let lease = owner
        .call(Request::Borrow(Borrow {
            feature: "farfuture".into(),
            seats: 1,
            duration_secs: 600,
            machine_id: "m".into(),
        }))
        .await;
    assert!(lease.is_ok(), "{lease:?}");
    assert_eq!(status(&owner, "farfuture").await.total, 2);

    // The CLI lists them, as text and as JSON.
    let config = daemon.client_toml();
    let config = config.to_str().unwrap();
    let out = cli(&["--config", config, "entitlement", "list", "farfuture"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("unix-ms {} (after year 9999)", i64::MAX)),
        "{text}"
    );
    assert!(
        text.contains("unix-ms 253402300800000 (after year 9999)"),
        "{text}"
    );
    let out = cli(&[
        "--config",
        config,
        "--json",
        "entitlement",
        "list",
        "farfuture",
    ]);
    assert!(out.status.success(), "{out:?}");
    let doc = stdout_json(&out);
    assert_eq!(
        doc["entitlements"][0]["expires_at"],
        format!("unix-ms {} (after year 9999)", i64::MAX)
    );
    assert_eq!(doc["entitlements"][0]["starts_at"], "1970-01-01T00:00:00Z");
}

/// Times a request may carry: the ends of the range, just past them, the ends of `i64`, any.
fn any_time() -> impl Strategy<Value = i64> {
    let now = now_millis();
    prop_oneof![
        Just(i64::MIN),
        Just(-1),
        Just(0),
        Just(MAX_TIME),
        Just(MAX_TIME + 1),
        Just(i64::MAX),
        any::<i64>(),
        (now - 86_400_000)..(now + 10 * 365 * 86_400_000),
    ]
}

fn any_seats() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(MAX_SEATS),
        Just(MAX_SEATS + 1),
        Just(u32::MAX),
        any::<u32>(),
        1..4u32,
    ]
}

fn any_duration() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(MAX_DURATION_SECS),
        Just(MAX_DURATION_SECS + 1),
        Just(u64::MAX),
        any::<u64>(),
        1..100_000u64,
    ]
}

/// A request with extreme numbers, and the fields the test expects to be refused as out of
/// range (worked out here, not by the code under test).
fn extreme_request() -> impl Strategy<Value = (Request, Vec<&'static str>)> {
    fn time_bad(at: Option<i64>) -> bool {
        at.is_some_and(|at| !(0..=MAX_TIME).contains(&at))
    }
    fn seats_bad(seats: u32) -> bool {
        !(1..=MAX_SEATS).contains(&seats)
    }
    fn duration_bad(secs: u64) -> bool {
        !(1..=MAX_DURATION_SECS).contains(&secs)
    }
    fn bad(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
        fields.iter().filter(|(_, b)| *b).map(|(f, _)| *f).collect()
    }
    let entitlement = (
        any_seats(),
        proptest::option::of(any_time()),
        proptest::option::of(any_time()),
        proptest::option::of(any_duration()),
    )
        .prop_map(|(seats, starts_at, expires_at, max_borrow_secs)| {
            let fields = bad(&[
                ("seats", seats_bad(seats)),
                ("starts_at", time_bad(starts_at)),
                ("expires_at", time_bad(expires_at)),
                ("max_borrow_secs", max_borrow_secs.is_some_and(duration_bad)),
            ]);
            let request = Request::EntitlementAdd(NewEntitlement {
                feature: "prop".into(),
                seats,
                starts_at,
                expires_at,
                kind: EntitlementKind::Standard,
                borrowable: true,
                max_borrow_secs,
                reference: String::new(),
            });
            (request, fields)
        });
    let checkout = any_seats().prop_map(|seats| {
        let request = Request::Checkout(Checkout {
            request_id: RequestId(rand::random()),
            feature: "prop".into(),
            seats,
        });
        (request, bad(&[("seats", seats_bad(seats))]))
    });
    let assign = (any_seats(), proptest::option::of(any_time())).prop_map(|(seats, expires_at)| {
        let request = Request::Assign(Assign {
            username: "ana@studio.com".into(),
            feature: "prop".into(),
            seats,
            entitlement: None,
            from: None,
            expires_at,
        });
        let fields = bad(&[
            ("seats", seats_bad(seats)),
            ("expires_at", time_bad(expires_at)),
        ]);
        (request, fields)
    });
    let revoke = proptest::option::of(any_seats()).prop_map(|seats| {
        let request = Request::Revoke(Revoke {
            username: "ana@studio.com".into(),
            feature: "prop".into(),
            seats,
        });
        (request, bad(&[("seats", seats.is_some_and(seats_bad))]))
    });
    let borrow = (any_seats(), any_duration()).prop_map(|(seats, duration_secs)| {
        let request = Request::Borrow(Borrow {
            feature: "prop".into(),
            seats,
            duration_secs,
            machine_id: "machine".into(),
        });
        let fields = bad(&[
            ("seats", seats_bad(seats)),
            ("duration_secs", duration_bad(duration_secs)),
        ]);
        (request, fields)
    });
    let audit = (
        proptest::option::of(any_time()),
        proptest::option::of(prop_oneof![
            Just(0u32),
            Just(1),
            Just(u32::MAX),
            any::<u32>()
        ]),
    )
        .prop_map(|(since, limit)| {
            let request = Request::Audit(AuditQuery {
                since,
                user: None,
                feature: None,
                limit,
            });
            let fields = bad(&[("since", time_bad(since)), ("limit", limit == Some(0))]);
            (request, fields)
        });
    prop_oneof![entitlement, checkout, assign, revoke, borrow, audit]
}

/// Every time, count and duration field of every request, at and past the ends of its range,
/// over a real connection: the answer is a result or a clean refusal (`invalid` naming the
/// field when one is out of range, never `internal`), and the server keeps serving.
#[test]
fn extreme_times_counts_and_durations_are_answered_and_the_server_keeps_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start());
    let raw = RefCell::new(rt.block_on(RawConn::signed_in(&server, ClientId(rand::random()))));
    let next_id = Cell::new(0u32);
    let call = |body: Request| {
        next_id.set(next_id.get() + 1);
        match rt.block_on(raw.borrow_mut().request(next_id.get(), body)) {
            ServerMessage::Response { outcome, .. } => outcome,
            other => panic!("the server closed the connection: {other:?}"),
        }
    };
    let setup = [
        Request::EntitlementAdd(NewEntitlement {
            feature: "prop".into(),
            seats: 1000,
            starts_at: None,
            expires_at: None,
            kind: EntitlementKind::Standard,
            borrowable: true,
            max_borrow_secs: None,
            reference: String::new(),
        }),
        Request::UserAdd(UserAdd {
            username: "ana@studio.com".into(),
            name: "Ana".into(),
            role: Role::Member,
        }),
    ];
    for request in setup {
        assert!(matches!(call(request), Outcome::Ok(_)));
    }

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&extreme_request(), |(request, out_of_range)| {
            let name = request.name();
            match call(request) {
                Outcome::Ok(_) => prop_assert!(
                    out_of_range.is_empty(),
                    "{name} accepted with {out_of_range:?} out of range"
                ),
                Outcome::Err(err) if !out_of_range.is_empty() => {
                    prop_assert_eq!(err.code, ErrorCode::Invalid, "{}", err);
                    prop_assert!(
                        out_of_range.iter().any(|f| err.message.starts_with(f)),
                        "{name}: {:?} names none of {out_of_range:?}",
                        err.message
                    );
                }
                Outcome::Err(err) => {
                    prop_assert_ne!(err.code, ErrorCode::Internal, "{}", err);
                    prop_assert!(!err.message.is_empty());
                }
                Outcome::NotLeader(redirect) => {
                    prop_assert!(false, "{name}: a single node redirected: {redirect:?}")
                }
            }
            // Still serving: the engine answers the next request.
            match call(Request::Status(StatusQuery { feature: None })) {
                Outcome::Ok(Response::Status(_)) => Ok(()),
                other => Err(TestCaseError::fail(format!(
                    "after {name}, status answered {other:?}"
                ))),
            }
        })
        .unwrap();

    // Whatever was stored lists through the CLI, and the server stops cleanly (its engine
    // never died).
    let client_toml = server.data_dir().join("client.toml");
    let out = cli(&[
        "--config",
        client_toml.to_str().unwrap(),
        "--json",
        "entitlement",
        "list",
    ]);
    assert!(out.status.success(), "{out:?}");
    drop(raw);
    rt.block_on(server.stop());
}
