//! The queue (SPEC R17): checkouts that wait for a seat, served in order of arrival as seats
//! free up, through the client library against an in-process server on a manual clock
//! (timeouts and a client gone for a ttl, with no sleeping), and through the `tally` binary
//! against a `tallyd` process (`checkout --wait`, `queue`, `status`'s `queued`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_client::{Client, Error, ServerAddr};
use tally_protocol::{
    Checkout, CheckoutWait, ClientId, ErrorCode, QueueEntry, Request, RequestId, Response, Role,
    ServerMessage,
};

use crate::cluster::Proxy;
use crate::harness::*;

/// Polls the status figure `queued` of vray every 20 ms until it is `n`, for at most 10 s.
async fn wait_queued(client: &Client, n: u32) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let now = queued(client).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < until, "queued stayed {now}, not {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queued(client: &Client) -> u32 {
    status(client, "vray").await.queued
}

async fn queue(client: &Client) -> Vec<QueueEntry> {
    client.queue(Some("vray")).await.unwrap()
}

/// A stepped server with a long ttl (stepping the clock expires nothing), one seat of vray,
/// and users ana, ben and cat.
async fn one_seat() -> (TestServer, Client, [Client; 3]) {
    let server = TestServer::start_stepped(|config| {
        config.leases.ttl = Duration::from_secs(600);
    })
    .await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 1, None).await;
    let mut clients = Vec::new();
    for name in ["ana", "ben", "cat"] {
        let token = new_user(&owner, &format!("{name}@studio"), Role::Member).await;
        clients.push(Client::connect(server.client_config(&token)).await.unwrap());
    }
    let clients: [Client; 3] = clients.try_into().ok().unwrap();
    (server, owner, clients)
}

/// Ana, ben and cat wait in that order for the one seat the owner holds: each seat given
/// back goes to the next in order of arrival, a new checkout that does not wait finds none,
/// `queued` and the listing follow, and a wait with a limit ends with `queue_timeout` when
/// the (manual) clock passes it.
#[tokio::test]
async fn waiters_are_served_in_order_and_a_limited_wait_times_out() {
    let (server, owner, [ana, ben, cat]) = one_seat().await;
    let held = owner.checkout("vray", 1).await.unwrap();
    let mut waits = Vec::new();
    for (i, client) in [&ana, &ben].into_iter().enumerate() {
        let client = client.clone();
        waits.push(tokio::spawn(async move {
            client.checkout_wait("vray", 1, None).await
        }));
        wait_queued(&owner, i as u32 + 1).await;
    }
    let cat_waits = {
        let cat = cat.clone();
        tokio::spawn(async move {
            cat.checkout_wait("vray", 1, Some(Duration::from_secs(30)))
                .await
        })
    };
    wait_queued(&owner, 3).await;
    let listed = queue(&owner).await;
    let users: Vec<(&str, u32)> = listed
        .iter()
        .map(|e| (e.user.as_str(), e.position))
        .collect();
    assert_eq!(
        users,
        [("ana@studio", 1), ("ben@studio", 2), ("cat@studio", 3)]
    );
    // A member sees their own entry, with its real position.
    let own = queue(&ben).await;
    assert_eq!(own.len(), 1);
    assert_eq!((own[0].user.as_str(), own[0].position), ("ben@studio", 2));

    // The owner's seat goes back: to ana, not to a new checkout that does not wait.
    held.release().await.unwrap();
    let ana_lease = waits.remove(0).await.unwrap().unwrap();
    assert_eq!(ana_lease.info().user, "ana@studio");
    let refused = owner.checkout("vray", 1).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Server(body) if body.code == ErrorCode::NoSeat),
        "{refused:?}"
    );
    assert_eq!(queued(&owner).await, 2);

    // Ana's seat goes to ben.
    ana_lease.release().await.unwrap();
    let ben_lease = waits.remove(0).await.unwrap().unwrap();
    assert_eq!(ben_lease.info().user, "ben@studio");
    assert_eq!(queued(&owner).await, 1);

    // Cat's 30 s pass on the server's clock: queue_timeout, and the queue is empty.
    server.step(Duration::from_secs(31));
    let timed_out = cat_waits.await.unwrap().unwrap_err();
    assert!(
        matches!(&timed_out, Error::Server(body) if body.code == ErrorCode::QueueTimeout),
        "{timed_out:?}"
    );
    assert_eq!(queued(&owner).await, 0);
    assert!(queue(&owner).await.is_empty());
    // The grants are audited as checkouts from the queue, the timeout as the queue's.
    let events = audit(&owner).await;
    assert!(events
        .iter()
        .any(|e| e.action == "checkout" && e.reason.starts_with("from the queue")));
    assert!(events
        .iter()
        .any(|e| e.action == "queue" && e.outcome == "queue_timeout"));
    drop(ben_lease);
}

