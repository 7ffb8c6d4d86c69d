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
//! Every request has a deadline (`request_timeout`; a check-in `release_timeout`), which
//! holds while it waits for a connection and while it is in flight: a server that never
//! answers, or drips its answer, fails the request then ([`Error::Timeout`]). An answer that
//! comes after its caller stopped waiting is recognised, and a seat it grants is given back
//! at once. A heartbeat still unanswered when the next is due ends the connection, and an
//! answer under an id never sent is the server's fault: the connection is left.
//!
//! Reconnect attempts back off with jitter, but never wait longer than the server's
//! heartbeat interval (SPEC R4: a restart must not cost a lease its ttl). The first attempt
//! after a working connection drops is immediate; the backoff then grows until a request is
//! answered (a completed handshake is not enough: a server that signs clients in and drops
//! them must not get a storm), and an outage is logged once, with a line when it ends.
//!
//! A standby of a cluster answers `not_leader` (SPEC R15), naming the leader when it knows
//! one: the request was not applied, so whatever it is, it waits to be sent again. The task
//! stops sending on that connection, collects the answers still due on it, and leaves it
//! for the leader it was given; when there is none, or it cannot be reached, it goes on
//! through its server list. After [`MAX_REDIRECTS`] redirects in a row with no other
//! answer, it backs off between rounds of the list instead. A request answered
//! `not_leader` keeps its deadline; when that passes, the caller gets the `not_leader`
//! error, naming the leader or saying that none is known.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig as TlsConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;

use tally_protocol::{
    decode_token, Authenticate, BorrowOnce, Checkin, Checkout, CheckoutWait, ClientId, ClientInfo,
    ClientMessage, Connection, Consume, Consumed, EndReason, ErrorBody, ErrorCode, FrameError,
    Hello, LeaseId, LeaseInfo, NotLeader, Outcome, QueueCancel, QueueNotice, QueueOutcome,
    QueuePlace, Request, RequestId, Response, Resume, ServerMessage, Welcome, DEFAULT_MAX_FRAME,
    MAX_BULK_FRAME, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
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

/// How many redirects in a row (`not_leader` answers with no other answer between them)
/// the task follows at once; past them it goes through its server list with backoff, so
/// that standbys naming each other cannot keep it connecting in circles.
pub const MAX_REDIRECTS: u32 = 3;

/// The first wait between reconnect attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between reconnect attempts, when the server's heartbeat interval is
/// longer still.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The longest wait between rounds of redirects. Standbys answering means a cluster that
/// is electing or has just elected a leader (they name a dead leader until its lease lapses,
/// a few seconds): the client must find the new one within a second of its election, not
/// after a backoff grown to `MAX_BACKOFF`.
const MAX_REDIRECT_BACKOFF: Duration = Duration::from_secs(1);

/// How long the answers still due from a standby are awaited once it has answered
/// `not_leader`, before the connection is left as if it had dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

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
        /// The request's deadline, from now; `None`: the configured `request_timeout`.
        timeout: Option<Duration>,
    },
    /// A lease guard was dropped: check it in, nobody waits for the answer.
    Drop(LeaseId),
    /// A checkout that waits in the server's queue (SPEC R17) until granted or ended.
    Wait(Waiter),
    /// The caller gave up a waiting checkout: leave the queue.
    CancelWait(RequestId),
}

/// A checkout waiting in the server's queue, as the connection task keeps it.
pub(crate) struct Waiter {
    request: CheckoutWait,
    reply: oneshot::Sender<Result<LeaseInfo, Error>>,
    lost: LostSender,
    /// Told the place once the server queues the checkout.
    queued: Option<oneshot::Sender<QueuePlace>>,
    /// Whether the server answered `Queued` (and the task now waits for its notice) rather
    /// than the `CheckoutWait` being on its way: after a reconnect a queued one is sent again.
    waiting: bool,
}

