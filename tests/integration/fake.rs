//! A misbehaving server for the client's tests (issue 12): it speaks the protocol over TLS
//! with a test server's certificate, so the client trusts it, and then does what its
//! [`Script`] says: answer (or lie, or flood the client with an answer as large as a frame
//! may be), stay silent, answer with another id, drip bytes, answer late, or close. It
//! records every request and counts connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_client::{ClientConfig, ServerAddr};
use tally_protocol::{
    Authenticated, ClientMessage, Connection, HeartbeatAck, Outcome, Request, Response, Resumed,
    Role, ServerMessage, Welcome, DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};
use tally_server::init::DataDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::harness::*;

/// What the fake does with one request.
pub enum Reply {
    /// Answers it.
    Answer(Outcome),
    /// Answers it under another request id.
    WrongId(Outcome),
    /// Never answers, and keeps the connection open.
    Silent,
    /// Sends the answer a byte at a time, one every `gap`.
    Drip(Outcome, Duration),
    /// Answers it after `delay`, reading nothing meanwhile.
    Late(Outcome, Duration),
    /// Closes the connection.
    Close,
}

/// What the fake does after the TLS handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Welcome and Authenticated, as a server does.
    Normal,
    /// Signs the client in, then closes at once.
    CloseAfterSignIn,
    /// Reads Hello and never answers.
    Silent,
}

/// How the fake answers: the handshake, and a reply per request.
pub struct Script {
    pub handshake: Handshake,
    pub welcome: Welcome,
    pub reply: Box<dyn Fn(&Request) -> Reply + Send + Sync>,
}

impl Script {
    /// A fake that signs in and answers every request as [`honest`] does, with the
    /// heartbeat interval `heartbeat_ms`.
    pub fn honest(heartbeat_ms: u64) -> Script {
        Script {
            handshake: Handshake::Normal,
            welcome: welcome(heartbeat_ms),
            reply: Box::new(|request| Reply::Answer(honest(request))),
        }
    }

    pub fn replying(mut self, reply: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        self.reply = Box::new(reply);
        self
    }

    pub fn handshake(mut self, handshake: Handshake) -> Self {
        self.handshake = handshake;
        self
    }
}

/// A `Welcome` as a server sends it.
pub fn welcome(heartbeat_ms: u64) -> Welcome {
    Welcome {
        protocol_version: PROTOCOL_VERSION,
        server_id: "fake".into(),
        signing_key: Vec::new(),
        server_version: "0".into(),
        heartbeat_interval_ms: heartbeat_ms,
        lease_ttl_ms: heartbeat_ms * 3,
    }
}

/// A plausible answer to the requests a client sends by itself (heartbeat, resume), and an
/// empty heartbeat acknowledgement to anything else.
pub fn honest(request: &Request) -> Outcome {
    match request {
        Request::Resume(_) => Outcome::Ok(Response::Resumed(Resumed {
            resumed: Vec::new(),
            ended: Vec::new(),
        })),
        _ => Outcome::Ok(Response::Heartbeat(HeartbeatAck {
            renewed: 0,
            ended: Vec::new(),
        })),
    }
}

/// A grant of what `checkout` asked for, as a server answers it.
pub fn granted(checkout: &tally_protocol::Checkout) -> Outcome {
    let now = now_millis();
    Outcome::Ok(Response::Lease(tally_protocol::LeaseInfo {
        id: tally_protocol::LeaseId(rand::random()),
        feature: checkout.feature.clone(),
        seats: checkout.seats,
        user: "owner@localhost".into(),
        host: "h".into(),
        kind: tally_protocol::LeaseKind::Online,
        source: tally_protocol::LeaseSource::Floating,
        granted_at: now,
        expires_at: now + 60_000,
    }))
}

/// The lease id of a grant made by [`granted`].
pub fn lease_of(outcome: &Outcome) -> tally_protocol::LeaseId {
    match outcome {
        Outcome::Ok(Response::Lease(info)) => info.id,
        other => panic!("not a grant: {other:?}"),
    }
}

/// A listener on a port of its own and a TLS acceptor with the certificate of `server`,
/// which clients of `server` trust: what every fake server starts from.
pub async fn listen_as(server: &TestServer) -> (TcpListener, tokio_rustls::TlsAcceptor) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = test_config(
        listener.local_addr().unwrap(),
        &server.data_dir(),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    let tls = tally_server::init::tls_config(&config, &DataDir::new(&server.data_dir()))
        .expect("the test server's certificate");
    (listener, tokio_rustls::TlsAcceptor::from(tls))
}