/// A waiter whose connection is reset reconnects and keeps its place: the seat given back
/// goes to it, not to the one that queued after it.
#[tokio::test]
async fn a_waiter_that_reconnects_keeps_its_place() {
    let (server, owner, [_, ben, _]) = one_seat().await;
    let held = owner.checkout("vray", 1).await.unwrap();
    // Dan reaches the server through a proxy the test can reset.
    let proxy = Proxy::start(server.addr).await;
    let token = new_user(&owner, "dan@studio", Role::Member).await;
    let mut config = server.client_config(&token);
    config.servers = vec![ServerAddr {
        host: "localhost".into(),
        port: proxy.port(),
    }];
    let dan = Client::connect(config).await.unwrap();
    let dan_waits = tokio::spawn(async move {
        let lease = dan.checkout_wait("vray", 1, None).await;
        (lease, dan)
    });
    wait_queued(&owner, 1).await;
    let ben_waits = {
        let ben = ben.clone();
        tokio::spawn(async move { ben.checkout_wait("vray", 1, None).await })
    };
    wait_queued(&owner, 2).await;

    proxy.reset();
    // Dan's client reconnects and sends its wait again: still first. (Had the seat been
    // given back while it was away, it would have been granted to dan's entry, and dan
    // would have learned it by sending its wait again.)
    let listed = queue(&owner).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].user.as_str(), listed[0].position),
        ("dan@studio", 1)
    );
    held.release().await.unwrap();
    let (lease, _dan) = dan_waits.await.unwrap();
    assert_eq!(lease.unwrap().info().user, "dan@studio");
    assert!(!ben_waits.is_finished());
    assert_eq!(queued(&owner).await, 1);
    ben_waits.abort();
}

/// A client instance that queued and then went away is dropped from the queue once it has
/// not been seen for one ttl; the one behind it, which keeps coming, gets the seat.
#[tokio::test]
async fn a_client_gone_for_a_ttl_loses_its_place() {
    let server = TestServer::start_stepped(|config| {
        config.leases.ttl = Duration::from_secs(30);
    })
    .await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 1, None).await;
    let held = owner.checkout("vray", 1).await.unwrap();

    // A raw connection queues, then leaves without a word.
    let mut raw = RawConn::signed_in(&server, ClientId([9; 16])).await;
    let wait = Request::CheckoutWait(CheckoutWait {
        checkout: Checkout {
            request_id: RequestId([1; 16]),
            feature: "vray".into(),
            seats: 1,
        },
        wait_secs: None,
    });
    match raw.request(1, wait).await {
        ServerMessage::Response { outcome, .. } => match outcome.into_result() {
            Ok(Response::Queued(place)) => assert_eq!(place.position, 1),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    drop(raw);
    let token = new_user(&owner, "ben@studio", Role::Member).await;
    let ben = Client::connect(server.client_config(&token)).await.unwrap();
    let ben_waits = {
        let ben = ben.clone();
        tokio::spawn(async move { ben.checkout_wait("vray", 1, None).await })
    };
    wait_queued(&owner, 2).await;

    // 20 s on: ben's client (a request stands for its heartbeat) and the owner's are seen.
    server.step(Duration::from_secs(20));
    status(&ben, "vray").await;
    owner.call(Request::Heartbeat).await.unwrap();
    assert_eq!(queued(&owner).await, 2, "nobody has been away a ttl yet");
    // 11 s more: the raw connection's instance has been away 31 s.
    server.step(Duration::from_secs(11));
    wait_queued(&owner, 1).await;
    let listed = queue(&owner).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user, "ben@studio");
    held.release().await.unwrap();
    let lease = ben_waits.await.unwrap().unwrap();
    assert_eq!(lease.info().user, "ben@studio");
    let events = audit(&owner).await;
    assert!(events.iter().any(|e| e.action == "queue"
        && e.outcome == "queue_timeout"
        && e.reason.contains("not seen")));
}

/// Starts `tally --json checkout vray --wait [WAIT] -- sh -c 'echo N >> FILE'`.
fn cli_waiter(config: &Path, wait: Option<&str>, n: u32, file: &Path) -> Child {
    let script = format!("echo {n} >> {}", file.display());
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--json".into(),
        "checkout".into(),
        "vray".into(),
        "--wait".into(),
    ];
    args.extend(wait.map(str::to_string));
    args.extend(["--".into(), "sh".into(), "-c".into(), script]);
    Command::new(CLI)
        .args(&args)
        .env("HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn queue_json(config: &str) -> serde_json::Value {
    let (code, doc) = cli_json(config, &["queue", "vray"]);
    assert_eq!(code, Some(0), "{doc}");
    doc
}