/// Sends `QueueCancel` when a waiting checkout's caller stops waiting before an outcome.
struct CancelOnDrop {
    commands: mpsc::UnboundedSender<Command>,
    request_id: RequestId,
    done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.send(Command::CancelWait(self.request_id));
        }
    }
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
    /// How long a check-in waits for its answer.
    release_timeout: Duration,
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
        let release_timeout = config.release_timeout;
        let settings = Arc::new(Settings::new(config)?);
        let (conn, welcome, username, index) = settings
            .connect_any(0, settings.config.connect_timeout)
            .await?;
        let (commands, rx) = mpsc::unbounded_channel();
        let current = settings.config.servers[index].clone();
        let task = Task {
            settings,
            commands: rx,
            held: HashMap::new(),
            next_id: 1,
            server_index: index,
            current,
            heartbeat: Duration::from_millis(welcome.heartbeat_interval_ms.max(100)),
            redirects: Redirects::default(),
            link: Link::default(),
            waits: HashMap::new(),
        };
        tokio::spawn(task.run(conn));
        Ok(Client {
            commands,
            data_dir,
            trust,
            machine_id,
            welcome: Arc::new(welcome),
            username: username.into(),
            release_timeout,
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
        self.call_with(request, None, None).await
    }

    /// Like [`call`](Self::call), with a deadline of its own.
    pub(crate) async fn call_within(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, Error> {
        self.call_with(request, None, Some(timeout)).await
    }

    /// How long a check-in waits for its answer.
    pub(crate) fn release_timeout(&self) -> Duration {
        self.release_timeout
    }

    async fn call_with(
        &self,
        request: Request,
        lost: Option<LostSender>,
        timeout: Option<Duration>,
    ) -> Result<Response, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Call {
                request,
                reply,
                lost,
                timeout,
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
        let response = self.call_with(request, Some(lost_tx), None).await?;
        let info = answer!("checkout", response, Response::Lease(info) => info)?;
        Ok(Lease::new(info, self.clone(), lost_rx))
    }

    /// Like [`checkout`](Self::checkout), but while the pool has no free seat, waits in
    /// the server's queue until `wait` has passed; then leaves it and fails with
    /// `no_seat`, saying how long it waited (the error earlier versions gave, so callers
    /// that treat it as "no seat" keep working). A zero `wait` tries once. See
    /// [`checkout_wait`](Self::checkout_wait), which ends with `queue_timeout`.
    pub async fn checkout_waiting(
        &self,
        feature: &str,
        seats: u32,
        wait: Duration,
    ) -> Result<Lease, Error> {
        if wait.is_zero() {
            return self.checkout(feature, seats).await;
        }
        // The server's limit is a backstop, in whole seconds; the caller's is kept here.
        let backstop = Duration::from_secs(wait.as_millis().div_ceil(1000) as u64 + 1);
        match tokio::time::timeout(wait, self.checkout_wait(feature, seats, Some(backstop))).await {
            Ok(Err(Error::Server(body))) if body.code == ErrorCode::QueueTimeout => {
                Err(no_seat_after(feature, wait))
            }
            Ok(other) => other,
            Err(_) => Err(no_seat_after(feature, wait)),
        }
    }

    /// Checks out `seats` seats of `feature`, waiting in the feature's queue on the server
    /// (SPEC R17) when none is free: first come, first served, a freed seat going to the
    /// queue before any new checkout. Fails with `queue_timeout` when `wait` passes first
    /// (`None`: no limit). The wait survives reconnects (the same request is sent again, and
    /// the server returns the place or the lease granted meanwhile); dropping the future
    /// leaves the queue, and a seat granted after that is given back.
    pub async fn checkout_wait(
        &self,
        feature: &str,
        seats: u32,
        wait: Option<Duration>,
    ) -> Result<Lease, Error> {
        self.checkout_wait_with(feature, seats, wait, None).await
    }

    /// Like [`checkout_wait`](Self::checkout_wait); `queued` is told the place in the queue
    /// when the checkout has to wait.
    pub async fn checkout_wait_with(
        &self,
        feature: &str,
        seats: u32,
        wait: Option<Duration>,
        queued: Option<oneshot::Sender<QueuePlace>>,
    ) -> Result<Lease, Error> {
        let (lost, lost_rx) = watch::channel(None);
        let request_id = RequestId(rand::random());
        let request = CheckoutWait {
            checkout: Checkout {
                request_id,
                feature: feature.to_string(),
                seats,
            },
            wait_secs: wait.map(|wait| wait.as_millis().div_ceil(1000) as u64),
        };
        let (reply, answer) = oneshot::channel();
        let mut cancel = CancelOnDrop {
            commands: self.commands.clone(),
            request_id,
            done: false,
        };
        self.commands
            .send(Command::Wait(Waiter {
                request,
                reply,
                lost,
                queued,
                waiting: false,
            }))
            .map_err(|_| Error::Closed)?;
        let result = answer.await.map_err(|_| Error::Closed).and_then(|r| r);
        // The server decided (a lease, or a refusal): nothing to cancel. A failure of this
        // side leaves the cancel to be sent when `cancel` drops.
        cancel.done = matches!(result, Ok(_) | Err(Error::Server(_)));
        let info = result?;
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
        // A signed token must still be the one asked for: this feature, these seats, this
        // machine, the lease granted. Checked before anything is written.
        let claims = &signed.claims;
        let mismatch = if claims.feature != feature {
            Some(format!(
                "it is for feature {:?}, not {feature}",
                claims.feature
            ))
        } else if claims.seats != seats {
            Some(format!("it is for {} seat(s), not {seats}", claims.seats))
        } else if *claims.machine_id != *self.machine_id {
            Some("it is for another machine".to_string())
        } else if claims.lease != granted.lease.id {
            Some(format!(
                "it is for lease {}, not the lease granted, {}",
                claims.lease, granted.lease.id
            ))
        } else {
            None
        };
        if let Some(why) = mismatch {
            let _ = self.return_borrow(granted.lease.id).await;
            return Err(Error::Protocol(format!(
                "the server's borrow token is not the one asked for ({why}), so the borrow was given back and nothing was saved"
            )));
        }
        let path = store.save(&granted.token, &signed.claims)?;
        Ok((granted.lease, path))
    }

    /// Consumes `amount` credits of `meter` for the signed-in user (SPEC §11, R21): the
    /// consumption, the meter's balance after it and what the user's quota has left
    /// (`None` when unlimited). Refused whole with `no_credit` when the user has no access
    /// to the meter, or when their remaining quota or the meter's balance is smaller than
    /// `amount`; the message says which.
    ///
    /// One random request id is chosen for the call and kept on every send of it: a
    /// `Consume` is idempotent ([`Request::is_idempotent`]), so when the connection drops
    /// while it is in flight, the session task sends the very same request again after
    /// reconnecting (at most [`MAX_SENDS`] times in all), and the server answers a request
    /// id it has seen with its first answer instead of consuming again. A caller that
    /// retries across calls, or across processes, keeps its own id with
    /// [`consume_with_id`](Self::consume_with_id); each call of this method is a new
    /// consumption.
    pub async fn consume(&self, meter: &str, amount: u64) -> Result<Consumed, Error> {
        self.consume_with_id(meter, amount, RequestId(rand::random()))
            .await
    }

    /// Like [`consume`](Self::consume), under the caller's request id: called again with
    /// the same id, meter and amount (a retry), it returns the first answer, a grant or a
    /// refusal, and consumes nothing more. The same id with another meter or amount is
    /// refused `invalid`: a new consumption needs a new id. The server keeps an id's
    /// answer for 30 days.
    pub async fn consume_with_id(
        &self,
        meter: &str,
        amount: u64,
        request_id: RequestId,
    ) -> Result<Consumed, Error> {
        let request = Request::Consume(Consume {
            request_id,
            meter: meter.to_string(),
            amount,
        });
        let response = self.call(request).await?;
        answer!("consume", response, Response::Consumed(consumed) => consumed)
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

/// The error of a waiting checkout whose caller's wait passed.
fn no_seat_after(feature: &str, wait: Duration) -> Error {
    Error::Server(ErrorBody::new(
        ErrorCode::NoSeat,
        format!(
            "no seat of {feature} was free (waited {} ms in the queue)",
            wait.as_millis()
        ),
    ))
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
        let mut untrusted = false;
        for step in 0..servers.len() {
            let index = (start + step) % servers.len();
            let server = &servers[index];
            match tokio::time::timeout(timeout, self.connect_one(server)).await {
                Ok(Ok((conn, welcome, user))) => return Ok((conn, welcome, user, index)),
                // A refusal by the server itself (bad token, wrong version) is final.
                Ok(Err(Error::Server(body))) => return Err(Error::Server(body)),
                Ok(Err(Error::Unreachable(why))) => failures.push(format!("{server}: {why}")),
                Ok(Err(Error::Untrusted(why))) => {
                    untrusted = true;
                    failures.push(why);
                }
                Ok(Err(err)) => failures.push(format!("{server}: {err}")),
                Err(_) => failures.push(format!("{server}: no answer within {timeout:?}")),
            }
        }
        // A server that answered with a certificate the CA does not vouch for is the thing
        // to fix, whatever the others did.
        if untrusted {
            return Err(Error::Untrusted(failures.join("; ")));
        }
        Err(Error::Unreachable(failures.join("; ")))
    }

    /// The error of a failed TLS handshake with `server`: [`Error::Untrusted`] when its
    /// certificate does not verify against the CA, naming why and the CA file; else
    /// [`Error::Unreachable`].
    fn tls_failure(&self, server: &ServerAddr, err: std::io::Error) -> Error {
        let certificate = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(|inner| match inner {
                rustls::Error::InvalidCertificate(why) => Some(why),
                _ => None,
            });
        let Some(why) = certificate else {
            return Error::Unreachable(format!("TLS: {err}"));
        };
        let ca = match &self.config.ca_file {
            Some(path) => format!("the CA in {}", path.display()),
            None => "the configured CA".to_string(),
        };
        let use_the_right_ca = "a tallyd that made its own CA keeps it in DATA_DIR/tls/ca.pem (the client.toml it writes names it): give clients that file (`ca` in the client file, or tally's --ca or TALLY_CA)";
        use rustls::CertificateError as E;
        let reason = match why {
            E::UnknownIssuer | E::BadSignature => {
                format!("its certificate is not signed by {ca}; {use_the_right_ca}")
            }
            E::NotValidForName | E::NotValidForNameContext { .. } => {
                let presented = match why {
                    E::NotValidForNameContext { presented, .. } if !presented.is_empty() => {
                        format!(" (it names {})", presented.join(", "))
                    }
                    _ => String::new(),
                };
                format!(
                    "its certificate is not issued for the name {}{presented}; connect to a name it carries, or add the name to the server's tls.names and have the certificate made again",
                    server.host
                )
            }
            E::Expired | E::ExpiredContext { .. } => {
                "its certificate has expired (or this machine's clock is wrong)".to_string()
            }
            E::NotValidYet | E::NotValidYetContext { .. } => {
                "its certificate is not valid yet (or this machine's clock is wrong)".to_string()
            }
            other => format!("its certificate does not verify against {ca}: {other:?}"),
        };
        Error::Untrusted(format!("server {server} is not trusted: {reason}"))
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
            .map_err(|err| self.tls_failure(server, err))?;
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
            Some(ServerMessage::Authenticated(auth)) => {
                // A server reads a bulk file in one frame from an admin (SPEC R19).
                if auth.role.is_admin() {
                    conn.set_max_write(MAX_BULK_FRAME);
                }
                Ok((conn, welcome, auth.username))
            }
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
    /// The `CheckoutWait` of a waiter in [`Task::waits`]: the waiter gets the outcome.
    Wait(RequestId),
}

struct Pending {
    request: Request,
    purpose: Purpose,
    /// How many times the request was sent (sends a standby answered `not_leader` do not
    /// count).
    sends: u8,
    /// When the request gives up: waiting for a connection, or for its answer.
    deadline: Instant,
    /// How long it was given, for the error that says so.
    timeout: Duration,
    /// The last standby that answered it `not_leader`, and the leader it named: what the
    /// caller is told if the deadline passes before a leader answers.
    redirected: Option<(ServerAddr, Option<String>)>,
}

impl Pending {
    fn new(request: Request, purpose: Purpose, deadline: Instant) -> Self {
        Self {
            request,
            purpose,
            sends: 0,
            deadline,
            timeout: deadline.saturating_duration_since(Instant::now()),
            redirected: None,
        }
    }

    /// A request that gives up `timeout` from now.
    fn within(request: Request, purpose: Purpose, timeout: Duration) -> Self {
        Self {
            timeout,
            ..Self::new(request, purpose, Instant::now() + timeout)
        }
    }

    /// The error of a request whose deadline passed while it was in flight on a
    /// connection to `server`.
    fn unanswered(&self, server: &ServerAddr) -> Error {
        let name = self.request.name();
        let timeout = self.timeout;
        let applied = if self.request.is_read_only() {
            ""
        } else {
            "; it may or may not have been applied"
        };
        Error::Timeout(format!(
            "the server {server} did not answer the {name} request within {timeout:?}{applied}"
        ))
    }

    /// The error of a request whose deadline passed while it waited: `not_leader` when a
    /// standby sent it on, else `Unreachable`.
    fn timed_out(&self) -> Error {
        let name = self.request.name();
        let timeout = self.timeout;
        match &self.redirected {
            Some((standby, Some(leader))) => Error::Server(ErrorBody::new(
                ErrorCode::NotLeader,
                format!(
                    "{standby} is a standby, not the leader; the leader at {leader} did not serve the {name} request within {timeout:?}"
                ),
            )),
            Some((standby, None)) => Error::Server(ErrorBody::new(
                ErrorCode::NotLeader,
                format!(
                    "{standby} is a standby, not the leader, and no leader is known right now (one may be being elected); the {name} request was not served within {timeout:?}"
                ),
            )),
            None => Error::Unreachable(format!(
                "no server could be reached within {timeout:?} to send the {name} request"
            )),
        }
    }
}

/// How a connection ended.
enum Ended {
    /// Every handle is gone and nothing is in flight.
    Finished,
    /// The link failed; reconnect.
    Lost(String),
    /// The server is a standby: go to the leader it named, or on through the list.
    Redirected(NotLeader),
}

/// Where to go after a standby's `not_leader`.
#[derive(Debug, PartialEq)]
enum Next {
    /// Straight to the leader it named.
    Leader(ServerAddr),
    /// On through the server list, at once: no leader was named (or not as `HOST:PORT`).
    List,
    /// On through the server list after waiting about this long: redirects went round
    /// [`MAX_REDIRECTS`] times with no other answer.
    Backoff(Duration),
}

/// The redirects followed since the last answer that was not one.
#[derive(Debug)]
struct Redirects {
    /// How many in a row.
    count: u32,
    /// The wait before the next round of the server list once past [`MAX_REDIRECTS`].
    backoff: Duration,
}

impl Default for Redirects {
    fn default() -> Self {
        Self {
            count: 0,
            backoff: FIRST_BACKOFF,
        }
    }
}

impl Redirects {
    /// Counts one more redirect, naming `leader`, and says where to go. Past
    /// [`MAX_REDIRECTS`] in a row it backs off once, then follows named leaders again: a
    /// standby that knew no leader a moment ago (one was being elected) names it soon
    /// after, and a client whose list holds only standbys must still get there. The wait
    /// grows with every round, to [`MAX_REDIRECT_BACKOFF`], until a leader answers.
    fn next(&mut self, leader: Option<&str>) -> Next {
        self.count += 1;
        if self.count > MAX_REDIRECTS {
            self.count = 0;
            let wait = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_REDIRECT_BACKOFF);
            return Next::Backoff(wait);
        }
        match leader.map(ServerAddr::parse) {
            Some(Ok(leader)) => Next::Leader(leader),
            _ => Next::List,
        }
    }

    /// A server answered as a leader does: the next redirect is the first again.
    fn served(&mut self) {
        *self = Self::default();
    }
}

/// The requests a standby answered `not_leader` on one connection, kept to send again.
#[derive(Default)]
struct Redirect {
    /// The latest `not_leader`; once set, nothing more is sent on the connection.
    seen: Option<NotLeader>,
    /// The requests to send again elsewhere, with their ids on this connection.
    held: Vec<(u32, Pending)>,
    /// How long the answers still due are awaited.
    until: Option<Instant>,
}

/// What the task knows of its link to the servers: whether it works, how long to wait
/// before the next reconnect, and what it last warned of. A server that accepts
/// connections and drops them again costs one warning and a growing wait, not a storm: the
/// wait is reset only when a request is answered, not when a handshake completes.
#[derive(Debug)]
struct Link {
    /// A request was answered since the last connection was lost.
    working: bool,
    /// The wait before the next reconnect attempt while the link does not work.
    backoff: Duration,
    /// The kind of failure ([`Error::code_str`]) last warned of in this outage.
    warned: Option<&'static str>,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            working: true,
            backoff: FIRST_BACKOFF,
            warned: None,
        }
    }
}

