//! The client's connection task: one connection at a time, heartbeats, reconnects, resumes.
//!
//! [`Client`] handles send [`Command`]s to one task that owns the connection. Requests are
//! pipelined with ids. When the connection drops, requests that may safely be sent twice
//! (checkouts carry a request id, so a resend returns the same lease) wait and are resent
//! after the reconnect, at most [`MAX_SENDS`] times in all (a connection that drops every
//! time one request is in flight is that request's doing); others fail with
//! [`Error::ConnectionLost`]. A server's answer, refusal or not, is never resent for. After
//! every reconnect the task first resumes the leases it holds.
//!
//! Reconnect attempts back off with jitter, but never wait longer than the server's
//! heartbeat interval (SPEC R4: a restart must not cost a lease its ttl).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig as TlsConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;

use tally_protocol::{
    decode_token, Authenticate, BorrowOnce, Checkin, Checkout, ClientId, ClientInfo, ClientMessage,
    Connection, EndReason, ErrorCode, FrameError, Hello, LeaseId, LeaseInfo, Outcome, Request,
    RequestId, Response, Resume, ServerMessage, Welcome, DEFAULT_MAX_FRAME, MAX_RESPONSE_FRAME,
    PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::api::answer;
use crate::borrow::{BorrowStore, Trust};
use crate::config::{host_name, ClientConfig, ServerAddr};
use crate::lease::Lease;
use crate::Error;

type Conn = Connection<TlsStream<TcpStream>>;

/// How many times one request is sent at most: the first time and, after connections
/// dropped while it was in flight, twice more.
pub const MAX_SENDS: u8 = 3;

/// The longest wait between reconnect attempts, when the server's heartbeat interval is
/// longer still.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait before the next reconnect attempt: `backoff` plus up to half of it again as
/// jitter, never more than `limit` (the heartbeat interval) in all.
pub(crate) fn reconnect_delay(backoff: Duration, limit: Duration) -> Duration {
    let base = backoff.min(limit * 2 / 3);
    let jitter = rand::random::<u64>() % (base.as_millis() as u64 / 2 + 1);
    (base + Duration::from_millis(jitter)).min(limit)
}

/// Sent to a lease's guard when the server ends it.
pub(crate) type LostSender = watch::Sender<Option<EndReason>>;

/// What a handle asks of the connection task.
pub(crate) enum Command {
    Call {
        request: Request,
        reply: oneshot::Sender<Result<Response, Error>>,
        lost: Option<LostSender>,
    },
    /// A lease guard was dropped: check it in, nobody waits for the answer.
    Drop(LeaseId),
}

/// A connection to a Tally server (or the first of a list that answers).
///
/// Cheap to clone; the connection task ends when the last clone and the last [`Lease`] are
/// dropped.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    /// Where borrows are kept.
    data_dir: Option<PathBuf>,
    /// The CA of the configuration, which must certify the key of every borrow token.
    trust: Arc<Trust>,
    /// The machine borrows are bound to.
    machine_id: Arc<str>,
    welcome: Arc<Welcome>,
    username: Arc<str>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server_id", &self.welcome.server_id)
            .field("user", &self.username)
            .finish()
    }
}

