//! The floating pool over the wire: R1–R4 and R10 with the real client crate.

use std::time::Duration;

use tally_client::Error;
use tally_protocol::{
    Checkout, ClientId, EndReason, ErrorCode, Outcome, Release, Request, RequestId, Response,
    ServerMessage,
};

use crate::harness::*;

#[tokio::test]
async fn concurrent_checkouts_never_exceed_the_pool() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 10, None).await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let config = server.client_config(&server.owner_token());
        tasks.push(tokio::spawn(async move {
            let client = tally_client::Client::connect(config).await.unwrap();
            let result = client.checkout("vray", 1).await;
            (client, result)
        }));
    }
    let mut granted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (client, result) = task.await.unwrap();
        match result {
            Ok(lease) => granted.push((client, lease)),
            Err(Error::Server(body)) => {
                assert_eq!(body.code, ErrorCode::NoSeat);
                assert!(body.message.contains("10 of 10"), "{}", body.message);
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((granted.len(), refused), (10, 20));
    let figures = status(&owner, "vray").await;
    assert_eq!(
        (figures.total, figures.in_use, figures.available),
        (10, 10, 0)
    );
    for (_, lease) in granted {
        lease.release().await.unwrap();
    }
    assert_eq!(status(&owner, "vray").await.available, 10);
    server.stop().await;
}

#[tokio::test]
async fn several_seats_at_once_and_status_figures() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "nuke", 3, None).await;
    add_entitlement(&owner, "nuke", 2, None).await;
    let lease = owner.checkout("nuke", 4).await.unwrap();
    assert_eq!(lease.info().seats, 4);
    let figures = status(&owner, "nuke").await;
    assert_eq!(
        (
            figures.total,
            figures.floating,
            figures.in_use,
            figures.available,
            figures.assigned
        ),
        (5, 5, 4, 1, 0)
    );
    let err = owner.checkout("nuke", 2).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSeat));
    let err = owner.checkout("maya", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    assert!(err.to_string().contains("maya"));
    drop(lease);
    // Dropping the guard checks the seats in.
    for _ in 0..100 {
        if status(&owner, "nuke").await.in_use == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&owner, "nuke").await.in_use, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_released_lease_is_reported_lost_at_the_next_heartbeat() {
    let server = TestServer::start_with(|c| c.leases.ttl = Duration::from_millis(1500)).await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 1, None).await;
    let holder = tally_client::Client::connect(server.client_config(&server.owner_token()))
        .await
        .unwrap();
    let mut lease = holder.checkout("vray", 1).await.unwrap();
    match owner
        .call(Request::Release(Release { lease: lease.id() }))
        .await
        .unwrap()
    {
        Response::Released(id) => assert_eq!(id, lease.id()),
        other => panic!("{other:?}"),
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), lease.lost())
        .await
        .expect("told within a heartbeat");
    assert_eq!(reason, EndReason::Released);
    assert_eq!(status(&owner, "vray").await.available, 1);
    server.stop().await;
}