/// Whether a change of the link's state is worth a line in the log.
#[derive(Debug, PartialEq, Eq)]
enum Say {
    /// Logged at `warn` (an outage begins, or its cause changes) or `info` (it ended).
    Yes,
    /// Logged at `debug` only: the same outage, still.
    No,
}

impl Link {
    /// A request was answered: the link works. `Yes` when an outage ended.
    fn answered(&mut self) -> Say {
        let was = std::mem::replace(&mut self.working, true);
        self.backoff = FIRST_BACKOFF;
        self.warned = None;
        if was {
            Say::No
        } else {
            Say::Yes
        }
    }

    /// The connection was lost. The wait before reconnecting: none when the link worked
    /// (a restarted server is found at once), else the backoff, which grows.
    fn lost(&mut self) -> (Option<Duration>, Say) {
        if std::mem::replace(&mut self.working, false) {
            (None, Say::Yes)
        } else {
            (Some(self.next_wait()), Say::No)
        }
    }

    /// The wait before the next attempt; the one after it is twice as long, up to
    /// [`MAX_BACKOFF`] (and [`reconnect_delay`] keeps it within a heartbeat interval).
    fn next_wait(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }

    /// A reconnect attempt failed with `err`: `Yes` the first time in this outage a
    /// failure of its kind is seen.
    fn failed(&mut self, err: &Error) -> Say {
        self.working = false;
        let kind = err.code_str();
        if self.warned.replace(kind) == Some(kind) {
            Say::No
        } else {
            Say::Yes
        }
    }
}