/// Waits (in real time) for the queue of vray to hold `n` entries.
fn wait_for_queue(config: &str, n: usize) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let doc = queue_json(config);
        if doc["queue"].as_array().unwrap().len() == n {
            return doc;
        }
        assert!(Instant::now() < until, "the queue never held {n}: {doc}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three `tally checkout vray --wait -- CMD` against a one-seat pool held by a fourth: each
/// runs its command in turn, in order of arrival, as the one before ends; a fifth killed
/// while waiting gives its place up (after its ttl) to the one behind it. `tally queue`
/// and `tally status` show the waits.
#[test]
fn cli_waiters_run_in_order_of_arrival() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "2s", "200ms");
    let toml = daemon.client_toml();
    let config = toml.to_str().unwrap();
    let (code, doc) = cli_json(config, &["entitlement", "add", "vray", "--seats", "1"]);
    assert_eq!(code, Some(0), "{doc}");
    let (mut holder, _) = spawn_holder(&toml, "vray");
    let order = dir.path().join("order");

    let mut waiters = Vec::new();
    for n in 1..=3 {
        waiters.push(cli_waiter(&toml, None, n, &order));
        wait_for_queue(config, n as usize);
    }
    // A fourth joins and is killed: it stays until it has been away a ttl, then goes.
    let mut gone = cli_waiter(&toml, None, 4, &order);
    let doc = wait_for_queue(config, 4);
    let first = &doc["queue"][0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["feature", "host", "position", "seats", "since", "user"]
    );
    assert_eq!(first["feature"], "vray");
    assert_eq!(first["seats"], 1);
    assert_eq!(first["position"], 1);
    assert_eq!(doc["queue"][3]["position"], 4);
    let (_, status) = cli_json(config, &["status", "vray"]);
    assert_eq!(status["features"][0]["queued"], 4, "{status}");
    gone.kill().unwrap();
    gone.wait().unwrap();
    wait_for_queue(config, 3);

    // The holder ends (SIGTERM checks its seat in): the waiters run one after the other.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    holder.wait().unwrap();
    for mut waiter in waiters {
        let out = wait_with_deadline(&mut waiter, Duration::from_secs(30));
        assert_eq!(out.0, Some(0), "stderr: {}", out.2);
        let grant: serde_json::Value = serde_json::from_str(out.1.lines().next().unwrap()).unwrap();
        assert_eq!(grant["lease"]["feature"], "vray");
    }
    let ran = std::fs::read_to_string(&order).unwrap();
    assert_eq!(ran, "1\n2\n3\n");
    assert!(queue_json(config)["queue"].as_array().unwrap().is_empty());
}

/// `tally checkout vray --wait 2s` with no seat free exits 3 with `queue_timeout`; plain
/// `queue` lists nothing then. (The daemon runs on the system clock: a real 2 s wait.)
#[test]
fn a_cli_wait_that_passes_exits_3_with_queue_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "5s", "200ms");
    let toml = daemon.client_toml();
    let config = toml.to_str().unwrap();
    cli_json(config, &["entitlement", "add", "vray", "--seats", "1"]);
    let (_holder, _) = spawn_holder(&toml, "vray");
    let started = Instant::now();
    let mut waiter = cli_waiter(&toml, Some("2s"), 1, &dir.path().join("never"));
    let (code, stdout, stderr) = wait_with_deadline(&mut waiter, Duration::from_secs(30));
    assert_eq!(code, Some(3), "stderr: {stderr}");
    let doc: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(doc["error"]["code"], "queue_timeout", "{doc}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(!dir.path().join("never").exists());
    let (code, doc) = cli_json(config, &["queue"]);
    assert_eq!(code, Some(0));
    assert_eq!(doc, serde_json::json!({ "queue": [] }));
}

/// The exit code, stdout and stderr of a child, killing it if it runs past `limit`.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> (Option<i32>, String, String) {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stdout = String::new();
            let mut stderr = String::new();
            if let Some(out) = child.stdout.take() {
                for line in BufReader::new(out).lines() {
                    stdout.push_str(&line.unwrap());
                    stdout.push('\n');
                }
            }
            if let Some(err) = child.stderr.take() {
                for line in BufReader::new(err).lines() {
                    stderr.push_str(&line.unwrap());
                    stderr.push('\n');
                }
            }
            return (status.code(), stdout, stderr);
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the child did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `priority 1 leads` (SPEC §8) through the binaries: a lead who joins the queue after the
/// owner is listed first and runs first.
#[test]
fn a_priority_rule_puts_its_group_first_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let toml = daemon.client_toml();
    let config = toml.to_str().unwrap();
    let ok = |args: &[&str]| {
        let (code, doc) = cli_json(config, args);
        assert_eq!(code, Some(0), "{args:?}: {doc}");
        doc
    };
    ok(&["entitlement", "add", "vray", "--seats", "1"]);
    let token = ok(&["user", "add", "lead@studio"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let lead = crate::policy::user_config(&daemon, "lead", &token);
    ok(&["group", "add", "leads", "user:lead@studio"]);
    ok(&["policy", "add", "vray", "priority", "1", "leads"]);
    let (mut holder, _) = spawn_holder(&toml, "vray");
    let order = dir.path().join("order");

    let owner_waits = cli_waiter(&toml, None, 1, &order);
    wait_for_queue(config, 1);
    let lead_waits = cli_waiter(&lead, None, 2, &order);
    let doc = wait_for_queue(config, 2);
    let listed: Vec<(&str, u64)> = doc["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["user"].as_str().unwrap(), e["position"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [("lead@studio", 1), ("owner@localhost", 2)],
        "{doc}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    holder.wait().unwrap();
    for mut waiter in [lead_waits, owner_waits] {
        let out = wait_with_deadline(&mut waiter, Duration::from_secs(30));
        assert_eq!(out.0, Some(0), "stderr: {}", out.2);
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "2\n1\n");
}