#[tokio::test]
async fn an_expiring_entitlement_ends_its_leases_with_reason_expired() {
    let server = TestServer::start_stepped(|c| c.leases.ttl = Duration::from_millis(1500)).await;
    let owner = server.owner().await;
    add_entitlement(&owner, "houdini", 1, Some(server.now() + 1200)).await;
    let mut lease = owner.checkout("houdini", 1).await.unwrap();
    assert_eq!(status(&owner, "houdini").await.in_use, 1);
    // The entitlement's end, in the server's stepped time; the holder learns it at its next
    // heartbeat.
    server.step(Duration::from_millis(1200));
    let reason = tokio::time::timeout(Duration::from_secs(5), lease.lost())
        .await
        .unwrap();
    assert_eq!(reason, EndReason::Expired);
    let figures = status(&owner, "houdini").await;
    assert_eq!((figures.total, figures.in_use), (0, 0));
    let err = owner.checkout("houdini", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Expired), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_retried_checkout_returns_the_same_lease_on_a_new_connection() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 5, None).await;
    let instance = ClientId(rand::random());
    let checkout = Request::Checkout(Checkout {
        request_id: RequestId([7; 16]),
        feature: "vray".into(),
        seats: 1,
    });
    let mut first = RawConn::signed_in(&server, instance).await;
    let ServerMessage::Response {
        outcome: Outcome::Ok(Response::Lease(a)),
        ..
    } = first.request(1, checkout.clone()).await
    else {
        panic!("checkout refused")
    };
    // The answer is "lost": the client drops the connection and retries on a new one.
    drop(first);
    let mut second = RawConn::signed_in(&server, instance).await;
    let ServerMessage::Response {
        outcome: Outcome::Ok(Response::Lease(b)),
        ..
    } = second.request(1, checkout).await
    else {
        panic!("retry refused")
    };
    assert_eq!(a.id, b.id);
    assert_eq!(status(&owner, "vray").await.in_use, 1);
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_with_their_ids() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 5, None).await;
    let mut raw = RawConn::signed_in(&server, ClientId(rand::random())).await;
    for id in 10..20u32 {
        let body = Request::Checkout(Checkout {
            request_id: RequestId([id as u8; 16]),
            feature: "vray".into(),
            seats: 1,
        });
        raw.send(&tally_protocol::ClientMessage::Request { id, body })
            .await;
    }
    let mut ids = Vec::new();
    let mut granted = 0;
    for _ in 10..20 {
        match raw.recv().await.unwrap() {
            ServerMessage::Response { id, outcome } => {
                ids.push(id);
                if matches!(outcome, Outcome::Ok(_)) {
                    granted += 1;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids, (10..20).collect::<Vec<_>>());
    assert_eq!(granted, 5);
    server.stop().await;
}

/// A TCP relay the test can cut, to drop the network under a client.
struct Relay {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u32>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cuts) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Relay { addr, cut }
    }

    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test]
async fn a_network_drop_resumes_the_same_lease_and_never_takes_a_second_seat() {
    let server = TestServer::start_stepped(|c| c.leases.ttl = Duration::from_millis(1500)).await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 3, None).await;
    let relay = Relay::start(server.addr).await;
    let mut config = server.client_config(&server.owner_token());
    config.servers = vec![tally_client::ServerAddr {
        host: "localhost".into(),
        port: relay.addr.port(),
    }];
    let client = tally_client::Client::connect(config).await.unwrap();
    let lease = client.checkout("vray", 1).await.unwrap();
    for _ in 0..3 {
        relay.cut_all();
        // The client notices, reconnects through the relay and resumes; a call made now
        // waits for the new connection.
        let figures = match client
            .call(Request::Status(tally_protocol::StatusQuery {
                feature: None,
            }))
            .await
            .unwrap()
        {
            Response::Status(list) => list[0].clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(figures.in_use, 1);
    }
    // Two ttls later the lease is still the same one, renewed by heartbeats: the server's
    // clock steps two thirds of a ttl at a time, and each step waits for the heartbeat that
    // renews the lease from the new time.
    for _ in 0..3 {
        let now = server.step(Duration::from_millis(1000));
        let mut renewed = false;
        for _ in 0..500 {
            let held = leases(&owner).await;
            if held
                .iter()
                .any(|l| l.id == lease.id() && l.expires_at >= now + 1500)
            {
                renewed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(renewed, "no heartbeat renewed the lease at {now}");
    }
    let held = leases(&owner).await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, lease.id());
    assert!(lease.is_lost().is_none());
    server.stop().await;
}

#[tokio::test]
async fn the_client_moves_on_to_the_next_server_when_the_first_is_down() {
    let server = TestServer::start().await;
    let mut config = server.client_config(&server.owner_token());
    let dead = tally_client::ServerAddr {
        host: "127.0.0.1".into(),
        port: free_port(),
    };
    config.servers.insert(0, dead);
    let client = tally_client::Client::connect(config).await.unwrap();
    assert!(client.call(Request::ServerInfo).await.is_ok());
    server.stop().await;
}

#[test]
fn the_blocking_client_checks_out_and_checks_in_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), "30s", "1s");
    let client = tally_client::blocking::Client::connect(daemon.client_config()).unwrap();
    let new = tally_protocol::NewEntitlement {
        feature: "katana".into(),
        seats: 1,
        starts_at: None,
        expires_at: None,
        kind: tally_protocol::EntitlementKind::Standard,
        borrowable: false,
        max_borrow_secs: None,
        reference: String::new(),
    };
    client.call(Request::EntitlementAdd(new)).unwrap();
    let in_use = |client: &tally_client::blocking::Client| match client
        .call(Request::Status(tally_protocol::StatusQuery {
            feature: Some("katana".into()),
        }))
        .unwrap()
    {
        Response::Status(list) => list[0].in_use,
        other => panic!("{other:?}"),
    };
    let lease = client.checkout("katana", 1).unwrap();
    assert_eq!(lease.info().feature, "katana");
    assert_eq!(in_use(&client), 1);
    let err = client.checkout("katana", 1).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSeat));
    drop(lease);
    assert_eq!(
        in_use(&client),
        0,
        "dropping the blocking lease waits for the check-in"
    );
}