struct Task {
    settings: Arc<Settings>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Leases this client holds, and how to tell each guard it was lost.
    held: HashMap<LeaseId, LostSender>,
    next_id: u32,
    /// The position in the server list reconnects go on from.
    server_index: usize,
    /// The server of the connection: one of the list, or a leader a standby named.
    current: ServerAddr,
    heartbeat: Duration,
    redirects: Redirects,
    link: Link,
    /// Checkouts waiting in the server's queue, by request id.
    waits: HashMap<RequestId, Waiter>,
}

impl Task {
    async fn run(mut self, mut conn: Conn) {
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut closed = false;
        loop {
            // A wait before the first attempt at the server list.
            let mut pause = match self.serve(&mut conn, &mut queue, &mut closed).await {
                Ended::Finished => return,
                Ended::Lost(why) => {
                    let server = &self.current;
                    let (wait, say) = self.link.lost();
                    if say == Say::Yes {
                        tracing::warn!(%server, reason = %why, "connection to the license server lost; reconnecting");
                    } else {
                        tracing::debug!(%server, reason = %why, retry_in = ?wait, "connection lost again before any request was answered");
                    }
                    wait
                }
                Ended::Redirected(_) if closed && queue.is_empty() && self.held.is_empty() => {
                    return
                }
                Ended::Redirected(not_leader) => match self.follow(&not_leader, &mut queue).await {
                    Ok((new, welcome)) => {
                        conn = new;
                        self.connected(&welcome, &mut queue);
                        continue;
                    }
                    Err(wait) => wait,
                },
            };
            loop {
                if let Some(wait) = pause.take() {
                    self.pause(wait, &mut queue, &mut closed).await;
                }
                self.expire(&mut queue);
                if closed && queue.is_empty() && self.held.is_empty() {
                    return;
                }
                match self
                    .settings
                    .connect_any(self.server_index + 1, self.connect_timeout())
                    .await
                {
                    Ok((new, welcome, _, index)) => {
                        tracing::debug!(server = %self.settings.config.servers[index], "reconnected to the license server");
                        conn = new;
                        self.server_index = index;
                        self.current = self.settings.config.servers[index].clone();
                        self.connected(&welcome, &mut queue);
                        break;
                    }
                    Err(err) => {
                        if self.link.failed(&err) == Say::Yes {
                            tracing::warn!(error = %err, "cannot reconnect to the license server; retrying until it answers");
                        } else {
                            tracing::debug!(error = %err, "reconnect failed");
                        }
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
                pause = Some(self.link.next_wait());
            }
        }
    }

    /// How long one connection attempt may take. A server that does not answer within a
    /// heartbeat interval is given up for the next, so that a black-holed one cannot hold
    /// the retries back.
    fn connect_timeout(&self) -> Duration {
        self.settings
            .config
            .connect_timeout
            .min(self.heartbeat.max(Duration::from_secs(1)))
    }

    /// After a standby's `not_leader`: connects to the leader it named, when it named one
    /// and the redirects have not gone round in circles. `Err`: go on through the server
    /// list, after waiting about this long if it is `Some`.
    async fn follow(
        &mut self,
        not_leader: &NotLeader,
        queue: &mut VecDeque<Pending>,
    ) -> Result<(Conn, Welcome), Option<Duration>> {
        self.expire(queue);
        let standby = self.current.clone();
        let leader = match self.redirects.next(not_leader.leader.as_deref()) {
            Next::Leader(leader) => leader,
            Next::List => {
                match &not_leader.leader {
                    None => tracing::info!("server {standby} is a standby and knows no leader right now; trying the server list"),
                    Some(named) => tracing::warn!("server {standby} is a standby and named the leader {named:?}, which is not HOST:PORT; trying the server list"),
                }
                return Err(None);
            }
            Next::Backoff(wait) => {
                tracing::warn!(retry_in = ?wait, "server {standby} is a standby too, after {MAX_REDIRECTS} redirects in a row with no answer; going through the server list with backoff");
                return Err(Some(wait));
            }
        };
        tracing::info!("server {standby} is a standby; moving to the leader at {leader}");
        match tokio::time::timeout(self.connect_timeout(), self.settings.connect_one(&leader)).await
        {
            Ok(Ok((conn, welcome, _))) => {
                if let Some(index) = self
                    .settings
                    .config
                    .servers
                    .iter()
                    .position(|s| *s == leader)
                {
                    self.server_index = index;
                }
                self.current = leader;
                Ok((conn, welcome))
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot reach the leader at {leader}; trying the server list");
                Err(None)
            }
            Err(_) => {
                tracing::warn!(
                    "the leader at {leader} did not answer within {:?}; trying the server list",
                    self.connect_timeout()
                );
                Err(None)
            }
        }
    }

    /// A new connection is signed in: take its heartbeat interval, and resume the leases
    /// held (all of them: the server ends the session's others) before anything else is
    /// sent.
    fn connected(&mut self, welcome: &Welcome, queue: &mut VecDeque<Pending>) {
        self.heartbeat = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
        // Always, even holding nothing: a resume names every lease this instance holds, and
        // the server checks in any other of its session, one whose grant was lost on the
        // way (see `Pool::resume`).
        let leases: Vec<LeaseId> = self.held.keys().copied().collect();
        let request = Request::Resume(Resume { leases });
        queue.push_front(Pending::new(request, Purpose::Internal, far()));
        // Waits the server had queued are sent again: it returns the place, or the lease
        // granted while the notice could not reach this client (or, after a restart, the
        // checkout joins the queue again).
        let timeout = self.settings.config.request_timeout;
        for (id, waiter) in &mut self.waits {
            if waiter.waiting {
                waiter.waiting = false;
                let request = Request::CheckoutWait(waiter.request.clone());
                queue.push_back(Pending::within(request, Purpose::Wait(*id), timeout));
            }
        }
    }

    /// Waits about `base` (with jitter, within the heartbeat interval) before the next
    /// reconnect attempt, taking commands meanwhile and failing requests as their deadlines
    /// pass.
    async fn pause(&mut self, base: Duration, queue: &mut VecDeque<Pending>, closed: &mut bool) {
        let wake = Instant::now() + reconnect_delay(base, self.heartbeat);
        while Instant::now() < wake {
            let due = queue
                .iter()
                .map(|p| p.deadline)
                .min()
                .unwrap_or(wake)
                .min(wake);
            tokio::select! {
                command = self.commands.recv(), if !*closed => match command {
                    Some(command) => self.enqueue(command, queue),
                    None => *closed = true,
                },
                _ = tokio::time::sleep_until(due) => self.expire(queue),
            }
        }
    }

    /// Serves one connection until it fails, everything is done, or the server turns out
    /// to be a standby. Requests a standby answered `not_leader` go back to the front of
    /// the queue, in the order they were sent.
    async fn serve(
        &mut self,
        conn: &mut Conn,
        queue: &mut VecDeque<Pending>,
        closed: &mut bool,
    ) -> Ended {
        let mut redirect = Redirect::default();
        let ended = self.serve_until(conn, queue, closed, &mut redirect).await;
        redirect.held.sort_by_key(|(id, _)| *id);
        for (_, pending) in redirect.held.into_iter().rev() {
            queue.push_front(pending);
        }
        match (ended, redirect.seen) {
            (Ended::Lost(why), Some(not_leader)) => {
                tracing::debug!(reason = %why, "the standby's connection ended");
                Ended::Redirected(not_leader)
            }
            (ended, _) => ended,
        }
    }

    async fn serve_until(
        &mut self,
        conn: &mut Conn,
        queue: &mut VecDeque<Pending>,
        closed: &mut bool,
        redirect: &mut Redirect,
    ) -> Ended {
        let mut inflight: HashMap<u32, Pending> = HashMap::new();
        // Requests whose callers stopped waiting for the answer (their deadline passed):
        // an answer that comes late is not an error, and a seat it grants is given back.
        let mut abandoned: HashMap<u32, &'static str> = HashMap::new();
        while let Some(pending) = queue.pop_front() {
            if let Err(why) = self.send(conn, pending, &mut inflight).await {
                return self.lost(why, inflight, queue);
            }
        }
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The heartbeat in flight: still unanswered when the next is due, the connection
        // is dead (or the server is), whatever TCP says.
        let mut beat: Option<u32> = None;
        let mut finishing: Option<Instant> = None;
        loop {
            if let (Some(not_leader), true) = (&redirect.seen, inflight.is_empty()) {
                let _ = conn.close().await;
                return Ended::Redirected(not_leader.clone());
            }
            if *closed && inflight.is_empty() {
                let _ = conn.close().await;
                return Ended::Finished;
            }
            if *closed && finishing.is_none() {
                finishing = Some(Instant::now() + Duration::from_secs(5));
            }
            let due = inflight.values().map(|p| p.deadline).min();
            tokio::select! {
                command = self.commands.recv(), if !*closed => match command {
                    // Nothing more goes to a standby: it waits for the leader.
                    Some(command) if redirect.seen.is_some() => self.enqueue(command, queue),
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
                    Ok(Some(ServerMessage::Response { id, outcome })) if !inflight.contains_key(&id) => {
                        match abandoned.remove(&id) {
                            Some(name) => {
                                tracing::debug!(id, request = name, "an answer after its deadline");
                                if let Some(giveback) = giveback(&outcome) {
                                    if let Err(why) = self.send_internal(conn, giveback, &mut inflight).await {
                                        return self.lost(why, inflight, queue);
                                    }
                                }
                            }
                            None => {
                                let why = format!("the server answered request {id}, which was never sent");
                                return self.lost(why, inflight, queue);
                            }
                        }
                    }
                    Ok(Some(ServerMessage::Response { id, outcome: Outcome::NotLeader(not_leader) })) => {
                        if let Some(pending) = self.refused_by_standby(id, &not_leader, &mut inflight) {
                            redirect.held.push((id, pending));
                        }
                        redirect.until.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                        redirect.seen = Some(not_leader);
                    }
                    Ok(Some(ServerMessage::Response { id, outcome })) => {
                        if let Some(giveback) = self.complete(id, outcome, &mut inflight) {
                            if let Err(why) = self.send_internal(conn, giveback, &mut inflight).await {
                                return self.lost(why, inflight, queue);
                            }
                        }
                    }
                    Ok(Some(ServerMessage::Error(body))) => return self.lost(body.to_string(), inflight, queue),
                    Ok(Some(ServerMessage::Queue(notice))) => {
                        if let Some(giveback) = self.notice(notice) {
                            if let Err(why) = self.send_internal(conn, giveback, &mut inflight).await {
                                return self.lost(why, inflight, queue);
                            }
                        }
                    }
                    Ok(Some(other)) => return self.lost(format!("unexpected message {other:?}"), inflight, queue),
                    Ok(None) => return self.lost("the server closed the connection".into(), inflight, queue),
                    Err(err) => return self.lost(err.to_string(), inflight, queue),
                },
                _ = heartbeat.tick(), if redirect.seen.is_none() => {
                    if beat.is_some_and(|id| inflight.contains_key(&id)) {
                        let why = format!("the server did not answer a heartbeat within {:?}", self.heartbeat);
                        return self.lost(why, inflight, queue);
                    }
                    beat = Some(self.next_id);
                    let pending = Pending::new(Request::Heartbeat, Purpose::Internal, far());
                    if let Err(why) = self.send(conn, pending, &mut inflight).await {
                        return self.lost(why, inflight, queue);
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(far)), if due.is_some() => {
                    self.overdue(&mut inflight, &mut abandoned);
                }
                _ = tokio::time::sleep_until(finishing.unwrap_or_else(far)), if finishing.is_some() => {
                    return Ended::Finished;
                }
                _ = tokio::time::sleep_until(redirect.until.unwrap_or_else(far)), if redirect.until.is_some() => {
                    let why = format!("the standby did not answer {} request(s) within {DRAIN_TIMEOUT:?}", inflight.len());
                    return self.lost(why, inflight, queue);
                }
            }
        }
    }

    /// Fails the requests in flight whose deadline has passed; their ids are kept in
    /// `abandoned`, so that a late answer is recognised (and a seat it grants given back).
    fn overdue(
        &mut self,
        inflight: &mut HashMap<u32, Pending>,
        abandoned: &mut HashMap<u32, &'static str>,
    ) {
        let now = Instant::now();
        let late: Vec<u32> = inflight
            .iter()
            .filter(|(_, pending)| pending.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(pending) = inflight.remove(&id) else {
                continue;
            };
            abandoned.insert(id, pending.request.name());
            // One that standbys sent on is told so: that is why it is late.
            let err = match pending.redirected {
                Some(_) => pending.timed_out(),
                None => pending.unanswered(&self.current),
            };
            match pending.purpose {
                Purpose::Call { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Purpose::Wait(id) => self.fail_wait(id, err),
                Purpose::Internal => {
                    tracing::warn!(request = pending.request.name(), error = %err, "background request given up")
                }
            }
        }
    }

    /// Sends a request of the task's own (a check-in or a return that gives back a seat
    /// nobody waits for), with the release deadline.
    async fn send_internal(
        &mut self,
        conn: &mut Conn,
        request: Request,
        inflight: &mut HashMap<u32, Pending>,
    ) -> Result<(), String> {
        let timeout = self.settings.config.release_timeout;
        let pending = Pending::within(request, Purpose::Internal, timeout);
        self.send(conn, pending, inflight).await
    }

    /// Turns a handle's command into a pending request.
    fn enqueue(&mut self, command: Command, queue: &mut VecDeque<Pending>) {
        let config = &self.settings.config;
        match command {
            Command::Call {
                request,
                reply,
                lost,
                timeout,
            } => queue.push_back(Pending::within(
                request,
                Purpose::Call { reply, lost },
                timeout.unwrap_or(config.request_timeout),
            )),
            Command::Drop(lease) => {
                self.held.remove(&lease);
                let request = Request::Checkin(Checkin { lease });
                queue.push_back(Pending::within(
                    request,
                    Purpose::Internal,
                    config.release_timeout,
                ));
            }
            Command::Wait(waiter) => {
                let id = waiter.request.checkout.request_id;
                let request = Request::CheckoutWait(waiter.request.clone());
                self.waits.insert(id, waiter);
                queue.push_back(Pending::within(
                    request,
                    Purpose::Wait(id),
                    config.request_timeout,
                ));
            }
            Command::CancelWait(request_id) => {
                // Sent even when the wait already failed here (a deadline, a lost
                // connection): the server may still hold its entry, or a grant of it.
                self.waits.remove(&request_id);
                let request = Request::QueueCancel(QueueCancel { request_id });
                queue.push_back(Pending::within(
                    request,
                    Purpose::Internal,
                    config.release_timeout,
                ));
            }
        }
    }

    /// The end of a waiting checkout: its caller gets `result`. Returns the check-in of a
    /// seat granted to a wait nobody waits for any more (the caller gave up, or it was
    /// already answered).
    fn finish_wait(&mut self, id: RequestId, result: Result<LeaseInfo, Error>) -> Option<Request> {
        let Some(waiter) = self.waits.remove(&id) else {
            return match result {
                Ok(info) if !self.held.contains_key(&info.id) => {
                    Some(Request::Checkin(Checkin { lease: info.id }))
                }
                _ => None,
            };
        };
        match result {
            Ok(info) if waiter.reply.is_closed() => {
                Some(Request::Checkin(Checkin { lease: info.id }))
            }
            Ok(info) => {
                self.held.insert(info.id, waiter.lost);
                let _ = waiter.reply.send(Ok(info));
                None
            }
            Err(err) => {
                let _ = waiter.reply.send(Err(err));
                None
            }
        }
    }

    /// A notice from the server: a queued checkout was granted, or its wait ended.
    fn notice(&mut self, notice: QueueNotice) -> Option<Request> {
        match notice.outcome {
            QueueOutcome::Granted(info) => {
                tracing::debug!(lease = %info.id, feature = %info.feature, "a queued checkout was granted");
                self.finish_wait(notice.request_id, Ok(info))
            }
            QueueOutcome::Ended(err) => {
                self.finish_wait(notice.request_id, Err(Error::Server(err)))
            }
        }
    }

    /// The answer to a waiter's `CheckoutWait`.
    fn answer_wait(
        &mut self,
        id: RequestId,
        result: Result<Response, ErrorBody>,
    ) -> Option<Request> {
        match result {
            Ok(Response::Lease(info)) => self.finish_wait(id, Ok(info)),
            Ok(Response::Queued(place)) => {
                if let Some(waiter) = self.waits.get_mut(&id) {
                    waiter.waiting = true;
                    if let Some(queued) = waiter.queued.take() {
                        let _ = queued.send(place);
                    }
                }
                None
            }
            Ok(other) => self.finish_wait(id, Err(crate::api::unexpected("checkout", &other))),
            Err(body) => self.finish_wait(id, Err(Error::Server(body))),
        }
    }

    /// A waiter's `CheckoutWait` failed on the client's side (its deadline, the connection).
    fn fail_wait(&mut self, id: RequestId, err: Error) {
        if let Some(waiter) = self.waits.remove(&id) {
            let _ = waiter.reply.send(Err(err));
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

    /// An answer to a request in flight. Returns the request that gives back a seat the
    /// answer granted to a caller who no longer waits for it.
    fn complete(
        &mut self,
        id: u32,
        outcome: Outcome,
        inflight: &mut HashMap<u32, Pending>,
    ) -> Option<Request> {
        let pending = inflight.remove(&id)?;
        // Standbys answer these two themselves: only other answers show a leader.
        if !matches!(pending.request, Request::ServerInfo | Request::ServerNodes) {
            self.redirects.served();
        }
        // An answer to a caller, or to a heartbeat (a connection that lived an interval),
        // shows the link works; a resume answered before the server drops the connection
        // again does not.
        let works = matches!(pending.purpose, Purpose::Call { .. } | Purpose::Wait(_))
            || matches!(pending.request, Request::Heartbeat);
        if works && self.link.answered() == Say::Yes {
            tracing::info!(server = %self.current, "the license server answers again");
        }
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
        if let Purpose::Wait(id) = pending.purpose {
            return self.answer_wait(id, result);
        }
        if let Purpose::Call { reply, lost } = pending.purpose {
            if reply.is_closed() {
                // The caller stopped waiting (its future was dropped): a seat granted now
                // would be held by nobody.
                return result.ok().as_ref().and_then(giveback_of);
            }
            if let (Some(lost), Ok(Response::Lease(info))) = (lost, &result) {
                self.held.insert(info.id, lost);
            }
            let _ = reply.send(result.map_err(Error::Server));
        } else if let Err(body) = result {
            if !matches!(pending.request, Request::Checkin(_)) || body.code != ErrorCode::NotFound {
                tracing::warn!(request = pending.request.name(), error = %body, "background request refused");
            }
        }
        None
    }

    /// A standby answered `not_leader`: the request was not applied. It is kept to be sent
    /// again, without counting this send against [`MAX_SENDS`], unless it is the task's own
    /// heartbeat or resume (made anew on the next connection) or its deadline has passed.
    fn refused_by_standby(
        &mut self,
        id: u32,
        not_leader: &NotLeader,
        inflight: &mut HashMap<u32, Pending>,
    ) -> Option<Pending> {
        let mut pending = inflight.remove(&id)?;
        pending.sends = pending.sends.saturating_sub(1);
        pending.redirected = Some((self.current.clone(), not_leader.leader.clone()));
        if matches!(pending.purpose, Purpose::Internal)
            && matches!(pending.request, Request::Heartbeat | Request::Resume(_))
        {
            return None;
        }
        if pending.deadline <= Instant::now() {
            let err = pending.timed_out();
            match pending.purpose {
                Purpose::Call { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Purpose::Wait(id) => self.fail_wait(id, err),
                Purpose::Internal => {
                    tracing::warn!(request = pending.request.name(), error = %err, "background request given up")
                }
            }
            return None;
        }
        Some(pending)
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
                Purpose::Wait(_) if again => queue.push_front(pending),
                Purpose::Wait(id) => {
                    let err = Error::ConnectionLost(format!(
                        "{why}; the connection dropped each of the {} times the waiting checkout was sent, so it is not sent again",
                        pending.sends
                    ));
                    self.fail_wait(id, err);
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
            } else {
                let err = pending.timed_out();
                match pending.purpose {
                    Purpose::Call { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                    Purpose::Wait(id) => self.fail_wait(id, err),
                    Purpose::Internal => {}
                }
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
        for (_, waiter) in self.waits.drain() {
            let _ = waiter.reply.send(Err(err.clone()));
        }
    }
}

/// The request that gives back what a late or unwanted answer granted: a check-in for a
/// lease, a return for a borrow.
fn giveback(outcome: &Outcome) -> Option<Request> {
    match outcome {
        Outcome::Ok(response) => giveback_of(response),
        _ => None,
    }
}

fn giveback_of(response: &Response) -> Option<Request> {
    match response {
        Response::Lease(info) => Some(Request::Checkin(Checkin { lease: info.id })),
        Response::Borrowed(borrowed) => Some(Request::Return(tally_protocol::Return {
            lease: borrowed.lease.id,
        })),
        _ => None,
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

    /// An outage is one warning however many tries it takes, and the wait grows until a
    /// request is answered: connections that complete the handshake and drop again do not
    /// reset it.
    #[test]
    fn an_outage_is_said_once_and_its_backoff_grows_until_an_answer() {
        let mut link = Link::default();
        assert_eq!(
            link.lost(),
            (None, Say::Yes),
            "the first reconnect is at once"
        );
        let mut waits = Vec::new();
        for _ in 0..7 {
            // Reconnected, signed in, dropped again before any answer.
            let (wait, say) = link.lost();
            assert_eq!(say, Say::No);
            waits.push(wait.unwrap().as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000]);
        let unreachable = Error::Unreachable("x".into());
        assert_eq!(link.failed(&unreachable), Say::Yes);
        assert_eq!(link.failed(&unreachable), Say::No);
        assert_eq!(
            link.failed(&Error::Untrusted("y".into())),
            Say::Yes,
            "a new cause"
        );
        assert_eq!(link.answered(), Say::Yes, "the outage ended");
        assert_eq!(link.answered(), Say::No);
        assert_eq!(link.lost(), (None, Say::Yes));
        assert_eq!(link.lost(), (Some(FIRST_BACKOFF), Say::No));
    }

    fn addr(host: &str, port: u16) -> ServerAddr {
        ServerAddr {
            host: host.into(),
            port,
        }
    }

    /// Redirects go straight to the leader named, in any form a server list takes, until
    /// [`MAX_REDIRECTS`] in a row; then one wait before the server list, a wait that grows
    /// to [`MAX_REDIRECT_BACKOFF`] round after round. An answer from a leader starts again.
    #[test]
    fn redirects_go_to_the_leader_until_they_go_round_in_circles() {
        let mut redirects = Redirects::default();
        assert_eq!(
            redirects.next(Some("lic2.studio.lan:27010")),
            Next::Leader(addr("lic2.studio.lan", 27010))
        );
        assert_eq!(
            redirects.next(Some("[::1]:27011")),
            Next::Leader(addr("::1", 27011))
        );
        assert_eq!(redirects.next(None), Next::List);
        // Past the limit: one wait, then named leaders are followed again, up to the limit,
        // and the next wait is longer.
        let mut waits = Vec::new();
        for _ in 0..8 {
            match redirects.next(Some("lic1:27010")) {
                Next::Backoff(wait) => waits.push(wait.as_millis()),
                other => panic!("followed a redirect past the limit: {other:?}"),
            }
            for _ in 0..MAX_REDIRECTS {
                assert_eq!(
                    redirects.next(Some("lic1:27010")),
                    Next::Leader(addr("lic1", 27010))
                );
            }
        }
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        redirects.served();
        assert_eq!(
            redirects.next(Some("lic1:27010")),
            Next::Leader(addr("lic1", 27010))
        );
    }

    /// A leader address that is not `HOST:PORT` is not followed: the client goes on
    /// through its own list.
    #[test]
    fn a_leader_that_is_not_host_port_is_not_followed() {
        for bad in ["", "  ", "lic1:port", "[::1", "[::1]x", "lic1:99999"] {
            let mut redirects = Redirects::default();
            assert_eq!(redirects.next(Some(bad)), Next::List, "{bad:?}");
        }
    }

    /// A request whose deadline passes after a standby answered it names the leader, or
    /// says that none is known; one that never reached a server is `Unreachable`.
    #[test]
    fn a_redirected_request_that_times_out_is_a_not_leader_error() {
        let mut pending = Pending::new(Request::Whoami, Purpose::Internal, Instant::now());
        assert!(matches!(pending.timed_out(), Error::Unreachable(_)));
        pending.redirected = Some((addr("lic2", 27010), Some("lic1:27010".into())));
        let err = pending.timed_out();
        assert_eq!(err.code(), Some(ErrorCode::NotLeader));
        let text = err.to_string();
        assert!(text.contains("lic2:27010 is a standby"), "{text}");
        assert!(text.contains("the leader at lic1:27010"), "{text}");
        assert!(text.contains("whoami"), "{text}");
        pending.redirected = Some((addr("lic2", 27010), None));
        let text = pending.timed_out().to_string();
        assert!(text.contains("no leader is known"), "{text}");
    }
}