impl Client {
    /// Connects to the first server of the list that answers and signs in.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let data_dir = config.data_dir.clone();
        let trust = Arc::new(Trust::from_pem(&config.ca_pem)?);
        let machine_id = config.machine_id.as_str().into();
        let settings = Arc::new(Settings::new(config)?);
        let (conn, welcome, username, index) = settings
            .connect_any(0, settings.config.connect_timeout)
            .await?;
        let (commands, rx) = mpsc::unbounded_channel();
        let task = Task {
            settings,
            commands: rx,
            held: HashMap::new(),
            next_id: 1,
            server_index: index,
            heartbeat: Duration::from_millis(welcome.heartbeat_interval_ms.max(100)),
        };
        tokio::spawn(task.run(conn));
        Ok(Client {
            commands,
            data_dir,
            trust,
            machine_id,
            welcome: Arc::new(welcome),
            username: username.into(),
        })
    }

    /// The server's `Welcome` on the first connection.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The user this client signed in as.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Sends a request and waits for its answer.
    pub async fn call(&self, request: Request) -> Result<Response, Error> {
        self.call_with(request, None).await
    }

    async fn call_with(
        &self,
        request: Request,
        lost: Option<LostSender>,
    ) -> Result<Response, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Call {
                request,
                reply,
                lost,
            })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Checks out `seats` seats of `feature`. The returned guard heartbeats in the
    /// background and checks the seats in when dropped.
    pub async fn checkout(&self, feature: &str, seats: u32) -> Result<Lease, Error> {
        let (lost_tx, lost_rx) = watch::channel(None);
        let request = Request::Checkout(Checkout {
            request_id: RequestId(rand::random()),
            feature: feature.to_string(),
            seats,
        });
        let response = self.call_with(request, Some(lost_tx)).await?;
        let info = answer!("checkout", response, Response::Lease(info) => info)?;
        Ok(Lease::new(info, self.clone(), lost_rx))
    }

    /// Borrows seats for offline use, bound to this machine, and keeps the signed token in
    /// the user's data directory (see [`BorrowStore`]). Returns the lease and the token file.
    /// The request carries a request id, so it is resent after a reconnect and a lost
    /// answer never strands a seat (R4). A token the configured CA does not vouch for is
    /// given back at once and refused.
    pub async fn borrow(
        &self,
        feature: &str,
        seats: u32,
        duration: Duration,
    ) -> Result<(LeaseInfo, PathBuf), Error> {
        let store = self.borrow_store()?;
        store.observe_clock(crate::borrow::now_millis())?;
        let request = Request::BorrowOnce(BorrowOnce {
            request_id: RequestId(rand::random()),
            feature: feature.to_string(),
            seats,
            duration_secs: duration.as_secs().max(1),
            machine_id: self.machine_id.to_string(),
        });
        let response = self.call(request).await?;
        let granted = answer!("borrow", response, Response::Borrowed(granted) => granted)?;
        let now = crate::borrow::now_millis();
        let verdict = store.verify(&granted.token, &self.trust, &self.machine_id, now, now);
        let signed = match decode_token(&granted.token) {
            Ok(signed) if verdict.valid => signed,
            _ => {
                let _ = self.return_borrow(granted.lease.id).await;
                return Err(Error::Protocol(format!(
                    "the server's borrow token does not verify, so the borrow was given back: {}",
                    verdict.reason
                )));
            }
        };
        let path = store.save(&granted.token, &signed.claims)?;
        Ok((granted.lease, path))
    }

    /// The borrows of this client's user on this machine.
    pub fn borrow_store(&self) -> Result<BorrowStore, Error> {
        match &self.data_dir {
            Some(dir) => Ok(BorrowStore::at(dir.clone())),
            None => BorrowStore::open_default(),
        }
    }

    /// The CA that must certify borrow tokens' signing keys.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The machine borrows are bound to.
    pub fn machine_id(&self) -> &str {
        &self.machine_id
    }

    pub(crate) fn checkin_in_background(&self, lease: LeaseId) {
        let _ = self.commands.send(Command::Drop(lease));
    }
}

/// What the task needs to (re)connect.
struct Settings {
    config: ClientConfig,
    tls: TlsConnector,
    info: ClientInfo,
}