#[tokio::test]
async fn the_server_tells_clients_to_heartbeat_every_third_of_the_ttl() {
    let server = TestServer::start_with(|c| c.leases.ttl = Duration::from_secs(45)).await;
    let client = server.owner().await;
    assert_eq!(client.welcome().lease_ttl_ms, 45_000);
    assert_eq!(client.welcome().heartbeat_interval_ms, 15_000);
    assert_eq!(
        client.welcome().signing_key.len(),
        32,
        "the Ed25519 public key"
    );
    server.stop().await;
}

#[tokio::test]
async fn long_lists_of_leases_and_audit_events_come_back_whole() {
    // One client holds all 2000 leases: twice the default limits.max_leases_per_client.
    let server = TestServer::start_with(|c| c.limits.max_leases_per_client = 2000).await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 3000, None).await;
    let checkouts = (0..2000).map(|_| owner.checkout("vray", 1));
    let held: Vec<_> = futures::future::join_all(checkouts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // Far more than one 64 KiB frame holds.
    assert_eq!(leases(&owner).await.len(), 2000);
    let query = tally_protocol::AuditQuery {
        since: None,
        user: None,
        feature: None,
        limit: Some(5000),
    };
    // Every grant is in the answer, far more than one frame holds. (On a starved machine
    // the client may also reconnect mid-way, checking in grants it never heard of and
    // getting others for the same requests: more events, never fewer.)
    match owner.call(Request::Audit(query)).await.unwrap() {
        Response::AuditEvents(events) => {
            assert!(events.len() >= 2001, "{} events", events.len());
            let granted: std::collections::HashSet<&str> = events
                .iter()
                .filter(|e| e.action == "checkout" && e.outcome == "ok")
                .map(|e| e.subject.as_str())
                .collect();
            for lease in &held {
                assert!(granted.contains(lease.id().to_string().as_str()));
            }
        }
        other => panic!("{other:?}"),
    }
    drop(held);
    server.stop().await;
}

/// A step of the server's clock is applied at once: with a sweep period of an hour, only the
/// step can have woken the sweep that reclaims the lapsed lease (the audit query that looks
/// for it does not bring the pool up to date).
#[tokio::test]
async fn a_stepped_clock_wakes_the_sweep() {
    let server = TestServer::start_stepped(|c| {
        c.leases.ttl = Duration::from_secs(7200);
        c.leases.sweep = Duration::from_secs(3600);
    })
    .await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 1, None).await;
    let mut holder = RawConn::signed_in(&server, ClientId(rand::random())).await;
    let granted = holder
        .request(
            1,
            Request::Checkout(Checkout {
                request_id: RequestId([9; 16]),
                feature: "vray".into(),
                seats: 1,
            }),
        )
        .await;
    let lease = match granted {
        ServerMessage::Response {
            outcome: Outcome::Ok(Response::Lease(lease)),
            ..
        } => lease,
        other => panic!("{other:?}"),
    };
    let stepped = server.step(Duration::from_secs(7201));
    let mut reclaimed = None;
    for _ in 0..500 {
        reclaimed = audit(&owner)
            .await
            .into_iter()
            .find(|e| e.action == "reclaim" && e.subject == lease.id.to_string());
        if reclaimed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reclaimed = reclaimed.expect("the step did not wake the sweep");
    assert_eq!(reclaimed.at, stepped, "swept at the stepped time");
    server.stop().await;
}
