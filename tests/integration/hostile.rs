//! R12: malformed frames, wrong versions, requests before authentication, bad tokens,
//! slow and excess connections, connections that never sign in, peer text meant for the
//! admin's log or terminal. After each, the daemon goes on serving others.

use std::time::Duration;

use tally_client::Error;
use tally_protocol::{
    Authenticate, ClientId, ClientInfo, ClientMessage, ErrorCode, Hello, Request, ServerMessage,
    StatusQuery, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// The server still answers a well-behaved client.
async fn still_serving(server: &TestServer) {
    let client = server.owner().await;
    let answer = client
        .call(Request::Status(StatusQuery { feature: None }))
        .await;
    assert!(answer.is_ok(), "server stopped serving: {answer:?}");
}

fn refusal(message: Option<ServerMessage>) -> tally_protocol::ErrorBody {
    match message {
        Some(ServerMessage::Error(body)) => body,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_oversize_length_prefix_closes_only_that_connection() {
    let server = TestServer::start().await;
    let mut tls = RawConn::tls(server.addr, &server.ca_pem()).await;
    tls.write_all(&0xFFFF_FFF0u32.to_be_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut raw = RawConn {
        conn: tally_protocol::Connection::new(tls, 1 << 20),
    };
    let body = refusal(raw.recv().await);
    assert_eq!(body.code, ErrorCode::Invalid);
    assert!(
        body.message.contains("larger than the limit"),
        "{}",
        body.message
    );
    assert!(raw.recv().await.is_none(), "connection closed");
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn truncated_and_random_frames_are_refused() {
    let server = TestServer::start().await;
    // A frame that promises 100 bytes and brings 10, then the peer goes away.
    let mut tls = RawConn::tls(server.addr, &server.ca_pem()).await;
    tls.write_all(&[0, 0, 0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    drop(tls);
    // Random bytes in well-formed frames, before and after authentication.
    for round in 0..20u8 {
        let mut raw = if round % 2 == 0 {
            RawConn::connect(&server).await
        } else {
            RawConn::signed_in(&server, ClientId(rand::random())).await
        };
        let junk: Vec<u8> = (0..(round as usize * 7 + 3))
            .map(|_| rand::random::<u8>() | 0x80)
            .collect();
        let mut frame = (junk.len() as u32).to_be_bytes().to_vec();
        frame.extend(&junk);
        raw.conn_write(&frame).await;
        let body = refusal(raw.recv().await);
        assert_eq!(body.code, ErrorCode::Invalid, "{body:?}");
        assert!(body.message.contains("malformed"), "{}", body.message);
    }
    // Not TLS at all.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed");
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused_by_name() {
    let server = TestServer::start().await;
    let mut raw = RawConn::connect(&server).await;
    raw.send(&RawConn::hello(
        PROTOCOL_VERSION + 1,
        ClientId(rand::random()),
    ))
    .await;
    let body = refusal(raw.recv().await);
    assert_eq!(body.code, ErrorCode::VersionUnsupported);
    assert!(
        body.message.contains(&format!("{}", PROTOCOL_VERSION + 1)),
        "{}",
        body.message
    );
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn requests_before_hello_or_authentication_are_refused() {
    let server = TestServer::start().await;
    let mut raw = RawConn::connect(&server).await;
    raw.send(&ClientMessage::Request {
        id: 1,
        body: Request::ServerInfo,
    })
    .await;
    assert_eq!(refusal(raw.recv().await).code, ErrorCode::Unauthenticated);

    let mut raw = RawConn::connect(&server).await;
    raw.send(&RawConn::hello(PROTOCOL_VERSION, ClientId(rand::random())))
        .await;
    assert!(matches!(raw.recv().await, Some(ServerMessage::Welcome(_))));
    raw.send(&ClientMessage::Request {
        id: 1,
        body: Request::Status(StatusQuery { feature: None }),
    })
    .await;
    let body = refusal(raw.recv().await);
    assert_eq!(body.code, ErrorCode::Unauthenticated);
    assert!(body.message.contains("authenticate"), "{}", body.message);
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_bad_token_is_refused() {
    let server = TestServer::start().await;
    let mut raw = RawConn::connect(&server).await;
    raw.send(&RawConn::hello(PROTOCOL_VERSION, ClientId(rand::random())))
        .await;
    assert!(matches!(raw.recv().await, Some(ServerMessage::Welcome(_))));
    raw.send(&ClientMessage::Authenticate(Authenticate {
        token: "not-a-token".into(),
    }))
    .await;
    assert_eq!(refusal(raw.recv().await).code, ErrorCode::Unauthenticated);
    // Through the client library too.
    match tally_client::Client::connect(server.client_config("0123")).await {
        Err(Error::Server(body)) => {
            assert_eq!(body.code, ErrorCode::Unauthenticated);
            assert!(body.message.contains("token"), "{}", body.message);
        }
        other => panic!("expected unauthenticated, got {other:?}"),
    }
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let server =
        TestServer::start_with(|c| c.limits.handshake_timeout = Duration::from_millis(500)).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "expected the server to close, got {read:?}"
    );
    // TLS done, but no Hello.
    let mut tls = RawConn::tls(server.addr, &server.ca_pem()).await;
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a silent connection open");
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_closed() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let a = server.owner().await;
    let _b = server.owner().await;
    let third = tally_client::Client::connect(server.client_config(&server.owner_token())).await;
    assert!(matches!(third, Err(Error::Unreachable(_))), "{third:?}");
    // The two admitted connections are still served.
    assert!(a.call(Request::ServerInfo).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn bad_names_and_ids_in_requests_are_invalid() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let err = owner.checkout("Not A Feature", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
    assert!(err.to_string().contains("Not A Feature"), "{err}");
    add_entitlement(&owner, "vray", 1, None).await;
    let err = owner.checkout("vray", 0).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
    let err = owner
        .call(Request::EntitlementRemove(
            tally_protocol::EntitlementRemove { id: 999 },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    assert_eq!(status(&owner, "vray").await.total, 1, "nothing changed");
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["render-node-7".into()])
        .unwrap()
        .signed_by(&client_key, &ca_cert, &ca_key)
        .unwrap();
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, ca_cert.pem()).unwrap();

    let server = TestServer::start_with(|c| c.tls.client_ca = Some(client_ca.clone())).await;
    let without = tally_client::Client::connect(server.client_config(&server.owner_token())).await;
    assert!(matches!(without, Err(Error::Unreachable(_))), "{without:?}");

    let mut config = server.client_config(&server.owner_token());
    config.identity = Some((
        client_cert.pem().into_bytes(),
        client_key.serialize_pem().into_bytes(),
    ));
    let with = tally_client::Client::connect(config)
        .await
        .expect("a client with a certificate is let in");
    assert!(with.call(Request::ServerInfo).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_one_ttl_with_a_reason() {
    let server = TestServer::start_with(|c| {
        c.leases.ttl = Duration::from_secs(1);
        c.leases.sweep = Duration::from_millis(100);
    })
    .await;
    let mut raw = RawConn::signed_in(&server, ClientId(rand::random())).await;
    let started = std::time::Instant::now();
    let body = refusal(raw.recv().await);
    assert!(body.message.contains("no heartbeat"), "{}", body.message);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed early: {:?}",
        started.elapsed()
    );
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_bad_tokens_is_rate_limited_while_others_are_served() {
    let server = TestServer::start_with(|c| c.limits.signin_failures = 5).await;
    let owner = server.owner().await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        match tally_client::Client::connect(server.client_config("bad-token")).await {
            Err(Error::Server(body)) => codes.push(body.code),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(&codes[..5], &[ErrorCode::Unauthenticated; 5]);
    assert_eq!(&codes[5..], &[ErrorCode::RateLimited; 3]);
    // Clients already signed in go on being served.
    assert!(owner
        .call(Request::Status(StatusQuery { feature: None }))
        .await
        .is_ok());
    server.stop().await;
}

#[tokio::test]
async fn half_sent_frames_on_many_connections_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_with(
        dir.path(),
        "30s",
        "1s",
        "[limits]\nmax_connections = 200\n",
        std::process::Stdio::null(),
    );
    let rss = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = rss();
    let ca = std::fs::read(daemon.data_dir.join("tls/ca.pem")).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], daemon.port).into();
    // 400 connections (twice the limit; the daemon lets 64 in, the default
    // max_unauthenticated_per_address) from another address than the owner's below, each
    // announcing a frame just under 64 KiB and sending 10 bytes of it.
    let mut held = Vec::new();
    for _ in 0..400 {
        let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_secs(5), tcp_from([127, 0, 0, 2], addr)).await
        else {
            continue;
        };
        let connector = tls_connector(&ca);
        let name = server_name();
        if let Ok(Ok(mut tls)) =
            tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await
        {
            let _ = tls
                .write_all(&[0, 0, 0xff, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
                .await;
            let _ = tls.flush().await;
            held.push(tls);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss().saturating_sub(before);
    // At most max_connections buffers of one frame each, and the TLS state around them.
    assert!(
        grown < 200 * 64 * 2 + 16 * 1024,
        "server RSS grew by {grown} KiB"
    );
    drop(held);
    // Everyone else is still served.
    let owner = tally_client::Client::connect(daemon.client_config())
        .await
        .unwrap();
    assert!(owner.call(Request::ServerInfo).await.is_ok());
}

/// A TCP connection to `addr` from the loopback address `source` (all of 127.0.0.0/8 is
/// this machine), so that tests can be several client addresses at once.
async fn tcp_from(source: [u8; 4], addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(source), 0).into())?;
    socket.connect(addr).await
}

/// A TLS connection from `source`, or `None` when the server closed it instead.
async fn tls_from(
    source: [u8; 4],
    addr: std::net::SocketAddr,
    ca: &[u8],
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp_from(source, addr).await.ok()?;
    tokio::time::timeout(
        Duration::from_secs(10),
        tls_connector(ca).connect(server_name(), tcp),
    )
    .await
    .expect("the server neither closed nor finished the handshake")
    .ok()
}

/// Hello and Authenticate over `tls` with `token`; the server's answer to Authenticate.
async fn sign_in_over(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    token: &str,
    host: &str,
) -> Option<ServerMessage> {
    let mut raw = RawConn {
        conn: tally_protocol::Connection::new(tls, tally_protocol::MAX_RESPONSE_FRAME),
    };
    raw.send(&ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client: ClientInfo {
            agent: "hostile-test".into(),
            host: host.into(),
            instance: ClientId(rand::random()),
            machine_id: String::new(),
            pid: 1,
        },
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(ServerMessage::Welcome(_))));
    raw.send(&ClientMessage::Authenticate(Authenticate {
        token: token.into(),
    }))
    .await;
    raw.recv().await
}

#[tokio::test]
async fn a_valid_token_signs_in_among_many_concurrent_bad_ones_which_are_counted_exactly() {
    let server = TestServer::start_with(|c| {
        c.limits.signin_failures = 10;
        c.limits.max_unauthenticated_per_address = 1000;
    })
    .await;
    let ca = server.ca_pem();
    let owner_token = server.owner_token();
    // 150 bad sign-ins at once from one address, the owner's valid one in their midst.
    let attempts = (0..151).map(|i| {
        let ca = ca.clone();
        let token = if i == 75 {
            owner_token.clone()
        } else {
            format!("guess-{i}")
        };
        async move {
            let tls = RawConn::tls(server.addr, &ca).await;
            (i, sign_in_over(tls, &token, "farm").await)
        }
    });
    let answers = futures::future::join_all(attempts).await;
    let (mut unauthenticated, mut limited) = (0, 0);
    for (i, answer) in answers {
        match answer {
            Some(ServerMessage::Authenticated(_)) => assert_eq!(i, 75, "a bad token got in"),
            Some(ServerMessage::Error(body)) if body.code == ErrorCode::Unauthenticated => {
                assert_ne!(i, 75, "the valid token was refused: {body:?}");
                unauthenticated += 1;
            }
            Some(ServerMessage::Error(body)) if body.code == ErrorCode::RateLimited => {
                assert_ne!(i, 75, "the valid token was refused: {body:?}");
                assert!(
                    body.message.contains("127.0.0.1") && body.message.contains(" s "),
                    "{}",
                    body.message
                );
                limited += 1;
            }
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    assert_eq!(
        unauthenticated, 10,
        "exactly limits.signin_failures failures are answered before the limit"
    );
    assert_eq!(limited, 140);
    // Past the limit, the owner's valid token still signs in, at once, every time.
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let owner = server.owner().await;
        assert!(owner.call(Request::ServerInfo).await.is_ok());
        assert!(started.elapsed() < Duration::from_millis(900));
    }
    server.stop().await;
}

#[tokio::test]
async fn one_address_holding_silent_connections_cannot_keep_others_from_signing_in() {
    // Half of max_connections (4) may be connections that have not signed in, 3 of them
    // from one address.
    let server = TestServer::start_with(|c| {
        c.limits.max_connections = 8;
        c.limits.max_unauthenticated_per_address = 3;
    })
    .await;
    let ca = server.ca_pem();
    // 127.0.0.2 opens 6 connections and says nothing: 3 are let in, 3 closed at once.
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..6 {
        match tls_from([127, 0, 0, 2], server.addr, &ca).await {
            Some(tls) => held.push(tls),
            None => closed += 1,
        }
    }
    assert_eq!((held.len(), closed), (3, 3));
    // Another address signs in meanwhile.
    let owner = server.owner().await;
    assert!(owner.call(Request::ServerInfo).await.is_ok());
    // A third address finds the share left for connections not signed in almost used up:
    // one more gets in, the next is closed.
    let third = tls_from([127, 0, 0, 3], server.addr, &ca).await;
    assert!(third.is_some());
    assert!(tls_from([127, 0, 0, 3], server.addr, &ca).await.is_none());
    assert!(tls_from([127, 0, 0, 4], server.addr, &ca).await.is_none());
    // A connection that signs in gives its place back.
    let signed = sign_in_over(held.pop().unwrap(), &server.owner_token(), "ws").await;
    assert!(
        matches!(signed, Some(ServerMessage::Authenticated(_))),
        "{signed:?}"
    );
    let fourth = tls_from([127, 0, 0, 4], server.addr, &ca)
        .await
        .expect("a place was given back");
    let signed = sign_in_over(fourth, &server.owner_token(), "ws").await;
    assert!(
        matches!(signed, Some(ServerMessage::Authenticated(_))),
        "{signed:?}"
    );
    // Signed-in clients were served throughout.
    assert!(owner.call(Request::ServerInfo).await.is_ok());
    drop(held);
    drop(third);
    server.stop().await;
}

/// The daemon's log (stderr) as it is now.
fn read_log(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned()
}

#[tokio::test]
async fn peer_supplied_text_is_logged_escaped_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("tallyd.log");
    let daemon = DaemonProcess::start_with(
        dir.path(),
        "30s",
        "1s",
        "",
        std::fs::File::create(&log_path).unwrap().into(),
    );
    let ca = std::fs::read(daemon.data_dir.join("tls/ca.pem")).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], daemon.port).into();
    let forged = "2030-01-01T00:00:00.000000Z  INFO tallyd: owner@localhost signed in";
    let host = format!(
        "ws-7\n{forged}\x1b[2J\x1b]0;pwned\x07{}",
        "h".repeat(60_000)
    );
    let tls = RawConn::tls(addr, &ca).await;
    let answer = sign_in_over(tls, "not-a-token", &host).await;
    assert!(
        matches!(&answer, Some(ServerMessage::Error(b)) if b.code == ErrorCode::Unauthenticated),
        "{answer:?}"
    );
    let log = read_log(&log_path);
    let line = log
        .lines()
        .find(|l| l.contains("sign-in refused"))
        .unwrap_or_else(|| panic!("no refusal logged: {log}"));
    assert!(line.contains("ws-7\\n2030-01-01"), "{line}");
    assert!(
        !log.lines().any(|l| l.starts_with("2030-01-01")),
        "a forged line: {log}"
    );
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "{log:?}");
    assert!(
        line.len() < 2_000,
        "the host is bounded: {} bytes",
        line.len()
    );
}

#[tokio::test]
async fn accept_failing_for_lack_of_file_descriptors_is_logged_once_in_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("tallyd.log");
    let daemon = DaemonProcess::start_with(
        dir.path(),
        "30s",
        "1s",
        "",
        std::fs::File::create(&log_path).unwrap().into(),
    );
    let pid = daemon.child.id().to_string();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    let prlimit = |soft: &str| {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    // No descriptor past stderr may be opened: every accept fails (EMFILE), about every
    // 50 ms, for a second and a half.
    prlimit("3");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], daemon.port).into();
    let waiting = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let warnings = read_log(&log_path)
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(warnings, 1, "{}", read_log(&log_path));
    // With descriptors again, the daemon serves.
    prlimit(&soft);
    drop(waiting);
    let owner = tally_client::Client::connect(daemon.client_config())
        .await
        .unwrap();
    assert!(owner.call(Request::ServerInfo).await.is_ok());
}

#[tokio::test]
async fn a_client_instance_past_max_leases_per_client_is_refused_naming_the_limit() {
    let server = TestServer::start_with(|c| c.limits.max_leases_per_client = 2).await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 10, None).await;
    let _a = owner.checkout("vray", 1).await.unwrap();
    let _b = owner.checkout("vray", 1).await.unwrap();
    let err = owner.checkout("vray", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
    assert!(
        err.to_string().contains("limits.max_leases_per_client"),
        "{err}"
    );
    assert_eq!(status(&owner, "vray").await.in_use, 2);
    server.stop().await;
}