impl Settings {
    fn new(config: ClientConfig) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&config.ca_pem) {
            let cert =
                cert.map_err(|err| Error::Config(format!("the CA file is not PEM: {err}")))?;
            roots
                .add(cert)
                .map_err(|err| Error::Config(format!("the CA certificate is not usable: {err}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Config("the CA file holds no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = TlsConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::Config(err.to_string()))?
            .with_root_certificates(roots);
        let tls = match &config.identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let certs = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| {
                        Error::Config(format!("the client certificate is not PEM: {err}"))
                    })?;
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| {
                    Error::Config(format!("the client key is not a PEM private key: {err}"))
                })?;
                builder.with_client_auth_cert(certs, key).map_err(|err| {
                    Error::Config(format!("the client certificate and key do not fit: {err}"))
                })?
            }
        };
        let info = ClientInfo {
            agent: config.agent.clone(),
            host: host_name(),
            instance: ClientId(rand::random()),
            machine_id: config.machine_id.clone(),
            pid: std::process::id(),
        };
        Ok(Self {
            config,
            tls: TlsConnector::from(Arc::new(tls)),
            info,
        })
    }

    /// Tries every server once, starting at `start`, giving each `timeout`; returns the
    /// first that signs us in.
    async fn connect_any(
        &self,
        start: usize,
        timeout: Duration,
    ) -> Result<(Conn, Welcome, String, usize), Error> {
        let servers = &self.config.servers;
        let mut failures = Vec::new();
        for step in 0..servers.len() {
            let index = (start + step) % servers.len();
            let server = &servers[index];
            match tokio::time::timeout(timeout, self.connect_one(server)).await {
                Ok(Ok((conn, welcome, user))) => return Ok((conn, welcome, user, index)),
                // A refusal by the server itself (bad token, wrong version) is final.
                Ok(Err(Error::Server(body))) => return Err(Error::Server(body)),
                Ok(Err(Error::Unreachable(why))) => failures.push(format!("{server}: {why}")),
                Ok(Err(err)) => failures.push(format!("{server}: {err}")),
                Err(_) => failures.push(format!("{server}: no answer within {timeout:?}")),
            }
        }
        Err(Error::Unreachable(failures.join("; ")))
    }

    async fn connect_one(&self, server: &ServerAddr) -> Result<(Conn, Welcome, String), Error> {
        let io = |err: std::io::Error| Error::Unreachable(err.to_string());
        let tcp = TcpStream::connect((server.host.as_str(), server.port))
            .await
            .map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server.host.clone())
            .map_err(|_| Error::Config(format!("{:?} is not a valid server name", server.host)))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|err| Error::Unreachable(format!("TLS: {err}")))?;
        let mut conn = Connection::with_limits(tls, MAX_RESPONSE_FRAME, DEFAULT_MAX_FRAME);
        let frame = |err: tally_protocol::FrameError| Error::Unreachable(err.to_string());
        conn.send(&ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: self.info.clone(),
        }))
        .await
        .map_err(frame)?;
        let welcome = match conn.recv::<ServerMessage>().await.map_err(frame)? {
            Some(ServerMessage::Welcome(welcome)) => welcome,
            Some(ServerMessage::Error(body)) => return Err(Error::Server(body)),
            Some(other) => return Err(Error::Protocol(format!("expected Welcome, got {other:?}"))),
            None => {
                return Err(Error::Unreachable(
                    "the server closed the connection".into(),
                ))
            }
        };
        conn.send(&ClientMessage::Authenticate(Authenticate {
            token: self.config.token.clone(),
        }))
        .await
        .map_err(frame)?;
        match conn.recv::<ServerMessage>().await.map_err(frame)? {
            Some(ServerMessage::Authenticated(auth)) => Ok((conn, welcome, auth.username)),
            Some(ServerMessage::Error(body)) => Err(Error::Server(body)),
            Some(other) => Err(Error::Protocol(format!(
                "expected Authenticated, got {other:?}"
            ))),
            None => Err(Error::Unreachable(
                "the server closed the connection".into(),
            )),
        }
    }
}

/// Why the task asked for something: decides what an answer does.
enum Purpose {
    /// A handle waits for the answer.
    Call {
        reply: oneshot::Sender<Result<Response, Error>>,
        lost: Option<LostSender>,
    },
    /// The task's own heartbeat, resume or background check-in.
    Internal,
}

struct Pending {
    request: Request,
    purpose: Purpose,
    /// How many times the request was sent.
    sends: u8,
    /// When a queued request gives up waiting for a connection.
    deadline: Instant,
}

/// How a connection ended.
enum Ended {
    /// Every handle is gone and nothing is in flight.
    Finished,
    /// The link failed; reconnect.
    Lost(String),
}

struct Task {
    settings: Arc<Settings>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Leases this client holds, and how to tell each guard it was lost.
    held: HashMap<LeaseId, LostSender>,
    next_id: u32,
    server_index: usize,
    heartbeat: Duration,
}

