//! Raw protocol connections for generating load, the bare echo server of the baseline, and
//! latency statistics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tally_protocol::{
    Authenticate, Checkin, Checkout, ClientId, ClientInfo, ClientMessage, Connection, ErrorBody,
    Hello, Request, RequestId, Response, ServerMessage, DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME,
    PROTOCOL_VERSION,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::cpu;
use crate::daemon::Target;

/// A TLS client configuration trusting one CA.
pub fn connector(ca_pem: &[u8]) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem) {
        let cert: rustls_pki_types::CertificateDer = cert.context("CA is not PEM")?;
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn tls(connector: &TlsConnector, addr: std::net::SocketAddr) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    Ok(connector.connect(name, tcp).await?)
}

/// A signed-in protocol connection that sends one request at a time.
pub struct Session {
    conn: Connection<TlsStream<TcpStream>>,
    next_id: u32,
}

impl Session {
    /// Connects, says Hello and signs in.
    pub async fn open(connector: &TlsConnector, target: &Target) -> Result<Session> {
        let stream = tls(connector, target.addr).await?;
        let mut conn = Connection::with_limits(stream, MAX_RESPONSE_FRAME, DEFAULT_MAX_FRAME);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client: ClientInfo {
                agent: "tally-bench".into(),
                host: "bench".into(),
                instance: ClientId(rand::random()),
                machine_id: String::new(),
                pid: std::process::id(),
            },
        };
        conn.send(&ClientMessage::Hello(hello)).await?;
        match conn.recv::<ServerMessage>().await? {
            Some(ServerMessage::Welcome(_)) => {}
            other => bail!("expected Welcome, got {other:?}"),
        }
        conn.send(&ClientMessage::Authenticate(Authenticate {
            token: target.token.clone(),
        }))
        .await?;
        match conn.recv::<ServerMessage>().await? {
            Some(ServerMessage::Authenticated(_)) => {}
            other => bail!("expected Authenticated, got {other:?}"),
        }
        Ok(Session { conn, next_id: 1 })
    }

    /// Sends a request and waits for its answer.
    pub async fn call(&mut self, body: Request) -> Result<Result<Response, ErrorBody>> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.send(&ClientMessage::Request { id, body }).await?;
        match self.conn.recv::<ServerMessage>().await? {
            Some(ServerMessage::Response { id: got, outcome }) if got == id => {
                Ok(outcome.into_result())
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

/// Each session loops a checkout of one seat of `bench` and its check-in for `secs`
/// seconds: the latency of every answer, the sessions back, and the requests answered per
/// second.
pub async fn checkout_loops(
    sessions: Vec<Session>,
    secs: u64,
) -> Result<(Latencies, Vec<Session>, f64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut session in sessions {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            while std::time::Instant::now() < deadline {
                let started = std::time::Instant::now();
                let request = Request::Checkout(Checkout {
                    request_id: RequestId(rand::random()),
                    feature: "bench".into(),
                    seats: 1,
                });
                let lease = match session.call(request).await? {
                    Ok(Response::Lease(lease)) => lease,
                    other => bail!("checkout: {other:?}"),
                };
                latencies.record(started.elapsed());
                let started = std::time::Instant::now();
                match session
                    .call(Request::Checkin(Checkin { lease: lease.id }))
                    .await?
                {
                    Ok(Response::CheckedIn(_)) => {}
                    other => bail!("checkin: {other:?}"),
                }
                latencies.record(started.elapsed());
            }
            Ok((latencies, session))
        }));
    }
    let started = std::time::Instant::now();
    let mut all = Latencies::default();
    let mut sessions = Vec::new();
    for task in tasks {
        let (latencies, session) = task.await??;
        all.merge(latencies);
        sessions.push(session);
    }
    let ops = all.0.len() as f64 / started.elapsed().as_secs_f64();
    Ok((all, sessions, ops))
}

/// The bare ceiling: a tokio-rustls server with the same framing and certificate type that
/// echoes every frame. It runs on a runtime of its own (as many workers as tallyd's, every
/// thread named [`cpu::ECHO_THREAD`]) so that its CPU time can be told from the load's.
pub struct EchoServer {
    pub addr: std::net::SocketAddr,
    pub connector: TlsConnector,
    /// The server's runtime; shut down in the background on drop, since the benchmark drops
    /// it from async code.
    runtime: Option<tokio::runtime::Runtime>,
}

impl EchoServer {
    pub async fn start() -> Result<EchoServer> {
        // ECDSA P-256, as tallyd generates.
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?
            .signed_by(&key, &ca_cert, &ca_key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(cpu::ECHO_THREAD)
            .enable_all()
            .build()?;
        let listener: TcpListener = {
            let _inside = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind("127.0.0.1:0".parse()?)?;
            socket.listen(4096)?
        };
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let codec = LengthDelimitedCodec::builder()
                        .max_frame_length(DEFAULT_MAX_FRAME)
                        .new_codec();
                    let mut framed = Framed::new(stream, codec);
                    while let Some(Ok(frame)) = framed.next().await {
                        if framed.send(frame.freeze()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(EchoServer {
            addr,
            connector: connector(ca_cert.pem().as_bytes())?,
            runtime: Some(runtime),
        })
    }

    /// A connection sending `frame` and waiting for it to come back.
    pub async fn open(&self) -> Result<Framed<TlsStream<TcpStream>, LengthDelimitedCodec>> {
        let stream = tls(&self.connector, self.addr).await?;
        Ok(Framed::new(stream, LengthDelimitedCodec::new()))
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One echo round trip.
pub async fn echo(
    framed: &mut Framed<TlsStream<TcpStream>, LengthDelimitedCodec>,
    frame: &Bytes,
) -> Result<()> {
    framed.send(frame.clone()).await?;
    framed.next().await.context("echo server closed")??;
    Ok(())
}

/// Latencies in microseconds, summarised.
#[derive(Debug, Default)]
pub struct Latencies(pub Vec<u32>);

impl Latencies {
    pub fn record(&mut self, elapsed: Duration) {
        self.0
            .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// The `q` quantile in milliseconds.
    /// The mean, in milliseconds (0 when nothing was recorded).
    pub fn mean_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.iter().map(|&us| f64::from(us)).sum::<f64>() / self.0.len() as f64 / 1000.0
    }

    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let index = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        f64::from(self.0[index]) / 1000.0
    }
}
