//! The client library across connection trouble (R4): reconnect attempts come faster than
//! the heartbeat interval, so a restart never costs a lease, and a request whose connection
//! drops every time it is sent is given up instead of resent without end.

use std::time::{Duration, Instant};

use tally_client::{Client, ClientConfig, Error, ServerAddr};
use tally_protocol::{
    AuditQuery, Authenticated, ClientMessage, Connection, Request, Role, ServerMessage, Welcome,
    DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};

use crate::harness::*;

/// A 1 s ttl (heartbeat every 333 ms). While the daemon is down, a plain listener on its
/// port sees every reconnect attempt: none comes more than a ttl after the one before, as
/// the backoff used to reach 7.5 s. Then the daemon comes back on the same port and data
/// and the client resumes its lease instead of losing it.
#[tokio::test]
async fn a_restart_with_a_short_ttl_keeps_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), "1s", "100ms");
    let owner = Client::connect(daemon.client_config()).await.unwrap();
    assert_eq!(owner.welcome().heartbeat_interval_ms, 333);
    add_entitlement(&owner, "vray", 1, None).await;
    let holder = Client::connect(daemon.client_config()).await.unwrap();
    let lease = holder.checkout("vray", 1).await.unwrap();
    drop(owner);

    daemon.kill9();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", daemon.port))
        .await
        .unwrap();
    let watch_until = Instant::now() + Duration::from_secs(5);
    let mut attempts = Vec::new();
    while let Ok(accepted) = tokio::time::timeout_at(watch_until.into(), listener.accept()).await {
        drop(accepted.unwrap());
        attempts.push(Instant::now());
    }
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(attempts.len() >= 5, "{} attempts in 5 s", attempts.len());
    let longest = gaps.iter().max().unwrap();
    assert!(
        *longest < Duration::from_secs(1),
        "{longest:?} between reconnect attempts, longer than the ttl; gaps {gaps:?}"
    );
    drop(listener);

    daemon.restart();
    // Three ttls: a lease not resumed would have been reclaimed by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        lease.is_lost(),
        None,
        "the holder was told it lost its lease"
    );
    let owner = Client::connect(daemon.client_config()).await.unwrap();
    let held: Vec<_> = leases(&owner).await.iter().map(|l| l.id).collect();
    assert_eq!(held, [lease.id()], "the lease was resumed, not reclaimed");
    let figures = status(&owner, "vray").await;
    assert_eq!((figures.in_use, figures.available), (1, 0));
}

/// A server that signs clients in and then drops the connection at every request, as one
/// that cannot send its answer would. The client sends the request three times, then
/// fails it with `ConnectionLost`, well before its deadline.
#[tokio::test]
async fn a_request_whose_connection_always_drops_is_sent_three_times_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = test_config(
        addr,
        &dir.path().join("data"),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    let data = tally_server::init::prepare_data_dir(&config).unwrap();
    tally_server::init::ensure_certificates(&config, &data).unwrap();
    let tls = tally_server::init::tls_config(&config, &data).unwrap();
    let ca = std::fs::read(data.ca_cert()).unwrap();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut conn = Connection::with_limits(tls, DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME);
            let Ok(Some(ClientMessage::Hello(_))) = conn.recv::<ClientMessage>().await else {
                continue;
            };
            let welcome = Welcome {
                protocol_version: PROTOCOL_VERSION,
                server_id: "dropper".into(),
                signing_key: vec![0; 32],
                heartbeat_interval_ms: 1000,
                lease_ttl_ms: 3000,
                server_version: "test".into(),
            };
            conn.send(&ServerMessage::Welcome(welcome)).await.unwrap();
            let Ok(Some(ClientMessage::Authenticate(_))) = conn.recv::<ClientMessage>().await
            else {
                continue;
            };
            let authenticated = Authenticated {
                username: "owner@localhost".into(),
                role: Role::Owner,
            };
            conn.send(&ServerMessage::Authenticated(authenticated))
                .await
                .unwrap();
            // The first request ends the connection, unanswered.
            if let Ok(Some(ClientMessage::Request { .. })) = conn.recv::<ClientMessage>().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let server = ServerAddr {
        host: "localhost".into(),
        port: addr.port(),
    };
    let mut config = ClientConfig::new(vec![server], ca, "token");
    config.request_timeout = Duration::from_secs(20);
    let client = Client::connect(config).await.unwrap();
    let started = Instant::now();
    let query = AuditQuery {
        since: None,
        user: None,
        feature: None,
        limit: None,
    };
    let err = client.call(Request::Audit(query)).await.unwrap_err();
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    assert!(err.to_string().contains("not sent again"), "{err}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up only after {:?}",
        started.elapsed()
    );
}
