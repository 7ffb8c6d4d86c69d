//! The client and `tally` against the standbys of a cluster (SPEC §7, R15): a standby signs
//! clients in, answers `server info` and `server nodes` itself and every other request
//! `not_leader`, naming the leader. The standby here is a fake that speaks the protocol with
//! the test server's certificate; the leader is a real `TestServer`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_client::{Client, ClientConfig, Error, ServerAddr};
use tally_protocol::{
    Authenticated, ClientMessage, ClusterInfo, Connection, ErrorCode, NodeInfo, NodeRole,
    NotLeader, Outcome, Request, Response, Role, ServerInfo, ServerMessage, Welcome,
    DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::harness::*;

/// A fake standby on a port of its own, with the certificate of a test server. It counts
/// what it is asked, and stops when dropped.
struct Standby {
    addr: SocketAddr,
    /// Every request it was sent, in order.
    seen: Arc<Mutex<Vec<Request>>>,
    /// How many clients are connected to it now.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Standby {
    /// Starts a standby that names `leader` (`HOST:PORT`) as the leader, or none.
    async fn start(server: &TestServer, leader: Option<String>) -> Standby {
        let (listener, acceptor) = crate::fake::listen_as(server).await;
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (log, count) = (seen.clone(), open.clone());
        let task = tokio::spawn(async move {
            // Dropped with this task when the standby is: every connection ends with it.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, leader, log) = (acceptor.clone(), leader.clone(), log.clone());
                let count = count.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let conn = Connection::with_limits(tls, DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME);
                    serve_as_standby(conn, leader, log).await;
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Standby {
            addr,
            seen,
            open,
            task,
        }
    }

    /// Waits until it has been sent `request` and the client has left it (so whatever
    /// the client sends next goes elsewhere).
    async fn left_after(&self, request: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(self.seen().contains(&request) && self.open.load(Ordering::SeqCst) == 0) {
            assert!(
                Instant::now() < deadline,
                "the client did not leave the standby after {request}; it saw {:?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn server(&self) -> ServerAddr {
        ServerAddr {
            host: "localhost".into(),
            port: self.addr.port(),
        }
    }

    /// The names of the requests it was sent.
    fn seen(&self) -> Vec<&'static str> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(Request::name)
            .collect()
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection to the fake standby: Hello and Authenticate as a server does (any token
/// signs in), then `not_leader` for everything but `server info` and `server nodes`.
async fn serve_as_standby<S>(
    mut conn: Connection<S>,
    leader: Option<String>,
    seen: Arc<Mutex<Vec<Request>>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(Some(ClientMessage::Hello(_))) = conn.recv::<ClientMessage>().await else {
        return;
    };
    let welcome = Welcome {
        protocol_version: PROTOCOL_VERSION,
        server_id: "cluster".into(),
        signing_key: vec![0; 32],
        heartbeat_interval_ms: 1000,
        lease_ttl_ms: 3000,
        server_version: "standby".into(),
    };
    if conn.send(&ServerMessage::Welcome(welcome)).await.is_err() {
        return;
    }
    let Ok(Some(ClientMessage::Authenticate(_))) = conn.recv::<ClientMessage>().await else {
        return;
    };
    let signed_in = ServerMessage::Authenticated(Authenticated {
        username: "owner@localhost".into(),
        role: Role::Owner,
    });
    if conn.send(&signed_in).await.is_err() {
        return;
    }
    while let Ok(Some(ClientMessage::Request { id, body })) = conn.recv::<ClientMessage>().await {
        seen.lock().unwrap().push(body.clone());
        let outcome = match body {
            Request::ServerInfo => Outcome::Ok(Response::ServerInfo(ServerInfo {
                id: "cluster".into(),
                version: "standby".into(),
                protocol: PROTOCOL_VERSION,
                store: "postgres".into(),
                uptime_secs: 1,
                connections: 1,
                cluster: Some(ClusterInfo {
                    node: "node-2".into(),
                    role: NodeRole::Standby,
                    epoch: 4,
                    leader: leader.clone(),
                }),
                listen: "127.0.0.1:1".into(),
                lease_ttl_ms: 60_000,
            })),
            Request::ServerNodes => Outcome::Ok(Response::Nodes(vec![
                NodeInfo {
                    id: "node-1".into(),
                    address: leader.clone().unwrap_or_default(),
                    role: NodeRole::Leader,
                    epoch: 4,
                    last_seen: 1_700_000_000_000,
                },
                NodeInfo {
                    id: "node-2".into(),
                    address: "localhost:1".into(),
                    role: NodeRole::Standby,
                    epoch: 4,
                    last_seen: 1_700_000_001_000,
                },
            ])),
            _ => Outcome::NotLeader(NotLeader {
                leader: leader.clone(),
                message: match &leader {
                    Some(leader) => format!("this node is a standby; the leader is {leader}"),
                    None => "this node is a standby and no leader is known right now".into(),
                },
            }),
        };
        if conn
            .send(&ServerMessage::Response { id, outcome })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The real server's address as a leader advertises it.
fn leader_address(server: &TestServer) -> String {
    format!("localhost:{}", server.addr.port())
}

fn client_config(servers: Vec<ServerAddr>, server: &TestServer) -> ClientConfig {
    let mut config = ClientConfig::new(servers, server.ca_pem(), server.owner_token());
    config.request_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(2);
    config
}

/// A client whose only server is a standby signs in there, and its first request, a
/// checkout, is answered `not_leader`; the client moves to the leader it was given and the
/// checkout is granted there, once.
#[tokio::test]
async fn a_checkout_sent_to_a_standby_is_granted_by_the_leader() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 2, None).await;
    let standby = Standby::start(&server, Some(leader_address(&server))).await;

    let client = Client::connect(client_config(vec![standby.server()], &server))
        .await
        .unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(10), client.checkout("vray", 1))
        .await
        .expect("the checkout came back in time")
        .unwrap();
    assert_eq!(standby.seen(), ["checkout"]);
    let held: Vec<_> = leases(&owner).await.iter().map(|l| l.id).collect();
    assert_eq!(held, [lease.id()], "one lease, granted by the leader");
    assert_eq!(status(&owner, "vray").await.in_use, 1);

    // The client stays with the leader: later requests never reach the standby.
    client.whoami().await.unwrap();
    assert_eq!(standby.seen(), ["checkout"]);
    lease.release().await.unwrap();
    assert_eq!(status(&owner, "vray").await.in_use, 0);
}

/// A client that learns nothing from its first requests still finds out from its
/// heartbeat: answered `not_leader`, the heartbeat moves it to the leader on its own.
#[tokio::test]
async fn a_heartbeat_answered_by_a_standby_moves_the_client_to_the_leader() {
    let server = TestServer::start().await;
    let standby = Standby::start(&server, Some(leader_address(&server))).await;
    let client = Client::connect(client_config(vec![standby.server()], &server))
        .await
        .unwrap();
    standby.left_after("heartbeat").await;
    client.whoami().await.unwrap();
    assert_eq!(standby.seen(), ["heartbeat"]);
}

/// A client holding a lease loses its connection to the leader and reconnects to the next
/// server of its list, a standby. Its resume is answered `not_leader`; it moves back to the
/// leader and keeps the lease.
#[tokio::test]
async fn a_resume_answered_by_a_standby_moves_the_client_to_the_leader_with_its_lease() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 1, None).await;
    let standby = Standby::start(&server, Some(leader_address(&server))).await;
    // The leader as the client first reaches it: through a relay the test can cut.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let leader = server.addr;
    let relaying = tokio::spawn(async move {
        let (mut inbound, _) = relay.accept().await.unwrap();
        let mut outbound = tokio::net::TcpStream::connect(leader).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    let via_relay = ServerAddr {
        host: "localhost".into(),
        port: relay_port,
    };
    let client = Client::connect(client_config(vec![via_relay, standby.server()], &server))
        .await
        .unwrap();
    let lease = client.checkout("vray", 1).await.unwrap();
    assert!(standby.seen().is_empty());

    relaying.abort();
    standby.left_after("resume").await;
    match &standby.seen.lock().unwrap()[0] {
        Request::Resume(resume) => assert_eq!(resume.leases, [lease.id()]),
        other => panic!("{other:?}"),
    }
    // Back on the leader, the lease is still held, and checked in from there.
    let me = client.whoami().await.unwrap();
    assert_eq!(
        me.leases.iter().map(|l| l.id).collect::<Vec<_>>(),
        [lease.id()]
    );
    assert_eq!(lease.is_lost(), None);
    assert_eq!(standby.seen(), ["resume"]);
    lease.release().await.unwrap();
    assert_eq!(status(&owner, "vray").await.in_use, 0);
}

/// A standby that knows no leader, and no other server: the request is sent again with
/// backoff (not in a tight loop) until its deadline, and then fails `not_leader`, saying
/// that no leader is known.
#[tokio::test]
async fn with_no_leader_known_a_request_fails_not_leader_at_its_deadline() {
    let server = TestServer::start().await;
    let standby = Standby::start(&server, None).await;
    let mut config = client_config(vec![standby.server()], &server);
    config.request_timeout = Duration::from_secs(2);
    let client = Client::connect(config).await.unwrap();
    let started = Instant::now();
    let err = client.checkout("vray", 1).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, Error::Server(body) if body.code == ErrorCode::NotLeader),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("no leader is known"), "{text}");
    assert!(text.contains("checkout"), "{text}");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(4),
        "failed after {elapsed:?}, with a request timeout of 2 s"
    );
    let sends = standby
        .seen()
        .iter()
        .filter(|name| **name == "checkout")
        .count();
    assert!(
        (2..=15).contains(&sends),
        "the checkout reached the standby {sends} times in 2 s"
    );
}

/// `tally` follows the redirect too, and shows what a standby says of itself and of the
/// cluster: `server info` with the node's role, epoch and leader, `server nodes` as the
/// documents of SPEC §7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_follows_a_standby_to_the_leader_and_shows_the_cluster() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    add_entitlement(&owner, "vray", 3, None).await;
    let standby = Standby::start(&server, Some(leader_address(&server))).await;
    let ca = server.data_dir().join("tls/ca.pem");
    let args = vec![
        "--server".to_string(),
        standby.server().to_string(),
        "--ca".into(),
        ca.display().to_string(),
        "--token".into(),
        server.owner_token(),
        "--json".into(),
    ];
    let run = |more: &[&str]| {
        let mut all = args.clone();
        all.extend(more.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            cli(&all)
        })
    };

    let out = run(&["status", "vray"]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout_json(&out)["features"][0]["total"], 3);
    assert_eq!(standby.seen(), ["status"]);

    let out = run(&["server", "info"]).await.unwrap();
    let doc = stdout_json(&out);
    assert_eq!(doc["server"]["store"], "postgres");
    assert_eq!(doc["server"]["node"], "node-2");
    assert_eq!(doc["server"]["role"], "standby");
    assert_eq!(doc["server"]["epoch"], 4);
    assert_eq!(doc["server"]["leader"], leader_address(&server));

    let out = run(&["server", "nodes"]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({"nodes": [
            {"id": "node-1", "address": leader_address(&server), "role": "leader", "epoch": 4,
             "last_seen": "2023-11-14T22:13:20Z"},
            {"id": "node-2", "address": "localhost:1", "role": "standby", "epoch": 4,
             "last_seen": "2023-11-14T22:13:21Z"},
        ]})
    );
    let mut human = args.clone();
    human.retain(|a| a != "--json");
    let out = tokio::task::spawn_blocking(move || {
        let mut all: Vec<&str> = human.iter().map(String::as_str).collect();
        all.extend(["server", "nodes"]);
        cli(&all)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("ID"), "{text}");
    assert!(
        lines[2].contains("node-2") && lines[2].contains("standby"),
        "{text}"
    );
}

/// A single node (SQLite) is no cluster: `server info` has no role, and `server nodes` is
/// refused, `forbidden` for members before anything else, `invalid` for admins.
#[tokio::test]
async fn a_single_node_has_no_cluster_to_list() {
    let server = TestServer::start().await;
    let owner = server.owner().await;
    let info = owner.server_info().await.unwrap();
    assert_eq!((info.store.as_str(), info.cluster), ("sqlite", None));
    let err = owner.server_nodes().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid), "{err:?}");
    assert!(err.to_string().contains("single node"), "{err}");
    let token = new_user(&owner, "ana@studio.com", Role::Member).await;
    let member = Client::connect(server.client_config(&token)).await.unwrap();
    let err = member.server_nodes().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err:?}");
}
