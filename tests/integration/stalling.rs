//! The client and `tally` against a server that stalls (issue 12): one that never answers,
//! answers under another request id, drips its answer, answers after the deadline, stops
//! answering heartbeats, or drops every connection right after the handshake. Every request
//! has a deadline, a late grant is given back, signals end every wait of `tally checkout`,
//! and reconnects back off until a request is answered.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tally_client::{Client, Error};
use tally_protocol::{Request, StatusQuery};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::fake::*;
use crate::harness::*;

/// Far more than any deadline of these tests: reaching it means `tally` or the client hung.
const HUNG: Duration = Duration::from_secs(60);

/// Starts `tally --config CONFIG ARGS...` with its output piped; killed if the test ends
/// first.
fn spawn_tally(config: &Path, args: &[&str]) -> Child {
    tokio::process::Command::new(CLI)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The grant `tally --json checkout` prints, once it is out.
async fn grant_of(tally: &mut Child) -> String {
    let mut grant = String::new();
    BufReader::new(tally.stdout.take().unwrap())
        .read_line(&mut grant)
        .await
        .unwrap();
    assert!(grant.contains("\"lease\""), "{grant}");
    grant
}

/// Waits for `tally` to end: `what` it must not outlive.
async fn ended(tally: Child, what: &str) -> Output {
    tokio::time::timeout(HUNG, tally.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("tally outlived {what}"))
        .unwrap()
}

fn signal(tally: &Child, signal: Signal) {
    kill(Pid::from_raw(tally.id().unwrap() as i32), signal).unwrap()
}

fn status_request() -> Request {
    Request::Status(StatusQuery { feature: None })
}

async fn call(client: &Client, request: Request) -> Result<tally_protocol::Response, Error> {
    tokio::time::timeout(HUNG, client.call(request))
        .await
        .expect("the call outlived every deadline")
}

/// A server that never answers, and one that drips its answer a byte at a time: the
/// request fails when its deadline passes, naming the server and the request, and a read
/// says nothing was changed.
#[tokio::test]
async fn a_silent_or_dripping_server_fails_the_request_at_its_deadline() {
    let server = TestServer::start().await;
    let silent = FakeServer::start(
        &server,
        Script::honest(60_000).replying(|request| match request {
            Request::Status(_) => Reply::Silent,
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    let dripping = FakeServer::start(
        &server,
        Script::honest(60_000).replying(|request| match request {
            Request::Status(_) => Reply::Drip(honest(request), Duration::from_millis(400)),
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    for fake in [&silent, &dripping] {
        let mut config = fake.client_config();
        config.request_timeout = Duration::from_secs(1);
        let client = Client::connect(config).await.unwrap();
        let err = call(&client, status_request()).await.unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("did not answer the status request within 1s"),
            "{text}"
        );
        assert!(text.contains(&fake.server_addr().to_string()), "{text}");
        assert!(!text.contains("may or may not"), "{text}");
        if fake.addr == silent.addr {
            // The client goes on: the next request is answered.
            call(&client, Request::Heartbeat).await.unwrap();
        }
    }
}

/// An answer under an id that was never sent is the server's fault: the connection is
/// left and the request sent again on a new one; when that happens every time, the
/// caller hears why, before the deadline.
#[tokio::test]
async fn an_answer_under_another_request_id_drops_the_connection() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(
        &server,
        Script::honest(60_000).replying(|request| match request {
            Request::Status(_) => Reply::WrongId(honest(request)),
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    let mut config = fake.client_config();
    config.request_timeout = Duration::from_secs(30);
    let client = Client::connect(config).await.unwrap();
    let err = call(&client, status_request()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("which was never sent"), "{text}");
    assert!(
        fake.accepted.load(Ordering::SeqCst) >= 2,
        "the connection was kept"
    );
    let statuses = fake.requests().iter().filter(|r| **r == "status").count();
    assert_eq!(
        statuses,
        tally_client::MAX_SENDS as usize,
        "{:?}",
        fake.requests()
    );
}

/// A grant that comes after its caller stopped waiting (its deadline passed, or it dropped
/// the future) is checked in at once: no seat is held by nobody.
#[tokio::test]
async fn a_grant_nobody_waits_for_any_more_is_checked_in() {
    let server = TestServer::start().await;
    let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
    let made = grants.clone();
    let fake = FakeServer::start(
        &server,
        Script::honest(60_000).replying(move |request| match request {
            Request::Checkout(checkout) => {
                let outcome = granted(checkout);
                made.lock().unwrap().push(lease_of(&outcome));
                Reply::Late(outcome, Duration::from_millis(1_500))
            }
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    let mut config = fake.client_config();
    config.request_timeout = Duration::from_secs(1);
    let client = Client::connect(config).await.unwrap();
    // Past the deadline.
    let err = tokio::time::timeout(HUNG, client.checkout("vray", 1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(
        err.to_string().contains("may or may not have been applied"),
        "{err}"
    );
    // Given up by the caller.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), client.checkout("nuke", 1)).await;
    assert!(gave_up.is_err(), "answered before its delay");
    let grants = grants.clone();
    fake.wait_for("both grants checked in", |seen| {
        let granted = grants.lock().unwrap();
        granted.len() == 2
            && granted.iter().all(|lease| {
                seen.iter()
                    .any(|r| matches!(r, Request::Checkin(c) if c.lease == *lease))
            })
    })
    .await;
}

/// A check-in the server does not answer ends at the release deadline, not the request
/// timeout; the lease is no longer heartbeated, so the server ends it at its ttl.
#[tokio::test]
async fn a_release_has_its_own_deadline() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(
        &server,
        Script::honest(60_000).replying(|request| match request {
            Request::Checkout(checkout) => Reply::Answer(granted(checkout)),
            Request::Checkin(_) => Reply::Silent,
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    let mut config = fake.client_config();
    config.request_timeout = Duration::from_secs(600);
    config.release_timeout = Duration::from_millis(500);
    let client = Client::connect(config).await.unwrap();
    let lease = client.checkout("vray", 1).await.unwrap();
    let err = tokio::time::timeout(HUNG, lease.release())
        .await
        .expect("the release outlived its deadline")
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(
        err.to_string().contains("checkin request within 500ms"),
        "{err}"
    );
}

/// A server that answers everything but heartbeats: the unanswered heartbeat ends the
/// connection, and the client reconnects and resumes.
#[tokio::test]
async fn an_unanswered_heartbeat_ends_the_connection() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(
        &server,
        Script::honest(200).replying(|request| match request {
            Request::Heartbeat => Reply::Silent,
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    let client = Client::connect(fake.client_config()).await.unwrap();
    fake.wait_for("a resume on a second connection", |seen| {
        seen.iter()
            .filter(|r| matches!(r, Request::Resume(_)))
            .count()
            >= 2
    })
    .await;
    assert!(fake.accepted.load(Ordering::SeqCst) >= 2);
    drop(client);
}

/// `tally --json checkout F` against a server that signs in and then drops every
/// connection: the reconnects back off (the waits between them grow) and say so once, not
/// once a try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_every_connection_gets_backoff_and_one_warning() {
    let server = TestServer::start().await;
    let dropping = Arc::new(AtomicBool::new(false));
    let closing = dropping.clone();
    let fake = FakeServer::start(
        &server,
        Script::honest(1_000).replying(move |request| {
            if closing.load(Ordering::SeqCst) {
                return Reply::Close;
            }
            match request {
                Request::Checkout(checkout) => Reply::Answer(granted(checkout)),
                other => Reply::Answer(honest(other)),
            }
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());
    let mut tally = spawn_tally(&config, &["-v", "--json", "checkout", "vray"]);
    grant_of(&mut tally).await;
    let before = fake.accepted.load(Ordering::SeqCst);
    dropping.store(true, Ordering::SeqCst);
    // The fake drops the next heartbeat's connection, and then every one after the
    // handshake's resume.
    let deadline = Instant::now() + HUNG;
    while fake.accepted.load(Ordering::SeqCst) < before + 7 {
        assert!(Instant::now() < deadline, "no reconnects");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let times = fake.accepted_at.lock().unwrap()[before..before + 7].to_vec();
    signal(&tally, Signal::SIGKILL);
    let output = ended(tally, "SIGKILL").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Each wait at least its backoff: 0, 100, 200, 400 ms, then 2/3 of the heartbeat.
    let spent = times[6] - times[0];
    assert!(
        spent >= Duration::from_millis(100 + 200 + 400 + 666),
        "7 connections in {spent:?}: the backoff did not grow\n{stderr}"
    );
    let warnings = stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings <= 2, "{warnings} warnings:\n{stderr}");
    assert!(
        stderr.contains("connection to the license server lost"),
        "{stderr}"
    );
}

/// Signals end every wait of `tally checkout`: SIGINT while the checkout is unanswered
/// ends it at once (exit 130); SIGTERM while the check-in is unanswered ends that wait;
/// a command's exit status is passed on even when its check-in is not answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_end_every_wait_of_tally_checkout() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(
        &server,
        Script::honest(60_000).replying(|request| match request {
            Request::Checkout(checkout) if checkout.feature == "stuck" => Reply::Silent,
            Request::Checkout(checkout) => Reply::Answer(granted(checkout)),
            Request::Checkin(_) => Reply::Silent,
            other => Reply::Answer(honest(other)),
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = fake.client_toml(dir.path());

    // The checkout is never answered: the first SIGINT ends tally.
    let stuck = spawn_tally(&config, &["--json", "checkout", "stuck"]);
    fake.wait_for("the checkout", |seen| {
        seen.iter().any(|r| matches!(r, Request::Checkout(_)))
    })
    .await;
    signal(&stuck, Signal::SIGINT);
    let output = ended(stuck, "SIGINT").await;
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let document = stdout_json(&output);
    assert_eq!(document["error"]["code"], "interrupted", "{document}");

    // Held, then SIGTERM: the check-in is never answered, and a second signal ends the
    // wait.
    let mut held = spawn_tally(&config, &["--json", "checkout", "vray"]);
    grant_of(&mut held).await;
    signal(&held, Signal::SIGTERM);
    fake.wait_for("the check-in", |seen| {
        seen.iter().any(|r| matches!(r, Request::Checkin(_)))
    })
    .await;
    signal(&held, Signal::SIGTERM);
    let output = ended(held, "two signals").await;
    assert_ne!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A command that exits 7; its check-in is never answered: tally still exits 7, after
    // the release deadline or at once on a signal.
    let checkins = fake.requests().iter().filter(|r| **r == "checkin").count();
    let mut run = spawn_tally(
        &config,
        &["--json", "checkout", "vray", "--", "sh", "-c", "exit 7"],
    );
    grant_of(&mut run).await;
    fake.wait_for("the command's check-in", |seen| {
        seen.iter()
            .filter(|r| matches!(r, Request::Checkin(_)))
            .count()
            > checkins
    })
    .await;
    signal(&run, Signal::SIGINT);
    let output = ended(run, "its release deadline").await;
    assert_eq!(output.status.code(), Some(7), "{output:?}");
}

/// SIGHUP to `tally checkout F -- CMD` is handled as SIGTERM is: the command gets it,
/// and the seat is checked in when it ends; tally exits as the command did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reaches_the_command_and_the_seat_is_checked_in() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 2, None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = owner_toml(&server, dir.path());
    let mut tally = spawn_tally(
        &config,
        &["--json", "checkout", "vray", "--", "sleep", "600"],
    );
    grant_of(&mut tally).await;
    assert_eq!(status(&owner, "vray").await.in_use, 1);
    signal(&tally, Signal::SIGHUP);
    let output = ended(tally, "SIGHUP").await;
    // The command was ended by SIGHUP: 128 + 1, as a shell reports it.
    assert_eq!(output.status.code(), Some(129), "{output:?}");
    assert_eq!(status(&owner, "vray").await.in_use, 0);
}

/// A server that takes the connection and never says Welcome: connecting gives up at the
/// connect timeout, naming the server.
#[tokio::test]
async fn a_server_silent_in_the_handshake_is_given_up_at_the_connect_timeout() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(&server, Script::honest(1_000).handshake(Handshake::Silent)).await;
    let mut config = fake.client_config();
    config.connect_timeout = Duration::from_millis(500);
    let err = tokio::time::timeout(HUNG, Client::connect(config))
        .await
        .expect("connecting outlived its timeout")
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&fake.server_addr().to_string()), "{text}");
    assert!(text.contains("no answer within 500ms"), "{text}");
}

/// A client file for the owner of `server`, its token in a file of mode 0600.
fn owner_toml(server: &TestServer, dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let config = dir.join("client.toml");
    let token = dir.join("token");
    std::fs::write(&token, server.owner_token()).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        &config,
        format!(
            "servers = [\"localhost:{}\"]\nca = {:?}\ntoken_file = {:?}\n",
            server.addr.port(),
            server.data_dir().join("tls/ca.pem"),
            token
        ),
    )
    .unwrap();
    config
}

/// A stdout nobody reads any more (a closed pipe, a hung-up terminal) loses what
/// `tally checkout` prints and nothing else: the command still runs, its status is passed
/// on, and the seat is checked in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_does_not_stop_checkout_from_running_the_command_and_checking_in() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 1, None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = owner_toml(&server, dir.path());
    let ran = dir.path().join("ran");
    for json in [true, false] {
        let _ = std::fs::remove_file(&ran);
        let script = format!("touch {}; exit 3", ran.display());
        let mut args = vec!["checkout", "vray", "--", "sh", "-c", &script];
        if json {
            args.insert(0, "--json");
        }
        let mut tally = spawn_tally(&config, &args);
        drop(tally.stdout.take());
        let output = ended(tally, "its command").await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "json {json}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(ran.exists(), "json {json}: the command did not run");
        assert_eq!(status(&owner, "vray").await.in_use, 0, "json {json}");
    }
    // Any other command whose reader went away ends quietly, as `tally status | head`
    // expects: the status of a process SIGPIPE ended, and nothing said.
    let mut tally = spawn_tally(&config, &["status"]);
    drop(tally.stdout.take());
    let output = ended(tally, "a closed stdout").await;
    assert_eq!(output.status.code(), Some(141), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
}