/// The fake: on a port of its own until dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    /// Every request it was sent, in order.
    pub seen: Arc<Mutex<Vec<Request>>>,
    /// How many TLS connections it accepted.
    pub accepted: Arc<AtomicUsize>,
    /// When each was accepted.
    pub accepted_at: Arc<Mutex<Vec<Instant>>>,
    ca_pem: Vec<u8>,
    ca_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Starts a fake with the certificate of `server` (whose CA clients trust).
    pub async fn start(server: &TestServer, script: Script) -> FakeServer {
        let (listener, acceptor) = listen_as(server).await;
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let accepted_at = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (log, count, times) = (seen.clone(), accepted.clone(), accepted_at.clone());
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, script, log) = (acceptor.clone(), script.clone(), log.clone());
                let (count, times) = (count.clone(), times.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    times.lock().unwrap().push(Instant::now());
                    count.fetch_add(1, Ordering::SeqCst);
                    let conn = Connection::with_limits(tls, DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME);
                    serve(conn, &script, &log).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        FakeServer {
            addr,
            seen,
            accepted,
            accepted_at,
            ca_pem: server.ca_pem(),
            ca_file: server.data_dir().join("tls/ca.pem"),
            task,
        }
    }

    pub fn server_addr(&self) -> ServerAddr {
        ServerAddr {
            host: "localhost".into(),
            port: self.addr.port(),
        }
    }

    /// A client configuration for the fake, with short timeouts.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(vec![self.server_addr()], self.ca_pem.clone(), "t");
        config.request_timeout = Duration::from_secs(2);
        config.connect_timeout = Duration::from_secs(2);
        config
    }

    /// Writes a client file for `tally` pointing at the fake into `dir`, with the token in
    /// a file of mode 0600; returns the client file's path.
    pub fn client_toml(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let token = dir.join("token");
        std::fs::write(&token, "t\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.join("client.toml");
        std::fs::write(
            &path,
            format!(
                "servers = [\"localhost:{}\"]\nca = {:?}\ntoken_file = {:?}\n",
                self.addr.port(),
                self.ca_file,
                token
            ),
        )
        .unwrap();
        path
    }

    /// Waits (up to 30 s, else panics) until `ready` holds of the requests seen.
    pub async fn wait_for(&self, what: &str, ready: impl Fn(&[Request]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(&self.seen.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "the fake never saw {what}: {:?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The requests it was sent, by name.
    pub fn requests(&self) -> Vec<&'static str> {
        self.seen.lock().unwrap().iter().map(|r| r.name()).collect()
    }
}

type Conn = Connection<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

async fn serve(mut conn: Conn, script: &Script, seen: &Mutex<Vec<Request>>) {
    let Ok(Some(ClientMessage::Hello(_))) = conn.recv::<ClientMessage>().await else {
        return;
    };
    if script.handshake == Handshake::Silent {
        std::future::pending::<()>().await;
    }
    if conn
        .send(&ServerMessage::Welcome(script.welcome.clone()))
        .await
        .is_err()
    {
        return;
    }
    let Ok(Some(ClientMessage::Authenticate(_))) = conn.recv::<ClientMessage>().await else {
        return;
    };
    let signed_in = Authenticated {
        username: "owner@localhost".into(),
        role: Role::Owner,
    };
    if conn
        .send(&ServerMessage::Authenticated(signed_in))
        .await
        .is_err()
    {
        return;
    }
    if script.handshake == Handshake::CloseAfterSignIn {
        let _ = conn.close().await;
        return;
    }
    while let Ok(Some(ClientMessage::Request { id, body })) = conn.recv::<ClientMessage>().await {
        seen.lock().unwrap().push(body.clone());
        let sent = match (script.reply)(&body) {
            Reply::Answer(outcome) => conn.send(&ServerMessage::Response { id, outcome }).await,
            Reply::WrongId(outcome) => {
                let id = id.wrapping_add(1000);
                conn.send(&ServerMessage::Response { id, outcome }).await
            }
            Reply::Silent => Ok(()),
            Reply::Drip(outcome, gap) => {
                let message = ServerMessage::Response { id, outcome };
                let body = postcard::to_allocvec(&message).unwrap();
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&body);
                let stream = conn.get_mut();
                for byte in frame {
                    if stream.write_all(&[byte]).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
                Ok(())
            }
            Reply::Late(outcome, delay) => {
                tokio::time::sleep(delay).await;
                conn.send(&ServerMessage::Response { id, outcome }).await
            }
            Reply::Close => {
                let _ = conn.close().await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The fake itself answers as scripted: a client signs in, is answered, and sees a silent
/// request time out (the harness's own check).
#[tokio::test]
async fn the_fake_answers_as_scripted() {
    let server = TestServer::start().await;
    let fake = FakeServer::start(&server, Script::honest(1_000)).await;
    let client = tally_client::Client::connect(fake.client_config())
        .await
        .unwrap();
    client.call(Request::Heartbeat).await.unwrap();
    assert!(
        fake.requests().contains(&"heartbeat"),
        "{:?}",
        fake.requests()
    );
    assert_eq!(fake.accepted.load(Ordering::SeqCst), 1);
}