impl Task {
    async fn run(mut self, mut conn: Conn) {
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut closed = false;
        loop {
            match self.serve(&mut conn, &mut queue, &mut closed).await {
                Ended::Finished => return,
                Ended::Lost(why) => {
                    tracing::warn!(reason = %why, "connection to the license server lost; reconnecting")
                }
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                self.expire(&mut queue);
                if closed && queue.is_empty() && self.held.is_empty() {
                    return;
                }
                // A server that does not answer within a heartbeat interval is given up
                // for the next, so that a black-holed one cannot hold the retries back.
                let timeout = self
                    .settings
                    .config
                    .connect_timeout
                    .min(self.heartbeat.max(Duration::from_secs(1)));
                match self
                    .settings
                    .connect_any(self.server_index + 1, timeout)
                    .await
                {
                    Ok((new, welcome, _, index)) => {
                        tracing::info!(server = %self.settings.config.servers[index], "reconnected to the license server");
                        conn = new;
                        self.server_index = index;
                        self.heartbeat =
                            Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
                        if !self.held.is_empty() {
                            let leases: Vec<LeaseId> = self.held.keys().copied().collect();
                            let request = Request::Resume(Resume { leases });
                            queue.push_front(Pending {
                                request,
                                purpose: Purpose::Internal,
                                sends: 0,
                                deadline: far(),
                            });
                        }
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in = ?backoff, "reconnect failed");
                        if let Error::Server(body) = &err {
                            if body.code == ErrorCode::Unauthenticated {
                                // The account was deactivated or removed, or the token
                                // revoked: nothing will be resumed.
                                self.fail_all(&mut queue, &err);
                                let held: Vec<LeaseId> = self.held.keys().copied().collect();
                                for lease in held {
                                    self.lose(lease, EndReason::Deactivated);
                                }
                            }
                        }
                    }
                }
                let wake = Instant::now() + reconnect_delay(backoff, self.heartbeat);
                while Instant::now() < wake {
                    tokio::select! {
                        command = self.commands.recv(), if !closed => match command {
                            Some(command) => self.enqueue(command, &mut queue),
                            None => closed = true,
                        },
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Serves one connection until it fails or everything is done.
    async fn serve(
        &mut self,
        conn: &mut Conn,
        queue: &mut VecDeque<Pending>,
        closed: &mut bool,
    ) -> Ended {
        let mut inflight: HashMap<u32, Pending> = HashMap::new();
        while let Some(pending) = queue.pop_front() {
            if let Err(why) = self.send(conn, pending, &mut inflight).await {
                return self.lost(why, inflight, queue);
            }
        }
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut finishing: Option<Instant> = None;
        loop {
            if *closed && inflight.is_empty() {
                let _ = conn.close().await;
                return Ended::Finished;
            }
            if *closed && finishing.is_none() {
                finishing = Some(Instant::now() + Duration::from_secs(5));
            }
            tokio::select! {
                command = self.commands.recv(), if !*closed => match command {
                    Some(command) => {
                        let mut one = VecDeque::new();
                        self.enqueue(command, &mut one);
                        if let Some(pending) = one.pop_front() {
                            if let Err(why) = self.send(conn, pending, &mut inflight).await {
                                return self.lost(why, inflight, queue);
                            }
                        }
                    }
                    None => *closed = true,
                },
                message = conn.recv::<ServerMessage>() => match message {
                    Ok(Some(ServerMessage::Response { id, outcome })) => self.complete(id, outcome, &mut inflight),
                    Ok(Some(ServerMessage::Error(body))) => return self.lost(body.to_string(), inflight, queue),
                    Ok(Some(other)) => return self.lost(format!("unexpected message {other:?}"), inflight, queue),
                    Ok(None) => return self.lost("the server closed the connection".into(), inflight, queue),
                    Err(err) => return self.lost(err.to_string(), inflight, queue),
                },
                _ = heartbeat.tick() => {
                    let pending = Pending { request: Request::Heartbeat, purpose: Purpose::Internal, sends: 0, deadline: far() };
                    if let Err(why) = self.send(conn, pending, &mut inflight).await {
                        return self.lost(why, inflight, queue);
                    }
                }
                _ = tokio::time::sleep_until(finishing.unwrap_or_else(far)), if finishing.is_some() => {
                    return Ended::Finished;
                }
            }
        }
    }

    /// Turns a handle's command into a pending request.
    fn enqueue(&mut self, command: Command, queue: &mut VecDeque<Pending>) {
        let deadline = Instant::now() + self.settings.config.request_timeout;
        match command {
            Command::Call {
                request,
                reply,
                lost,
            } => queue.push_back(Pending {
                request,
                purpose: Purpose::Call { reply, lost },
                sends: 0,
                deadline,
            }),
            Command::Drop(lease) => {
                self.held.remove(&lease);
                let request = Request::Checkin(Checkin { lease });
                queue.push_back(Pending {
                    request,
                    purpose: Purpose::Internal,
                    sends: 0,
                    deadline,
                });
            }
        }
    }

    /// Sends one request. `Err` means the connection failed; a request that cannot be
    /// sent at all (too large for a frame) fails on its own and the connection goes on.
    async fn send(
        &mut self,
        conn: &mut Conn,
        mut pending: Pending,
        inflight: &mut HashMap<u32, Pending>,
    ) -> Result<(), String> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        if let Request::Checkin(checkin) = &pending.request {
            self.held.remove(&checkin.lease);
        }
        let message = ClientMessage::Request {
            id,
            body: pending.request.clone(),
        };
        pending.sends = pending.sends.saturating_add(1);
        let name = pending.request.name();
        inflight.insert(id, pending);
        match conn.send(&message).await {
            Ok(()) => Ok(()),
            Err(err @ (FrameError::TooLarge { .. } | FrameError::Encode(_))) => {
                // Nothing was written: the request is at fault, not the connection.
                if let Some(Pending {
                    purpose: Purpose::Call { reply, .. },
                    ..
                }) = inflight.remove(&id)
                {
                    let _ = reply.send(Err(Error::Protocol(format!(
                        "the {name} request cannot be sent: {err}"
                    ))));
                }
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        }
    }

    fn complete(&mut self, id: u32, outcome: Outcome, inflight: &mut HashMap<u32, Pending>) {
        let Some(pending) = inflight.remove(&id) else {
            tracing::warn!(id, "answer to a request never sent");
            return;
        };
        let result = outcome.into_result();
        match (&pending.request, &result) {
            (Request::Heartbeat, Ok(Response::Heartbeat(ack))) => {
                for ended in &ack.ended {
                    self.lose(ended.lease, ended.reason);
                }
            }
            (Request::Resume(_), Ok(Response::Resumed(resumed))) => {
                for ended in &resumed.ended {
                    self.lose(ended.lease, ended.reason);
                }
                tracing::info!(
                    resumed = resumed.resumed.len(),
                    lost = resumed.ended.len(),
                    "leases resumed"
                );
            }
            _ => {}
        }
        if let Purpose::Call { reply, lost } = pending.purpose {
            if let (Some(lost), Ok(Response::Lease(info))) = (lost, &result) {
                self.held.insert(info.id, lost);
            }
            let _ = reply.send(result.map_err(Error::Server));
        } else if let Err(body) = result {
            if !matches!(pending.request, Request::Checkin(_)) || body.code != ErrorCode::NotFound {
                tracing::warn!(request = pending.request.name(), error = %body, "background request refused");
            }
        }
    }

    fn lose(&mut self, lease: LeaseId, reason: EndReason) {
        if let Some(lost) = self.held.remove(&lease) {
            tracing::warn!(%lease, reason = reason.as_str(), "lease lost");
            let _ = lost.send(Some(reason));
        }
    }

    /// The connection failed: keep what may be resent, fail the rest.
    fn lost(
        &mut self,
        why: String,
        inflight: HashMap<u32, Pending>,
        queue: &mut VecDeque<Pending>,
    ) -> Ended {
        let mut resend: Vec<(u32, Pending)> = inflight.into_iter().collect();
        resend.sort_by_key(|(id, _)| *id);
        for (_, pending) in resend.into_iter().rev() {
            let again = pending.sends < MAX_SENDS;
            match pending.purpose {
                Purpose::Internal if again && matches!(pending.request, Request::Checkin(_)) => {
                    queue.push_front(pending)
                }
                Purpose::Internal => {}
                Purpose::Call { reply, lost } if again && pending.request.is_idempotent() => queue
                    .push_front(Pending {
                        purpose: Purpose::Call { reply, lost },
                        ..pending
                    }),
                Purpose::Call { reply, .. } if pending.request.is_idempotent() => {
                    let _ = reply.send(Err(Error::ConnectionLost(format!(
                        "{why}; the connection dropped each of the {} times the {} request was sent, so it is not sent again",
                        pending.sends,
                        pending.request.name()
                    ))));
                }
                Purpose::Call { reply, .. } => {
                    let _ = reply.send(Err(Error::ConnectionLost(why.clone())));
                }
            }
        }
        Ended::Lost(why)
    }

    /// Fails queued requests that waited past their deadline.
    fn expire(&mut self, queue: &mut VecDeque<Pending>) {
        let now = Instant::now();
        let mut kept = VecDeque::new();
        for pending in queue.drain(..) {
            if pending.deadline > now {
                kept.push_back(pending);
            } else if let Purpose::Call { reply, .. } = pending.purpose {
                let _ = reply.send(Err(Error::Unreachable("no server answered in time".into())));
            }
        }
        *queue = kept;
    }

    fn fail_all(&mut self, queue: &mut VecDeque<Pending>, err: &Error) {
        for pending in queue.drain(..) {
            if let Purpose::Call { reply, .. } = pending.purpose {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the backoff has grown to, the wait before the next attempt (jitter
    /// included) stays within the heartbeat interval, and within the old ceiling of 7.5 s.
    #[test]
    fn reconnect_waits_never_pass_the_heartbeat_interval() {
        for heartbeat_ms in [100, 333, 1_000, 1_666, 20_000, 600_000] {
            let limit = Duration::from_millis(heartbeat_ms);
            let mut backoff = Duration::from_millis(100);
            for _ in 0..20 {
                for _ in 0..50 {
                    let wait = reconnect_delay(backoff, limit);
                    assert!(wait <= limit, "{wait:?} past a heartbeat of {limit:?}");
                    assert!(wait <= Duration::from_millis(7_500));
                    assert!(wait >= backoff.min(limit * 2 / 3));
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
